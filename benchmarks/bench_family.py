"""The autoencoder family side by side: every architecture x regulariser and the classical
baselines, on the synthetic robot's held-out fault flights and on SKAB, in one run.

What runs is what the CLI runs: every model is trained by ``encdec train anomaly`` itself
(in-process through ``encdec_ros.cli.main``, every command written to --work/commands.log)
with the CLI's defaults and only the row's family flags, plus --threads and --time-limit to
bound the run's cost; it is evaluated by the code ``encdec eval anomaly`` runs
(``evaluate_bag`` with the CLI's arguments: the same scorer as the live node), which also
hands back the scores for the AUC. SKAB follows benchmarks/bench_skab.py (``encdec bag
from-csv``, ``--train-span :400rows --keep-labelled``, ``--points messages --eval-span
400rows:``); the sim follows benchmarks/bench_anomaly_sim.py (2 x 300 s of normal flight).

Choosing settings by cross-validation across SKAB's experiment groups:

- each regulariser's setting (VAE beta, sparse penalty, contractive weight, denoising
  corruption, PCA components) is chosen from two candidates (the CLI default first) on
  GRID_ARCH by the pooled F1 (then AUC) of two groups, and every architecture's row scores
  the third group with it; each group is held out in turn, every file counted once;
- the setting chosen on all three groups is what the CLI default should be, and what the
  synthetic robot (never used for these choices) runs;
- the default architecture: the row with the best pooled F1 on two SKAB groups, reported on
  the third (rotated), and the row with the most faults detected less false alarms on half
  of the sim's fault flights, reported on the other half; the CLI default changes only when
  every fold picks the same row.

Figures per row: parameters, training seconds, ONNX latency at batch 1 (p50, and as a ratio
to the robust z graph, the floor, in the same run), ONNX-vs-torch parity (numpy for the
baselines); sim: fault kinds detected (of 6), events detected, mean delay, FAR outside the
grace, false alarms per hour; SKAB (rotated): pooled point-wise F1 / FAR / MAR and AUC, with
the F1 of flagging every point beside it.

Usage::

    nice -n 10 python benchmarks/bench_family.py --json out/bench_family.json
    nice -n 10 python benchmarks/bench_family.py --quick          # a reduced table, minutes

Work (bags, models, per-file results) is cached under --work per hash of the code and the
CLI's defaults; a second run only prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ('stuck', 'bias_drift', 'spikes', 'vibration', 'motor_degradation', 'motor_failure')
FIT_ROWS = 400            # SKAB protocol: fit on the first 400 rows of each file
GROUPS = ('valve1', 'valve2', 'other')


@dataclass(frozen=True)
class Config:
    """One row: family options (AEConfig fields and 'noise') on top of the CLI defaults."""

    name: str
    options: tuple[tuple[str, Any], ...]
    family: str = ''          # the grid this row belongs to ('' for a fixed row)

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def tag(self) -> str:
        return '_'.join(f'{k}-{v}' for k, v in self.options).replace(',', '+').replace(
            ':', '=').replace('/', '')

    @property
    def argv(self) -> list[str]:
        """The flags of ``encdec train anomaly`` for this row (every other option is the CLI
        default)."""
        names = {'warmup': 'kl-warmup'}
        parts = []
        for key, value in self.options:
            parts += [f'--{names.get(key, key.replace("_", "-"))}', f'{value:g}'
                      if isinstance(value, float) else str(value)]
        return parts

    @property
    def cli(self) -> str:
        return ' '.join(shlex.quote(p) for p in self.argv)


def C(name: str, family: str = '', **opts: Any) -> Config:
    return Config(name, tuple(opts.items()), family)


# Each regulariser's grid, tried on GRID_ARCH and chosen by rotated CV on SKAB.
GRIDS: dict[str, list[dict[str, Any]]] = {      # the CLI's default first
    'vae': [{'reg': 'vae', 'beta': 1.0}, {'reg': 'vae', 'beta': 0.1}],
    'sparse': [{'reg': 'sparse', 'sparsity': 'l1', 'sparsity_weight': 1e-2},
               {'reg': 'sparse', 'sparsity': 'l1', 'sparsity_weight': 1e-3}],
    'contractive': [{'reg': 'contractive', 'contractive_weight': 1e-3},
                    {'reg': 'contractive', 'contractive_weight': 1e-4}],
    'denoise': [{'noise': 'relative,gaussian:0.1'},
                {'noise': 'relative,gaussian:0.1,spikes:0.01:3'}],
}
PCA_GRID = [{'latent': 4}, {'latent': 8}]
NETWORKS = ('mlp', 'lstm', 'gru', 'conv')
GRID_ARCH = 'conv'
"""The network the regularisers' settings are chosen on: the cheapest to train on SKAB."""


