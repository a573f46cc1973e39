"""Streaming denoisers for one topic: the learned model and the classical causal filters.

Every denoiser works on ONE topic at its native rate, one message at a time, and estimates
the clean *current* sample from the samples seen so far (causal, so usable online):

- ``model``: the exported denoising autoencoder (ONNX). It sees the last ``window`` samples
  (the first sample is repeated until that many have arrived) and returns the clean
  current sample; normalisation and residual are inside the ONNX graph.
- ``butterworth``: a causal Butterworth low-pass per channel (order and cut-off per
  channel), second-order sections in transposed direct form II, so it runs sample by sample
  exactly as ``scipy.signal.sosfilt`` does on a whole array.
- ``one_euro``: the 1-Euro filter (Casiez et al., CHI 2012): a first-order low-pass whose
  cut-off rises with the signal's speed, ``min_cutoff + beta * |dx/dt|``.
- ``kalman``: a constant-velocity Kalman filter per channel (state: value and rate; white
  acceleration of spectral density ``q``; measurement variance ``r``).

Each class has :meth:`Denoiser.step` (one sample, what the node calls per message) and
:meth:`Denoiser.run` (many samples, what ``encdec eval denoise`` calls); ``run`` gives the
same numbers as calling ``step`` on each row (tests/test_denoise.py proves it). A
non-finite input value is replaced by the channel's last finite value inside the filter
(counted in ``nonfinite_``), so one NaN does not poison a filter's state.

:class:`DenoiseCore` binds a denoiser to the spec's fields: it extracts the numbers from a
message, denoises them and writes them back in place
(:func:`~encdec_ros.io.fields.compile_setter`), leaving every other field as it was. Two rules
keep it honest: a NaN or infinite input value is passed on as it came (a dead sensor is a
fault that the consumer must see, not a value to make up), and where the topic's stamps jump
back or stop for more than :data:`RESTART_PERIODS` periods (the time model of
:mod:`encdec_ros.io.align`), the denoiser starts again from the next sample instead of
running on stale state. The tuning functions pick the baselines' parameters on validation
data (at training time).
This module never imports torch; scipy is used to design the Butterworth filters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from encdec_ros.errors import ConfigError, ModelDirError, SpecError
from encdec_ros.io.align import TopicClock
from encdec_ros.io.fields import ShortMessageError, compile_path, compile_setter
from encdec_ros.io.spec import SignalSpec

METHODS: tuple[str, ...] = ('model', 'butterworth', 'one_euro', 'kalman')
BASELINES: tuple[str, ...] = ('butterworth', 'one_euro', 'kalman')
RUN_BATCH = 1024
"""Windows per ONNX call in :meth:`ModelDenoiser.run`."""
RESTART_PERIODS = 10
"""A gap in the stamps longer than this many periods of the topic restarts the denoiser."""


def default_params(method: str, rate_hz: float) -> dict[str, float]:
    """Untuned parameters of a baseline, used when no model directory provides tuned ones.

    Each default is a low-pass of about a tenth of the sample rate: a Butterworth of order 2
    at ``rate/10``, a 1-Euro filter with ``min_cutoff = rate/10`` and no speed term, and a
    Kalman filter whose ``q/r`` gives a bandwidth of about ``rate/10`` (only the ratio
    matters for the estimate).
    """
    fc = rate_hz / 10.0
    if method == 'butterworth':
        return {'order': 2, 'cutoff_hz': fc}
    if method == 'one_euro':
        return {'min_cutoff': fc, 'beta': 0.0, 'd_cutoff': 1.0}
    if method == 'kalman':
        return {'q': kalman_q_for(fc, rate_hz, 1.0), 'r': 1.0}
    raise ConfigError(f'method {method!r} has no default parameters; use one of '
                      f'{", ".join(BASELINES)}')


def kalman_q_for(bandwidth_hz: float, rate_hz: float, r: float) -> float:
    """The process noise ``q`` giving a constant-velocity filter about this bandwidth.

    The steady-state filter is a second-order system of natural frequency
    ``(q / (r / rate))**0.25``, so ``q = r / rate * (2 pi f)**4``.
    """
    return float(r / rate_hz * (2.0 * math.pi * bandwidth_hz) ** 4)


def _per_channel(value: Any, channels: int, name: str, *, positive: bool = True,
                 allow_zero: bool = False) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(channels, float(arr))
    if arr.shape != (channels,):
        raise ConfigError(f'{name} must be one number or one per channel ({channels}), got '
                          f'{arr.size} values')
    ok = np.isfinite(arr) & ((arr >= 0) if allow_zero else (arr > 0) if positive else True)
    if not ok.all():
        kind = 'non-negative' if allow_zero else 'positive'
        raise ConfigError(f'{name} must be finite and {kind}, got {arr.tolist()}')
    return arr


# --------------------------------------------------------------------------- base


class Denoiser:
    """Base of the streaming denoisers: per-sample :meth:`step` and batched :meth:`run`.

    Args:
        channels: Numbers per sample.
        rate_hz: The topic's nominal sample rate (filter design, lag in ms).
    """

    method = ''

    def __init__(self, channels: int, rate_hz: float) -> None:
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f'a denoiser needs at least one channel, got {channels!r}')
        if not (isinstance(rate_hz, (int, float)) and math.isfinite(rate_hz) and rate_hz > 0):
            raise ConfigError(f'rate_hz must be a positive number of samples per second, got '
                              f'{rate_hz!r}')
        self.channels = channels
        self.rate_hz = float(rate_hz)
        self.nonfinite_ = 0
        self._last_good = np.zeros(channels)
        self.samples_ = 0

    # ------------------------------------------------------------------ public
    def reset(self) -> None:
        """Forget every past sample (the next one starts afresh)."""
        self.nonfinite_ = 0
        self.samples_ = 0
        self._last_good = np.zeros(self.channels)
        self._reset()

    def restart(self) -> None:
        """Forget the past samples but keep the counters (after a gap or a jump in time)."""
        self._reset()

    def step(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Denoise one sample; return the estimate of the clean current sample (float64)."""
        x = np.array(values, dtype=np.float64)
        if x.shape != (self.channels,):
            raise ConfigError(f'expected {self.channels} numbers per sample, got {x.size}; '
                              'check that the message matches the spec')
        finite = np.isfinite(x)
        if not finite.all():
            self.nonfinite_ += int((~finite).sum())
            x = np.where(finite, x, self._last_good)
        self._last_good = x
        self.samples_ += 1
        return self._step(x)

    def run(self, values: np.ndarray) -> np.ndarray:
        """Denoise many samples in order; equal to :meth:`step` on each row. Returns [n, C]."""
        x = np.array(values, dtype=np.float64, copy=True)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ConfigError(f'expected samples [n, {self.channels}], got shape '
                              f'{list(x.shape)}')
        if x.shape[0] == 0:
            return np.zeros((0, self.channels))
        bad = ~np.isfinite(x)
        if bad.any():
            self.nonfinite_ += int(bad.sum())
            x = _forward_fill(x, bad, self._last_good)
        self._last_good = x[-1].copy()
        self.samples_ += x.shape[0]
        return self._run(x)

    def params(self) -> dict[str, Any]:
        """The parameters in plain types (what a model directory stores)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Method, provider and parameters, for diagnostics and reports."""
        return {'method': self.method, 'provider': 'numpy', **self.params()}

    # ------------------------------------------------------------------ subclasses
    def _reset(self) -> None:
        raise NotImplementedError

    def _step(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = self._step(x[i])
        return out


def _forward_fill(x: np.ndarray, bad: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Replace flagged entries by the last good value of their column (``first`` before)."""
    n = x.shape[0]
    idx = np.where(bad, -1, np.arange(n)[:, None])
    idx = np.maximum.accumulate(idx, axis=0)
    padded = np.vstack([first[None, :], x])
    return np.take_along_axis(padded, idx + 1, axis=0)


# --------------------------------------------------------------------------- Butterworth


class ButterworthDenoiser(Denoiser):
    """Causal Butterworth low-pass per channel, run as second-order sections.

    The state starts at the steady state of the first sample (no start-up transient).

    Args:
        channels: Numbers per sample.
        rate_hz: Sample rate in Hz.
        order: Filter order, 1 to 8 (one, or one per channel).
        cutoff_hz: -3 dB cut-off in Hz, below the Nyquist frequency (one, or per channel).
    """

    method = 'butterworth'

    def __init__(self, channels: int, rate_hz: float, *, order: Any = 2,
                 cutoff_hz: Any = None) -> None:
        super().__init__(channels, rate_hz)
        from scipy.signal import butter, sosfilt_zi

        if cutoff_hz is None:
            cutoff_hz = rate_hz / 10.0
        orders = _per_channel(order, channels, 'butterworth order')
        if not np.all((orders == np.round(orders)) & (orders >= 1) & (orders <= 8)):
            raise ConfigError(f'butterworth order must be a whole number from 1 to 8, got '
                              f'{orders.tolist()}')
        cutoffs = _per_channel(cutoff_hz, channels, 'butterworth cutoff_hz')
        nyquist = rate_hz / 2.0
        if np.any(cutoffs >= nyquist):
            raise ConfigError(f'butterworth cutoff_hz must be below the Nyquist frequency '
                              f'({nyquist:g} Hz at {rate_hz:g} Hz), got {cutoffs.max():g}')
        self.order_ = orders.astype(int)
        self.cutoff_hz_ = cutoffs
        sections = int(math.ceil(self.order_.max() / 2))
        sos = np.tile(np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]), (sections, channels, 1))
        zi = np.zeros((sections, channels, 2))
        for c in range(channels):
            own = butter(int(self.order_[c]), float(cutoffs[c]), fs=rate_hz, output='sos')
            sos[:len(own), c] = own
            zi[:, c] = sosfilt_zi(np.ascontiguousarray(sos[:, c]))
        self._sos = sos                        # [S, C, 6]
        self._zi_unit = zi                     # [S, C, 2], steady state for a unit input
        self._b0, self._b1, self._b2 = sos[..., 0], sos[..., 1], sos[..., 2]
        self._a1, self._a2 = sos[..., 4], sos[..., 5]
        self._z: np.ndarray | None = None

    def params(self) -> dict[str, Any]:
        return {'order': self.order_.tolist(), 'cutoff_hz': self.cutoff_hz_.tolist()}

    def _reset(self) -> None:
        self._z = None

    def _step(self, x: np.ndarray) -> np.ndarray:
        z = self._z
        if z is None:
            z = self._z = self._zi_unit * x[None, :, None]
        y = x
        for s in range(z.shape[0]):
            out = self._b0[s] * y + z[s, :, 0]
            z[s, :, 0] = self._b1[s] * y - self._a1[s] * out + z[s, :, 1]
            z[s, :, 1] = self._b2[s] * y - self._a2[s] * out
            y = out
        return y

    def _run(self, x: np.ndarray) -> np.ndarray:
        from scipy.signal import sosfilt

        if self._z is None:
            self._z = self._zi_unit * x[0][None, :, None]
        out = np.empty_like(x)
        for c in range(self.channels):
            out[:, c], zf = sosfilt(np.ascontiguousarray(self._sos[:, c]),
                                    np.ascontiguousarray(x[:, c]),
                                    zi=np.ascontiguousarray(self._z[:, c]))
            self._z[:, c] = zf
        return out


# --------------------------------------------------------------------------- 1-Euro


def _alpha(cutoff: np.ndarray, rate_hz: float) -> np.ndarray:
    """Smoothing factor of a first-order low-pass at ``cutoff`` Hz sampled at ``rate_hz``."""
    return 1.0 / (1.0 + rate_hz / (2.0 * math.pi * cutoff))


class OneEuroDenoiser(Denoiser):
    """The 1-Euro filter per channel.

    Args:
        channels: Numbers per sample.
        rate_hz: Sample rate in Hz (the filter assumes this period between samples).
        min_cutoff: Cut-off in Hz when the signal is still.
        beta: Cut-off increase per unit of speed (Hz per signal unit per second).
        d_cutoff: Cut-off in Hz of the speed estimate.
    """

    method = 'one_euro'

    def __init__(self, channels: int, rate_hz: float, *, min_cutoff: Any = None,
                 beta: Any = 0.0, d_cutoff: Any = 1.0) -> None:
        super().__init__(channels, rate_hz)
        if min_cutoff is None:
            min_cutoff = rate_hz / 10.0
        self.min_cutoff_ = _per_channel(min_cutoff, channels, 'one_euro min_cutoff')
        self.beta_ = _per_channel(beta, channels, 'one_euro beta', allow_zero=True)
        self.d_cutoff_ = _per_channel(d_cutoff, channels, 'one_euro d_cutoff')
        self._a_d = _alpha(self.d_cutoff_, self.rate_hz)
        self._x: np.ndarray | None = None
        self._dx = np.zeros(channels)

    def params(self) -> dict[str, Any]:
        return {'min_cutoff': self.min_cutoff_.tolist(), 'beta': self.beta_.tolist(),
                'd_cutoff': self.d_cutoff_.tolist()}

    def _reset(self) -> None:
        self._x = None
        self._dx = np.zeros(self.channels)

    def _step(self, x: np.ndarray) -> np.ndarray:
        if self._x is None:
            self._x = x.copy()
            return x.copy()
        self._x, self._dx = _one_euro_kernel(x, self._x, self._dx, self.rate_hz, self._a_d,
                                             self.min_cutoff_, self.beta_)
        return self._x


def _one_euro_kernel(x: np.ndarray, x_hat: np.ndarray, dx_hat: np.ndarray, rate_hz: float,
                     a_d: np.ndarray, min_cutoff: np.ndarray, beta: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One 1-Euro update (broadcasting over any leading shape): new (x_hat, dx_hat)."""
    dx = (x - x_hat) * rate_hz
    dx_hat = dx_hat + a_d * (dx - dx_hat)
    a = _alpha(min_cutoff + beta * np.abs(dx_hat), rate_hz)
    return x_hat + a * (x - x_hat), dx_hat


# --------------------------------------------------------------------------- Kalman


class KalmanDenoiser(Denoiser):
    """Constant-velocity Kalman filter per channel.

    Args:
        channels: Numbers per sample.
        rate_hz: Sample rate in Hz (the model's time step is ``1 / rate_hz``).
        q: Spectral density of the white acceleration, in units²/s³ (one or per channel).
        r: Measurement noise variance in units² (one or per channel).
    """

    method = 'kalman'

    def __init__(self, channels: int, rate_hz: float, *, q: Any = None, r: Any = 1.0) -> None:
        super().__init__(channels, rate_hz)
        self.r_ = _per_channel(r, channels, 'kalman r')
        if q is None:
            q = self.r_ / rate_hz * (2.0 * math.pi * rate_hz / 10.0) ** 4
        self.q_ = _per_channel(q, channels, 'kalman q')
        self._state: tuple[np.ndarray, ...] | None = None

    def params(self) -> dict[str, Any]:
        return {'q': self.q_.tolist(), 'r': self.r_.tolist()}

    def _reset(self) -> None:
        self._state = None

    def _step(self, x: np.ndarray) -> np.ndarray:
        if self._state is None:
            self._state = _kalman_start(x, self.r_, self.rate_hz)
            return x.copy()
        self._state = _kalman_kernel(x, self._state, self.q_, self.r_, 1.0 / self.rate_hz)
        return self._state[0]


def _kalman_start(x: np.ndarray, r: np.ndarray, rate_hz: float) -> tuple[np.ndarray, ...]:
    """State after the first measurement: value known to ``r``, rate unknown."""
    shape = np.broadcast(x, r).shape
    return (np.broadcast_to(x, shape).copy(), np.zeros(shape), np.broadcast_to(r, shape).copy(),
            np.zeros(shape), np.broadcast_to(2.0 * r * rate_hz ** 2, shape).copy())


def _kalman_kernel(z: np.ndarray, state: tuple[np.ndarray, ...], q: np.ndarray,
                   r: np.ndarray, dt: float) -> tuple[np.ndarray, ...]:
    """Predict and update once (broadcasting over any leading shape)."""
    pos, vel, p00, p01, p11 = state
    pos = pos + dt * vel
    p00 = p00 + dt * (2.0 * p01 + dt * p11) + q * (dt ** 3 / 3.0)
    p01 = p01 + dt * p11 + q * (dt ** 2 / 2.0)
    p11 = p11 + q * dt
    s = p00 + r
    k0, k1 = p00 / s, p01 / s
    innov = z - pos
    pos = pos + k0 * innov
    vel = vel + k1 * innov
    p11 = p11 - k1 * p01
    p01 = (1.0 - k0) * p01
    p00 = (1.0 - k0) * p00
    return pos, vel, p00, p01, p11


# --------------------------------------------------------------------------- model


class ModelDenoiser(Denoiser):
    """The exported denoising model of a model directory, on ONNX Runtime.

    Args:
        model: A loaded :class:`~encdec_ros.modeldir.ModelDir` (task 'denoise') or its path.
        device: 'auto', 'tensorrt', 'cuda' or 'cpu'.
        threads: ONNX Runtime intra-op threads (default: the engine's, 1).
        warmup: Warm the engine up before the first sample.
    """

    method = 'model'

    def __init__(self, model: Any, *, device: str = 'auto', threads: int | None = None,
                 warmup: bool = True) -> None:
        from encdec_ros.modeldir import ModelDir

        if not isinstance(model, ModelDir):
            model = ModelDir.load(model, task='denoise')
        section = model.section('denoise')
        try:
            window, channels = int(section['window']), len(section['channels'])
            rate_hz = float(section['rate_hz'])
        except (KeyError, TypeError, ValueError):
            raise ModelDirError(f'the denoise section of {model.path / "model.yaml"} lacks '
                                'window, channels or rate_hz; re-train the model') from None
        super().__init__(channels, rate_hz)
        self.model = model
        self.window = window
        self.engine = model.engine(device, threads=threads, warmup=warmup)
        shape = tuple(self.engine.input_shapes[0])
        if len(shape) != 3 or shape[1:] != (window, channels):
            raise ModelDirError(f'{model.onnx_path} takes input {list(shape)} but model.yaml '
                                f'says window {window} and {channels} channels; re-export it')
        self.provider = self.engine.provider
        self._buf = np.zeros((2 * window, channels), dtype=np.float32)
        self._pos = 0
        self._count = 0

    def describe(self) -> dict[str, Any]:
        return {'method': self.method, 'provider': self.provider, 'window': self.window,
                'arch': self.model.section('architecture.arch', 'unknown'),
                'model_dir': str(self.model.path)}

    def _reset(self) -> None:
        self._buf[:] = 0.0
        self._pos = 0
        self._count = 0

    def _push(self, x: np.ndarray) -> np.ndarray:
        """Append one sample to the ring (stored twice); return the window ending at it."""
        n = self.window
        if self._count == 0:
            self._buf[:] = x
        i = self._pos
        self._buf[i] = x
        self._buf[i + n] = x
        self._pos = (i + 1) % n
        self._count += 1
        return self._buf[i + 1:i + 1 + n]

    def _step(self, x: np.ndarray) -> np.ndarray:
        window = self._push(x)
        return self.engine.run(window[None]).astype(np.float64)[0]

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = self.window
        xf = x.astype(np.float32)
        if self._count == 0:
            history = np.repeat(xf[:1], n - 1, axis=0)
        else:
            history = self._history()
        full = np.concatenate([history, xf], axis=0)
        windows = np.lib.stride_tricks.sliding_window_view(full, (n, self.channels))[:, 0]
        out = np.empty((x.shape[0], self.channels), dtype=np.float64)
        for a in range(0, x.shape[0], RUN_BATCH):
            out[a:a + RUN_BATCH] = self.engine.run(np.ascontiguousarray(windows[a:a + RUN_BATCH]))
        # Leave the ring as step() would have: the last n samples, the newest last.
        tail = full[-n:]
        self._buf[:n] = tail
        self._buf[n:] = tail
        self._pos = 0
        self._count += x.shape[0]
        return out

    def _history(self) -> np.ndarray:
        """The last ``window - 1`` samples in the ring, oldest first."""
        n = self.window
        i = self._pos
        return self._buf[i + 1:i + n].copy()


# --------------------------------------------------------------------------- factory


def make_baseline(method: str, channels: int, rate_hz: float,
                  params: Mapping[str, Any] | None = None) -> Denoiser:
    """A classical denoiser with the given parameters (defaults for the missing ones)."""
    params = dict(params or {})
    params.pop('rmse', None)
    defaults = default_params(method, rate_hz) if method in BASELINES else {}
    if method not in BASELINES:
        raise ConfigError(f'method {method!r} is not one of {", ".join(METHODS)}')
    unknown = [k for k in params if k not in defaults]
    if unknown:
        raise ConfigError(f'{method} has no parameter {unknown[0]!r}; its parameters are '
                          f'{", ".join(defaults)}')
    merged = {**defaults, **{k: v for k, v in params.items() if v is not None}}
    cls = {'butterworth': ButterworthDenoiser, 'one_euro': OneEuroDenoiser,
           'kalman': KalmanDenoiser}[method]
    return cls(channels, rate_hz, **merged)


class DenoiseCore:
    """One topic's denoiser bound to the spec's fields; the node and eval both use it.

    Args:
        spec: A resolved spec with exactly one topic (its ``rate_hz`` is the topic's rate).
        denoiser: The denoiser to run.
    """

    def __init__(self, spec: SignalSpec, denoiser: Denoiser) -> None:
        spec = one_topic_spec(spec)
        self.spec = spec
        self.topic = spec.topics[0]
        self.denoiser = denoiser
        self.channels: list[str] = spec.channels
        if len(self.channels) != denoiser.channels:
            raise ConfigError(f'the spec yields {len(self.channels)} channels but the '
                              f'{denoiser.method} denoiser takes {denoiser.channels}')
        self._getters = [compile_path(f.path) for f in self.topic.fields]
        self._setters = [compile_setter(f.path) for f in self.topic.fields]
        self._widths = [len(f.path.element_texts()) for f in self.topic.fields]
        self.short_ = 0
        self.nonfinite_messages_ = 0      # messages passed on with NaN / inf in them
        self.bad_channels: list[str] = []  # where the last such message had them
        self.restarts_ = 0                # restarts after gaps or jumps in the stamps
        self._period_ns = int(round(1e9 / spec.rate_hz))
        self.clock = TopicClock(self._period_ns)

    @property
    def method(self) -> str:
        """The denoiser's method name."""
        return self.denoiser.method

    def extract(self, msg: Any) -> np.ndarray:
        """The spec's numbers from one message."""
        row: list[float] = []
        for get in self._getters:
            row.extend(get(msg))
        return np.asarray(row, dtype=np.float64)

    def write(self, msg: Any, values: np.ndarray) -> None:
        """Write the numbers back into the message's fields, in place."""
        at = 0
        for put, width in zip(self._setters, self._widths):
            put(msg, values[at:at + width])
            at += width

    def process(self, msg: Any, stamp_ns: int | None = None) -> bool:
        """Denoise one message in place; False (message untouched) when it is too short.

        With its stamp, a gap or a jump back in time restarts the denoiser first (see the
        module's docstring); NaN or infinite values are passed on where they came.
        """
        try:
            values = self.extract(msg)
        except ShortMessageError:
            self.short_ += 1
            return False
        self.write(msg, self.process_values(values, stamp_ns))
        return True

    def process_values(self, values: np.ndarray, stamp_ns: int | None = None) -> np.ndarray:
        """Denoise one message's numbers [C] (what :meth:`process` does between reading and
        writing the message's fields): the cleaned numbers, NaN and inf where they came."""
        if stamp_ns is not None and self.starts_again(stamp_ns):
            self.denoiser.restart()
        out = self.denoiser.step(values)
        bad = ~np.isfinite(values)
        if bad.any():
            out = np.where(bad, values, out)
            self.nonfinite_messages_ += 1
            self.bad_channels = [c for c, b in zip(self.channels, bad) if b]
        return out

    def reset(self) -> None:
        """Start afresh: the denoiser, the topic's clock and the counts."""
        self.denoiser.reset()
        self.clock = TopicClock(self._period_ns)
        self.short_ = self.nonfinite_messages_ = self.restarts_ = 0
        self.bad_channels = []

    def starts_again(self, stamp_ns: int) -> bool:
        """Give the next stamp to the topic's clock; whether the denoiser must restart before
        this sample: the stamps went forward by more than :data:`RESTART_PERIODS` periods (at
        once, not waiting for the next stamp), or a jump back was confirmed."""
        clock = self.clock
        last = clock.last
        clock.offer(int(stamp_ns))
        events = clock.take_events()
        period = max(clock.cadence.ref_ns or self._period_ns, 1)
        restart = any(kind == 'back' for kind, _, _ in events) or (
            last is not None and clock.pending is not None and
            clock.pending[0] - last > max(RESTART_PERIODS * period, clock.hold_ns))
        self.restarts_ += restart
        return restart

    def run(self, values: np.ndarray, stamps_ns: np.ndarray | None = None) -> np.ndarray:
        """Denoise an array of samples [n, C] (the offline path): the same numbers as
        :meth:`process` on each (restarts where the stamps tell, NaN passed on)."""
        values = np.asarray(values, dtype=np.float64)
        cuts = [0]
        if stamps_ns is not None:
            cuts += [i for i, s in enumerate(np.asarray(stamps_ns, np.int64).tolist())
                     if self.starts_again(s)]
        cuts.append(values.shape[0])
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a > 0:
                self.denoiser.restart()
            parts.append(self.denoiser.run(values[a:b]))
        out = np.vstack(parts) if parts else np.zeros((0, len(self.channels)))
        bad = ~np.isfinite(values)
        if bad.any():
            out[bad] = values[bad]
            self.nonfinite_messages_ += int(bad.any(axis=1).sum())
        return out


def one_topic_spec(spec: SignalSpec) -> SignalSpec:
    """Check that a denoising spec names exactly one topic and is resolved."""
    if len(spec.topics) != 1:
        raise SpecError(f'{spec.source}: a denoising spec names exactly one topic (the one to '
                        f'clean), got {len(spec.topics)}: {", ".join(spec.topic_names)}')
    spec.require_resolved()
    return spec


def resolve_standalone(spec: SignalSpec) -> SignalSpec:
    """Resolve a one-topic spec without a bag, from the standard message definitions."""
    if spec.resolved:
        return one_topic_spec(spec)
    topic = spec.topics[0] if len(spec.topics) == 1 else None
    if topic is None or not topic.type:
        raise SpecError(f'{spec.source}: give the topic\'s type: (e.g. sensor_msgs/msg/Imu) so '
                        'the fields can be checked without a bag')
    from encdec_ros.io.bag import standard_typestore

    store = standard_typestore()
    resolved = spec.bind({topic.name: topic.type}, store.fielddefs, where='the standard types')
    return one_topic_spec(resolved)


def build_core(method: str = 'model', *, model_dir: str | Path | None = None,
               spec: SignalSpec | str | Path | None = None, device: str = 'auto',
               threads: int | None = None, params: Mapping[str, Any] | None = None,
               warmup: bool = True) -> DenoiseCore:
    """Build the core the node and ``encdec eval denoise`` run.

    Args:
        method: 'model', 'butterworth', 'one_euro' or 'kalman'.
        model_dir: A denoise model directory: its spec, its model and the baselines' tuned
            parameters. Required for 'model'.
        spec: A one-topic spec (object or YAML path), used when there is no model directory.
        device: ONNX Runtime device for 'model'.
        threads: ONNX Runtime threads for 'model'.
        params: Overrides of the baseline's parameters (None values are ignored).
        warmup: Warm the engine up.
    """
    from encdec_ros.modeldir import ModelDir

    if method not in METHODS:
        raise ConfigError(f'method {method!r} is not one of {", ".join(METHODS)}')
    model = None
    if model_dir:
        model = ModelDir.load(model_dir, task='denoise')
        model_spec = SignalSpec.from_dict(model.section('spec'), source=str(model.path))
        if spec is not None:
            given = SignalSpec.load(spec) if isinstance(spec, (str, Path)) else spec
            diff = model_spec.mismatch(given)
            if diff is not None:
                raise ModelDirError(f'the spec {given.source} differs from the one {model.path} '
                                    f'was trained with ({diff}); leave the spec out (the model '
                                    'carries its own) or train a model for this spec')
        spec = model_spec
    elif spec is None:
        raise ConfigError('give a model directory (model_dir) or a one-topic spec (spec_file) '
                          'so the denoiser knows the topic, type and fields')
    elif method == 'model':
        raise ConfigError("method 'model' needs a model directory; pass model_dir, or choose "
                          'butterworth, one_euro or kalman')
    if isinstance(spec, (str, Path)):
        spec = SignalSpec.load(spec)
    spec = resolve_standalone(spec)
    channels = len(spec.channels)
    if method == 'model':
        denoiser: Denoiser = ModelDenoiser(model, device=device, threads=threads, warmup=warmup)
    else:
        tuned = model.section(f'baselines.{method}', {}) if model is not None else {}
        merged = {**dict(tuned or {}), **{k: v for k, v in (params or {}).items()
                                          if v is not None}}
        denoiser = make_baseline(method, channels, spec.rate_hz, merged)
    return DenoiseCore(spec, denoiser)


# --------------------------------------------------------------------------- tuning


Segments = Sequence[tuple[np.ndarray, np.ndarray]]


def _segment_list(noisy: Any, clean: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    if clean is not None:
        return [(np.asarray(noisy, np.float64), np.asarray(clean, np.float64))]
    return [(np.asarray(n, np.float64), np.asarray(c, np.float64)) for n, c in noisy]


def _check_segments(segs: list[tuple[np.ndarray, np.ndarray]], skip: int) -> int:
    if not segs:
        raise ConfigError('tuning needs at least one segment of noisy and clean samples')
    channels = segs[0][0].shape[1]
    for noisy, clean in segs:
        if noisy.shape != clean.shape or noisy.ndim != 2 or noisy.shape[1] != channels:
            raise ConfigError('noisy and clean samples must have the same shape [n, C]')
    if sum(max(0, len(n) - skip) for n, _ in segs) < 10:
        raise ConfigError(f'too few validation samples to tune the filters (after skipping '
                          f'{skip} per segment); use more data or a smaller validation split')
    return channels


def tune_butterworth(noisy: Any, clean: Any = None, *, rate_hz: float, skip: int = 0,
                     orders: Sequence[int] = (1, 2, 3, 4), cutoffs: int = 40
                     ) -> dict[str, list[float]]:
    """Pick each channel's order and cut-off that minimise RMSE against the clean signal.

    Args:
        noisy: Samples [n, C], or a list of (noisy, clean) segments when ``clean`` is None.
        clean: The clean reference [n, C].
        rate_hz: Sample rate.
        skip: Samples at the start of each segment left out of the error (warm-up).
        orders: Orders tried.
        cutoffs: Number of cut-offs tried, log-spaced from rate/400 to 0.45 rate.

    Returns:
        ``{'order': [...], 'cutoff_hz': [...], 'rmse': [...]}``, one entry per channel.
    """
    segs = _segment_list(noisy, clean)
    channels = _check_segments(segs, skip)
    grid = np.geomspace(rate_hz / 400.0, 0.45 * rate_hz, cutoffs)
    best = np.full(channels, np.inf)
    best_order = np.ones(channels)
    best_fc = np.full(channels, grid[-1])
    for order in orders:
        for fc in grid:
            filt = ButterworthDenoiser(channels, rate_hz, order=order, cutoff_hz=fc)
            mse = _segments_mse(filt, segs, skip)
            better = mse < best
            best = np.where(better, mse, best)
            best_order = np.where(better, order, best_order)
            best_fc = np.where(better, fc, best_fc)
    return {'order': best_order.astype(int).tolist(), 'cutoff_hz': best_fc.tolist(),
            'rmse': np.sqrt(best).tolist()}


def _segments_mse(filt: Denoiser, segs: list[tuple[np.ndarray, np.ndarray]],
                  skip: int) -> np.ndarray:
    total, count = 0.0, 0
    for noisy, clean in segs:
        filt.reset()
        err = filt.run(noisy)[skip:] - clean[skip:]
        total = total + (err ** 2).sum(axis=0)
        count += err.shape[0]
    return total / max(count, 1)


def tune_one_euro(noisy: Any, clean: Any = None, *, rate_hz: float, skip: int = 0,
                  min_cutoffs: int = 14, betas: int = 8,
                  d_cutoffs: Sequence[float] | None = None) -> dict[str, list[float]]:
    """Pick each channel's 1-Euro parameters that minimise RMSE against the clean signal.

    ``min_cutoff`` is searched from rate/400 to rate/3 Hz, ``beta`` over 0 and values that
    raise the cut-off by rate/400 to rate/2 Hz at the channel's typical speed (the std of
    its clean derivative), ``d_cutoff`` over 1 Hz and rate/20 Hz; all candidates run at once.

    Returns:
        ``{'min_cutoff', 'beta', 'd_cutoff', 'rmse'}``, one entry per channel each.
    """
    segs = _segment_list(noisy, clean)
    channels = _check_segments(segs, skip)
    speed = np.sqrt(np.mean(np.concatenate([np.diff(c, axis=0) for _, c in segs]) ** 2,
                            axis=0)) * rate_hz
    speed = np.where(speed > 0, speed, 1.0)
    mc = np.geomspace(rate_hz / 400.0, rate_hz / 3.0, min_cutoffs)
    bh = np.concatenate([[0.0], np.geomspace(rate_hz / 400.0, rate_hz / 2.0, betas)])
    dc = np.asarray(d_cutoffs if d_cutoffs is not None else (1.0, rate_hz / 20.0))
    grid = np.stack(np.meshgrid(mc, bh, dc, indexing='ij'), -1).reshape(-1, 3)   # [K, 3]
    min_cutoff = np.repeat(grid[:, :1], channels, axis=1)                        # [K, C]
    beta = grid[:, 1:2] / speed[None, :]
    a_d = _alpha(np.repeat(grid[:, 2:3], channels, axis=1), rate_hz)
    sse = np.zeros((len(grid), channels))
    count = 0
    for noisy_s, clean_s in segs:
        x_hat = np.repeat(noisy_s[:1], len(grid), axis=0)
        dx_hat = np.zeros_like(x_hat)
        for i in range(1, noisy_s.shape[0]):
            x_hat, dx_hat = _one_euro_kernel(noisy_s[i], x_hat, dx_hat, rate_hz, a_d,
                                             min_cutoff, beta)
            if i >= skip:
                sse += (x_hat - clean_s[i]) ** 2
        if skip == 0:
            sse += (noisy_s[0] - clean_s[0]) ** 2
        count += max(0, noisy_s.shape[0] - skip)
    pick = np.argmin(sse, axis=0)
    cols = np.arange(channels)
    return {'min_cutoff': min_cutoff[pick, cols].tolist(), 'beta': beta[pick, cols].tolist(),
            'd_cutoff': grid[pick, 2].tolist(),
            'rmse': np.sqrt(sse[pick, cols] / max(count, 1)).tolist()}


def tune_kalman(noisy: Any, clean: Any = None, *, rate_hz: float, skip: int = 0,
                bandwidths: int = 40) -> dict[str, list[float]]:
    """Pick each channel's Kalman ``q`` and ``r`` that minimise RMSE against the clean signal.

    ``r`` is the variance of noisy minus clean; since the estimate depends only on ``q/r``,
    ``q`` is searched through the bandwidth it gives, rate/400 to rate/2 Hz.

    Returns:
        ``{'q', 'r', 'rmse'}``, one entry per channel each.
    """
    segs = _segment_list(noisy, clean)
    channels = _check_segments(segs, skip)
    resid = np.concatenate([n - c for n, c in segs])
    r = np.var(resid, axis=0)
    r = np.where(r > 0, r, 1e-12)
    bw = np.geomspace(rate_hz / 400.0, rate_hz / 2.0, bandwidths)
    q = r[None, :] / rate_hz * (2.0 * math.pi * bw[:, None]) ** 4                 # [K, C]
    rr = np.broadcast_to(r, q.shape)
    sse = np.zeros_like(q)
    count = 0
    dt = 1.0 / rate_hz
    for noisy_s, clean_s in segs:
        state = _kalman_start(np.broadcast_to(noisy_s[0], q.shape), rr, rate_hz)
        if skip == 0:
            sse += (noisy_s[0] - clean_s[0]) ** 2
        for i in range(1, noisy_s.shape[0]):
            state = _kalman_kernel(noisy_s[i], state, q, rr, dt)
            if i >= skip:
                sse += (state[0] - clean_s[i]) ** 2
        count += max(0, noisy_s.shape[0] - skip)
    pick = np.argmin(sse, axis=0)
    cols = np.arange(channels)
    return {'q': q[pick, cols].tolist(), 'r': r.tolist(),
            'rmse': np.sqrt(sse[pick, cols] / max(count, 1)).tolist()}


def tune_baselines(segments: Segments, *, rate_hz: float, skip: int = 0,
                   methods: Sequence[str] = BASELINES) -> dict[str, dict[str, list[float]]]:
    """Tune every baseline on (noisy, clean) segments; see the ``tune_*`` functions."""
    tuners = {'butterworth': tune_butterworth, 'one_euro': tune_one_euro,
              'kalman': tune_kalman}
    return {m: tuners[m](list(segments), rate_hz=rate_hz, skip=skip) for m in methods}
