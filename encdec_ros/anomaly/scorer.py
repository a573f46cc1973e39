"""The anomaly scorer: one window of aligned samples in, a debounced decision out. No ROS.

The live node (:mod:`encdec_ros.nodes.anomaly_detector`) and the offline evaluation
(:mod:`encdec_ros.anomaly.evaluate`, ``encdec eval anomaly``) both call :class:`AnomalyScorer`,
so a bag played to the node gives the same flags as its evaluation.

For each window ``x`` [W, C] (raw units, channels in the spec's order)::

    xn      = (x - mean) / std                      normalisation fitted on training data
    r       = model(xn) - xn                        the autoencoder's residual (ONNX Runtime)
    e_c     = mean_t r_c^2                          per-channel reconstruction error
            | g_c * mean_t r^2 / s^2                a model with a 'log_var' output (VAE):
                                                    g_c = exp(mean_t 0.5 log s^2), so log e_c
                                                    holds both terms of the Gaussian NLL
                                                    0.5 (log s^2 + r^2 / s^2), the standardised
                                                    squared residual in log like every error
    d_c     = mean_t (xn_c[t] - xn_c[t-1])^2        per-channel roughness of the input
    z_c     = (log e_c - a_c) / b_c                 how unusual each error is, against the
    f_c     = -(log d_c - a'_c) / b'_c              channel's normal statistics; f_c is high
                                                    when a channel's noise vanishes (flat-lined)
    slow context (the last L decisions, L = slow_s * rate / stride; off until L are seen):
    E_c, D_c = means of log e_c and log d_c over the last L windows
    s_c     = max( g(E_c), g(D_c) )                 each scaled so that its 99th percentile
                                                    on normal data is 2.33
    error   = mean_c e_c                 ('mse', the classic)
            | max_c z_c                  ('channel_max': the most unusual channel)
            | max_c max(z_c, f_c)        ('channel_max_flat': also a stuck / frozen channel)
            | max(m, max_c f_c)          ('mahalanobis': m, the Mahalanobis distance of the
                                          vector of log e_c from its normal mean under their
                                          normal covariance (shrunk halfway to its diagonal),
                                          as a standard normal quantile (Wilson-Hilferty), so
                                          channels whose errors rise together count once)
              and max with s_c when the model has a slow context: a fault too small to stand
              out in one window but persists (growing vibration, a worn motor)
              and max with z_T when the model has T^2 statistics (PCA): Hotelling's
              T^2 = sum_j ((code_j - center_j) / scale_j)^2, z_T = (log T^2 - a'') / b''
    score   = error / threshold                     threshold calibrated on normal data
    flag    = debounce(score >= 1)                  k of the last n windows, with hysteresis

The per-channel statistics (mean and spread of the logarithms, the slow context's centres
and scales, all on held-out normal data) are stored in ``model.yaml``; they also rank the
channels that contribute most (the per-channel maximum above).

Model outputs are found by name: ``x_hat`` (the reconstruction; a single-output model's only
output), ``log_var`` (optional: the decoder's log-variance per sample and channel) and
``code`` (optional: the window's code, the encoder mean for a VAE; it comes out of the same
inference and is handed on in :class:`Decision` and :class:`BatchScores`).

This module never imports torch or rclpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encdec_ros.errors import ConfigError, ModelDirError
from encdec_ros.io.spec import SignalSpec
from encdec_ros.modeldir import ModelDir

ERROR_KINDS = ('mse', 'channel_max', 'channel_max_flat', 'mahalanobis')
LOG_EPS = 1e-8
"""Added to per-channel errors before the logarithm (normalised units squared)."""
DEFAULT_BATCH = 256
"""Windows per ONNX Runtime call in :meth:`AnomalyScorer.score_windows`."""
DRIFT_UPDATE_S = 5.0
"""Seconds between updates of the followed drift (:class:`DriftTracker`)."""


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
        flag: The debounced anomaly flag after this window; always True for a window that
            could not be scored (NaN or infinite inputs: a dead sensor is a fault), without
            touching the debouncer's memory.
        raised: True when the flag rose with this window.
        error: The aggregate error before division by the threshold.
        channel_z: How unusual each channel is in this window [C] (standardised log error,
            or the flat-line statistic where that is higher, with 'channel_max_flat').
        valid: False when the window held NaN or infinite values and was not scored.
        code: The window's code [Z] (NaN when not scored), or None for a model without a
            'code' output.
    """

    score: float
    flag: bool
    raised: bool
    error: float
    channel_z: np.ndarray
    valid: bool = True
    code: np.ndarray | None = None


@dataclass
class BatchScores:
    """Scores of many windows in order, with the flags the debouncer gives them.

    Attributes:
        scores: [N] error / threshold (NaN for windows with non-finite inputs).
        flags: [N] debounced flags (True where the score is not finite).
        errors: [N] aggregate errors.
        channel_errors: [N, 2C] per-channel mean squared errors, then input roughness
            (normalised units).
        channel_z: [N, C] how unusual each channel is.
        codes: [N, Z] the windows' codes (NaN rows where not scored), or None for a model
            without a 'code' output.
    """

    scores: np.ndarray
    flags: np.ndarray
    errors: np.ndarray
    channel_errors: np.ndarray
    channel_z: np.ndarray
    codes: np.ndarray | None = None


