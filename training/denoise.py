"""Train a causal denoising autoencoder for one topic, tune the classical filters, export.

``encdec train denoise`` calls :func:`train_denoiser`, which:

1. reads the spec's one topic from each bag at its native rate (every message, no
   resampling) and pairs it with a clean reference (:func:`load_pairs`): the robot's ground
   truth topic where there is one (the synthetic robot's ``/imu/clean``, same header
   stamps), else the recorded signal itself, with the ``--noise`` corruption
   (:mod:`encdec_ros.denoise.noise`) added on top to make the input;
2. splits each recording by time (the last ``val_fraction`` validates), fits per-channel
   normalisation on the training part, and fits the model's linear part (a causal FIR
   filter over the window) by ridge regression;
3. trains an MLP or GRU that sees the last ``window`` noisy samples and predicts the noise
   on the current one (a residual, in units of each channel's noise level), seeded, with
   early stopping on the validation loss; the ONNX graph takes the raw window and returns
   the clean estimate, normalisation included;
4. exports to ONNX (onnxruntime must agree with torch within 1e-4 on real windows);
5. tunes the Butterworth, 1-Euro and Kalman baselines on the same validation data
   (:func:`encdec_ros.denoise.filters.tune_baselines`), and scores model and baselines there;
6. writes the model directory (task 'denoise') and a loss-curve PNG.

By default the model is not taught each training bag's constant offset between noisy and
clean (a MEMS turn-on bias, different at every power-up, so it would be learned wrongly
from one recording); ``learn_offset=True`` teaches it (a fixed bias that repeats).
"""

from __future__ import annotations

import copy
import logging
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encdec_ros.denoise.evaluate import Pair, load_pairs
from encdec_ros.denoise.filters import BASELINES, make_baseline, one_topic_spec, tune_baselines
from encdec_ros.denoise.noise import NoiseSpec
from encdec_ros.errors import BagError, ConfigError, EncdecError, ModelDirError
from encdec_ros.io.spec import SignalSpec

log = logging.getLogger(__name__)

ARCHS = ('mlp', 'gru')
DEFAULT_SIZES = {'mlp': (128, 2), 'gru': (64, 1)}
"""(hidden units, layers) per architecture when not given."""
LOSS_PNG = 'loss.png'
STD_FLOOR = 1e-6
LINEAR_LR_SCALE = 0.05
"""Learning rate of the ridge-initialised linear part, relative to the rest."""
RIDGE_ROWS = 100_000
"""Most windows used for the ridge fit of the linear part."""


@dataclass
class DenoiseOptions:
    """Everything ``encdec train denoise`` can set; defaults in comments.

    Attributes:
        arch: 'mlp' (flattened window) or 'gru' (recurrent over the window).
        window: Samples the model sees (default: the spec's window).
        hidden: Hidden units per layer (MLP, default 128) or GRU state size (default 64).
        layers: Hidden layers (MLP, default 2) or stacked GRU layers (default 1).
        epochs: Most passes over the training windows.
        patience: Stop after this many epochs without a better validation loss.
        batch_size: Windows per optimiser step.
        lr: Peak learning rate (one-cycle schedule, AdamW).
        weight_decay: AdamW weight decay.
        ridge: Ridge strength of the linear part's closed-form fit (relative to the data).
        val_fraction: Share of each recording (at its end) for validation and tuning.
        max_windows: Windows drawn per epoch at most (None: all).
        noise: Corruption added to the input (required without a clean topic).
        also_uncorrupted: With a clean topic and ``noise``: train (and validate, and tune
            the baselines) on each recording both with and without that corruption, so the
            model copes with a sensor that glitches only some of the time.
        clean_topic: 'auto' (``<topic>/clean`` when the bag has it), a topic, or None.
        learn_offset: Learn the mean noisy-minus-clean offset of the training bags.
        absolute_input: Also feed the nonlinear part the normalised level of the samples,
            not only their shape relative to the current sample (off: the estimate does
            not depend on the operating point, which generalises better across flights).
        train_span: (start, end) seconds from each recording's first sample; None = all.
        seed: Seed of every random draw (weights, shuffling, corruption).
        threads: torch CPU threads (None: torch's default).
        time_limit_s: Stop training after this many seconds (keeps the best epoch).
    """

    arch: str = 'mlp'
    window: int | None = None
    hidden: int | None = None
    layers: int | None = None
    epochs: int = 30
    patience: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    ridge: float = 1e-3
    val_fraction: float = 0.2
    max_windows: int | None = None
    noise: NoiseSpec | None = None
    also_uncorrupted: bool = False
    clean_topic: str | None = 'auto'
    learn_offset: bool = False
    absolute_input: bool = False
    train_span: tuple[float | None, float | None] | None = None
    seed: int = 0
    threads: int | None = None
    time_limit_s: float | None = None

    def check(self) -> None:
        """Raise ConfigError for an out-of-range option."""
        if self.arch not in ARCHS:
            raise ConfigError(f'arch {self.arch!r} is not one of {", ".join(ARCHS)}')
        if self.hidden is None:
            self.hidden = DEFAULT_SIZES[self.arch][0]
        if self.layers is None:
            self.layers = DEFAULT_SIZES[self.arch][1]
        for name in ('hidden', 'layers', 'epochs', 'batch_size'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f'{name} must be a whole number >= 1, got {value!r}')
        if self.window is not None and (not isinstance(self.window, int) or self.window < 2):
            raise ConfigError(f'window must be at least 2 samples, got {self.window!r}')
        if not 0.02 <= self.val_fraction <= 0.5:
            raise ConfigError(f'val_fraction must be between 0.02 and 0.5, got '
                              f'{self.val_fraction}')
        if not self.lr > 0 or self.weight_decay < 0 or self.ridge < 0:
            raise ConfigError('lr must be positive and weight_decay and ridge non-negative')