def grid_name(family: str, opts: dict[str, Any]) -> str:
    """A short row name for a grid point."""
    if family == 'vae':
        return f'vae b={opts["beta"]:g}'
    if family == 'sparse':
        return f'sparse {opts["sparsity"]} {opts["sparsity_weight"]:g}'
    if family == 'contractive':
        return f'contractive {opts["contractive_weight"]:g}'
    if family == 'denoise':
        short = opts['noise'].replace('relative,', '').replace('gaussian:', 'g')
        return 'denoise ' + short.replace('spikes:', 's')
    return f'pca k={opts["latent"]}'


# --------------------------------------------------------------------------- helpers


def auc(scores: Any, labels: Any) -> float | None:
    """ROC-AUC of scores against boolean labels (ties share ranks; NaN scores rank lowest)."""
    import numpy as np
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    s = np.where(np.isfinite(s), s, -np.inf)
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from encdec_ros.anomaly.evaluate import pooled

    return pooled([{'pointwise': r['pointwise']} for r in rows])


def latency_ms(model: Path, runs: int = 300) -> float:
    """p50 of ONNX Runtime calls at batch 1 on the CPU (one thread), all outputs."""
    import numpy as np

    from encdec_ros.engine import InferenceEngine

    engine = InferenceEngine(model / 'model.onnx', device='cpu', threads=1, warmup=20)
    shape = tuple(1 if d is None else d for d in engine.input_shapes[0])
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for _ in range(runs):
        engine.run_many({engine.input_names[0]: x})
    return engine.latency_ms()['p50']


def model_figures(model: Path) -> dict[str, Any]:
    import yaml

    meta = yaml.safe_load((model / 'model.yaml').read_text())
    t = meta['training']
    return {'parameters': meta['architecture']['parameters'],
            'train_s': t['seconds']['train'], 'epochs': t['epochs_run'],
            'parity': t['export']['max_abs_diff'], 'threshold': meta['threshold'],
            'folds': t.get('folds', 0)}


def code_key() -> str:
    """A short hash of the code and the CLI defaults a model depends on: cached results are
    kept per key, so a run after the code or a default changed trains again instead of
    mixing old and new figures."""
    import hashlib

    h = hashlib.sha256()
    for rel in ('training/anomaly.py', 'training/models.py', 'training/family.py',
                'training/data.py', 'encdec_ros/anomaly/scorer.py',
                'encdec_ros/anomaly/calibrate.py', 'encdec_ros/anomaly/baselines.py',
                'encdec_ros/anomaly/evaluate.py', 'encdec_ros/cli/anomaly.py',
                'encdec_ros/io/csvbag.py', 'encdec_ros/cli/bag.py'):
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:8]


def cached(path: Path, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


COMMANDS: list[str] = []
"""Every encdec command this run executed (also written to --work/commands.log)."""


def encdec(argv: list[str], log_path: Path) -> None:
    """Run one ``encdec`` command in-process, exactly as typed; its output goes to the log."""
    import contextlib

    from encdec_ros.cli import main as cli_main

    line = 'encdec ' + ' '.join(shlex.quote(a) for a in argv)
    COMMANDS.append(line)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, 'a') as log:
        print(f'$ {line}', file=log, flush=True)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = cli_main(argv)
    if code != 0:
        raise SystemExit(f'{line} failed (exit {code}); see {log_path}')


