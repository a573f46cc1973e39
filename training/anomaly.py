"""Train an anomaly autoencoder from bags of normal operation, calibrate it and export it.

``encdec train anomaly`` calls :func:`train_anomaly`, which:

1. reads the bags with the signal spec into cached shards and streams their windows
   (:mod:`training.data`: memory bounded by a few bags whatever their number), optionally
   only a time span of each (``train_span``: e.g. SKAB's first 400 rows);
2. splits every recording by time into train / validation / calibration blocks
   (:func:`split_blocks`), and fits per-channel normalisation on the train part only;
3. trains an autoencoder of the family (:mod:`training.models`: MLP, LSTM, GRU or conv,
   plain, variational, sparse or contractive, optionally on corrupted inputs) with Adam on
   its loss (:func:`training.models.training_loss`), seeded, with early stopping on the
   validation reconstruction loss; or fits a classical baseline (PCA, robust z-score) with
   numpy (:mod:`encdec_ros.anomaly.baselines`; no torch needed);
4. exports the best model to ONNX with its code as a second output
   (``training.export.export_onnx``: onnxruntime must agree with torch within 1e-4 on real
   windows; the baselines are checked against numpy the same way);
5. runs the exported model through the runtime's own error code
   (:func:`encdec_ros.anomaly.scorer.reconstruction_errors`) on the calibration windows, stores each
   channel's normal error statistics and calibrates the threshold
   (:mod:`encdec_ros.anomaly.calibrate`); with little data the calibration is cross-fitted
   instead (:func:`plan_blocks`): every normal window gets its error from a model that did
   not see it;
6. writes the model directory (``encdec_ros.modeldir.save_model_dir``) and a loss curve PNG.

Under ``torchrun`` the same steps run in several processes (:mod:`training.distributed`):
bags divided among them, the normalisation merged, each global batch trained with
DistributedDataParallel, the validation loss summed and the held-out errors gathered on rank
0, which calibrates and alone writes the model directory.
"""

from __future__ import annotations

