"""Time alignment of several topics onto one clock: one time model, offline and live.

The clock ticks at integer multiples of the spec's period since the epoch, so a bag read
offline and the same messages arriving live land on the same ticks. At tick ``t`` each topic
holds its last sample stamped at or before ``t`` (zero-order hold), under three rules:

- **Hold.** A sample is held for at most its topic's *hold*: the topic's ``max_hold_s`` in
  the spec, else :data:`HOLD_PERIODS` times the topic's measured period (the median step of
  its stamps, :class:`Cadence`), and never less than :data:`MIN_HOLD_TICKS` clock periods.
  A tick at which some topic's sample is older than its hold is not produced: the aligned
  signal has a gap there and a window never spans it (it starts again after the gap). A gap
  is skipped in one step, never filled tick by tick, however long it is.
- **Jumps.** A stamp that steps back, or forward by more than the hold, is held back until
  the topic's next stamp tells (:class:`TopicClock`): if that one goes on from the old stamps,
  the odd stamp was an outlier and is dropped (counted); if it goes on from the new one, the
  jump is real. A real forward step is a gap (see above). A real backward step starts a new
  *segment*: the old segment ends where each topic left it, and once every topic has jumped,
  the clock starts again from their new stamps.
- **Memory.** Per topic at most one sample per tick is kept, and at most ``max_entries``
  samples in all: a topic that runs ahead of a silent one cannot fill memory.

A tick is produced once every topic has a sample stamped after it (in the same segment), so
no later message can change it. Which ticks come out, and their rows, depend only on each
topic's own sequence of stamps, not on how the topics interleave in arrival: the offline
reader (:func:`clean` then :func:`align`) and the live :class:`StreamingAligner` give
identical rows (as long as no topic runs ``max_entries`` ticks ahead of another). Stamps that
mostly repeat cannot time samples at all: :func:`stalled` tells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np

HOLD_PERIODS = 4
"""A sample is held for at most this many of its topic's measured periods ..."""
MIN_HOLD_TICKS = 2
"""... and for at least this many periods of the common clock."""
CADENCE_BLOCK = 16
"""Steps per block of the period estimate: the median of the last full block (of the steps so
far, before the first block is full)."""
MAX_ENTRIES = 4096
"""Samples kept per topic while the other topics catch up (live)."""
JUMP_PERIODS = 1000
"""A forward step of more than this many measured periods counts as a jump of the clock rather
than as missing messages (both are gaps for the alignment)."""
MAX_HOLD_S = 60.0
"""The largest hold: what a spec's ``max_hold_s`` may give, and the cap on measured ones."""
MAX_HOLD_NS = int(MAX_HOLD_S * 1e9)
PROVISIONAL = -1
"""The hold of a sample accepted before its topic's period is known; settled (:func:`settle`)
once the next step is known, before any tick can need it."""


# --------------------------------------------------------------------------- one topic