def train(bags: list[Path], spec: Path, out: Path, cfg: Config, args: argparse.Namespace,
          *extra: str) -> Path:
    """``encdec train anomaly`` with the CLI's defaults, the row's flags and ``extra`` (the
    protocol's span), plus the resource flags of this run (threads, time limit)."""
    if (out / 'model.yaml').exists():
        return out
    argv = ['train', 'anomaly', *[a for b in bags for a in ('--bag', str(b))], '--spec',
            str(spec), '--out', str(out), '--force', *extra, *cfg.argv, *resource_flags(args)]
    encdec(argv, Path(args.work) / 'commands.log')
    return out


def resource_flags(args: argparse.Namespace) -> list[str]:
    """Flags that bound the run's cost, not the model: --threads and --time-limit."""
    out = ['--threads', str(args.threads)] if args.threads else []
    if args.time_limit:
        out += ['--time-limit', f'{args.time_limit:g}']
    if args.epochs:
        out += ['--epochs', str(args.epochs)]
    return out


# --------------------------------------------------------------------------- SKAB


def skab_bag(csv: Path, work: Path, args: argparse.Namespace) -> Path:
    """``encdec bag from-csv`` (the spec it writes is part of the defaults), cached."""
    bag = work / 'skab_bags' / f'{csv.parent.name}_{csv.stem}'
    if not (bag / 'metadata.yaml').exists():
        encdec(['bag', 'from-csv', str(csv), '--out', str(bag), '--overwrite'],
               Path(args.work) / 'commands.log')
    return bag