import copy
import functools
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
    T2Stats,
    check_debounce,
    residual_statistics,
    window_statistics,
)
from encdec_ros.denoise.noise import NoiseSpec, parse_noise
from encdec_ros.errors import ConfigError, EncdecError, ModelDirError
from encdec_ros.io.bag import BagSource, Recording, bind_spec, read_bags
from encdec_ros.io.bagset import expand_bags
from encdec_ros.io.span import Span, resolve_span, span_text, span_yaml
from encdec_ros.io.spec import SignalSpec
from encdec_ros.io.window import window_ends, windows_at
from encdec_ros.modeldir import check_output_dir
from training.data import SHUFFLE_SHARDS, Moments, ShardedWindows, rechunk
from training.family import AEConfig

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
        train_span: (start, end) seconds from each recording's first sample, or rows
            (:class:`encdec_ros.io.span.Rows`: messages of the spec's first topic); None = all.
        exclude_labelled: Leave out windows that overlap a labelled interval of the bag.
        time_limit_s: Stop training after this many seconds (keeps the best epoch).
        threads: torch CPU threads (None: torch's default).
        shuffle_shards: Bags whose training windows are shuffled together each epoch (the
            bags a group of processes holds in memory at a time; training.data).
        workers: DataLoader workers reading bags in parallel per process (None: automatic,
            0: read in the training process).
        cache_dir: Folder of the cached shards (None: ``.encdec_shards`` beside ``out``).
        noise: Denoising training: a corruption spec (:mod:`encdec_ros.denoise.noise`, e.g.
            'relative,gaussian:0.1') applied afresh to the raw training windows of every
            batch; the model reconstructs the clean window. None: plain training.
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
    train_span: Span | None = None
    exclude_labelled: bool = True
    time_limit_s: float | None = None
    threads: int | None = None
    # data loading (training.data); only shuffle_shards can change the model (> N bags)
    shuffle_shards: int = SHUFFLE_SHARDS
    workers: int | None = None
    cache_dir: str | None = None
    noise: str | None = None
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
            raise ConfigError(f'risk must be between 0 and 1, got {self.risk!r}; e.g. 1e-3')
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
        if isinstance(self.shuffle_shards, bool) or not isinstance(self.shuffle_shards, int) \
                or self.shuffle_shards < 1:
            raise ConfigError(f'shuffle_shards must be a whole number >= 1, got '
                              f'{self.shuffle_shards!r}; e.g. --shuffle-shards 8')
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise ConfigError(f'workers must be a whole number >= 0, got {self.workers!r}')
        if self.noise is not None and self.model.classical:
            raise ConfigError(f'--arch {self.model.arch} is fitted in closed form and takes no '
                              'denoising corruption; drop --noise or use a network')
        self.corruption()         # a bad noise spec fails here, in one sentence

    def corruption(self) -> NoiseSpec | None:
        """The denoising corruption (None: plain training)."""
        return parse_noise(self.noise)


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


def _blocks_of(shard: Any, *, span: Span | None, window: int, val_fraction: float,
               calib_fraction: float) -> list[tuple[str, int, int]]:
    """A recording's (split, first row, end row) blocks inside ``span``, in time order
    (``shard``: a :class:`training.data.Shard` or a :class:`~encdec_ros.io.bag.Recording`)."""
    rec = shard.recording() if hasattr(shard, 'recording') else shard
    a, b = span_rows(rec.times_ns, resolve_span(span, rec))
    n = b - a
    if n < 3 * window:
        where = f' inside the span {span_text(span)}' if span else ''
        raise ConfigError(f'{rec.source} has {n} aligned samples{where}, fewer than three '
                          f'windows ({3 * window}); give a longer bag or span, or a smaller '
                          'window')
    return [(name, a + lo, a + hi)
            for name, lo, hi in split_blocks(n, window, val_fraction, calib_fraction)]


@dataclass
class _Block:
    """A contiguous stretch of one recording's rows and what it is used for."""

    rec: int                 # index of the recording
    lo: int                  # first row (absolute)
    hi: int                  # end row (absolute, exclusive)
    role: str                # 'train', 'val' or 'calib' (hold-out); 'fold' (cross-fitting)
    fold: int = -1           # the fold of a cross-fitted block


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


def _usable_rows(recs: Sequence[Recording], opts: TrainOptions, window: int
                 ) -> list[tuple[int, int]]:
    """Row range [a, b) of each recording inside the train span; refuses a recording with
    fewer than three windows there."""
    out = []
    for rec in recs:
        a, b = span_rows(rec.times_ns, resolve_span(opts.train_span, rec))
        if b - a < 3 * window:
            where = f' inside the span {span_text(opts.train_span)}' if opts.train_span else ''
            raise ConfigError(f'{rec.source} has {b - a} aligned samples{where}, fewer than '
                              f'three windows ({3 * window}); give a longer bag or span, or a '
                              'smaller window')
        out.append((a, b))
    return out


def plan_blocks(recs: Sequence[Recording], opts: TrainOptions, window: int, folds: int
                ) -> list[_Block]:
    """Cut the recordings into time blocks given to ``folds`` cross-fitting folds in turn
    (every normal window then gets its error from a model that did not see it), or refuse
    in one sentence when the data is too short for them."""
    spans = _usable_rows(recs, opts, window)
    blocks: list[_Block] = []
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
    return blocks


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


def _stack(parts: list[np.ndarray], window: int, channels: int) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros((0, window, channels), np.float32)
    return np.concatenate(parts).astype(np.float32)


def fit_normalization(rows: np.ndarray | Moments, channels: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, list]:
    """Per-channel mean and std of training rows (finite values only), std floored.

    ``rows`` may be the rows [N, C] or their statistics merged bag by bag (:class:`Moments`).
    """
    moments = rows if isinstance(rows, Moments) else Moments.of_rows(rows)
    empty = [channels[i] for i in np.flatnonzero(moments.count == 0)]
    if empty:
        raise ConfigError(f'channel {empty[0]} has no finite value in the training data; '
                          'leave it out of the spec or fix the recording')
    mean, std = moments.mean, moments.std
    floor = STD_FLOOR * np.maximum(1.0, np.abs(mean))
    flat = [channels[i] for i in np.flatnonzero(std < floor)]
    return mean, np.maximum(std, floor), flat


# --------------------------------------------------------------------------- training


def _fit(model: Any, data: ShardedWindows, opts: TrainOptions, say: Callable[[str], None],
         show_progress: bool | None, dist: Any,
         corrupt: Callable[[Any, int], Any] | None = None
         ) -> tuple[list[tuple[float, float]], int, float]:
    """Adam on the model's training loss (:func:`training.models.training_loss`) with early
    stopping on the validation reconstruction loss; loads the best weights. Returns history,
    best epoch (1-based) and seconds. ``corrupt(batch, epoch)`` gives a batch's corrupted
    inputs (denoising training; the batch itself is the target).

    Batches come from ``data`` (windows shuffled across a group of bags). Under torchrun each
    rank trains on its part of every global batch through DistributedDataParallel, its loss
    weighted by its share, so the averaged gradient is the whole batch's; losses and the
    stopping decisions are summed and agreed across ranks."""
    import torch

    from encdec_ros.progress import progress
    from training.models import training_loss

    gen = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    net = dist.wrap(model)
    n = data.count('train')
    n_val = data.count('val')
    steps = sum(data.batches_per_epoch(e, opts.batch_size) for e in range(1, opts.epochs + 1))
    history: list[tuple[float, float]] = []
    stopping = _EarlyStopping(model, opts, say)
    start = time.perf_counter()
    bar = iter(progress(range(steps), total=steps, desc=f'training {opts.model.arch}',
                        unit='batch', min_total=0, enable=show_progress))
    for epoch in range(1, opts.epochs + 1):
        model.train()
        total = 0.0
        for x, size in data.train_batches(epoch, opts.batch_size, gen):
            xin = x if corrupt is None else corrupt(x, epoch)
            x, xin = x.to(dist.device), xin.to(dist.device)
            if not dist.active:
                loss = training_loss(net, xin, x, epoch=epoch)
                total += loss.item() * len(x)
            elif len(x):
                mean = training_loss(net, xin, x, epoch=epoch)
                loss = mean * (len(x) * dist.world / size)   # DDP averages over the ranks
                total += mean.item() * len(x)
            else:                       # no window of this batch here: join the all-reduce
                loss = net(x.new_zeros((1, data.window, data.channels))).sum() * 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            next(bar, None)
        train_loss = float(dist.all_sum(total)) / n
        val_loss = _held_out_loss(model, data, opts.batch_size * 4, dist) / max(n_val, 1)
        history.append((train_loss, val_loss))
        if stopping.stop(epoch, train_loss, val_loss,
                         float(dist.all_max(time.perf_counter() - start))):
            break
    for _ in bar:   # close the bar
        pass
    stopping.restore()
    model.eval()
    return history, stopping.best_epoch, time.perf_counter() - start


def _held_out_loss(model: Any, data: ShardedWindows, batch: int, dist: Any) -> float:
    """Sum over the validation windows of each window's reconstruction loss (all ranks;
    :func:`training.models.validation_loss`: MSE, or the Gaussian NLL of a VAE), in pieces of
    ``batch`` windows across block and bag boundaries (as one array would be)."""
    import torch

    from training.models import validation_loss

    model.eval()
    total = 0.0
    with torch.no_grad():
        pieces = (w for _, _, w in data.held_out('val'))
        for part in rechunk(pieces, batch):
            part = part.to(dist.device)
            total += float(validation_loss(model, part)) * len(part)
    return float(dist.all_sum(total))


def _held_out_errors(engine: Any, data: ShardedWindows, split: str
                     ) -> dict[int, tuple[np.ndarray, np.ndarray | None, list[int]]]:
    """Per-channel errors of this rank's held-out windows of ``split``, through the runtime's
    own code: bag -> (errors [n, 2C] in block order, codes [n, Z] or None, windows per
    block)."""
    from encdec_ros.anomaly.scorer import DEFAULT_BATCH

    meta: list[tuple[int, int, int]] = []

    def windows() -> Any:
        for bag, block, w in data.held_out(split):
            meta.append((bag, block, len(w)))
            yield np.asarray(w)

    # whole engine batches across blocks and bags, as one array of every window would give
    stats = [window_statistics(engine, chunk)
             for chunk in rechunk(windows(), DEFAULT_BATCH)]
    flat = np.concatenate([e for e, _ in stats]) if stats else np.zeros((0, 2 * data.channels))
    codes = np.concatenate([c for _, c in stats]) if stats and stats[0][1] is not None \
        else None
    out: dict[int, tuple[list[np.ndarray], list[np.ndarray], dict[int, int]]] = {}
    lo = 0
    for bag, block, n in meta:
        parts, code_parts, blocks = out.setdefault(bag, ([], [], {}))
        parts.append(flat[lo:lo + n])
        if codes is not None:
            code_parts.append(codes[lo:lo + n])
        blocks[block] = blocks.get(block, 0) + n
        lo += n
    return {bag: (np.concatenate(parts) if parts else flat[:0],
                  np.concatenate(code_parts) if code_parts else None,
                  [blocks[k] for k in sorted(blocks)])
            for bag, (parts, code_parts, blocks) in out.items()}


def _in_bag_order(parts: list[dict[int, tuple[np.ndarray, np.ndarray | None, list[int]]]],
                  channels: int) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    """Errors, codes (None without a code output) and block lengths gathered from every
    rank, in bag order."""
    merged = {bag: value for part in parts for bag, value in part.items()}
    order = sorted(merged)
    errors = [merged[b][0] for b in order]
    codes = [merged[b][1] for b in order if merged[b][1] is not None]
    lengths = [n for b in order for n in merged[b][2]]
    return ((np.concatenate(errors) if errors else np.zeros((0, 2 * channels))),
            np.concatenate(codes) if codes else None, lengths)


def _corrupter(noise: NoiseSpec, mean: np.ndarray, std: np.ndarray, rate_hz: float,
               seed: int, rank: int) -> Callable[[Any, int], Any]:
    """``corrupt(batch, epoch)``: a batch of normalised windows [B, W, C] (a tensor) back in
    raw units, each window corrupted on its own (a relative spec scales by the training std),
    normalised again. The draws follow (seed, rank, epoch) and the batches in order."""
    import torch

    state: dict[str, Any] = {'epoch': None, 'rng': None}

    def corrupt(batch: Any, epoch: int) -> Any:
        if state['epoch'] != epoch:
            state['epoch'], state['rng'] = epoch, np.random.default_rng([seed, rank, epoch])
        rng = state['rng']
        raw = batch.numpy().astype(np.float64) * std + mean
        out = np.empty_like(raw)
        for i, win in enumerate(raw):
            out[i] = noise.apply(win, rate_hz=rate_hz, rng=rng, scale=std)
        return torch.from_numpy(((out - mean) / std).astype(np.float32))

    return corrupt


def _fit_arrays(model: Any, train: np.ndarray, val: np.ndarray | None, opts: TrainOptions,
                say: Callable[[str], None], show_progress: bool | None, *,
                epochs: int | None = None, desc: str = '',
                corrupt: Callable[[Any, int], Any] | None = None
                ) -> tuple[list[tuple[float, float]], int, float]:
    """:func:`_fit` on windows in memory (cross-fitting, small data): Adam on the model's
    training loss (``corrupt`` as in :func:`_fit`); with ``val``, early stopping on its
    reconstruction loss and the best weights loaded; without, ``epochs`` epochs (validation
    loss NaN). Returns history, best epoch (1-based), seconds."""
    import torch

    from encdec_ros.progress import progress
    from training.models import training_loss

    epochs = epochs or opts.epochs
    gen = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    xt = torch.from_numpy(train)
    xv = torch.from_numpy(val) if val is not None and len(val) else None
    n = len(xt)
    per_epoch = -(-n // opts.batch_size)
    history: list[tuple[float, float]] = []
    stopping = _EarlyStopping(model, opts, say)
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
            xin = batch if corrupt is None else corrupt(batch, epoch)
            loss = training_loss(model, xin, batch, epoch=epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            next(bar, None)
        train_loss = total / n
        val_loss = _evaluate(model, xv, opts.batch_size * 4) if xv is not None else math.nan
        history.append((train_loss, val_loss))
        if stopping.stop(epoch, train_loss, val_loss if xv is not None else None,
                         time.perf_counter() - start):
            break
    for _ in bar:   # close the bar
        pass
    stopping.restore()
    model.eval()
    return history, stopping.best_epoch if xv is not None else len(history), \
        time.perf_counter() - start


class _EarlyStopping:
    """The best weights by validation loss, the patience and the time limit; one line per
    epoch (the sharded and the in-memory training loops share it)."""

    def __init__(self, model: Any, opts: Any, say: Callable[[str], None]) -> None:
        self.model, self.opts, self.say = model, opts, say
        self.best, self.best_epoch, self.state, self.stale = math.inf, 0, None, 0

    def stop(self, epoch: int, train_loss: float, val_loss: float | None,
             elapsed: float) -> bool:
        """Keep the weights when ``val_loss`` improved (None: no validation, no early stop),
        print the epoch's line, and say whether training ends here."""
        better = val_loss is not None and _improved(val_loss, self.best)
        if better:
            self.best, self.best_epoch, self.stale = val_loss, epoch, 0
            self.state = copy.deepcopy(self.model.state_dict())
        else:
            self.stale += 1
        val = '' if val_loss is None else f'  val {val_loss:.5f}{"  *" if better else ""}'
        self.say(f'  epoch {epoch:3d}  train {train_loss:.5f}{val}  ({elapsed:.0f} s)')
        if val_loss is not None and self.stale >= self.opts.patience:
            self.say(f'  early stop: no better validation loss for {self.opts.patience} epochs')
            return True
        if self.opts.time_limit_s is not None and elapsed >= self.opts.time_limit_s:
            self.say(f'  time limit of {self.opts.time_limit_s:g} s reached')
            return True
        return False

    def restore(self) -> None:
        """Load the best weights seen (if any epoch improved)."""
        if self.state is not None:
            self.model.load_state_dict(self.state)


def _improved(loss: float, best: float) -> bool:
    """A validation loss better than ``best`` by a relative 1e-4 (losses may be negative: a
    VAE's Gaussian NLL)."""
    return loss < best - 1e-4 * abs(best) if math.isfinite(best) else math.isfinite(loss)


def _torch_statistics(model: Any, windows: np.ndarray, batch: int = 512
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-channel statistics [N, 2C] of normalised windows through a torch model (the
    runtime's :func:`~encdec_ros.anomaly.scorer.residual_statistics` on its exported outputs:
    the Gaussian NLL for a VAE) and its codes [N, Z] (None without a code output)."""
    import torch

    names = list(model.output_names)
    out = np.full((len(windows), 2 * windows.shape[2]), np.nan)
    codes = None
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(windows), batch):
            x = windows[lo:lo + batch]
            got = dict(zip(names, (t.numpy() for t in model.export_outputs(torch.from_numpy(x)))))
            out[lo:lo + batch] = residual_statistics(got['x_hat'], x, got.get('log_var'))
            if 'code' in got:
                if codes is None:
                    codes = np.full((len(windows), got['code'].shape[1]), np.nan, np.float32)
                codes[lo:lo + batch] = got['code']
    return out, codes


def _evaluate(model: Any, x: Any, batch: int) -> float:
    import torch

    from training.models import validation_loss

    model.eval()
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            part = x[lo:lo + batch]
            total += float(validation_loss(model, part)) * len(part)
    return total / max(len(x), 1)


def _loss_png(path: Path, history: list[tuple[float, float]], best_epoch: int,
              title: str, ylabel: str = 'reconstruction MSE (normalised)') -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot(epochs, [h[0] for h in history], label='train')
    ax.plot(epochs, [h[1] for h in history], label='validation')
    if best_epoch:
        ax.axvline(best_epoch, color='grey', ls=':', lw=1, label=f'best (epoch {best_epoch})')
    if all(v > 0 for h in history for v in h):
        ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
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
    """Train (or fit), calibrate and export an anomaly model; write the model directory
    ``out``. The classical baselines (``opts.model.arch`` 'pca' or 'robust_z') need no torch.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; they train one model
    together (:mod:`training.distributed`) and rank 0 writes ``out``.

    Args:
        bags: Bags of normal operation: bags, folders of bags, glob patterns or list files
            (:func:`encdec_ros.io.bagset.expand_bags`).
        spec: The signal spec (object or path).
        out: The model directory to write.
        opts: Training options (defaults: :class:`TrainOptions`).
        window: Override the spec's window (samples).
        stride: Override the spec's stride (samples between decisions at run time).
        command: The command line, kept in model.yaml.
        overwrite: Replace an existing model directory.
        say: Where progress lines go (default: the module logger); rank 0 only.
        show_progress: Progress bar: None on a terminal, True always, False never; rank 0.
    """
    from training import distributed

    opts = opts or TrainOptions()
    opts.check()
    dist = distributed.from_env()
    try:
        return _train_anomaly(dist, bags, spec, out, opts, window=window, stride=stride,
                              command=command, overwrite=overwrite,
                              say=dist.say(say or log.info),
                              show_progress=show_progress if dist.is_main else False)
    except EncdecError as err:
        dist.fail(err)          # ranks waiting for rank 0's result raise it too
        raise
    finally:
        dist.close()


def _train_anomaly(dist: Any, bags: Sequence[str | Path], spec: SignalSpec | str | Path,
                   out: str | Path, opts: TrainOptions, *, window: int | None,
                   stride: int | None, command: str, overwrite: bool,
                   say: Callable[[str], None], show_progress: bool | None) -> TrainResult:
    from training.data import ShardCache, WindowPlan, default_cache_dir

    out = Path(out)
    dist.run_agreed(lambda: check_output_dir(out, what='model directory', empty=not overwrite,
                                             error=ModelDirError) if dist.is_main else None)
    if not isinstance(spec, SignalSpec):
        spec = SignalSpec.load(spec)
    if window is not None or stride is not None:
        spec = spec.with_window(window=window, stride=stride)
    t0 = time.perf_counter()
    bags = expand_bags(list(bags) if not isinstance(bags, (str, Path)) else [bags])
    with BagSource(bags[0]) as first:
        spec = bind_spec(spec, first)
    channels = spec.channels
    W, C = spec.window, len(channels)
    train_stride = opts.train_stride or spec.stride
    plan = WindowPlan(window=W, period_ns=spec.period_ns,
                      strides={'train': train_stride, 'val': spec.stride, 'calib': spec.stride},
                      exclude_labelled=opts.exclude_labelled,
                      blocks=functools.partial(_blocks_of, span=opts.train_span, window=W,
                                               val_fraction=opts.val_fraction,
                                               calib_fraction=opts.calib_fraction))
    cache = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir(out)
    data = ShardedWindows(bags, spec, ShardCache(cache, spec), plan, dist=dist, seed=opts.seed,
                          shuffle_shards=opts.shuffle_shards, workers=opts.workers,
                          tensors=not opts.model.classical)
    summaries = data.summarise()
    folds = opts.folds
    if folds is None:          # little data: cross-fit the calibration (in memory, one process)
        heldout_n = data.count('val') + (data.count('calib') if opts.calib_fraction > 0 else 0)
        folds = CROSSFIT_FOLDS if heldout_n < CROSSFIT_BELOW and not dist.active else 0
    if folds:
        if dist.active:
            raise ConfigError('cross-fitted calibration (--folds) runs in one process; run '
                              'without torchrun, or give --folds 0')
        return _train_crossfit(bags, spec, out, opts, folds, command=command,
                               overwrite=overwrite, say=say, show_progress=show_progress)
    mean, std, flat = fit_normalization(Moments.combine(s.moments for s in summaries),
                                        channels)
    if flat:
        say(f'  note: {len(flat)} channel(s) barely move in the training data '
            f'({", ".join(flat[:3])}{"..." if len(flat) > 3 else ""}); any change on them will '
            'look anomalous')
    rows = {k: int(sum(s.rows[k] for s in summaries)) for k in ('train', 'val', 'calib')}
    dropped = int(sum(s.dropped for s in summaries))
    n_train, n_val = data.count('train'), data.count('val')
    n_calib = data.count('calib') if opts.calib_fraction > 0 else n_val
    for name, count in (('training', n_train), ('validation', n_val), ('calibration', n_calib)):
        if count < 2 and dropped:
            raise ConfigError(f'only {count} {name} windows of {W} samples are usable: '
                              f'{dropped} windows were left out because they hold NaN or '
                              'infinite values (or labelled faults); drop the messages with '
                              'non-finite values from the bag, or leave their fields out of '
                              'the spec')
        if count < 2:
            raise ConfigError(f'only {count} {name} windows of {W} samples fit in the data; '
                              'give longer bags, a smaller window or a smaller stride')
    data.set_normalization(mean, std)
    t_read = time.perf_counter() - t0
    built = sum(s.built for s in summaries)
    say(f'data: {len(bags)} bag(s), {C} channels at {spec.rate_hz:g} Hz, window {W}; '
        f'windows train {n_train} / val {n_val} / calib '
        f'{n_calib if opts.calib_fraction > 0 else "= val"}'
        + (f' ({dropped} left out: labelled or NaN)' if dropped else ''))
    say(f'  shards: {built} read from bags, {len(bags) - built} from the cache {cache}'
        + (f'; {dist.world} processes ({dist.backend})' if dist.active else ''))

    with tempfile.TemporaryDirectory(prefix='encdec_train_') as tmp:
        onnx_tmp = Path(tmp) / 'model.onnx'
        if opts.model.classical:
            fitted = _fit_classical(opts, data, onnx_tmp, say, dist)
        else:
            corrupt = None
            noise = opts.corruption()
            if noise is not None:
                say(f'  denoising: inputs corrupted with {noise.text} (fresh for every batch), '
                    'targets clean')
                corrupt = _corrupter(noise, mean, std, spec.rate_hz, opts.seed, dist.rank)
            fitted = _train_network(opts, data, onnx_tmp, say, show_progress, dist, corrupt)
        history, best_epoch, t_train = fitted.history, fitted.best_epoch, fitted.seconds
        export, model = fitted.export, fitted.module
        from encdec_ros.engine import InferenceEngine

        engine = InferenceEngine(onnx_tmp, device='cpu', warmup=False)
        # the threshold and the normal statistics see every held-out window: the calibration
        # blocks and the validation blocks (which only chose the epoch), so that the tail is
        # estimated on as much of the recording as possible. Each rank scores its own bags;
        # rank 0 calibrates on all of them, in bag order.
        val_parts = dist.gather(_held_out_errors(engine, data, 'val'))
        calib_parts = dist.gather(_held_out_errors(engine, data, 'calib')) \
            if opts.calib_fraction > 0 else None
        if not dist.is_main:
            shared = dist.receive()
            return TrainResult(out, shared['figures'], shared['calibration'],
                               [tuple(h) for h in shared['history']], model)
        dist.owe()
        val_err, val_codes, val_lengths = _in_bag_order(val_parts, C)
        heldout = _split_lengths(val_err, val_lengths)
        codes = _split_lengths(val_codes, val_lengths) if val_codes is not None else []
        if opts.calib_fraction > 0:
            calib_only, calib_codes, calib_lengths = _in_bag_order(calib_parts, C)
            heldout = _split_lengths(calib_only, calib_lengths) + heldout
            if calib_codes is not None:
                codes = _split_lengths(calib_codes, calib_lengths) + codes
        t2_parts = [fitted.t2.t2(c) for c in codes] if fitted.t2 is not None else None
        fit = _calibrate(heldout, opts, spec, say, t2=fitted.t2, t2_parts=t2_parts)
        figures = {
            'command': command,
            'bags': [str(b) for b in bags],
            'train_span_s': span_yaml(opts.train_span),
            'rows': rows,
            'folds': 0,
            'windows': {'train': n_train, 'val': n_val, 'calib': n_calib,
                        'heldout': int(sum(len(p) for p in heldout)), 'left_out': dropped},
            'train_stride': train_stride,
            'epochs_run': len(history),
            'best_epoch': best_epoch,
            'train_loss': history[best_epoch - 1][0] if best_epoch else None,
            'val_loss': history[best_epoch - 1][1] if best_epoch else None,
            'history': {'train': [h[0] for h in history], 'val': [h[1] for h in history]},
            'seconds': {'data': round(t_read, 2), 'train': round(t_train, 2)},
            'processes': dist.world,
            'options': _options_dict(opts),
            **_export_figures(export),
        }
        calibration = {**fit.section(), 'scale': opts.threshold_scale,
                       'data': 'calibration and validation splits' if opts.calib_fraction > 0
                       else 'validation split'}
        _save(out, onnx_tmp, _model_sections(spec, mean, std, opts, fitted, fit, heldout,
                                             figures, calibration), overwrite)
    _finish(out, bags, opts, history, best_epoch, fit, export, say)
    dist.settle({'figures': figures, 'calibration': calibration, 'history': history})
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
              ) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[int]]:
    """Held-out errors of every fold's blocks from a model trained (or a baseline fitted) on
    the other folds (a network keeps one of them for early stopping), normalised on its own
    training rows; their Hotelling T^2 for a model with T^2 statistics (PCA; else None); and
    the epochs at which the fold networks stopped (empty for a baseline)."""
    W, C = spec.window, len(spec.channels)
    train_stride = opts.train_stride or spec.stride
    classical = opts.model.classical
    heldout: list[tuple[int, int, np.ndarray, np.ndarray | None]] = []
    epochs = []

    def quiet(_: str) -> None:
        pass

    for j in range(folds):
        v = (j + 1) % folds
        fit_on = (lambda b: b.fold != j) if classical else (lambda b: b.fold not in (j, v))
        train = _cut(recs, _runs(blocks, fit_on), W, train_stride, exclude)
        runs = _runs(blocks, lambda b: b.fold == j)
        test = _cut(recs, runs, W, spec.stride, exclude)
        train_raw = train.stack(W, C)
        _check_enough(f'fold {j + 1} training', len(train_raw), W, train.dropped)
        mean, std, _ = fit_normalization(np.concatenate(train.rows), spec.channels)
        m32, s32 = mean.astype(np.float32), std.astype(np.float32)
        train_x = ((train_raw - m32) / s32).astype(np.float32)
        if classical:
            statistics = _baseline_statistics(opts.model, train_x)
            best = 0
        else:
            import torch

            from training.models import build_model

            val_raw = _cut(recs, _runs(blocks, lambda b: b.fold == v), W, spec.stride,
                           exclude).stack(W, C)
            torch.manual_seed(opts.seed + 1 + j)
            model = build_model(opts.model, W, C)
            corrupt = None
            noise = opts.corruption()
            if noise is not None:
                corrupt = _corrupter(noise, mean, std, spec.rate_hz, opts.seed + 1 + j, 0)
            _, best, _ = _fit_arrays(model, train_x, ((val_raw - m32) / s32).astype(np.float32)
                                     if len(val_raw) else None, opts, quiet, show_progress,
                                     desc=f'fold {j + 1}/{folds}', corrupt=corrupt)
            epochs.append(best)

            def statistics(x: np.ndarray, model: Any = model
                           ) -> tuple[np.ndarray, np.ndarray | None]:
                return _torch_statistics(model, x)[0], None       # no T^2 for a network
        for (r, lo, _), part in zip(runs, test.parts):
            if len(part):
                errors, t2 = statistics(((part - m32) / s32).astype(np.float32))
                heldout.append((r, lo, errors, t2))
        say(f'  fold {j + 1}/{folds}: {len(train_raw)} training windows'
            + (f', best epoch {best}' if not classical else '')
            + f', {sum(len(p) for p in test.parts)} held-out windows')
    heldout.sort(key=lambda t: (t[0], t[1]))          # time order
    with_t2 = [h[3] for h in heldout if h[3] is not None]
    return ([h[2] for h in heldout], with_t2 if len(with_t2) == len(heldout) else None,
            epochs)


def _baseline_statistics(cfg: AEConfig, train_x: np.ndarray
                         ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """Fit a baseline on normalised windows; return what gives the per-channel statistics
    of normalised windows through its ONNX graph and their T^2 (PCA; else None)."""
    from encdec_ros.engine import InferenceEngine

    fit = _baseline_fit(cfg, train_x)
    t2 = T2Stats(fit.t2_center, fit.t2_scale) if fit.t2_center is not None else None
    with tempfile.TemporaryDirectory(prefix='encdec_fold_') as tmp:
        path = Path(tmp) / 'model.onnx'
        path.write_bytes(fit.onnx)
        engine = InferenceEngine(path, device='cpu', warmup=False)

    def statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        errors, codes = window_statistics(engine, x)
        return errors, t2.t2(codes) if t2 is not None and codes is not None else None

    return statistics


def _calibrate(heldout: list[np.ndarray], opts: TrainOptions, spec: SignalSpec,
               say: Callable[[str], None], *, t2: T2Stats | None = None,
               t2_parts: list[np.ndarray] | None = None) -> DetectorFit:
    """Channel statistics, slow context and threshold from held-out normal errors (and the
    T^2 of their codes, for a model with T^2 statistics), with the self-check: a detector
    that flags much of its own held-out normal data is refused."""
    slow_windows, note = (0, '') if opts.error == 'mse' else slow_context_windows(
        opts.slow_s, spec.rate_hz, spec.stride, [len(p) for p in heldout])
    if note:
        say(f'  note: {note}')
    fit = fit_detector(heldout, error=opts.error, slow_windows=slow_windows,
                       rule=opts.threshold_rule, risk=opts.risk, quantile=opts.quantile,
                       init_quantile=opts.init_quantile, threshold_scale=opts.threshold_scale,
                       margin=opts.margin,
                       debounce=(opts.debounce_k, opts.debounce_n, opts.release),
                       t2=t2 if t2_parts is not None else None, t2_parts=t2_parts)
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


def _split_lengths(errors: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """Held-out errors [N, 2C] cut into the stretches of ``lengths`` decisions."""
    out, lo = [], 0
    for n in lengths:
        if n:
            out.append(errors[lo:lo + n])
        lo += n
    return out


def _model_sections(spec: SignalSpec, mean: np.ndarray, std: np.ndarray, opts: TrainOptions,
                    fitted: '_Fitted', fit: DetectorFit, heldout: list[np.ndarray],
                    figures: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    """The sections of model.yaml."""
    W, C = spec.window, len(spec.channels)
    allerr = np.concatenate(heldout)
    return {
        'spec': spec.to_dict(),
        'window': {'length': W, 'stride': spec.stride, 'rate_hz': spec.rate_hz,
                   'channels': spec.channels},
        'normalization': {'mean': mean, 'std': std},
        'architecture': {**opts.model.to_dict(), 'parameters': fitted.parameters,
                         'input': {'name': 'x', 'shape': ['batch', W, C]},
                         'output': {'name': 'x_hat', 'shape': ['batch', W, C]},
                         'outputs': fitted.outputs, **fitted.details},
        'score': {'error': opts.error, 'log_eps': LOG_EPS,
                  'likelihood': opts.model.variational,
                  'slow_context_s': fit.slow_windows * spec.stride / spec.rate_hz,
                  **({'t2': fit.stats.t2.to_dict()} if fit.stats.t2 is not None else {})},
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


def _export_figures(export: dict[str, Any]) -> dict[str, Any]:
    """The export's parity and the versions, for the ``training`` section."""
    return {'export': {k: export[k] for k in ('exporter', 'opset', 'max_abs_diff', 'atol',
                                              'batch_sizes', 'file_bytes', 'seconds')},
            'versions': {**{k: str(v) for k, v in export['versions'].items()},
                         'python': platform.python_version(), 'numpy': np.__version__}}


def _save(out: Path, onnx_file: Path, sections: dict[str, Any], overwrite: bool) -> None:
    from encdec_ros.modeldir import save_model_dir

    save_model_dir(out, onnx_file=onnx_file, task='anomaly', sections=sections,
                   overwrite=overwrite)


def _finish(out: Path, bags: Sequence[str | Path], opts: TrainOptions,
            history: list[tuple[float, float]], best_epoch: int, fit: DetectorFit,
            export: dict[str, Any], say: Callable[[str], None]) -> None:
    """The loss curve beside the model, and the threshold line."""
    names = [Path(b).name for b in bags]
    if history:
        _loss_png(out / LOSS_PNG, history, best_epoch,
                  f'{_describe(opts.model)} on '
                  + (', '.join(names) if len(names) <= 3 else f'{len(names)} bags'),
                  ylabel='reconstruction NLL (normalised)' if opts.model.variational
                  else 'reconstruction MSE (normalised)')
    _say_threshold(say, fit, export)


def _say_threshold(say: Callable[[str], None], fit: DetectorFit, export: dict) -> None:
    cal = fit.calibration
    say(f'threshold {fit.threshold:.4g} ({cal.used} rule'
        + (f', fallback: {cal.details["fallback"]}' if 'fallback' in cal.details else '')
        + f', x{cal.details.get("margin_factor", 1.0):.2f} margin); held-out normal decisions '
        f'above it: {fit.exceed_share:.2%}, flagged after debouncing: {fit.flagged_share:.2%}; '
        f'ONNX parity {export["max_abs_diff"]:.1e}')


@dataclass
class _Fitted:
    """What fitting a network or a baseline leaves for calibration and model.yaml (the
    figures on rank 0; other ranks only need the ONNX file)."""

    history: list[tuple[float, float]]
    best_epoch: int
    seconds: float
    export: dict[str, Any]
    parameters: int
    outputs: list[str]
    module: Any = None
    t2: T2Stats | None = None
    details: dict[str, Any] = field(default_factory=dict)
    onnx: bytes = b''


def _describe(cfg: AEConfig) -> str:
    if cfg.arch == 'pca':
        return 'PCA (T^2 + Q)'
    if cfg.arch == 'robust_z':
        return 'robust z-score'
    reg = {'none': '', 'vae': 'variational ', 'sparse': f'sparse ({cfg.sparsity}) ',
           'contractive': 'contractive '}[cfg.reg]
    return f'{reg}{cfg.arch} autoencoder'


def _train_network(opts: TrainOptions, data: ShardedWindows, onnx_path: Path,
                   say: Callable[[str], None], show_progress: bool | None, dist: Any,
                   corrupt: Callable[[Any, int], Any] | None) -> _Fitted:
    """Build and train a torch autoencoder; rank 0 exports it to ``onnx_path`` and every
    rank gets the file."""
    import torch

    from training.models import build_model, count_parameters

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % 2**32)
    cfg = opts.model
    try:
        model = build_model(cfg, data.window, data.channels).to(dist.device)
    except ValueError as err:
        raise ConfigError(f'{err}; use a longer --window or fewer --layers') from None
    n_params = count_parameters(model)
    say(f'model: {_describe(cfg)}, hidden {cfg.hidden}, latent {cfg.latent}, layers '
        f'{cfg.layers}, {n_params} parameters')
    history, best_epoch, t_train = _fit(model, data, opts, say, show_progress, dist, corrupt)
    model = model.cpu()
    names = list(model.output_names)
    export: dict[str, Any] = {}
    if dist.is_main:
        export = _export_network(model, data.first_windows('train', 2),
                                 data.first_windows('val', 64), onnx_path)
    blob = dist.broadcast(onnx_path.read_bytes() if dist.is_main else None)
    if not dist.is_main:
        onnx_path.write_bytes(blob)
    return _Fitted(history, best_epoch, t_train, export, n_params, names, module=model)


def _export_network(model: Any, example: np.ndarray, parity: np.ndarray, onnx_path: Path
                    ) -> dict[str, Any]:
    """Export a trained family network (all its outputs: reconstruction, log-variance for
    a VAE, code) to ``onnx_path``, checked against torch on ``parity`` windows."""
    import torch

    from training.export import export_onnx
    from training.models import ExportModule

    return export_onnx(ExportModule(model), (torch.from_numpy(example),), onnx_path,
                       input_names=['x'], output_names=list(model.output_names),
                       parity_inputs=(parity,))


def _baseline_fit(cfg: AEConfig, train_x: np.ndarray) -> Any:
    """A baseline fitted on normalised windows in memory (its ONNX graph checked on them)."""
    from encdec_ros.anomaly.baselines import fit_baseline

    return fit_baseline(cfg.arch, train_x, latent=cfg.latent)


def _classical_fitted(cfg: AEConfig, fit: Any, seconds: float, say: Callable[[str], None]
                      ) -> _Fitted:
    """What a fitted baseline (:class:`~encdec_ros.anomaly.baselines.BaselineFit`) leaves for
    calibration and model.yaml."""
    details: dict[str, Any] = {}
    if cfg.arch == 'pca':
        details = {'components': fit.details['components'],
                   'explained_variance': round(fit.details['explained_variance'], 6)}
        say(f'model: PCA, {fit.details["components"]} components explain '
            f'{fit.details["explained_variance"]:.1%} of the training windows\' variance')
    else:
        say('model: robust z-score (median / MAD of each channel\'s training samples)')
    t2 = T2Stats(fit.t2_center, fit.t2_scale) if fit.t2_center is not None else None
    return _Fitted([], 0, seconds, fit.export, fit.parameters, ['x_hat', 'code'], t2=t2,
                   details=details, onnx=fit.onnx)


def _fit_classical(opts: TrainOptions, data: ShardedWindows, onnx_path: Path,
                   say: Callable[[str], None], dist: Any) -> _Fitted:
    """Fit a numpy baseline on the training windows (streamed; every rank's merged on rank
    0), write its ONNX graph to ``onnx_path`` on every rank. No torch."""
    from encdec_ros.anomaly.baselines import baseline_fitter

    cfg = opts.model
    start = time.perf_counter()
    fitter = baseline_fitter(cfg.arch, data.window, data.channels, latent=cfg.latent)
    for _, _, windows in data.held_out('train'):
        fitter.add(np.asarray(windows))
    parts = dist.gather(fitter)
    fit = None
    if dist.is_main:
        if dist.active:       # every rank's sums (or samples) in one fitter
            fitter = baseline_fitter(cfg.arch, data.window, data.channels,
                                     latent=cfg.latent).merge(parts or [])
        fit = fitter.finish(data.first_windows('val', 64))
    blob = dist.broadcast(fit.onnx if fit is not None else None)
    onnx_path.write_bytes(blob)
    seconds = time.perf_counter() - start
    if fit is None:
        return _Fitted([], 0, seconds, {}, 0, ['x_hat', 'code'])
    return _classical_fitted(cfg, fit, seconds, say)


def _rows(blocks: Sequence[_Block]) -> dict[str, int]:
    out: dict[str, int] = {}
    for blk in blocks:
        key = blk.role if blk.role != 'fold' else f'fold {blk.fold + 1}'
        out[key] = out.get(key, 0) + blk.hi - blk.lo
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# --------------------------------------------------------------------------- little data


def _train_crossfit(bags: Sequence[Path], spec: SignalSpec, out: Path, opts: TrainOptions,
                    folds: int, *, command: str, overwrite: bool, say: Callable[[str], None],
                    show_progress: bool | None) -> TrainResult:
    """:func:`train_anomaly` on little data, in memory and in one process: the calibration's
    held-out errors are cross-fitted over ``folds`` folds of time blocks (:func:`_crossfit`),
    and the model to export trains on every window for the median epoch of the folds (a
    baseline is fitted on every window)."""
    t0 = time.perf_counter()
    recs = read_bags(list(bags), spec)
    spec = recs[0].spec
    channels = spec.channels
    W, C = spec.window, len(channels)
    train_stride = opts.train_stride or spec.stride
    blocks = plan_blocks(recs, opts, W, folds)
    exclude = [rec.label_mask() if opts.exclude_labelled and rec.labels else None
               for rec in recs]
    train = _cut(recs, _runs(blocks, lambda b: True), W, train_stride, exclude)
    dropped = train.dropped
    mean, std, flat = fit_normalization(np.concatenate(train.rows), channels)
    if flat:
        say(f'  note: {len(flat)} channel(s) barely move in the training data '
            f'({", ".join(flat[:3])}{"..." if len(flat) > 3 else ""}); any change on them will '
            'look anomalous')
    train_raw = train.stack(W, C)
    _check_enough('training', len(train_raw), W, dropped)
    train_x = ((train_raw - mean.astype(np.float32)) / std.astype(np.float32)
               ).astype(np.float32)
    t_read = time.perf_counter() - t0
    if opts.threads and not opts.model.classical:
        import torch

        torch.set_num_threads(opts.threads)
    say(f'data: {len(recs)} bag(s), {C} channels at {spec.rate_hz:g} Hz, window {W}; '
        f'{len(train_x)} training windows; calibration cross-fitted over {folds} folds of '
        f'{len(blocks)} time blocks (every held-out error from a model that did not see it)'
        + (f' ({dropped} windows left out: labelled or NaN)' if dropped else ''))
    t1 = time.perf_counter()
    heldout, t2_parts, fold_epochs = _crossfit(recs, blocks, folds, exclude, opts, spec, say,
                                               show_progress)
    with tempfile.TemporaryDirectory(prefix='encdec_train_') as tmp:
        onnx_tmp = Path(tmp) / 'model.onnx'
        if opts.model.classical:
            fitted = _classical_fitted(opts.model, _baseline_fit(opts.model, train_x),
                                       time.perf_counter() - t1, say)
            onnx_tmp.write_bytes(fitted.onnx)
        else:
            import torch

            from training.models import build_model, count_parameters

            epochs = max(1, int(np.median(fold_epochs)))
            say(f'  folds stopped at epochs {fold_epochs}: the model trains on all windows '
                f'for {epochs} epochs')
            torch.manual_seed(opts.seed)
            np.random.seed(opts.seed % 2**32)
            model = build_model(opts.model, W, C)
            n_params = count_parameters(model)
            say(f'model: {_describe(opts.model)}, hidden {opts.model.hidden}, latent '
                f'{opts.model.latent}, layers {opts.model.layers}, {n_params} parameters')
            corrupt = None
            noise = opts.corruption()
            if noise is not None:
                say(f'  denoising: inputs corrupted with {noise.text} (fresh for every '
                    'batch), targets clean')
                corrupt = _corrupter(noise, mean, std, spec.rate_hz, opts.seed, 0)
            history, best_epoch, _ = _fit_arrays(model, train_x, None, opts, say,
                                                 show_progress, epochs=epochs, corrupt=corrupt)
            export = _export_network(model, train_x[:2], train_x[:64], onnx_tmp)
            fitted = _Fitted(history, best_epoch, time.perf_counter() - t1, export, n_params,
                             list(model.output_names), module=model)
        fit = _calibrate(heldout, opts, spec, say, t2=fitted.t2, t2_parts=t2_parts)
        history, best_epoch = fitted.history, fitted.best_epoch
        figures = {
            'command': command,
            'bags': [str(b) for b in bags],
            'train_span_s': span_yaml(opts.train_span),
            'rows': _rows(blocks),
            'folds': folds,
            'windows': {'train': len(train_x), 'val': 0, 'calib': 0,
                        'heldout': int(sum(len(p) for p in heldout)), 'left_out': dropped},
            'train_stride': train_stride,
            'epochs_run': len(history),
            'best_epoch': best_epoch,
            'fold_epochs': fold_epochs,
            'train_loss': history[best_epoch - 1][0] if best_epoch else None,
            'val_loss': None,
            'history': {'train': [h[0] for h in history], 'val': [None for _ in history]},
            'seconds': {'data': round(t_read, 2), 'train': round(fitted.seconds, 2)},
            'processes': 1,
            'options': _options_dict(opts),
            **_export_figures(fitted.export),
        }
        calibration = {**fit.section(), 'scale': opts.threshold_scale,
                       'data': f'cross-fitted over {folds} folds'}
        _save(out, onnx_tmp, _model_sections(spec, mean, std, opts, fitted, fit, heldout,
                                             figures, calibration), overwrite)
    _finish(out, bags, opts, history, best_epoch, fit, fitted.export, say)
    return TrainResult(out, figures, calibration, history, fitted.module, heldout)


def _options_dict(opts: TrainOptions) -> dict[str, Any]:
    data = asdict(opts)
    data['model'] = opts.model.to_dict()
    data['train_span'] = span_yaml(opts.train_span)
    return data
