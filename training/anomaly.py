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

from encdec_ros.anomaly.scorer import (
    ERROR_KINDS,
    LOG_EPS,
    SLOW_MIN_WINDOWS,
    ChannelStats,
    SlowContext,
    SlowStats,
    aggregate_errors,
    check_debounce,
    reconstruction_errors,
    window_features,
)
from encdec_ros.errors import ConfigError, ModelDirError
from encdec_ros.io.bag import Recording, read_bags
from encdec_ros.io.spec import SignalSpec
from encdec_ros.io.window import window_ends, windows_at
from encdec_ros.modeldir import check_output_dir
from encdec_ros.anomaly.calibrate import RULES, calibrate
from training.models import AEConfig, build_model, count_parameters

log = logging.getLogger(__name__)

LOSS_PNG = 'loss.png'
MAX_BLOCKS = 20
"""Most blocks a recording is cut into for the train / val / calib split."""
SLOW_MIN_CONTEXTS = 50
"""Held-out decisions needed to calibrate a slow context, in context lengths."""
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
        slow_s: Seconds of the slow context (the running mean of each channel's error,
            and roughness over the last decisions; catches small persistent faults);
            0 turns it off. It needs calibration blocks several times this long.
        debounce_k: Windows above the threshold (of debounce_n) that raise the flag.
        debounce_n: Windows the debouncer remembers.
        release: Hysteresis: the flag falls when debounce_n scores stay below this level.
        train_span: (start, end) seconds from each recording's first sample; None = all.
        exclude_labelled: Leave out windows that overlap a labelled interval of the bag.
        time_limit_s: Stop training after this many seconds (keeps the best epoch).
        threads: torch CPU threads (None: torch's default).
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
    error: str = 'channel_max_flat'
    threshold_rule: str = 'pot'
    risk: float = 1e-4
    quantile: float | None = None
    init_quantile: float = 0.98
    threshold_scale: float = 1.0
    slow_s: float = 1.0
    debounce_k: int = 3
    debounce_n: int = 5
    release: float = 0.8
    train_span: tuple[float | None, float | None] | None = None
    exclude_labelled: bool = True
    time_limit_s: float | None = None
    threads: int | None = None

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
        if not self.threshold_scale > 0:
            raise ConfigError(f'threshold scale must be positive, got {self.threshold_scale!r}')
        check_debounce(self.debounce_k, self.debounce_n, self.release)
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
    """

    path: Path
    figures: dict[str, Any]
    calibration: dict[str, Any]
    history: list[tuple[float, float]]
    module: Any = None


@dataclass
class _Split:
    train: list[np.ndarray] = field(default_factory=list)   # raw windows per recording
    val: list[np.ndarray] = field(default_factory=list)
    calib: list[np.ndarray] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=lambda: {'train': 0, 'val': 0, 'calib': 0})
    train_rows: list[np.ndarray] = field(default_factory=list)
    dropped: int = 0         # windows left out for NaN or labels


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


def _split_recordings(recs: Sequence[Recording], opts: TrainOptions, window: int,
                      stride: int, calib_stride: int = 1) -> _Split:
    split = _Split()
    for rec in recs:
        a, b = span_rows(rec.times_ns, opts.train_span)
        n = b - a
        if n < 3 * window:
            where = f' inside the span {opts.train_span}' if opts.train_span else ''
            raise ConfigError(f'{rec.source} has {n} aligned samples{where}, fewer than three '
                              f'windows ({3 * window}); give a longer bag or span, or a smaller '
                              'window')
        exclude = rec.label_mask() if opts.exclude_labelled and rec.labels else None
        for name, lo, hi in split_blocks(n, window, opts.val_fraction, opts.calib_fraction):
            lo, hi = a + lo, a + hi
            # held-out windows at the run-time stride, as the scorer will see them
            step = stride if name == 'train' else calib_stride
            wins, dropped = _segment_windows(rec, lo, hi, window, step, exclude)
            getattr(split, name).append(wins)
            split.rows[name] += hi - lo
            split.dropped += dropped
            if name == 'train':
                rows = rec.data[lo:hi]
                if exclude is not None:
                    rows = rows[~exclude[lo:hi]]
                split.train_rows.append(rows)
    return split


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


def _fit(model: Any, train: np.ndarray, val: np.ndarray, opts: TrainOptions,
         say: Callable[[str], None], show_progress: bool | None
         ) -> tuple[list[tuple[float, float]], int, float]:
    """Adam on MSE with early stopping; loads the best weights. Returns history, best epoch
    (1-based) and seconds."""
    import torch

    from encdec_ros.progress import progress

    gen = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    xt, xv = torch.from_numpy(train), torch.from_numpy(val)
    n = len(xt)
    per_epoch = -(-n // opts.batch_size)
    history: list[tuple[float, float]] = []
    best, best_epoch, best_state, stale = math.inf, 0, None, 0
    start = time.perf_counter()
    bar = iter(progress(range(opts.epochs * per_epoch), total=opts.epochs * per_epoch,
                        desc=f'training {opts.model.arch}', unit='batch', min_total=0,
                        enable=show_progress))
    for epoch in range(1, opts.epochs + 1):
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
        val_loss = _evaluate(model, xv, opts.batch_size * 4)
        history.append((train_loss, val_loss))
        better = val_loss < best * (1 - 1e-4)
        if better:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        elapsed = time.perf_counter() - start
        say(f'  epoch {epoch:3d}  train {train_loss:.5f}  val {val_loss:.5f}'
            f'{"  *" if better else ""}  ({elapsed:.0f} s)')
        if stale >= opts.patience:
            say(f'  early stop: no better validation loss for {opts.patience} epochs')
            break
        if opts.time_limit_s is not None and elapsed >= opts.time_limit_s:
            say(f'  time limit of {opts.time_limit_s:g} s reached')
            break
    for _ in bar:   # close the bar
        pass
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch, time.perf_counter() - start


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
    split = _split_recordings(recs, opts, W, train_stride, spec.stride)
    mean, std, flat = fit_normalization(np.concatenate(split.train_rows), channels)
    if flat:
        say(f'  note: {len(flat)} channel(s) barely move in the training data '
            f'({", ".join(flat[:3])}{"..." if len(flat) > 3 else ""}); any change on them will '
            'look anomalous')
    train_raw = _stack(split.train, W, C)
    val_raw = _stack(split.val, W, C)
    calib_raw = _stack(split.calib, W, C) if opts.calib_fraction > 0 else val_raw
    for name, arr in (('training', train_raw), ('validation', val_raw),
                      ('calibration', calib_raw)):
        if len(arr) < 2 and split.dropped:
            raise ConfigError(f'only {len(arr)} {name} windows of {W} samples are usable: '
                              f'{split.dropped} windows were left out because they hold NaN or '
                              'infinite values (or labelled faults); drop the messages with '
                              'non-finite values from the bag, or leave their fields out of '
                              'the spec')
        if len(arr) < 2:
            raise ConfigError(f'only {len(arr)} {name} windows of {W} samples fit in the data; '
                              'give longer bags, a smaller window or a smaller stride')
    norm = lambda w: ((w - mean.astype(np.float32)) / std.astype(np.float32)  # noqa: E731
                      ).astype(np.float32)
    train_x, val_x, calib_x = norm(train_raw), norm(val_raw), norm(calib_raw)
    t_read = time.perf_counter() - t0
    say(f'data: {len(recs)} bag(s), {C} channels at {spec.rate_hz:g} Hz, window {W}; '
        f'windows train {len(train_x)} / val {len(val_x)} / calib '
        f'{len(calib_x) if opts.calib_fraction > 0 else "= val"}'
        + (f' ({split.dropped} left out: labelled or NaN)' if split.dropped else ''))

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % 2**32)
    model = build_model(opts.model, W, C)
    n_params = count_parameters(model)
    say(f'model: {opts.model.arch} autoencoder, hidden {opts.model.hidden}, latent '
        f'{opts.model.latent}, {n_params} parameters')
    history, best_epoch, t_train = _fit(model, train_x, val_x, opts, say, show_progress)

    with tempfile.TemporaryDirectory(prefix='encdec_train_') as tmp:
        onnx_tmp = Path(tmp) / 'model.onnx'
        parity = val_x[:64]
        export = export_onnx(model, (torch.from_numpy(train_x[:2]),), onnx_tmp,
                             input_names=['x'], output_names=['x_hat'],
                             parity_inputs=(parity,))
        from encdec_ros.engine import InferenceEngine

        engine = InferenceEngine(onnx_tmp, device='cpu', warmup=False)
        # the threshold and the normal statistics see every held-out window: the calibration
        # blocks and the validation blocks (which only chose the epoch), so that the tail is
        # estimated on as much of the recording as possible
        val_err = reconstruction_errors(engine, val_x)
        if opts.calib_fraction > 0:
            calib_err = np.concatenate([reconstruction_errors(engine, calib_x), val_err])
            calib_parts = split.calib + split.val
        else:
            calib_err, calib_parts = val_err, split.val
        stats = ChannelStats.fit(calib_err)
        slow_windows, slow_note = _slow_windows(opts, spec, calib_parts)
        if slow_note:
            say(f'  note: {slow_note}')
        calib_slow = val_slow = None
        if slow_windows:
            calib_slow = _slow_runs(calib_err, calib_parts, slow_windows)
            stats = stats.with_slow(SlowStats.fit(calib_slow, slow_windows))
            val_slow = _slow_runs(val_err, split.val, slow_windows) \
                if opts.calib_fraction > 0 else calib_slow
        agg, _ = aggregate_errors(calib_err, opts.error, stats, calib_slow)
        cal = calibrate(agg, rule=opts.threshold_rule, risk=opts.risk, quantile=opts.quantile,
                        init_quantile=opts.init_quantile)
        threshold = cal.threshold * opts.threshold_scale
        if not (math.isfinite(threshold) and threshold > 0):
            raise ConfigError(f'the calibrated threshold is {threshold!r}, not a positive '
                              f'number; use --error mse or the quantile rule')
        val_agg, _ = aggregate_errors(val_err, opts.error, stats, val_slow)
        calibration = {
            **cal.to_dict(), 'threshold': float(threshold),
            'calibrated_threshold': cal.threshold, 'scale': opts.threshold_scale,
            'data': 'calibration and validation splits' if opts.calib_fraction > 0
                    else 'validation split',
            'exceed_calibration': float(np.mean(agg >= threshold)),
            'exceed_validation': float(np.mean(val_agg >= threshold)),
        }
        figures = {
            'command': command,
            'bags': [str(b) for b in bags],
            'train_span_s': list(opts.train_span) if opts.train_span else None,
            'rows': split.rows,
            'windows': {'train': len(train_x), 'val': len(val_x), 'calib': len(calib_x),
                        'left_out': split.dropped},
            'train_stride': train_stride,
            'epochs_run': len(history),
            'best_epoch': best_epoch,
            'train_loss': history[best_epoch - 1][0] if best_epoch else None,
            'val_loss': history[best_epoch - 1][1] if best_epoch else None,
            'history': {'train': [h[0] for h in history], 'val': [h[1] for h in history]},
            'seconds': {'data': round(t_read, 2), 'train': round(t_train, 2)},
            'options': _options_dict(opts),
            'export': {k: export[k] for k in ('exporter', 'opset', 'max_abs_diff', 'atol',
                                              'batch_sizes', 'file_bytes', 'seconds')},
            'versions': {**{k: str(v) for k, v in export['versions'].items()},
                         'python': platform.python_version(),
                         'numpy': np.__version__},
        }
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
                      'slow_context_s': slow_windows * spec.stride / spec.rate_hz},
            'threshold': float(threshold),
            'calibration': calibration,
            'channel_errors': {
                **stats.to_dict(),
                'mean': np.nanmean(calib_err[:, :C], axis=0),
                'p99': np.nanquantile(calib_err[:, :C], 0.99, axis=0),
            },
            'detector': {'debounce_k': opts.debounce_k, 'debounce_n': opts.debounce_n,
                         'release': opts.release},
            'training': figures,
        }
        save_model_dir(out, onnx_file=onnx_tmp, task='anomaly', sections=sections,
                       overwrite=overwrite)
    _loss_png(out / LOSS_PNG, history, best_epoch,
              f'{opts.model.arch} autoencoder on {", ".join(Path(b).name for b in bags)}')
    say(f'threshold {threshold:.4g} ({cal.used} rule'
        + (f', fallback: {cal.details["fallback"]}' if 'fallback' in cal.details else '')
        + f'); validation windows above it: {calibration["exceed_validation"]:.2%}; '
        f'ONNX parity {export["max_abs_diff"]:.1e}')
    return TrainResult(out, figures, calibration, history, model)


def _slow_windows(opts: TrainOptions, spec: SignalSpec, parts: list[np.ndarray]
                  ) -> tuple[int, str]:
    """Decisions in the slow context (0: none) and a note when it had to be turned off."""
    if not opts.slow_s or opts.error == 'mse':
        return 0, ''
    windows = int(round(opts.slow_s * spec.rate_hz / spec.stride))
    if windows < SLOW_MIN_WINDOWS:
        return 0, (f'slow context off: {opts.slow_s:g} s is only {windows} decision(s) at '
                   f'{spec.rate_hz:g} Hz with stride {spec.stride}; give --slow of at least '
                   f'{SLOW_MIN_WINDOWS * spec.stride / spec.rate_hz:g} s')
    longest = max((len(p) for p in parts), default=0)
    total = sum(len(p) for p in parts)
    if longest < 3 * windows or total < SLOW_MIN_CONTEXTS * windows:
        return 0, (f'slow context off: the held-out data holds {total} decisions (longest '
                   f'block {longest}), too few to calibrate a context of {windows} decisions '
                   f'(it needs {SLOW_MIN_CONTEXTS} contexts, the longest block 3); give longer '
                   'bags or a shorter --slow')
    return windows, ''


def _slow_runs(channel_errors: np.ndarray, parts: list[np.ndarray], windows: int
               ) -> np.ndarray:
    """The slow context's running means [N, 2C] over held-out windows, restarted at every
    block (blocks are not contiguous in time)."""
    out, lo = [], 0
    for part in parts:
        n = len(part)
        if n:
            context = SlowContext(windows, channel_errors.shape[1])
            out.append(context.run(window_features(channel_errors[lo:lo + n])))
        lo += n
    return np.concatenate(out) if out else np.zeros((0, channel_errors.shape[1]))


def _options_dict(opts: TrainOptions) -> dict[str, Any]:
    data = asdict(opts)
    data['model'] = opts.model.to_dict()
    if data['train_span'] is not None:
        data['train_span'] = list(data['train_span'])
    return data