class Cadence:
    """A topic's measured period and its hold, from the steps between its stamps.

    The period is the median (the upper one of an even count) of the last full block of
    :data:`CADENCE_BLOCK` positive steps, or of all steps so far before the first block is
    full. The hold is :data:`HOLD_PERIODS` periods, at least :data:`MIN_HOLD_TICKS` clock
    periods; a fixed ``max_hold_ns`` replaces it.
    """

    __slots__ = ('period_ns', 'fixed_ns', 'ref_ns', 'hold_ns', '_steps', '_full')

    def __init__(self, period_ns: int, max_hold_ns: int | None = None) -> None:
        self.period_ns = int(period_ns)
        self.fixed_ns = None if max_hold_ns is None else int(max_hold_ns)
        self.ref_ns: int | None = None       # the measured period, once a step is known
        self._steps: list[int] = []
        self._full = False                   # whether a first block is complete
        self.hold_ns = hold_ns(None, self.period_ns, self.fixed_ns)

    def record(self, step_ns: int) -> None:
        """Note one step between accepted stamps (zero and negative steps are ignored)."""
        if step_ns <= 0:
            return
        steps = self._steps
        steps.append(step_ns)
        if not self._full or len(steps) == CADENCE_BLOCK:
            self.ref_ns = sorted(steps)[len(steps) // 2]
            self.hold_ns = hold_ns(self.ref_ns, self.period_ns, self.fixed_ns)
            if len(steps) == CADENCE_BLOCK:
                self._full = True
                steps.clear()


def hold_ns(ref_ns: int | None, period_ns: int, fixed_ns: int | None = None) -> int:
    """The hold of a topic whose measured period is ``ref_ns`` (None: not known yet, see
    :data:`PROVISIONAL`)."""
    if fixed_ns is not None:
        return fixed_ns
    if ref_ns is None:
        return PROVISIONAL
    return min(max(HOLD_PERIODS * ref_ns, MIN_HOLD_TICKS * period_ns), MAX_HOLD_NS)


def settle(holds: list[int], hold: int) -> None:
    """Give the samples at the end of ``holds`` that were accepted before their topic's period
    was known (:data:`PROVISIONAL`) the hold known now, at most :data:`MAX_HOLD_S`: a topic's
    first sample stands until its second, however slow the topic."""
    k = len(holds) - 1
    while k >= 0 and holds[k] == PROVISIONAL:
        holds[k] = min(hold, MAX_HOLD_NS)
        k -= 1


def missing_in(step_ns: int, ref_ns: int | None) -> int:
    """Messages missing in a step of ``step_ns`` at a period of ``ref_ns``: 0 below 1.5
    periods and for jumps (over :data:`JUMP_PERIODS` periods)."""
    if ref_ns is None or 2 * step_ns <= 3 * ref_ns or step_ns > JUMP_PERIODS * ref_ns:
        return 0
    return (step_ns + ref_ns // 2) // ref_ns - 1


class TopicClock:
    """One topic's stamps through the time model: accept, hold back one odd stamp, or drop.

    :meth:`offer` returns the samples accepted with this stamp (none, one, or two when it
    confirms a held-back one), each as ``(stamp_ns, payload, hold_ns, segment)``.

    Counters: ``accepted``; ``dropped`` (odd stamps that the next one did not confirm);
    ``gaps`` (confirmed forward steps longer than the hold), of which ``jumps_forward`` longer
    than :data:`JUMP_PERIODS` periods; ``jumps_back`` (confirmed backward steps: new segments);
    ``missing`` (messages absent from the cadence, estimated from the steps). ``events`` lists
    ``(kind, from_ns, to_ns)`` for gaps ('gap', 'jump') and backward jumps ('back') until read.
    """

    __slots__ = ('cadence', 'last', 'segment', 'pending', 'accepted', 'dropped', 'gaps',
                 'jumps_forward', 'jumps_back', 'missing', 'events')

    def __init__(self, period_ns: int, max_hold_ns: int | None = None) -> None:
        self.cadence = Cadence(period_ns, max_hold_ns)
        self.last: int | None = None
        self.segment = 0
        self.pending: tuple[int, Any] | None = None
        self.accepted = self.dropped = self.gaps = self.jumps_forward = 0
        self.jumps_back = self.missing = 0
        self.events: list[tuple[str, int, int]] = []

    @property
    def hold_ns(self) -> int:
        """The current hold in nanoseconds."""
        return self.cadence.hold_ns

    def offer(self, stamp_ns: int, payload: Any = None) -> list[tuple[int, Any, int, int]]:
        """Give the topic's next stamp; return the samples accepted now."""
        out: list[tuple[int, Any, int, int]] = []
        self._offer(int(stamp_ns), payload, out)
        return out

    def _offer(self, s: int, p: Any, out: list) -> None:
        last = self.last
        if last is None:
            self._accept(s, p, None, out)
            return
        # until the topic's period is known, any forward step goes
        hold = self.cadence.hold_ns if self.cadence.ref_ns is not None else _FOREVER
        step = s - last
        pending = self.pending
        if pending is None:
            if 0 <= step <= hold:
                self._accept(s, p, step, out)
            else:
                self.pending = (s, p)
            return
        ps, pp = pending
        self.pending = None
        if 0 <= step <= hold:                       # the old stamps go on: an outlier
            self.dropped += 1
            self._accept(s, p, step, out)
        elif 0 <= s - ps <= max(hold, abs(ps - last)):   # the new stamps go on: a real jump
            if ps < last:
                self.segment += 1
                self.jumps_back += 1
                self._event('back', last, ps)
                self._accept(ps, pp, None, out)
            else:
                self.gaps += 1
                ref = self.cadence.ref_ns or self.cadence.period_ns
                jump = ps - last > JUMP_PERIODS * ref
                self.jumps_forward += jump
                self._event('jump' if jump else 'gap', last, ps)
                self._accept(ps, pp, ps - last, out)
            self._offer(s, p, out)
        else:                                       # neither: wait for the next one
            self.dropped += 1
            self.pending = (s, p)

    def accept_run(self, stamps_ns: Sequence[int]) -> list[int]:
        """Accept the longest leading run of ``stamps_ns`` that :meth:`offer` would accept one
        by one as each comes (no stamp held back, no event); return the hold of each accepted
        sample (as many as were accepted). Empty where the per-sample path must decide: a
        held-back stamp, a topic whose period is not settled yet, an odd first stamp."""
        cad = self.cadence
        last = self.last
        if self.pending is not None or last is None or cad.ref_ns is None or not cad._full:
            return []
        steps = cad._steps
        ref, hold = cad.ref_ns, cad.hold_ns
        holds: list[int] = []
        missing = 0
        for s in stamps_ns:
            step = s - last
            if step < 0 or step > hold:
                break
            if step > 0:
                if 2 * step > 3 * ref and step <= JUMP_PERIODS * ref:   # as missing_in
                    missing += (step + ref // 2) // ref - 1
                steps.append(step)
                if len(steps) == CADENCE_BLOCK:                          # as Cadence.record
                    ref = cad.ref_ns = sorted(steps)[CADENCE_BLOCK // 2]
                    hold = cad.hold_ns = hold_ns(ref, cad.period_ns, cad.fixed_ns)
                    steps.clear()
            holds.append(hold)
            last = s
        if holds:
            self.accepted += len(holds)
            self.missing += missing
            self.last = last
        return holds

    def _accept(self, s: int, p: Any, step: int | None, out: list) -> None:
        if step is not None:
            self.missing += missing_in(step, self.cadence.ref_ns)
            self.cadence.record(step)
        self.last = s
        self.accepted += 1
        out.append((s, p, self.cadence.hold_ns, self.segment))

    def _event(self, kind: str, a: int, b: int) -> None:
        if len(self.events) < 64:
            self.events.append((kind, a, b))

    def take_events(self) -> list[tuple[str, int, int]]:
        """The gap and jump events since the last call."""
        events, self.events = self.events, []
        return events


# --------------------------------------------------------------------------- offline


@dataclass
class Stream:
    """The samples of one topic: stamps (ns) and values [n, c], with what the time model made
    of them once cleaned (:func:`clean`): the hold and segment of each sample and counts."""

    stamps_ns: np.ndarray
    values: np.ndarray
    holds_ns: np.ndarray | None = None      # [n] hold of each sample (None: not cleaned)
    segments: np.ndarray | None = None      # [n] segment of each sample, non-decreasing
    dropped: int = 0          # stamps dropped as outliers (see TopicClock)
    gaps: int = 0             # confirmed forward steps longer than the hold
    jumps_forward: int = 0    # of which clock jumps
    jumps_back: int = 0       # confirmed backward steps (new segments)
    missing: int = 0          # messages missing from the cadence (estimate)
    pending: int = 0          # a last stamp still held back (not used)


def clean(stamps_ns: np.ndarray, values: np.ndarray, period_ns: int, *,
          max_hold_ns: int | None = None) -> Stream:
    """Run one topic's samples (in arrival order) through :class:`TopicClock`: the accepted
    samples with their holds and segments, and the counts; as the live aligner does."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    values = np.asarray(values)
    n = stamps.size
    if n == 0:
        return Stream(stamps, values, np.zeros(0, np.int64), np.zeros(0, np.int64))
    fast = _clean_regular(stamps, int(period_ns), max_hold_ns)
    if fast is not None:
        holds, missing = fast
        return Stream(stamps, values, holds, np.zeros(n, np.int64), missing=missing)
    clock = TopicClock(period_ns, max_hold_ns)
    keep: list[int] = []
    holds: list[int] = []
    segs: list[int] = []
    for i, s in enumerate(stamps.tolist()):
        for stamp, idx, hold, seg in clock.offer(s, i):
            if hold != PROVISIONAL:
                settle(holds, hold)
            keep.append(idx)
            holds.append(hold)
            segs.append(seg)
    settle(holds, MIN_HOLD_TICKS * int(period_ns))
    idx = np.asarray(keep, dtype=np.int64)
    return Stream(stamps[idx], values[idx], np.asarray(holds, np.int64),
                  np.asarray(segs, np.int64), dropped=clock.dropped, gaps=clock.gaps,
                  jumps_forward=clock.jumps_forward, jumps_back=clock.jumps_back,
                  missing=clock.missing, pending=int(clock.pending is not None))


def _clean_regular(stamps: np.ndarray, period_ns: int, max_hold_ns: int | None
                   ) -> tuple[np.ndarray, int] | None:
    """The holds (and missing count) of a topic whose every step lies within the hold, so
    that :class:`TopicClock` would accept every stamp; None when one does not (the slow path
    then runs the clock itself). Gives exactly the clock's numbers, vectorised."""
    steps = np.diff(stamps)
    if steps.size and steps.min() < 0:
        return None
    positive = steps[steps > 0]
    total = positive.size
    refs = np.full(total + 1, -1, dtype=np.int64)          # ref after c positive steps
    for c in range(1, min(total, CADENCE_BLOCK - 1) + 1):
        refs[c] = np.sort(positive[:c])[c // 2]
    blocks = total // CADENCE_BLOCK
    if blocks:
        meds = np.sort(positive[:blocks * CADENCE_BLOCK].reshape(blocks, CADENCE_BLOCK),
                       axis=1)[:, CADENCE_BLOCK // 2]
        c = np.arange(CADENCE_BLOCK, total + 1)
        refs[CADENCE_BLOCK:] = meds[c // CADENCE_BLOCK - 1]
    if max_hold_ns is not None:
        hold_of = np.full(total + 1, int(max_hold_ns), dtype=np.int64)
    else:
        floor = MIN_HOLD_TICKS * period_ns
        hold_of = np.minimum(np.maximum(HOLD_PERIODS * refs, floor), MAX_HOLD_NS)
        # before the first step the period is unknown: those samples stand until the next
        hold_of[0] = min(int(hold_of[1]), MAX_HOLD_NS) if total else floor
    count = np.concatenate(([0], np.cumsum(steps > 0)))    # positive steps up to sample j
    holds = hold_of[count]
    if steps.size and np.any((steps > holds[:-1]) & (refs[count[:-1]] >= 0)):
        return None
    ref_before = refs[count[:-1]][steps > 0]
    known = ref_before > 0
    st, rf = positive[known], ref_before[known]
    miss = (2 * st > 3 * rf) & (st <= JUMP_PERIODS * rf)
    missing = int(((st[miss] + rf[miss] // 2) // rf[miss] - 1).sum())
    return holds.astype(np.int64), missing


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


def _valid_intervals(stamps: np.ndarray, holds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-open time intervals [lo, hi) in which the topic's held sample is within its hold."""
    nxt = np.append(stamps[1:], np.iinfo(np.int64).max)
    end = np.minimum(stamps + holds + 1, nxt)
    breaks = np.flatnonzero(end[:-1] < stamps[1:])
    lo = stamps[np.concatenate(([0], breaks + 1))]
    hi = end[np.concatenate((breaks, [stamps.size - 1]))]
    return lo, hi


def _intersect(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The intersection of two sorted lists of disjoint half-open intervals."""
    alo, ahi = a[0].tolist(), a[1].tolist()
    blo, bhi = b[0].tolist(), b[1].tolist()
    lo, hi = [], []
    i = j = 0
    while i < len(alo) and j < len(blo):
        start, stop = max(alo[i], blo[j]), min(ahi[i], bhi[j])
        if start < stop:
            lo.append(start)
            hi.append(stop)
        if ahi[i] < bhi[j]:
            i += 1
        else:
            j += 1
    return np.asarray(lo, np.int64), np.asarray(hi, np.int64)


def align(streams: Sequence[Stream], period_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold every stream onto the common clock; return tick times [T] and data [T, C] float32.

    Streams that are not cleaned yet are cleaned first (:func:`clean`, measured holds). In
    each segment that every stream reaches, ticks run from the first tick at which every
    stream has a sample up to, but excluding, the earliest last stamp among the streams,
    leaving out the ticks at which a stream's sample is older than its hold. A segment's first
    tick never directly follows the previous segment's last one, so a window never spans two.
    """
    streams = [s if s.holds_ns is not None else clean(s.stamps_ns, s.values, period_ns)
               for s in streams]
    widths = [s.values.shape[1] if s.values.ndim == 2 else 1 for s in streams]
    empty = np.zeros(0, np.int64), np.zeros((0, sum(widths)), np.float32)
    if not streams or any(s.stamps_ns.size == 0 for s in streams):
        return empty
    segments = min(int(s.segments[-1]) for s in streams) + 1
    times: list[np.ndarray] = []
    last_tick: int | None = None
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    for g in range(segments):
        seg = []
        for s in streams:
            a, b = np.searchsorted(s.segments, [g, g + 1])
            seg.append((s.stamps_ns[a:b], s.holds_ns[a:b],
                        s.values.reshape(len(s.stamps_ns), -1)[a:b]))
        start = first_tick(max(int(st[0]) for st, _, _ in seg), period_ns)
        if last_tick is not None and start == last_tick + period_ns:
            start += period_ns
        stop = min(int(st[-1]) for st, _, _ in seg)
        valid = (np.array([start], np.int64), np.array([stop], np.int64))
        for st, hd, _ in seg:
            valid = _intersect(valid, _valid_intervals(st, hd))
        ticks = [np.arange(first_tick(lo, period_ns), hi, period_ns, dtype=np.int64)
                 for lo, hi in zip(valid[0].tolist(), valid[1].tolist())]
        ticks_g = np.concatenate(ticks) if ticks else np.zeros(0, np.int64)
        if ticks_g.size:
            last_tick = int(ticks_g[-1])
        times.append(ticks_g)
        parts.append(seg)
    out_t = np.concatenate(times)
    out = np.empty((out_t.size, sum(widths)), dtype=np.float32)
    row = 0
    for ticks_g, seg in zip(times, parts):
        col = 0
        for (st, _, vals), width in zip(seg, widths):
            idx = np.searchsorted(st, ticks_g, side='right') - 1
            out[row:row + ticks_g.size, col:col + width] = vals[idx]
            col += width
        row += ticks_g.size
    return out_t, out


# --------------------------------------------------------------------------- live


class Ticks(NamedTuple):
    """Ticks that became final: times [k], rows [k, C] float32, and ``starts`` [k], True
    where a run of consecutive ticks starts (after a gap or a new segment: a window that
    ends later must not reach back past it)."""

    times_ns: np.ndarray
    rows: np.ndarray
    starts: np.ndarray


class _History:
    """The accepted samples of one topic that the aligner may still need."""

    __slots__ = ('stamps', 'holds', 'segs', 'rows', 'head', 'cursor', 'first', 'last')

    def __init__(self) -> None:
        self.stamps: list[int] = []
        self.holds: list[int] = []
        self.segs: list[int] = []
        self.rows: list[np.ndarray] = []
        self.head = 0            # entries before it are gone
        self.cursor = -1         # the entry held at the next tick (< head: none)
        self.first: dict[int, int] = {}    # segment -> first stamp
        self.last: dict[int, int] = {}     # segment -> last stamp

    def live(self) -> int:
        return len(self.stamps) - self.head

    def compact(self) -> None:
        head = self.head
        if head > 256 and 2 * head > len(self.stamps):
            for lst in (self.stamps, self.holds, self.segs, self.rows):
                del lst[:head]
            self.cursor -= head
            self.head = 0


@dataclass
class StreamingAligner:
    """The live counterpart of :func:`clean` and :func:`align`: push samples per topic, get
    finished ticks.

    :meth:`push` takes one sample, :meth:`push_many` a batch of one topic's samples (stamps
    [n], values [n, c]) with the same result as pushing them one by one. Both return
    :class:`Ticks`: usually none or one, several when a slow topic catches up, never a gap's
    worth (gaps are skipped).

    Args:
        channel_counts: Channels per topic, in spec order.
        period_ns: The clock's period.
        max_hold_ns: Per topic, a fixed hold (None: measured).
        max_entries: Samples kept per topic at most.
    """

    channel_counts: Sequence[int]
    period_ns: int
    max_hold_ns: Sequence[int | None] | None = None
    max_entries: int = MAX_ENTRIES
    clocks: list[TopicClock] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        n = len(self.channel_counts)
        holds = list(self.max_hold_ns) if self.max_hold_ns is not None else [None] * n
        if len(holds) != n:
            raise ValueError(f'{len(holds)} holds for {n} topics')
        self._holds = holds
        self._width = int(sum(self.channel_counts))
        self._empty = Ticks(_EMPTY_T, np.zeros((0, self._width), np.float32), _EMPTY_B)
        self._empty.rows.setflags(write=False)
        self.reset()

    def reset(self) -> None:
        """Forget everything, counters included (a fresh start)."""
        n = len(self.channel_counts)
        self.clocks = [TopicClock(self.period_ns, h) for h in self._holds]
        self._hist = [_History() for _ in range(n)]
        self._seg = 0
        self._next: int | None = None
        self._last_tick: int | None = None
        self._done_w: int | None = None
        self.ticks = 0           # ticks produced
        self.skipped = 0         # ticks left out (a sample older than its hold)
        self.evicted = [0] * n   # samples forgotten because the memory bound was reached

    @property
    def dropped(self) -> list[int]:
        """Per topic, stamps dropped as outliers."""
        return [c.dropped for c in self.clocks]

    def kept(self) -> list[int]:
        """Per topic, samples held in memory now."""
        return [h.live() for h in self._hist]

    def push(self, topic: int, stamp_ns: int, values: Sequence[float] | np.ndarray) -> Ticks:
        """Add one sample of topic ``topic``; return the ticks that became final."""
        out: tuple[list, list, list] = ([], [], [])
        self._add(topic, int(stamp_ns), values, out)
        return self._result(out)

    def push_many(self, topic: int, stamps_ns: Sequence[int] | np.ndarray,
                  values: np.ndarray) -> Ticks:
        """Add a batch of one topic's samples (in arrival order); the same ticks as
        :meth:`push` on each in turn.

        Runs of regular stamps (each step within the hold, nothing held back) go through the
        topic's clock at once (:meth:`TopicClock.accept_run`), and only the last sample of each
        tick interval reaches the history (the only one a tick can hold); the rest, one by
        one."""
        out: tuple[list, list, list] = ([], [], [])
        stamps = np.asarray(stamps_ns, dtype=np.int64).tolist()
        values = np.asarray(values, dtype=np.float32).reshape(len(stamps), -1)
        clock = self.clocks[topic]
        period = self.period_ns
        i, n = 0, len(stamps)
        while i < n:
            holds = clock.accept_run(stamps[i:] if i else stamps)
            if holds:
                seg = clock.segment
                k = len(holds)
                run = stamps[i:i + k]
                slots = [-(-s // period) for s in run]
                for j in range(k):      # the last sample of each tick interval only
                    if j + 1 == k or slots[j] != slots[j + 1]:
                        self._store(topic, run[j], values[i + j], holds[j], seg)
                self._emit(out)
                i += k
                continue
            for s, vals, hold, seg in clock.offer(stamps[i], values[i]):
                self._keep(topic, s, vals, hold, seg, out)
            i += 1
        return self._result(out)

    # ------------------------------------------------------------------ internals

    def _result(self, out: tuple[list, list, list]) -> Ticks:
        times, rows, starts = out
        if not times:
            return self._empty
        return Ticks(np.asarray(times, np.int64), np.stack(rows).astype(np.float32, copy=False),
                     np.asarray(starts, bool))

    def _add(self, topic: int, stamp: int, values: Any, out: tuple[list, list, list]) -> None:
        for s, vals, hold, seg in self.clocks[topic].offer(stamp, values):
            self._keep(topic, s, vals, hold, seg, out)

    def _keep(self, topic: int, s: int, vals: Any, hold: int, seg: int,
              out: tuple[list, list, list]) -> None:
        """Keep one accepted sample in the topic's history; emit the ticks it completes."""
        self._store(topic, s, vals, hold, seg)
        self._emit(out)

    def _store(self, topic: int, s: int, vals: Any, hold: int, seg: int) -> None:
        """Keep one accepted sample in the topic's history."""
        hist = self._hist[topic]
        period = self.period_ns
        row = np.asarray(vals, dtype=np.float32)
        if hold != PROVISIONAL:
            settle(hist.holds, hold)
        n = len(hist.stamps)
        if n > hist.head and n - 1 > hist.cursor and hist.segs[-1] == seg and \
                -(-hist.stamps[-1] // period) == -(-s // period):
            # the same tick interval as the last sample: only the later one is ever held
            hist.stamps[-1], hist.holds[-1], hist.rows[-1] = s, hold, row
        else:
            hist.stamps.append(s)
            hist.holds.append(hold)
            hist.segs.append(seg)
            hist.rows.append(row)
            if hist.live() > self.max_entries:
                hist.head += 1
                self.evicted[topic] += 1
                if hist.cursor < hist.head:
                    hist.cursor = hist.head - 1
        hist.first.setdefault(seg, s)
        hist.last[seg] = s

    def _emit(self, out: tuple[list, list, list]) -> None:
        hists = self._hist
        period = self.period_ns
        while True:
            g = self._seg
            firsts = [h.first.get(g) for h in hists]
            if any(f is None for f in firsts):
                return
            w = min(h.last[g] for h in hists)
            if self._next is None:
                start = first_tick(max(firsts), period)
                if self._last_tick is not None and start == self._last_tick + period:
                    start += period
                self._next = start
                self._done_w = None
            if w != self._done_w and self._next < w:
                self._produce(g, w, out)
            self._done_w = w
            if all(c.segment > g for c in self.clocks):
                self._close(g)
                continue
            return

    def _produce(self, g: int, w: int, out: tuple[list, list, list]) -> None:
        """Produce the ticks in [next, w) of segment ``g``, skipping the invalid ones."""
        hists = self._hist
        period = self.period_ns
        times, rows, starts = out
        t = self._next
        while t < w:
            resume = -1
            for h in hists:
                stamps, segs = h.stamps, h.segs
                c = h.cursor
                n = len(stamps)
                while c + 1 < n and stamps[c + 1] <= t and segs[c + 1] == g:
                    c += 1
                h.cursor = c
                if c < h.head or t - stamps[c] > h.holds[c]:
                    if c + 1 < n and segs[c + 1] == g:
                        resume = max(resume, first_tick(stamps[c + 1], period))
                    else:       # nothing left of this segment (forgotten): to its end
                        resume = max(resume, first_tick(w, period))
            if resume < 0:
                times.append(t)
                rows.append(np.concatenate([h.rows[h.cursor] for h in hists]))
                starts.append(self._last_tick is None or t != self._last_tick + period)
                self._last_tick = t
                self.ticks += 1
                t += period
            else:
                self.skipped += (resume - t) // period
                t = resume
        self._next = t
        for h in hists:
            if h.cursor > h.head:
                h.head = h.cursor
                h.compact()

    def _close(self, g: int) -> None:
        """Every topic has left segment ``g``: forget it and start the next one."""
        for h in self._hist:
            k = h.head
            while k < len(h.stamps) and h.segs[k] == g:
                k += 1
            h.head = k
            h.cursor = k - 1
            h.first.pop(g, None)
            h.last.pop(g, None)
            h.compact()
        self._seg = g + 1
        self._next = None


_EMPTY_T = np.zeros(0, np.int64)
_EMPTY_B = np.zeros(0, bool)
_EMPTY_T.setflags(write=False)
_EMPTY_B.setflags(write=False)
_FOREVER = np.iinfo(np.int64).max
