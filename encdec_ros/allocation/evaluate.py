"""Score allocators against the exact optimum on held-out wrenches (``encdec eval allocator``).

Every method is run through the same
:class:`~encdec_ros.allocation.allocators.Allocator` classes the
``control_allocator`` node uses. Figures, per method:

- excess wrench error over the exact optimum, ``e(u) - e(u_exact)`` with
  ``e(u) = ||D (B u - v)|| / M`` (each axis divided by its largest attainable value and
  weighted by its priority, as a fraction of the largest attainable wrench M in that norm):
  mean, p99 and max, overall and split into attainable and unattainable wrenches;
- limit violations (the learned network's raw output is checked, before any clipping);
- effort: RMS distance of u from the preferred vector, in half ranges;
- smoothness: RMS change of u (half ranges) after a random 1 % change of the wanted wrench
  (as the active-set literature's ``pe``): large values mean jittery commands;
- latency per call at batch 1 (median and p99 over cycling wrenches) and the throughput of
  one call on a batch of 1024 wrenches.

Held-out wrenches come from a random stream the trainer never uses, in three equal parts:
``B u`` for u uniform in the box (attainable), the same scaled by 1 to 1.6 (mostly
saturating), and random directions with each axis divided by its largest attainable value,
up to 1.2 times the largest attainable wrench in that space (including wrenches a controller
should not ask for, such as negative thrust).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from encdec_ros.allocation.allocators import (
    Allocator,
    Effectiveness,
    ExactAllocator,
    LearnedAllocator,
)
from encdec_ros.errors import BagError

WRENCH_TYPES = ('geometry_msgs/msg/WrenchStamped', 'geometry_msgs/msg/Wrench')
HELD_OUT_SEED = 20_240_917
ATTAINABLE_TOL = 1e-3
"""Exact optimum error below this fraction of the largest wrench: the wrench is attainable
(the small effort term leaves about 1e-4 even where B u = v could be met exactly)."""


def bag_wrenches(path: str | Path, topic: str, eff: Effectiveness) -> np.ndarray:
    """The wrenches (N, k) a bag's WrenchStamped (or Wrench) topic commanded."""
    from encdec_ros.io.bag import BagSource

    with BagSource(path) as bag:
        if topic not in bag.topics:
            known = ', '.join(sorted(t for t in bag.topics if bag.topics[t].type in
                                     WRENCH_TYPES)) or 'none'
            raise BagError(f'bag {path} has no topic {topic}; its wrench topics are {known}: '
                           'pass one with --wrench-topic')
        msgtype = bag.topics[topic].type
        if msgtype not in WRENCH_TYPES:
            raise BagError(f'topic {topic} in {path} is {msgtype}, not geometry_msgs/'
                           'WrenchStamped or Wrench; pass a wrench topic with --wrench-topic')
        rows = []
        for _, _, msg in bag.messages([topic]):
            w = getattr(msg, 'wrench', msg)
            rows.append((w.force.x, w.force.y, w.force.z, w.torque.x, w.torque.y,
                         w.torque.z))
    if not rows:
        raise BagError(f'topic {topic} in {path} holds no messages; record some flight first')
    full = np.asarray(rows, dtype=np.float64)
    full = full[np.isfinite(full).all(axis=1)]
    if not len(full):
        raise BagError(f'every wrench on {topic} in {path} has NaN or infinite values')
    return eff.select(full)


def held_out_wrenches(eff: Effectiveness, n: int = 6000, *, seed: int = HELD_OUT_SEED
                      ) -> np.ndarray:
    """Held-out wrenches (n, k) inside and outside the attainable set (see module doc)."""
    rng = np.random.default_rng(seed)
    parts = np.array_split(np.arange(n), 3)
    out = np.empty((n, eff.n_axes))
    u = rng.uniform(eff.u_min, eff.u_max, size=(len(parts[0]), eff.n_actuators))
    out[parts[0]] = eff.achieved(u)
    u = rng.uniform(eff.u_min, eff.u_max, size=(len(parts[1]), eff.n_actuators))
    out[parts[1]] = eff.achieved(u) * rng.uniform(1.0, 1.6, size=(len(parts[1]), 1))
    d = rng.normal(size=(len(parts[2]), eff.n_axes))
    d *= eff.max_scaled / np.linalg.norm(d, axis=1, keepdims=True)
    out[parts[2]] = d * rng.uniform(0.0, 1.2, size=(len(parts[2]), 1)) * eff.scale
    return out


def latency(alloc: Allocator, v: np.ndarray, *, calls: int = 2000) -> dict[str, float]:
    """Per-call seconds of ``alloc.allocate`` at batch 1, cycling through ``v``."""
    rows = [np.ascontiguousarray(r) for r in v[:max(1, min(len(v), 512))]]
    for r in rows[:20]:  # warm caches
        alloc.allocate(r)
    times = np.empty(calls)
    m = len(rows)
    clock = time.perf_counter
    for i in range(calls):
        r = rows[i % m]
        t0 = clock()
        alloc.allocate(r)
        times[i] = clock() - t0
    return {'median_us': float(np.median(times) * 1e6),
            'p99_us': float(np.percentile(times, 99) * 1e6),
            'mean_us': float(times.mean() * 1e6)}


