"""Train an anomaly autoencoder from bags of normal operation, calibrate it and export it.

``encdec train anomaly`` calls :func:`train_anomaly`, which:

1. reads the bags with the signal spec (``encdec_ros.io.bag.read_bags``), optionally only a
   time span of each (``train_span``: e.g. SKAB's first 400 rows);
2. splits every recording by time into train / validation / calibration parts (in that
   order), and fits per-channel normalisation on the train part only;
3. trains an MLP, LSTM or GRU autoencoder (:mod:`training.models`) with Adam on the mean
   squared reconstruction error, seeded, with early stopping on the validation loss;
4. exports the best model to ONNX (``training.export.export_onnx``: onnxruntime must agree
   with torch within 1e-4 on real windows);
5. runs the exported model through the runtime's own error code
   (:func:`encdec_ros.anomaly.scorer.reconstruction_errors`) on the calibration windows, stores each
   channel's normal error statistics and calibrates the threshold (:mod:`encdec_ros.anomaly.calibrate`);
6. writes the model directory (``encdec_ros.modeldir.save_model_dir``) and a loss curve PNG.
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from encdec_ros.anomaly.calibrate import (
    RULES,
    DetectorFit,
    fit_detector,
    slow_context_windows,
)
from encdec_ros.anomaly.scorer import (
    ERROR_KINDS,
    LOG_EPS,
    check_debounce,
    reconstruction_errors,
    residual_statistics,
)
from encdec_ros.errors import ConfigError, ModelDirError
from encdec_ros.io.bag import Recording, read_bags
from encdec_ros.io.spec import SignalSpec
from encdec_ros.io.window import window_ends, windows_at
from encdec_ros.modeldir import check_output_dir
from training.models import AEConfig, build_model, count_parameters

log = logging.getLogger(__name__)

LOSS_PNG = 'loss.png'
MAX_BLOCKS = 20
"""Most blocks a recording is cut into for the train / val / calib split."""
CROSSFIT_FOLDS = 5
"""Folds of cross-fitted calibration."""
CROSSFIT_BELOW = 2000
"""Held-out decisions under which calibration is cross-fitted (``folds`` None)."""
SELF_CHECK_REFUSE = 0.5
"""Share of its own held-out normal decisions flagged above which a detector is refused."""
SELF_CHECK_WARN = 0.05
"""Share above which training warns that false alarms are to be expected."""
STD_FLOOR = 1e-6
"""Smallest normalisation scale, relative to max(1, |mean|), for channels that barely move."""


@dataclass
class TrainOptions:
    """Everything ``encdec train anomaly`` can set; defaults in comments.

    Attributes:
        model: Architecture (arch, hidden, latent, layers, dropout).
        epochs: Most passes over the training windows.
        patience: Stop after this many epochs without a better validation loss.
        batch_size: Windows per optimiser step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        val_fraction: Share of each recording (by time) for validation / early stopping.
        calib_fraction: Share (at the end) for threshold calibration; 0 calibrates on the
            validation part.
        train_stride: Samples between training windows (default: the spec's stride).
        seed: Seed of every random draw (weights, shuffling).
        error: Aggregation of per-channel errors, one of ERROR_KINDS.
        threshold_rule: 'pot' or 'quantile'.
        risk: Probability that a normal window exceeds the threshold (POT; quantile 1-risk).
        quantile: Quantile for the quantile rule (default 1 - risk).
        init_quantile: POT's initial level.
        threshold_scale: Multiply the calibrated threshold (a safety margin, 1 = none).
        margin: Raise the threshold by ``1 + margin / sqrt(n)`` for ``n`` held-out normal
            decisions (:func:`~encdec_ros.anomaly.calibrate.margin_factor`): little normal
            data, a wide margin; 0: none.
        slow_s: Seconds of the slow context (the running mean of each channel's error,
            and roughness over the last decisions; catches small persistent faults);
            0 turns it off. It needs calibration blocks several times this long.
        debounce_k: Windows above the threshold (of debounce_n) that raise the flag.
        debounce_n: Windows the debouncer remembers.
        release: Hysteresis: the flag falls when debounce_n scores stay below this level.
        drift_s: Time constant in seconds with which the detector follows slow drift of each
            channel's level (0: off); see :class:`~encdec_ros.anomaly.scorer.DriftTracker`.
        drift_freeze: Unusualness (fraction of the threshold) from which a channel's drift
            is held.
        drift_accept_s: Seconds after which a held channel is followed again, so that a
            lasting change stops being flagged (0: never).
        train_span: (start, end) seconds from each recording's first sample; None = all.
        exclude_labelled: Leave out windows that overlap a labelled interval of the bag.
        time_limit_s: Stop training after this many seconds (keeps the best epoch).
        threads: torch CPU threads (None: torch's default).
        folds: Cross-fitted calibration over this many folds of time blocks (0: a plain
            hold-out split; None: cross-fit when the hold-out split would leave fewer than
            :data:`CROSSFIT_BELOW` held-out decisions).
    """

    model: AEConfig = field(default_factory=AEConfig)
    epochs: int = 40
    patience: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.15
    calib_fraction: float = 0.15
    train_stride: int | None = None
    seed: int = 0
    error: str = 'mahalanobis'
    threshold_rule: str = 'pot'
    risk: float = 1e-3
    quantile: float | None = None
    init_quantile: float = 0.98
    threshold_scale: float = 1.0
    margin: float = 16.0
    slow_s: float = 2.0
    debounce_k: int = 3
    debounce_n: int = 5
    release: float = 0.8
    drift_s: float = 120.0
    drift_freeze: float = 0.5
    drift_accept_s: float = 600.0
    train_span: tuple[float | None, float | None] | None = None
    exclude_labelled: bool = True
    time_limit_s: float | None = None
    threads: int | None = None
    folds: int | None = None

    def check(self) -> None:
        """Raise :class:`ConfigError` with one sentence for an invalid option."""
        for name in ('epochs', 'patience', 'batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f'{name} must be a whole number >= 1, got {value!r}')
        if not self.lr > 0:
            raise ConfigError(f'learning rate must be positive, got {self.lr!r}')
        if not (0 < self.val_fraction < 1 and 0 <= self.calib_fraction < 1
                and self.val_fraction + self.calib_fraction < 0.9):
            raise ConfigError('val_fraction must be in (0, 1) and calib_fraction in [0, 1) with '
                              'their sum below 0.9, so that data is left to train on; e.g. '
                              '--val-fraction 0.15 --calib-fraction 0.15')
        if self.train_stride is not None and self.train_stride < 1:
            raise ConfigError(f'train stride must be >= 1, got {self.train_stride!r}')
        if self.error not in ERROR_KINDS:
            raise ConfigError(f'error {self.error!r} is not one of {", ".join(ERROR_KINDS)}')
        if self.threshold_rule not in RULES:
            raise ConfigError(f'threshold rule {self.threshold_rule!r} is not one of '
                              f'{", ".join(RULES)}')
        if not 0 < self.risk < 1:
            raise ConfigError(f'risk must be between 0 and 1, got {self.risk!r}; e.g. 1e-4')
        if not (isinstance(self.slow_s, (int, float)) and self.slow_s >= 0):
            raise ConfigError(f'slow context must be >= 0 seconds, got {self.slow_s!r}; '
                              'e.g. --slow 1, or 0 to turn it off')
        if not self.margin >= 0:
            raise ConfigError(f'margin must be >= 0, got {self.margin!r}; e.g. --margin 16')
        if not self.threshold_scale > 0:
            raise ConfigError(f'threshold scale must be positive, got {self.threshold_scale!r}')
        check_debounce(self.debounce_k, self.debounce_n, self.release)
        if not (self.drift_s >= 0 and self.drift_freeze > 0 and self.drift_accept_s >= 0):
            raise ConfigError(f'drift time constant ({self.drift_s!r} s) and accept time '
                              f'({self.drift_accept_s!r} s) must be >= 0 and the freeze level '
                              f'({self.drift_freeze!r}) > 0; e.g. --drift 120')
        if self.folds is not None and (isinstance(self.folds, bool) or not isinstance(
                self.folds, int) or self.folds in (1, 2) or self.folds < 0):
            raise ConfigError(f'folds must be 0 (no cross-fitting) or a whole number >= 3, '
                              f'got {self.folds!r}')
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ConfigError(f'time limit must be positive seconds, got {self.time_limit_s!r}')


@dataclass
class TrainResult:
    """What :func:`train_anomaly` produced.

    Attributes:
        path: The model directory.
        figures: The ``training`` section written to model.yaml.
        calibration: The ``calibration`` section.
        history: Per-epoch (train loss, validation loss).
        module: The trained torch module (eval mode), as exported.
        heldout: Per-channel errors [n, 2C] of the held-out normal decisions the detector
            was calibrated on, one array per stretch contiguous in time.
    """

    path: Path
    figures: dict[str, Any]
    calibration: dict[str, Any]
    history: list[tuple[float, float]]
    module: Any = None
    heldout: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Block:
    """A contiguous stretch of one recording's rows and what it is used for."""

    rec: int                 # index of the recording
    lo: int                  # first row (absolute)
    hi: int                  # end row (absolute, exclusive)
    role: str                # 'train', 'val' or 'calib' (hold-out); 'fold' (cross-fitting)
    fold: int = -1           # the fold of a cross-fitted block


def span_rows(times_ns: np.ndarray, span: tuple[float | None, float | None] | None
              ) -> tuple[int, int]:
    """Row range [a, b) of ``times_ns`` inside a span of seconds from the first sample."""
    if span is None or times_ns.size == 0:
        return 0, int(times_ns.size)
    rel = (times_ns - times_ns[0]) * 1e-9
    lo, hi = span
    a = 0 if lo is None else int(np.searchsorted(rel, lo - 1e-9, side='left'))
    b = times_ns.size if hi is None else int(np.searchsorted(rel, hi - 1e-9, side='left'))
    return a, b


# --------------------------------------------------------------------------- data


def _segment_windows(rec: Recording, lo: int, hi: int, window: int, stride: int,
                     exclude: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Raw windows [n, W, C] lying wholly inside rows [lo, hi), without NaN or labels."""
    if hi - lo < window:
        return np.zeros((0, window, rec.data.shape[1]), np.float32), 0
    spec = rec.spec
    ends = window_ends(rec.times_ns[lo:hi], spec.period_ns, window, stride)
    data = rec.data[lo:hi]
    wins = windows_at(data, ends, window)
    bad = ~np.isfinite(wins).all(axis=(1, 2))
    if exclude is not None and exclude[lo:hi].any():
        hit = np.convolve(exclude[lo:hi].astype(np.int32), np.ones(window, np.int32))
        bad |= hit[ends] > 0       # the window ending at row e covers rows e-W+1 .. e
    return wins[~bad], int(bad.sum())


GOLDEN = 0.6180339887498949


def split_blocks(n: int, window: int, val_fraction: float, calib_fraction: float, *,
                 blocks: int = MAX_BLOCKS) -> list[tuple[str, int, int]]:
    """Cut ``n`` rows into contiguous blocks and give each to 'train', 'val' or 'calib'.

    A robot's recording is not stationary (take-off, cruise, manoeuvres), so held-out data
    taken only from its end would not represent it. The rows are cut into up to ``blocks``
    blocks of at least four windows, and block ``i`` goes to a split by the fractional part of
    ``(i + 1) * 0.618...`` (a low-discrepancy sequence), so every split samples the whole
    recording in the asked proportions while each block stays contiguous in time. With fewer
    than three blocks the rows are split plainly: train first, then val, then calib.

    Returns:
        (split name, first row, end row) per block, in time order.
    """
    k = min(blocks, n // (4 * window))
    train_share = 1.0 - val_fraction - calib_fraction
    if k < 3:
        t_end = int(round(n * train_share))
        v_end = t_end + int(round(n * val_fraction)) if calib_fraction > 0 else n
        parts = [('train', 0, t_end), ('val', t_end, v_end)]
        if calib_fraction > 0:
            parts.append(('calib', v_end, n))
        return parts
    edges = np.linspace(0, n, k + 1).round().astype(int)
    out = []
    for i in range(k):
        u = ((i + 1) * GOLDEN) % 1.0
        name = 'train' if u < train_share else 'val' if u < train_share + val_fraction \
            else 'calib'
        if name == 'calib' and calib_fraction == 0:
            name = 'val'
        out.append((name, int(edges[i]), int(edges[i + 1])))
    for needed in ('train', 'val') + (('calib',) if calib_fraction > 0 else ()):
        if not any(b[0] == needed for b in out):   # too few blocks for the pattern
            return split_blocks(n, window, val_fraction, calib_fraction, blocks=2)
    return out


def _usable_rows(recs: Sequence[Recording], opts: TrainOptions, window: int
                 ) -> list[tuple[int, int]]:
    """Row range [a, b) of each recording inside the train span; refuses a recording with
    fewer than three windows there."""
    out = []
    for rec in recs:
        a, b = span_rows(rec.times_ns, opts.train_span)
        if b - a < 3 * window:
            where = f' inside the span {opts.train_span}' if opts.train_span else ''
            raise ConfigError(f'{rec.source} has {b - a} aligned samples{where}, fewer than '
                              f'three windows ({3 * window}); give a longer bag or span, or a '
                              'smaller window')
        out.append((a, b))
    return out


def plan_blocks(recs: Sequence[Recording], opts: TrainOptions, window: int, stride: int
                ) -> tuple[list[_Block], int]:
    """Cut the recordings into blocks; return them and the number of cross-fitting folds
    (0: a plain hold-out split into train / val / calib blocks).

    With ``opts.folds`` None the calibration is cross-fitted (:data:`CROSSFIT_FOLDS` folds)
    when a hold-out split would leave fewer than :data:`CROSSFIT_BELOW` held-out decisions:
    then every normal window gets an error from a model that never saw it.
    """
    spans = _usable_rows(recs, opts, window)
    folds = opts.folds
    if folds is None:
        share = opts.val_fraction + opts.calib_fraction
        heldout = sum((b - a) * share / stride for a, b in spans)
        folds = CROSSFIT_FOLDS if heldout < CROSSFIT_BELOW else 0
    blocks: list[_Block] = []
    if not folds:
        for i, (a, b) in enumerate(spans):
            for role, lo, hi in split_blocks(b - a, window, opts.val_fraction,
                                             opts.calib_fraction):
                blocks.append(_Block(i, a + lo, a + hi, role))
        return blocks, 0
    for i, (a, b) in enumerate(spans):
        count = max(folds, min(MAX_BLOCKS, (b - a) // (4 * window)))
        count = min(count, (b - a) // (window + 1)) or 1
        edges = np.linspace(a, b, count + 1).round().astype(int)
        for lo, hi in zip(edges[:-1], edges[1:]):
            blocks.append(_Block(i, int(lo), int(hi), 'fold', len(blocks) % folds))
    present = {blk.fold for blk in blocks}
    if len(present) < folds:
        rows = sum(b - a for a, b in spans)
        raise ConfigError(f'{rows} samples of normal data are too few to calibrate the '
                          f'threshold on windows of {window} samples: cross-fitting needs '
                          f'{folds} blocks of at least {window + 1} samples, so give at least '
                          f'{folds * (window + 1)} samples (more is better: about '
                          f'{folds * 4 * window}), or a smaller --window')
    return blocks, folds


def _runs(blocks: Sequence[_Block], keep: Callable[[_Block], bool]) -> list[tuple[int, int, int]]:
    """(recording, first row, end row) of each stretch of adjacent blocks that ``keep``
    accepts, in order."""
    out: list[list[int]] = []
    for blk in blocks:
        if not keep(blk):
            continue
        if out and out[-1][0] == blk.rec and out[-1][2] == blk.lo:
            out[-1][2] = blk.hi
        else:
            out.append([blk.rec, blk.lo, blk.hi])
    return [(r, lo, hi) for r, lo, hi in out]


@dataclass
class _Windows:
    """Raw windows cut from runs of blocks, one array per run."""

    parts: list[np.ndarray]
    rows: list[np.ndarray]      # the raw rows of each run (labelled rows left out)
    dropped: int = 0

    def stack(self, window: int, channels: int) -> np.ndarray:
        return _stack(self.parts, window, channels)


def _cut(recs: Sequence[Recording], runs: Sequence[tuple[int, int, int]], window: int,
         step: int, exclude: Sequence[np.ndarray | None]) -> _Windows:
    out = _Windows([], [])
    for r, lo, hi in runs:
        rec = recs[r]
        wins, dropped = _segment_windows(rec, lo, hi, window, step, exclude[r])
        out.parts.append(wins)
        out.dropped += dropped
        rows = rec.data[lo:hi]
        if exclude[r] is not None:
            rows = rows[~exclude[r][lo:hi]]
        out.rows.append(rows)
    return out


def fit_normalization(rows: np.ndarray, channels: Sequence[str]) -> tuple[np.ndarray,
                                                                          np.ndarray, list]:
    """Per-channel mean and std of training rows (finite values only), std floored."""
    rows = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    empty = [channels[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ConfigError(f'channel {empty[0]} has no finite value in the training data; '
                          'leave it out of the spec or fix the recording')
    filled = np.where(finite, rows, 0.0)
    mean = filled.sum(axis=0) / counts
    var = (np.where(finite, rows - mean, 0.0) ** 2).sum(axis=0) / counts
    std = np.sqrt(var)
    floor = STD_FLOOR * np.maximum(1.0, np.abs(mean))
    flat = [channels[i] for i in np.flatnonzero(std < floor)]
    return mean, np.maximum(std, floor), flat


def _stack(parts: list[np.ndarray], window: int, channels: int) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros((0, window, channels), np.float32)
    return np.concatenate(parts).astype(np.float32)


# --------------------------------------------------------------------------- training


def _fit(model: Any, train: np.ndarray, val: np.ndarray | None, opts: TrainOptions,
         say: Callable[[str], None], show_progress: bool | None, *,
         epochs: int | None = None, desc: str = '') -> tuple[list[tuple[float, float]], int,
                                                             float]:
    """Adam on MSE; with ``val``, early stopping on it and the best weights loaded; without,
    ``epochs`` epochs (validation loss NaN). Returns history, best epoch (1-based), seconds."""
    import torch

    from encdec_ros.progress import progress

    epochs = epochs or opts.epochs
    gen = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    xt = torch.from_numpy(train)
    xv = torch.from_numpy(val) if val is not None and len(val) else None
    n = len(xt)
    per_epoch = -(-n // opts.batch_size)
    history: list[tuple[float, float]] = []
    best, best_epoch, best_state, stale = math.inf, 0, None, 0
    start = time.perf_counter()
    bar = iter(progress(range(epochs * per_epoch), total=epochs * per_epoch,
                        desc=desc or f'training {opts.model.arch}', unit='batch', min_total=0,
                        enable=show_progress))
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for lo in range(0, n, opts.batch_size):
            batch = xt[perm[lo:lo + opts.batch_size]]
            loss = torch.mean((model(batch) - batch) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            next(bar, None)
        train_loss = total / n
        val_loss = _evaluate(model, xv, opts.batch_size * 4) if xv is not None else math.nan
        history.append((train_loss, val_loss))
        better = xv is not None and val_loss < best * (1 - 1e-4)
        if better:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        elapsed = time.perf_counter() - start
        say(f'  epoch {epoch:3d}  train {train_loss:.5f}'
            + (f'  val {val_loss:.5f}{"  *" if better else ""}' if xv is not None else '')
            + f'  ({elapsed:.0f} s)')
        if xv is not None and stale >= opts.patience:
            say(f'  early stop: no better validation loss for {opts.patience} epochs')
            break
        if opts.time_limit_s is not None and elapsed >= opts.time_limit_s:
            say(f'  time limit of {opts.time_limit_s:g} s reached')
            break
    for _ in bar:   # close the bar
        pass
    if best_state is not None:
        model.load_state_dict(best_state)
    if xv is None:
        best_epoch = len(history)
    model.eval()
    return history, best_epoch, time.perf_counter() - start


def _torch_errors(model: Any, windows: np.ndarray, batch: int = 512) -> np.ndarray:
    """Per-channel statistics [N, 2C] of normalised windows through a torch model: the
    runtime's :func:`~encdec_ros.anomaly.scorer.residual_statistics` on its output."""
    import torch

    out = np.full((len(windows), 2 * windows.shape[2]), np.nan)
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(windows), batch):
            x = windows[lo:lo + batch]
            out[lo:lo + batch] = residual_statistics(model(torch.from_numpy(x)).numpy(), x)
    return out


def _evaluate(model: Any, x: Any, batch: int) -> float:
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            part = x[lo:lo + batch]
            total += float(torch.mean((model(part) - part) ** 2)) * len(part)
    return total / max(len(x), 1)


def _loss_png(path: Path, history: list[tuple[float, float]], best_epoch: int,
              title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(epochs, [h[0] for h in history], label='train')
    ax.plot(epochs, [h[1] for h in history], label='validation')
    if best_epoch:
        ax.axvline(best_epoch, color='grey', ls=':', lw=1, label=f'best (epoch {best_epoch})')
    ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.set_ylabel('reconstruction MSE (normalised)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- main entry


def train_anomaly(bags: Sequence[str | Path], spec: SignalSpec | str | Path,
                  out: str | Path, opts: TrainOptions | None = None, *,
                  window: int | None = None, stride: int | None = None,
                  command: str = '', overwrite: bool = False,
                  say: Callable[[str], None] | None = None,
                  show_progress: bool | None = None) -> TrainResult:
    """Train, calibrate and export an anomaly autoencoder; write the model directory ``out``.

    Args:
        bags: Bags of normal operation.
        spec: The signal spec (object or path).
        out: The model directory to write.
        opts: Training options (defaults: :class:`TrainOptions`).
        window: Override the spec's window (samples).
        stride: Override the spec's stride (samples between decisions at run time).
        command: The command line, kept in model.yaml.
        overwrite: Replace an existing model directory.
        say: Where progress lines go (default: the module logger).
        show_progress: Progress bar: None on a terminal, True always, False never.
    """
    import torch

    from training.export import export_onnx

    opts = opts or TrainOptions()
    opts.check()
    say = say or log.info
    out = check_output_dir(out, what='model directory', empty=not overwrite, error=ModelDirError)
    if not isinstance(spec, SignalSpec):
        spec = SignalSpec.load(spec)
    if window is not None or stride is not None:
        spec = spec.with_window(window=window, stride=stride)
    t0 = time.perf_counter()
    recs = read_bags(list(bags), spec)
    spec = recs[0].spec
    channels = spec.channels
    W, C = spec.window, len(channels)
    train_stride = opts.train_stride or spec.stride
    blocks, folds = plan_blocks(recs, opts, W, spec.stride)
    exclude = [rec.label_mask() if opts.exclude_labelled and rec.labels else None
               for rec in recs]

    def cut(keep: Callable[[_Block], bool], step: int) -> _Windows:
        return _cut(recs, _runs(blocks, keep), W, step, exclude)

    if folds:
        train = cut(lambda b: True, train_stride)
        val = calib = _Windows([], [])
    else:
        train = cut(lambda b: b.role == 'train', train_stride)
        val = cut(lambda b: b.role == 'val', spec.stride)
        calib = cut(lambda b: b.role == 'calib', spec.stride)
    dropped = train.dropped + val.dropped + calib.dropped
    mean, std, flat = fit_normalization(np.concatenate(train.rows), channels)
    if flat:
        say(f'  note: {len(flat)} channel(s) barely move in the training data '
            f'({", ".join(flat[:3])}{"..." if len(flat) > 3 else ""}); any change on them will '
            'look anomalous')
    train_raw = train.stack(W, C)
    val_raw, calib_raw = val.stack(W, C), calib.stack(W, C)
    needed = [('training', train_raw)] if folds else [
        ('training', train_raw), ('validation', val_raw)] + (
        [('calibration', calib_raw)] if opts.calib_fraction > 0 else [])
    for name, arr in needed:
        _check_enough(name, len(arr), W, dropped)

    def normalizer(m: np.ndarray, s: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        m32, s32 = m.astype(np.float32), s.astype(np.float32)
        return lambda w: ((w - m32) / s32).astype(np.float32)

    norm = normalizer(mean, std)
    train_x, val_x, calib_x = norm(train_raw), norm(val_raw), norm(calib_raw)
    t_read = time.perf_counter() - t0
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if folds:
        say(f'data: {len(recs)} bag(s), {C} channels at {spec.rate_hz:g} Hz, window {W}; '
            f'{len(train_x)} training windows; calibration cross-fitted over {folds} folds of '
            f'{len(blocks)} time blocks (every held-out error from a model that did not see '
            'it)' + (f' ({dropped} windows left out: labelled or NaN)' if dropped else ''))
    else:
        say(f'data: {len(recs)} bag(s), {C} channels at {spec.rate_hz:g} Hz, window {W}; '
            f'windows train {len(train_x)} / val {len(val_x)} / calib '
            f'{len(calib_x) if opts.calib_fraction > 0 else "= val"}'
            + (f' ({dropped} left out: labelled or NaN)' if dropped else ''))

    # held-out normal errors: cross-fitted (fold models), or the final model's on val + calib
    t1 = time.perf_counter()
    heldout: list[np.ndarray] = []
    fold_epochs: list[int] = []
    if folds:
        heldout, fold_epochs = _crossfit(recs, blocks, folds, exclude, opts, spec, say,
                                         show_progress)
        epochs = max(1, int(np.median(fold_epochs)))
        say(f'  folds stopped at epochs {fold_epochs}: the final model trains on all windows '
            f'for {epochs} epochs')
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % 2**32)
    model = build_model(opts.model, W, C)
    n_params = count_parameters(model)
    say(f'model: {opts.model.arch} autoencoder, hidden {opts.model.hidden}, latent '
        f'{opts.model.latent}, {n_params} parameters')
    if folds:
        history, best_epoch, _ = _fit(model, train_x, None, opts, say, show_progress,
                                      epochs=epochs)
    else:
        history, best_epoch, _ = _fit(model, train_x, val_x, opts, say, show_progress)
    t_train = time.perf_counter() - t1

    with tempfile.TemporaryDirectory(prefix='encdec_train_') as tmp:
        onnx_tmp = Path(tmp) / 'model.onnx'
        parity = (val_x if len(val_x) else train_x)[:64]
        export = export_onnx(model, (torch.from_numpy(train_x[:2]),), onnx_tmp,
                             input_names=['x'], output_names=['x_hat'],
                             parity_inputs=(parity,))
        from encdec_ros.engine import InferenceEngine

        if not folds:
            # the threshold and the normal statistics see every held-out window: the
            # calibration blocks and the validation blocks (which only chose the epoch), so
            # that the tail is estimated on as much of the recording as possible
            engine = InferenceEngine(onnx_tmp, device='cpu', warmup=False)
            for part in (calib.parts if opts.calib_fraction > 0 else []) + val.parts:
                if len(part):
                    heldout.append(reconstruction_errors(engine, norm(part)))
        fit = _calibrate(heldout, opts, spec, say)
        figures = {
            'command': command,
            'bags': [str(b) for b in bags],
            'train_span_s': list(opts.train_span) if opts.train_span else None,
            'rows': _rows(blocks),
            'folds': folds,
            'windows': {'train': len(train_x), 'val': len(val_x), 'calib': len(calib_x),
                        'heldout': int(sum(len(p) for p in heldout)), 'left_out': dropped},
            'train_stride': train_stride,
            'epochs_run': len(history),
            'best_epoch': best_epoch,
            'fold_epochs': fold_epochs,
            'train_loss': history[best_epoch - 1][0] if best_epoch else None,
            'val_loss': _finite_or_none(history[best_epoch - 1][1]) if best_epoch else None,
            'history': {'train': [h[0] for h in history],
                        'val': [_finite_or_none(h[1]) for h in history]},
            'seconds': {'data': round(t_read, 2), 'train': round(t_train, 2)},
            'options': _options_dict(opts),
            'export': {k: export[k] for k in ('exporter', 'opset', 'max_abs_diff', 'atol',
                                              'batch_sizes', 'file_bytes', 'seconds')},
            'versions': {**{k: str(v) for k, v in export['versions'].items()},
                         'python': platform.python_version(),
                         'numpy': np.__version__},
        }
        calibration = {**fit.section(), 'scale': opts.threshold_scale,
                       'data': f'cross-fitted over {folds} folds' if folds else
                       'calibration and validation splits' if opts.calib_fraction > 0
                       else 'validation split'}
        allerr = np.concatenate(heldout)
        from encdec_ros.modeldir import save_model_dir

        sections = {
            'spec': spec.to_dict(),
            'window': {'length': W, 'stride': spec.stride, 'rate_hz': spec.rate_hz,
                       'channels': channels},
            'normalization': {'mean': mean, 'std': std},
            'architecture': {**opts.model.to_dict(), 'parameters': n_params,
                             'input': {'name': 'x', 'shape': ['batch', W, C]},
                             'output': {'name': 'x_hat', 'shape': ['batch', W, C]}},
            'score': {'error': opts.error, 'log_eps': LOG_EPS,
                      'slow_context_s': fit.slow_windows * spec.stride / spec.rate_hz},
            'threshold': fit.threshold,
            'calibration': calibration,
            'channel_errors': {
                **fit.stats.to_dict(),
                'mean': np.nanmean(allerr[:, :C], axis=0),
                'p99': np.nanquantile(allerr[:, :C], 0.99, axis=0),
            },
            'detector': {'debounce_k': opts.debounce_k, 'debounce_n': opts.debounce_n,
                         'release': opts.release},
            'drift': {'time_constant_s': opts.drift_s, 'freeze': opts.drift_freeze,
                      'accept_s': opts.drift_accept_s},
            'training': figures,
        }
        save_model_dir(out, onnx_file=onnx_tmp, task='anomaly', sections=sections,
                       overwrite=overwrite)
    _loss_png(out / LOSS_PNG, history, best_epoch,
              f'{opts.model.arch} autoencoder on {", ".join(Path(b).name for b in bags)}')
    cal = fit.calibration
    say(f'threshold {fit.threshold:.4g} ({cal.used} rule'
        + (f', fallback: {cal.details["fallback"]}' if 'fallback' in cal.details else '')
        + f'); held-out normal decisions above it: {fit.exceed_share:.2%}, flagged after '
        f'debouncing: {fit.flagged_share:.2%}; ONNX parity {export["max_abs_diff"]:.1e}')
    return TrainResult(out, figures, calibration, history, model, heldout)


def _check_enough(name: str, count: int, window: int, dropped: int) -> None:
    if count >= 2:
        return
    if dropped:
        raise ConfigError(f'only {count} {name} windows of {window} samples are usable: '
                          f'{dropped} windows were left out because they hold NaN or '
                          'infinite values (or labelled faults); drop the messages with '
                          'non-finite values from the bag, or leave their fields out of '
                          'the spec')
    raise ConfigError(f'only {count} {name} windows of {window} samples fit in the data; '
                      'give longer bags, a smaller window or a smaller stride')


def _crossfit(recs: Sequence[Recording], blocks: Sequence[_Block], folds: int,
              exclude: Sequence[np.ndarray | None], opts: TrainOptions, spec: SignalSpec,
              say: Callable[[str], None], show_progress: bool | None
              ) -> tuple[list[np.ndarray], list[int]]:
    """Held-out errors of every fold's blocks from a model trained on the other folds (one
    of them for early stopping), normalised on its own training rows; and the epochs at which
    the fold models stopped."""
    import torch

    W, C = spec.window, len(spec.channels)
    train_stride = opts.train_stride or spec.stride
    heldout: list[tuple[int, int, np.ndarray]] = []
    epochs = []
    def quiet(_: str) -> None:
        pass

    for j in range(folds):
        v = (j + 1) % folds
        train = _cut(recs, _runs(blocks, lambda b: b.fold not in (j, v)), W, train_stride,
                     exclude)
        val = _cut(recs, _runs(blocks, lambda b: b.fold == v), W, spec.stride, exclude)
        runs = _runs(blocks, lambda b: b.fold == j)
        test = _cut(recs, runs, W, spec.stride, exclude)
        train_raw, val_raw = train.stack(W, C), val.stack(W, C)
        _check_enough(f'fold {j + 1} training', len(train_raw), W, train.dropped)
        mean, std, _ = fit_normalization(np.concatenate(train.rows), spec.channels)
        m32, s32 = mean.astype(np.float32), std.astype(np.float32)
        torch.manual_seed(opts.seed + 1 + j)
        model = build_model(opts.model, W, C)
        _, best, _ = _fit(model, (train_raw - m32) / s32,
                          (val_raw - m32) / s32 if len(val_raw) else None, opts, quiet,
                          show_progress, desc=f'fold {j + 1}/{folds}')
        epochs.append(best)
        for (r, lo, _), part in zip(runs, test.parts):
            if len(part):
                heldout.append((r, lo, _torch_errors(model, ((part - m32) / s32
                                                             ).astype(np.float32))))
        say(f'  fold {j + 1}/{folds}: {len(train_raw)} training windows, best epoch {best}, '
            f'{sum(len(p) for p in test.parts)} held-out windows')
    heldout.sort(key=lambda t: (t[0], t[1]))          # time order
    return [h[2] for h in heldout], epochs


def _calibrate(heldout: list[np.ndarray], opts: TrainOptions, spec: SignalSpec,
               say: Callable[[str], None]) -> DetectorFit:
    """Channel statistics, slow context and threshold from held-out normal errors, with the
    self-check: a detector that flags much of its own held-out normal data is refused."""
    slow_windows, note = (0, '') if opts.error == 'mse' else slow_context_windows(
        opts.slow_s, spec.rate_hz, spec.stride, [len(p) for p in heldout])
    if note:
        say(f'  note: {note}')
    fit = fit_detector(heldout, error=opts.error, slow_windows=slow_windows,
                       rule=opts.threshold_rule, risk=opts.risk, quantile=opts.quantile,
                       init_quantile=opts.init_quantile, threshold_scale=opts.threshold_scale,
                       margin=opts.margin,
                       debounce=(opts.debounce_k, opts.debounce_n, opts.release))
    share = fit.flagged_share
    if share > SELF_CHECK_REFUSE or share > SELF_CHECK_WARN:
        order = np.argsort(-fit.blame) if fit.blame is not None else []
        worst = ', '.join(spec.channels[i] for i in order[:3] if fit.blame[i] > 0)
        text = (f'the detector flags {share:.0%} of its own held-out normal data '
                f'({fit.decisions} decisions; most unusual there: {worst or "none"})')
        if share > SELF_CHECK_REFUSE:
            raise ConfigError(f'{text}, so it would be useless on the robot; check that the '
                              'bags hold normal operation only, drop channels that drift or '
                              'jump between recordings, or give more normal data')
        say(f'WARNING: {text}; expect false alarms (more normal data, or a lower --risk, '
            'may help)')
    return fit


def _rows(blocks: Sequence[_Block]) -> dict[str, int]:
    out: dict[str, int] = {}
    for blk in blocks:
        key = blk.role if blk.role != 'fold' else f'fold {blk.fold + 1}'
        out[key] = out.get(key, 0) + blk.hi - blk.lo
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _options_dict(opts: TrainOptions) -> dict[str, Any]:
    data = asdict(opts)
    data['model'] = opts.model.to_dict()
    if data['train_span'] is not None:
        data['train_span'] = list(data['train_span'])
    return data
