"""A fleet of simulated hexacopters: many flights of several vehicles, written in parallel.

``encdec sim --flights 50 --vehicles 5 --out fleet/`` flies ``training.sim`` 50 times (seeds
``seed .. seed + 49``; flight ``i`` on vehicle ``i % vehicles``) and writes one rosbag2 per
flight under ``fleet/``, plus ``fleet.yaml`` (each flight's seed, vehicle, constants and
faults) and ``bags.txt`` (the bag list ``--bag fleet/bags.txt`` reads).

Vehicle 0 is the nominal hexacopter (:class:`training.sim.HexaParams`). Every other vehicle
draws its constants around it, each by a factor uniform in ``[1 - jitter, 1 + jitter]``
(seeded by the vehicle number, so vehicle 3 is the same vehicle in every fleet): mass, arm
length, thrust and drag-torque coefficients, motor time constant, motor torque constant and
body drag; the inertia follows mass and arm length (``J ~ m r^2``) with its own small
spread. As on a real fleet, no two airframes are quite alike, and a model trained on some
has to cope with the others.

Flights are simulated and written in worker processes (``jobs``, default: all CPUs).
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from encdec_ros.errors import ConfigError
from training.sim import HexaParams, SimConfig, simulate, write_bag

FLEET_YAML = 'fleet.yaml'
BAG_LIST = 'bags.txt'
JITTER = 0.1
"""Default spread of each vehicle constant around the nominal hexacopter (+-10 %)."""
MAX_JITTER = 0.25
"""Beyond this spread the fixed controller gains no longer fly every vehicle."""


def vehicle_params(index: int, *, jitter: float = JITTER,
                   base: HexaParams | None = None) -> HexaParams:
    """The constants of vehicle ``index``: the nominal hexacopter for 0, else drawn around it."""
    base = base or HexaParams()
    if index == 0 or jitter == 0:
        return base
    rng = np.random.default_rng([0xF1EE7, index])

    def draw() -> float:
        return float(rng.uniform(1.0 - jitter, 1.0 + jitter))

    mass, arm = draw(), draw()
    inertia = tuple(j * mass * arm ** 2 * float(rng.uniform(1 - jitter / 3, 1 + jitter / 3))
                    for j in base.inertia_kgm2)
    return dataclasses.replace(
        base, mass_kg=base.mass_kg * mass, arm_length_m=base.arm_length_m * arm,
        inertia_kgm2=inertia, thrust_coeff=base.thrust_coeff * draw(),
        moment_ratio_m=base.moment_ratio_m * draw(),
        motor_time_constant_s=base.motor_time_constant_s * draw(),
        torque_constant_nm_per_a=base.torque_constant_nm_per_a * draw(),
        drag_coeff_xy=base.drag_coeff_xy * draw(), drag_coeff_z=base.drag_coeff_z * draw())


@dataclasses.dataclass(frozen=True)
class Flight:
    """One flight of the fleet: where it goes and how it is flown."""

    name: str
    seed: int
    vehicle: int
    config: SimConfig


def plan_fleet(*, flights: int, seed: int = 0, vehicles: int = 1, jitter: float = JITTER,
               duration_s: float = 120.0, faults: Sequence[str] = (),
               fault_duration_s: float | None = None, storage: str = 'sqlite3'
               ) -> list[Flight]:
    """The flights of a fleet (checked, nothing simulated yet)."""
    for name, value in (('flights', flights), ('vehicles', vehicles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f'{name} must be a whole number >= 1, got {value!r}')
    if not 0 <= jitter <= MAX_JITTER:
        raise ConfigError(f'jitter must be between 0 and {MAX_JITTER} (a fraction of each '
                          f'vehicle constant), got {jitter!r}; e.g. --jitter 0.1')
    width = len(str(seed + flights - 1))
    out = []
    for i in range(flights):
        v = i % vehicles
        config = SimConfig(duration_s=duration_s, seed=seed + i, faults=tuple(faults),
                           fault_duration_s=fault_duration_s, storage=storage,
                           params=vehicle_params(v, jitter=jitter))
        out.append(Flight(f'v{v}_seed{seed + i:0{width}d}', seed + i, v, config))
    return out


def _fly_one(flight: Flight, root: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = simulate(flight.config)
    path = write_bag(result, Path(root) / flight.name, storage=flight.config.storage)
    return {'name': flight.name, 'path': str(path), 'messages': int(sum(result.counts().values())),
            'faults': [[iv.kind, iv.detail] for iv in result.intervals],
            'seconds': round(time.perf_counter() - t0, 2)}


def write_fleet(flights: Sequence[Flight], out: str | Path, *, jobs: int | None = None,
                show_progress: bool | None = None) -> dict[str, Any]:
    """Simulate and write every flight into the folder ``out`` (in parallel), with
    ``fleet.yaml`` and ``bags.txt``; returns what ``fleet.yaml`` holds."""
    from encdec_ros.progress import progress

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not jobs:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else \
            (os.cpu_count() or 1)
    jobs = max(1, min(jobs, len(flights)))
    t0 = time.perf_counter()
    done: dict[str, dict[str, Any]] = {}
    bar = progress(range(len(flights)), total=len(flights), desc='flights', unit='flight',
                   enable=show_progress, min_total=2)
    ticks = iter(bar)
    if jobs == 1:
        for flight in flights:
            done[flight.name] = _fly_one(flight, str(out))
            next(ticks, None)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_fly_one, f, str(out)) for f in flights]
            for fut in as_completed(futures):
                item = fut.result()
                done[item['name']] = item
                next(ticks, None)
    for _ in ticks:
        pass
    manifest = {
        'flights': [{
            'name': f.name, 'seed': f.seed, 'vehicle': f.vehicle,
            'duration_s': f.config.duration_s, 'storage': f.config.storage,
            'faults': done[f.name]['faults'], 'messages': done[f.name]['messages'],
        } for f in flights],
        'vehicles': {int(v): _params_dict(f.config.params)
                     for v, f in sorted({f.vehicle: f for f in flights}.items())},
        'seconds': round(time.perf_counter() - t0, 2),
        'jobs': jobs,
    }
    (out / FLEET_YAML).write_text(
        '# written by encdec sim: one rosbag2 per flight in this folder\n'
        + yaml.safe_dump(manifest, sort_keys=False, width=100), encoding='utf-8')
    (out / BAG_LIST).write_text(
        '# bags of this fleet, one per line; pass this file with --bag\n'
        + ''.join(f'{f.name}\n' for f in flights), encoding='utf-8')
    return manifest


def _params_dict(p: HexaParams) -> dict[str, Any]:
    keys = ('mass_kg', 'arm_length_m', 'inertia_kgm2', 'thrust_coeff', 'moment_ratio_m',
            'motor_time_constant_s', 'torque_constant_nm_per_a', 'drag_coeff_xy',
            'drag_coeff_z')
    out: dict[str, Any] = {}
    for k in keys:
        v = getattr(p, k)
        out[k] = [float(f'{x:.6g}') for x in v] if isinstance(v, tuple) else float(f'{v:.6g}')
    return out