def skab_file(csv: Path, cfg: Config, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train on the first 400 rows of one SKAB file, score the rest (cached): the commands of
    benchmarks/bench_skab.py with the row's flags."""
    def make() -> dict[str, Any]:
        import numpy as np

        from encdec_ros.anomaly.evaluate import evaluate_bag, held_values, parse_span

        name = f'{csv.parent.name}_{csv.stem}'
        bag = skab_bag(csv, work, args)
        model = work / 'skab_models' / cfg.tag / name
        t0 = time.perf_counter()
        train([bag], bag / 'spec.yaml', model, cfg, args, '--train-span', f':{FIT_ROWS}rows',
              '--keep-labelled')
        wall = time.perf_counter() - t0
        # what `encdec eval anomaly --model M --bag B --points messages --eval-span 400rows:`
        # computes (its defaults), keeping the scores for the AUC
        res = evaluate_bag(str(model), bag, device='cpu', points='messages',
                           eval_span=parse_span(f'{FIT_ROWS}rows:'))
        scores = held_values(res.decision_times_ns, res.scores, res.point_times_ns,
                             fill=np.nan)
        return {'file': name, 'group': csv.parent.name, 'pointwise': res.metrics['pointwise'],
                'scores': [None if not np.isfinite(v) else float(v) for v in scores],
                'labels': [bool(v) for v in res.point_labels], 'wall_s': wall,
                **model_figures(model)}

    return cached(work / 'skab_results' / cfg.tag / f'{csv.parent.name}_{csv.stem}.json', make)


def skab_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    if not rows:
        return {}
    total = pool(rows)
    scores = np.concatenate([np.array(r['scores'], dtype=np.float64) for r in rows])
    labels = np.concatenate([np.array(r['labels'], dtype=bool) for r in rows])
    return {'f1': total['f1'], 'far': total['far'], 'mar': total['mar'],
            'auc': auc(scores, labels), 'flag_all_f1': total['flag_everything_f1'],
            'files': len(rows)}


# --------------------------------------------------------------------------- the sim


def sim_flight(args: argparse.Namespace, name: str, seed: int, duration: float,
               faults: str) -> Path:
    """A flight of the synthetic hexacopter (training.sim, the code of ``encdec sim``)."""
    from training.sim import SimConfig, simulate, write_bag

    import hashlib

    key = hashlib.sha256((ROOT / 'training' / 'sim.py').read_bytes()).hexdigest()[:8]
    path = Path(args.work) / f'bags_{key}' / name
    if not (path / 'metadata.yaml').exists():
        write_bag(simulate(SimConfig(duration_s=duration, seed=seed, faults=faults)), path)
    return path


def sim_run(cfg: Config, work: Path, train_bags: list[Path], test_bags: list[Path],
            args: argparse.Namespace) -> dict[str, Any]:
    """Train on the normal flights, evaluate on each fault flight (cached per flight)."""
    from encdec_ros.anomaly.evaluate import evaluate_bag

    model = work / 'sim_models' / cfg.tag
    t0 = time.perf_counter()
    train(train_bags, ROOT / 'config' / 'sim_spec.yaml', model, cfg, args)
    wall = time.perf_counter() - t0
    flights = []
    for bag in test_bags:
        def make(bag: Path = bag) -> dict[str, Any]:
            # what `encdec eval anomaly --model M --bag B` computes with its defaults
            res = evaluate_bag(str(model), bag, device='cpu')
            m = res.metrics
            return {'flight': bag.name, 'events': [
                        {k: e[k] for k in ('kind', 'detail', 'detected', 'delay_s')}
                        for e in m['events']],
                    'pointwise': m['pointwise'], 'after_grace': m['pointwise_after_grace'],
                    'false_alarms': m['alarms']['false_alarms'],
                    'hours': m['alarms'].get('normal_hours',
                                             float(res.times_ns[-1] - res.times_ns[0])
                                             * 1e-9 / 3600),
                    'grace_s': m['grace_s']}
        flights.append(cached(work / 'sim_results' / cfg.tag / f'{bag.name}.json', make))
    return {'flights': flights, 'wall_s': wall, **model_figures(model),
            'latency_ms': latency_ms(model)}


def sim_figures(flights: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from encdec_ros.anomaly.evaluate import pooled

    events = [e for f in flights for e in f['events']]
    per_kind = {k: [e for e in events if e['kind'] == k] for k in KINDS}
    hit = [e for e in events if e['detected']]
    outside = pooled([{'pointwise': f['after_grace']} for f in flights])
    hours = sum(f['hours'] for f in flights)
    return {'kinds_detected': sum(1 for v in per_kind.values()
                                  if v and all(e['detected'] for e in v)),
            'kinds_any': sum(1 for v in per_kind.values() if any(e['detected'] for e in v)),
            'events_detected': len(hit), 'events': len(events),
            'per_kind': {k: f'{sum(e["detected"] for e in v)}/{len(v)}'
                         for k, v in per_kind.items()},
            'mean_delay_s': float(np.mean([e['delay_s'] for e in hit])) if hit else None,
            'far_after_grace': outside['far'],
            'false_alarms': sum(f['false_alarms'] for f in flights),
            'false_alarms_per_hour': sum(f['false_alarms'] for f in flights) / hours
            if hours else None,
            'f1': pooled([{'pointwise': f['pointwise']} for f in flights])['f1']}


def sim_score(fig: dict[str, Any]) -> tuple:
    """Order of merit on the sim: faults detected less false alarms (a false alarm costs as
    much as a missed fault), then the shorter mean delay."""
    return (fig['events_detected'] - fig['false_alarms'], -(fig['mean_delay_s'] or 99.0))


# --------------------------------------------------------------------------- main


@dataclass
class Row:
    cfg: Config
    skab: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def skab_score(fig: dict[str, Any]) -> tuple:
    """Order of merit on SKAB: the pooled F1 with the CLI's own threshold (what a user gets),
    then the AUC."""
    return (fig.get('f1') or 0.0, fig.get('auc') or 0.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=str(ROOT.parent / 'shared' / 'data' / 'skab'))
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_family'))
    p.add_argument('--train-seeds', default='21,22')
    p.add_argument('--train-duration', type=float, default=300.0)
    p.add_argument('--test-seeds', default='2,3,4,5,6,7')
    p.add_argument('--test-duration', type=float, default=180.0)
    p.add_argument('--threads', type=int, default=1,
                   help='encdec train anomaly --threads (1: fastest on a loaded machine; 0: '
                        'torch decides)')
    p.add_argument('--time-limit', type=float, default=300.0,
                   help='encdec train anomaly --time-limit per training (300; 0: none)')
    p.add_argument('--epochs', type=int, help='encdec train anomaly --epochs (a reduced run)')
    p.add_argument('--quick', action='store_true',
                   help='reduced: --epochs 4, one sim training flight, 2 fault flights, 2 '
                        'SKAB files per group, no grid')
    p.add_argument('--no-sim', action='store_true')
    p.add_argument('--no-skab', action='store_true')
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args()
    if args.quick:
        args.epochs = args.epochs or 4
        args.train_seeds = '21'
        args.test_seeds = '2,3'

    import logging
    logging.disable(logging.WARNING)
    import numpy as np

    work = Path(args.work) / f'code_{code_key()}'
    data = Path(args.data)
    files = sorted(f for f in data.glob('*/*.csv') if f.parent.name in GROUPS)
    if args.quick:
        files = [f for g in GROUPS for f in [x for x in files if x.parent.name == g][:2]]
    if not args.no_skab and not files:
        print(f'no SKAB files under {data}; pass --data or --no-skab')
        return 1
    started = time.perf_counter()
    log = lambda text: print(f'[{time.perf_counter() - started:7.0f} s] {text}',  # noqa: E731
                             flush=True)

    # ---- 1. each regulariser's setting, on the MLP: chosen on two SKAB groups for the third
    choices: dict[str, dict[str, dict[str, Any]]] = {}     # family -> held-out group -> opts
    defaults: dict[str, dict[str, Any]] = {}               # family -> chosen on all groups
    grid_rows: dict[str, list[Row]] = {}
    grids = [*GRIDS.items(), ('pca', PCA_GRID)]
    if not args.no_skab and not args.quick:
        for family, grid in grids:
            arch = 'pca' if family == 'pca' else GRID_ARCH
            rows = []
            for opts in grid:
                cfg = C(f'{arch} {grid_name(family, opts)}', family, arch=arch, **opts)
                per_file = [skab_file(f, cfg, work, args) for f in files]
                rows.append(Row(cfg, {'files': per_file}))
                fig = skab_figures(per_file)
                log(f'grid {cfg.name}: F1 {fig["f1"]:.3f} AUC {fig["auc"]:.3f}')
            grid_rows[family] = rows

            def best_on(groups: set[str], rows: list[Row] = rows) -> Row:
                return max(rows, key=lambda r: skab_score(skab_figures(
                    [x for x in r.skab['files'] if x['group'] in groups])))

            choices[family] = {g: dict(best_on(set(GROUPS) - {g}).cfg.options)
                               for g in GROUPS}
            defaults[family] = dict(best_on(set(GROUPS)).cfg.options)
            log(f'{family}: for ' + ', '.join(
                f'{g} (chosen on the others): {grid_name(family, choices[family][g])}'
                for g in GROUPS) + f'; on all groups: {grid_name(family, defaults[family])}')
    else:                       # the CLI's defaults (the first grid point)
        defaults = {family: dict(grid[0]) for family, grid in grids}
        choices = {family: {g: defaults[family] for g in GROUPS} for family, _ in grids}

    # ---- 2. the table's rows: every architecture x regulariser with the chosen settings
    def strip(opts: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in opts.items() if k != 'arch'}

    def setting(family: str, g: str | None) -> dict[str, Any]:
        return strip(choices[family][g] if g else defaults[family])

    table: list[tuple[str, str, Callable[[str | None], Config]]] = []
    table.append(('robust_z', 'none', lambda g: C('robust z', arch='robust_z')))
    table.append(('pca', 'none', lambda g: C(f'pca k={setting("pca", g)["latent"]}',
                                             arch='pca', **setting('pca', g))))
    for arch in NETWORKS:
        table.append((arch, 'none', lambda g, a=arch: C(a, arch=a)))
        if arch == 'conv':
            table.append((arch, 'transposed', lambda g: C('conv transposed', arch='conv',
                                                          upsample='transposed')))
        if arch == 'gru':          # a recurrent cousin of the LSTM: plain only (time)
            continue
        for family in GRIDS:
            def make(g: str | None, a: str = arch, fam: str = family) -> Config:
                opts = setting(fam, g)
                return C(f'{a} {grid_name(fam, opts)}', arch=a, **opts)
            table.append((arch, family, make))
    # undercomplete vs overcomplete: the MLP with a code larger than its input
    table.append(('mlp', 'overcomplete', lambda g: C('mlp overcomplete', arch='mlp')))
    table.append(('mlp', 'overcomplete+sparse', lambda g: C(
        f'mlp overcomplete {grid_name("sparse", setting("sparse", g))}', arch='mlp',
        **setting('sparse', g))))

    def overcomplete(cfg: Config, inputs: int) -> Config:
        if 'overcomplete' not in cfg.name:
            return cfg
        size = int(np.ceil(inputs * 1.1))
        return Config(cfg.name, cfg.options + (('hidden', size), ('latent', size)))

    rows: list[Row] = []
    skab_inputs = 0
    if not args.no_skab:
        import yaml

        bag = skab_bag(files[0], work, args)
        spec = yaml.safe_load((bag / 'spec.yaml').read_text())
        skab_inputs = int(spec['window']) * sum(len(t.get('fields', []))
                                                for t in spec['topics'].values())
    for arch, family, make in table:
        row = Row(make(None))
        if not args.no_skab:
            held = []          # each file once, with the setting chosen without its group
            for g in GROUPS:
                cfg = overcomplete(make(g), skab_inputs)
                held += [skab_file(f, cfg, work, args) for f in files if f.parent.name == g]
            row.skab = skab_figures(held)
            row.skab['rotated_rows'] = held
            log(f'SKAB {row.cfg.name}: F1 {row.skab["f1"]:.3f} FAR '
                f'{100 * row.skab["far"]:.1f} % MAR {100 * row.skab["mar"]:.1f} % AUC '
                f'{row.skab["auc"]:.3f}')
        rows.append(row)

    # ---- 3. the synthetic robot with the defaults chosen on all SKAB groups
    sim_inputs = 0
    if not args.no_sim:
        train_bags = [sim_flight(args, f'normal_{s}', int(s), args.train_duration, 'none')
                      for s in args.train_seeds.split(',')]
        test_bags = [sim_flight(args, f'faults_{s}', int(s), args.test_duration, 'all')
                     for s in args.test_seeds.split(',')]
        from encdec_ros.io.bag import BagSource, bind_spec
        from encdec_ros.io.spec import SignalSpec

        with BagSource(train_bags[0]) as first:
            sim_spec = bind_spec(SignalSpec.load(ROOT / 'config' / 'sim_spec.yaml'), first)
        sim_inputs = sim_spec.window * len(sim_spec.channels)
        for row in rows:
            cfg = overcomplete(row.cfg, sim_inputs)
            run = sim_run(cfg, work, train_bags, test_bags, args)
            row.sim = {**sim_figures(run['flights']), 'flights': run['flights']}
            row.figures = {k: run[k] for k in ('parameters', 'train_s', 'epochs', 'parity',
                                               'latency_ms', 'wall_s')}
            log(f'sim {cfg.name}: {row.sim["events_detected"]}/{row.sim["events"]} events, '
                f'FA/h {row.sim["false_alarms_per_hour"]:.1f}, trained in '
                f'{run["train_s"]:.0f} s')
    else:
        for row in rows:
            first = row.skab.get('rotated_rows', [{}])[0]
            row.figures = {k: first.get(k) for k in ('parameters', 'train_s', 'parity')}

    # ---- 4. the table
    floor = next((r.figures.get('latency_ms') for r in rows if r.cfg.opts.get('arch') ==
                  'robust_z'), None)
    print()
    print(f'The family, one run ({(time.perf_counter() - started) / 60:.0f} min). SKAB: '
          f'{len(files)} files, fit on the first {FIT_ROWS} rows, each group held out in turn '
          'with the settings chosen on the other two, every file counted once, pooled. Sim: '
          f'trained on {len(args.train_seeds.split(","))} x {args.train_duration:g} s, '
          f'{len(args.test_seeds.split(","))} x {args.test_duration:g} s held-out fault '
          'flights (6 kinds each), settings chosen on all SKAB groups.')
    head = (f'{"row":<30} {"params":>8} {"train s":>7} {"ms@1":>6} {"xfloor":>6} '
            f'{"parity":>7} | {"kinds":>5} {"events":>6} {"delay":>5} {"FAR*%":>6} '
            f'{"FA/h":>5} | {"F1":>5} {"FAR%":>5} {"MAR%":>5} {"AUC":>5}')
    print(head)
    print('-' * len(head))
    for row in rows:
        f, sim, k = row.figures, row.sim, row.skab
        lat = f.get('latency_ms')
        cells = [f'{row.cfg.name:<30}', f'{f.get("parameters") or 0:>8}',
                 f'{f.get("train_s") or 0:>7.1f}',
                 f'{lat:>6.3f}' if lat else f'{"":>6}',
                 f'{lat / floor:>6.1f}' if lat and floor else f'{"":>6}',
                 f'{f.get("parity") or 0:>7.1e}', '|']
        if sim:
            delay = sim['mean_delay_s']
            cells += [f'{sim["kinds_detected"]:>3}/6',
                      f'{sim["events_detected"]:>3}/{sim["events"]:<2}',
                      f'{delay:>5.2f}' if delay is not None else f'{"-":>5}',
                      f'{100 * sim["far_after_grace"]:>6.2f}',
                      f'{sim["false_alarms_per_hour"]:>5.1f}', '|']
        else:
            cells += [f'{"":>5} {"":>6} {"":>5} {"":>6} {"":>5}', '|']
        if k:
            cells += [f'{k["f1"]:>5.3f}', f'{100 * k["far"]:>5.1f}', f'{100 * k["mar"]:>5.1f}',
                      f'{k["auc"]:>5.3f}']
        print(' '.join(cells))
    if rows and rows[0].skab:
        print(f'flag every point on the same SKAB points: F1 {rows[0].skab["flag_all_f1"]:.3f}')
    print('CLI flags per row on the sim (beside the defaults; on SKAB each group gets the '
          'setting chosen on the other two, see the grid lines above; overcomplete: --hidden '
          f'and --latent {int(np.ceil(1.1 * skab_inputs))} on SKAB):')
    for row in rows:
        cfg = overcomplete(row.cfg, sim_inputs) if sim_inputs else row.cfg
        print(f'  {row.cfg.name:<30} {cfg.cli}')
    extra = ' '.join(resource_flags(args))
    print('commands (every option not shown is the CLI default; all of them are in '
          f'{Path(args.work) / "commands.log"}):\n'
          f'  SKAB: encdec bag from-csv FILE --out BAG; encdec train anomaly --bag BAG --spec '
          f'BAG/spec.yaml --out M --train-span :{FIT_ROWS}rows --keep-labelled ROW-FLAGS '
          f'{extra}; encdec eval anomaly --model M --bag BAG --points messages --eval-span '
          f'{FIT_ROWS}rows:\n'
          f'  sim: encdec train anomaly --bag normal_21 --bag normal_22 --spec '
          f'config/sim_spec.yaml --out M ROW-FLAGS {extra}; encdec eval anomaly --model M '
          '--bag faults_S')
    # ---- 5. the default architecture, by cross-validation
    choice = choose_default(rows, args)
    for line in choice['lines']:
        print(line)
    if args.json:
        out = {'settings': vars(args), 'choices': choices, 'defaults': defaults,
               'grids': {fam: [{'name': r.cfg.name, **skab_figures(r.skab['files']),
                                'per_group': {g: skab_figures([x for x in r.skab['files']
                                                               if x['group'] == g])
                                              for g in GROUPS}}
                               for r in rs] for fam, rs in grid_rows.items()},
               'rows': [{'name': r.cfg.name, 'options': r.cfg.opts, 'figures': r.figures,
                         'sim': {k: v for k, v in r.sim.items() if k != 'flights'},
                         'skab': {k: v for k, v in r.skab.items() if k != 'rotated_rows'}}
                        for r in rows],
               'default_architecture': {k: v for k, v in choice.items() if k != 'lines'},
               'commands': COMMANDS,
               'minutes': round((time.perf_counter() - started) / 60, 1)}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def choose_default(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    """The row chosen on part of the data, reported on the rest: SKAB (choose by pooled F1 on
    two groups, report the third, rotated) and the sim (choose on half the fault flights by
    faults detected less false alarms, report the other half); then whether the CLI's
    default architecture should change (only when every fold picks the same one)."""
    lines = ['', 'default architecture by cross-validation:']
    out: dict[str, Any] = {'skab': {}, 'sim': {}}
    picked: list[str] = []
    if rows and rows[0].skab:
        for g in GROUPS:
            def on(row: Row, groups: set[str]) -> dict[str, Any]:
                return skab_figures([x for x in row.skab['rotated_rows']
                                     if x['group'] in groups])
            others = set(GROUPS) - {g}
            best = max(rows, key=lambda r: skab_score(on(r, others)))
            held = on(best, {g})
            out['skab'][g] = {'chosen': best.cfg.name, **{k: held[k] for k in
                                                          ('f1', 'far', 'mar', 'auc')}}
            picked.append(best.cfg.name)
            lines.append(f'  SKAB: chosen on {"+".join(sorted(others))}: {best.cfg.name}; on '
                         f'{g}: F1 {held["f1"]:.3f} FAR {100 * held["far"]:.1f} % MAR '
                         f'{100 * held["mar"]:.1f} % AUC {held["auc"]:.3f}')
    if rows and rows[0].sim:
        flights = [f['flight'] for f in rows[0].sim['flights']]
        half = len(flights) // 2
        for a, b in ((flights[:half], flights[half:]), (flights[half:], flights[:half])):
            def fig(row: Row, names: list[str]) -> dict[str, Any]:
                return sim_figures([f for f in row.sim['flights'] if f['flight'] in names])
            best = max(rows, key=lambda r: sim_score(fig(r, a)))
            held = fig(best, b)
            out['sim'][','.join(b)] = {'chosen': best.cfg.name, **held}
            picked.append(best.cfg.name)
            lines.append(f'  sim: chosen on {",".join(a)}: {best.cfg.name}; on {",".join(b)}: '
                         f'{held["events_detected"]}/{held["events"]} events, FA/h '
                         f'{held["false_alarms_per_hour"]:.1f}, FAR* '
                         f'{100 * held["far_after_grace"]:.2f} %')
    current = cli_default_arch()
    unanimous = len(set(picked)) == 1 and picked
    out['current_default'] = current
    out['picked'] = picked
    out['change_to'] = picked[0] if unanimous and picked[0] != current else None
    if unanimous:
        lines.append(f'  every fold picks {picked[0]}' + (
            ' (the CLI default already)' if picked[0] == current
            else f': the CLI default ({current}) should change'))
    else:
        lines.append(f'  the folds disagree ({", ".join(picked)}): no clear winner, the CLI '
                     f'default ({current}) stays')
    out['lines'] = lines
    return out


def cli_default_arch() -> str:
    """``encdec train anomaly``'s default --arch."""
    from encdec_ros.cli import build_parser

    return build_parser().parse_args(['train', 'anomaly', '--bag', 'B', '--out', 'M']).arch


if __name__ == '__main__':
    sys.exit(main())
