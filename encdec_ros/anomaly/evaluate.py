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
- false alarms: flagged stretches that touch no labelled interval (with the same grace),
  as a count and per hour.

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
from encdec_ros.io.labels import Interval, intervals_from_mask, label_mask, read_labels_csv
from encdec_ros.io.window import window_ends, windows_at

POINTS = ('ticks', 'messages')


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
                       eval_span: tuple[float | None, float | None] | None = None,
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
        lo, hi = eval_span
        keep = np.ones(pts.size, bool)
        if lo is not None:
            keep &= rel >= lo - 1e-9
        if hi is not None:
            keep &= rel < hi - 1e-9
        if not keep.any():
            raise ConfigError(f'the evaluation span {lo if lo is not None else ""}:'
                              f'{hi if hi is not None else ""} s holds no sample of '
                              f'{rec.source}, which is {rec.duration_s:.1f} s long; give a span '
                              'inside it (seconds from its start)')
        pts = pts[keep]
    dec_times = rec.times_ns[ends]
    pflags = held_values(dec_times, batch.flags, pts)
    plabels = label_mask(labels, pts)
    if grace_s is None:
        grace_s = default_grace_s(scorer)
    metrics = anomaly_metrics(pflags, plabels, dec_times, batch.flags, labels,
                              grace_s=grace_s, points=pts,
                              span_ns=(int(pts[0]), int(pts[-1])) if pts.size else None)
    metrics['decisions'] = {'windows': int(len(ends)),
                            'invalid': int(np.sum(~np.isfinite(batch.scores))),
                            'flagged_share': float(np.mean(batch.flags)) if len(ends) else 0.0}
    metrics['points'] = points
    metrics['eval_span_s'] = list(eval_span) if eval_span else None
    return EvalResult(rec.source, rec.times_ns, ends, batch.scores, batch.flags,
                      batch.channel_z, labels, metrics, rec.data, rec.channels,
                      scorer.describe(), pts, pflags, plabels, (scorer.mean_, scorer.std_))


def evaluate_bag(model: str | Path | AnomalyScorer, bag: str | Path, *,
                 labels_csv: str | Path | None = None, device: str = 'cpu',
                 points: str = 'ticks', eval_span: tuple[float | None, float | None] | None = None,
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
        eval_span: (start, end) in seconds from the first sample: the points counted.
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


def parse_span(text: str | None) -> tuple[float | None, float | None] | None:
    """Parse ``START:END`` in seconds (either side may be empty) into a tuple."""
    if text is None or text == '':
        return None
    start, sep, end = text.partition(':')
    if not sep:
        raise ConfigError(f'span {text!r} must be START:END in seconds from the start of the '
                          'bag, e.g. :400 (the first 400 s) or 60: (from 60 s on)')
    try:
        lo = float(start) if start.strip() else None
        hi = float(end) if end.strip() else None
    except ValueError:
        raise ConfigError(f'span {text!r} must hold numbers of seconds, e.g. 0:400') from None
    if lo is not None and hi is not None and hi <= lo:
        raise ConfigError(f'span {text!r} ends before it starts; give START:END with END '
                          'after START')
    return lo, hi


# --------------------------------------------------------------------------- metrics


def default_grace_s(scorer: AnomalyScorer) -> float:
    """One window, the debouncer's release (n decisions) and the slow context: how long a
    flag may outlast a fault because the scorer's memory still holds faulty samples."""
    rate = scorer.spec.rate_hz
    return (scorer.window + scorer.debouncer.n * scorer.spec.stride) / rate + \
        scorer.slow_context_s


def held_values(dec_times_ns: np.ndarray, values: np.ndarray, at_ns: np.ndarray,
                *, fill: Any = False) -> np.ndarray:
    """The value of the last decision at or before each time (``fill`` before the first)."""
    values = np.asarray(values)
    idx = np.searchsorted(np.asarray(dec_times_ns), np.asarray(at_ns), side='right') - 1
    out = np.full(len(at_ns), fill, dtype=values.dtype if values.size else bool)
    have = idx >= 0
    out[have] = values[idx[have]]
    return out


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
                    span_ns: tuple[int, int] | None = None) -> dict[str, Any]:
    """Point-wise figures, per-event detection and delay, and false alarms."""
    out: dict[str, Any] = {'pointwise': confusion(point_flags, point_labels)}
    grace_ns = int(round(grace_s * 1e9))
    if points is not None and len(points) == len(point_flags):
        # the same, leaving out the grace after each labelled interval, where the window
        # still holds faulty samples (neither a false nor a true alarm there)
        pts = np.asarray(points, dtype=np.int64)
        tail = np.zeros(pts.size, bool)
        for iv in labels:
            tail |= (pts >= iv.end_ns) & (pts < iv.end_ns + grace_ns)
        tail &= ~np.asarray(point_labels, bool)
        out['pointwise_after_grace'] = confusion(np.asarray(point_flags)[~tail],
                                                 np.asarray(point_labels)[~tail])
    dec_times_ns = np.asarray(dec_times_ns, dtype=np.int64)
    dec_flags = np.asarray(dec_flags, bool)
    if span_ns is not None:
        inside = (dec_times_ns >= span_ns[0]) & (dec_times_ns <= span_ns[1])
        dec_t, dec_f = dec_times_ns[inside], dec_flags[inside]
        labels = [iv for iv in labels if iv.end_ns > span_ns[0] and iv.start_ns <= span_ns[1]]
    else:
        dec_t, dec_f = dec_times_ns, dec_flags
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
    # false alarms: flagged stretches of decisions touching no labelled interval (+ grace)
    alarms = intervals_from_mask(dec_t, dec_f, kind='flag') if dec_t.size else []
    false = [a for a in alarms if not any(a.start_ns < iv.end_ns + grace_ns and
                                          a.end_ns > iv.start_ns for iv in labels)]
    hours = (dec_t[-1] - dec_t[0]) * 1e-9 / 3600 if dec_t.size > 1 else 0.0
    out['alarms'] = {'flagged_intervals': len(alarms), 'false_alarms': len(false),
                     'false_alarms_per_hour': len(false) / hours if hours > 0 else None,
                     'false_alarm_s': float(sum(a.duration_s for a in false))}
    return out


