"""How the anomaly defaults were chosen on SKAB: group cross-validation over option sets.

For each window (rows) in ``--windows``, every SKAB-like file of ``--data`` is converted and
trained once on its first 400 rows with the CLI defaults (``training.anomaly.train_anomaly``,
cross-fitted calibration; cached under ``--work``); the held-out normal errors of the
calibration and the per-window errors of the whole file are kept. Then every option set of
the scoring grid (error aggregate, risk, margin, debounce) is calibrated on those held-out
errors with the runtime's own code (``encdec_ros.anomaly.calibrate.fit_detector``) and
scored causally on the rows after the first 400, as ``encdec eval anomaly`` does.

Printed: for each group, the option set that is best on that group and its figures on the
other groups; leave-one-group-out (chosen on two groups, scored on the third, every file
counted once); and the best pooled F1 at a false alarm rate of at most 10 %. The objective
is F1 minus twice the false alarm rate above 10 %.

Usage::

    nice -n 10 python benchmarks/cv_skab.py --json out/cv_skab.json   # about an hour
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIT_ROWS = 400
GRID = {
    'error': ('channel_max', 'channel_max_flat', 'mahalanobis'),
    'risk': (1e-3, 1e-4),
    'margin': (0.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0),
    'debounce': ((1, 1, 1.0), (2, 3, 0.8), (3, 5, 0.8)),
}


def prepare(csv: Path, work: Path, window: int) -> dict:
    """Train (cached) on the first 400 rows; the held-out errors, the file's window errors and
    what scoring needs."""
    import numpy as np

    from encdec_ros.anomaly.scorer import AnomalyScorer
    from encdec_ros.io.bag import read_bag
    from encdec_ros.io.csvbag import csv_to_bag
    from encdec_ros.io.labels import label_mask
    from encdec_ros.io.span import Rows
    from encdec_ros.io.spec import SignalSpec
    from encdec_ros.io.window import window_ends, windows_at
    from training.anomaly import TrainOptions, train_anomaly

    name = f'{csv.parent.name}_{csv.stem}'
    bag = work / 'bags' / name
    if not (bag / 'metadata.yaml').exists():
        csv_to_bag(csv, bag, overwrite=True)
    model = work / f'w{window}' / name
    cache = model / 'errors.npz'
    spec = SignalSpec.load(bag / 'spec.yaml').with_window(window=window)
    if not cache.exists():
        opts = TrainOptions(train_span=(None, Rows(FIT_ROWS)), exclude_labelled=False,
                            threads=1)
        result = train_anomaly([bag], spec, model, opts, overwrite=True, say=lambda s: None,
                               show_progress=False)
        scorer = AnomalyScorer(model, device='cpu', warmup=False)
        rec = read_bag(bag, scorer.spec)
        ends = window_ends(rec.times_ns, scorer.spec.period_ns, scorer.window,
                           scorer.spec.stride)
        errors = scorer.channel_errors(windows_at(rec.data, ends, scorer.window))
        np.savez(cache, errors=errors, dec_t=rec.times_ns[ends],
                 heldout_lengths=[len(h) for h in result.heldout],
                 heldout=np.concatenate(result.heldout))
    z = np.load(cache)
    rec = read_bag(bag, spec)
    stamps = rec.streams[spec.topic_names[0]].stamps_ns
    points = stamps[FIT_ROWS:]
    cut = np.cumsum(z['heldout_lengths'])[:-1]
    return {'name': name, 'group': csv.parent.name, 'errors': z['errors'],
            'dec_t': z['dec_t'], 'heldout': np.split(z['heldout'], cut),
            'points': points, 'labels': label_mask(rec.labels, points)}


def score(f: dict, error: str, risk: float, margin: float, debounce: tuple) -> dict:
    """Point-wise confusion counts of one file with one option set."""
    from encdec_ros.anomaly.calibrate import fit_detector
    from encdec_ros.anomaly.evaluate import confusion, held_values
    from encdec_ros.anomaly.scorer import Debouncer, aggregate_errors

    fit = fit_detector(f['heldout'], error=error, risk=risk, margin=margin, debounce=debounce)
    agg, _ = aggregate_errors(f['errors'], error, fit.stats)
    flags = Debouncer(*debounce).run(agg / fit.threshold)
    c = confusion(held_values(f['dec_t'], flags, f['points']), f['labels'])
    return {k: c[k] for k in ('tp', 'fp', 'fn', 'tn')}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=str(ROOT.parent / 'shared' / 'data' / 'skab'))
    p.add_argument('--work', default=str(ROOT / 'out' / 'cv_skab'))
    p.add_argument('--windows', default='20,30,60')
    p.add_argument('--json', help='write every option set\'s per-file counts here')
    args = p.parse_args()

    import logging
    logging.disable(logging.WARNING)
    from encdec_ros.anomaly.evaluate import pooled

    files = sorted(f for f in Path(args.data).glob('*/*.csv') if f.parent.name != 'anomaly-free')
    if not files:
        print(f'{args.data} holds no GROUP/NAME.csv files')
        return 1
    work = Path(args.work)
    results: dict[str, dict[str, dict]] = {}
    groups: dict[str, str] = {}
    for window in (int(w) for w in args.windows.split(',')):
        prepared = [prepare(csv, work, window) for csv in files]
        print(f'window {window}: {len(prepared)} files ready', flush=True)
        for f in prepared:
            groups[f['name']] = f['group']
        for error, risk, margin, deb in itertools.product(*GRID.values()):
            key = f'window {window} | {error} | risk {risk:g} | margin {margin:g} | ' \
                  f'debounce {deb[0]}/{deb[1]}'
            results[key] = {f['name']: score(f, error, risk, margin, deb) for f in prepared}

    def pool(key: str, names: list[str]) -> dict:
        return pooled([{'pointwise': results[key][n]} for n in names])

    def objective(p: dict) -> float:
        return (p['f1'] or 0.0) - 2.0 * max(0.0, (p['far'] or 0.0) - 0.10)

    names = list(groups)
    group_names = sorted(set(groups.values()))
    print(f'{len(results)} option sets on {len(names)} files')
    for g in group_names:
        inside = [n for n in names if groups[n] == g]
        rest = [n for n in names if groups[n] != g]
        best = max(results, key=lambda k: objective(pool(k, inside)))
        a, b = pool(best, inside), pool(best, rest)
        print(f'chosen on {g}: {best}\n    on {g}: F1 {a["f1"]:.3f} FAR {a["far"]:.3f}; on '
              f'the others: F1 {b["f1"]:.3f} FAR {b["far"]:.3f} MAR {b["mar"]:.3f}')
    held: dict[str, dict] = {}
    for g in group_names:
        inside = [n for n in names if groups[n] != g]
        best = max(results, key=lambda k: objective(pool(k, inside)))
        print(f'chosen without {g}: {best}')
        held.update({n: results[best][n] for n in names if groups[n] == g})
    b = pooled([{'pointwise': c} for c in held.values()])
    print(f'leave one group out, every file once: F1 {b["f1"]:.3f} FAR {b["far"]:.3f} '
          f'MAR {b["mar"]:.3f}')
    capped = [(pool(k, names)['f1'], k) for k in results if pool(k, names)['far'] <= 0.10]
    if capped:
        f1, key = max(capped)
        print(f'best pooled F1 at FAR <= 10 %: {f1:.3f} ({key})')
    if args.json:
        Path(args.json).write_text(json.dumps({'groups': groups, 'results': results}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
