"""Time alignment of several topics onto one clock (zero-order hold), offline and streaming.

The clock ticks at integer multiples of the spec's period since the epoch, so a bag read
offline and the same messages arriving live land on the same ticks. At tick ``t`` each topic
holds its last sample stamped at or before ``t``. A tick is produced once every topic has a
sample stamped after it, so no later message can change it: the offline reader and the
streaming aligner of the live nodes give identical rows. A sample stamped earlier than one
already seen on its topic is dropped (counted) by both. Stamps that mostly repeat (a header
stamp that is never filled in, say) cannot time samples at all: :func:`stalled` tells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class Stream:
    """The samples of one topic: stamps (ns, ascending after cleaning) and values [n, c]."""

    stamps_ns: np.ndarray
    values: np.ndarray
    dropped: int = 0   # samples dropped for stepping back in time


def monotonic(stamps_ns: np.ndarray, values: np.ndarray) -> Stream:
    """Drop samples whose stamp is earlier than one before them, as the live path does."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    if stamps_ns.size == 0:
        return Stream(stamps_ns, values)
    running = np.maximum.accumulate(stamps_ns)
    keep = stamps_ns >= running
    return Stream(stamps_ns[keep], values[keep], int((~keep).sum()))


def repeats(stamps_ns: np.ndarray) -> int:
    """How many stamps equal the one before them (a clock that does not advance)."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    return int((np.diff(stamps_ns) == 0).sum()) if stamps_ns.size > 1 else 0


def stalled(stamps_ns: np.ndarray) -> bool:
    """Whether a topic's stamps mostly repeat (at least half equal the one before, as when
    every stamp is zero), so that they cannot time its samples: the median gap is then zero."""
    stamps_ns = np.asarray(stamps_ns)
    return stamps_ns.size > 2 and 2 * repeats(stamps_ns) >= stamps_ns.size - 1


def first_tick(start_ns: int, period_ns: int) -> int:
    """The first tick at or after ``start_ns``."""
    return -(-int(start_ns) // period_ns) * period_ns


def align(streams: Sequence[Stream], period_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold every stream onto the common clock; return tick times [T] and data [T, C] float32.

    Ticks run from the first tick at which every stream has a sample up to, but excluding,
    the earliest last stamp among the streams.
    """
    widths = [s.values.shape[1] if s.values.ndim == 2 else 1 for s in streams]
    if not streams or any(s.stamps_ns.size == 0 for s in streams):
        return np.zeros(0, np.int64), np.zeros((0, sum(widths)), np.float32)
    start = first_tick(max(int(s.stamps_ns[0]) for s in streams), period_ns)
    stop = min(int(s.stamps_ns[-1]) for s in streams)
    if stop <= start:
        return np.zeros(0, np.int64), np.zeros((0, sum(widths)), np.float32)
    ticks = np.arange(start, stop, period_ns, dtype=np.int64)
    out = np.empty((ticks.size, sum(widths)), dtype=np.float32)
    col = 0
    for stream, width in zip(streams, widths):
        idx = np.searchsorted(stream.stamps_ns, ticks, side='right') - 1
        out[:, col:col + width] = stream.values.reshape(len(stream.stamps_ns), width)[idx]
        col += width
    return ticks, out


@dataclass
class StreamingAligner:
    """The live counterpart of :func:`align`: push samples per topic, get finished ticks.

    ``push`` returns the ticks (times [k] and rows [k, C]) that became final with this
    sample; usually zero or one, several after a gap.
    """

    channel_counts: Sequence[int]
    period_ns: int
    dropped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.channel_counts)
        self._offsets = np.concatenate(([0], np.cumsum(self.channel_counts))).astype(int)
        self._hist: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
        self._latest = [None] * n            # newest stamp per topic
        self._next_tick: int | None = None
        self.dropped = [0] * n
        self._width = int(self._offsets[-1])

    def reset(self) -> None:
        """Forget everything (after a long gap or a restart of the inputs)."""
        self.__post_init__()

    def push(self, topic: int, stamp_ns: int, values: Sequence[float]
             ) -> tuple[np.ndarray, np.ndarray]:
        """Add one sample of topic ``topic``; return newly final ticks and rows."""
        latest = self._latest[topic]
        if latest is not None and stamp_ns < latest:
            self.dropped[topic] += 1
            return _EMPTY_T, np.zeros((0, self._width), np.float32)
        self._latest[topic] = stamp_ns
        hist = self._hist[topic]
        hist.append((stamp_ns, np.asarray(values, dtype=np.float32)))
        if any(v is None for v in self._latest):
            return _EMPTY_T, np.zeros((0, self._width), np.float32)
        if self._next_tick is None:
            self._next_tick = first_tick(max(h[0][0] for h in self._hist), self.period_ns)
        watermark = min(self._latest)
        if self._next_tick >= watermark:
            return _EMPTY_T, np.zeros((0, self._width), np.float32)
        ticks = np.arange(self._next_tick, watermark, self.period_ns, dtype=np.int64)
        rows = np.empty((ticks.size, self._width), dtype=np.float32)
        for i, hist in enumerate(self._hist):
            lo, hi = self._offsets[i], self._offsets[i + 1]
            stamps = np.fromiter((h[0] for h in hist), dtype=np.int64, count=len(hist))
            idx = np.searchsorted(stamps, ticks, side='right') - 1
            rows[:, lo:hi] = np.stack([h[1] for h in hist])[idx]
            # keep the last sample at or before the last emitted tick, and everything after
            keep_from = max(int(idx[-1]), 0)
            if keep_from:
                del hist[:keep_from]
        self._next_tick = int(ticks[-1]) + self.period_ns
        return ticks, rows


_EMPTY_T = np.zeros(0, np.int64)
