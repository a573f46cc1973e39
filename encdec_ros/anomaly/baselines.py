"""Classical anomaly baselines, fitted with numpy and served as ONNX graphs. No torch.

Both are written as tiny ONNX graphs with the networks' interface (input ``x`` [batch, W, C]
of normalised windows; outputs ``x_hat`` [batch, W, C] and ``code`` [batch, Z]), so the
scorer, ``encdec eval anomaly`` and the anomaly_detector node serve them exactly like an
autoencoder: no second code path anywhere. ``encdec train anomaly --arch pca`` or
``--arch robust_z`` fits them (:func:`fit_baseline`), calibrates them with the same code as
the networks and writes the same model directory.

- **PCA** (``pca``; Hotelling T^2 + Q): the flattened normalised window ``v`` (W*C values)
  is projected on the ``k`` leading principal components of the training windows::

      code  = P^T (v - mu)              the scores t [batch, k]
      x_hat = P code + mu               the reconstruction; Q (SPE) = |v - x_hat|^2, which the
                                        scorer splits per channel like any residual
      T^2   = sum_j t_j^2 / lambda_j    from the code and the eigenvalues, computed by the
                                        scorer (``score.t2`` in model.yaml) and standardised
                                        on held-out normal windows like each channel's Q

  A linear autoencoder, in closed form: the floor every network must beat.
- **Robust z-score** (``robust_z``): per channel, the median ``m_c`` and the scaled median
  absolute deviation ``s_c = 1.4826 MAD_c`` of the training samples. The graph's residual
  ``xn - x_hat`` is each sample's robust z-score ``(xn - m_c) / s_c`` (``x_hat = xn - z``), so
  the per-channel error is the window's mean squared robust z; the code is the window's mean
  z per channel [batch, C].

The ONNX graphs are built with ``onnx.helper`` (the ``onnx`` package; fitting happens where
models are trained) and checked against the numpy computation with onnxruntime, as the
networks are checked against torch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from encdec_ros.errors import ConfigError

BASELINES = ('pca', 'robust_z')
OPSET = 17
IR_VERSION = 8
"""ONNX IR version of opset 17: loads on every onnxruntime since 1.13, like the networks."""
MAD_SCALE = 1.4826
"""MAD times this is the standard deviation of a Gaussian."""
MIN_SCALE = 1e-3
"""Smallest robust scale and eigenvalue, in normalised units (a channel that never moves)."""


@dataclass
class BaselineFit:
    """A fitted baseline.

    Attributes:
        arch: 'pca' or 'robust_z'.
        onnx: The ONNX model's bytes (inputs ``x``; outputs ``x_hat``, ``code``).
        parameters: Numbers stored in the graph.
        export: Figures like the networks' export: parity against numpy and the file.
        details: Figures for model.yaml (explained variance, components ...).
        t2_center: PCA: the code's centre for Hotelling's T^2 (zeros), else None.
        t2_scale: PCA: the code's scale (square roots of the eigenvalues), else None.
    """

    arch: str
    onnx: bytes
    parameters: int
    export: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    t2_center: np.ndarray | None = None
    t2_scale: np.ndarray | None = None


def fit_baseline(arch: str, windows: np.ndarray, *, latent: int = 8,
                 parity: np.ndarray | None = None, atol: float = 1e-4) -> BaselineFit:
    """Fit ``arch`` on normalised training windows [N, W, C] held in memory (see
    :func:`baseline_fitter` for windows that arrive in pieces) and build its ONNX graph.

    Args:
        arch: 'pca' or 'robust_z'.
        windows: Normalised training windows.
        latent: PCA: the number of principal components (at most W*C and N - 1).
        parity: Windows on which onnxruntime must reproduce numpy (default: 64 training
            windows), at their batch size, at batch 1 and at batch 3.
        atol: Largest allowed absolute difference.
    """
    x = np.asarray(windows)
    if x.ndim != 3:
        raise ConfigError(f'fitting {arch} needs windows [N, W, C], got shape {list(x.shape)}')
    fitter = baseline_fitter(arch, x.shape[1], x.shape[2], latent=latent)
    fitter.add(x)
    return fitter.finish(x[:64] if parity is None else parity, atol=atol)


def baseline_fitter(arch: str, window: int, channels: int, *, latent: int = 8
                    ) -> 'PcaFitter | RobustZFitter':
    """An empty fitter for ``arch``: ``add`` normalised training windows in pieces,
    ``merge`` the fitters of other processes, then ``finish``."""
    if arch == 'pca':
        return PcaFitter(window, channels, latent)
    if arch == 'robust_z':
        return RobustZFitter(window, channels)
    raise ConfigError(f'baseline {arch!r} is not one of {", ".join(BASELINES)}')


# --------------------------------------------------------------------------- PCA


MAX_PCA_INPUTS = 4096
"""Largest flattened window (W*C) PCA accepts: its covariance holds (W*C)^2 numbers."""


class PcaFitter:
    """Sums of the flattened windows and of their outer products (exact, in any order)."""

    def __init__(self, window: int, channels: int, latent: int) -> None:
        d = window * channels
        if d > MAX_PCA_INPUTS:
            raise ConfigError(f'PCA over windows of {window} samples x {channels} channels '
                              f'needs a covariance of {d} x {d} numbers; give a window of at '
                              f'most {MAX_PCA_INPUTS} values (--window), or use a network')
        self.window, self.channels, self.latent = window, channels, latent
        self.n = 0
        self.total = np.zeros(d)
        self.outer = np.zeros((d, d))

    def add(self, windows: np.ndarray) -> None:
        """Add normalised windows [n, W, C]."""
        flat = np.asarray(windows, dtype=np.float64).reshape(len(windows), -1)
        self.n += len(flat)
        self.total += flat.sum(axis=0)
        self.outer += flat.T @ flat

    def merge(self, others: Sequence['PcaFitter']) -> 'PcaFitter':
        """Add the sums of other fitters (other processes' windows)."""
        for other in others:
            if other is not self:
                self.n += other.n
                self.total += other.total
                self.outer += other.outer
        return self

    def finish(self, parity: np.ndarray, *, atol: float = 1e-4) -> BaselineFit:
        """The leading components, the graph, and its parity with numpy on ``parity``."""
        t0 = time.perf_counter()
        n, w, c = self.n, self.window, self.channels
        if n < 2:
            raise ConfigError(f'PCA needs at least 2 training windows, got {n}; give longer '
                              'bags or a smaller window')
        d = w * c
        mu = self.total / n
        cov = (self.outer - n * np.outer(mu, mu)) / (n - 1)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(vals)[::-1]
        vals, vecs = vals[order], vecs[:, order]
        k = int(min(self.latent, d, n - 1))
        total = float(np.sum(np.clip(vals, 0, None)))
        comps = vecs[:, :k]
        # a deterministic sign per component: its largest loading positive
        sign = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)])
        comps = comps * np.where(sign == 0, 1.0, sign)
        lam = np.maximum(vals[:k], MIN_SCALE ** 2)
        p32, mu32 = comps.astype(np.float32), mu.astype(np.float32)

        def reference(batch: np.ndarray) -> list[np.ndarray]:
            v = batch.reshape(len(batch), d).astype(np.float64)
            code = (v - mu32) @ p32.astype(np.float64)
            return [(code @ p32.T.astype(np.float64) + mu32).reshape(batch.shape), code]

        explained = float(np.sum(np.clip(vals[:k], 0, None)) / total) if total > 0 else 1.0
        fit = BaselineFit('pca', _pca_graph(p32, mu32, w, c), int(p32.size + mu32.size), {},
                          {'components': k, 'explained_variance': explained,
                           'eigenvalues': lam.tolist()},
                          np.zeros(k), np.sqrt(lam))
        return _finish(fit, parity, reference, atol, t0)