def throughput(alloc: Allocator, v: np.ndarray, *, batch: int = 1024, min_s: float = 0.3
               ) -> dict[str, float]:
    """Wrenches per second of one ``allocate_batch`` call on ``batch`` wrenches."""
    vb = np.ascontiguousarray(np.resize(v, (batch, v.shape[1])))
    alloc.allocate_batch(vb)
    times = []
    t_end = time.perf_counter() + min_s
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 200):
        t0 = time.perf_counter()
        alloc.allocate_batch(vb)
        times.append(time.perf_counter() - t0)
    best = float(np.median(times))
    return {'batch': batch, 'ms_per_batch': best * 1e3, 'per_s': batch / best}


def evaluate(eff: Effectiveness, allocators: Mapping[str, Allocator], *,
             samples: int = 6000, seed: int = HELD_OUT_SEED, timing: bool = True,
             latency_calls: int = 2000, batch: int = 1024,
             wrenches: np.ndarray | None = None) -> tuple[dict[str, Any], dict]:
    """Score each allocator against the exact optimum.

    Args:
        eff: The configuration every allocator works with.
        allocators: Name -> allocator; the exact optimum is computed separately.
        samples: Held-out wrenches.
        seed: Their random stream.
        timing: Also measure latency at batch 1 and throughput at ``batch``.
        latency_calls: Calls timed at batch 1.
        batch: Batch size for the throughput figure.
        wrenches: Score these wrenches (N, k), e.g. a bag's, instead of the held-out set.

    Returns:
        (report, curves): the JSON-ready report and per-method arrays for the plot
        (``magnitude`` and ``excess``).
    """
    if wrenches is None:
        v = held_out_wrenches(eff, samples, seed=seed)
    else:
        v = np.asarray(wrenches, dtype=np.float64)
        samples = len(v)
    rng = np.random.default_rng(seed + 1)
    n_smooth = min(len(v), 500)
    step = rng.normal(size=(n_smooth, eff.n_axes))
    step *= 0.01 * eff.max_scaled / np.linalg.norm(step, axis=1, keepdims=True)
    v_step = v[:n_smooth] + step * eff.scale  # 1 % of the largest attainable wrench
    exact = ExactAllocator(eff)
    t0 = time.perf_counter()
    u_opt = exact.allocate_batch(v)
    t_exact = time.perf_counter() - t0
    e_opt = eff.error(u_opt, v)
    attainable = e_opt < ATTAINABLE_TOL
    magnitude = eff.norm_wrench(v)
    report: dict[str, Any] = {
        'config': eff.name,
        'source': eff.source,
        'axes': list(eff.axes),
        'actuators': list(eff.actuators),
        'largest_attainable_wrench': eff.max_wrench,
        'metric': 'excess of ||D (B u - v)|| / M over the exact optimum, D = diag(weight / '
                  'largest attainable per axis), M = largest attainable ||D v||',
        'samples': {'total': int(samples), 'attainable': int(attainable.sum()),
                    'unattainable': int((~attainable).sum()),
                    'source': 'held-out' if wrenches is None else 'given', 'seed': int(seed)},
        'exact_optimum': {'error_mean': float(e_opt.mean()),
                          'error_mean_unattainable': _mean(e_opt[~attainable]),
                          'effort_mean': float(eff.effort(u_opt).mean()),
                          'seconds': round(t_exact, 3)},
        'methods': {},
    }
    curves: dict[str, Any] = {'magnitude': magnitude, 'excess': {}}
    for name, alloc in allocators.items():
        if isinstance(alloc, LearnedAllocator):
            raw = alloc.raw_batch(v)
            u = np.minimum(np.maximum(raw, eff.u_min), eff.u_max)
        else:
            u = raw = alloc.allocate_batch(v)
        excess = eff.error(u, v) - e_opt
        viol = eff.violations(raw)
        fig: dict[str, Any] = {
            'excess_mean': float(excess.mean()),
            'excess_p99': float(np.percentile(excess, 99)),
            'excess_max': float(excess.max()),
            'excess_mean_attainable': _mean(excess[attainable]),
            'excess_mean_unattainable': _mean(excess[~attainable]),
            'violations': int(viol.sum()),
            'commands_with_violations': int((viol > 0).sum()),
            'effort_mean': float(eff.effort(u).mean()),
            'u_max_diff_from_exact': float(np.abs((u - u_opt) / eff.half_range).max()),
            'smoothness': _smoothness(alloc, u[:n_smooth], v_step, eff),
        }
        fig.update(alloc.describe())
        if timing:
            fig['latency_b1'] = latency(alloc, v, calls=latency_calls)
            fig['throughput'] = throughput(alloc, v, batch=batch)
        report['methods'][name] = fig
        curves['excess'][name] = excess
    return report, curves


