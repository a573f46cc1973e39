"""Anomaly detection on the synthetic hexacopter: event recall per fault kind and false alarms
per architecture, on held-out fault flights. Prints a table (a benchmark, not a test).

Training flights (fault-free) and fault flights use different seeds, so every fault flight is
a trajectory, wind and noise the model has never seen; each carries the six fault kinds once,
each on a random channel or motor. Every model goes through ``encdec train anomaly``'s code
(training.anomaly.train_anomaly) and is evaluated with ``encdec eval anomaly``'s code
(encdec_ros.anomaly.evaluate.evaluate_bag: the same scorer as the live node).

Figures per architecture:

- event recall per fault kind (detected / injected; detected = the debounced flag is up at
  a decision inside the fault or within the grace after it) and the mean detection delay;
- point-wise FAR = FP / (FP + TN) over all aligned samples, strict, and outside the grace
  after each fault (one window plus the debouncer's release, where the window still holds
  faulty samples);
- false alarms per hour: flagged stretches that touch no fault.

Usage::

    nice -n 10 python benchmarks/bench_anomaly_sim.py                 # mlp, lstm and gru
    nice -n 10 python benchmarks/bench_anomaly_sim.py --arch lstm --test-seeds 2,3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ('stuck', 'bias_drift', 'spikes', 'vibration', 'motor_degradation', 'motor_failure')


def flight(work: Path, name: str, seed: int, duration: float, faults: str) -> Path:
    """A cached simulated bag."""
    from training.sim import SimConfig, simulate, write_bag

    path = work / 'bags' / name
    if not (path / 'metadata.yaml').exists():
        write_bag(simulate(SimConfig(duration_s=duration, seed=seed, faults=faults)), path)
    return path


def main() -> int:
    """Train per architecture, evaluate on every fault flight, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_anomaly_sim'))
    p.add_argument('--arch', action='append', choices=('mlp', 'lstm', 'gru'))
    p.add_argument('--train-seeds', default='21,22')
    p.add_argument('--train-duration', type=float, default=300.0)
    p.add_argument('--test-seeds', default='2,3,4,5,6')
    p.add_argument('--test-duration', type=float, default=180.0)
    p.add_argument('--hidden', type=int, default=32)
    p.add_argument('--latent', type=int, default=8)
    p.add_argument('--epochs', type=int, default=40)
    p.add_argument('--window', type=int, help="override the spec's window")
    p.add_argument('--stride', type=int, help="override the spec's stride")
    p.add_argument('--error', default='channel_max_flat',
                   choices=('mse', 'channel_max', 'channel_max_flat'))
    p.add_argument('--slow', type=float, default=1.0,
                   help='seconds of slow context (encdec train anomaly --slow; 1.0)')
    p.add_argument('--time-limit', type=float, default=600.0)
    p.add_argument('--retrain', action='store_true', help='train even if a model exists')
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args()

    import logging
    logging.disable(logging.WARNING)
    import numpy as np

    from encdec_ros.anomaly.evaluate import evaluate_bag, pooled
    from encdec_ros.anomaly.scorer import AnomalyScorer
    from training.anomaly import TrainOptions, train_anomaly
    from training.models import AEConfig

    work = Path(args.work)
    spec = ROOT / 'config' / 'sim_spec.yaml'
    train_bags = [flight(work, f'normal_{s}', int(s), args.train_duration, 'none')
                  for s in args.train_seeds.split(',')]
    test_bags = [flight(work, f'faults_{s}', int(s), args.test_duration, 'all')
                 for s in args.test_seeds.split(',')]
    table = {}
    for arch in args.arch or ['mlp', 'lstm', 'gru']:
        tag = (f'{arch}_h{args.hidden}_z{args.latent}_w{args.window or "spec"}_{args.error}'
               f'_slow{args.slow:g}')
        model = work / 'models' / tag
        t0 = time.perf_counter()
        if args.retrain or not (model / 'model.yaml').exists():
            opts = TrainOptions(model=AEConfig(arch=arch, hidden=args.hidden,
                                               latent=args.latent),
                                epochs=args.epochs, error=args.error, slow_s=args.slow,
                                time_limit_s=args.time_limit)
            train_anomaly(train_bags, spec, model, opts, window=args.window,
                          stride=args.stride, overwrite=True, say=lambda s: None,
                          show_progress=False)
        t_train = time.perf_counter() - t0
        scorer = AnomalyScorer(model, device='cpu')
        events, results = [], []
        for bag in test_bags:
            scorer.reset()
            res = evaluate_bag(scorer, bag)
            results.append(res)
            events += res.metrics['events']
        strict = pooled(results)
        outside = pooled([{'pointwise': r.metrics['pointwise_after_grace']} for r in results])
        hours = sum(float(r.times_ns[-1] - r.times_ns[0]) * 1e-9 / 3600 for r in results)
        false = sum(r.metrics['alarms']['false_alarms'] for r in results)
        per_kind = {}
        for kind in KINDS:
            evs = [e for e in events if e['kind'] == kind]
            hit = [e for e in evs if e['detected']]
            per_kind[kind] = {'detected': len(hit), 'events': len(evs),
                              'mean_delay_s': float(np.mean([e['delay_s'] for e in hit]))
                              if hit else None,
                              'missed': [e['detail'] for e in evs if not e['detected']]}
        lat = scorer.engine.latency_ms()
        table[arch] = {'per_kind': per_kind, 'far': strict['far'],
                       'far_after_grace': outside['far'], 'f1': strict['f1'],
                       'false_alarms_per_hour': false / hours if hours else None,
                       'train_s': round(t_train, 1), 'threshold': scorer.threshold_,
                       'grace_s': results[0].metrics['grace_s'],
                       'engine_batch_ms_p50': lat['p50'],
                       'parameters': scorer.model.section('architecture.parameters')}
        print(f'{arch}: done ({t_train:.0f} s training)', flush=True)

    print(f'\nsynthetic hexacopter: trained on {len(train_bags)} x {args.train_duration:g} s of '
          f'normal flight (seeds {args.train_seeds}), evaluated on {len(test_bags)} x '
          f'{args.test_duration:g} s held-out fault flights (seeds {args.test_seeds})')
    head = ''.join(f'{k[:12]:>13}' for k in KINDS)
    print(f'  {"arch":<6}{head}  {"FAR":>7} {"FAR*":>7} {"FA/h":>6} {"F1":>5}')
    for arch, row in table.items():
        cells = ''.join(f'{row["per_kind"][k]["detected"]:>9}/{row["per_kind"][k]["events"]:<3}'
                        for k in KINDS)
        print(f'  {arch:<6}{cells}  {100 * row["far"]:>6.2f}% {100 * row["far_after_grace"]:>6.2f}%'
              f' {row["false_alarms_per_hour"]:>6.1f} {row["f1"]:>5.2f}')
        delays = ', '.join(f'{k} {v["mean_delay_s"]:.2f} s' for k, v in row['per_kind'].items()
                           if v['mean_delay_s'] is not None)
        print(f'        mean delays: {delays}')
        missed = {k: v['missed'] for k, v in row['per_kind'].items() if v['missed']}
        if missed:
            print(f'        missed: {missed}')
    print('  FAR: point-wise false alarm rate over all normal samples; FAR*: outside the grace '
          f'({table[next(iter(table))]["grace_s"]:.2f} s) after each fault, where the window '
          'still holds faulty samples; FA/h: false alarm events per hour')
    if args.json:
        Path(args.json).write_text(json.dumps({'settings': vars(args), 'results': table},
                                              indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
