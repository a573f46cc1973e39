"""``encdec bag from-csv``: a CSV of timestamped numbers into a rosbag2."""

from __future__ import annotations

import argparse
import time

from encdec_ros.errors import BagError


def register(groups: dict) -> None:
    """Add ``bag from-csv``."""
    p = groups['bag'].add_parser(
        'from-csv', help='convert a CSV of timestamped numeric columns into a rosbag2',
        description='Write the numeric columns of a CSV as a std_msgs/Float64MultiArray topic '
                    '(one message per row, at the row\'s time), label columns as the label '
                    'topic plus labels.csv, and a ready spec.yaml beside the bag. Without '
                    'options the separator, decimal mark, time column and label columns are '
                    'detected and said in one line. Example: encdec bag from-csv '
                    'valve1/0.csv --out skab_v1_0')
    p.add_argument('csv', help='the CSV file')
    p.add_argument('--out', required=True, help='output bag directory (must not exist)')
    p.add_argument('--sep', default='auto',
                   help='column separator (default: sniffed among , ; tab |)')
    p.add_argument('--decimal', default='auto', choices=('auto', '.', ','),
                   help='decimal mark (default: a comma when the separator is not one and '
                        'numbers such as 1,5 appear)')
    p.add_argument('--time-col', help='timestamp column (default: the first column named like '
                   'time/timestamp/datetime/stamp/t whose cells are times, else the first '
                   'column of date-times); ISO date-times or numbers')
    p.add_argument('--time-unit', choices=('s', 'ms', 'us', 'ns'),
                   help='unit of numeric timestamps (default: from the column name, e.g. '
                        'time_ms, else guessed from magnitude)')
    p.add_argument('--columns', help='comma-separated data columns (default: every numeric '
                   'column that is no time or label column)')
    p.add_argument('--exclude', default='', help='comma-separated columns to leave out')
    p.add_argument('--label-col', action='append', metavar='COL',
                   help='column marking anomalies (non-zero, true or a word other than '
                        'normal); repeatable or comma-separated, a row is anomalous when any '
                        'is set (default: columns named like anomaly/label/fault/attack/'
                        'failure/outlier/alarm with label-like cells)')
    p.add_argument('--drop-empty', action='store_true',
                   help='drop rows with an empty cell in the time or a data column (default: '
                        'keep them as NaN, which the detector does not score, and say where)')
    p.add_argument('--topic', default='/csv/data', help='data topic (default /csv/data)')
    p.add_argument('--window', type=int, default=30,
                   help='window of the written spec.yaml, in rows (default: %(default)s)')
    p.add_argument('--stride', type=int, default=1, help='stride of the written spec.yaml')
    p.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output')
    p.set_defaults(func=_from_csv)


def _split(text: str | None) -> list[str]:
    return [c.strip() for c in (text or '').split(',') if c.strip()]


def _from_csv(args: argparse.Namespace) -> int:
    from encdec_ros.io.csvbag import csv_to_bag
    from encdec_ros.modeldir import check_output_dir

    check_output_dir(args.out, what='bag directory', file_ok=args.overwrite,
                     error=BagError)
    start = time.perf_counter()
    labels = [c for text in args.label_col or [] for c in _split(text)]
    out, table = csv_to_bag(
        args.csv, args.out, topic=args.topic, storage=args.storage, sep=args.sep,
        decimal=args.decimal, time_col=args.time_col, time_unit=args.time_unit,
        columns=_split(args.columns) or None, exclude=_split(args.exclude),
        label_col=labels or None, drop_empty=args.drop_empty, window=args.window,
        stride=args.stride, overwrite=args.overwrite)
    print(table.detected)
    for text in table.warnings:
        print(f'warning: {text}')
    labelled = int(table.labels.sum()) if table.labels is not None else 0
    print(f'wrote {out} ({args.storage}): {len(table.times_ns)} rows x {len(table.columns)} '
          f'columns on {args.topic}'
          + (f', {labelled} labelled rows on the label topic and labels.csv' if labelled else '')
          + f' in {time.perf_counter() - start:.2f} s')
    print(f'spec: {out / "spec.yaml"}')
    return 0
