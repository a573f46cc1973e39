"""Train an anomaly autoencoder from bags of normal operation, calibrate it and export it.

``encdec train anomaly`` calls :func:`train_anomaly`, which:

1. reads the bags with the signal spec into cached shards and streams their windows
   (:mod:`training.data`: memory bounded by a few bags whatever their number), optionally
   only a time span of each (``train_span``: e.g. SKAB's first 400 rows);
2. splits every recording by time into train / validation / calibration blocks
   (:func:`split_blocks`), and fits per-channel normalisation on the train part only;
3. trains an MLP, LSTM or GRU autoencoder (:mod:`training.models`) with Adam on the mean
   squared reconstruction error, seeded, with early stopping on the validation loss;
4. exports the best model to ONNX (``training.export.export_onnx``: onnxruntime must agree
   with torch within 1e-4 on real windows);
5. runs the exported model through the runtime's own error code
   (:func:`encdec_ros.anomaly.scorer.reconstruction_errors`) on the calibration windows, stores each
   channel's normal error statistics and calibrates the threshold (:mod:`training.calibrate`);
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
from encdec_ros.errors import ConfigError, EncdecError, ModelDirError
from encdec_ros.io.bag import BagSource, bind_spec
from encdec_ros.io.bagset import expand_bags
from encdec_ros.io.span import Span, resolve_span, span_text, span_yaml
from encdec_ros.io.spec import SignalSpec
from encdec_ros.modeldir import check_output_dir
from training.calibrate import RULES, calibrate
from training.data import SHUFFLE_SHARDS, Moments, ShardedWindows, rechunk
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
    train_span: Span | None = None
    exclude_labelled: bool = True
    time_limit_s: float | None = None
    threads: int | None = None
    # data loading (training.data); only shuffle_shards can change the model (> N bags)
    shuffle_shards: int = SHUFFLE_SHARDS
    workers: int | None = None
    cache_dir: str | None = None

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
        if isinstance(self.shuffle_shards, bool) or not isinstance(self.shuffle_shards, int) \
                or self.shuffle_shards < 1:
            raise ConfigError(f'shuffle_shards must be a whole number >= 1, got '
                              f'{self.shuffle_shards!r}; e.g. --shuffle-shards 8')
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise ConfigError(f'workers must be a whole number >= 0, got {self.workers!r}')


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
         show_progress: bool | None, dist: Any) -> tuple[list[tuple[float, float]], int, float]:
    """Adam on MSE with early stopping; loads the best weights. Returns history, best epoch
    (1-based) and seconds.

    Batches come from ``data`` (windows shuffled across a group of bags). Under torchrun each
    rank trains on its part of every global batch through DistributedDataParallel, its loss
    weighted by its share, so the averaged gradient is the whole batch's; losses and the
    stopping decisions are summed and agreed across ranks."""
    import torch

    from encdec_ros.progress import progress

    gen = torch.Generator().manual_seed(opts.seed)
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    net = dist.wrap(model)
    n = data.count('train')
    n_val = data.count('val')
    scale = 1.0 / (data.window * data.channels)
    steps = sum(data.batches_per_epoch(e, opts.batch_size) for e in range(1, opts.epochs + 1))
    history: list[tuple[float, float]] = []
    best, best_epoch, best_state, stale = math.inf, 0, None, 0
    start = time.perf_counter()
    bar = iter(progress(range(steps), total=steps, desc=f'training {opts.model.arch}',
                        unit='batch', min_total=0, enable=show_progress))
    for epoch in range(1, opts.epochs + 1):
        model.train()
        total = 0.0
        for x, size in data.train_batches(epoch, opts.batch_size, gen):
            x = x.to(dist.device)
            if not dist.active:
                loss = torch.mean((net(x) - x) ** 2)
                total += loss.item() * len(x)
            elif len(x):
                sq = torch.sum((net(x) - x) ** 2)
                loss = sq * (scale * dist.world / size)   # DDP averages over the ranks
                total += sq.item() * scale
            else:                       # no window of this batch here: join the all-reduce
                loss = net(x.new_zeros((1, data.window, data.channels))).sum() * 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            next(bar, None)
        train_loss = float(dist.all_sum(total)) / n
        val_loss = _held_out_loss(model, data, opts.batch_size * 4, dist) / max(n_val, 1)
        history.append((train_loss, val_loss))
        better = val_loss < best * (1 - 1e-4)
        if better:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        elapsed = float(dist.all_max(time.perf_counter() - start))
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


def _held_out_loss(model: Any, data: ShardedWindows, batch: int, dist: Any) -> float:
    """Sum over the validation windows of each window's mean squared error (all ranks), in
    pieces of ``batch`` windows across block and bag boundaries (as one array would be)."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        pieces = (w for _, _, w in data.held_out('val'))
        for part in rechunk(pieces, batch):
            part = part.to(dist.device)
            total += float(torch.mean((model(part) - part) ** 2)) * len(part)
    return float(dist.all_sum(total))


