"""Re-baseline an anomaly model on recent normal data: "this is normal now". No torch, no ROS.

After a lasting change of operating point (a heavier payload, a warm motor, a new speed)
the model's normal statistics no longer hold, and its flag would stay up. Re-baselining keeps
the trained network (the same ``model.onnx``) and fits, on the recent data, what lives
beside it in ``model.yaml``:

1. the level of each channel: the per-channel offset that makes the model's mean residual
   (input minus reconstruction, normalised) vanish on the recent windows, found by a few
   fixed-point passes through the ONNX model (a plain mean would also move channels whose
   average depends on the manoeuvres flown; the residual only moves what the model cannot
   explain); ``normalization.mean`` moves by it;
2. each channel's normal error statistics and the threshold, on the recent windows through
   the runtime's own error code, with the model's own rule (POT, risk, scale);
3. merged with the old ones so that the result is never stricter than before: the recent
   minutes add to what is normal, they do not replace the old normal (a few minutes of
   hover would otherwise make every later manoeuvre look anomalous).

The live node's ``~/rebaseline`` service and ``encdec rebaseline`` both call
:func:`rebaseline`; the result is a new model directory (same ONNX file, its sha256 checked
on load) with a ``rebaseline`` section naming its parent and the data it saw.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encdec_ros.anomaly.calibrate import calibrate_parts, fit_detector
from encdec_ros.anomaly.scorer import (
    AnomalyScorer,
    ChannelStats,
    SlowStats,
    residual_means,
    window_statistics,
)
from encdec_ros.errors import ConfigError, ModelDirError
from encdec_ros.io.span import Span
from encdec_ros.io.window import window_ends, windows_at
from encdec_ros.modeldir import RESERVED, YAML_NAME, ModelDir, check_output_dir, save_model_dir

MIN_DECISIONS = 200
"""Fewest recent decisions a re-baseline accepts (the threshold's tail needs them)."""
PASSES = 12
"""Most fixed-point passes for the level offsets."""
TOLERANCE = 1e-3
"""Offset change (normalised units) below which the passes stop."""


@dataclass
class RebaselineResult:
    """What :func:`rebaseline` wrote.

    Attributes:
        path: The new model directory.
        sha256: The sha256 of its ``model.yaml`` (the ONNX file is the parent's).
        parent: The model directory it came from.
        decisions: Recent decisions it was fitted on.
        seconds: Time those decisions span.
        offsets: Per channel, how far its level moved (raw units).
        threshold: (before, after).
        flagged: Share of the recent decisions flagged (before, after).
        passes: Fixed-point passes the offsets took.
    """

    path: Path
    sha256: str
    parent: Path
    decisions: int
    seconds: float
    offsets: dict[str, float]
    threshold: tuple[float, float]
    flagged: tuple[float, float]
    passes: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for a terminal, a log or a service response."""
        moved = sorted(self.offsets.items(), key=lambda kv: -abs(kv[1]))[:3]
        return (f're-baselined {self.parent} on {self.decisions} decisions '
                f'({self.seconds:.0f} s) into {self.path} (model.yaml sha256 '
                f'{self.sha256[:12]}): flagged {self.flagged[0]:.1%} of them before, '
                f'{self.flagged[1]:.1%} after; threshold {self.threshold[0]:.4g} -> '
                f'{self.threshold[1]:.4g}; largest level shifts: '
                + ', '.join(f'{name} {value:+.4g}' for name, value in moved))


def rebaseline(model: str | Path | ModelDir, times_ns: np.ndarray, data: np.ndarray,
               out: str | Path, *, source: str = '', overwrite: bool = False) -> RebaselineResult:
    """Fit the model's levels, statistics and threshold on recent aligned rows; write ``out``.

    Args:
        model: The model directory to start from.
        times_ns: [T] tick times of the aligned rows (the spec's clock; gaps allowed).
        data: [T, C] aligned rows in raw units, channels in the spec's order.
        out: The new model directory (must not exist, or be empty, unless ``overwrite``).
        source: Where the rows came from, kept in model.yaml.
        overwrite: Replace an existing directory.
    """
    start = time.perf_counter()
    parent = model if isinstance(model, ModelDir) else ModelDir.load(model, task='anomaly')
    out = check_output_dir(out, what='re-baselined model directory', empty=not overwrite,
                           error=ModelDirError)
    if out.resolve() == parent.path.resolve():
        raise ConfigError(f'the re-baselined model must go to a new directory, not over '
                          f'{parent.path}; give another output directory')
    scorer = AnomalyScorer(parent, device='cpu', warmup=False, drift_s=0.0)
    spec = scorer.spec
    times_ns = np.asarray(times_ns, dtype=np.int64)
    data = np.asarray(data, dtype=np.float32)
    windows, ends = check_recent(scorer, times_ns, data)
    seconds = float((times_ns[ends[-1]] - times_ns[ends[0]]) * 1e-9) + \
        spec.window / spec.rate_hz
    before = _flagged_share(AnomalyScorer(parent, device='cpu', warmup=False), windows)

    # 1. levels: the offset (normalised) at which the model's mean residual vanishes
    base = scorer.normalize(windows)                     # drift off: plain normalisation
    offset = np.zeros(len(scorer.channels), dtype=np.float64)
    passes = 0
    for passes in range(1, PASSES + 1):
        xn = (base - offset.astype(np.float32)).astype(np.float32)
        step = np.nanmean(_means(scorer, xn), axis=0)
        offset += step
        if float(np.max(np.abs(step))) < TOLERANCE:
            break
    xn = (base - offset.astype(np.float32)).astype(np.float32)
    new_mean = scorer.mean_.astype(np.float64) + offset * scorer.std_.astype(np.float64)

    # 2. statistics and threshold on the recent windows, with the model's own rule, and
    # 3. never stricter than before
    errors, codes = window_statistics(scorer.engine, xn)
    parts = _contiguous(errors, ends, spec.stride)
    t2 = scorer.stats_.t2           # a PCA model's T^2 is refitted on the recent codes too
    t2_parts = None
    if t2 is not None and codes is not None:
        t2_parts = _contiguous(t2.t2(codes), ends, spec.stride)
    opts = parent.section('training.options', {}) or {}
    cal_old = parent.section('calibration', {}) or {}
    rule = dict(rule=str(opts.get('threshold_rule', cal_old.get('rule', 'pot'))),
                risk=float(opts.get('risk', cal_old.get('risk', 1e-4))),
                quantile=opts.get('quantile'),
                init_quantile=float(opts.get('init_quantile', 0.98)),
                threshold_scale=float(cal_old.get('scale', opts.get('threshold_scale', 1.0))),
                margin=float(opts.get('margin', 0.0)),
                debounce=(scorer.debouncer.k, scorer.debouncer.n, scorer.debouncer.release))
    slow_windows = scorer.stats_.slow.windows if scorer.stats_.slow is not None else 0
    if scorer.stats_.slow is not None and max(len(p) for p in parts) < 3 * slow_windows:
        raise ConfigError(f'the recent data holds no stretch of {3 * slow_windows} decisions '
                          'without a gap, too short for the model\'s slow context; give a '
                          'longer stretch of data')
    fresh = fit_detector(parts, error=scorer.error_kind, slow_windows=slow_windows,
                         t2=t2 if t2_parts is not None else None, t2_parts=t2_parts, **rule)
    stats = _tolerant(scorer.stats_, fresh.stats)
    fit = calibrate_parts(parts, stats, error=scorer.error_kind, t2_parts=t2_parts, **rule)
    new_threshold = max(scorer.calibrated_threshold, fit.threshold)

    sections = {k: v for k, v in parent.meta.items() if k not in RESERVED}
    sections['normalization'] = {**sections['normalization'], 'mean': new_mean}
    sections['threshold'] = float(new_threshold)
    if stats.t2 is not None:
        sections['score'] = {**sections['score'], 't2': stats.t2.to_dict()}
    sections['channel_errors'] = {**sections.get('channel_errors', {}), **stats.to_dict(),
                                  'mean': np.nanmean(errors[:, :len(scorer.channels)], axis=0),
                                  'p99': np.nanquantile(errors[:, :len(scorer.channels)], 0.99,
                                                        axis=0)}
    sections['calibration'] = {**cal_old, 'threshold': float(new_threshold),
                               'data': f're-baselined on {len(windows)} recent decisions'}
    parent_yaml = (parent.path / YAML_NAME).read_bytes()
    history = list(sections.get('rebaseline', {}).get('history', []))
    history.append(str(parent.path))
    sections['rebaseline'] = {
        'parent': str(parent.path),
        'parent_sha256': hashlib.sha256(parent_yaml).hexdigest(),
        'history': history,
        'source': source,
        'decisions': int(len(windows)),
        'seconds': round(seconds, 3),
        'offsets_raw': offset * scorer.std_.astype(np.float64),
        'passes': passes,
        'threshold_before': scorer.calibrated_threshold,
        'flagged_before': before,
    }
    with tempfile.TemporaryDirectory(prefix='encdec_rebaseline_') as tmp:
        onnx = Path(tmp) / parent.onnx_path.name
        shutil.copyfile(parent.onnx_path, onnx)
        save_model_dir(out, onnx_file=onnx, task='anomaly', sections=sections,
                       overwrite=overwrite)
    after = _flagged_share(AnomalyScorer(out, device='cpu', warmup=False), windows)
    sha = hashlib.sha256((out / YAML_NAME).read_bytes()).hexdigest()
    offsets = {name: float(v) for name, v in zip(scorer.channels,
                                                  offset * scorer.std_.astype(np.float64))}
    return RebaselineResult(out, sha, parent.path, int(len(windows)), seconds, offsets,
                            (scorer.threshold_, float(new_threshold)), (before, after),
                            passes, [f'{time.perf_counter() - start:.1f} s'])


def check_recent(scorer: AnomalyScorer, times_ns: np.ndarray, data: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The finite windows [N, W, C] of recent aligned rows at the model's stride and the rows
    they end at; refuses, in one sentence, data too short to re-baseline on."""
    spec = scorer.spec
    times_ns = np.asarray(times_ns, dtype=np.int64)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape != (times_ns.size, len(scorer.channels)):
        raise ConfigError(f'recent data must be [T, {len(scorer.channels)}] rows with one time '
                          f'each, got {list(data.shape)} rows for {times_ns.size} times')
    ends = window_ends(times_ns, spec.period_ns, spec.window, spec.stride)
    windows = windows_at(data, ends, spec.window)
    ok = np.isfinite(windows).all(axis=(1, 2))
    windows, ends = windows[ok], ends[ok]
    if len(windows) < MIN_DECISIONS:
        period_s = spec.stride / spec.rate_hz
        need = MIN_DECISIONS * period_s + spec.window / spec.rate_hz
        have = (times_ns[-1] - times_ns[0]) * 1e-9 if times_ns.size > 1 else 0.0
        raise ConfigError(f're-baselining needs at least {MIN_DECISIONS} windows of recent '
                          f'normal data (about {need:.0f} s at {spec.rate_hz:g} Hz with stride '
                          f'{spec.stride}); it has {len(windows)} in {have:.0f} s, so wait '
                          'longer or give more data')
    return windows, ends


def _means(scorer: AnomalyScorer, xn: np.ndarray, batch: int = 512) -> np.ndarray:
    out = np.empty((len(xn), xn.shape[2]), dtype=np.float64)
    for lo in range(0, len(xn), batch):
        part = xn[lo:lo + batch]
        out[lo:lo + batch] = residual_means(scorer.engine.run(part), part)
    return out


def _contiguous(errors: np.ndarray, ends: np.ndarray, stride: int) -> list[np.ndarray]:
    """Split decisions where they are not one stride apart (a gap in the recent data)."""
    cut = np.flatnonzero(np.diff(ends) != stride) + 1
    return [p for p in np.split(errors, cut) if len(p)]


def _tolerant(old: ChannelStats, new: ChannelStats) -> ChannelStats:
    """Per channel, whichever of two sets of normal statistics flags less."""
    slow = old.slow
    if old.slow is not None and new.slow is not None:
        slow = SlowStats(old.slow.windows, np.maximum(old.slow.center, new.slow.center),
                         np.maximum(old.slow.scale, new.slow.scale))
    precision = old.precision if new.precision is None else new.precision
    if old.precision is not None and new.precision is not None:
        # the average covariance, its diagonal raised to the larger of the two
        a, b = np.linalg.inv(old.precision), np.linalg.inv(new.precision)
        cov = 0.5 * (a + b)
        cov += np.diag(np.maximum(np.diag(a), np.diag(b)) - np.diag(cov))
        precision = np.linalg.inv(cov)
    t2 = old.t2
    if old.t2 is not None and new.t2 is not None:
        t2 = dataclasses.replace(old.t2, log_mean=max(old.t2.log_mean, new.t2.log_mean),
                                 log_std=max(old.t2.log_std, new.t2.log_std))
    return ChannelStats(np.maximum(old.log_mean, new.log_mean),
                        np.maximum(old.log_std, new.log_std),
                        np.minimum(old.rough_log_mean, new.rough_log_mean),
                        np.maximum(old.rough_log_std, new.rough_log_std), slow, precision, t2)


def _flagged_share(scorer: AnomalyScorer, windows: np.ndarray) -> float:
    if not len(windows):
        return 0.0
    return float(np.mean(scorer.score_windows(windows).flags))


def rebaseline_bag(model: str | Path, bag: str | Path, out: str | Path, *,
                   last_s: float | None = None, span: Span | None = None,
                   overwrite: bool = False, progress: bool | None = None) -> RebaselineResult:
    """:func:`rebaseline` on a bag read with the model's spec: its last ``last_s`` seconds,
    or a ``span`` (seconds or rows from its first sample, :mod:`encdec_ros.io.span`), or
    all of it."""
    from encdec_ros.io.bag import read_bag
    from encdec_ros.io.span import resolve_span

    parent = ModelDir.load(model, task='anomaly')
    from encdec_ros.io.spec import SignalSpec

    spec = SignalSpec.from_dict(parent.section('spec'), source=str(parent.path / YAML_NAME))
    rec = read_bag(bag, spec, show_progress=progress)
    times, data = rec.times_ns, rec.data
    if times.size == 0:
        raise ConfigError(f'{bag} holds no aligned sample of the model\'s topics')
    rel = (times - times[0]) * 1e-9
    keep = np.ones(times.size, dtype=bool)
    if last_s is not None:
        if not last_s > 0:
            raise ConfigError(f'--last must be a positive number of seconds, got {last_s!r}')
        keep &= rel >= rel[-1] - last_s
    if span is not None:
        lo, hi = resolve_span(span, rec)
        if lo is not None:
            keep &= rel >= lo - 1e-9
        if hi is not None:
            keep &= rel < hi - 1e-9
    return rebaseline(parent, times[keep], data[keep], out, source=str(bag),
                      overwrite=overwrite)