def pooled(results: Sequence[EvalResult | dict[str, Any]]) -> dict[str, Any]:
    """Pool the point-wise confusion matrices of several evaluations (as SKAB does)."""
    tp = fp = fn = tn = 0
    for res in results:
        m = res.metrics if isinstance(res, EvalResult) else res
        pw = m['pointwise']
        tp, fp, fn, tn = tp + pw['tp'], fp + pw['fp'], fn + pw['fn'], tn + pw['tn']
    return {'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn, **rates(tp, fp, fn, tn)}


# --------------------------------------------------------------------------- report


def summary_lines(result: EvalResult) -> list[str]:
    """The figures as lines for a terminal."""
    m = result.metrics
    pw = m['pointwise']

    def fmt(v: float | None, pct: bool = False) -> str:
        if v is None:
            return 'n/a'
        return f'{100 * v:.2f} %' if pct else f'{v:.3f}'

    dec = m['decisions']
    lines = [f'{dec["windows"]} decisions over {len(result.point_times_ns)} '
             f'points ({m["points"]}); threshold {result.scorer.get("threshold", 0):.4g} '
             f'({result.scorer.get("error")})']
    if dec['invalid']:
        lines.append(f'NOT SCORED: {dec["invalid"]} of {dec["windows"]} windows '
                     f'({100 * dec["invalid"] / dec["windows"]:.1f} %) held NaN or infinite '
                     'values; they are flagged, as the node flags them (a dead sensor is a '
                     'fault; ERROR on /diagnostics)')
    lines.append(f'point-wise: precision {fmt(pw["precision"])}  recall {fmt(pw["recall"])}  '
                 f'F1 {fmt(pw["f1"])}  FAR {fmt(pw["far"], True)}  MAR {fmt(pw["mar"], True)}')
    if 'pointwise_after_grace' in m and m['events']:
        lines.append(f'FAR outside the {m["grace_s"]:g} s after each labelled fault: '
                     f'{fmt(m["pointwise_after_grace"]["far"], True)}')
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
    lines.append(f'false alarms: {al["false_alarms"]} ({al["false_alarm_s"]:.1f} s flagged'
                 + (f', {rate:.1f} per hour' if rate is not None else '') + ')')
    return lines


def report_dict(result: EvalResult, *, model: str = '', extra: dict | None = None
                ) -> dict[str, Any]:
    """The JSON report as a dict."""
    t0 = int(result.times_ns[0]) if result.times_ns.size else 0
    dec_t = result.decision_times_ns
    return {
        'bag': result.source,
        'model': model or result.scorer.get('model', ''),
        'scorer': result.scorer,
        'start_ns': t0,
        'duration_s': float((result.times_ns[-1] - t0) * 1e-9) if result.times_ns.size else 0,
        'metrics': _jsonable(result.metrics),
        'flagged_intervals_s': [
            [(iv.start_ns - t0) * 1e-9, (iv.end_ns - t0) * 1e-9]
            for iv in (intervals_from_mask(dec_t, result.flags, kind='flag')
                       if dec_t.size else [])],
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
                 'score and flags',
                 fontsize=10)
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
    if len(dec_t):
        for iv in intervals_from_mask(result.decision_times_ns, result.flags, kind='flag'):
            ax.axvspan((iv.start_ns - t0) * 1e-9, (iv.end_ns - t0) * 1e-9, ymin=0.0,
                       ymax=0.45, color='tab:red', alpha=0.8)
    ax.set_yticks([0.25, 0.75])
    ax.set_yticklabels(['flagged', 'labelled'], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel('time from start (s)')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


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
