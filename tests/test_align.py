"""Alignment and windows: the streaming (live) path gives exactly the offline rows."""

from __future__ import annotations

import time

import numpy as np
import pytest

from encdec_ros.io.align import Stream, StreamingAligner, align, clean
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
    cleaned = [clean(s.stamps_ns, s.values, PERIOD) for s in streams]
    times, data = align(cleaned, PERIOD)
    assert times.size > 300 and np.all(times % PERIOD == 0)
    # the 33 Hz topic's first sample is held two ticks (its period is not known yet); after
    # that the clock runs without a gap
    assert np.all(np.diff(times[2:]) == PERIOD)

    live = StreamingAligner([3, 2, 1], PERIOD)
    got_t, got_rows = [], []
    for topic, stamp, values in interleave(streams, rng):
        t, rows, _ = live.push(topic, stamp, values)
        got_t.append(t)
        got_rows.append(rows)
    got_t = np.concatenate(got_t)
    got_rows = np.concatenate(got_rows)
    np.testing.assert_array_equal(got_t, times)
    np.testing.assert_array_equal(got_rows, data)
    assert live.dropped == [c.dropped for c in cleaned]
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


# --------------------------------------------------------------------------- the time model

T0 = 1_700_000_000_000_000_000
HOUR = 3600 * 10**9
FAULTS = ('gap', 'ahead_one', 'ahead_all', 'back_all', 'outliers', 'loss', 'burst', 'nan',
          'everything')