def _smoothness(alloc: Allocator, u: np.ndarray, v_step: np.ndarray,
                eff: Effectiveness) -> float:
    """RMS change of u (in half ranges) after a 1 % change of the wanted wrench."""
    du = (alloc.allocate_batch(v_step) - u) / eff.half_range
    return float(np.sqrt(np.mean(du * du)))


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def reference_figures(eff: Effectiveness, *, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The data README's protocol, for a sanity check of the baselines.

    ``n`` targets ``B u`` with u uniform in the box, half of them scaled by 1.3; plain
    ``pinv(B) v`` clipped against ``scipy.optimize.lsq_linear`` (unweighted, raw units);
    excess of ``||B u - v||`` over the optimum relative to ``||v||``.
    """
    from scipy.optimize import lsq_linear

    rng = np.random.default_rng(seed)
    b = eff.matrix
    u = rng.uniform(eff.u_min, eff.u_max, size=(n, eff.n_actuators))
    v = u @ b.T
    v[n // 2:] *= 1.3
    u_pinv = np.clip(v @ np.linalg.pinv(b).T, eff.u_min, eff.u_max)
    u_ls = np.stack([lsq_linear(b, t, bounds=(eff.u_min, eff.u_max), method='bvls').x
                     for t in v])
    norm_v = np.linalg.norm(v, axis=1)
    r_pinv = np.linalg.norm(u_pinv @ b.T - v, axis=1)
    r_ls = np.linalg.norm(u_ls @ b.T - v, axis=1)
    rel = (r_pinv - r_ls) / norm_v
    return {'pinv_excess_mean': float(rel.mean()), 'pinv_excess_p95': float(
        np.percentile(rel, 95)), 'pinv_excess_max': float(rel.max()),
        'no_exact_solution': float((r_ls > 1e-6 * norm_v).mean())}


def plot_errors(report: Mapping[str, Any], curves: Mapping[str, Any], path: str | Path
                ) -> Path:
    """PNG: excess error against wrench magnitude, per method (binned mean and p99)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    path = Path(path)
    mag = np.asarray(curves['magnitude'])
    edges = np.linspace(0.0, float(mag.max()) * 1.0001, 16)
    centres = (edges[:-1] + edges[1:]) / 2
    which = np.digitize(mag, edges) - 1
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, (name, excess) in enumerate(curves['excess'].items()):
        if name.startswith('exact'):
            continue  # zero by definition
        excess = np.asarray(excess) * 100
        mean = [excess[which == b].mean() if (which == b).any() else np.nan
                for b in range(len(centres))]
        p99 = [np.percentile(excess[which == b], 99) if (which == b).sum() > 4 else np.nan
               for b in range(len(centres))]
        colour = colours[i % len(colours)]
        if name == 'learned':
            ax.scatter(mag, excess, s=3, alpha=0.15, color=colour, linewidths=0)
        ax.plot(centres, mean, '-o', ms=3, color=colour, label=f'{name} mean')
        ax.plot(centres, p99, '--', color=colour, alpha=0.7, label=f'{name} p99')
    ax.axhline(0.0, color='k', lw=0.6)
    ax.set_xlabel('wanted wrench ||D v|| / largest attainable')
    ax.set_ylabel('excess error over the exact optimum (% of largest attainable wrench)')
    source = report['samples'].get('source', 'held-out')
    what = 'held-out wrenches' if source == 'held-out' else 'wrenches from a bag'
    ax.set_title(f'{report["config"]}: excess over the exact optimum on '
                 f'{report["samples"]["total"]} {what} '
                 f'({report["samples"]["unattainable"]} unattainable)', fontsize=10)
    ax.set_yscale('symlog', linthresh=0.1)
    ax.set_ylim(bottom=-0.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a text table."""
    source = report['samples'].get('source', 'held-out')
    what = 'held-out wrenches' if source == 'held-out' else f'wrenches from {source}'
    lines = [f'{report["config"]}: {report["samples"]["total"]} {what} '
             f'({report["samples"]["unattainable"]} unattainable); excess error over the '
             'exact optimum in % of the largest attainable wrench']
    head = (f'  {"method":<16} {"mean":>7} {"p99":>7} {"max":>7} {"viol":>5} {"effort":>7} '
            f'{"smooth":>7} {"b1 us":>8} {"b1 p99":>8} {"b1024/s":>10}')
    lines.append(head)
    for name, m in report['methods'].items():
        lat = m.get('latency_b1')
        thr = m.get('throughput')
        timing = (f'{lat["median_us"]:>8.1f} {lat["p99_us"]:>8.1f} {thr["per_s"]:>10.0f}'
                  if lat and thr else f'{"-":>8} {"-":>8} {"-":>10}')
        lines.append(
            f'  {name:<16} {m["excess_mean"] * 100:>7.3f} {m["excess_p99"] * 100:>7.3f} '
            f'{m["excess_max"] * 100:>7.2f} {m["violations"]:>5d} {m["effort_mean"]:>7.3f} '
            f'{m["smoothness"]:>7.4f} {timing}')
    return '\n'.join(lines)


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
    return path
