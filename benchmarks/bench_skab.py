"""SKAB's outlier-detection protocol through the encdec command line with its DEFAULTS.

For every experiment file in the group folders of ``--data`` (laid out like
../shared/data/skab: ``GROUP/NAME.csv``; a folder named ``anomaly-free`` is skipped), this
runs exactly what a user types, in-process through ``encdec_ros.cli.main``:

1. ``encdec bag from-csv FILE --out BAG`` (separator, time and label columns detected; the
   spec it writes, window 30 rows, is part of the defaults);
2. ``encdec train anomaly --bag BAG --spec BAG/spec.yaml --out MODEL --train-span :400rows
   --keep-labelled``: the protocol fits on each file's first 400 rows whatever their labels
   (one development file has a fault there), with every other option at its default;
3. ``encdec eval anomaly --model MODEL --bag BAG --points messages --eval-span 400rows:``:
   the rows after the first 400, each carrying the flag of the last decision at or before it
   (causal: a row's flag depends on that row and earlier ones only).

The point-wise confusion matrices are pooled (F1 = TP / (TP + (FP + FN) / 2),
FAR = FP / (FP + TN), MAR = FN / (FN + TP)) over all files, per group, and per rotation of
the group cross-validation the defaults were chosen by (each row leaves out one group and
pools the other two), each beside the F1 of flagging every row of the same rows. SKAB's
published leaderboard is printed for reference (its pipelines look up to 60 rows ahead).

Usage::

    nice -n 10 python benchmarks/bench_skab.py                       # ../shared/data/skab
    nice -n 10 python benchmarks/bench_skab.py --data DIR --json out/skab.json

Converted bags and models are cached under ``--work`` (delete it to start afresh).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
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


def encdec(args: list[str], log: io.TextIOBase) -> None:
    """Run one ``encdec`` command in-process; its output goes to ``log``."""
    from encdec_ros.cli import main

    print('$ encdec ' + ' '.join(shlex.quote(a) for a in args), file=log, flush=True)
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = main(args)
    if code != 0:
        raise SystemExit(f'encdec {" ".join(args[:2])} failed (exit {code}); see {log.name}')


def run_file(csv: Path, work: Path, log: io.TextIOBase) -> dict:
    """Convert, train on the first 400 rows, evaluate the rest; return the figures."""
    name = f'{csv.parent.name}_{csv.stem}'
    bag, model, report = (work / d / name for d in ('bags', 'models', 'reports'))
    if not (bag / 'metadata.yaml').exists():
        encdec(['bag', 'from-csv', str(csv), '--out', str(bag), '--overwrite'], log)
    if not (model / 'model.yaml').exists():
        encdec(['train', 'anomaly', '--bag', str(bag), '--spec', str(bag / 'spec.yaml'),
                '--out', str(model), '--force', '--train-span', f':{FIT_ROWS}rows',
                '--keep-labelled'], log)
    encdec(['eval', 'anomaly', '--model', str(model), '--bag', str(bag), '--points',
            'messages', '--eval-span', f'{FIT_ROWS}rows:', '--out', str(report), '--no-plot'],
           log)
    metrics = json.loads((report / 'report.json').read_text())['metrics']
    pw = metrics['pointwise']
    return {'file': name, 'group': csv.parent.name, 'pointwise': pw}


def flag_everything_f1(files: list[dict]) -> float | None:
    """F1 of a detector that flags every row of these files."""
    pos = sum(f['pointwise']['tp'] + f['pointwise']['fn'] for f in files)
    neg = sum(f['pointwise']['fp'] + f['pointwise']['tn'] for f in files)
    return pos / (pos + neg / 2) if pos + neg else None


def main() -> int:
    """Run the protocol with the CLI defaults and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=str(ROOT.parent / 'shared' / 'data' / 'skab'),
                   help='folder of group folders of SKAB-like CSV files')
    p.add_argument('--work', default=str(ROOT / 'out' / 'bench_skab'),
                   help='cache of converted bags, models and reports')
    p.add_argument('--json', help='write the figures here')
    args = p.parse_args()

    import logging
    logging.disable(logging.WARNING)          # rosbags / reader notes about the CSV bags
    from encdec_ros.anomaly.evaluate import pooled

    data = Path(args.data)
    files = sorted(f for f in data.glob('*/*.csv') if f.parent.name != 'anomaly-free')
    if not files:
        print(f'{data} holds no GROUP/NAME.csv files; set --data to a folder laid out like '
              'SKAB (see ../shared/data/README.md)')
        return 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_file = []
    with open(work / 'commands.log', 'w') as log:
        for i, csv in enumerate(files, 1):
            per_file.append(run_file(csv, work, log))
            pw = per_file[-1]['pointwise']
            print(f'  [{i}/{len(files)}] {per_file[-1]["file"]:<16} F1 {pw["f1"] or 0:.3f}  '
                  f'FAR {100 * (pw["far"] or 0):5.1f} %  MAR {100 * (pw["mar"] or 0):5.1f} %',
                  flush=True)
    groups = sorted({f['group'] for f in per_file})

    def row(label: str, chosen: list[dict]) -> dict:
        total = pooled([{'pointwise': f['pointwise']} for f in chosen])
        return {'rows': label, 'files': len(chosen), **total,
                'flag_everything_f1': flag_everything_f1(chosen)}

    table = [row('all files', per_file)]
    table += [row(f'group {g}', [f for f in per_file if f['group'] == g]) for g in groups]
    if len(groups) > 2:
        table += [row(f'without {g} (rotation)', [f for f in per_file if f['group'] != g])
                  for g in groups]
    seconds = time.perf_counter() - start
    print(f'\nSKAB outlier detection with the encdec CLI defaults: {len(files)} files in '
          f'{data}, fit on the first {FIT_ROWS} rows of each, causal flags, pooled '
          f'point-wise ({seconds:.0f} s; commands in {work / "commands.log"})')
    print(f'  {"rows":<28} {"files":>5} {"F1":>6} {"FAR %":>7} {"MAR %":>7}  '
          f'{"flag-all F1":>11}')
    for r in table:
        print(f'  {r["rows"]:<28} {r["files"]:>5} {r["f1"] or 0:>6.3f} '
              f'{100 * (r["far"] or 0):>7.2f} {100 * (r["mar"] or 0):>7.2f}  '
              f'{r["flag_everything_f1"] or 0:>11.3f}')
    print('  SKAB leaderboard (offline, looks up to 60 rows ahead):')
    for name, f1, far, mar in LEADERBOARD:
        far_s = f'{far:>7.2f}' if far is not None else f'{"":>7}'
        mar_s = f'{mar:>7.2f}' if mar is not None else f'{"":>7}'
        print(f'  {name:<28} {"":>5} {f1:>6.2f} {far_s} {mar_s}')
    print('commands (every option not shown is the CLI default):')
    print('  encdec bag from-csv FILE --out BAG')
    print(f'  encdec train anomaly --bag BAG --spec BAG/spec.yaml --out MODEL --train-span '
          f':{FIT_ROWS}rows --keep-labelled')
    print(f'  encdec eval anomaly --model MODEL --bag BAG --points messages --eval-span '
          f'{FIT_ROWS}rows:')
    if args.json:
        Path(args.json).write_text(json.dumps({'data': str(data), 'table': table,
                                               'files': per_file, 'seconds': seconds},
                                              indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
