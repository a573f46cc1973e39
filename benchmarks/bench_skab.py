"""SKAB outlier-detection protocol through the encdec pipeline; prints F1 / FAR / MAR.

For each experiment file of ../shared/data/skab (valve1, valve2, other; not the
anomaly-free file):

1. convert it with the same code as ``encdec bag from-csv FILE --out BAG --sep ';'
   --time-col datetime --label-col anomaly --exclude changepoint``;
2. train an autoencoder on its first 400 rows (``encdec train anomaly --train-span :T`` with
   T the time of row 400; normalisation, early stopping and threshold calibration all see
   those rows only);
3. replay the whole file through the same scorer as the live node (causal: a row's flag
   depends on that row and the ones before it) and count the rows after the first 400;

then pool the point-wise confusion matrices of all files: F1 = TP / (TP + (FP + FN) / 2),
FAR = FP / (FP + TN), MAR = FN / (FN + TP), beside SKAB's published leaderboard (whose
reference pipelines look up to 60 rows ahead).

Usage::

    nice -n 10 python benchmarks/bench_skab.py                      # all three archs
    nice -n 10 python benchmarks/bench_skab.py --arch lstm --window 30

Figures vary a little with the torch build (training is seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEADERBOARD = [  # SKAB outlier detection, from ../shared/data/README.md: F1, FAR %, MAR %
    ('Conv-AE', 0.78, 13.55, 28.02), ('MSET', 0.78, 39.73, 14.13),
    ('T-squared+Q (PCA)', 0.76, 26.62, 24.92), ('LSTM-AE', 0.74, 29.96, 25.92),
    ('T-squared', 0.66, None, None), ('LSTM-VAE', 0.56, None, None),
    ('Vanilla LSTM', 0.54, None, None), ('Vanilla AE', 0.39, None, None),
    ('Isolation forest', 0.29, None, None),
]
FIT_ROWS = 400


def convert(csv: Path, out: Path) -> Path:
    """The bag of one SKAB file (converted once, as `encdec bag from-csv` does)."""
    from encdec_ros.io.csvbag import csv_to_bag

    if not (out / 'metadata.yaml').exists():
        csv_to_bag(csv, out, sep=';', time_col='datetime', label_col='anomaly',
                   exclude=['changepoint'], overwrite=True)
    return out


def run_file(csv: Path, work: Path, args: argparse.Namespace) -> dict:
    """Train on the first 400 rows of one file, score the rest; return its figures."""
    import numpy as np

    from encdec_ros.anomaly.evaluate import evaluate_recording
    from encdec_ros.anomaly.scorer import AnomalyScorer
    from encdec_ros.io.bag import read_bag
    from encdec_ros.io.spec import SignalSpec
    from training.anomaly import TrainOptions, train_anomaly
    from training.models import AEConfig

    name = f'{csv.parent.name}_{csv.stem}'
    bag = convert(csv, work / 'bags' / name)
    spec = SignalSpec.load(bag / 'spec.yaml')
    rec = read_bag(bag, spec.with_window(window=args.window, stride=1))
    stamps = rec.streams[spec.topic_names[0]].stamps_ns        # one message per CSV row
    fit_end_s = (int(stamps[FIT_ROWS]) - int(rec.times_ns[0])) * 1e-9
    opts = TrainOptions(model=AEConfig(arch=args.arch, hidden=args.hidden, latent=args.latent),
                        epochs=args.epochs, patience=args.patience, seed=args.seed,
                        val_fraction=args.val_fraction, calib_fraction=0.0,
                        error=args.error, slow_s=args.slow, threshold_rule=args.threshold,
                        risk=args.risk,
                        threshold_scale=args.threshold_scale, debounce_k=args.k,
                        debounce_n=args.n, release=args.release, batch_size=32,
                        train_span=(None, fit_end_s), exclude_labelled=False, threads=1)
    model = work / 'models' / args.tag / name
    train_anomaly([bag], spec, model, opts, window=args.window, stride=1, overwrite=True,
                  say=lambda s: None, show_progress=False)
    scorer = AnomalyScorer(model, device='cpu')
    result = evaluate_recording(scorer, rec, points='messages', eval_span=(fit_end_s, None))
    pw = result.metrics['pointwise']
    assert pw['tp'] + pw['fp'] + pw['fn'] + pw['tn'] == len(stamps) - FIT_ROWS, name
    return {'file': name, 'pointwise': pw, 'flagged': float(np.mean(result.point_flags)),
            'threshold': scorer.threshold_}


def main() -> int:
    """Run the protocol and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=str(ROOT.parent / 'shared' / 'data' / 'skab'))
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_skab'))
    p.add_argument('--arch', action='append', choices=('mlp', 'lstm', 'gru'))
    p.add_argument('--window', type=int, default=30)
    p.add_argument('--hidden', type=int, default=32)
    p.add_argument('--latent', type=int, default=8)
    p.add_argument('--epochs', type=int, default=60)
    p.add_argument('--patience', type=int, default=10)
    p.add_argument('--val-fraction', type=float, default=0.3)
    p.add_argument('--error', default='channel_max',
                   choices=('mse', 'channel_max', 'channel_max_flat'))
    p.add_argument('--slow', type=float, default=0.0,
                   help='seconds of slow context (encdec train anomaly --slow; 0.0)')
    p.add_argument('--threshold', default='quantile', choices=('pot', 'quantile'))
    p.add_argument('--risk', type=float, default=0.01)
    p.add_argument('--threshold-scale', type=float, default=2.85)
    p.add_argument('--k', type=int, default=1)
    p.add_argument('--n', type=int, default=1)
    p.add_argument('--release', type=float, default=1.0)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args()

    import logging
    logging.disable(logging.WARNING)          # rosbags / reader notes about the CSV bags
    from encdec_ros.anomaly.evaluate import pooled

    data = Path(args.data)
    if not data.is_dir():
        print(f'{data} is absent; set --data to the SKAB folder (see ../shared/data/README.md)')
        return 1
    files = sorted(f for f in data.glob('*/*.csv') if f.parent.name != 'anomaly-free')
    work = Path(args.work)
    rows = {}
    for arch in args.arch or ['mlp', 'lstm', 'gru']:
        args.arch, start = arch, time.perf_counter()
        args.tag = f'{arch}_w{args.window}_slow{args.slow:g}'
        per_file = [run_file(f, work, args) for f in files]
        total = pooled([{'pointwise': r['pointwise']} for r in per_file])
        rows[arch] = {'pooled': total, 'files': per_file,
                      'seconds': round(time.perf_counter() - start, 1)}
        print(f'{arch}: F1 {total["f1"]:.3f}  FAR {100 * total["far"]:.2f} %  MAR '
              f'{100 * total["mar"]:.2f} %  ({len(files)} files, {rows[arch]["seconds"]} s)',
              flush=True)
    print(f'\nSKAB outlier detection, {len(files)} files, fit on the first {FIT_ROWS} rows of '
          'each, pooled point-wise')
    print(f'  {"method":<34} {"F1":>5} {"FAR %":>7} {"MAR %":>7}  flags')
    for arch, row in rows.items():
        t = row['pooled']
        print(f'  {"encdec " + arch + f" AE (window {args.window})":<34} {t["f1"]:>5.2f} '
              f'{100 * t["far"]:>7.2f} {100 * t["mar"]:>7.2f}  causal (streaming)')
    for name, f1, far, mar in LEADERBOARD:
        far_s = f'{far:>7.2f}' if far is not None else f'{"":>7}'
        mar_s = f'{mar:>7.2f}' if mar is not None else f'{"":>7}'
        print(f'  {name:<34} {f1:>5.2f} {far_s} {mar_s}  offline (looks ahead)')
    settings = {k: v for k, v in vars(args).items() if k not in ('json', 'tag')}
    settings['arch'] = list(rows)
    print(f'settings: {json.dumps(settings)}')
    if args.json:
        Path(args.json).write_text(json.dumps({'settings': settings, 'results': rows},
                                              indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