def faulty(kind: str, rng: np.random.Generator, seconds: float = 14.0):
    """Three topics (200, 100 and 33 Hz) with a fault; each message also has an arrival time
    (its stamp before the fault, plus up to 30 ms of transport jitter), so that the arrival
    order keeps each topic's order but interleaves the topics differently from the stamps."""
    out = []
    for topic, (rate, width) in enumerate(((200, 3), (100, 2), (33, 1))):
        n = int(rate * seconds)
        stamps = T0 + 3_000_000 * topic + np.arange(n) * int(1e9 / rate) + \
            rng.integers(0, 2_000_000, n)
        stamps = np.sort(stamps).astype(np.int64)
        arrival = stamps + rng.integers(0, 30_000_000, n)
        arrival = np.maximum.accumulate(arrival)
        values = rng.normal(size=(n, width))
        keep = np.ones(n, bool)
        t = (stamps - T0) * 1e-9
        if kind in ('gap', 'everything') and topic == 1:
            keep &= (t < 5) | (t >= 10)                      # silent for 5 s
        if kind == 'ahead_one' and topic == 0:
            stamps[n // 3] += HOUR                           # one message an hour ahead
        if kind in ('ahead_all', 'everything'):
            stamps[t >= 12] += HOUR                          # the clock jumps an hour
        if kind in ('back_all', 'everything'):
            stamps[t >= 7] -= 10**10                         # a bag loop: 10 s back
        if kind in ('outliers', 'everything'):
            stamps[n // 4] -= 10**9
            stamps[n // 2] += 7 * 10**9
        if kind in ('loss', 'everything') and topic == 0:
            keep &= rng.random(n) > 0.3
        if kind == 'burst' and topic == 0:                   # 1 s of 20 kHz stamps
            burst = T0 + 4 * 10**9 + np.arange(20_000) * 50_000
            stamps = np.sort(np.concatenate([stamps, burst]))
            arrival = np.sort(np.concatenate([arrival, burst + 1000]))
            values = rng.normal(size=(stamps.size, width))
            keep = np.ones(stamps.size, bool)
        if kind in ('nan', 'everything') and topic == 2:
            values[n // 2:n // 2 + 20, 0] = np.nan
        out.append((stamps[keep], values[keep], arrival[keep]))
    return out


def arrivals(streams):
    """(topic, stamp, values) in arrival order."""
    events = [(int(a), i, int(s), v) for i, (st, vals, arr) in enumerate(streams)
              for s, v, a in zip(st, vals, arr)]
    events.sort(key=lambda e: (e[0], e[1]))
    return [(i, s, v) for _, i, s, v in events]


@pytest.mark.parametrize('kind', FAULTS)
def test_live_aligner_equals_offline_under_every_fault(kind):
    rng = np.random.default_rng(FAULTS.index(kind))
    streams = faulty(kind, rng)
    cleaned = [clean(st, vals, PERIOD) for st, vals, _ in streams]
    times, data = align(cleaned, PERIOD)
    live = StreamingAligner([3, 2, 1], PERIOD)
    got = [live.push(i, s, v) for i, s, v in arrivals(streams)]
    got_t = np.concatenate([g.times_ns for g in got])
    np.testing.assert_array_equal(got_t, times)
    np.testing.assert_array_equal(np.concatenate([g.rows for g in got]), data)
    starts = np.concatenate([g.starts for g in got])
    # a run starts exactly where the clock is not one period after the tick before
    assert starts.tolist() == [True] + (np.diff(got_t) != PERIOD).tolist()
    for c, clock in zip(cleaned, live.clocks):
        assert (c.dropped, c.gaps, c.jumps_back, c.missing) == \
            (clock.dropped, clock.gaps, clock.jumps_back, clock.missing)
    # batches of one topic at a time (as a batch decoder would give them) change nothing
    batched = StreamingAligner([3, 2, 1], PERIOD)
    order = arrivals(streams)
    parts, k = [], 0
    while k < len(order):
        j = k
        while j < len(order) and order[j][0] == order[k][0] and j - k < 7:
            j += 1
        parts.append(batched.push_many(order[k][0], [e[1] for e in order[k:j]],
                                       np.stack([e[2] for e in order[k:j]])))
        k = j
    np.testing.assert_array_equal(np.concatenate([p.times_ns for p in parts]), times)
    np.testing.assert_array_equal(np.concatenate([p.rows for p in parts]), data)
    # what a node decoding per tick does: all that arrived in 60 ms, one topic after another
    chunked = StreamingAligner([3, 2, 1], PERIOD)
    events = [(int(a), i, int(s), v) for i, (st, vals, arr) in enumerate(streams)
              for s, v, a in zip(st, vals, arr)]
    events.sort(key=lambda e: (e[0], e[1]))
    slot = np.array([e[0] // 60_000_000 for e in events])
    parts = []
    edges = np.flatnonzero(np.diff(slot)) + 1
    for chunk in np.split(np.arange(len(events)), edges):
        for topic in range(3):
            sel = [events[c] for c in chunk if events[c][1] == topic]
            if sel:
                parts.append(chunked.push_many(topic, [e[2] for e in sel],
                                               np.stack([e[3] for e in sel])))
    np.testing.assert_array_equal(np.concatenate([p.times_ns for p in parts]), times)
    np.testing.assert_array_equal(np.concatenate([p.rows for p in parts]), data)
    for a, b in zip(chunked.clocks, live.clocks):
        assert (a.accepted, a.dropped, a.gaps, a.jumps_back, a.jumps_forward, a.missing,
                a.last, a.hold_ns) == (b.accepted, b.dropped, b.gaps, b.jumps_back,
                                       b.jumps_forward, b.missing, b.last, b.hold_ns)
    # memory: one sample per tick at most, far below the bound
    assert max(live.kept()) <= 1300 and not any(live.evicted)


def test_a_stamp_an_hour_ahead_is_an_outlier_and_an_hour_jump_is_skipped_not_filled():
    rng = np.random.default_rng(7)
    plain = align([clean(st, v, PERIOD) for st, v, _ in faulty('plain', rng)], PERIOD)[0]
    rng = np.random.default_rng(7)
    one = [clean(st, v, PERIOD) for st, v, _ in faulty('ahead_one', rng)]
    assert one[0].dropped == 1 and one[0].gaps == 0
    assert np.array_equal(align(one, PERIOD)[0], plain)           # nothing lost at all
    rng = np.random.default_rng(7)
    streams = faulty('ahead_all', rng)
    live = StreamingAligner([3, 2, 1], PERIOD)
    t0 = time.perf_counter()
    got = [live.push(i, s, v) for i, s, v in arrivals(streams)]
    spent = time.perf_counter() - t0
    times = np.concatenate([g.times_ns for g in got])
    assert max(g.times_ns.size for g in got) <= 10                # never a burst of ticks
    assert live.skipped > 359_000                                  # the hour, skipped ...
    assert spent < 5.0 and np.diff(times).max() > HOUR - 10**9     # ... in one step
    assert [c.jumps_forward for c in live.clocks] == [1, 1, 1]
    after = times[times > T0 + HOUR]
    assert after.size > 150 and np.all(np.diff(after) == PERIOD)  # the clock runs on


def test_stamps_jumping_back_start_a_new_segment_once_every_topic_has_jumped():
    rng = np.random.default_rng(8)
    streams = faulty('back_all', rng)
    live = StreamingAligner([3, 2, 1], PERIOD)
    got = [live.push(i, s, v) for i, s, v in arrivals(streams)]
    times = np.concatenate([g.times_ns for g in got])
    starts = np.concatenate([g.starts for g in got])
    assert [c.jumps_back for c in live.clocks] == [1, 1, 1]
    back = int(np.flatnonzero(np.diff(times) < 0)[0]) + 1
    assert starts[back] and not starts[back + 1:].any()
    # the new segment starts 3 s after the loop (7 s - 10 s), within a few ticks
    assert abs(times[back] - (T0 - 3 * 10**9)) < 10 * PERIOD
    assert times[back - 1] > T0 + 6_900_000_000                    # the old one ran to 7 s


def test_memory_stays_bounded_while_one_topic_is_silent_or_far_ahead():
    live = StreamingAligner([1, 1], PERIOD, max_entries=500)
    live.push(1, T0, [0.0])
    for k in range(20_000):                                        # 200 s of topic 0 alone
        assert live.push(0, T0 + k * PERIOD, [float(k)]).times_ns.size == 0
    assert live.kept()[0] <= 501 and live.evicted[0] > 19_000
    # topic 1 comes back: ticks resume at once, the silent stretch is skipped
    out = [live.push(1, T0 + (19_990 + k) * PERIOD, [1.0]) for k in range(5)]
    assert sum(o.times_ns.size for o in out) >= 3 and live.skipped > 19_000


def test_the_spec_can_fix_a_topics_hold():
    stamps = T0 + np.concatenate([np.arange(100), np.arange(105, 200)]) * PERIOD  # 50 ms gap
    vals = np.zeros((stamps.size, 1))
    measured = clean(stamps, vals, PERIOD)
    fixed = clean(stamps, vals, PERIOD, max_hold_ns=100_000_000)
    other = clean(T0 + np.arange(200) * PERIOD, vals[:1].repeat(200, 0), PERIOD)
    assert measured.gaps == 1 and fixed.gaps == 0
    assert align([measured, other], PERIOD)[0].size < align([fixed, other], PERIOD)[0].size


def test_the_vectorised_cleaning_equals_the_clock_step_by_step():
    from encdec_ros.io.align import PROVISIONAL, TopicClock, _clean_regular, settle

    rng = np.random.default_rng(11)
    for _ in range(20):
        rate = rng.uniform(5, 2000)
        steps = rng.exponential(0.2, 3000) * 1e9 / rate + 1e9 / rate
        steps[rng.random(3000) < 0.05] = 0                          # repeated stamps
        stamps = T0 + np.cumsum(steps).astype(np.int64)
        fast = _clean_regular(stamps, PERIOD, None)
        clock = TopicClock(PERIOD)
        holds: list[int] = []
        for s in stamps.tolist():
            for accepted in clock.offer(s):
                if accepted[2] != PROVISIONAL:
                    settle(holds, accepted[2])
                holds.append(accepted[2])
        if fast is None:
            assert clock.gaps + clock.dropped > 0
            continue
        assert fast[0].tolist() == holds and fast[1] == clock.missing
