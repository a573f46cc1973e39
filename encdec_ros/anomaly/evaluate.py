"""Offline evaluation of an anomaly model on a bag: the same scorer as the live node.

:func:`evaluate_bag` reads a bag with the model's own spec, cuts the windows the node would
score (``window_ends`` / ``windows_at``: a window ends at every tick index ``k`` with
``k % stride == 0``), runs them through :class:`~encdec_ros.anomaly.scorer.AnomalyScorer` (batched,
then debounced in order, which equals the node's step-by-step path) and compares the flags
with the labelled intervals.

Figures (:func:`anomaly_metrics`):

- point-wise, pooled as SKAB does: each evaluation point (an aligned tick, or each message
  of the spec's first topic with ``points='messages'``) carries the flag of the last decision
  at or before it; precision, recall, F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN)
  and MAR = FN / (FN + TP);
- per labelled event: detected when the flag is up at some decision inside the interval or
  up to ``grace_s`` after its end (default: one window, which still holds faulty samples
  then, plus the debouncer's release time), and the detection delay from the interval's
  start; the point-wise figures are also given without the points in those grace periods
  (``pointwise_after_grace``), where a flag is neither a false nor a missed alarm;
- time (:func:`time_figures`): each point stands for the time until the next one, so the
  shares below are shares of time: the share of all time flagged, of normal time (not
  labelled) flagged, and of normal time outside the grace periods flagged (which is the
  time-weighted ``pointwise_after_grace`` FAR);
- false alarms: stretches of consecutive points that are flagged, normal and outside every
  grace period, as a count, their total seconds and a count per hour of normal time: the
  same points FAR counts, so a detector with FAR 99 % cannot report a few seconds of false
  alarms (a stretch that also covers a fault is split there, not forgiven);
- the F1 of flagging every point (``flag_everything``): F1 rewards flagging everything when
  most points are labelled, so a figure near it says the detector is worthless here;
- warnings (``warnings``): most of normal time flagged, or F1 no better than flagging all.

Gaps (:func:`data_gaps`): where a topic of the spec sends nothing for longer than its
``max hold`` (:data:`GAP_PERIODS` of its median period, at least :data:`GAP_MIN_S`), or the
points themselves jump that far, the time is no evaluation time: no point lies in it (ticks
held across it are dropped), decisions made in it are not counted, and a point after it
does not carry a flag decided before it. A recording with hours without data thus neither
gains nor loses false alarms from them.

:func:`write_report` writes ``report.json`` and ``report.png`` (channels, score, threshold,
labelled and flagged intervals).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encdec_ros.anomaly.scorer import AnomalyScorer
from encdec_ros.errors import BagError, ConfigError
from encdec_ros.io.bag import Recording, read_bag
from encdec_ros.io.labels import Interval, label_mask, read_labels_csv
from encdec_ros.io.span import Span, parse_span, resolve_span, span_text
from encdec_ros.io.window import window_ends, windows_at

__all__ = ['EvalResult', 'evaluate_bag', 'evaluate_recording', 'parse_span', 'anomaly_metrics',
           'confusion', 'pooled', 'rates', 'data_gaps', 'summary_lines', 'write_report']

POINTS = ('ticks', 'messages')
GAP_PERIODS = 10
"""A topic silent for more than this many of its median periods is in a gap."""
GAP_MIN_S = 1.0
"""... and for at least this many seconds (a jittery fast topic is not in a gap)."""
MOSTLY_FLAGGED = 0.5
"""Share of normal time flagged above which the summary warns that the flag says nothing."""
NO_BETTER_F1 = 0.05
"""F1 within this of flagging every point is reported as no better than that."""


@dataclass
class EvalResult:
    """Decisions of the scorer over one recording and the figures against its labels.

    Attributes:
        source: The bag.
        times_ns: [T] aligned tick times.
        ends: [N] row indices of the decisions (window ends).
        scores: [N] error / threshold per decision.
        flags: [N] debounced flag per decision.
        channel_z: [N, C] per-channel standardised log errors.
        labels: Labelled intervals used.
        metrics: The figures (see :func:`anomaly_metrics`).
        data: [T, C] the aligned signal (for the plot).
        channels: Channel names.
        scorer: The scorer's description.
    """

    source: str
    times_ns: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    flags: np.ndarray
    channel_z: np.ndarray
    labels: list[Interval]
    metrics: dict[str, Any]
    data: np.ndarray
    channels: list[str]
    scorer: dict[str, Any] = field(default_factory=dict)
    point_times_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    point_flags: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    normalization: tuple[np.ndarray, np.ndarray] | None = None   # the model's (mean, std)
    gaps: list[tuple[int, int]] = field(default_factory=list)     # stretches without data, ns
    codes: np.ndarray | None = None      # [N, Z] the windows' codes (models with a code output)

    def flagged_stretches(self) -> list[tuple[int, int, float]]:
        """Flagged stretches of the points (start ns, end ns, seconds), split at gaps."""
        dur = point_durations(self.point_times_ns, self.gaps)
        return stretches(self.point_flags, self.point_times_ns, dur, self.gaps)

    @property
    def decision_times_ns(self) -> np.ndarray:
        """[N] times of the decisions (the tick each window ends at)."""
        return self.times_ns[self.ends]


def score_recording(scorer: AnomalyScorer, rec: Recording, *, progress: bool | None = None
                    ) -> tuple[np.ndarray, Any]:
    """Window ends [N] and the scorer's :class:`~encdec_ros.anomaly.scorer.BatchScores` for a
    recording, exactly the windows the live node scores."""
    spec = scorer.spec
    ends = window_ends(rec.times_ns, spec.period_ns, spec.window, spec.stride)
    wins = windows_at(rec.data, ends, spec.window)
    return ends, scorer.score_windows(wins, progress=progress)


def evaluate_recording(scorer: AnomalyScorer, rec: Recording, *,
                       labels: Sequence[Interval] | None = None, points: str = 'ticks',
                       eval_span: Span | None = None,
                       grace_s: float | None = None, progress: bool | None = None
                       ) -> EvalResult:
    """Score a recording and compare the flags with its labels (default: the bag's own)."""
    if points not in POINTS:
        raise ConfigError(f'points {points!r} is not one of {", ".join(POINTS)}')
    labels = list(rec.labels if labels is None else labels)
    ends, batch = score_recording(scorer, rec, progress=progress)
    spec = scorer.spec
    if not len(ends):
        raise BagError(f'{rec.source} gives no complete window: it holds {rec.duration_s:.2f} s '
                       f'of the spec\'s topics, one window is {spec.window} samples '
                       f'({spec.window / spec.rate_hz:g} s at {spec.rate_hz:g} Hz); give a '
                       'longer recording')
    if not np.isfinite(batch.scores).any():
        bad = [ch for ch, ok in zip(rec.channels, np.isfinite(rec.data).all(axis=0)) if not ok]
        raise BagError(f'none of the {len(ends)} windows of {rec.source} could be scored: '
                       f'each holds NaN or infinite values (in {", ".join(bad[:4])}'
                       f'{" ..." if len(bad) > 4 else ""}), which the detector does not score '
                       '(the node reports them as ERROR on /diagnostics); drop the messages '
                       'with non-finite values from the bag or leave those fields out of the '
                       'spec')
    if points == 'messages':
        first = scorer.spec.topic_names[0]
        pts = rec.streams[first].stamps_ns
        pts = pts[pts >= rec.times_ns[0]] if pts.size else pts
    else:
        pts = rec.times_ns
    if eval_span is not None:
        rel = (pts - rec.times_ns[0]) * 1e-9
        lo, hi = resolve_span(eval_span, rec)
        keep = np.ones(pts.size, bool)
        if lo is not None:
            keep &= rel >= lo - 1e-9
        if hi is not None:
            keep &= rel < hi - 1e-9
        if not keep.any():
            raise ConfigError(f'the evaluation span {span_text(eval_span)} holds no sample of '
                              f'{rec.source}, which is {rec.duration_s:.1f} s long; give a span '
                              'inside it (seconds from its start, or rows with a rows suffix)')
        pts = pts[keep]
    gaps = data_gaps([rec.streams[t].stamps_ns for t in spec.topic_names] + [pts])
    pts = pts[~in_gaps(pts, gaps)]
    if not pts.size:
        raise BagError(f'every point of {rec.source} lies in a gap without data; give a bag '
                       'with data on all of the spec\'s topics')
    dec_times = rec.times_ns[ends]
    live = ~in_gaps(dec_times, gaps)
    pflags = held_values(dec_times[live], batch.flags[live], pts, gaps=gaps)
    plabels = label_mask(labels, pts)
    if grace_s is None:
        grace_s = default_grace_s(scorer)
    metrics = anomaly_metrics(pflags, plabels, dec_times, batch.flags, labels,
                              grace_s=grace_s, points=pts,
                              span_ns=(int(pts[0]), int(pts[-1])), gaps=gaps)
    metrics['decisions'] = {'windows': int(len(ends)),
                            'invalid': int(np.sum(~np.isfinite(batch.scores))),
                            'in_gaps': int(np.sum(~live)),
                            'flagged_share': float(np.mean(batch.flags[live]))
                            if live.any() else 0.0}
    metrics['points'] = points
    metrics['eval_span_s'] = list(resolve_span(eval_span, rec)) if eval_span else None
    return EvalResult(rec.source, rec.times_ns, ends, batch.scores, batch.flags,
                      batch.channel_z, labels, metrics, rec.data, rec.channels,
                      scorer.describe(), pts, pflags, plabels, (scorer.mean_, scorer.std_),
                      gaps, batch.codes)


def evaluate_bag(model: str | Path | AnomalyScorer, bag: str | Path, *,
                 labels_csv: str | Path | None = None, device: str = 'cpu',
                 points: str = 'ticks', eval_span: Span | None = None,
                 grace_s: float | None = None, progress: bool | None = None,
                 **scorer_options: Any) -> EvalResult:
    """Read ``bag`` with the model's spec and evaluate the model on it.

    Args:
        model: The model directory, or a ready scorer (its flag state carries over).
        bag: The bag to replay.
        labels_csv: Labels to use instead of the bag's own labels.csv / label topic.
        device: Inference device for a model directory.
        points: 'ticks' (aligned samples) or 'messages' (the first topic's messages, e.g.
            the rows of a CSV converted with ``encdec bag from-csv``).
        eval_span: (start, end) in seconds from the first sample, or :class:`Rows`: the
            points counted (see :mod:`encdec_ros.io.span`).
        grace_s: Seconds after a labelled interval in which a flag still counts as its
            detection (default: :func:`default_grace_s`).
        progress: Progress bar on a terminal (None), always (True) or never (False).
        **scorer_options: Passed to :class:`AnomalyScorer` (debounce_k, threshold_scale...).
    """
    scorer = model if isinstance(model, AnomalyScorer) else AnomalyScorer(
        model, device=device, **scorer_options)
    rec = read_bag(bag, scorer.spec, show_progress=progress)
    labels = read_labels_csv(labels_csv) if labels_csv is not None else None
    return evaluate_recording(scorer, rec, labels=labels, points=points, eval_span=eval_span,
                              grace_s=grace_s, progress=progress)


# --------------------------------------------------------------------------- metrics


def default_grace_s(scorer: AnomalyScorer) -> float:
    """One window, the debouncer's release (n decisions) and the slow context: how long a
    flag may outlast a fault because the scorer's memory still holds faulty samples."""
    rate = scorer.spec.rate_hz
    return (scorer.window + scorer.debouncer.n * scorer.spec.stride) / rate + \
        scorer.slow_context_s


def held_values(dec_times_ns: np.ndarray, values: np.ndarray, at_ns: np.ndarray,
                *, fill: Any = False, gaps: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """The value of the last decision at or before each time (``fill`` before the first, and
    where a gap lies between that decision and the time: a flag does not outlive a gap)."""
    values = np.asarray(values)
    dec_times_ns = np.asarray(dec_times_ns, dtype=np.int64)
    at_ns = np.asarray(at_ns, dtype=np.int64)
    idx = np.searchsorted(dec_times_ns, at_ns, side='right') - 1
    out = np.full(len(at_ns), fill, dtype=values.dtype if values.size else bool)
    have = idx >= 0
    if len(gaps) and have.any():
        have[have] = segment_ids(dec_times_ns[idx[have]], gaps) == \
            segment_ids(at_ns[have], gaps)
    out[have] = values[idx[have]]
    return out


# --------------------------------------------------------------------------- gaps and time


def max_hold_ns(stamps_ns: np.ndarray) -> int | None:
    """How long a series may go without a sample before it is in a gap: :data:`GAP_PERIODS`
    median periods, at least :data:`GAP_MIN_S` (None for fewer than two samples)."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    if stamps_ns.size < 2:
        return None
    steps = np.diff(stamps_ns)
    steps = steps[steps > 0]
    period = int(np.median(steps)) if steps.size else 0
    return max(GAP_PERIODS * period, int(GAP_MIN_S * 1e9))


def data_gaps(series: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """Stretches ``[start, end)`` in ns where one of the series (each topic's stamps, the
    points) has no sample for longer than its :func:`max_hold_ns`: from the last sample
    plus that hold to the next sample. Sorted and merged."""
    found: list[tuple[int, int]] = []
    for stamps in series:
        stamps = np.asarray(stamps, dtype=np.int64)
        hold = max_hold_ns(stamps)
        if hold is None:
            continue
        jump = np.flatnonzero(np.diff(stamps) > hold)
        found.extend((int(stamps[i]) + hold + 1, int(stamps[i + 1])) for i in jump)
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(found):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def in_gaps(times_ns: np.ndarray, gaps: Sequence[tuple[int, int]]) -> np.ndarray:
    """True where a time lies inside a gap."""
    times_ns = np.asarray(times_ns, dtype=np.int64)
    if not len(gaps):
        return np.zeros(times_ns.shape, bool)
    starts = np.array([g[0] for g in gaps], dtype=np.int64)
    ends = np.array([g[1] for g in gaps], dtype=np.int64)
    k = np.searchsorted(starts, times_ns, side='right') - 1
    return (k >= 0) & (times_ns < ends[np.maximum(k, 0)])


def segment_ids(times_ns: np.ndarray, gaps: Sequence[tuple[int, int]]) -> np.ndarray:
    """The number of gaps that end at or before each time: times with the same id have no
    gap between them."""
    ends = np.array([g[1] for g in gaps], dtype=np.int64)
    return np.searchsorted(ends, np.asarray(times_ns, dtype=np.int64), side='right')


def point_durations(points_ns: np.ndarray, gaps: Sequence[tuple[int, int]] = ()
                    ) -> np.ndarray:
    """Seconds each point stands for: the time to the next point, cut where a gap starts;
    the last point (and any point followed by a gap of the points themselves) stands for
    the median step."""
    pts = np.asarray(points_ns, dtype=np.int64)
    if pts.size == 0:
        return np.zeros(0)
    steps = np.diff(pts)
    nominal = int(np.median(steps)) if steps.size else 0
    own = data_gaps([pts])
    gaps = sorted([*gaps, *own])
    dur = np.append(steps, nominal).astype(np.int64)
    if gaps:
        starts = np.array([g[0] for g in gaps], dtype=np.int64)
        nxt = np.searchsorted(starts, pts, side='right')     # first gap starting after
        has = nxt < starts.size
        cut = np.where(has, starts[np.minimum(nxt, starts.size - 1)] - pts, dur)
        dur = np.minimum(dur, np.maximum(cut, 0))
        if steps.size:
            jumped = np.append(steps > (max_hold_ns(pts) or 0), True)
            dur = np.where(jumped, np.minimum(dur, nominal), dur)
    return dur * 1e-9


def stretches(mask: np.ndarray, points_ns: np.ndarray, durations_s: np.ndarray,
              gaps: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int, float]]:
    """Runs of consecutive points where ``mask`` holds, split at gaps: (start ns, end ns,
    seconds), the end being the last point plus the time it stands for."""
    mask = np.asarray(mask, bool)
    pts = np.asarray(points_ns, dtype=np.int64)
    if not mask.any():
        return []
    edges = np.diff(np.concatenate(([False], mask, [False])).astype(np.int8))
    bounds = list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))
    if len(gaps):
        seg = segment_ids(pts, gaps)
        split = []
        for a, b in bounds:
            cuts = [a, *(np.flatnonzero(np.diff(seg[a:b]) != 0) + a + 1), b]
            split.extend(zip(cuts[:-1], cuts[1:]))
        bounds = split
    return [(int(pts[a]), int(pts[b - 1] + round(durations_s[b - 1] * 1e9)),
             float(durations_s[a:b].sum())) for a, b in bounds]


def grace_mask(points_ns: np.ndarray, point_labels: np.ndarray, labels: Sequence[Interval],
               grace_s: float) -> np.ndarray:
    """True at unlabelled points within ``grace_s`` after the end of a labelled interval."""
    pts = np.asarray(points_ns, dtype=np.int64)
    grace_ns = int(round(grace_s * 1e9))
    tail = np.zeros(pts.size, bool)
    for iv in labels:
        tail |= (pts >= iv.end_ns) & (pts < iv.end_ns + grace_ns)
    return tail & ~np.asarray(point_labels, bool)


def confusion(flags: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Point-wise confusion counts and SKAB's figures (F1 = TP / (TP + (FP + FN) / 2))."""
    flags, labels = np.asarray(flags, bool), np.asarray(labels, bool)
    tp = int(np.sum(flags & labels))
    fp = int(np.sum(flags & ~labels))
    fn = int(np.sum(~flags & labels))
    tn = int(np.sum(~flags & ~labels))
    return {'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn, **rates(tp, fp, fn, tn)}


def rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | None]:
    """Precision, recall, F1, FAR and MAR from confusion counts (None where undefined)."""
    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    return {
        'precision': ratio(tp, tp + fp),
        'recall': ratio(tp, tp + fn),
        'f1': ratio(tp, tp + (fp + fn) / 2),
        'far': ratio(fp, fp + tn),
        'mar': ratio(fn, fn + tp),
    }


def anomaly_metrics(point_flags: np.ndarray, point_labels: np.ndarray,
                    dec_times_ns: np.ndarray, dec_flags: np.ndarray,
                    labels: Sequence[Interval], *, grace_s: float,
                    points: np.ndarray | None = None,
                    span_ns: tuple[int, int] | None = None,
                    gaps: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
    """Point-wise figures, per-event detection and delay, time flagged and false alarms.

    ``points`` are the times of ``point_flags`` / ``point_labels``; without them the time
    figures and false alarms are taken over the decisions (each carrying its own flag).
    ``gaps`` are stretches without data (:func:`data_gaps`): decisions in them are not
    counted and stretches end at them.
    """
    point_flags = np.asarray(point_flags, bool)
    point_labels = np.asarray(point_labels, bool)
    out: dict[str, Any] = {'pointwise': confusion(point_flags, point_labels)}
    out['flag_everything'] = flag_everything(point_labels)
    grace_ns = int(round(grace_s * 1e9))
    dec_times_ns = np.asarray(dec_times_ns, dtype=np.int64)
    dec_flags = np.asarray(dec_flags, bool)
    keep = ~in_gaps(dec_times_ns, gaps)
    if span_ns is not None:
        keep &= (dec_times_ns >= span_ns[0]) & (dec_times_ns <= span_ns[1])
        labels = [iv for iv in labels if iv.end_ns > span_ns[0] and iv.start_ns <= span_ns[1]]
    dec_t, dec_f = dec_times_ns[keep], dec_flags[keep]
    if points is not None and len(points) == len(point_flags):
        pts, pflags, plabels = np.asarray(points, dtype=np.int64), point_flags, point_labels
        # the same, leaving out the grace after each labelled interval, where the window
        # still holds faulty samples (neither a false nor a true alarm there)
        tail = grace_mask(pts, plabels, labels, grace_s)
        out['pointwise_after_grace'] = confusion(pflags[~tail], plabels[~tail])
    else:
        pts, pflags = dec_t, dec_f
        plabels = label_mask(labels, pts)
        tail = grace_mask(pts, plabels, labels, grace_s)
    events = []
    for iv in labels:
        near = (dec_t >= iv.start_ns) & (dec_t < iv.end_ns + grace_ns)
        hit = np.flatnonzero(near & dec_f)
        delay = (int(dec_t[hit[0]]) - iv.start_ns) * 1e-9 if hit.size else None
        events.append({'kind': iv.kind, 'detail': iv.detail, 'start_ns': iv.start_ns,
                       'end_ns': iv.end_ns, 'duration_s': round(iv.duration_s, 3),
                       'detected': bool(hit.size), 'delay_s': delay})
    kinds: dict[str, dict[str, Any]] = {}
    for ev in events:
        k = kinds.setdefault(ev['kind'], {'events': 0, 'detected': 0, 'delays_s': []})
        k['events'] += 1
        if ev['detected']:
            k['detected'] += 1
            k['delays_s'].append(ev['delay_s'])
    for k in kinds.values():
        k['recall'] = k['detected'] / k['events']
        k['mean_delay_s'] = float(np.mean(k['delays_s'])) if k['delays_s'] else None
    out['events'] = events
    out['per_kind'] = kinds
    out['grace_s'] = grace_s
    n_events = len(events)
    out['event_recall'] = (sum(e['detected'] for e in events) / n_events) if n_events else None
    # time: each point stands for the time to the next one (cut at gaps)
    dur = point_durations(pts, gaps)
    normal = ~plabels & ~tail
    total_s = float(dur.sum())
    normal_s = float(dur[normal].sum())
    unlabelled_s = float(dur[~plabels].sum())

    def share(mask: np.ndarray, of: float) -> float | None:
        return float(dur[mask].sum()) / of if of > 0 else None

    out['time'] = {
        'total_s': total_s, 'labelled_s': float(dur[plabels].sum()),
        'grace_s': float(dur[tail].sum()), 'normal_s': normal_s,
        'flagged_s': float(dur[pflags].sum()),
        'flagged_share': share(pflags, total_s),                       # of all time
        'flagged_unlabelled_share': share(pflags & ~plabels, unlabelled_s),
        'flagged_normal_share': share(pflags & normal, normal_s),      # outside the grace
        'gaps': len(gaps), 'gap_s': float(sum(hi - lo for lo, hi in gaps)) * 1e-9,
    }
    # false alarms: the flagged normal points outside the grace, as stretches
    false = stretches(pflags & normal, pts, dur, gaps)
    flagged = stretches(pflags, pts, dur, gaps)
    hours = normal_s / 3600
    out['alarms'] = {'flagged_intervals': len(flagged), 'false_alarms': len(false),
                     'false_alarms_per_hour': len(false) / hours if hours > 0 else None,
                     'false_alarm_s': float(sum(f[2] for f in false)),
                     'normal_hours': hours,
                     'false_alarm_intervals_ns': [[a, b] for a, b, _ in false]}
    out['warnings'] = metric_warnings(out)
    return out


def flag_everything(point_labels: np.ndarray) -> dict[str, float | None]:
    """The figures of a detector that flags every point, on the same points."""
    labels = np.asarray(point_labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    return {k: v for k, v in rates(pos, neg, 0, 0).items() if k in ('precision', 'f1', 'far')}


def metric_warnings(m: dict[str, Any]) -> list[str]:
    """Sentences for figures that do not mean what they seem to."""
    out = []
    share = m['time']['flagged_normal_share']
    far = m['pointwise']['far']
    if share is not None and share > MOSTLY_FLAGGED:
        out.append(f'the flag is up for {100 * share:.0f} % of normal time (FAR '
                   f'{100 * (far or 0):.1f} %): a flag that is up most of the time says '
                   'nothing; the model does not fit this data (a new operating point, drift '
                   'since the training data, or a threshold calibrated on too little data); '
                   'train on normal data like this bag')
    f1, base = m['pointwise']['f1'], m['flag_everything']['f1']
    labelled = m['pointwise']['tp'] + m['pointwise']['fn']
    if labelled and f1 is not None and base is not None and f1 <= base + NO_BETTER_F1:
        out.append(f'F1 {f1:.3f} is no better than flagging every point ({base:.3f}): '
                   f'{100 * m["flag_everything"]["precision"]:.0f} % of the points are '
                   'labelled, so F1 alone says little here; read FAR and the false alarms')
    return out


def pooled(results: Sequence[EvalResult | dict[str, Any]]) -> dict[str, Any]:
    """Pool the point-wise confusion matrices of several evaluations (as SKAB does), with
    the F1 that flagging every point would score on the same points."""
    tp = fp = fn = tn = 0
    for res in results:
        m = res.metrics if isinstance(res, EvalResult) else res
        pw = m['pointwise']
        tp, fp, fn, tn = tp + pw['tp'], fp + pw['fp'], fn + pw['fn'], tn + pw['tn']
    return {'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn, **rates(tp, fp, fn, tn),
            'flag_everything_f1': rates(tp + fn, fp + tn, 0, 0)['f1']}


# --------------------------------------------------------------------------- report


def duration_text(seconds: float) -> str:
    """Seconds as a short text: 42.0 s, 12.5 min, 3.2 h."""
    if seconds >= 3 * 3600:
        return f'{seconds / 3600:.1f} h'
    if seconds >= 300:
        return f'{seconds / 60:.1f} min'
    return f'{seconds:.1f} s'


def summary_lines(result: EvalResult) -> list[str]:
    """The figures as lines for a terminal; warnings last, in capitals."""
    m = result.metrics
    pw = m['pointwise']

    def fmt(v: float | None, pct: bool = False) -> str:
        if v is None:
            return 'n/a'
        return f'{100 * v:.2f} %' if pct else f'{v:.3f}'

    def pct(v: float | None) -> str:
        return 'n/a' if v is None else f'{100 * v:.1f} %'

    dec = m['decisions']
    lines = [f'{dec["windows"]} decisions over {len(result.point_times_ns)} '
             f'points ({m["points"]}); threshold {result.scorer.get("threshold", 0):.4g} '
             f'({result.scorer.get("error")})']
    if dec['invalid']:
        lines.append(f'NOT SCORED: {dec["invalid"]} of {dec["windows"]} windows '
                     f'({100 * dec["invalid"] / dec["windows"]:.1f} %) held NaN or infinite '
                     'values; they are flagged, as the node flags them (a dead sensor is a '
                     'fault; ERROR on /diagnostics)')
    tm = m['time']
    if tm['gaps']:
        lines.append(f'gaps: {tm["gaps"]} stretch(es) without data, '
                     f'{duration_text(tm["gap_s"])} in all, left out (no points; '
                     f'{dec.get("in_gaps", 0)} decisions made in them not counted)')
    if not pw['tp'] + pw['fn']:
        lines.append(f'point-wise: no labelled point, so no precision, recall or F1; FAR '
                     f'{fmt(pw["far"], True)}')
    else:
        lines.append(f'point-wise: precision {fmt(pw["precision"])}  recall '
                     f'{fmt(pw["recall"])}  F1 {fmt(pw["f1"])}  FAR {fmt(pw["far"], True)}  MAR '
                     f'{fmt(pw["mar"], True)}')
    if pw['tp'] + pw['fn']:
        lines.append(f'flagging every point would score F1 {fmt(m["flag_everything"]["f1"])} '
                     f'here ({pct(m["flag_everything"]["precision"])} of the points are '
                     'labelled)')
    after = m.get('pointwise_after_grace')
    if after is not None and m['events']:
        lines.append(f'FAR outside the {m["grace_s"]:g} s after each labelled fault: '
                     f'{fmt(after["far"], True)}')
    normal_part = (f'{pct(tm["flagged_normal_share"])} of normal time'
                   + (' outside the grace' if m['events'] else ''))
    lines.append(f'time flagged: {pct(tm["flagged_share"])} of '
                 f'{duration_text(tm["total_s"])}; {normal_part} '
                 f'({duration_text(tm["normal_s"])} normal)')
    if m['events']:
        lines.append(f'events: {sum(e["detected"] for e in m["events"])} of '
                     f'{len(m["events"])} detected')
        t0 = int(result.times_ns[0]) if result.times_ns.size else 0
        for ev in m['events']:
            delay = f'{ev["delay_s"]:.2f} s' if ev['detected'] else 'MISSED'
            lines.append(f'  {(ev["start_ns"] - t0) * 1e-9:8.1f} s  {ev["kind"]:<18} '
                         f'{ev["detail"]:<24} delay {delay}')
    al = m['alarms']
    rate = al['false_alarms_per_hour']
    lines.append(f'false alarms: {al["false_alarms"]} stretch(es), '
                 f'{duration_text(al["false_alarm_s"])} flagged in '
                 f'{duration_text(tm["normal_s"])} of normal time'
                 + (f', {rate:.1f} per hour of normal time' if rate is not None else ''))
    lines.extend(f'WARNING: {text}' for text in m.get('warnings', []))
    return lines


def report_dict(result: EvalResult, *, model: str = '', extra: dict | None = None
                ) -> dict[str, Any]:
    """The JSON report as a dict."""
    t0 = int(result.times_ns[0]) if result.times_ns.size else 0
    return {
        'bag': result.source,
        'model': model or result.scorer.get('model', ''),
        'scorer': result.scorer,
        'start_ns': t0,
        'duration_s': float((result.times_ns[-1] - t0) * 1e-9) if result.times_ns.size else 0,
        'metrics': _jsonable(result.metrics),
        'flagged_intervals_s': [[(a - t0) * 1e-9, (b - t0) * 1e-9]
                                for a, b, _ in result.flagged_stretches()],
        'gaps_s': [[(a - t0) * 1e-9, (b - t0) * 1e-9] for a, b in result.gaps],
        'false_alarm_intervals_s': [
            [(a - t0) * 1e-9, (b - t0) * 1e-9]
            for a, b in result.metrics['alarms']['false_alarm_intervals_ns']],
        **(extra or {}),
    }


def write_report(result: EvalResult, out_dir: str | Path, *, model: str = '',
                 extra: dict | None = None, plot: bool = True) -> tuple[Path, Path | None]:
    """Write ``report.json`` and ``report.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / 'report.png' if plot else None
    data = report_dict(result, model=model, extra=extra)
    if png is not None:
        plot_result(result, png)
        data['png'] = str(png)
    path = out_dir / 'report.json'
    path.write_text(json.dumps(data, indent=1))
    return path, png


def plot_result(result: EvalResult, path: str | Path, *, max_points: int = 6000) -> Path:
    """A PNG: normalised channels, score with threshold, labelled and flagged intervals."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    t0 = int(result.times_ns[0]) if result.times_ns.size else 0
    t = (result.times_ns - t0) * 1e-9
    step = max(1, len(t) // max_points)
    data = result.data[::step].astype(np.float64)
    if result.normalization is not None:       # as the model sees them
        mean, std = (np.asarray(a, dtype=np.float64) for a in result.normalization)
    else:
        mean, std = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
    z = np.clip((data - mean) / np.where(std > 0, std, 1.0), -4, 4)
    dec_t = (result.decision_times_ns - t0) * 1e-9
    n_ch = len(result.channels)
    fig, axes = plt.subplots(3, 1, figsize=(12, 7.5), dpi=100, sharex=True,
                             gridspec_kw={'height_ratios': [max(2.0, n_ch / 6), 2.2, 0.8]})
    ax = axes[0]
    extent = (t[0], t[-1] if len(t) else 1, n_ch - 0.5, -0.5) if len(t) else None
    ax.imshow(z.T, aspect='auto', cmap='coolwarm', vmin=-4, vmax=4, extent=extent,
              interpolation='nearest')
    ax.set_yticks(range(n_ch))
    ax.set_yticklabels([c if len(c) < 34 else '…' + c[-33:] for c in result.channels],
                       fontsize=max(4, min(8, int(160 / max(n_ch, 1)))))
    ax.set_title(f'{Path(result.source).name}: channels (normalised as the model sees them), '
                 f'score and flags\n{figures_line(result.metrics)}', fontsize=9)
    for text in result.metrics.get('warnings', [])[:1]:
        ax.text(0.5, 0.5, 'WARNING: ' + text.split(':')[0], transform=ax.transAxes,
                ha='center', va='center', fontsize=11, color='darkred', weight='bold',
                bbox={'facecolor': 'white', 'alpha': 0.85, 'edgecolor': 'darkred'})
    ax = axes[1]
    scores = np.where(np.isfinite(result.scores), result.scores, np.nan)
    if result.scorer.get('error') == 'mse':      # a ratio of errors: log scale
        ax.plot(dec_t, np.maximum(scores, 1e-3), lw=0.7, color='k', label='score')
        ax.set_yscale('log')
    else:                                         # a ratio of z values: linear
        ax.plot(dec_t, scores, lw=0.7, color='k', label='score')
    ax.axhline(1.0, color='r', lw=1, label='threshold')
    release = result.scorer.get('debounce', {}).get('release')
    if release:
        ax.axhline(release, color='r', lw=0.7, ls=':', label='release')
    ax.set_ylabel('error / threshold')
    ax.legend(loc='upper left', fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    ax = axes[2]
    for iv in result.labels:
        ax.axvspan((iv.start_ns - t0) * 1e-9, (iv.end_ns - t0) * 1e-9, ymin=0.5, ymax=1.0,
                   color='tab:orange', alpha=0.8)
        axes[1].axvspan((iv.start_ns - t0) * 1e-9, (iv.end_ns - t0) * 1e-9, color='tab:orange',
                        alpha=0.12)
        ax.text((iv.start_ns - t0) * 1e-9, 0.78, f' {iv.kind}', fontsize=7, va='center')
    false = [tuple(x) for x in result.metrics['alarms'].get('false_alarm_intervals_ns', [])]
    for a, b, _ in result.flagged_stretches():
        ax.axvspan((a - t0) * 1e-9, (b - t0) * 1e-9, ymin=0.0, ymax=0.45, color='tab:green',
                   alpha=0.8, lw=0)
    for a, b in false:                      # the false alarms over the flags they are part of
        ax.axvspan((a - t0) * 1e-9, (b - t0) * 1e-9, ymin=0.0, ymax=0.45, color='tab:red',
                   alpha=0.9, lw=0)
    for a, b in result.gaps:
        for axis in axes[1:]:
            axis.axvspan((a - t0) * 1e-9, (b - t0) * 1e-9, color='0.6', alpha=0.35, lw=0)
    if len(result.gaps):
        ax.text(1.0, 1.02, 'grey: no data (gap)', transform=ax.transAxes, ha='right',
                fontsize=7)
    ax.text(0.0, 1.02, 'flagged: red = false alarm, green = during a fault or its grace',
            transform=ax.transAxes, fontsize=7)
    ax.set_yticks([0.25, 0.75])
    ax.set_yticklabels(['flagged', 'labelled'], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel('time from start (s)')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def figures_line(m: dict[str, Any]) -> str:
    """The headline figures in one line (for the plot)."""
    def pct(v: float | None) -> str:
        return 'n/a' if v is None else f'{100 * v:.1f} %'

    pw, tm, al = m['pointwise'], m['time'], m['alarms']
    parts = []
    if pw['f1'] is not None:
        parts.append(f'F1 {pw["f1"]:.2f} (flag all: {m["flag_everything"]["f1"]:.2f})')
    parts.append(f'FAR {pct(pw["far"])}')
    parts.append(f'flagged {pct(tm["flagged_share"])} of time, {pct(tm["flagged_normal_share"])} '
                 'of normal time')
    parts.append(f'{al["false_alarms"]} false alarm(s), {duration_text(al["false_alarm_s"])}')
    return ';  '.join(parts)


def plot_latent(result: EvalResult, path: str | Path, *, max_points: int = 20_000) -> Path:
    """A PNG: the windows' codes projected on their two principal components (PCA of the
    codes of this recording), each coloured by the label kind its window overlaps (normal
    grey), flagged windows ringed."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if result.codes is None:
        raise ConfigError(f'the model scored on {result.source} has no code output; re-train '
                          'it to plot its codes')
    codes = np.asarray(result.codes, dtype=np.float64)
    ok = np.isfinite(codes).all(axis=1)
    if ok.sum() < 2:
        raise ConfigError(f'fewer than 2 windows of {result.source} were scored; nothing to '
                          'project')
    xy, explained = project_2d(codes[ok])
    dec_t = result.decision_times_ns[ok]
    flags = np.asarray(result.flags)[ok]
    window_ns = int(round(result.scorer.get('window', 1) / result.scorer.get('rate_hz', 1)
                          * 1e9))
    kind = np.array(['normal'] * len(dec_t), dtype=object)
    for iv in result.labels:      # a window overlaps [start, end) when it ends after start
        hit = (dec_t >= iv.start_ns) & (dec_t - window_ns < iv.end_ns)
        kind[hit] = iv.kind
    step = max(1, len(dec_t) // max_points)
    sel = np.arange(0, len(dec_t), step)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    normal = sel[kind[sel] == 'normal']
    ax.scatter(xy[normal, 0], xy[normal, 1], s=4, c='0.65', label='normal', lw=0)
    colours = plt.get_cmap('tab10')
    for i, name in enumerate(sorted({k for k in kind if k != 'normal'})):
        idx = sel[kind[sel] == name]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=9, color=colours(i % 10), label=name, lw=0)
    flagged = sel[flags[sel]]
    if flagged.size:
        ax.scatter(xy[flagged, 0], xy[flagged, 1], s=26, facecolors='none',
                   edgecolors='k', lw=0.4, label='flagged')
    ax.set_xlabel(f'code PC 1 ({explained[0]:.0%} of variance)')
    ax.set_ylabel(f'code PC 2 ({explained[1]:.0%} of variance)')
    ax.set_title(f'{Path(result.source).name}: codes of {len(dec_t)} windows '
                 f'(size {codes.shape[1]}), coloured by label', fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def project_2d(codes: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Codes [N, Z] projected on their two leading principal components [N, 2] (a code of
    size 1 gets a zero second axis), with the share of variance each explains."""
    centred = codes - codes.mean(axis=0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    var = sing ** 2
    total = float(var.sum()) or 1.0
    xy = centred @ vt[:2].T
    share = [float(v / total) for v in var[:2]]
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
        share.append(0.0)
    return xy, share


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value
