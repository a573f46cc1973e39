"""Windows over the aligned signal, offline (all at once) and live (a ring buffer).

A window ends at tick index ``k = t // period`` and is taken when ``k % stride == 0``, so the
offline and the live paths pick the same windows wherever the stream starts.
"""

from __future__ import annotations

import numpy as np


def window_ends(times_ns: np.ndarray, period_ns: int, window: int, stride: int) -> np.ndarray:
    """Row indices at which a full window ends and the stride grid is hit."""
    times_ns = np.asarray(times_ns, dtype=np.int64)
    if times_ns.size < window:
        return np.zeros(0, dtype=np.int64)
    ticks = times_ns // period_ns
    rows = np.arange(times_ns.size)
    ok = (ticks % stride == 0) & (rows >= window - 1)
    # a window must not span a gap in the clock (several recordings concatenated)
    if window > 1:
        contiguous = np.ones(times_ns.size, dtype=bool)
        gap = np.flatnonzero(np.diff(ticks) != 1) + 1   # rows that start a new run
        for start in gap:
            contiguous[start:start + window - 1] = False
        ok &= contiguous
    return np.flatnonzero(ok)


def windows_at(data: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """Stack the windows [n, window, C] that end at the given rows (a copy)."""
    if ends.size == 0:
        return np.zeros((0, window, data.shape[1]), dtype=data.dtype)
    view = np.lib.stride_tricks.sliding_window_view(data, window, axis=0)  # [T-w+1, C, w]
    return np.ascontiguousarray(view[ends - window + 1].transpose(0, 2, 1))


class RingWindow:
    """The last ``window`` rows of a stream, readable as one contiguous array without copy.

    Each row is written twice into a buffer of twice the window length, so the most recent
    ``window`` rows are always one contiguous slice.
    """

    def __init__(self, window: int, channels: int, *, dtype: type = np.float32) -> None:
        self.window = window
        self._buf = np.zeros((2 * window, channels), dtype=dtype)
        self._pos = 0
        self.count = 0

    def push(self, row: np.ndarray) -> None:
        """Append one row."""
        self._buf[self._pos] = row
        self._buf[self._pos + self.window] = row
        self._pos = (self._pos + 1) % self.window
        self.count += 1

    @property
    def full(self) -> bool:
        """Whether ``window`` rows have been pushed since the last reset."""
        return self.count >= self.window

    def view(self) -> np.ndarray:
        """The last ``window`` rows, oldest first (a view: copy it to keep it)."""
        return self._buf[self._pos:self._pos + self.window]

    def reset(self) -> None:
        """Forget all rows."""
        self._pos = 0
        self.count = 0
