"""Alignment and windows: the streaming (live) path gives exactly the offline rows."""

from __future__ import annotations

import numpy as np
import pytest

from encdec_ros.io.align import Stream, StreamingAligner, align, monotonic
from encdec_ros.io.window import RingWindow, window_ends, windows_at

PERIOD = 10_000_000  # 100 Hz


def make_streams(rng: np.random.Generator, *, disorder: bool = False) -> list[Stream]:
    """Three topics at 200, 100 and 33 Hz with jitter, starting at odd times."""
    out = []
    for rate, width, start in ((200, 3, 1_700_000_000_003_000_000), (100, 2, 1_700_000_000_020_000_000),
                               (33, 1, 1_700_000_000_007_000_000)):
        n = int(rate * 4)
        stamps = start + np.arange(n) * int(1e9 / rate) + rng.integers(0, 2_000_000, n)
        stamps = np.sort(stamps)
        if disorder:
            swap = rng.choice(n - 1, size=n // 20, replace=False)
            stamps[swap], stamps[swap + 1] = stamps[swap + 1], stamps[swap].copy()
        out.append(Stream(stamps.astype(np.int64), rng.normal(size=(n, width))))
    return out


def interleave(streams: list[Stream], rng: np.random.Generator):
    """Messages of all topics in a random arrival order that keeps each topic's own order."""
    events = [(i, j) for i, s in enumerate(streams) for j in range(len(s.stamps_ns))]
    keys = np.array([streams[i].stamps_ns[j] + rng.integers(0, 30_000_000) for i, j in events])
    order = np.argsort(keys, kind='stable')
    per_topic = [0] * len(streams)
    for k in order:
        i = events[k][0]
        j = per_topic[i]
        per_topic[i] += 1
        yield i, int(streams[i].stamps_ns[j]), streams[i].values[j]


@pytest.mark.parametrize('disorder', [False, True])
def test_streaming_aligner_equals_offline_align(disorder):
    rng = np.random.default_rng(3)
    streams = make_streams(rng, disorder=disorder)
    clean = [monotonic(s.stamps_ns, s.values) for s in streams]
    times, data = align(clean, PERIOD)
    assert times.size > 300 and np.all(np.diff(times) == PERIOD) and np.all(times % PERIOD == 0)

    live = StreamingAligner([3, 2, 1], PERIOD)
    got_t, got_rows = [], []
    for topic, stamp, values in interleave(streams, rng):
        t, rows = live.push(topic, stamp, values)
        got_t.append(t)
        got_rows.append(rows)
    got_t = np.concatenate(got_t)
    got_rows = np.concatenate(got_rows)
    np.testing.assert_array_equal(got_t, times)
    np.testing.assert_array_equal(got_rows, data)
    assert live.dropped == [c.dropped for c in clean]
    assert (sum(live.dropped) > 0) == disorder


def test_zero_order_hold_semantics():
    a = Stream(np.array([0, 15, 30, 45], dtype=np.int64) * 1_000_000, np.arange(4.)[:, None])
    b = Stream(np.array([5, 25, 60], dtype=np.int64) * 1_000_000, 10 + np.arange(3.)[:, None])
    times, data = align([a, b], PERIOD)
    # ticks from the first tick with both (10 ms) up to, not including, the earliest last (45)
    assert list(times // 1_000_000) == [10, 20, 30, 40]
    assert data[:, 0].tolist() == [0, 1, 2, 2]
    assert data[:, 1].tolist() == [10, 10, 11, 11]


def test_windows_offline_and_ring_agree_and_follow_the_absolute_stride():
    rng = np.random.default_rng(0)
    times = (1_000 + np.arange(200)) * PERIOD
    data = rng.normal(size=(200, 4)).astype(np.float32)
    ends = window_ends(times, PERIOD, window=16, stride=5)
    assert np.all((times[ends] // PERIOD) % 5 == 0) and ends[0] >= 15
    wins = windows_at(data, ends, 16)
    ring = RingWindow(16, 4)
    live = []
    for row, t in zip(data, times):
        ring.push(row)
        if ring.full and (t // PERIOD) % 5 == 0:
            live.append(ring.view().copy())
    np.testing.assert_array_equal(np.stack(live), wins)
    # a window never spans a gap between two recordings
    gap_times = np.concatenate([times[:100], times[100:] + 50 * PERIOD])
    for end in window_ends(gap_times, PERIOD, window=16, stride=1):
        assert np.all(np.diff(gap_times[end - 15:end + 1]) == PERIOD)


def test_stamps_that_mostly_repeat_are_stalled():
    from encdec_ros.io.align import repeats, stalled

    steady = np.arange(10, dtype=np.int64) * PERIOD
    assert repeats(steady) == 0 and not stalled(steady)
    assert stalled(np.zeros(10, np.int64))                     # header stamps never filled
    pairs = np.repeat(steady[::2], 2)
    assert repeats(pairs) == 5 and stalled(pairs) and np.median(np.diff(pairs)) == 0
    few = steady.copy()
    few[[3, 7]] = few[[2, 6]]                                  # an occasional repeat is fine
    assert repeats(few) == 2 and not stalled(few)
    assert not stalled(np.zeros(2, np.int64))                  # too few to tell