def _held_out_errors(engine: Any, data: ShardedWindows, split: str
                     ) -> dict[int, tuple[np.ndarray, list[int]]]:
    """Per-channel errors of this rank's held-out windows of ``split``, through the runtime's
    own code: bag -> (errors [n, 2C] in block order, windows per block)."""
    from encdec_ros.anomaly.scorer import DEFAULT_BATCH

    meta: list[tuple[int, int, int]] = []

    def windows() -> Any:
        for bag, block, w in data.held_out(split):
            meta.append((bag, block, len(w)))
            yield w.numpy()

    # whole engine batches across blocks and bags, as one array of every window would give
    errs = [reconstruction_errors(engine, chunk) for chunk in rechunk(windows(), DEFAULT_BATCH)]
    flat = np.concatenate(errs) if errs else np.zeros((0, 2 * data.channels))
    out: dict[int, tuple[list[np.ndarray], dict[int, int]]] = {}
    lo = 0
    for bag, block, n in meta:
        parts, blocks = out.setdefault(bag, ([], {}))
        parts.append(flat[lo:lo + n])
        blocks[block] = blocks.get(block, 0) + n
        lo += n
    return {bag: (np.concatenate(parts) if parts else flat[:0], [blocks[k] for k in sorted(blocks)])
            for bag, (parts, blocks) in out.items()}


