"""The anomaly scorer: one window of aligned samples in, a debounced decision out. No ROS.

The live node (:mod:`encdec_ros.nodes.anomaly_detector`) and the offline evaluation
(:mod:`encdec_ros.anomaly_eval`, ``encdec eval anomaly``) both call :class:`AnomalyScorer`,
so a bag played to the node gives the same flags as its evaluation.

For each window ``x`` [W, C] (raw units, channels in the spec's order)::

    xn      = (x - mean) / std                      normalisation fitted on training data
    r       = model(xn) - xn                        the autoencoder's residual (ONNX Runtime)
    e_c     = mean_t r_c^2                          per-channel reconstruction error
    d_c     = mean_t (xn_c[t] - xn_c[t-1])^2        per-channel roughness of the input
    z_c     = (log e_c - m_c) / s_c                 how unusual each error is, against the
    f_c     = -(log d_c - m'_c) / s'_c              channel's normal statistics; f_c is high
                                                    when a channel's noise vanishes (flat-lined)
    error   = mean_c e_c                 ('mse', the classic)
            | max_c z_c                  ('channel_max': the most unusual channel)
            | max_c max(z_c, f_c)        ('channel_max_flat': also a stuck / frozen channel)
    score   = error / threshold                     threshold calibrated on normal data
    flag    = debounce(score >= 1)                  k of the last n windows, with hysteresis

The per-channel statistics (``m``, ``s``, ``m'``, ``s'``: mean and spread of the logarithms on
held-out normal data) are stored in ``model.yaml``; they also rank the channels that
contribute most (``max(z_c, f_c)`` per channel).

This module never imports torch or rclpy.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, ModelDirError
from .modeldir import ModelDir
from .spec import SignalSpec

ERROR_KINDS = ('mse', 'channel_max', 'channel_max_flat')
LOG_EPS = 1e-8
"""Added to per-channel errors before the logarithm (normalised units squared)."""
DEFAULT_BATCH = 256
"""Windows per ONNX Runtime call in :meth:`AnomalyScorer.score_windows`."""


# --------------------------------------------------------------------------- debouncing


@dataclass
class Debouncer:
    """Turn per-window scores into a flag that neither chatters nor misses persistent faults.

    The flag rises when at least ``k`` of the last ``n`` scores reach 1 (the threshold) and
    falls when none of the last ``n`` scores reaches ``release`` (a fraction of the threshold,
    at most 1). A non-finite score (a window with NaN inputs) is skipped: it changes nothing.

    Attributes:
        k: Windows above the threshold needed to raise the flag.
        n: Length of the memory, in windows.
        release: Level (relative to the threshold) below which all of the last ``n`` scores
            must stay for the flag to fall.
    """

    k: int = 3
    n: int = 5
    release: float = 0.8
    flag: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        check_debounce(self.k, self.n, self.release)
        self._above: deque[bool] = deque(maxlen=self.n)
        self._held: deque[bool] = deque(maxlen=self.n)

    def update(self, score: float) -> bool:
        """Feed one score; return the flag after it."""
        if not math.isfinite(score):
            return self.flag
        self._above.append(score >= 1.0)
        self._held.append(score >= self.release)
        if not self.flag:
            if sum(self._above) >= self.k:
                self.flag = True
        elif not any(self._held):
            self.flag = False
        return self.flag

    def run(self, scores: np.ndarray) -> np.ndarray:
        """Feed many scores in order; return the flag after each (same as repeated update)."""
        out = np.empty(len(scores), dtype=bool)
        for i, score in enumerate(np.asarray(scores, dtype=np.float64)):
            out[i] = self.update(float(score))
        return out

    def reset(self) -> None:
        """Forget the past scores and lower the flag."""
        self._above.clear()
        self._held.clear()
        self.flag = False


def check_debounce(k: int, n: int, release: float) -> None:
    """Raise :class:`ConfigError` unless 1 <= k <= n and 0 < release <= 1."""
    for name, value in (('debounce_k', k), ('debounce_n', n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f'{name} must be a whole number >= 1, got {value!r}; '
                              'for example debounce_k 3 of debounce_n 5')
    if k > n:
        raise ConfigError(f'debounce_k ({k}) is larger than debounce_n ({n}), so the flag '
                          'could never rise; use k <= n')
    if not (isinstance(release, (int, float)) and 0 < release <= 1):
        raise ConfigError(f'hysteresis release level must be in (0, 1], got {release!r}; '
                          'for example 0.8 (the flag falls once scores stay below 0.8)')


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """The scorer's verdict on one window.

    Attributes:
        score: error / threshold (NaN when the window held non-finite values).
        flag: The debounced anomaly flag after this window.
        raised: True when the flag rose with this window.
        error: The aggregate error before division by the threshold.
        channel_z: How unusual each channel is in this window [C] (standardised log error,
            or the flat-line statistic where that is higher, with 'channel_max_flat').
        valid: False when the window held NaN or infinite values and was not scored.
    """

    score: float
    flag: bool
    raised: bool
    error: float
    channel_z: np.ndarray
    valid: bool = True


@dataclass
class BatchScores:
    """Scores of many windows in order, with the flags the debouncer gives them.

    Attributes:
        scores: [N] error / threshold (NaN for windows with non-finite inputs).
        flags: [N] debounced flags.
        errors: [N] aggregate errors.
        channel_errors: [N, 2C] per-channel mean squared errors, then per-channel input
            roughness (normalised units).
        channel_z: [N, C] how unusual each channel is.
    """

    scores: np.ndarray
    flags: np.ndarray
    errors: np.ndarray
    channel_errors: np.ndarray
    channel_z: np.ndarray


# --------------------------------------------------------------------------- the scorer


class AnomalyScorer:
    """Score windows with an exported anomaly model (a directory from ``encdec train anomaly``).

    Args:
        model: The model directory (a path or a loaded :class:`ModelDir`).
        device: Inference device: 'auto', 'tensorrt', 'cuda' or 'cpu'.
        threads: ONNX Runtime intra-op threads (None: the engine's default, 1).
        debounce_k: Override the model's k (windows above threshold to raise the flag).
        debounce_n: Override the model's n (windows remembered).
        release: Override the model's hysteresis release level (fraction of the threshold).
        threshold_scale: Multiply the calibrated threshold (above 1: fewer, later flags).
        warmup: Warm the engine up at start.

    Attributes:
        spec: The resolved signal spec the model was trained on.
        channels: Channel names in column order.
        window: Samples per window.
        threshold_: The threshold on the aggregate error (after ``threshold_scale``).
        error_kind: How per-channel errors are aggregated (one of :data:`ERROR_KINDS`).
        debouncer: The :class:`Debouncer` holding the flag state.
        engine: The :class:`~encdec_ros.engine.InferenceEngine`.
    """

    def __init__(self, model: str | Path | ModelDir, *, device: str = 'auto',
                 threads: int | None = None, debounce_k: int | None = None,
                 debounce_n: int | None = None, release: float | None = None,
                 threshold_scale: float = 1.0, warmup: bool = True) -> None:
        self.model = model if isinstance(model, ModelDir) else ModelDir.load(model,
                                                                             task='anomaly')
        m = self.model
        where = m.path / 'model.yaml'
        self.spec = SignalSpec.from_dict(m.section('spec'), source=str(where))
        if not self.spec.resolved:
            raise ModelDirError(f'the spec in {where} is not resolved (types or array sizes '
                                'missing); re-train the model with this version of encdec_ros')
        self.channels: list[str] = self.spec.channels
        self.window: int = self.spec.window
        n_ch = len(self.channels)
        self.mean_ = _vector(m, 'normalization.mean', n_ch)
        self.std_ = _vector(m, 'normalization.std', n_ch)
        if not (self.std_ > 0).all():
            raise ModelDirError(f'normalization.std in {where} has values <= 0; re-train the '
                                'model')
        self.error_kind: str = m.section('score.error', 'mse')
        if self.error_kind not in ERROR_KINDS:
            raise ModelDirError(f'score.error in {where} is {self.error_kind!r}, not one of '
                                f'{", ".join(ERROR_KINDS)}; re-train the model')
        self.stats_ = ChannelStats(
            _vector(m, 'channel_errors.log_mean', n_ch, np.float64),
            _vector(m, 'channel_errors.log_std', n_ch, np.float64),
            _vector(m, 'channel_errors.rough_log_mean', n_ch, np.float64),
            _vector(m, 'channel_errors.rough_log_std', n_ch, np.float64))
        if not ((self.stats_.log_std > 0).all() and (self.stats_.rough_log_std > 0).all()):
            raise ModelDirError(f'channel_errors in {where} has spreads <= 0; re-train the '
                                'model')
        threshold = m.section('threshold')
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
                not math.isfinite(threshold) or threshold <= 0:
            raise ModelDirError(f'threshold in {where} must be a positive number, got '
                                f'{threshold!r}; re-calibrate the model')
        if not (isinstance(threshold_scale, (int, float)) and threshold_scale > 0):
            raise ConfigError(f'threshold scale must be a positive number, got '
                              f'{threshold_scale!r}; 1.0 keeps the calibrated threshold')
        self.calibrated_threshold: float = float(threshold)
        self.threshold_: float = float(threshold) * float(threshold_scale)
        det = m.section('detector', {}) or {}
        self.debouncer = Debouncer(
            k=int(debounce_k if debounce_k else det.get('debounce_k', 3)),
            n=int(debounce_n if debounce_n else det.get('debounce_n', 5)),
            release=float(release if release else det.get('release', 0.8)))
        self.engine = m.engine(device, threads=threads, warmup=warmup)
        shape = self.engine.input_shapes[0]
        if len(shape) != 3 or shape[1:] != (self.window, n_ch):
            want = [self.window, n_ch]
            raise ModelDirError(f'{m.onnx_path} takes input shape {list(shape)} but its '
                                f'spec needs [batch, {want[0]}, {want[1]}]; re-export the model')
        self._inv_std = (1.0 / self.std_).astype(np.float32)
        self._batch1 = np.empty((1, self.window, n_ch), dtype=np.float32)

    # ------------------------------------------------------------------ parts

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider in use."""
        return self.engine.provider

    def normalize(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows [..., W, C] to the model's normalised units (float32)."""
        return ((np.asarray(windows, dtype=np.float32) - self.mean_) * self._inv_std)

    def channel_errors(self, windows: np.ndarray, *, batch: int = DEFAULT_BATCH) -> np.ndarray:
        """Per-channel errors [N, 2C] (float64) of raw windows [N, W, C]: the mean squared
        residual per channel, then the input's roughness per channel; NaN rows for windows
        with non-finite values."""
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, len(self.channels)):
            raise ConfigError(f'windows must have shape [N, {self.window}, '
                              f'{len(self.channels)}], got {list(windows.shape)}')
        return reconstruction_errors(self.engine, self.normalize(windows), batch=batch)

    def aggregate(self, channel_errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aggregate errors [N] and per-channel z [N, C] from per-channel errors [N, 2C]."""
        return aggregate_errors(channel_errors, self.error_kind, self.stats_)

    def top_channels(self, channel_z: np.ndarray, count: int = 3) -> list[tuple[str, float]]:
        """The ``count`` channels that are most unusual in one window, as (name, z)."""
        z = np.asarray(channel_z, dtype=np.float64)
        order = np.argsort(-np.nan_to_num(z, nan=-np.inf), kind='stable')
        return [(self.channels[i], float(z[i])) for i in order[:count]]

    # ------------------------------------------------------------------ scoring

    def step(self, window: np.ndarray) -> Decision:
        """Score one window [W, C] (raw units, oldest row first) and update the flag."""
        batch = self._batch1
        batch[0] = window
        before = self.debouncer.flag
        if not np.isfinite(batch).all():
            return Decision(math.nan, before, False, math.nan,
                            np.full(len(self.channels), np.nan), valid=False)
        xn = (batch - self.mean_) * self._inv_std
        ch_err = residual_statistics(self.engine.run(xn), xn)
        errors, z = self.aggregate(ch_err)
        error = float(errors[0])
        score = error / self.threshold_
        flag = self.debouncer.update(score)
        return Decision(score, flag, flag and not before, error, z[0])

    def score_windows(self, windows: np.ndarray, *, batch: int = DEFAULT_BATCH,
                      progress: bool | None = None) -> BatchScores:
        """Score many consecutive windows [N, W, C] in batches, then debounce them in order.

        Gives the same scores (to float rounding of batched inference) and the same flags
        as calling :meth:`step` on each window in turn; the flag state carries over.
        """
        windows = np.asarray(windows)
        if progress and len(windows) > batch:
            from .progress import progress as bar
            parts = []
            for lo in bar(range(0, len(windows), batch), total=-(-len(windows) // batch),
                          desc='scoring', unit='batch', enable=True):
                parts.append(self.channel_errors(windows[lo:lo + batch], batch=batch))
            ch_err = np.concatenate(parts) if parts else \
                np.zeros((0, 2 * len(self.channels)))
        else:
            ch_err = self.channel_errors(windows, batch=batch)
        errors, z = self.aggregate(ch_err)
        scores = errors / self.threshold_
        flags = self.debouncer.run(scores)
        return BatchScores(scores, flags, errors, ch_err, z)

    def reset(self) -> None:
        """Lower the flag and forget past scores (e.g. after the inputs stopped)."""
        self.debouncer.reset()

    def describe(self) -> dict[str, Any]:
        """A plain dict for diagnostics and reports."""
        d = self.debouncer
        return {
            'model': str(self.model.path),
            'provider': self.provider,
            'window': self.window,
            'stride': self.spec.stride,
            'rate_hz': self.spec.rate_hz,
            'channels': len(self.channels),
            'error': self.error_kind,
            'threshold': self.threshold_,
            'debounce': {'k': d.k, 'n': d.n, 'release': d.release},
        }


@dataclass(frozen=True)
class ChannelStats:
    """Normal statistics of each channel's residual, from held-out normal data.

    Attributes:
        log_mean: [C] mean of log(e_c + eps), e_c the mean squared residual.
        log_std: [C] standard deviation of log(e_c + eps).
        rough_log_mean: [C] mean of log(d_c + eps), d_c the input's roughness.
        rough_log_std: [C] standard deviation of log(d_c + eps).
    """

    log_mean: np.ndarray
    log_std: np.ndarray
    rough_log_mean: np.ndarray
    rough_log_std: np.ndarray

    @classmethod
    def fit(cls, channel_errors: np.ndarray, *, min_std: float = 1e-3) -> 'ChannelStats':
        """Fit from per-channel errors [N, 2C] of normal windows (NaN rows ignored)."""
        ch = np.asarray(channel_errors, dtype=np.float64)
        ch = ch[np.isfinite(ch).all(axis=1)]
        logs = np.log(ch + LOG_EPS)
        c = ch.shape[1] // 2
        mean, std = logs.mean(axis=0), np.maximum(logs.std(axis=0), min_std)
        return cls(mean[:c], std[:c], mean[c:], std[c:])

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays for model.yaml."""
        return {'log_mean': self.log_mean, 'log_std': self.log_std,
                'rough_log_mean': self.rough_log_mean, 'rough_log_std': self.rough_log_std}


def aggregate_errors(channel_errors: np.ndarray, kind: str, stats: ChannelStats
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate per-channel errors [N, 2C] into one error per window [N]; also return how
    unusual each channel is [N, C].

    Shared by the scorer and by threshold calibration in training, so both compute the same
    number. Rows with NaN give NaN.
    """
    ch = np.atleast_2d(np.asarray(channel_errors, dtype=np.float64))
    c = ch.shape[1] // 2
    level, rough = ch[:, :c], ch[:, c:]
    z = (np.log(level + LOG_EPS) - stats.log_mean) / stats.log_std
    if kind == 'channel_max_flat':
        flat = (stats.rough_log_mean - np.log(rough + LOG_EPS)) / stats.rough_log_std
        z = np.maximum(z, flat)
    if kind == 'mse':
        errors = level.mean(axis=1)
    elif kind in ('channel_max', 'channel_max_flat'):
        errors = z.max(axis=1)
    else:
        raise ConfigError(f'error kind {kind!r} is not one of {", ".join(ERROR_KINDS)}')
    return errors, z


def residual_statistics(recon: np.ndarray, normalized: np.ndarray) -> np.ndarray:
    """Per-channel [N, 2C]: the mean squared residual, then the roughness of the input (mean
    squared step between samples, which vanishes when a channel is stuck or frozen)."""
    r = recon.astype(np.float64) - normalized
    level = np.mean(r * r, axis=1)
    step = np.diff(normalized.astype(np.float64), axis=1)
    rough = np.mean(step * step, axis=1) if step.shape[1] else np.zeros_like(level)
    return np.concatenate([level, rough], axis=1)


def reconstruction_errors(engine: Any, normalized: np.ndarray, *,
                          batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Per-channel statistics [N, 2C] (see :func:`residual_statistics`) of normalised windows
    [N, W, C] run through ``engine`` in batches; rows of non-finite windows are NaN.

    Shared by the scorer and by threshold calibration in training.
    """
    normalized = np.asarray(normalized, dtype=np.float32)
    n, _, c = normalized.shape
    out = np.full((n, 2 * c), np.nan, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(normalized).all(axis=(1, 2)))
    for lo in range(0, idx.size, batch):
        part = idx[lo:lo + batch]
        xn = normalized[part]
        out[part] = residual_statistics(engine.run(xn), xn)
    return out


def _vector(model: ModelDir, name: str, size: int, dtype: Any = np.float32) -> np.ndarray:
    arr = model.array(name, dtype=dtype)
    if arr.shape != (size,) or not np.isfinite(arr).all():
        raise ModelDirError(f'{name} in {model.path / "model.yaml"} must hold {size} finite '
                            f'numbers (one per channel), got shape {list(arr.shape)}; '
                            're-train the model')
    return arr
