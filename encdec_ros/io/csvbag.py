"""Convert a CSV of timestamped numeric columns into a rosbag2, so logs from other tools feed
the same pipeline.

The numeric columns become one std_msgs/msg/Float64MultiArray topic (one message per row,
logged at the row's time); label columns become the label topic and a sidecar labels.csv (one
interval kind per label column, a row anomalous when any of them is set); a ready signal spec
(``spec.yaml``) naming each column is written beside the bag.

CSV files as tools and people write them are read without options (:func:`read_csv_table`):

- the separator is sniffed (``,`` ``;`` tab ``|``: the one that splits the header and the
  first rows into the same number of cells, the most cells winning);
- a UTF-8 byte-order mark is dropped (files that are not UTF-8 are read as Windows-1252);
- decimal commas (``1,5``) are recognised when the separator is not a comma (``--decimal``);
- ``True``/``False`` and ``yes``/``no`` cells (any case) read as 1 and 0;
- unnamed columns (an empty header cell, as a trailing separator leaves, or pandas'
  ``Unnamed: 12``) and columns holding only text are left out, and said so (an unnamed
  column of date-times, as pandas writes a time index, can still be the time column);
- the time column is the first column named like a time (:data:`TIME_NAMES`, or a name
  with the word time/timestamp/datetime/stamp/date in it) whose cells are numbers or
  date-times that never step back much; else the first column of date-times;
- label columns are columns named with one of :data:`LABEL_WORDS` whose cells are label-like
  (at most 16 distinct values, each a whole number, a boolean or a word): a row is anomalous
  when a number is not 0, a boolean is true, or a word is not one of :data:`NORMAL_WORDS`;
- change-point columns (named ``changepoint``, ``change_point``...) mark single rows where an
  anomaly starts or ends (SKAB): they are left out of both data and labels unless named with
  ``--label-col``, since as data they would give the answer away;
- empty cells are kept as NaN with one sentence naming the first row and column (windows that
  hold them are not scored), or the rows are dropped with ``drop_empty``.

The output is written into a temporary directory beside the target and renamed at the end, so
a conversion that fails leaves nothing behind.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

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
TIME_NAMES = ('datetime', 'timestamp', 'time', 'stamp', 't', 'date', '%time', 'ts', 'epoch',
              'time_stamp', 'date_time', 'unix_time', 'zeit', 'header.stamp')
"""Column names (any case) taken as the time column first, in this order of preference."""
_TIME_WORDS = ('time', 'timestamp', 'datetime', 'stamp', 'date')
_UNIT_WORDS = {'s': 's', 'sec': 's', 'secs': 's', 'seconds': 's', 'ms': 'ms', 'msec': 'ms',
               'millis': 'ms', 'milliseconds': 'ms', 'us': 'us', 'usec': 'us', 'micros': 'us',
               'microseconds': 'us', 'ns': 'ns', 'nsec': 'ns', 'nanos': 'ns',
               'nanoseconds': 'ns'}
LABEL_WORDS = ('anomal', 'label', 'fault', 'attack', 'fail', 'outlier', 'alarm', 'abnormal',
               'incident')
"""A column whose name (any case) contains one of these, with label-like cells, is a label."""
NORMAL_WORDS = frozenset({'', 'normal', 'ok', 'none', 'nominal', 'false', 'no', 'off', '-',
                          'n', 'f', 'nan', 'null', 'benign'})
"""Label cells that mean "not anomalous" (any case); numbers mean anomalous when not 0."""
_TRUE = frozenset({'true', 'yes', 'on'})
_FALSE = frozenset({'false', 'no', 'off'})
_UNNAMED = re.compile(r'^(unnamed: ?\d+(_level_\d+)?)?$', re.IGNORECASE)
_CHANGEPOINT = re.compile(r'change[ _-]?points?', re.IGNORECASE)
_INTEGER = re.compile(r'^[+-]?\d+$')
_DECIMAL_COMMA = re.compile(r'^[+-]?\d*,\d+([eE][+-]?\d+)?$')
_DATETIME_FORMATS = ('%d.%m.%Y %H:%M:%S.%f', '%d.%m.%Y %H:%M:%S', '%d.%m.%Y %H:%M',
                     '%Y/%m/%d %H:%M:%S.%f', '%Y/%m/%d %H:%M:%S', '%d/%m/%Y %H:%M:%S.%f',
                     '%d/%m/%Y %H:%M:%S', '%m/%d/%Y %H:%M:%S.%f', '%m/%d/%Y %H:%M:%S')
SNIFF_ROWS = 50
MAX_LABEL_VALUES = 16


@dataclass
class CsvTable:
    """A parsed CSV: times (ns), numeric columns, and the label columns.

    Attributes:
        times_ns: [rows] row times.
        columns: Data column names.
        values: [rows, columns] float64, NaN where a cell is empty.
        labels: [rows] True where any label column marks the row anomalous (None: no labels).
        label_columns: {label column name: [rows] bool}.
        warnings: Sentences about the data (empty cells, rows stepping back in time).
        detected: One line saying what was read and how (separator, decimal mark, time
            column, labels, data columns, what was left out and why).
    """

    times_ns: np.ndarray
    columns: list[str]
    values: np.ndarray
    labels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    label_columns: dict[str, np.ndarray] = field(default_factory=dict)
    detected: str = ''


def read_csv_table(path: str | Path, *, sep: str = 'auto', decimal: str = 'auto',
                   time_col: str | None = None, time_unit: str | None = None,
                   columns: Sequence[str] | None = None, exclude: Sequence[str] = (),
                   label_col: str | Sequence[str] | None = None,
                   drop_empty: bool = False) -> CsvTable:
    """Parse a CSV of timestamped numbers; one clear error for each kind of bad input.

    Args:
        path: The CSV file.
        sep: Column separator, or 'auto' (sniffed).
        decimal: Decimal mark, '.', ',' or 'auto' (',' when the separator is not a comma
            and numbers such as 1,5 appear).
        time_col: The time column (default: detected, see the module docstring).
        time_unit: Unit of numeric times (default: from the column name, else the magnitude).
        columns: Data columns (default: every numeric column that is no time or label).
        exclude: Columns to leave out.
        label_col: Label column(s) (default: detected by name and content); several are
            combined: a row is anomalous when any is set.
        drop_empty: Drop rows with an empty cell in the time or a data column, instead of
            keeping NaN.
    """
    path = Path(path)
    lines, numbers, encoding_note = _read_lines(path)
    if len(lines) < 2:
        msg = f'{path} has no data rows; it needs a header line and at least one row'
        raise BagError(msg)
    if sep == 'auto':
        sep = _sniff_separator(lines)
    elif sep in ('\\t', 'tab'):
        sep = '\t'
    rows = list(csv.reader(lines, delimiter=sep))
    raw_header = [h.strip().strip('"').strip() for h in rows[0]]
    if len(raw_header) < 2:
        msg = f'{path}: the header has one column with separator {sep!r}; pass --sep'
        raise BagError(msg)
    unnamed = [i for i, h in enumerate(raw_header) if _UNNAMED.match(h)]
    header = [h for i, h in enumerate(raw_header) if i not in unnamed]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        msg = f'{path}: the column name {dupes[0]!r} appears twice in the header; rename one'
        raise BagError(msg)
    index = {h: i for i, h in enumerate(raw_header) if i not in unnamed}
    body, body_lines = rows[1:], numbers[1:]
    short = [n for n, r in zip(body_lines, body) if len(r) < len(raw_header)]
    if short:
        msg = f'{path}, line {short[0]}: the row has fewer cells than the header; ' \
              'fix or remove it (or check --sep)'
        raise BagError(msg)
    cells = {h: [r[index[h]].strip() for r in body] for h in header}
    # unnamed columns are no data, but pandas writes a time index as one (an empty name)
    spare = {raw_header[i] or f'column {i + 1}': [r[i].strip() for r in body] for i in unnamed}
    labels_wanted = [label_col] if isinstance(label_col, str) else list(label_col or [])
    for name, what in [(time_col, '--time-col'), *((c, '--label-col') for c in labels_wanted),
                       *((c, '--columns') for c in (columns or ())),
                       *((c, '--exclude') for c in exclude)]:
        if name is not None and name not in index and (what != '--time-col' or
                                                       name not in spare):
            msg = f'{path} has no column {name!r} ({what}); its columns are: {", ".join(header)}'
            raise BagError(msg)
    if decimal == 'auto':
        decimal = ',' if sep != ',' and any(
            _DECIMAL_COMMA.match(c) for col in cells.values() for c in col[:SNIFF_ROWS]) else '.'
    if decimal not in ('.', ','):
        msg = f'decimal mark {decimal!r} is not supported; use . or ,'
        raise BagError(msg)
    to_float = _number_parser(decimal)

    # the time column
    time_col, times, time_kind = _find_time(path, header, {**cells, **spare}, body_lines,
                                            time_col, time_unit, to_float, drop_empty,
                                            spare=list(spare))
    # label columns
    left_out = {name: 'unnamed' for name in spare if name != time_col}
    label_like = {h for h in header if h != time_col and h not in (columns or ())
                  and _named_like_label(h) and _label_like(cells[h], to_float)}
    changepoints = {h for h in header if _CHANGEPOINT.fullmatch(h.strip())}
    if labels_wanted:
        label_cols = labels_wanted
        for h in sorted(label_like - set(label_cols)):
            left_out[h] = 'looks like a label; --columns to use it as data'
    else:
        label_cols = [h for h in header if h in label_like]
    for h in changepoints - set(label_cols):
        if not columns or h not in columns:
            left_out[h] = 'marks change points; --label-col to use it as labels'
    for h in exclude:
        left_out[h] = 'excluded'
    if time_col in label_cols:
        msg = f'{path}: column {time_col!r} cannot be both the time and a label column'
        raise BagError(msg)
    # data columns
    if columns:
        data_cols = list(columns)
    else:
        data_cols = []
        for h in header:
            if h == time_col or h in label_cols or h in left_out:
                continue
            if all(not c or _maybe_float(c, to_float) is None for c in cells[h]):
                left_out[h] = 'text' if any(cells[h]) else 'empty'
                continue
            data_cols.append(h)
    if not data_cols:
        msg = f'{path}: no data columns are left after taking out time and label columns'
        raise BagError(msg)
    values = np.empty((len(body), len(data_cols)), dtype=np.float64)
    for j, col in enumerate(data_cols):
        values[:, j] = _parse_column(path, col, cells[col], body_lines, to_float)
    label_masks = {h: _label_mask(cells[h], to_float) for h in label_cols}

    warnings = []
    if encoding_note:
        warnings.append(encoding_note)
    keep = np.ones(len(body), bool)
    empty = np.isnan(values)
    bad_time = times < 0 if times.dtype.kind == 'i' else np.zeros(len(body), bool)
    if drop_empty:
        keep = ~empty.any(axis=1) & ~bad_time
    elif empty.any():
        j = int(np.flatnonzero(empty.any(axis=0))[0])
        first = int(np.flatnonzero(empty[:, j])[0])
        n_rows = int(empty.any(axis=1).sum())
        cols = [data_cols[k] for k in np.flatnonzero(empty.any(axis=0))]
        warnings.append(
            f'{n_rows} row(s) have empty or NaN cells, the first at line {body_lines[first]} '
            f'in column {data_cols[j]!r} (columns: {", ".join(map(repr, cols[:4]))}'
            f'{" ..." if len(cols) > 4 else ""}); they are kept as NaN and windows holding '
            'them are not scored: pass --drop-empty to drop those rows, or --exclude the '
            'column')
    if not keep.all():
        dropped = int((~keep).sum())
        if dropped == len(keep):
            msg = f'{path}: every row has an empty cell, so --drop-empty leaves nothing; ' \
                  '--exclude the columns that are mostly empty'
            raise BagError(msg)
        warnings.append(f'dropped {dropped} row(s) with empty cells (--drop-empty)')
        times, values = times[keep], values[keep]
        label_masks = {h: m[keep] for h, m in label_masks.items()}
    times = times.astype(np.int64)
    steps = np.diff(times)
    back = int((steps < 0).sum())
    if back:
        warnings.append(f'{back} rows step back in time; readers drop them as the live path '
                        'would')
    same = int((steps == 0).sum())
    if len(times) > 2 and 2 * same >= len(times) - 1:
        msg = f'{path}: the time column {time_col!r} repeats the row before in {same} of ' \
              f'{len(times)} rows, so it cannot time them (a clock of too coarse a ' \
              'resolution?); give a time column with finer resolution (--time-col)'
        raise BagError(msg)
    labels = None
    if label_masks:
        labels = np.logical_or.reduce(list(label_masks.values()))
    table = CsvTable(times, data_cols, values, labels, warnings, label_masks)
    finite = [values[:, j][~np.isnan(values[:, j])] for j in range(len(data_cols))]
    binary = [] if label_cols else [c for c, v in zip(data_cols, finite)
                                    if v.size and np.isin(v, (0, 1)).all()]
    table.detected = _detected_line(path, sep, decimal, time_col, time_kind, label_cols,
                                    data_cols, left_out, labels_given=bool(labels_wanted),
                                    rows=len(times), binary=binary)
    return table


# --------------------------------------------------------------------------- reading


def _read_lines(path: Path) -> tuple[list[str], list[int], str]:
    """Non-blank lines (header first, comment lines before it skipped), their 1-based line
    numbers, and a note when the file is not UTF-8."""
    if not path.is_file():
        msg = f'CSV file {path} does not exist' if not path.exists() else \
            f'{path} is a directory; pass a CSV file'
        raise BagError(msg)
    raw = path.read_bytes()
    if b'\0' in raw[:4096]:
        msg = f'{path} is not a text file (it holds NUL bytes); pass a CSV file'
        raise BagError(msg)
    note = ''
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError:
        text = raw.decode('cp1252', errors='replace')
        note = f'{path.name} is not UTF-8; it was read as Windows-1252'
    lines, numbers = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (not lines and line.lstrip().startswith('#')):
            continue
        lines.append(line)
        numbers.append(n)
    return lines, numbers, note


def _sniff_separator(lines: list[str]) -> str:
    """The separator that splits the header and the first rows into the same number of cells
    (a trailing separator allowed), the most cells winning; else the most frequent one."""
    sample = lines[:SNIFF_ROWS + 1]
    best, best_cells = None, 1
    for sep in (',', ';', '\t', '|'):
        rows = list(csv.reader(sample, delimiter=sep))
        n = len(rows[0])
        if n < 2:
            continue
        ok = sum(len(r) == n or (len(r) == n + 1 and not r[-1].strip()) for r in rows[1:])
        if ok >= 0.9 * (len(rows) - 1) and n > best_cells:
            best, best_cells = sep, n
    return best or max((',', ';', '\t', '|'), key=lines[0].count)


def _number_parser(decimal: str) -> Callable[[str], float]:
    def to_float(cell: str) -> float:
        low = cell.lower()
        if low in _TRUE:
            return 1.0
        if low in _FALSE:
            return 0.0
        if decimal == ',':
            if '.' in cell and 'e' not in low and low not in ('nan', 'inf', '-inf'):
                raise ValueError(cell)      # 1.234,5: a thousands mark is not supported
            cell = cell.replace(',', '.')
        return float(cell)
    return to_float


def _maybe_float(cell: str, to_float: Callable[[str], float]) -> float | None:
    try:
        return to_float(cell)
    except ValueError:
        return None


def _parse_column(path: Path, col: str, cells: list[str], lines: list[int],
                  to_float: Callable[[str], float]) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float64)
    for n, cell in enumerate(cells):
        if not cell:
            out[n] = math.nan
            continue
        try:
            out[n] = to_float(cell)
        except ValueError:
            hint = ' (a thousands mark? write numbers without it)' if ',' in cell and \
                '.' in cell else ''
            msg = f'{path}, line {lines[n]}, column {col!r}: {cell!r} is not a number' \
                  f'{hint}; leave the column out with --exclude or fix the cell'
            raise BagError(msg) from None
    return out


# --------------------------------------------------------------------------- time


def _name_tokens(name: str) -> list[str]:
    return [t for t in re.split(r'[^a-z0-9]+', name.lower()) if t]


def _time_rank(name: str) -> int | None:
    """0 for a name in TIME_NAMES, 1 for a name with a time word in it, None otherwise."""
    low = name.strip().lower()
    if low in TIME_NAMES:
        return 0
    if any(t in _TIME_WORDS for t in _name_tokens(name)):
        return 1
    return None


def _unit_from_name(name: str) -> str | None:
    if name.strip().lower() == '%time':            # rostopic echo -p: nanoseconds
        return 'ns'
    for tok in _name_tokens(name):
        if tok in _UNIT_WORDS:
            return _UNIT_WORDS[tok]
    return None


def _find_time(path: Path, header: list[str], cells: dict[str, list[str]], lines: list[int],
               time_col: str | None, time_unit: str | None, to_float: Callable[[str], float],
               drop_empty: bool, *, spare: Sequence[str] = ()) -> tuple[str, np.ndarray, str]:
    """The time column, its times in ns (-1 where empty, with ``drop_empty``), and a phrase
    saying how they were read; ``spare`` (unnamed) columns are tried for date-times last."""
    if time_col is not None:
        times, kind = _parse_times(path, time_col, cells[time_col], lines, time_unit,
                                   to_float, drop_empty)
        return time_col, times, kind
    named = sorted((r, i, h) for i, h in enumerate(header)
                   if (r := _time_rank(h)) is not None)
    first_error: BagError | None = None
    for _, _, name in named:
        try:
            times, kind = _parse_times(path, name, cells[name], lines, time_unit, to_float,
                                       drop_empty)
        except BagError as err:
            first_error = first_error or err
            continue
        valid = times[times >= 0]
        if valid.size < 2 or np.mean(np.diff(valid) >= 0) >= 0.99:
            return name, times, kind
    for name in [*header, *spare]:                    # any column of date-times
        sample = [c for c in cells[name][:SNIFF_ROWS] if c]
        if sample and all(_maybe_float(c, to_float) is None and _datetime_ns(c) is not None
                          for c in sample):
            try:
                times, kind = _parse_times(path, name, cells[name], lines, time_unit,
                                           to_float, drop_empty)
            except BagError:
                continue
            return name, times, kind
    if first_error is not None:
        raise first_error
    msg = f'{path}: no time column found (none is named like time, timestamp, datetime or ' \
          f'stamp, and none holds date-times); name it with --time-col; the columns are: ' \
          f'{", ".join(header)}'
    raise BagError(msg)


def _parse_times(path: Path, col: str, cells: list[str], lines: list[int],
                 unit: str | None, to_float: Callable[[str], float], drop_empty: bool
                 ) -> tuple[np.ndarray, str]:
    empty = [n for n, c in enumerate(cells) if not c]
    if empty and not drop_empty:
        msg = f'{path}, line {lines[empty[0]]}: the time cell in column {col!r} is empty; ' \
              'fill it, or drop such rows with --drop-empty'
        raise BagError(msg)
    full = [c for c in cells if c]
    if not full:
        msg = f'{path}: the time column {col!r} is empty; name another with --time-col'
        raise BagError(msg)
    nums = [_maybe_float(c, to_float) for c in full]
    out = np.full(len(cells), -1, dtype=np.int64)
    filled = np.array([bool(c) for c in cells])
    if all(v is not None and math.isfinite(v) for v in nums):
        arr = np.array(nums, dtype=np.float64)
        how = 'as asked'
        if unit is None:
            unit, how = _unit_from_name(col), 'from the column name'
        if unit is None:
            top = float(np.nanmax(np.abs(arr)))
            unit = 'ns' if top > 1e17 else 'us' if top > 1e14 else 'ms' if top > 1e11 else 's'
            how = 'from their size'
        if unit not in TIME_UNITS:
            msg = f'time unit {unit!r} is unknown; use one of {", ".join(TIME_UNITS)}'
            raise BagError(msg)
        if all(_INTEGER.match(c) for c in full):      # exact: ns stamps exceed a float's 53 bits
            out[filled] = np.array([int(c) for c in full], dtype=np.int64) * TIME_UNITS[unit]
        else:
            out[filled] = np.round(arr * TIME_UNITS[unit]).astype(np.int64)
        epoch = float(np.nanmax(np.abs(arr))) * TIME_UNITS[unit] > 1e9 * 3.15e7   # > 1971
        return out, f'numbers in {unit} {how}' + (' since the epoch' if epoch else '')
    stamps = []
    for n, cell in enumerate(cells):
        if not cell:
            continue
        ns = _datetime_ns(cell)
        if ns is None:
            msg = f'{path}, line {lines[n]}: time {cell!r} in column {col!r} is neither a ' \
                  'number nor a date-time (ISO 8601 or DD.MM.YYYY hh:mm:ss); pick the time ' \
                  'column with --time-col'
            raise BagError(msg)
        stamps.append(ns)
    out[filled] = stamps
    return out, 'date-times, UTC unless they say otherwise'


def _datetime_ns(cell: str) -> int | None:
    text = cell.strip().replace('Z', '+00:00')
    stamp = None
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        for fmt in _DATETIME_FORMATS:
            try:
                stamp = datetime.strptime(text.replace(',', '.'), fmt)
                break
            except ValueError:
                continue
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    delta = stamp - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


# --------------------------------------------------------------------------- labels


def _named_like_label(name: str) -> bool:
    low = name.lower()
    return any(word in low for word in LABEL_WORDS)


def _label_like(cells: list[str], to_float: Callable[[str], float]) -> bool:
    """At most MAX_LABEL_VALUES distinct values, each a whole number, a boolean or a word."""
    distinct = {c.lower() for c in cells if c}
    if len(distinct) > MAX_LABEL_VALUES:
        return False
    for cell in distinct:
        value = _maybe_float(cell, to_float)
        if value is not None and not (math.isfinite(value) and value == round(value)):
            return False
    return True


def _label_mask(cells: list[str], to_float: Callable[[str], float]) -> np.ndarray:
    out = np.zeros(len(cells), bool)
    for n, cell in enumerate(cells):
        low = cell.lower()
        if low in NORMAL_WORDS:
            continue
        value = _maybe_float(cell, to_float)
        out[n] = bool(value) if value is not None and math.isfinite(value) else True
    return out


def _detected_line(path: Path, sep: str, decimal: str, time_col: str, time_kind: str,
                   label_cols: list[str], data_cols: list[str], left_out: dict[str, str], *,
                   labels_given: bool, rows: int, binary: Sequence[str] = ()) -> str:
    seps = {',': 'comma', ';': 'semicolon', '\t': 'tab', '|': 'bar'}
    parts = [f'{rows} rows, separator {seps.get(sep, repr(sep))}',
             f'decimal {"comma" if decimal == "," else "point"}',
             f'time {time_col!r} ({time_kind})']
    if label_cols:
        how = '' if labels_given else ' by name and content'
        parts.append(f'label{"s" if len(label_cols) > 1 else ""} '
                     + ' + '.join(map(repr, label_cols)) + how
                     + (' (anomalous when any is set)' if len(label_cols) > 1 else ''))
    elif binary:
        parts.append('no labels (' + ', '.join(map(repr, binary[:3]))
                     + f'{" ..." if len(binary) > 3 else ""} hold only 0/1: --label-col one '
                     'that marks anomalies)')
    else:
        parts.append('no labels')
    parts.append(f'{len(data_cols)} data column{"s" if len(data_cols) != 1 else ""}')
    line = f'read {path.name}: ' + ', '.join(parts)
    if left_out:
        line += '; left out: ' + ', '.join(f'{k!r} ({v})' for k, v in left_out.items())
    return line


# --------------------------------------------------------------------------- writing


def csv_to_bag(csv_path: str | Path, out: str | Path, *, topic: str = '/csv/data',
               storage: str = 'sqlite3', sep: str = 'auto', decimal: str = 'auto',
               time_col: str | None = None, time_unit: str | None = None,
               columns: Sequence[str] | None = None, exclude: Sequence[str] = (),
               label_col: str | Sequence[str] | None = None, drop_empty: bool = False,
               window: int = 30, stride: int = 1, overwrite: bool = False
               ) -> tuple[Path, CsvTable]:
    """Write the CSV as a bag; return the bag path and the parsed table.

    The bag, labels.csv and spec.yaml are written into a temporary directory beside ``out``
    and renamed to ``out`` at the end: a conversion that fails leaves no partial output.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        msg = f'{out} already exists; choose another output path or remove it first'
        raise BagError(msg)
    table = read_csv_table(csv_path, sep=sep, decimal=decimal, time_col=time_col,
                           time_unit=time_unit, columns=columns, exclude=exclude,
                           label_col=label_col, drop_empty=drop_empty)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent))
    try:
        staged = tmp / out.name
        _write_bag(staged, topic, table, storage)
        _write_spec(staged / 'spec.yaml', topic, table, window=window, stride=stride)
        _replace(staged, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, table


def _write_bag(path: Path, topic: str, table: CsvTable, storage: str) -> None:
    with BagWriter(path, storage=storage) as bag:
        bag.add_topic(topic, 'std_msgs/msg/Float64MultiArray')
        dim = bag.new('std_msgs/msg/MultiArrayDimension', label='columns',
                      size=len(table.columns), stride=len(table.columns))
        layout = bag.new('std_msgs/msg/MultiArrayLayout', dim=[dim], data_offset=0)
        names = list(table.label_columns)
        masks = np.stack([table.label_columns[n] for n in names], axis=1) if names else None
        if masks is not None:
            bag.add_topic(LABEL_TOPIC, LABEL_TYPE)
        previous = None
        for i, stamp in enumerate(table.times_ns):
            bag.write(topic, stamp, bag.new('std_msgs/msg/Float64MultiArray', layout=layout,
                                             data=table.values[i].copy()))
            if masks is not None:
                active = ','.join(n for n, on in zip(names, masks[i]) if on)
                if active != previous:
                    bag.write(LABEL_TOPIC, stamp, bag.new(LABEL_TYPE, data=active))
                    previous = active
    if table.label_columns:
        times = table.times_ns
        period = int(np.median(np.diff(times))) if len(times) > 1 else 1
        intervals = [iv for name, mask in table.label_columns.items()
                     for iv in intervals_from_mask(times, mask, kind=name, period_ns=period)]
        write_labels_csv(path / SIDECAR_NAME, intervals)


def _replace(staged: Path, out: Path) -> None:
    """Move the finished output into place, replacing an older one only once it is done."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f'.{out.name}.old-{os.getpid()}')
        os.replace(out, old)
    os.replace(staged, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def _write_spec(path: Path, topic: str, table: CsvTable, *, window: int, stride: int) -> None:
    from encdec_ros.io.spec import SignalSpec

    if len(table.times_ns) > 1:
        steps = np.diff(table.times_ns)
        steps = steps[steps > 0]
        period_s = float(np.median(steps)) * 1e-9 if steps.size else 0.0
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