@dataclass
class DenoiseResult:
    """What :func:`train_denoiser` produced."""

    path: Path
    figures: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- model


def build_net(window: int, channels: int, opts: DenoiseOptions, norm: dict[str, np.ndarray]
              ) -> Any:
    """The torch module: raw window [B, N, C] in, clean current sample [B, C] out."""
    import torch
    from torch import nn

    class DenoiseNet(nn.Module):
        """Linear FIR part plus a nonlinear MLP or GRU part, predicting the noise."""

        def __init__(self) -> None:
            super().__init__()
            for key in ('input_mean', 'input_std', 'residual_scale', 'residual_offset'):
                self.register_buffer(key, torch.tensor(norm[key], dtype=torch.float32))
            self.arch = opts.arch
            flat = window * channels
            self.absolute = opts.absolute_input
            self.linear = nn.Linear(flat, channels)
            if opts.arch == 'mlp':
                dims = [flat + (channels if self.absolute else 0)] + [opts.hidden] * opts.layers
                body: list[nn.Module] = []
                for a, b in zip(dims[:-1], dims[1:]):
                    body += [nn.Linear(a, b), nn.GELU()]
                self.body = nn.Sequential(*body)
                self.head = nn.Linear(dims[-1], channels)
            else:
                self.gru = nn.GRU((2 if self.absolute else 1) * channels, opts.hidden,
                                  num_layers=opts.layers, batch_first=True)
                self.head = nn.Linear(opts.hidden, channels)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.rel_gain = 1.0 / math.sqrt(window)

        def features(self, x: Any) -> tuple[Any, Any]:
            # x: [B, N, C] raw samples, the newest last.
            rel = (x - x[:, -1:, :]) / self.residual_scale      # [B, N, C], noise units
            absn = (x - self.input_mean) / self.input_std         # [B, N, C]
            return rel, absn

        def residual(self, x: Any) -> Any:
            """The noise on the current sample, in units of residual_scale: [B, C]."""
            rel, absn = self.features(x)
            flat = rel.flatten(1)
            out = self.linear(flat)
            if self.arch == 'mlp':
                feats = flat * self.rel_gain
                if self.absolute:
                    feats = torch.cat([feats, absn[:, -1, :]], dim=1)
                out = out + self.head(self.body(feats))
            else:
                seq = rel * self.rel_gain
                if self.absolute:
                    seq = torch.cat([seq, absn], dim=2)
                seq, _ = self.gru(seq)
                out = out + self.head(seq[:, -1, :])
            return out

        def forward(self, x: Any, residual: bool = False) -> Any:
            if residual:        # the training target, through forward for DDP's hooks
                return self.residual(x)
            noise = self.residual(x) * self.residual_scale + self.residual_offset
            return x[:, -1, :] - noise                              # [B, C]

    return DenoiseNet()


