"""Convert a CSV of timestamped numeric columns into a rosbag2, so logs from other tools feed
the same pipeline.

The numeric columns become one std_msgs/msg/Float64MultiArray topic (one message per row,
logged at the row's time); an optional label column becomes the label topic and a sidecar
labels.csv; a ready signal spec (``spec.yaml``) naming each column is written beside the bag.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from encdec_ros.errors import BagError
from encdec_ros.io.bagwrite import BagWriter
from encdec_ros.io.labels import (
    LABEL_TOPIC,
    LABEL_TYPE,
    SIDECAR_NAME,
    intervals_from_mask,
    write_labels_csv,
)

TIME_UNITS = {'s': 1_000_000_000, 'ms': 1_000_000, 'us': 1_000, 'ns': 1}
_TIME_NAMES = ('datetime', 'timestamp', 'time', 'stamp', 't')


@dataclass
class CsvTable:
    """A parsed CSV: times (ns), numeric columns, and an optional label column."""

    times_ns: np.ndarray
    columns: list[str]
    values: np.ndarray                      # [rows, columns] float64, NaN where empty
    labels: np.ndarray | None = None        # [rows] bool
    warnings: list[str] = field(default_factory=list)


def read_csv_table(path: str | Path, *, sep: str = 'auto', time_col: str | None = None,
                   time_unit: str | None = None, columns: Sequence[str] | None = None,
                   exclude: Sequence[str] = (), label_col: str | None = None) -> CsvTable:
    """Parse a CSV of timestamped numbers; one clear error for each kind of bad input."""
    path = Path(path)
    if not path.is_file():
        msg = f'CSV file {path} does not exist'
        raise BagError(msg)
    text = path.read_text(errors='replace')
    lines = text.splitlines()
    if len(lines) < 2:
        msg = f'{path} has no data rows; it needs a header line and at least one row'
        raise BagError(msg)
    if sep == 'auto':
        sep = max((',', ';', '\t', '|'), key=lines[0].count)
    rows = list(csv.reader(lines, delimiter=sep))
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        msg = f'{path}: the header has one column with separator {sep!r}; pass --sep'
        raise BagError(msg)
    if time_col is None:
        time_col = next((h for h in header if h.lower() in _TIME_NAMES), header[0])
    for name, what in ((time_col, '--time-col'), (label_col, '--label-col')):
        if name is not None and name not in header:
            msg = f'{path} has no column {name!r} ({what}); its columns are: {", ".join(header)}'
            raise BagError(msg)
    skip = {time_col, label_col, *exclude}
    if columns:
        missing = [c for c in columns if c not in header]
        if missing:
            msg = f'{path} has no column {missing[0]!r}; its columns are: {", ".join(header)}'
            raise BagError(msg)
        data_cols = list(columns)
    else:
        data_cols = [h for h in header if h not in skip]
    if not data_cols:
        msg = f'{path}: no data columns are left after taking out time and label columns'
        raise BagError(msg)
    index = {h: i for i, h in enumerate(header)}
    body = [r for r in rows[1:] if any(cell.strip() for cell in r)]
    short = [n for n, r in enumerate(body, start=2) if len(r) < len(header)]
    if short:
        msg = f'{path}, line {short[0]}: the row has fewer cells than the header; ' \
              'fix or remove it (or check --sep)'
        raise BagError(msg)
    times = _parse_times([r[index[time_col]] for r in body], path, time_col, time_unit)
    values = np.empty((len(body), len(data_cols)), dtype=np.float64)
    warnings = []
    for j, col in enumerate(data_cols):
        cells = [r[index[col]].strip() for r in body]
        try:
            values[:, j] = [float(c) if c else math.nan for c in cells]
        except ValueError:
            line = next(n for n, c in enumerate(cells, start=2) if c and not _is_float(c))
            msg = f'{path}, line {line}, column {col!r}: {cells[line - 2]!r} is not a number; ' \
                  'leave it out with --exclude or fix the cell'
            raise BagError(msg) from None
        nans = int(np.isnan(values[:, j]).sum())
        if nans:
            warnings.append(f'column {col!r} has {nans} empty or NaN cells')
    labels = None
    if label_col is not None:
        cells = [r[index[label_col]].strip() for r in body]
        labels = np.array([c not in ('', '0', '0.0', 'false', 'False', 'normal')
                           for c in cells], dtype=bool)
    back = int((np.diff(times) < 0).sum())
    if back:
        warnings.append(f'{back} rows step back in time; readers drop them as the live path '
                        'would')
    return CsvTable(times, data_cols, values, labels, warnings)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_times(cells: list[str], path: Path, col: str, unit: str | None) -> np.ndarray:
    cells = [c.strip() for c in cells]
    if all(_is_float(c) for c in cells):
        nums = np.array([float(c) for c in cells])
        if unit is None:
            top = np.nanmax(np.abs(nums)) if nums.size else 0
            unit = 'ns' if top > 1e17 else 'us' if top > 1e14 else 'ms' if top > 1e11 else 's'
        if unit not in TIME_UNITS:
            msg = f'time unit {unit!r} is unknown; use one of {", ".join(TIME_UNITS)}'
            raise BagError(msg)
        return np.round(nums * TIME_UNITS[unit]).astype(np.int64)
    out = np.empty(len(cells), dtype=np.int64)
    for n, cell in enumerate(cells):
        try:
            stamp = datetime.fromisoformat(cell.replace('Z', '+00:00'))
        except ValueError:
            msg = f'{path}, line {n + 2}: time {cell!r} in column {col!r} is neither a number ' \
                  'nor an ISO date-time; pick the time column with --time-col'
            raise BagError(msg) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
        out[n] = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + \
            delta.microseconds * 1_000
    return out


def csv_to_bag(csv_path: str | Path, out: str | Path, *, topic: str = '/csv/data',
               storage: str = 'sqlite3', sep: str = 'auto', time_col: str | None = None,
               time_unit: str | None = None, columns: Sequence[str] | None = None,
               exclude: Sequence[str] = (), label_col: str | None = None,
               window: int = 30, stride: int = 1, overwrite: bool = False) -> tuple[Path, CsvTable]:
    """Write the CSV as a bag; return the bag path and the parsed table."""
    table = read_csv_table(csv_path, sep=sep, time_col=time_col, time_unit=time_unit,
                           columns=columns, exclude=exclude, label_col=label_col)
    out = Path(out)
    with BagWriter(out, storage=storage, overwrite=overwrite) as bag:
        bag.add_topic(topic, 'std_msgs/msg/Float64MultiArray')
        dim = bag.new('std_msgs/msg/MultiArrayDimension', label='columns',
                      size=len(table.columns), stride=len(table.columns))
        layout = bag.new('std_msgs/msg/MultiArrayLayout', dim=[dim], data_offset=0)
        if table.labels is not None:
            bag.add_topic(LABEL_TOPIC, LABEL_TYPE)
        previous = None
        for i, stamp in enumerate(table.times_ns):
            bag.write(topic, stamp, bag.new('std_msgs/msg/Float64MultiArray', layout=layout,
                                             data=table.values[i].copy()))
            if table.labels is not None and table.labels[i] != previous:
                text = 'anomaly' if table.labels[i] else ''
                bag.write(LABEL_TOPIC, stamp, bag.new(LABEL_TYPE, data=text))
                previous = table.labels[i]
    if table.labels is not None:
        period = int(np.median(np.diff(table.times_ns))) if len(table.times_ns) > 1 else 1
        write_labels_csv(out / SIDECAR_NAME, intervals_from_mask(
            table.times_ns, table.labels, kind='anomaly', period_ns=period))
    _write_spec(out / 'spec.yaml', topic, table, window=window, stride=stride)
    return out, table


def _write_spec(path: Path, topic: str, table: CsvTable, *, window: int, stride: int) -> None:
    from encdec_ros.io.spec import SignalSpec

    if len(table.times_ns) > 1:
        period_s = float(np.median(np.diff(table.times_ns))) * 1e-9
        rate = round(1.0 / period_s, 6) if period_s > 0 else 1.0
    else:
        rate = 1.0
    window = max(1, min(window, len(table.times_ns)))
    spec = SignalSpec.from_dict({
        'name': Path(path).parent.name,
        'description': 'written by encdec bag from-csv; one channel per CSV column',
        'rate_hz': rate, 'window': window, 'stride': min(stride, window),
        'topics': {topic: {
            'type': 'std_msgs/msg/Float64MultiArray', 'stamp': 'receive',
            'fields': [{'path': f'data[{i}]', 'name': name}
                       for i, name in enumerate(table.columns)]}},
    }, source=str(path))
    spec.save(path)
