"""Train a learned control allocator: an MLP encoder v -> u decoded by the fixed physics B.

Seen as an autoencoder, the encoder is the allocator (wanted wrench -> actuator commands) and
the decoder is the effectiveness matrix B, fixed, not trained. The network is an affine path
(started at the pseudo-inverse, the exact optimum wherever nothing saturates) plus a ReLU MLP
(piecewise linear, like the optimum of a box-constrained least-squares problem) that learns
the saturation; its output is clamped to a fraction s in [0, 1] of each actuator's range and
the runtime maps it to ``u = u_min + (u_max - u_min) s``: limits hold by construction.

The loss is the allocation objective itself, evaluated through B (the weighted, normalised
wrench error plus the small effort term), plus a distillation term pulling u toward the exact
optimum computed by :class:`~encdec_ros.allocation.allocators.ExactAllocator` (the target
every method is
scored against). Training wrenches cover the attainable set and well beyond it, so saturation
is learned, and can be mixed with the commanded wrenches of a bag so the model is best where
the robot really operates.

Usage::

    eff = Effectiveness.load('config/quad_x.yaml')
    result = train_allocator(eff, AllocatorTrainConfig(steps=20000))
    export_allocator(result, 'models/allocator_quad_x')
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encdec_ros.allocation.allocators import AXES, Effectiveness, ExactAllocator
from encdec_ros.allocation.evaluate import bag_wrenches
from encdec_ros.errors import BagError, ConfigError
from encdec_ros.progress import progress as progress_bar

INPUT_NAME = 'wrench_norm'
OUTPUT_NAME = 'command_fraction'


@dataclass
class AllocatorTrainConfig:
    """Training options (defaults: the shipped models)."""

    hidden: tuple[int, ...] = (128, 128, 128)  # MLP hidden widths
    activation: str = 'relu'  # relu (piecewise linear, like the optimum), silu or tanh
    squash: str = 'clamp'  # clamp (affine + MLP, hard limits) or sigmoid
    skip_init: bool = True  # start the affine path at the pseudo-inverse
    steps: int = 12000  # optimiser steps
    batch: int = 1024
    lr: float = 3e-3  # Adam, cosine-decayed to lr * 1e-3
    samples: int = 200_000  # training wrenches (exact answers computed once)
    val_samples: int = 4000  # held-out wrenches scored during training
    max_scale: float = 2.0  # wrenches reach max_scale x the attainable set
    clip_scale: float = 3.0  # inputs beyond clip_scale x the largest wrench are shortened
    distill_weight: float = 1.0  # weight of || (u - u_exact) / r ||^2
    bag_fraction: float = 0.5  # share of training wrenches drawn around a bag's wrenches
    bag_jitter: float = 0.03  # noise added to bag wrenches, fraction of each axis scale
    seed: int = 0
    threads: int = 1  # torch threads: one is fastest for these small networks (and 6x
    # faster than two on a busy two-core machine); 0 keeps torch's default
    eval_every: int = 1000

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f'hidden widths {self.hidden} must be positive; e.g. 128,128,128')
        for name in ('steps', 'batch', 'samples', 'val_samples'):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        if not 0.0 <= self.bag_fraction <= 1.0:
            raise ConfigError(f'bag_fraction must be in [0, 1], got {self.bag_fraction}')
        if not self.max_scale >= 1.0:
            raise ConfigError(f'max_scale must be >= 1 (wrenches beyond the attainable set), '
                              f'got {self.max_scale}')


# --------------------------------------------------------------------------- data


def sample_wrenches(eff: Effectiveness, n: int, rng: np.random.Generator, *,
                    max_scale: float = 2.0) -> np.ndarray:
    """Wrenches (n, k) in physical units covering the attainable set and beyond it.

    Four kinds, in equal shares: ``B u`` for u uniform in the box (attainable); the same
    scaled by a factor uniform in [1, max_scale] (mostly not attainable: saturation); ``B u``
    for u near the box's corners (the attainable set's edges), scaled by [0.5, max_scale];
    random directions in normalised wrench space with magnitudes up to max_scale x the
    largest attainable one (including wrenches no controller should ask for).
    """
    k, m = eff.n_axes, eff.n_actuators
    parts = np.array_split(np.arange(n), 4)
    out = np.empty((n, k))
    u = rng.uniform(eff.u_min, eff.u_max, size=(len(parts[0]), m))
    out[parts[0]] = eff.achieved(u)
    u = rng.uniform(eff.u_min, eff.u_max, size=(len(parts[1]), m))
    out[parts[1]] = eff.achieved(u) * rng.uniform(1.0, max_scale, size=(len(parts[1]), 1))
    frac = rng.beta(0.3, 0.3, size=(len(parts[2]), m))
    u = eff.u_min + (eff.u_max - eff.u_min) * frac
    out[parts[2]] = eff.achieved(u) * rng.uniform(0.5, max_scale, size=(len(parts[2]), 1))
    d = rng.normal(size=(len(parts[3]), k))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.uniform(0.0, 1.0, size=(len(parts[3]), 1)) * max_scale * eff.max_scaled
    out[parts[3]] = d * r * eff.scale
    return out


def exact_answers(eff: Effectiveness, v: np.ndarray, *, desc: str = 'exact optimum'
                  ) -> np.ndarray:
    """The exact optimum (N, n) for each wrench, with a progress bar on long runs."""
    solver = ExactAllocator(eff)
    out = np.empty((len(v), eff.n_actuators))
    for i in progress_bar(range(len(v)), total=len(v), desc=desc, unit='wrench'):
        out[i] = solver.allocate(v[i])
    return out


# --------------------------------------------------------------------------- model


def build_net(k: int, n: int, hidden: Sequence[int], clip_norm: float, *,
              squash: str = 'clamp', activation: str = 'relu',
              skip: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """The encoder: normalised wrench (B, k) -> command fractions (B, n) in [0, 1].

    ``s = squash(A x + c + mlp(x))``: an affine path (initialised to the pseudo-inverse, which
    is the exact optimum wherever nothing saturates) plus an MLP that learns the saturation
    (its last layer starts at zero). ``squash`` is 'clamp' (hard limits at inference, a leaky
    clamp while training so saturated outputs still get gradients) or 'sigmoid'.
    """
    import torch
    from torch import nn

    acts = {'silu': nn.SiLU, 'relu': nn.ReLU, 'tanh': nn.Tanh}
    if squash not in ('clamp', 'sigmoid') or activation not in acts:
        raise ConfigError(f'squash {squash!r} / activation {activation!r} unknown; use clamp '
                          f'or sigmoid and one of {", ".join(acts)}')

    class AllocatorNet(nn.Module):
        """Affine path + MLP, radial input clip, output squashed into [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            width = k
            for h in hidden:
                layers += [nn.Linear(width, h), acts[activation]()]
                width = h
            last = nn.Linear(width, n)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            layers.append(last)
            self.mlp = nn.Sequential(*layers)
            self.skip = nn.Linear(k, n)
            if skip is not None:
                with torch.no_grad():
                    self.skip.weight.copy_(torch.as_tensor(skip[0], dtype=torch.float32))
                    self.skip.bias.copy_(torch.as_tensor(skip[1], dtype=torch.float32))
            self.register_buffer('clip_norm', torch.tensor(float(clip_norm)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, k)
            norm = torch.sqrt((x * x).sum(dim=1, keepdim=True) + 1e-12)
            x = x * torch.clamp(self.clip_norm / norm, max=1.0)
            y = self.skip(x) + self.mlp(x)  # (B, n)
            if squash == 'sigmoid':
                return torch.sigmoid(y)
            s = torch.clamp(y, 0.0, 1.0)
            if self.training:  # leaky outside [0, 1]: saturated outputs keep a gradient
                s = s + 0.01 * (y - s)
            return s

    return AllocatorNet()


def pinv_skip(eff: Effectiveness) -> tuple[np.ndarray, np.ndarray]:
    """The pseudo-inverse allocator as an affine map x = v / scale -> s in [0, 1] units."""
    from encdec_ros.allocation.allocators import PseudoInverseAllocator

    p = PseudoInverseAllocator(eff)
    span = eff.u_max - eff.u_min
    weight = p.gain_ * eff.scale[None, :] / span[:, None]  # (n, k)
    bias = (p.bias_ - eff.u_min) / span
    return weight, bias


@dataclass
class TrainResult:
    """What :func:`train_allocator` returns: the network and everything export needs."""

    net: Any
    eff: Effectiveness
    config: AllocatorTrainConfig
    figures: dict[str, Any]
    val_wrenches: np.ndarray
    clip_norm: float
    bag: dict[str, Any] = field(default_factory=dict)


class _Objective:
    """The allocation objective and distillation loss in torch, in normalised units."""

    def __init__(self, eff: Effectiveness, torch: Any) -> None:
        d = eff.row_weight
        r = eff.half_range
        self.a = torch.tensor((d[:, None] * eff.matrix) * (2.0 * r), dtype=torch.float32)
        self.c = torch.tensor(d * (eff.matrix @ eff.u_min), dtype=torch.float32)
        self.w = torch.tensor(eff.weights, dtype=torch.float32)
        self.e0 = torch.tensor((eff.u_min - eff.preferred) / r, dtype=torch.float32)
        self.gamma = float(eff.effort_weight)
        self.m2 = float(eff.max_wrench) ** 2

    def physics(self, s: Any, x: Any) -> Any:
        """Mean of (||D (B u - v)||^2 + gamma ||(u - u_pref) / r||^2) / M^2."""
        res = s @ self.a.T + self.c - x * self.w  # D (B u - v), with x = v / scale
        eff_term = self.e0 + 2.0 * s
        return ((res * res).sum(1) + self.gamma * (eff_term * eff_term).sum(1)).mean() / self.m2


def read_bag_wrenches(bags: Sequence[str | Path], topic: str, eff: Effectiveness, *,
                      dist: Any = None) -> np.ndarray:
    """The commanded wrenches of every bag, in bag order (bags divided among torchrun's
    processes when ``dist`` has several)."""
    if dist is None:
        return np.concatenate([bag_wrenches(b, topic, eff) for b in bags])
    return np.concatenate(dist.map_ordered(lambda b: bag_wrenches(b, topic, eff), list(bags)))


def train_allocator(eff: Effectiveness, config: AllocatorTrainConfig | None = None, *,
                    bag_v: np.ndarray | None = None, bag_info: dict[str, Any] | None = None,
                    show_progress: bool | None = None, log: Any = None,
                    dist: Any = None) -> TrainResult:
    """Train the encoder through the fixed B; returns the network and its figures.

    Under torchrun (``dist`` from :func:`training.distributed.from_env`, or started here)
    the exact answers are divided among the processes and every global batch is split
    between them (DistributedDataParallel): the same steps as one process, to float rounding.

    Args:
        eff: The effectiveness configuration.
        config: Training options.
        bag_v: Commanded wrenches (N, k) from a bag; ``config.bag_fraction`` of the training
            set is drawn around them.
        bag_info: Where ``bag_v`` came from (recorded in the figures).
        show_progress: Progress bars (None: on a terminal for long runs).
        log: A callable taking one line of text (progress figures), or None; rank 0 only.
        dist: The process group (default: from torchrun's environment, ended on return).
    """
    from training import distributed

    own = dist is None
    dist = distributed.from_env() if own else dist
    try:
        return _train_allocator(eff, config, bag_v=bag_v, bag_info=bag_info,
                                show_progress=show_progress if dist.is_main else False,
                                log=dist.say(log or (lambda _line: None)), dist=dist)
    finally:
        if own:
            dist.close()


def _train_allocator(eff: Effectiveness, config: AllocatorTrainConfig | None, *,
                     bag_v: np.ndarray | None, bag_info: dict[str, Any] | None,
                     show_progress: bool | None, log: Any, dist: Any) -> TrainResult:
    import torch

    cfg = config or AllocatorTrainConfig()
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    say = log

    n_bag = 0
    if bag_v is not None and len(bag_v) and cfg.bag_fraction > 0:
        n_bag = int(round(cfg.samples * cfg.bag_fraction))
    v_train = sample_wrenches(eff, cfg.samples - n_bag, rng, max_scale=cfg.max_scale)
    if n_bag:
        pick = bag_v[rng.integers(0, len(bag_v), size=n_bag)]
        noise = rng.normal(size=pick.shape) * cfg.bag_jitter * eff.scale
        v_train = np.concatenate([v_train, pick + noise])
    # held out: another random stream, never trained on
    v_val = sample_wrenches(eff, cfg.val_samples, np.random.default_rng(cfg.seed + 7919),
                            max_scale=1.5)
    t0 = time.perf_counter()
    if dist.active:             # each process solves its share; every one gets all answers
        chunks = np.array_split(np.arange(len(v_train) + len(v_val)), dist.world)
        v_all = np.concatenate([v_train, v_val])
        mine = exact_answers(eff, v_all[chunks[dist.rank]], desc='exact answers (share)')
        u_all = np.concatenate(dist.all_gather(mine))
        u_train, u_val = u_all[:len(v_train)], u_all[len(v_train):]
    else:
        u_train = exact_answers(eff, v_train, desc='exact answers (training)')
        u_val = exact_answers(eff, v_val, desc='exact answers (held out)')
    t_exact = time.perf_counter() - t0
    say(f'exact optimum for {len(v_train) + len(v_val)} wrenches in {t_exact:.1f} s')

    clip_norm = cfg.clip_scale * eff.max_scaled
    net = build_net(eff.n_axes, eff.n_actuators, cfg.hidden, clip_norm, squash=cfg.squash,
                    activation=cfg.activation, skip=pinv_skip(eff) if cfg.skip_init else None)
    obj = _Objective(eff, torch)
    x_train = torch.tensor(v_train / eff.scale, dtype=torch.float32)
    s_train = torch.tensor((u_train - eff.u_min) / (eff.u_max - eff.u_min),
                           dtype=torch.float32)
    x_val = torch.tensor(v_val / eff.scale, dtype=torch.float32)
    err_val_exact = eff.error(u_val, v_val)

    model, net = net, dist.wrap(net)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps,
                                                       eta_min=cfg.lr * 1e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, Any]] | None = None
    loss_phys = loss_dist = torch.tensor(0.0)
    steps = progress_bar(range(cfg.steps), total=cfg.steps, desc='training allocator',
                         unit='step', enable=show_progress, min_total=2000)
    t_train = time.perf_counter()
    for step in steps:
        idx = torch.randint(0, len(x_train), (cfg.batch,), generator=gen)
        if dist.active:         # this process's share of the global batch
            idx = idx[dist.rank::dist.world]
        xb, sb = x_train[idx], s_train[idx]
        s = net(xb)
        loss_phys = obj.physics(s, xb)
        diff = 2.0 * (s - sb)
        loss_dist = (diff * diff).sum(1).mean()
        loss = loss_phys + cfg.distill_weight * loss_dist
        if dist.active:         # weighted by its share: DDP's average is the batch's mean
            loss = loss * (len(idx) * dist.world / cfg.batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or last:
            figs = _validate(model, eff, x_val, v_val, err_val_exact, torch)
            figs.update(step=step + 1, loss_physics=float(loss_phys.detach()),
                        loss_distill=float(loss_dist.detach()))
            history.append(figs)
            say(f'step {step + 1}: held-out excess error mean {figs["excess_mean"]:.3%}, '
                f'p99 {figs["excess_p99"]:.3%} of the largest attainable wrench')
            score = figs['excess_mean'] + 0.2 * figs['excess_p99']
            if best is None or score < best[0]:
                best = (score, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    final = _validate(model, eff, x_val, v_val, err_val_exact, torch)
    figures = {
        'samples': int(len(v_train)),
        'bag_samples': int(n_bag),
        'val_samples': int(len(v_val)),
        'steps': int(cfg.steps),
        'seconds_exact': round(t_exact, 2),
        'seconds_train': round(time.perf_counter() - t_train, 2),
        'seconds_total': round(time.perf_counter() - t_start, 2),
        'held_out_excess_mean': final['excess_mean'],
        'held_out_excess_p99': final['excess_p99'],
        'held_out_excess_max': final['excess_max'],
        'history': history,
        'config': {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
    }
    return TrainResult(net=model, eff=eff, config=cfg, figures=figures, val_wrenches=v_val,
                       clip_norm=clip_norm, bag=dict(bag_info or {}))


def _validate(net: Any, eff: Effectiveness, x_val: Any, v_val: np.ndarray,
              err_exact: np.ndarray, torch: Any) -> dict[str, float]:
    was = net.training
    net.eval()
    with torch.no_grad():
        s = net(x_val).double().numpy()
    net.train(was)
    u = eff.u_min + (eff.u_max - eff.u_min) * s
    excess = eff.error(u, v_val) - err_exact
    return {'excess_mean': float(excess.mean()), 'excess_p99': float(np.percentile(excess, 99)),
            'excess_max': float(excess.max())}


# --------------------------------------------------------------------------- export


def export_allocator(result: TrainResult, out: str | Path, *, overwrite: bool = False
                     ) -> dict[str, Any]:
    """Export to ONNX (parity-checked) and write the model directory (task 'allocator').

    Returns:
        The export figures of :func:`training.export.export_onnx`.
    """
    import tempfile

    import torch

    from encdec_ros.modeldir import save_model_dir
    from training.export import export_onnx

    eff = result.eff
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f'{out} exists and is not a directory; choose another --out')
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f'model directory {out} already exists and is not empty; choose '
                          'another --out or pass --force to replace it')
    x = np.asarray(result.val_wrenches / eff.scale, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / 'model.onnx'
        figures = export_onnx(result.net, (torch.from_numpy(x[:8]),), onnx_path,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              parity_inputs=(x,), atol=1e-4)
        training = dict(result.figures)
        training['export'] = {k: figures[k] for k in ('max_abs_diff', 'atol', 'batch_sizes',
                                                      'opset', 'exporter', 'file_bytes')}
        if result.bag:
            training['bag'] = result.bag
        sections = {
            'allocator': {
                'effectiveness': eff.to_dict(),
                'source': eff.source,
                'axes': list(eff.axes),
                'actuators': list(eff.actuators),
                'input': INPUT_NAME,
                'output': OUTPUT_NAME,
                'wrench_axes_order': list(AXES),
            },
            'normalization': {
                'wrench_scale': eff.scale.tolist(),
                'input_clip_norm': float(result.clip_norm),
                'command': 'u = u_min + (u_max - u_min) * command_fraction',
                'u_min': eff.u_min.tolist(),
                'u_max': eff.u_max.tolist(),
            },
            'architecture': {
                'kind': 'affine + mlp',
                'hidden': list(result.config.hidden),
                'activation': result.config.activation,
                'output': result.config.squash,
                'parameters': int(sum(p.numel() for p in result.net.parameters())),
            },
            'training': training,
        }
        save_model_dir(out, onnx_file=onnx_path, task='allocator', sections=sections,
                       overwrite=overwrite)
    return figures


# --------------------------------------------------------------------------- identification


@dataclass
class IdentifyConfig:
    """Options of :func:`identify_effectiveness` (topics of the synthetic robot by default)."""

    imu_topic: str = '/imu'
    motors_topic: str = '/motors'
    actuator_topic: str = '/actuator_cmd'
    highpass_s: float = 0.5  # slow disturbances (wind torque) live below 1 / highpass_s
    smooth_s: float = 0.025  # Savitzky-Golay window for specific force and gyro derivative
    skip_s: float = 1.0  # ignore the start and end of the log
    rank_tol: float = 1e-4  # command directions weaker than this are not identifiable
    taus_s: tuple[float, ...] = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05,
                                 0.06, 0.08, 0.1)


def _stamp(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def read_identification_data(path: str | Path, cfg: IdentifyConfig, n_actuators: int
                             ) -> dict[str, np.ndarray]:
    """IMU (specific force, rates), rotor speeds and actuator commands from a bag."""
    from encdec_ros.io.bag import BagSource

    want = {cfg.imu_topic: 'sensor_msgs/msg/Imu', cfg.motors_topic: 'sensor_msgs/msg/JointState',
            cfg.actuator_topic: 'std_msgs/msg/Float64MultiArray'}
    imu_t, acc, gyr, mot_t, speed, act_t, cmd = [], [], [], [], [], [], []
    with BagSource(path) as bag:
        for topic, msgtype in want.items():
            if topic not in bag.topics:
                raise BagError(f'bag {path} has no topic {topic} ({msgtype}); identification '
                               'needs IMU, rotor speeds and actuator commands: pass the topic')
            if bag.topics[topic].type != msgtype:
                raise BagError(f'topic {topic} in {path} is {bag.topics[topic].type}, not '
                               f'{msgtype}; pass the right topic')
        for topic, log_ns, msg in bag.messages(list(want)):
            if topic == cfg.imu_topic:
                a, w = msg.linear_acceleration, msg.angular_velocity
                imu_t.append(_stamp(msg))
                acc.append((a.x, a.y, a.z))
                gyr.append((w.x, w.y, w.z))
            elif topic == cfg.motors_topic:
                if len(msg.velocity) != n_actuators:
                    continue
                mot_t.append(_stamp(msg))
                speed.append(list(msg.velocity))
            elif len(msg.data) == n_actuators:
                act_t.append(log_ns)  # Float64MultiArray has no header: its log time
                cmd.append(list(msg.data))
    for name, rows in (('rotor speeds', speed), ('actuator commands', cmd), ('IMU', acc)):
        if len(rows) < 500:
            raise BagError(f'bag {path} holds {len(rows)} usable {name} (with '
                           f'{n_actuators} values each where that applies); identification '
                           'needs at least a few tens of seconds of flight')
    return {'imu_t': np.asarray(imu_t, dtype=np.int64), 'acc': np.asarray(acc),
            'gyr': np.asarray(gyr), 'mot_t': np.asarray(mot_t, dtype=np.int64),
            'speed': np.asarray(speed), 'act_t': np.asarray(act_t, dtype=np.int64),
            'cmd': np.asarray(cmd)}


def _first_order(x: np.ndarray, alpha: float, delay: bool) -> np.ndarray:
    """y[k] = (1 - alpha) y[k-1] + alpha x[k - delay], started at rest on x[0]."""
    from scipy.signal import lfilter, lfilter_zi

    b = [0.0, alpha] if delay else [alpha]
    a = [1.0, alpha - 1.0]
    zi = lfilter_zi(b, a)[:, None] * x[0][None, :]
    y, _ = lfilter(b, a, x, axis=0, zi=zi)
    return y


def identify_effectiveness(path: str | Path, template: Effectiveness, *, mass_kg: float,
                           inertia_kgm2: Sequence[float],
                           config: IdentifyConfig | None = None
                           ) -> tuple[Effectiveness, dict[str, Any]]:
    """Estimate B from a flight log of commands, rotor speeds and IMU data.

    Model: each rotor's speed follows ``full_speed * sqrt(u)`` through a first-order lag
    (the command u is thrust over full thrust, as PX4's and the synthetic robot's), so the
    thrust actually produced is proportional to ``u_eff = (lagged sqrt(u))^2`` (fitted per
    rotor: time constant and full speed, from the measured speeds). The wrench follows from
    the IMU: force = mass x specific force, torque = J dw/dt + w x J w (dw/dt by a
    Savitzky-Golay derivative of the gyro). Each allocated wrench axis is then regressed on
    ``u_eff`` (torques also on the body rate, for rotational damping), after a high-pass
    filter that removes slow disturbances (wind) the closed loop would otherwise fold into
    the estimate. Commands of a closed loop span only as many directions as the controller
    uses: B is estimated within that span (minimum norm outside it), which recovers B when
    the logged allocator used its pseudo-inverse.

    Args:
        path: The bag.
        template: Supplies axes, actuator names, limits, weights and the rest of the
            configuration; its B is only used for comparison.
        mass_kg: Vehicle mass.
        inertia_kgm2: Diagonal inertia (Jx, Jy, Jz) in the body frame.
        config: Topics and filter settings.

    Returns:
        (the identified configuration, figures: motor fit, fit quality per axis and the
        relative difference from the template's B per axis).
    """
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import savgol_filter

    cfg = config or IdentifyConfig()
    inertia = np.asarray(inertia_kgm2, dtype=np.float64)
    if inertia.shape != (3,) or not (inertia > 0).all() or not mass_kg > 0:
        raise ConfigError('give the mass in kg and the diagonal inertia as three positive '
                          'numbers (Jx Jy Jz in kg m^2)')
    n = template.n_actuators
    d = read_identification_data(path, cfg, n)
    t = d['mot_t']
    dt_m = float(np.median(np.diff(t))) * 1e-9
    # commands held (zero-order) at the rotor-speed stamps
    idx = np.clip(np.searchsorted(d['act_t'], t, side='right') - 1, 0, len(d['act_t']) - 1)
    u = np.clip(d['cmd'][idx], 0.0, None)
    skip = int(round(cfg.skip_s / dt_m))
    keep = slice(skip, len(t) - skip)
    root = np.sqrt(u)
    best: tuple[float, float, bool, np.ndarray, np.ndarray] | None = None
    for tau in cfg.taus_s:
        alpha = 1.0 - math.exp(-dt_m / tau)
        for delay in (True, False):
            y = _first_order(root, alpha, delay)
            power = np.maximum((y[keep] ** 2).sum(0), 1e-12)
            scale = (d['speed'][keep] * y[keep]).sum(0) / power
            res = float(((d['speed'][keep] - scale * y[keep]) ** 2).mean())
            if best is None or res < best[0]:
                best = (res, tau, delay, scale, y)
    assert best is not None
    res, tau, delay, full_speed, y = best
    u_eff = y ** 2

    dt_i = float(np.median(np.diff(d['imu_t']))) * 1e-9
    win = max(5, int(round(cfg.smooth_s / dt_i)) | 1)
    acc = savgol_filter(d['acc'], win, 2, axis=0)
    gyr = savgol_filter(d['gyr'], win, 2, axis=0)
    gdot = savgol_filter(d['gyr'], win, 2, deriv=1, delta=dt_i, axis=0)

    def at_motor_times(x: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(t, d['imu_t'], x[:, i]) for i in range(x.shape[1])], 1)

    acc, gyr, gdot = at_motor_times(acc), at_motor_times(gyr), at_motor_times(gdot)
    force = mass_kg * acc
    torque = inertia * gdot + np.cross(gyr, gyr * inertia)

    # identifiable command directions (from the unfiltered commands)
    x0 = u_eff[keep]
    col = np.linalg.norm(x0, axis=0)
    col[col == 0] = 1.0
    _, sv, vt = np.linalg.svd(x0 / col, full_matrices=False)
    rank = int((sv > cfg.rank_tol * sv[0]).sum())
    basis = (vt[:rank] / col).T  # (n, rank): u_eff directions the log excites
    hp = max(3, int(round(cfg.highpass_s / dt_m)))

    def highpass(x: np.ndarray) -> np.ndarray:
        return (x - uniform_filter1d(x, hp, axis=0, mode='nearest'))[keep]

    z = highpass(u_eff) @ basis  # (T, rank)
    rows, quality = [], {}
    for axis in template.axes:
        i = AXES.index(axis)
        if i < 3:
            target, extra = highpass(force[:, [i]])[:, 0], None
        else:
            target, extra = highpass(torque[:, [i - 3]])[:, 0], highpass(gyr[:, [i - 3]])
        design = z if extra is None else np.column_stack([z, extra])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        fit = design @ coef
        spread = max(float(((target - target.mean()) ** 2).sum()), 1e-300)
        r2 = 1.0 - float(((target - fit) ** 2).sum()) / spread
        rows.append(basis @ coef[:rank])
        quality[axis] = round(r2, 4)
    matrix = np.array(rows)
    data = template.to_dict()
    data['matrix'] = matrix.tolist()
    data['name'] = f'{template.name}_identified'
    data['description'] = (f'identified from {path} (template {template.source}, mass '
                           f'{mass_kg:g} kg, inertia {inertia.tolist()} kg m^2)')
    identified = Effectiveness.from_dict(data, source=f'identified from {path}')
    ref = template.matrix
    rel = {a: round(float(np.linalg.norm(matrix[k] - ref[k]) /
                          max(float(np.linalg.norm(ref[k])), 1e-300)), 4)
           for k, a in enumerate(template.axes)}
    figures = {
        'samples': int(len(z)),
        'motor_time_constant_s': tau,
        'motor_delay_one_sample': bool(delay),
        'full_command_speed': [round(float(s), 3) for s in full_speed],
        'speed_fit_rms': round(math.sqrt(res), 4),
        'command_rank': rank,
        'fit_r2': quality,
        'relative_difference_from_template': rel,
        'relative_difference_total': round(float(np.linalg.norm(matrix - ref) /
                                                 np.linalg.norm(ref)), 4),
    }
    return identified, figures


def write_effectiveness_yaml(eff: Effectiveness, path: str | Path, *, comment: str) -> Path:
    """Write a configuration (matrix form) with a leading comment saying where it came from."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = eff.to_dict()
    data['matrix'] = [[round(float(x), 6) for x in row] for row in data['matrix']]
    head = ''.join(f'# {line}\n' for line in comment.splitlines())
    path.write_text(head + yaml.safe_dump(data, sort_keys=False, width=100), encoding='utf-8')
    Effectiveness.load(path)  # what we wrote must load
    return path


__all__ = ['AllocatorTrainConfig', 'IdentifyConfig', 'TrainResult', 'bag_wrenches', 'build_net',
           'exact_answers', 'export_allocator', 'identify_effectiveness', 'pinv_skip',
           'read_identification_data', 'sample_wrenches', 'train_allocator',
           'write_effectiveness_yaml']
