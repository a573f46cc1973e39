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
                    '(one message per row, at the row\'s time), an optional label column as the '
                    'label topic plus labels.csv, and a ready spec.yaml beside the bag. '
                    'Example (SKAB): encdec bag from-csv valve1/0.csv --out skab_v1_0 '
                    '--sep ";" --time-col datetime --label-col anomaly --exclude changepoint')
    p.add_argument('csv', help='the CSV file')
    p.add_argument('--out', required=True, help='output bag directory (must not exist)')
    p.add_argument('--sep', default='auto', help='column separator (default: guessed)')
    p.add_argument('--time-col', help='timestamp column (default: datetime/timestamp/time or '
                   'the first column); ISO date-times or numbers')
    p.add_argument('--time-unit', choices=('s', 'ms', 'us', 'ns'),
                   help='unit of numeric timestamps (default: guessed from magnitude)')
    p.add_argument('--columns', help='comma-separated data columns (default: all the rest)')
    p.add_argument('--exclude', default='', help='comma-separated columns to leave out')
    p.add_argument('--label-col', help='column whose non-zero values mark anomalies')
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
    out, table = csv_to_bag(
        args.csv, args.out, topic=args.topic, storage=args.storage, sep=args.sep,
        time_col=args.time_col, time_unit=args.time_unit, columns=_split(args.columns) or None,
        exclude=_split(args.exclude), label_col=args.label_col, window=args.window,
        stride=args.stride, overwrite=args.overwrite)
    for text in table.warnings:
        print(f'warning: {text}')
    labelled = int(table.labels.sum()) if table.labels is not None else 0
    print(f'wrote {out} ({args.storage}): {len(table.times_ns)} rows x {len(table.columns)} '
          f'columns on {args.topic}'
          + (f', {labelled} labelled rows on the label topic and labels.csv' if labelled else '')
          + f' in {time.perf_counter() - start:.2f} s')
    print(f'spec: {out / "spec.yaml"}')
    return 0
