"""Training on a fleet: peak memory against the number of bags, and windows per second with
one and two processes (torchrun). A benchmark, not a test; prints a table and writes JSON.

Every run is the command line a user types (``python -m encdec_ros train anomaly`` or
``torchrun ... -m encdec_ros train anomaly``) in a child process; its peak resident memory
is the high-water mark the kernel reports for it when it ends (``wait4``'s ``ru_maxrss``,
which covers its own DataLoader workers too).

1. Memory: the same model on 1, 10 and 50 simulated flights (``encdec sim --flights``),
   with the shards built in the run (a fresh cache each time) and, with ``--compare-ref``,
   the same runs with the code of a git ref from before streaming (everything in memory).
2. Speed: training windows per second (epochs x training windows / training seconds, the
   validation passes included) on ``--speed-flights`` flights with one process (torch's
   default threads, and one thread) and with two processes under torchrun (gloo, one
   thread each).

Usage::

    nice -n 10 python benchmarks/bench_fleet.py --compare-ref edcdc72
    nice -n 10 python benchmarks/bench_fleet.py --skip-memory --speed-flights 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / 'config' / 'sim_spec.yaml'


def fleet(work: Path, flights: int, duration: float) -> Path:
    """A cached fleet of ``flights`` flights (3 vehicles), written by ``encdec sim``."""
    path = work / f'fleet_{flights}x{duration:g}s'
    if not (path / 'bags.txt').exists():
        run([sys.executable, '-m', 'encdec_ros', 'sim', '--flights', str(flights),
             '--vehicles', '3', '--duration', str(duration), '--out', str(path)], cwd=ROOT)
    return path


def run(cmd: list[str], *, cwd: Path, env: dict | None = None) -> dict:
    """Run a command; its wall time, peak RSS (MiB, with its children) and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ''
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}')
    return {'seconds': time.perf_counter() - t0, 'rss_mib': usage.ru_maxrss / 1024,
            'output': out}


def train(bags: Path | list[Path], out: Path, *, src: Path = ROOT, extra: list[str] = (),
          procs: int = 1, env: dict | None = None) -> dict:
    """``encdec train anomaly`` (under torchrun for procs > 1); figures from its model.yaml."""
    named = [a for b in (bags if isinstance(bags, list) else [bags]) for a in ('--bag', str(b))]
    args = ['-m', 'encdec_ros', 'train', 'anomaly', *named, '--spec', str(SPEC),
            '--out', str(out), '--force', *extra]
    if procs > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
               f'--nproc_per_node={procs}', *args]
    else:
        cmd = [sys.executable, *args]
    res = run(cmd, cwd=src, env={'PYTHONPATH': str(src), **(env or {})})
    meta = yaml.safe_load((out / 'model.yaml').read_text())
    res['training'] = meta['training']
    return res