def _pca_graph(p: np.ndarray, mu: np.ndarray, w: int, c: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    d, k = p.shape
    inits = [numpy_helper.from_array(mu, 'mu'), numpy_helper.from_array(p, 'components'),
             numpy_helper.from_array(np.ascontiguousarray(p.T), 'components_t'),
             numpy_helper.from_array(np.array([-1, d], np.int64), 'flat_shape'),
             numpy_helper.from_array(np.array([-1, w, c], np.int64), 'window_shape')]
    nodes = [helper.make_node('Reshape', ['x', 'flat_shape'], ['v']),
             helper.make_node('Sub', ['v', 'mu'], ['centred']),
             helper.make_node('MatMul', ['centred', 'components'], ['code']),
             helper.make_node('MatMul', ['code', 'components_t'], ['back']),
             helper.make_node('Add', ['back', 'mu'], ['v_hat']),
             helper.make_node('Reshape', ['v_hat', 'window_shape'], ['x_hat'])]
    outputs = [helper.make_tensor_value_info('x_hat', TensorProto.FLOAT, ['batch', w, c]),
               helper.make_tensor_value_info('code', TensorProto.FLOAT, ['batch', k])]
    return _model(nodes, inits, w, c, outputs, 'pca_t2_q')


# --------------------------------------------------------------------------- robust z


MAX_ROWS = 1 << 20
"""Most training samples the robust z-score keeps for its medians (evenly thinned beyond)."""


class RobustZFitter:
    """The training samples (thinned evenly to at most :data:`MAX_ROWS`) for the medians."""

    def __init__(self, window: int, channels: int) -> None:
        self.window, self.channels = window, channels
        self.parts: list[np.ndarray] = []
        self.kept = 0
        self.every = 1          # keep one sample in ``every``
        self._seen = 0

    def add(self, windows: np.ndarray) -> None:
        """Add normalised windows [n, W, C] (their samples)."""
        rows = np.asarray(windows, dtype=np.float32).reshape(-1, self.channels)
        idx = np.arange(self._seen, self._seen + len(rows))
        self._seen += len(rows)
        rows = rows[idx % self.every == 0]
        self.parts.append(rows)
        self.kept += len(rows)
        while self.kept > MAX_ROWS:
            self.parts = [np.concatenate(self.parts)[::2]]
            self.kept = len(self.parts[0])
            self.every *= 2

    def merge(self, others: Sequence['RobustZFitter']) -> 'RobustZFitter':
        """Add the samples of other fitters (other processes' windows)."""
        for other in others:
            if other is not self:
                self.parts += other.parts
                self.kept += other.kept
        return self

    def finish(self, parity: np.ndarray, *, atol: float = 1e-4) -> BaselineFit:
        """Medians and scales, the graph, and its parity with numpy on ``parity``."""
        t0 = time.perf_counter()
        w, c = self.window, self.channels
        if not self.kept:
            raise ConfigError('the robust z-score needs training windows; give longer bags')
        rows = np.concatenate(self.parts).astype(np.float64)
        med = np.median(rows, axis=0)
        scale = MAD_SCALE * np.median(np.abs(rows - med), axis=0)
        # a channel that holds one value most of the time has MAD 0: use its std there
        std = rows.std(axis=0)
        scale = np.where(scale > MIN_SCALE, scale, np.maximum(std, MIN_SCALE))
        med32 = med.astype(np.float32)
        inv32 = (1.0 / scale).astype(np.float32)

        def reference(batch: np.ndarray) -> list[np.ndarray]:
            xb = batch.astype(np.float64)
            z = (xb - med32) * inv32
            return [xb - z, z.mean(axis=1)]

        fit = BaselineFit('robust_z', _robust_z_graph(med32, inv32, w, c), int(2 * c), {},
                          {'median': med.tolist(), 'scale': scale.tolist()})
        return _finish(fit, parity, reference, atol, t0)


def _robust_z_graph(med: np.ndarray, inv: np.ndarray, w: int, c: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(med, 'median'), numpy_helper.from_array(inv, 'inv_scale')]
    nodes = [helper.make_node('Sub', ['x', 'median'], ['dev']),
             helper.make_node('Mul', ['dev', 'inv_scale'], ['z']),
             helper.make_node('Sub', ['x', 'z'], ['x_hat']),
             helper.make_node('ReduceMean', ['z'], ['code'], axes=[1], keepdims=0)]
    outputs = [helper.make_tensor_value_info('x_hat', TensorProto.FLOAT, ['batch', w, c]),
               helper.make_tensor_value_info('code', TensorProto.FLOAT, ['batch', c])]
    return _model(nodes, inits, w, c, outputs, 'robust_z')


# --------------------------------------------------------------------------- shared


def _finish(fit: BaselineFit, check: np.ndarray, reference: Any, atol: float,
            t0: float) -> BaselineFit:
    """Check the graph against numpy on ``check`` and record the export figures."""
    check = np.asarray(check, dtype=np.float32)
    if not len(check):
        raise ConfigError('no windows to check the fitted baseline on; give longer bags')
    diff, sizes = _parity(fit.onnx, check, reference, atol)
    fit.export = {'exporter': 'numpy (onnx.helper)', 'opset': OPSET, 'max_abs_diff': diff,
                  'atol': atol, 'batch_sizes': sizes, 'file_bytes': len(fit.onnx),
                  'sha256': hashlib.sha256(fit.onnx).hexdigest(),
                  'seconds': round(time.perf_counter() - t0, 3), 'versions': _versions()}
    return fit


def _model(nodes: list, inits: list, w: int, c: int, outputs: list, name: str) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', w, c])]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', OPSET)],
                              ir_version=IR_VERSION, producer_name='encdec_ros.baselines')
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _parity(onnx_bytes: bytes, check: np.ndarray, reference: Any, atol: float
            ) -> tuple[float, list[int]]:
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=['CPUExecutionProvider'])
    worst, sizes = 0.0, []
    for batch in (check, check[:1], check[np.arange(3) % len(check)]):
        got = session.run(['x_hat', 'code'], {'x': np.ascontiguousarray(batch)})
        for name, g, want in zip(('x_hat', 'code'), got, reference(batch)):
            diff = float(np.max(np.abs(g.astype(np.float64) - want))) if g.size else 0.0
            if not diff <= atol:
                raise ConfigError(f'the {name} of the fitted baseline differs from numpy by '
                                  f'{diff:.3g} in onnxruntime (more than {atol:g}); the '
                                  'training data may hold huge values: check the bags')
            worst = max(worst, diff)
        sizes.append(len(batch))
    return worst, sizes


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    return {'onnx': onnx.__version__, 'onnxruntime': ort.__version__}