@dataclass
class StreamState:
    """What the scorer remembers of one stream between windows: the debouncer, the slow
    context, the drift followed and the flag of the last decision. One scorer serves many
    streams (one node, many robots) with a state each (:meth:`AnomalyScorer.new_state`,
    :meth:`AnomalyScorer.decide`)."""

    debouncer: Debouncer
    slow: SlowContext
    drift: 'DriftTracker'
    flag: bool = False        # the flag of the last decision (forced up for unscored ones)

    def reset(self) -> None:
        """Lower the flag and forget past scores and the drift followed."""
        self.debouncer.reset()
        self.slow.reset()
        self.drift.reset()
        self.flag = False


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
        stride: Ticks between decisions where they differ from the spec's (the node's
            ``stride`` parameter); the slow context then spans the same time.
        drift_s: Override the model's drift time constant in seconds (0: do not follow
            drift); see :class:`DriftTracker`.
        drift_freeze: Override the unusualness (fraction of the threshold) that holds a
            channel's drift.
        drift_accept_s: Override the seconds after which a held channel is followed again
            (0: never).

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
                 threshold_scale: float = 1.0, warmup: bool = True,
                 stride: int | None = None, drift_s: float | None = None,
                 drift_freeze: float | None = None, drift_accept_s: float | None = None
                 ) -> None:
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
        slow = None
        slow_windows = m.section('channel_errors.slow_windows', 0)
        if isinstance(slow_windows, bool) or not isinstance(slow_windows, int) or \
                slow_windows < 0:
            raise ModelDirError(f'channel_errors.slow_windows in {where} must be a whole '
                                f'number >= 0, got {slow_windows!r}; re-train the model')
        if slow_windows:
            slow = SlowStats(slow_windows,
                             _vector(m, 'channel_errors.slow_center', 2 * n_ch, np.float64),
                             _vector(m, 'channel_errors.slow_scale', 2 * n_ch, np.float64))
        self.stats_ = ChannelStats(
            _vector(m, 'channel_errors.log_mean', n_ch, np.float64),
            _vector(m, 'channel_errors.log_std', n_ch, np.float64),
            _vector(m, 'channel_errors.rough_log_mean', n_ch, np.float64),
            _vector(m, 'channel_errors.rough_log_std', n_ch, np.float64), slow)
        precision = m.section('channel_errors.precision', None)
        if precision is not None:
            p = np.asarray(precision, dtype=np.float64)
            if p.shape != (n_ch, n_ch) or not np.isfinite(p).all():
                raise ModelDirError(f'channel_errors.precision in {where} must be a finite '
                                    f'{n_ch} x {n_ch} matrix; re-train the model')
            self.stats_ = dataclasses.replace(self.stats_, precision=p)
        elif self.error_kind == 'mahalanobis':
            raise ModelDirError(f'{where} asks for the mahalanobis error but has no '
                                'channel_errors.precision; re-train the model')
        if not ((self.stats_.log_std > 0).all() and (self.stats_.rough_log_std > 0).all()
                and (slow is None or (slow.scale > 0).all())):
            raise ModelDirError(f'channel_errors in {where} has spreads <= 0; re-train the '
                                'model')
        self.engine = m.engine(device, threads=threads, warmup=warmup)
        outputs = self.engine.output_names
        self.likelihood: bool = 'log_var' in outputs
        """The model predicts a variance: per-channel errors are likelihood terms."""
        self.code_size: int = 0
        """Size of the model's code output (0: none, e.g. a model trained before codes)."""
        if 'code' in outputs:
            dims = self.engine.output_shapes[outputs.index('code')]
            if len(dims) != 2 or not isinstance(dims[1], int):
                raise ModelDirError(f'{m.onnx_path} has a code output of shape '
                                    f'{list(dims)}, not [batch, size]; re-export the model')
            self.code_size = int(dims[1])
        t2 = m.section('score.t2', None)
        if t2 is not None:
            if not self.code_size:
                raise ModelDirError(f'{where} has score.t2 but the model has no code output; '
                                    're-train the model')
            self.stats_ = self.stats_.with_t2(T2Stats.from_dict(t2, self.code_size, where))
        # the slow context spans the same time at another decision stride
        self.stride = int(stride or self.spec.stride)
        windows = 0
        if slow is not None and self.error_kind != 'mse':
            windows = max(1, int(round(slow.windows * self.spec.stride / self.stride)))
        self._slow_windows = windows
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
        self._debounce = (int(debounce_k if debounce_k else det.get('debounce_k', 3)),
                          int(debounce_n if debounce_n else det.get('debounce_n', 5)),
                          float(release if release else det.get('release', 0.8)))
        drift = m.section('drift', {}) or {}
        if not isinstance(drift, dict):
            raise ModelDirError(f'drift in {where} must be a mapping; re-train the model')
        self.drift_s = float(drift.get('time_constant_s', 0.0) if drift_s is None else drift_s)
        freeze = float(drift.get('freeze', 0.5) if drift_freeze is None else drift_freeze)
        accept_s = float(drift.get('accept_s', 0.0) if drift_accept_s is None
                         else drift_accept_s)
        if not (self.drift_s >= 0 and freeze > 0 and accept_s >= 0):
            raise ConfigError(f'drift time constant ({self.drift_s!r} s) and accept time '
                              f'({accept_s!r} s) must be >= 0 and the freeze level '
                              f'({freeze!r}) > 0')
        period_s = self.stride / self.spec.rate_hz           # seconds between decisions
        every = max(1, int(round(DRIFT_UPDATE_S / period_s)))
        gain = 0.0
        if self.drift_s > 0 and self.error_kind != 'mse':
            gain = min(1.0, every * period_s / self.drift_s)
        self._drift = {'gain': gain, 'every': every, 'freeze': freeze,
                       'accept': int(round(accept_s / period_s))}
        self.state = self.new_state()
        """The state of the scorer's own stream (:meth:`step`, :meth:`score_windows`)."""
        shape = self.engine.input_shapes[0]
        if len(shape) != 3 or shape[1:] != (self.window, n_ch):
            want = [self.window, n_ch]
            raise ModelDirError(f'{m.onnx_path} takes input shape {list(shape)} but its '
                                f'spec needs [batch, {want[0]}, {want[1]}]; re-export the model')
        self._inv_std = (1.0 / self.std_).astype(np.float32)

    # ------------------------------------------------------------------ state

    def new_state(self) -> StreamState:
        """A fresh state for one more stream (the debounce settings in use, an empty slow
        context, no drift followed yet)."""
        k, n, release = self._debounce
        return StreamState(Debouncer(k, n, release),
                           SlowContext(self._slow_windows, 2 * len(self.channels)),
                           DriftTracker(len(self.channels), **self._drift))

    @property
    def debouncer(self) -> Debouncer:
        """The debouncer of the scorer's own stream; setting it also sets the debounce
        settings of states made later."""
        return self.state.debouncer

    @debouncer.setter
    def debouncer(self, value: Debouncer) -> None:
        self.state.debouncer = value
        self._debounce = (value.k, value.n, value.release)

    @property
    def slow(self) -> SlowContext:
        """The slow context of the scorer's own stream."""
        return self.state.slow

    @property
    def drift(self) -> 'DriftTracker':
        """The drift followed on the scorer's own stream."""
        return self.state.drift

    # ------------------------------------------------------------------ parts

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider in use."""
        return self.engine.provider

    @property
    def slow_context_s(self) -> float:
        """Seconds the slow context averages over (0: none)."""
        return self.slow.windows * self.stride / self.spec.rate_hz

    def normalize(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows [..., W, C] to the model's normalised units (float32), less the drift
        followed so far."""
        xn = (np.asarray(windows, dtype=np.float32) - self.mean_) * self._inv_std
        return xn - self.drift.offset32 if self.drift.active else xn

    def channel_errors(self, windows: np.ndarray, *, batch: int = DEFAULT_BATCH) -> np.ndarray:
        """Per-channel statistics [N, 2C] (float64) of raw windows [N, W, C]: the mean
        squared residual (or the likelihood's terms, for a VAE), then the input's roughness
        per channel; NaN rows for windows with non-finite values."""
        return self.window_statistics(windows, batch=batch)[0]

    def window_statistics(self, windows: np.ndarray, *, batch: int = DEFAULT_BATCH
                          ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-channel statistics [N, 2C] (see :meth:`channel_errors`) and the codes
        [N, Z] (None for a model without a code output) of raw windows [N, W, C]."""
        windows = np.asarray(windows)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, len(self.channels)):
            raise ConfigError(f'windows must have shape [N, {self.window}, '
                              f'{len(self.channels)}], got {list(windows.shape)}')
        return window_statistics(self.engine, self.normalize(windows), batch=batch)

    def aggregate(self, channel_errors: np.ndarray, codes: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Aggregate errors [N] and per-channel z [N, C] from per-channel statistics
        [N, 2C] (and the codes [N, Z], for a model with T^2 statistics) of consecutive
        windows; feeds the slow context, so call it in order."""
        slow = None
        if self.slow.windows:
            slow = self.slow.run(window_features(channel_errors))
        t2 = None
        if self.stats_.t2 is not None and codes is not None:
            t2 = self.stats_.t2.t2(codes)
        return aggregate_errors(channel_errors, self.error_kind, self.stats_, slow, t2)

    def top_channels(self, channel_z: np.ndarray, count: int = 3) -> list[tuple[str, float]]:
        """The ``count`` channels that are most unusual in one window, as (name, z)."""
        z = np.asarray(channel_z, dtype=np.float64)
        order = np.argsort(-np.nan_to_num(z, nan=-np.inf), kind='stable')
        return [(self.channels[i], float(z[i])) for i in order[:count]]

    # ------------------------------------------------------------------ scoring

    def step(self, window: np.ndarray) -> Decision:
        """Score one window [W, C] (raw units, oldest row first) and update the flag."""
        return self.decide(np.asarray(window)[None], [self.state])[0]

    def decide(self, windows: np.ndarray, states: list[StreamState]) -> list[Decision]:
        """Score windows [B, W, C] of several streams in one inference call, each against its
        stream's state (in order: a stream may appear twice, its older window first).

        Each decision equals :meth:`step` on its window with that state (to float rounding
        of batched inference: bit for bit at B = 1). A window holding NaN or inf is not
        scored: its flag is up, without touching the state's debouncer. While drift is
        followed, a stream's second window waits for its first (another call), since the first
        may move the offsets the second is scored with.
        """
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3 or len(states) != windows.shape[0]:
            raise ConfigError(f'decide takes windows [B, W, C] and B states, got shape '
                              f'{list(windows.shape)} and {len(states)} states')
        if self._drift['gain'] > 0 and len({id(st) for st in states}) < len(states):
            rounds: dict[int, list[int]] = {}
            seen: dict[int, int] = {}
            for i, st in enumerate(states):
                k = seen[id(st)] = seen.get(id(st), -1) + 1
                rounds.setdefault(k, []).append(i)
            out: list[Decision | None] = [None] * len(states)
            for index in rounds.values():
                for i, d in zip(index, self._decide(windows[index],
                                                    [states[i] for i in index])):
                    out[i] = d
            return out  # type: ignore[return-value]
        return self._decide(windows, states)

    def _decide(self, windows: np.ndarray, states: list[StreamState]) -> list[Decision]:
        """:meth:`decide` for windows of distinct streams."""
        n_ch = len(self.channels)
        finite = np.isfinite(windows).all(axis=(1, 2))
        ch_err = np.full((len(states), 2 * n_ch), np.nan)
        tracking = self._drift['gain'] > 0
        means = None
        codes = np.full((len(states), self.code_size), np.nan, np.float32) \
            if self.code_size else None
        if finite.any():
            rows = slice(None) if finite.all() else finite
            xn = (windows[rows] - self.mean_) * self._inv_std
            if tracking:
                xn = xn - np.stack([st.drift.offset32 for st, ok in zip(states, finite)
                                    if ok])[:, None, :]
            recon, log_var, code = model_outputs(self.engine, xn)
            ch_err[rows] = residual_statistics(recon, xn, log_var)
            if code is not None and codes is not None:
                codes[rows] = code
            if tracking:
                means = np.full((len(states), n_ch), np.nan)
                means[rows] = residual_means(recon, xn)
        slow = None
        if self._slow_windows:
            feats = window_features(ch_err)
            slow = np.stack([st.slow.update(f) for st, f in zip(states, feats)])
        t2 = self.stats_.t2.t2(codes) if self.stats_.t2 is not None and codes is not None \
            else None
        errors, z = aggregate_errors(ch_err, self.error_kind, self.stats_, slow, t2)
        out = []
        level = self._drift['freeze'] * self.threshold_
        for i, state in enumerate(states):
            before = state.flag
            if not finite[i]:
                state.drift.observe(None, None)
                state.flag = True
                out.append(Decision(math.nan, True, not before, math.nan,
                                    np.full(n_ch, np.nan), valid=False,
                                    code=None if codes is None else codes[i].copy()))
                continue
            if means is not None:
                state.drift.observe(means[i], z[i] >= level)
            error = float(errors[i])
            score = error / self.threshold_
            flag = state.debouncer.update(score) or not math.isfinite(score)
            state.flag = flag
            out.append(Decision(score, flag, flag and not before, error, z[i],
                                code=None if codes is None else codes[i].copy()))
        return out

    def score_windows(self, windows: np.ndarray, *, batch: int = DEFAULT_BATCH,
                      progress: bool | None = None) -> BatchScores:
        """Score many consecutive windows [N, W, C] in batches, then debounce them in order.

        Gives the same scores (to float rounding of batched inference) and the same flags
        as calling :meth:`step` on each window in turn; the flag state carries over.
        """
        windows = np.asarray(windows)
        if self.drift.active:
            return self._score_tracking(windows, batch=batch, progress=progress)
        if progress and len(windows) > batch:
            from encdec_ros.progress import progress as bar
            parts, code_parts = [], []
            for lo in bar(range(0, len(windows), batch), total=-(-len(windows) // batch),
                          desc='scoring', unit='batch', enable=True):
                part, code = self.window_statistics(windows[lo:lo + batch], batch=batch)
                parts.append(part)
                code_parts.append(code)
            ch_err = np.concatenate(parts) if parts else \
                np.zeros((0, 2 * len(self.channels)))
            codes = np.concatenate(code_parts) if self.code_size and code_parts else None
        else:
            ch_err, codes = self.window_statistics(windows, batch=batch)
        errors, z = self.aggregate(ch_err, codes)
        scores = errors / self.threshold_
        flags = self.debouncer.run(scores) | ~np.isfinite(scores)
        if len(flags):
            self.state.flag = bool(flags[-1])
        return BatchScores(scores, flags, errors, ch_err, z, codes)

    def _score_tracking(self, windows: np.ndarray, *, batch: int,
                        progress: bool | None) -> BatchScores:
        """:meth:`score_windows` while following drift: the windows go to the model in chunks
        that end where the offsets change, so that every window sees the offsets the live
        node would have used."""
        from encdec_ros.progress import progress as bar

        n, c = len(windows), len(self.channels)
        if windows.ndim != 3 or windows.shape[1:] != (self.window, c):
            raise ConfigError(f'windows must have shape [N, {self.window}, {c}], got '
                              f'{list(windows.shape)}')
        ch_err = np.full((n, 2 * c), np.nan)
        errors, z = np.full(n, np.nan), np.full((n, c), np.nan)
        codes = np.full((n, self.code_size), np.nan, np.float32) if self.code_size else None
        edges = [0, *range(min(n, self.drift.until_update()), n, self.drift.every), n]
        chunks = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
        for lo, hi in bar(chunks, total=len(chunks), desc='scoring', unit='chunk',
                          enable=bool(progress and n > batch), min_total=0):
            xn = self.normalize(windows[lo:hi])
            ok = np.flatnonzero(np.isfinite(xn).all(axis=(1, 2)))
            means = np.full((hi - lo, c), np.nan)
            for a in range(0, ok.size, batch):
                part = ok[a:a + batch]
                recon, log_var, code = model_outputs(self.engine, xn[part])
                ch_err[lo + part] = residual_statistics(recon, xn[part], log_var)
                means[part] = residual_means(recon, xn[part])
                if codes is not None and code is not None:
                    codes[lo + part] = code
            errors[lo:hi], z[lo:hi] = self.aggregate(
                ch_err[lo:hi], None if codes is None else codes[lo:hi])
            level = self.drift.freeze * self.threshold_
            for i in range(hi - lo):
                if np.isfinite(means[i]).all():
                    self.drift.observe(means[i], z[lo + i] >= level)
                else:
                    self.drift.observe(None, None)
        scores = errors / self.threshold_
        flags = self.debouncer.run(scores) | ~np.isfinite(scores)
        if len(flags):
            self.state.flag = bool(flags[-1])
        return BatchScores(scores, flags, errors, ch_err, z, codes)

    def reset(self) -> None:
        """Lower the flag and forget past scores and the drift followed (e.g. before another
        recording)."""
        self.state.reset()

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
            'likelihood': self.likelihood,
            'code_size': self.code_size,
            't2': self.stats_.t2 is not None,
            'slow_context_s': self.slow_context_s,
            'drift_s': self.drift_s if self.drift.active else 0.0,
            'threshold': self.threshold_,
            'debounce': {'k': d.k, 'n': d.n, 'release': d.release},
        }


class DriftTracker:
    """Follow the slow drift of each channel's level, as the model's own residual shows it.

    A warm-up, a worn sensor's bias or a new operating point shift a channel's level slowly.
    The scorer subtracts :attr:`offset` (normalised units) from each channel before the model
    sees the window, and after every ``every`` decisions moves it by ``gain`` times the mean
    signed residual (input minus reconstruction) of the channels that looked normal in them:
    an integrator that removes, with a time constant of ``every / gain`` decisions, whatever
    level the model cannot explain. A channel whose unusualness reaches ``freeze`` (relative
    to the threshold) is held, so that a fault is not learnt away; after ``accept``
    consecutive unusual decisions it is followed again (a lasting change is taken as the new
    normal rather than flagged for ever).

    Args:
        channels: Number of channels.
        gain: Share of the mean residual removed per update (0: off).
        every: Decisions between updates (the windows in between are scored with the same
            offsets, so the batched evaluation and the live node agree bit for bit).
        freeze: Unusualness, as a fraction of the threshold, from which a channel is held.
        accept: Consecutive unusual decisions after which a held channel is followed again
            (0: never).
    """

    def __init__(self, channels: int, *, gain: float = 0.0, every: int = 1,
                 freeze: float = 0.5, accept: int = 0) -> None:
        self.gain, self.every, self.freeze, self.accept = float(gain), int(every), \
            float(freeze), int(accept)
        self.offset = np.zeros(channels, dtype=np.float64)
        self.offset32 = np.zeros(channels, dtype=np.float32)
        self._sum = np.zeros(channels, dtype=np.float64)
        self._count = np.zeros(channels, dtype=np.int64)
        self._held = np.zeros(channels, dtype=np.int64)
        self._seen = 0

    @property
    def active(self) -> bool:
        """True when the tracker follows drift at all."""
        return self.gain > 0

    def until_update(self) -> int:
        """Decisions left before the offsets next change."""
        return self.every - self._seen % self.every

    def observe(self, residual_mean: np.ndarray | None, unusual: np.ndarray | None) -> None:
        """One decision: its per-channel mean residual (input minus reconstruction,
        normalised; None for a window that was not scored) and which channels were unusual."""
        if residual_mean is not None and unusual is not None:
            self._held = np.where(unusual, self._held + 1, 0)
            use = ~unusual
            if self.accept:
                use |= self._held > self.accept
            self._sum += np.where(use, residual_mean, 0.0)
            self._count += use
        self._seen += 1
        if self._seen % self.every == 0:
            have = self._count > 0
            step = np.where(have, self._sum / np.maximum(self._count, 1), 0.0)
            self.offset += self.gain * step
            self.offset32 = self.offset.astype(np.float32)
            self._sum[:] = 0.0
            self._count[:] = 0

    def reset(self) -> None:
        """Forget the drift followed so far."""
        self.offset[:] = 0.0
        self.offset32[:] = 0.0
        self._sum[:] = 0.0
        self._count[:] = 0
        self._held[:] = 0
        self._seen = 0


COV_SHRINK = 0.5
"""Weight of the diagonal in the covariance of the log errors ('mahalanobis'): few held-out
windows estimate a full covariance poorly."""
GAUSS_P99 = 2.326
"""The standard normal's 99th percentile: slow features are scaled so that their normal 99th
percentile lands here, level with the single-window z-scores."""
SLOW_MIN_WINDOWS = 5
"""Fewest decisions a slow context may average over."""


@dataclass(frozen=True)
class SlowStats:
    """Normal statistics of the slow context (see the module docstring).

    Attributes:
        windows: L, the decisions averaged (0: no slow context).
        center: [2C] the median of E and D on normal data.
        scale: [2C] how far the 99th percentile lies above the median, divided by
            :data:`GAUSS_P99`.
    """

    windows: int
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, slow: np.ndarray, windows: int, *, min_scale: float = 1e-3) -> 'SlowStats':
        """Fit from slow-context means [N, 2C] of normal data (rows with NaN ignored)."""
        slow = np.asarray(slow, dtype=np.float64)
        slow = slow[np.isfinite(slow).all(axis=1)]
        center = np.median(slow, axis=0)
        far = np.quantile(slow - center, 0.99, axis=0)
        return cls(int(windows), center, np.maximum(far, min_scale) / GAUSS_P99)

    def z(self, slow: np.ndarray) -> np.ndarray:
        """Per-channel slow z [N, C] (NaN where the context is not yet full)."""
        dev = (np.asarray(slow, dtype=np.float64) - self.center) / self.scale
        c = dev.shape[1] // 2
        return np.maximum(dev[:, :c], dev[:, c:])