def count_parameters(module: Any) -> int:
    """Trainable parameters of a torch module."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


# --------------------------------------------------------------------------- training


@dataclass
class _Split:
    """This rank's recordings (all of them without torchrun), with their global indices."""

    index: list[int]             # global pair index per local recording
    series: list[Any]            # torch [n_i, C] float32 per recording (whole recording)
    targets: list[Any]           # torch [n_i, C] float32: normalised residual targets
    train_ends: list[np.ndarray]  # window end indices (into each series) for training
    val_ends: list[np.ndarray]
    counts: list[int]            # training windows of every pair, all ranks, global order


def _windows(series: Any, ends: Any, window: int) -> Any:
    """Gather windows ending at ``ends``: [len(ends), window, C] (a copy)."""
    return series.unfold(0, window, 1)[ends - (window - 1)].transpose(1, 2)


def train_denoiser(bags: Sequence[str | Path], spec: SignalSpec | str | Path,
                   out: str | Path, *, options: DenoiseOptions | None = None,
                   force: bool = False, show_progress: bool | None = None,
                   command: str | None = None) -> DenoiseResult:
    """Train, export and save a denoising model directory; see the module docstring.

    Under torchrun every process calls this: the bags are divided among them, the
    normalisation and the linear part's least-squares system are summed over all, each
    global batch is trained with DistributedDataParallel (every rank draws the same order, as
    one process would), and rank 0 tunes the baselines on every validation part and writes
    the model directory.

    Args:
        bags: Training bags: bags, folders, glob patterns or list files.
        spec: A one-topic spec (object or YAML path).
        out: The model directory to write.
        options: Training options.
        force: Replace an existing model directory.
        show_progress: Progress bar (None: on a terminal).
        command: The command line, kept in model.yaml.

    Returns:
        The directory and the figures written to model.yaml's ``training`` section.
    """
    from training import distributed

    dist = distributed.from_env()
    try:
        return _train_denoiser(dist, bags, spec, out, options=options, force=force,
                               show_progress=show_progress if dist.is_main else False,
                               command=command)
    except EncdecError as err:
        dist.fail(err)
        raise
    finally:
        dist.close()


