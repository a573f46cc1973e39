"""Labelled intervals (faults, anomalies) as a sidecar CSV, a label topic, and point masks.

Two carriers hold the same information:

- a sidecar CSV with header ``start_ns,end_ns,kind,detail``, one row per interval, times in
  nanoseconds since the epoch on the bag's clock (header stamps), end exclusive;
- a label topic (:data:`LABEL_TOPIC`, std_msgs/msg/String) in the bag whose ``data`` is the
  comma-joined kinds active from that message's stamp on, empty when nothing is active.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from encdec_ros.errors import LabelError

LABEL_TOPIC = '/encdec/labels'
LABEL_TYPE = 'std_msgs/msg/String'
CSV_HEADER = ('start_ns', 'end_ns', 'kind', 'detail')
SIDECAR_NAME = 'labels.csv'


@dataclass(frozen=True)
class Interval:
    """One labelled interval [start_ns, end_ns) of a kind, with an optional detail."""

    start_ns: int
    end_ns: int
    kind: str
    detail: str = ''

    @property
    def duration_s(self) -> float:
        """Length of the interval in seconds."""
        return (self.end_ns - self.start_ns) * 1e-9


def write_labels_csv(path: str | Path, intervals: Iterable[Interval]) -> Path:
    """Write intervals to a CSV file with the :data:`CSV_HEADER` columns."""
    path = Path(path)
    with path.open('w', newline='') as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEADER)
        for iv in sorted(intervals, key=lambda i: (i.start_ns, i.end_ns)):
            writer.writerow((iv.start_ns, iv.end_ns, iv.kind, iv.detail))
    return path


def read_labels_csv(path: str | Path) -> list[Interval]:
    """Read intervals from a CSV written by :func:`write_labels_csv`."""
    path = Path(path)
    if not path.is_file():
        msg = f'label file {path} does not exist; pass the labels.csv written beside the bag'
        raise LabelError(msg)
    out: list[Interval] = []
    with path.open(newline='') as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_HEADER[:3] if c not in (reader.fieldnames or [])]
        if missing:
            msg = (f'label file {path} lacks the column(s) {", ".join(missing)}; '
                   f'its header must be {",".join(CSV_HEADER)}')
            raise LabelError(msg)
        for lineno, row in enumerate(reader, start=2):
            try:
                start, end = int(row['start_ns']), int(row['end_ns'])
            except (TypeError, ValueError):
                msg = (f'label file {path}, line {lineno}: start_ns and end_ns must be integer '
                       f'nanoseconds, got {row["start_ns"]!r} and {row["end_ns"]!r}')
                raise LabelError(msg) from None
            if end <= start:
                msg = f'label file {path}, line {lineno}: end_ns must be after start_ns'
                raise LabelError(msg)
            out.append(Interval(start, end, row['kind'] or 'anomaly', row.get('detail') or ''))
    return out


def label_mask(intervals: Sequence[Interval], times_ns: np.ndarray,
               *, kinds: Iterable[str] | None = None) -> np.ndarray:
    """Boolean mask over ``times_ns``: True where a time lies inside any interval."""
    times_ns = np.asarray(times_ns, dtype=np.int64)
    mask = np.zeros(times_ns.shape, dtype=bool)
    wanted = set(kinds) if kinds is not None else None
    for iv in intervals:
        if wanted is None or iv.kind in wanted:
            mask |= (times_ns >= iv.start_ns) & (times_ns < iv.end_ns)
    return mask


def intervals_from_mask(times_ns: np.ndarray, mask: np.ndarray, *, kind: str = 'flag',
                        period_ns: int | None = None) -> list[Interval]:
    """Turn a boolean mask over sample times into intervals (end = next sample time)."""
    times_ns = np.asarray(times_ns, dtype=np.int64)
    mask = np.asarray(mask, dtype=bool)
    if times_ns.size == 0:
        return []
    if period_ns is None:
        period_ns = int(np.median(np.diff(times_ns))) if times_ns.size > 1 else 1
    edges = np.diff(np.concatenate(([False], mask, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [Interval(int(times_ns[s]), int(times_ns[e - 1]) + period_ns, kind)
            for s, e in zip(starts, ends)]


def intervals_from_label_messages(stamps_ns: Sequence[int], texts: Sequence[str],
                                  *, end_ns: int | None = None) -> list[Interval]:
    """Rebuild intervals from label-topic messages (comma-joined active kinds per message)."""
    open_since: dict[str, int] = {}
    out: list[Interval] = []
    for stamp, text in zip(stamps_ns, texts):
        active = {k.strip() for k in text.split(',') if k.strip()}
        for kind in sorted(set(open_since) - active):
            out.append(Interval(open_since.pop(kind), int(stamp), kind))
        for kind in sorted(active - set(open_since)):
            open_since[kind] = int(stamp)
    if open_since:
        last = int(end_ns if end_ns is not None else (stamps_ns[-1] if len(stamps_ns) else 0))
        for kind, start in open_since.items():
            out.append(Interval(start, max(last, start + 1), kind))
    return sorted(out, key=lambda i: (i.start_ns, i.kind))