class SlowContext:
    """The running mean of per-window features over the last ``windows`` valid decisions.

    :meth:`update` gives NaN until ``windows`` values were seen; a window that could not be
    scored (NaN features) leaves the context as it was.
    """

    def __init__(self, windows: int, width: int) -> None:
        self.windows = int(windows)
        self._ring = np.zeros((max(self.windows, 1), width), dtype=np.float64)
        self._count = 0
        self._nan = np.full(width, np.nan)
        self._nan.setflags(write=False)      # returned while unarmed: shared, so read-only

    def update(self, features: np.ndarray) -> np.ndarray:
        """Add one window's features [width]; return the running mean (or NaN)."""
        if self.windows < 1:
            return self._nan
        if np.isfinite(features).all():
            self._ring[self._count % self.windows] = features
            self._count += 1
        if self._count < self.windows:
            return self._nan
        return self._ring.mean(axis=0)

    def run(self, features: np.ndarray) -> np.ndarray:
        """Feed many windows' features [N, width] in order; the running mean after each."""
        out = np.empty((len(features), self._ring.shape[1]), dtype=np.float64)
        for i, row in enumerate(np.asarray(features, dtype=np.float64)):
            out[i] = self.update(row)
        return out

    def reset(self) -> None:
        """Forget every window seen."""
        self._count = 0