def main() -> int:
    """Run the measurements, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_fleet'))
    p.add_argument('--counts', default='1,10,50', help='flights per memory run')
    p.add_argument('--duration', type=float, default=60.0, help='seconds per flight')
    p.add_argument('--memory-epochs', type=int, default=1)
    p.add_argument('--compare-ref', metavar='REF',
                   help='also run the memory figures with the code of this git ref')
    p.add_argument('--speed-flights', type=int, default=10)
    p.add_argument('--speed-epochs', type=int, default=3)
    p.add_argument('--speed-batches', default='64,512',
                   help='global batch sizes of the speed runs (64: the default)')
    p.add_argument('--skip-memory', action='store_true')
    p.add_argument('--skip-speed', action='store_true')
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    counts = [int(c) for c in args.counts.split(',')]
    results: dict = {'machine': {'cpus': os.cpu_count(), 'load_before': os.getloadavg()},
                     'memory': [], 'speed': []}
    model = ['--arch', 'mlp', '--hidden', '32', '--latent', '8', '--seed', '0']

    if not args.skip_memory:
        ref_src = None
        if args.compare_ref:
            ref_src = Path(tempfile.mkdtemp(prefix='bench_fleet_ref_'))
            subprocess.run(f'git -C {ROOT} archive {args.compare_ref} | tar -x -C {ref_src}',
                           shell=True, check=True)
        largest = fleet(work, max(counts), args.duration)
        names = (largest / 'bags.txt').read_text().split('\n')[1:]
        for n in counts:
            listing = work / f'list_{n}.txt'
            listing.write_text(''.join(f'{largest / name}\n' for name in names[:n]))
            for workers in ('0', None):
                extra = model + ['--epochs', str(args.memory_epochs), '--cache',
                                 str(work / f'cache_{n}_{workers}_{time.time_ns()}')]
                if workers is not None:
                    extra += ['--workers', workers]
                res = train(listing, work / 'model_mem', extra=extra)
                t = res['training']
                results['memory'].append({
                    'flights': n, 'code': 'streamed', 'workers': workers or 'auto',
                    'rss_mib': round(res['rss_mib'], 1), 'seconds': round(res['seconds'], 1),
                    'train_windows': t['windows']['train']})
                print(f'{n:>3} flights, streamed (workers {workers or "auto"}): peak RSS '
                      f'{res["rss_mib"]:.0f} MiB, {res["seconds"]:.0f} s', flush=True)
            if ref_src is not None:
                res = train([largest / name for name in names[:n]], work / 'model_mem_ref',
                            src=ref_src,
                            extra=model + ['--epochs', str(args.memory_epochs)])
                results['memory'].append({
                    'flights': n, 'code': f'in memory ({args.compare_ref})', 'workers': '-',
                    'rss_mib': round(res['rss_mib'], 1), 'seconds': round(res['seconds'], 1),
                    'train_windows': res['training']['windows']['train']})
                print(f'{n:>3} flights, in memory ({args.compare_ref}): peak RSS '
                      f'{res["rss_mib"]:.0f} MiB, {res["seconds"]:.0f} s', flush=True)

    if not args.skip_speed:
        bags = fleet(work, args.speed_flights, args.duration)
        cache = work / 'cache_speed'
        speed = ['--arch', 'lstm', '--epochs', str(args.speed_epochs), '--patience', '100',
                 '--seed', '0', '--cache', str(cache)]
        train(bags, work / 'model_warm', extra=speed[:2] + ['--epochs', '1', '--cache',
                                                            str(cache)])  # builds the shards
        runs = [(batch, label, procs, extra, env)
                for batch in (int(b) for b in args.speed_batches.split(','))
                for label, procs, extra, env in (
                    ('1 process, torch default threads', 1, [], {}),
                    ('1 process, 1 thread', 1, ['--threads', '1'], {}),
                    ('2 processes (torchrun, gloo), 1 thread each', 2, [],
                     {'OMP_NUM_THREADS': '1'}))]
        for batch, label, procs, extra, env in runs:
            res = train(bags, work / 'model_speed', procs=procs, env=env,
                        extra=speed + extra + ['--batch-size', str(batch)])
            t = res['training']
            rate = t['windows']['train'] * t['epochs_run'] / t['seconds']['train']
            label = f'batch {batch}, {label}'
            results['speed'].append({'run': label, 'processes': procs, 'batch': batch,
                                     'windows_per_s': round(rate, 1),
                                     'train_seconds': t['seconds']['train'],
                                     'wall_seconds': round(res['seconds'], 1),
                                     'val_loss': t['val_loss'],
                                     'train_windows': t['windows']['train'],
                                     'epochs': t['epochs_run']})
            print(f'{label}: {rate:.0f} training windows/s ({t["seconds"]["train"]:.1f} s of '
                  f'training, {res["seconds"]:.0f} s wall, validation loss '
                  f'{t["val_loss"]:.5f})', flush=True)

    results['machine']['load_after'] = os.getloadavg()
    results['multi_machine'] = [
        'on each machine: torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d '
        '--rdzv-endpoint HOST0:29400 --rdzv-id fleet1 -m encdec_ros train anomaly '
        '--bag /shared/fleet --spec spec.yaml --cache /shared/shards --out /shared/models/m']
    (work / 'results.json').write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != 'multi_machine'}, indent=1))
    print(f'wrote {work / "results.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