def _in_bag_order(parts: list[dict[int, tuple[np.ndarray, list[int]]]], channels: int
                  ) -> tuple[np.ndarray, list[int]]:
    """Errors and block lengths gathered from every rank, in bag order."""
    merged = {bag: value for part in parts for bag, value in part.items()}
    order = sorted(merged)
    errors = [merged[b][0] for b in order]
    lengths = [n for b in order for n in merged[b][1]]
    return (np.concatenate(errors) if errors else np.zeros((0, 2 * channels))), lengths


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
    import torch

    from training.data import ShardCache, WindowPlan, default_cache_dir
    from training.export import export_onnx

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
                          shuffle_shards=opts.shuffle_shards, workers=opts.workers)
    summaries = data.summarise()
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

    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    np.random.seed(opts.seed % 2**32)
    model = build_model(opts.model, W, C).to(dist.device)
    n_params = count_parameters(model)
    say(f'model: {opts.model.arch} autoencoder, hidden {opts.model.hidden}, latent '
        f'{opts.model.latent}, {n_params} parameters')
    history, best_epoch, t_train = _fit(model, data, opts, say, show_progress, dist)
    model = model.cpu()

    with tempfile.TemporaryDirectory(prefix='encdec_train_') as tmp:
        onnx_tmp = Path(tmp) / 'model.onnx'
        export: dict[str, Any] = {}
        if dist.is_main:
            parity = data.first_windows('val', 64)
            export = export_onnx(model, (torch.from_numpy(data.first_windows('train', 2)),),
                                 onnx_tmp, input_names=['x'], output_names=['x_hat'],
                                 parity_inputs=(parity,))
        blob = dist.broadcast(onnx_tmp.read_bytes() if dist.is_main else None)
        if not dist.is_main:
            onnx_tmp.write_bytes(blob)
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
        val_err, val_lengths = _in_bag_order(val_parts, C)
        if opts.calib_fraction > 0:
            calib_only, calib_lengths = _in_bag_order(calib_parts, C)
            calib_err = np.concatenate([calib_only, val_err])
            calib_lengths = calib_lengths + val_lengths
        else:
            calib_err, calib_lengths = val_err, val_lengths
        stats = ChannelStats.fit(calib_err)
        slow_windows, slow_note = _slow_windows(opts, spec, calib_lengths)
        if slow_note:
            say(f'  note: {slow_note}')
        calib_slow = val_slow = None
        if slow_windows:
            calib_slow = _slow_runs(calib_err, calib_lengths, slow_windows)
            stats = stats.with_slow(SlowStats.fit(calib_slow, slow_windows))
            val_slow = _slow_runs(val_err, val_lengths, slow_windows) \
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
            'train_span_s': span_yaml(opts.train_span),
            'rows': rows,
            'windows': {'train': n_train, 'val': n_val, 'calib': n_calib,
                        'left_out': dropped},
            'train_stride': train_stride,
            'epochs_run': len(history),
            'best_epoch': best_epoch,
            'train_loss': history[best_epoch - 1][0] if best_epoch else None,
            'val_loss': history[best_epoch - 1][1] if best_epoch else None,
            'history': {'train': [h[0] for h in history], 'val': [h[1] for h in history]},
            'seconds': {'data': round(t_read, 2), 'train': round(t_train, 2)},
            'processes': dist.world,
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
    names = [Path(b).name for b in bags]
    _loss_png(out / LOSS_PNG, history, best_epoch,
              f'{opts.model.arch} autoencoder on '
              + (', '.join(names) if len(names) <= 3 else f'{len(names)} bags'))
    say(f'threshold {threshold:.4g} ({cal.used} rule'
        + (f', fallback: {cal.details["fallback"]}' if 'fallback' in cal.details else '')
        + f'); validation windows above it: {calibration["exceed_validation"]:.2%}; '
        f'ONNX parity {export["max_abs_diff"]:.1e}')
    dist.settle({'figures': figures, 'calibration': calibration, 'history': history})
    return TrainResult(out, figures, calibration, history, model)


def _slow_windows(opts: TrainOptions, spec: SignalSpec, lengths: list[int]
                  ) -> tuple[int, str]:
    """Decisions in the slow context (0: none) and a note when it had to be turned off."""
    if not opts.slow_s or opts.error == 'mse':
        return 0, ''
    windows = int(round(opts.slow_s * spec.rate_hz / spec.stride))
    if windows < SLOW_MIN_WINDOWS:
        return 0, (f'slow context off: {opts.slow_s:g} s is only {windows} decision(s) at '
                   f'{spec.rate_hz:g} Hz with stride {spec.stride}; give --slow of at least '
                   f'{SLOW_MIN_WINDOWS * spec.stride / spec.rate_hz:g} s')
    longest = max(lengths, default=0)
    total = sum(lengths)
    if longest < 3 * windows or total < SLOW_MIN_CONTEXTS * windows:
        return 0, (f'slow context off: the held-out data holds {total} decisions (longest '
                   f'block {longest}), too few to calibrate a context of {windows} decisions '
                   f'(it needs {SLOW_MIN_CONTEXTS} contexts, the longest block 3); give longer '
                   'bags or a shorter --slow')
    return windows, ''


def _slow_runs(channel_errors: np.ndarray, lengths: list[int], windows: int
               ) -> np.ndarray:
    """The slow context's running means [N, 2C] over held-out windows, restarted at every
    block of ``lengths`` windows (blocks are not contiguous in time)."""
    out, lo = [], 0
    for n in lengths:
        if n:
            context = SlowContext(windows, channel_errors.shape[1])
            out.append(context.run(window_features(channel_errors[lo:lo + n])))
        lo += n
    return np.concatenate(out) if out else np.zeros((0, channel_errors.shape[1]))


def _options_dict(opts: TrainOptions) -> dict[str, Any]:
    data = asdict(opts)
    data['model'] = opts.model.to_dict()
    data['train_span'] = span_yaml(opts.train_span)
    return data