@dataclass(frozen=True)
class ChannelStats:
    """Normal statistics of each channel's residual, from held-out normal data.

    Attributes:
        log_mean: [C] mean of log(e_c + eps), e_c the mean squared residual.
        log_std: [C] standard deviation of log(e_c + eps).
        rough_log_mean: [C] mean of log(d_c + eps), d_c the input's roughness.
        rough_log_std: [C] standard deviation of log(d_c + eps).
        slow: The slow context's statistics, or None for a model without one.
        precision: [C, C] inverse of the covariance of log(e + eps), shrunk halfway to its
            diagonal (for the 'mahalanobis' error), or None.
    """

    log_mean: np.ndarray
    log_std: np.ndarray
    rough_log_mean: np.ndarray
    rough_log_std: np.ndarray
    slow: SlowStats | None = None
    precision: np.ndarray | None = None
    t2: 'T2Stats | None' = None

    @classmethod
    def fit(cls, channel_errors: np.ndarray, *, min_std: float = 1e-3) -> 'ChannelStats':
        """Fit the single-window statistics from per-channel errors [N, 2C] of normal windows
        (NaN rows ignored); see :meth:`with_slow` for the slow context."""
        u = window_features(channel_errors)
        u = u[np.isfinite(u).all(axis=1)]
        c = u.shape[1] // 2
        mean, std = u.mean(axis=0), np.maximum(u.std(axis=0), min_std)
        level = u[:, :c]
        cov = np.cov(level, rowvar=False).reshape(c, c) if len(level) > 1 else np.eye(c)
        cov = COV_SHRINK * np.diag(std[:c] ** 2) + (1 - COV_SHRINK) * cov
        return cls(mean[:c], std[:c], mean[c:], std[c:], precision=np.linalg.inv(cov))

    def with_slow(self, slow: SlowStats | None) -> 'ChannelStats':
        """A copy with the slow context's statistics."""
        return dataclasses.replace(self, slow=slow)

    def with_t2(self, t2: 'T2Stats | None') -> 'ChannelStats':
        """A copy with Hotelling T^2 statistics of the code."""
        return dataclasses.replace(self, t2=t2)

    def to_dict(self) -> dict[str, Any]:
        """Plain arrays for model.yaml."""
        out: dict[str, Any] = {'log_mean': self.log_mean, 'log_std': self.log_std,
                               'rough_log_mean': self.rough_log_mean,
                               'rough_log_std': self.rough_log_std,
                               'slow_windows': self.slow.windows if self.slow else 0}
        if self.slow:
            out['slow_center'] = self.slow.center
            out['slow_scale'] = self.slow.scale
        if self.precision is not None:
            out['precision'] = [list(row) for row in self.precision]
        return out