def _train_denoiser(dist: Any, bags: Sequence[str | Path], spec: SignalSpec | str | Path,
                    out: str | Path, *, options: DenoiseOptions | None, force: bool,
                    show_progress: bool | None, command: str | None) -> DenoiseResult:
    import torch

    from encdec_ros.io.bag import BagSource, bind_spec
    from encdec_ros.io.bagset import expand_bags
    from encdec_ros.modeldir import ModelDir, check_output_dir, save_model_dir
    from training.data import Moments
    from training.export import export_onnx

    t_start = time.perf_counter()
    opts = copy.deepcopy(options) if options is not None else DenoiseOptions()
    opts.check()
    out = Path(out)
    dist.run_agreed(lambda: check_output_dir(out, what='model directory', empty=not force,
                                             error=ModelDirError) if dist.is_main else None)
    if isinstance(spec, (str, Path)):
        spec = SignalSpec.load(spec)
    if opts.window is not None:
        spec = spec.with_window(window=opts.window, stride=1)
    elif spec.stride != 1:
        spec = spec.with_window(stride=1)
    window = spec.window
    bags = expand_bags(list(bags) if not isinstance(bags, (str, Path)) else [bags])
    if len(spec.topics) == 1:         # else load_pairs says why, below
        with BagSource(bags[0]) as first:
            spec = bind_spec(spec, first)
    n_bags = len(bags)

    def load() -> tuple[SignalSpec, list[tuple[int, Pair]]]:
        # pair g is bag g (corrupted), pair n_bags + g the same bag uncorrupted: the order of
        # load_pairs over all bags, whichever rank reads which bag
        found: list[tuple[int, Pair]] = []
        resolved = spec
        for g, bag in dist.mine(bags):
            resolved, pairs = load_pairs([bag], spec, clean_topic=opts.clean_topic,
                                         noise=opts.noise, seed=opts.seed + g,
                                         span=opts.train_span,
                                         also_uncorrupted=opts.also_uncorrupted)
            found += [(g + k * n_bags, p) for k, p in enumerate(pairs)]
        for _, pair in found:
            _check_length(pair, resolved, window, opts.val_fraction)
        return resolved, found

    resolved, mine = dist.run_agreed(load)
    mine.sort(key=lambda item: item[0])
    resolved = one_topic_spec(resolved)
    channels = len(resolved.channels)
    rate = resolved.rate_hz
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)

    # --- split by time, normalisation from the training part only (merged over ranks)
    cuts = [int(round(len(p.noisy) * (1.0 - opts.val_fraction))) for _, p in mine]
    offsets = [np.zeros(channels) if opts.learn_offset else (p.noisy[:c] - p.clean[:c]).mean(0)
               for (_, p), c in zip(mine, cuts)]
    local = [(g, Moments.of_rows(p.noisy[:c]), Moments.of_rows(p.noisy[:c] - p.clean[:c] - o),
              c, len(p.noisy), p.reference)
             for (g, p), c, o in zip(mine, cuts, offsets)]
    every = sorted((item for part in dist.all_gather(local) for item in part),
                   key=lambda item: item[0])
    noisy_m = Moments.combine(item[1] for item in every)
    resid_m = Moments.combine(item[2] for item in every)
    mean = noisy_m.mean
    std = _floor(noisy_m.std, mean)
    res_offset = resid_m.mean if opts.learn_offset else np.zeros(channels)
    res_scale = _floor(np.sqrt(resid_m.m2 / np.maximum(resid_m.count, 1.0)
                               + (resid_m.mean - res_offset) ** 2), mean)
    norm = {'input_mean': mean, 'input_std': std, 'residual_scale': res_scale,
            'residual_offset': res_offset}

    split = _Split([], [], [], [], [], [max(0, c - (window - 1)) for _, _, _, c, _, _ in every])
    for (g, pair), cut, off in zip(mine, cuts, offsets):
        split.index.append(g)
        split.series.append(torch.tensor(pair.noisy, dtype=torch.float32))
        target = (pair.noisy - pair.clean - off - res_offset) / res_scale
        split.targets.append(torch.tensor(target, dtype=torch.float32))
        split.train_ends.append(np.arange(window - 1, cut))
        split.val_ends.append(np.arange(cut, len(pair.noisy)))

    net = build_net(window, channels, opts, norm).to(dist.device)
    ridge_figures = _fit_linear(net, split, window, opts.ridge, rng, dist)

    figures = _train_loop(net, split, window, opts, rng, show_progress, dist)
    net = net.cpu()

    # --- the validation parts, model outputs included, go to rank 0
    model_val = _model_outputs(net, split, window)
    val_local = [(g, p.noisy[c:], p.clean[c:], est)
                 for (g, p), c, est in zip(mine, cuts, model_val)]
    gathered = dist.gather(val_local)
    if not dist.is_main:
        return DenoiseResult(out, dist.receive())
    dist.owe()
    val_parts = sorted((item for part in gathered for item in part), key=lambda x: x[0])
    val_segments = [(noisy, clean) for _, noisy, clean, _ in val_parts]
    references = sorted({item[5] for item in every})
    samples = {'train': int(sum(split.counts)),
               'validation': int(sum(n - c for _, _, _, c, n, _ in every))}

    # --- export, tune the baselines, score everything on the validation part
    first = split.index.index(0)
    val_windows = _windows(split.series[first], torch.as_tensor(split.val_ends[first][:256]),
                           window)
    with tempfile.TemporaryDirectory(prefix='encdec_denoise_') as tmp:
        onnx_path = Path(tmp) / 'model.onnx'
        export = export_onnx(net, (val_windows[:2],), onnx_path, input_names=['noisy'],
                             output_names=['clean'], parity_inputs=(val_windows,))
        skip = min(window, min(len(n) for n, _ in val_segments) // 4)
        baselines = tune_baselines(val_segments, rate_hz=rate, skip=skip)
        scores = _validation_scores(val_segments, [est for *_, est in val_parts], baselines,
                                    rate, skip)
        spec_dict = resolved.to_dict()
        sections = {
            'spec': spec_dict,
            'denoise': {
                'topic': resolved.topics[0].name,
                'type': resolved.topics[0].type,
                'channels': resolved.channels,
                'rate_hz': rate,
                'window': window,
                'output': 'clean current sample (input minus predicted noise)',
                'reference': references,
                'noise': opts.noise.to_dict() if opts.noise is not None else None,
                'also_uncorrupted': opts.also_uncorrupted,
                'learn_offset': opts.learn_offset,
            },
            'normalization': {k: v.tolist() for k, v in norm.items()},
            'architecture': {'arch': opts.arch, 'hidden': opts.hidden, 'layers': opts.layers,
                             'window': window, 'parameters': count_parameters(net),
                             'absolute_input': opts.absolute_input,
                             'linear_part': 'causal FIR over the window, ridge-initialised'},
            'baselines': {m: {k: v for k, v in baselines[m].items() if k != 'rmse'}
                          for m in BASELINES},
            'validation': scores,
            'training': {
                'bags': [str(b) for b in bags],
                'samples': samples,
                **figures,
                'ridge': ridge_figures,
                'processes': dist.world,
                'options': _options_dict(opts),
                'export': {k: export[k] for k in ('max_abs_diff', 'atol', 'batch_sizes',
                                                  'opset', 'exporter', 'file_bytes')},
                'seconds': round(time.perf_counter() - t_start, 2),
                'command': command or '',
                'versions': {**{k: str(v) for k, v in export['versions'].items()},
                             'python': platform.python_version()},
            },
        }
        save_model_dir(out, onnx_file=onnx_path, task='denoise', sections=sections,
                       overwrite=force)
    ModelDir.load(out, task='denoise')  # what the runtime will see: hash and I/O agree
    _loss_png(out / LOSS_PNG, figures, opts.arch)
    sections['training']['seconds'] = round(time.perf_counter() - t_start, 2)
    result = {'validation': scores, 'training': sections['training'],
              'reference': references, 'channels': resolved.channels, 'window': window}
    dist.settle(result)
    return DenoiseResult(out, result)


def _check_length(pair: Pair, spec: SignalSpec, window: int, val_fraction: float) -> None:
    """Refuse a recording too short for a window on both sides of the validation cut."""
    n = pair.noisy.shape[0]
    cut = int(round(n * (1.0 - val_fraction)))
    if cut < window + 10 or n - cut < window + 10:
        raise BagError(f'{pair.source}: {n} samples of {spec.topics[0].name} are too few '
                       f'for a window of {window} and a {val_fraction:.0%} validation '
                       'split; record longer or use a smaller --window')


def _floor(scale: np.ndarray, mean: np.ndarray) -> np.ndarray:
    floor = STD_FLOOR * np.maximum(1.0, np.abs(mean))
    scale = np.where(np.isfinite(scale), scale, 0.0)
    return np.maximum(scale, floor)


def _options_dict(opts: DenoiseOptions) -> dict[str, Any]:
    out = asdict(opts)
    out['noise'] = opts.noise.text if opts.noise is not None else None
    out['train_span'] = list(opts.train_span) if opts.train_span else None
    return out


def _fit_linear(net: Any, split: _Split, window: int, ridge: float,
                rng: np.random.Generator, dist: Any) -> dict[str, Any]:
    """Closed-form ridge fit of the linear part on (a sample of) the training windows; the
    normal equations are summed over ranks, and every rank draws the sample of every pair
    (keeping ``rng`` in step with one process's)."""
    import torch

    rows, ys = [], []
    total = sum(split.counts)
    share = min(1.0, RIDGE_ROWS / max(total, 1))
    local = dict(zip(split.index, range(len(split.index))))
    with torch.no_grad():
        for g, count in enumerate(split.counts):
            pick = None
            if share < 1.0:
                pick = np.sort(rng.choice(count, max(1, int(count * share)), replace=False))
            if g not in local:
                continue
            i = local[g]
            ends = split.train_ends[i]
            idx = torch.as_tensor(ends if pick is None else ends[pick])
            rel, _ = net.features(_windows(split.series[i], idx, window).to(
                net.input_mean.device))
            rows.append(rel.flatten(1).double().cpu().numpy())
            ys.append(split.targets[i][idx].double().numpy())
    channels = split.series[0].shape[1] if split.series else net.linear.out_features
    a = np.concatenate(rows) if rows else np.zeros((0, window * channels))
    y = np.concatenate(ys) if ys else np.zeros((0, channels))
    a1 = np.hstack([a, np.ones((a.shape[0], 1))])
    gram = dist.all_sum(a1.T @ a1)
    rhs = dist.all_sum(a1.T @ y)
    n_rows = int(dist.all_sum(a.shape[0]))
    lam = ridge * np.trace(gram) / gram.shape[0]
    reg = np.eye(gram.shape[0]) * lam
    reg[-1, -1] = 0.0                                   # no penalty on the intercept
    w = np.linalg.solve(gram + reg, rhs)
    with torch.no_grad():
        net.linear.weight.copy_(torch.tensor(w[:-1].T, dtype=torch.float32))
        net.linear.bias.copy_(torch.tensor(w[-1], dtype=torch.float32))
    fit = a1 @ w
    sse = dist.all_sum(np.sum((fit - y) ** 2)) if dist.active else None
    return {'rows': n_rows, 'lambda': float(lam),
            'train_mse': float(np.mean((fit - y) ** 2)) if sse is None
            else float(sse) / max(n_rows * y.shape[1], 1)}


def _train_loop(net: Any, split: _Split, window: int, opts: DenoiseOptions,
                rng: np.random.Generator, show_progress: bool | None, dist: Any
                ) -> dict[str, Any]:
    import torch

    from encdec_ros.progress import progress

    # the training windows of every pair on every rank, in pair order: one global order
    owner = np.repeat(np.arange(len(split.counts)), split.counts)
    where = np.concatenate([np.arange(window - 1, window - 1 + c) for c in split.counts])
    local = dict(zip(split.index, range(len(split.index))))
    per_epoch = len(owner) if opts.max_windows is None else min(len(owner), opts.max_windows)
    steps = max(1, math.ceil(per_epoch / opts.batch_size))
    model = net
    net = dist.wrap(model)
    # The linear part starts at its least-squares optimum: a gentler rate keeps it there
    # while the nonlinear part learns what it cannot do.
    linear = list(model.linear.parameters())
    others = [p for p in model.parameters() if all(p is not q for q in linear)]
    optim = torch.optim.AdamW([{'params': others},
                               {'params': linear, 'lr': opts.lr * LINEAR_LR_SCALE,
                                'weight_decay': 0.0}],
                              lr=opts.lr, weight_decay=opts.weight_decay)
    total_steps = steps * opts.epochs
    warm = max(1, total_steps // 10)

    def shape(step: int) -> float:                   # linear warm-up, then cosine decay
        return min(1.0, (step + 1) / warm) * 0.5 * (1.0 + math.cos(
            math.pi * min(step, total_steps) / total_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, shape)
    best = _val_loss(model, split, window, dist)
    start_loss = best
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, since = 0, 0
    train_curve, val_curve = [], []
    t0 = time.perf_counter()
    enable = show_progress if show_progress is not None else sys.stderr.isatty()
    stopped = 'epochs'
    channels = model.linear.out_features
    device = dist.device
    for epoch in progress(range(1, opts.epochs + 1), total=opts.epochs,
                          desc=f'training {opts.arch}', unit='epoch', enable=enable):
        model.train()
        order = rng.permutation(len(owner))[:per_epoch]
        total, count = 0.0, 0
        for b in range(steps):
            pick = order[b * opts.batch_size:(b + 1) * opts.batch_size]
            if pick.size == 0:
                continue
            xs, ys = [], []
            for g in np.unique(owner[pick]):
                if g not in local:
                    continue
                i = local[int(g)]
                sel = torch.as_tensor(where[pick[owner[pick] == g]])
                xs.append(_windows(split.series[i], sel, window))
                ys.append(split.targets[i][sel])
            if not dist.active:
                x, y = torch.cat(xs), torch.cat(ys)
                loss = torch.mean((net.residual(x) - y) ** 2)
                total += loss.item() * len(pick)
            elif xs:
                x, y = torch.cat(xs).to(device), torch.cat(ys).to(device)
                sq = torch.sum((net(x, residual=True) - y) ** 2)
                loss = sq * (dist.world / (len(pick) * channels))  # DDP averages the ranks
                total += sq.item() / channels
            else:                       # no window of this batch here: join the all-reduce
                dummy = torch.zeros((1, window, channels), device=device)
                loss = net(dummy, residual=True).sum() * 0.0
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            count += len(pick)
        val = _val_loss(model, split, window, dist)
        train_curve.append(float(dist.all_sum(total)) / max(count, 1))
        val_curve.append(val)
        log.debug('epoch %d: train %.5f, validation %.5f', epoch, train_curve[-1], val)
        if val < best - 1e-6 * abs(best):
            best, best_epoch, since = val, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
            if since >= opts.patience:
                stopped = 'patience'
                break
        if opts.time_limit_s is not None and \
                float(dist.all_max(time.perf_counter() - t0)) > opts.time_limit_s:
            stopped = 'time limit'
            break
    model.load_state_dict(best_state)
    model.eval()
    return {'epochs_run': len(val_curve), 'best_epoch': best_epoch, 'stopped_by': stopped,
            'val_loss_linear_only': start_loss, 'val_loss': best,
            'train_curve': [round(v, 6) for v in train_curve],
            'val_curve': [round(v, 6) for v in val_curve],
            'train_seconds': round(time.perf_counter() - t0, 2)}


def _val_loss(net: Any, split: _Split, window: int, dist: Any) -> float:
    import torch

    net.eval()
    total, count = 0.0, 0
    device = dist.device
    with torch.no_grad():
        for series, target, ends in zip(split.series, split.targets, split.val_ends):
            for a in range(0, len(ends), 4096):
                idx = torch.as_tensor(ends[a:a + 4096])
                err = net.residual(_windows(series, idx, window).to(device)) - \
                    target[idx].to(device)
                total += float(torch.sum(err ** 2))
                count += err.numel()
    total, count = dist.all_sum([total, count])
    return float(total) / max(float(count), 1.0)


def _model_outputs(net: Any, split: _Split, window: int) -> list[np.ndarray]:
    """The model's clean estimates on each validation part (its true history before it)."""
    import torch

    outs = []
    net.eval()
    with torch.no_grad():
        for series, ends in zip(split.series, split.val_ends):
            parts = [net(_windows(series, torch.as_tensor(ends[a:a + 4096]), window)).numpy()
                     for a in range(0, len(ends), 4096)]
            outs.append(np.concatenate(parts).astype(np.float64))
    return outs


def _validation_scores(segments: list[tuple[np.ndarray, np.ndarray]],
                       model_val: list[np.ndarray],
                       baselines: dict[str, dict[str, list[float]]], rate: float,
                       skip: int) -> dict[str, Any]:
    """RMSE per channel on the validation parts for the noisy input, model and baselines."""
    channels = segments[0][0].shape[1]
    errs: dict[str, list[np.ndarray]] = {m: [] for m in ('noisy', 'model', *BASELINES)}
    for (noisy, clean), est in zip(segments, model_val):
        errs['noisy'].append((noisy - clean)[skip:])
        errs['model'].append((est - clean)[skip:])
        for m in BASELINES:
            filt = make_baseline(m, channels, rate, baselines[m])
            errs[m].append((filt.run(noisy) - clean)[skip:])
    rmse = {m: np.sqrt(np.mean(np.concatenate(e) ** 2, axis=0)) for m, e in errs.items()}
    best = np.min(np.stack([rmse[m] for m in BASELINES]), axis=0)
    return {'rmse': {m: v.tolist() for m, v in rmse.items()},
            'ratio_model_to_best_baseline': (rmse['model'] / np.maximum(best, 1e-300)).tolist(),
            'skipped_per_segment': int(skip)}


def _loss_png(path: Path, figures: dict[str, Any], arch: str) -> None:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = range(1, len(figures['val_curve']) + 1)
    ax.plot(epochs, figures['train_curve'], label='train')
    ax.plot(epochs, figures['val_curve'], label='validation')
    ax.axhline(figures['val_loss_linear_only'], color='grey', ls=':',
               label='linear part only (start)')
    if figures['best_epoch']:
        ax.axvline(figures['best_epoch'], color='k', ls='--', lw=0.8, label='best')
    ax.set_xlabel('epoch')
    ax.set_ylabel('MSE of the noise estimate (noise units²)')
    ax.set_title(f'denoising {arch}')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