@dataclass(frozen=True)
class T2Stats:
    """Hotelling's T^2 of the code and its normal statistics (PCA's T^2 + Q).

    Attributes:
        center: [Z] the code's centre.
        scale: [Z] the code's scale (PCA: the square roots of the eigenvalues).
        log_mean: Mean of log(T^2 + eps) on held-out normal windows.
        log_std: Its standard deviation.
    """

    center: np.ndarray
    scale: np.ndarray
    log_mean: float = 0.0
    log_std: float = 1.0

    def t2(self, codes: np.ndarray) -> np.ndarray:
        """T^2 [N] of codes [N, Z] (NaN rows give NaN)."""
        d = (np.atleast_2d(np.asarray(codes, dtype=np.float64)) - self.center) / self.scale
        return np.sum(d * d, axis=1)

    def z(self, t2: np.ndarray) -> np.ndarray:
        """How unusual each T^2 is, standardised like a channel's log error."""
        return (np.log(np.asarray(t2, dtype=np.float64) + LOG_EPS) - self.log_mean) / \
            self.log_std

    def fitted(self, t2: np.ndarray, *, min_std: float = 1e-3) -> 'T2Stats':
        """A copy with log_mean / log_std fitted on T^2 of normal windows (NaN ignored)."""
        u = np.log(np.asarray(t2, dtype=np.float64) + LOG_EPS)
        u = u[np.isfinite(u)]
        return dataclasses.replace(self, log_mean=float(u.mean()),
                                   log_std=float(max(u.std(), min_std)))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for model.yaml's ``score.t2``."""
        return {'center': self.center, 'scale': self.scale, 'log_mean': self.log_mean,
                'log_std': self.log_std}

    @classmethod
    def from_dict(cls, data: Any, size: int, where: Any) -> 'T2Stats':
        """Read ``score.t2`` of a model.yaml; refuse it in one sentence when malformed."""
        try:
            center = np.asarray(data['center'], dtype=np.float64)
            scale = np.asarray(data['scale'], dtype=np.float64)
            log_mean, log_std = float(data['log_mean']), float(data['log_std'])
        except (TypeError, KeyError, ValueError):
            raise ModelDirError(f'score.t2 in {where} needs center, scale, log_mean and '
                                'log_std; re-train the model') from None
        if center.shape != (size,) or scale.shape != (size,) or not (scale > 0).all() or \
                not (log_std > 0 and math.isfinite(log_mean)) or \
                not np.isfinite(center).all():
            raise ModelDirError(f'score.t2 in {where} must hold {size} finite centres and '
                                'positive scales (one per code unit) and a positive log_std; '
                                're-train the model')
        return cls(center, scale, log_mean, log_std)


def window_features(channel_errors: np.ndarray) -> np.ndarray:
    """Per-window features [N, 2C] from per-channel statistics [N, 2C]: log e, log d."""
    return np.log(np.atleast_2d(np.asarray(channel_errors, dtype=np.float64)) + LOG_EPS)


def aggregate_errors(channel_errors: np.ndarray, kind: str, stats: ChannelStats,
                     slow: np.ndarray | None = None, t2: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate per-channel errors [N, 2C] into one error per window [N]; also return how
    unusual each channel is [N, C].

    ``slow`` holds the slow context's running means [N, 2C] (:class:`SlowContext`); it is used
    with the 'channel_max' kinds when ``stats`` has slow statistics. ``t2`` holds Hotelling's
    T^2 of each window's code [N]; with the 'channel_max' kinds and T^2 statistics in
    ``stats`` its z joins the maximum (it names no channel, so ``z`` is unchanged). Shared by
    the scorer and by threshold calibration in training, so both compute the same number.
    Rows with NaN give NaN.
    """
    ch = np.atleast_2d(np.asarray(channel_errors, dtype=np.float64))
    u = window_features(ch)
    c = ch.shape[1] // 2
    z = (u[:, :c] - stats.log_mean) / stats.log_std
    if kind == 'channel_max_flat':
        flat = (stats.rough_log_mean - u[:, c:]) / stats.rough_log_std
        z = np.maximum(z, flat)
    if kind == 'mse':
        return ch[:, :c].mean(axis=1), z
    if kind not in ERROR_KINDS:
        raise ConfigError(f'error kind {kind!r} is not one of {", ".join(ERROR_KINDS)}')
    joint = None
    if kind == 'mahalanobis':
        if stats.precision is None:
            raise ModelDirError('the model has no channel_errors.precision, which the '
                                'mahalanobis error needs; re-train the model')
        dev = u[:, :c] - stats.log_mean
        joint = chi2_as_normal(np.einsum('ij,jk,ik->i', dev, stats.precision, dev), c)
        others = (stats.rough_log_mean - u[:, c:]) / stats.rough_log_std
        z = np.maximum(z, others)
    if slow is not None and stats.slow is not None:
        zs = stats.slow.z(slow)
        z = np.where(np.isnan(z), z, np.fmax(z, zs))   # an unscored window stays NaN
        if joint is not None:
            others = np.where(np.isnan(others), others, np.fmax(others, zs))
    if joint is not None:
        # a row with any NaN stays NaN (the callers flag it as a fault); an infinite error
        # makes the row +inf even where the joint distance came out NaN (inf - inf)
        error = np.fmax(joint, others.max(axis=1))
        error[np.isinf(u[:, :c]).any(axis=1) & ~np.isnan(ch).any(axis=1)] = np.inf
        error[np.isnan(ch).any(axis=1)] = np.nan
    else:
        error = z.max(axis=1)
    if t2 is not None and stats.t2 is not None:
        error = np.maximum(error, stats.t2.z(t2))      # NaN stays NaN
    return error, z


def chi2_as_normal(d2: np.ndarray, dof: int) -> np.ndarray:
    """The standard normal quantile with the same upper tail as ``d2`` under a chi-square of
    ``dof`` degrees of freedom (Wilson-Hilferty cube-root approximation; no scipy)."""
    k = float(dof)
    v = 2.0 / (9.0 * k)
    return (np.cbrt(np.maximum(d2, 0.0) / k) - (1.0 - v)) / math.sqrt(v)


def residual_statistics(recon: np.ndarray, normalized: np.ndarray,
                        log_var: np.ndarray | None = None) -> np.ndarray:
    """Per-channel [N, 2C]: the mean squared residual, then the roughness of the input (mean
    squared step between samples, which vanishes when a channel is stuck or frozen).

    With ``log_var`` (the decoder's log-variance [N, W, C], a VAE) the level is the mean
    squared standardised residual r^2 / s^2 times the geometric mean of s: its log holds
    both terms of the Gaussian negative log-likelihood, the residual's in log as for every
    other error. (The NLL itself is linear in r^2 / s^2; its tail on held-out normal data was
    so heavy that the calibrated threshold rose above what a stuck channel reaches.)"""
    x = normalized.astype(np.float64)
    r = recon.astype(np.float64) - x
    if log_var is None:
        level = np.mean(r * r, axis=1)
    else:
        lv = log_var.astype(np.float64)
        level = np.exp(0.5 * np.mean(lv, axis=1)) * np.mean(r * r * np.exp(-lv), axis=1)
    step = np.diff(x, axis=1)
    rough = np.mean(step * step, axis=1) if step.shape[1] else np.zeros_like(level)
    return np.concatenate([level, rough], axis=1)


def residual_means(recon: np.ndarray, normalized: np.ndarray) -> np.ndarray:
    """Per-channel mean of input minus reconstruction over each window [N, C] (the level the
    model could not explain; what :class:`DriftTracker` follows)."""
    return (normalized.astype(np.float64) - recon.astype(np.float64)).mean(axis=1)


def model_outputs(engine: Any, normalized: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One inference: (reconstruction, log-variance or None, code or None), found by name
    (``x_hat``, ``log_var``, ``code``); a single-output model's output is its reconstruction."""
    names = engine.output_names
    if len(names) == 1:
        return engine.run(normalized), None, None
    out = engine.run_many({engine.input_names[0]: normalized})
    recon = out['x_hat'] if 'x_hat' in out else out[names[0]]
    return recon, out.get('log_var'), out.get('code')


def window_statistics(engine: Any, normalized: np.ndarray, *, batch: int = DEFAULT_BATCH
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-channel statistics [N, 2C] (see :func:`residual_statistics`) and codes [N, Z]
    (None for a model without a code output) of normalised windows [N, W, C] run through
    ``engine`` in batches; rows of non-finite windows are NaN.

    Shared by the scorer and by threshold calibration in training.
    """
    normalized = np.asarray(normalized, dtype=np.float32)
    n, _, c = normalized.shape
    out = np.full((n, 2 * c), np.nan, dtype=np.float64)
    codes = None
    idx = np.flatnonzero(np.isfinite(normalized).all(axis=(1, 2)))
    for lo in range(0, idx.size, batch):
        part = idx[lo:lo + batch]
        xn = normalized[part]
        recon, log_var, code = model_outputs(engine, xn)
        out[part] = residual_statistics(recon, xn, log_var)
        if code is not None:
            if codes is None:
                codes = np.full((n, code.shape[1]), np.nan, dtype=np.float32)
            codes[part] = code
    if codes is None and 'code' in engine.output_names:
        dims = engine.output_shapes[engine.output_names.index('code')]
        codes = np.full((n, int(dims[1] or 0)), np.nan, dtype=np.float32)
    return out, codes


def reconstruction_errors(engine: Any, normalized: np.ndarray, *,
                          batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Per-channel statistics [N, 2C] of normalised windows (:func:`window_statistics`
    without the codes)."""
    return window_statistics(engine, normalized, batch=batch)[0]


def _vector(model: ModelDir, name: str, size: int, dtype: Any = np.float32) -> np.ndarray:
    arr = model.array(name, dtype=dtype)
    if arr.shape != (size,) or not np.isfinite(arr).all():
        raise ModelDirError(f'{name} in {model.path / "model.yaml"} must hold {size} finite '
                            f'numbers (one per channel), got shape {list(arr.shape)}; '
                            're-train the model')
    return arr
