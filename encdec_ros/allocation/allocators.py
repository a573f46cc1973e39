"""Control allocation: turn a wanted body wrench v into actuator commands u within limits.

Physics gives ``v = B u`` for an effectiveness matrix B (one column per actuator). This
module holds everything the robot needs and nothing that needs torch:

- :class:`Effectiveness`: the effectiveness configuration (YAML) with validation: B given
  directly or built from geometry (multirotor rotors after PX4's column formula, thrusters by
  position and direction), actuator limits and rate limits, wrench-axis weights, a preferred
  actuator vector for minimum effort, actuator names and the safe output;
- the allocators, one interface (:class:`Allocator`: ``allocate(v)``, ``allocate_batch(V)``):
  :class:`ExactAllocator` (weighted box-constrained least squares, the optimum everything is
  scored against; an active-set solver as QCAT's ``wls_alloc``, or scipy's BVLS),
  :class:`PseudoInverseAllocator` (pseudo-inverse, then clipping),
  :class:`RedistributionAllocator` (redistributed pseudo-inverse: saturated actuators are
  frozen at their limit and the rest of the wrench is re-allocated to the others) and
  :class:`LearnedAllocator` (an exported encoder run by :class:`~encdec_ros.engine.
  InferenceEngine`);
- :class:`RateLimiter`: per-actuator slew limits as a moving box.

Conventions. Wrenches are in the body frame of REP 103 (FLU: x forward, y left, z up), in the
order of geometry_msgs/Wrench: force x, y, z then torque x, y, z, named
``fx fy fz tx ty tz``. A configuration may give its geometry in PX4's FRD frame
(``frame: frd``); it is converted when loaded. An allocator works on the axes the
configuration allocates (``axes``, e.g. ``[fz, tx, ty, tz]`` for a planar multirotor): the
``v`` it takes has one value per allocated axis, in that order (:meth:`Effectiveness.select`
picks them from a 6-vector).

The objective, shared by every method's scoring::

    minimise  || D (B u - v) ||^2  +  effort_weight * || (u - u_pref) / r ||^2
    subject to  u_min <= u <= u_max

with ``D = diag(weight_i / scale_i)``: each axis is first divided by its largest attainable
magnitude ``scale_i`` (so forces in newtons and torques in newton metres, or a ship's kN and
kN m, compare), then multiplied by its priority weight; ``r`` is each actuator's half range.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from encdec_ros.errors import ConfigError, EncdecError, ModelDirError

AXES = ('fx', 'fy', 'fz', 'tx', 'ty', 'tz')
"""Wrench axes in geometry_msgs/Wrench order: force x, y, z, torque x, y, z (FLU body)."""
FRAMES = ('flu', 'frd')
METHODS = ('learned', 'exact', 'pseudo_inverse', 'redistribution')
SOLVERS = ('active_set', 'bvls')
DEFAULT_EFFORT_WEIGHT = 1e-4
"""Weight of the secondary (minimum effort) objective relative to the wrench error."""
DEFAULT_CT = 1.0
DEFAULT_KM = 0.05  # PX4's default moment ratio
_FRD = np.array([1.0, -1.0, -1.0])  # FRD <-> FLU for positions and directions
_TOP_KEYS = ('name', 'description', 'source', 'frame', 'frame_id', 'axes', 'matrix',
             'actuators', 'rotors', 'thrusters', 'limits', 'weights', 'preferred',
             'effort_weight', 'safe_output')
_ROTOR_KEYS = ('name', 'position', 'axis', 'spin', 'ct', 'km')
_THRUSTER_KEYS = ('name', 'position', 'direction', 'gain')
_LIMIT_KEYS = ('min', 'max', 'rate')
_VERTEX_LIMIT = 16  # enumerate all 2^n box vertices up to this many actuators
_FEAS_TOL = 1e-12
_X_MAX = 1e6  # largest normalised wrench fed to a network


class AllocationError(EncdecError):
    """An allocator cannot be built or run as asked."""


def method_name(method: str) -> str:
    """Normalise a method name ('pseudo-inverse' and 'pinv' mean 'pseudo_inverse')."""
    name = str(method).strip().lower().replace('-', '_')
    name = {'pinv': 'pseudo_inverse', 'pseudoinverse': 'pseudo_inverse',
            'redistributed': 'redistribution', 'wls': 'exact'}.get(name, name)
    if name not in METHODS:
        raise ConfigError(f'allocation method {method!r} is not one of {", ".join(METHODS)}; '
                          'pick one of them')
    return name


# --------------------------------------------------------------------------- configuration


def _err(source: str, entry: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f'{source}: {entry} {problem}; {fix}')


def _number(value: Any, source: str, entry: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            float(value)):
        raise _err(source, entry, f'is {value!r}, not a finite number', 'write a number')
    return float(value)


def _vector(value: Any, n: int | None, source: str, entry: str, *,
            allow_scalar: bool = False, what: str = 'values') -> np.ndarray:
    """A list of ``n`` finite numbers (or one number repeated when ``allow_scalar``)."""
    if allow_scalar and isinstance(value, (int, float)) and not isinstance(value, bool):
        if n is None:
            raise _err(source, entry, 'is a single number', f'give a list of {what}')
        return np.full(n, _number(value, source, entry))
    if not isinstance(value, (list, tuple)):
        hint = 'a number or ' if allow_scalar else ''
        raise _err(source, entry, f'is {value!r}', f'give {hint}a list of {what}')
    if n is not None and len(value) != n:
        one = ' or a single number' if allow_scalar else ''
        raise _err(source, entry, f'has {len(value)} entries but there are {n} {what}',
                   f'give one per {what.rstrip("s")}{one}')
    return np.array([_number(v, source, f'{entry}[{i}]') for i, v in enumerate(value)])


def _unknown(keys: Any, allowed: Sequence[str], source: str, entry: str) -> None:
    extra = [k for k in keys if k not in allowed]
    if extra:
        where = f'{entry} has' if entry else 'has'
        raise ConfigError(f'{source}: {where} the unknown key {extra[0]!r}; the keys are '
                          f'{", ".join(allowed)}')


def _unit(vec: np.ndarray, source: str, entry: str) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    if norm < 1e-9:
        raise _err(source, entry, 'is the zero vector', 'give the direction the force points')
    if abs(norm - 1.0) > 1e-3:
        raise _err(source, entry, f'has length {norm:.4g}, not 1',
                   f'give a unit vector (e.g. {np.round(vec / norm, 6).tolist()})')
    return vec / norm


def _rotor_column(entry: Mapping[str, Any], i: int, frame: str, source: str
                  ) -> tuple[str, np.ndarray]:
    where = f'rotors[{i}]'
    if not isinstance(entry, Mapping):
        raise _err(source, where, f'is {entry!r}', 'give a mapping with position, spin, ...')
    _unknown(entry, _ROTOR_KEYS, source, where)
    if 'position' not in entry:
        raise _err(source, where, 'has no position', 'give position: [x, y, z] in metres')
    pos = _vector(entry['position'], 3, source, f'{where}.position', what='coordinates')
    default_axis = [0.0, 0.0, -1.0] if frame == 'frd' else [0.0, 0.0, 1.0]
    axis = _unit(_vector(entry.get('axis', default_axis), 3, source, f'{where}.axis',
                         what='coordinates'), source, f'{where}.axis')
    spin = entry.get('spin')
    if spin not in ('ccw', 'cw'):
        raise _err(source, f'{where}.spin', f'is {spin!r}',
                   "write spin: ccw or spin: cw (seen from where the thrust points, i.e. from "
                   'above for a rotor lifting the vehicle)')
    ct = _number(entry.get('ct', DEFAULT_CT), source, f'{where}.ct')
    km = _number(entry.get('km', DEFAULT_KM), source, f'{where}.km')
    if ct <= 0:
        raise _err(source, f'{where}.ct', f'is {ct:g}', 'give a positive thrust coefficient')
    if km < 0:
        raise _err(source, f'{where}.km', f'is {km:g}',
                   'give km as a magnitude and the direction as spin (PX4\'s negative km means '
                   'spin: cw)')
    if frame == 'frd':
        pos, axis = pos * _FRD, axis * _FRD
    sign = 1.0 if spin == 'ccw' else -1.0
    # PX4 ActuatorEffectivenessRotors: thrust = ct a, moment = ct (p x a) - ct km a (km > 0
    # for a counter-clockwise rotor). The formula holds in any right-handed frame.
    col = np.concatenate([ct * axis, ct * np.cross(pos, axis) - sign * ct * km * axis])
    return str(entry.get('name', f'rotor_{i}')), col


def _thruster_column(entry: Mapping[str, Any], i: int, frame: str, source: str
                     ) -> tuple[str, np.ndarray]:
    where = f'thrusters[{i}]'
    if not isinstance(entry, Mapping):
        raise _err(source, where, f'is {entry!r}', 'give a mapping with position, direction')
    _unknown(entry, _THRUSTER_KEYS, source, where)
    for key in ('position', 'direction'):
        if key not in entry:
            raise _err(source, where, f'has no {key}', f'give {key}: [x, y, z]')
    pos = _vector(entry['position'], 3, source, f'{where}.position', what='coordinates')
    direction = _unit(_vector(entry['direction'], 3, source, f'{where}.direction',
                              what='coordinates'), source, f'{where}.direction')
    gain = _number(entry.get('gain', 1.0), source, f'{where}.gain')
    if gain <= 0:
        raise _err(source, f'{where}.gain', f'is {gain:g}', 'give a positive force per unit')
    if frame == 'frd':
        pos, direction = pos * _FRD, direction * _FRD
    col = gain * np.concatenate([direction, np.cross(pos, direction)])
    return str(entry.get('name', f'thruster_{i}')), col


def _axis_list(value: Any, source: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _err(source, 'axes', f'is {value!r}', f'give a list of axes from {", ".join(AXES)}')
    axes = []
    for item in value:
        name = str(item).lower()
        if name not in AXES:
            raise _err(source, 'axes', f'names {item!r}, which is not a wrench axis',
                       f'use {", ".join(AXES)}')
        if name in axes:
            raise _err(source, 'axes', f'lists {name} twice', 'list each axis once')
        axes.append(name)
    return axes


@dataclass
class Effectiveness:
    """A validated effectiveness configuration (build it with :meth:`load` or
    :meth:`from_dict`).

    Attributes:
        name: Short name (e.g. 'quad_x').
        source: Where it came from (a path), used in error messages.
        axes: The allocated wrench axes, e.g. ('fz', 'tx', 'ty', 'tz').
        matrix_full: B for all six axes (6, n), FLU, rows in :data:`AXES` order.
        actuators: Actuator names (n).
        u_min, u_max: Actuator limits (n,).
        rate: Slew limits in units per second (n,), or None.
        weights: Priority weight of each allocated axis (k,).
        preferred: Preferred actuator vector for minimum effort (n,).
        effort_weight: Weight of the effort term against the normalised wrench error.
        safe_output: What the node commands when wanted wrenches stop arriving (n,).
        frame_id: The body frame wrenches are expected in.
        description: Free text (where the numbers come from).

    Derived: ``matrix`` (B on the allocated axes), ``scale`` (largest attainable magnitude
    per axis), ``row_weight`` (weight / scale), ``half_range`` and ``mid`` of each actuator,
    ``max_wrench`` (largest attainable ``||D v||``) and ``max_scaled`` (largest attainable
    ``||v / scale||``).
    """

    name: str
    source: str
    axes: tuple[str, ...]
    matrix_full: np.ndarray
    actuators: tuple[str, ...]
    u_min: np.ndarray
    u_max: np.ndarray
    rate: np.ndarray | None
    weights: np.ndarray
    preferred: np.ndarray
    effort_weight: float
    safe_output: np.ndarray
    frame_id: str = 'base_link'
    description: str = ''
    # derived in __post_init__
    axis_index: np.ndarray = field(init=False, repr=False)
    matrix: np.ndarray = field(init=False, repr=False)
    scale: np.ndarray = field(init=False, repr=False)
    row_weight: np.ndarray = field(init=False, repr=False)
    half_range: np.ndarray = field(init=False, repr=False)
    mid: np.ndarray = field(init=False, repr=False)
    max_wrench: float = field(init=False, repr=False)
    max_scaled: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.axis_index = np.array([AXES.index(a) for a in self.axes], dtype=np.int64)
        self.matrix = np.ascontiguousarray(self.matrix_full[self.axis_index])
        b = self.matrix
        hi = np.maximum(b * self.u_min, b * self.u_max).sum(axis=1)
        lo = np.minimum(b * self.u_min, b * self.u_max).sum(axis=1)
        self.scale = np.maximum(np.abs(hi), np.abs(lo))
        self.row_weight = self.weights / self.scale
        self.half_range = (self.u_max - self.u_min) / 2.0
        self.mid = (self.u_max + self.u_min) / 2.0
        self.max_wrench = _largest_wrench(self.row_weight[:, None] * b, self.u_min, self.u_max)
        self.max_scaled = _largest_wrench(b / self.scale[:, None], self.u_min, self.u_max)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path) -> 'Effectiveness':
        """Read and validate an effectiveness YAML file."""
        path = Path(path).expanduser()
        if not path.is_file():
            hint = ('it is a directory; pass the YAML file in it' if path.is_dir() else
                    'pass a file such as config/quad_x.yaml')
            raise ConfigError(f'effectiveness file {path} does not exist or is not a file; '
                              f'{hint}')
        try:
            data = yaml.safe_load(path.read_text(encoding='utf-8'))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            mark = getattr(err, 'problem_mark', None)
            at = f' at line {mark.line + 1}' if mark is not None else ''
            detail = getattr(err, 'problem', None) or type(err).__name__
            raise ConfigError(f'{path}: not readable YAML ({detail}{at}); fix the syntax'
                              ) from err
        if not isinstance(data, dict):
            raise ConfigError(f'{path}: holds {type(data).__name__}, not a mapping; write '
                              'keys such as rotors:, limits:, weights:')
        return cls.from_dict(data, source=str(path), default_name=path.stem)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = 'effectiveness',
                  default_name: str = 'allocator') -> 'Effectiveness':
        """Validate a configuration dict (the YAML's content or :meth:`to_dict`'s output)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f'{source}: the configuration is not a mapping; write keys such '
                              'as rotors:, limits:, weights:')
        _unknown(data, _TOP_KEYS, source, '')
        frame = str(data.get('frame', 'flu')).lower()
        if frame not in FRAMES:
            raise _err(source, 'frame', f'is {data.get("frame")!r}',
                       'write flu (REP 103: x forward, y left, z up) or frd (PX4: x forward, '
                       'y right, z down)')
        has_matrix = 'matrix' in data
        has_geometry = 'rotors' in data or 'thrusters' in data
        if has_matrix == has_geometry:
            which = 'not both' if has_matrix else 'one of them is needed'
            raise ConfigError(f'{source}: give either matrix: (B directly) or rotors: / '
                              f'thrusters: (geometry), {which}')
        axes = _axis_list(data['axes'], source) if 'axes' in data else None
        names: list[str]
        if has_matrix:
            full, names = _matrix_from_dict(data, axes, frame, source)
        else:
            cols, names = [], []
            for kind, builder in (('rotors', _rotor_column), ('thrusters', _thruster_column)):
                entries = data.get(kind) or []
                if not isinstance(entries, list):
                    raise _err(source, kind, f'is {entries!r}', 'give a list of entries')
                for i, entry in enumerate(entries):
                    name, col = builder(entry, i, frame, source)
                    names.append(name)
                    cols.append(col)
            if not cols:
                raise _err(source, 'rotors/thrusters', 'are empty', 'list the actuators')
            full = np.stack(cols, axis=1)
            full[np.abs(full) < 1e-12 * max(1.0, float(np.abs(full).max()))] = 0.0
        full = full + 0.0  # no negative zeros
        n = full.shape[1]
        if 'actuators' in data and not has_matrix:
            raise _err(source, 'actuators', 'is given with geometry',
                       'name each rotor or thruster with its own name: key instead')
        if len(set(names)) != len(names):
            dup = next(x for x in names if names.count(x) > 1)
            raise _err(source, 'actuator names', f'repeat {dup!r}', 'give each a unique name')
        if axes is None:
            scale = np.abs(full).max()
            axes = [a for a, row in zip(AXES, full) if np.abs(row).max() > 1e-9 * scale]
        _check_rank(full, axes, source)

        limits = data.get('limits')
        if not isinstance(limits, Mapping) or 'min' not in limits or 'max' not in limits:
            raise _err(source, 'limits', 'must give min and max',
                       'write limits: {min: 0.0, max: 1.0} (a number or one per actuator)')
        _unknown(limits, _LIMIT_KEYS, source, 'limits')
        u_min = _vector(limits['min'], n, source, 'limits.min', allow_scalar=True,
                        what='actuators')
        u_max = _vector(limits['max'], n, source, 'limits.max', allow_scalar=True,
                        what='actuators')
        bad = np.flatnonzero(u_min >= u_max)
        if bad.size:
            j = int(bad[0])
            raise _err(source, f'limits for actuator {names[j]!r}',
                       f'have min {u_min[j]:g} >= max {u_max[j]:g}',
                       'make min smaller than max')
        rate = None
        if limits.get('rate') is not None:
            rate = _vector(limits['rate'], n, source, 'limits.rate', allow_scalar=True,
                           what='actuators')
            if (rate <= 0).any():
                raise _err(source, 'limits.rate', 'has a value <= 0',
                           'give positive units per second, or leave rate out')

        weights_in = data.get('weights') or {}
        if not isinstance(weights_in, Mapping):
            raise _err(source, 'weights', f'is {weights_in!r}',
                       'write a mapping such as {tx: 10, ty: 10, tz: 3, fz: 1}')
        for key in weights_in:
            if str(key).lower() not in AXES:
                raise _err(source, 'weights', f'has the unknown axis {key!r}',
                           f'use {", ".join(AXES)}')
            if str(key).lower() not in axes:
                raise _err(source, f'weights.{key}', 'weights an axis that is not allocated',
                           f'remove it or add it to axes ({", ".join(axes)})')
        lower_w = {str(k).lower(): v for k, v in weights_in.items()}
        weights = np.array([_number(lower_w.get(a, 1.0), source, f'weights.{a}')
                            for a in axes])
        if (weights <= 0).any():
            raise _err(source, 'weights', 'has a value <= 0', 'give positive weights')

        preferred = _vector(data.get('preferred', 0.0), n, source, 'preferred',
                            allow_scalar=True, what='actuators')
        preferred_default = 'preferred' not in data
        if preferred_default:
            preferred = np.clip(preferred, u_min, u_max)
        elif ((preferred < u_min) | (preferred > u_max)).any():
            raise _err(source, 'preferred', 'lies outside the limits',
                       'give a value between min and max for each actuator')
        effort = _number(data.get('effort_weight', DEFAULT_EFFORT_WEIGHT), source,
                         'effort_weight')
        if not effort > 0:
            raise _err(source, 'effort_weight', f'is {effort:g}',
                       'give a small positive number such as 1e-4')
        if 'safe_output' in data:
            safe = _vector(data['safe_output'], n, source, 'safe_output', allow_scalar=True,
                           what='actuators')
            if ((safe < u_min) | (safe > u_max)).any():
                raise _err(source, 'safe_output', 'lies outside the limits',
                           'give a value between min and max for each actuator')
        else:
            safe = np.clip(np.zeros(n), u_min, u_max)
        frame_id = data.get('frame_id', 'base_link')
        if not isinstance(frame_id, str):
            raise _err(source, 'frame_id', f'is {frame_id!r}', 'give a frame name')
        return cls(name=str(data.get('name', default_name)), source=source, axes=tuple(axes),
                   matrix_full=full, actuators=tuple(names), u_min=u_min, u_max=u_max,
                   rate=rate, weights=weights, preferred=preferred, effort_weight=effort,
                   safe_output=safe, frame_id=frame_id,
                   description=str(data.get('description', '') or ''))

    def to_dict(self) -> dict[str, Any]:
        """The canonical form (B as a FLU matrix): what model.yaml stores; round-trips."""
        return {
            'name': self.name,
            'description': self.description,
            'frame': 'flu',
            'frame_id': self.frame_id,
            'axes': list(self.axes),
            'actuators': list(self.actuators),
            'matrix': [[float(x) for x in row] for row in self.matrix],
            'limits': {'min': self.u_min.tolist(), 'max': self.u_max.tolist(),
                       **({'rate': self.rate.tolist()} if self.rate is not None else {})},
            'weights': {a: float(w) for a, w in zip(self.axes, self.weights)},
            'preferred': self.preferred.tolist(),
            'effort_weight': float(self.effort_weight),
            'safe_output': self.safe_output.tolist(),
        }

    # ------------------------------------------------------------------ helpers

    @property
    def n_actuators(self) -> int:
        """Number of actuators (columns of B)."""
        return int(self.matrix.shape[1])

    @property
    def n_axes(self) -> int:
        """Number of allocated wrench axes (rows of :attr:`matrix`)."""
        return len(self.axes)

    def select(self, wrench6: Any) -> np.ndarray:
        """The allocated axes of 6-axis wrenches (..., 6) in :data:`AXES` order."""
        return np.asarray(wrench6, dtype=np.float64)[..., self.axis_index]

    def achieved(self, u: np.ndarray) -> np.ndarray:
        """B u on the allocated axes, (..., k)."""
        return np.asarray(u, dtype=np.float64) @ self.matrix.T

    def achieved_full(self, u: np.ndarray) -> np.ndarray:
        """B u on all six axes, (..., 6)."""
        return np.asarray(u, dtype=np.float64) @ self.matrix_full.T

    def error(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Weighted, normalised wrench error ``||D (B u - v)||`` as a fraction of the largest
        attainable wrench (same norm), per row."""
        r = (self.achieved(u) - np.asarray(v, dtype=np.float64)) * self.row_weight
        return np.linalg.norm(r, axis=-1) / self.max_wrench

    def effort(self, u: np.ndarray) -> np.ndarray:
        """RMS distance of u from the preferred vector in half ranges, per row."""
        d = (np.asarray(u, dtype=np.float64) - self.preferred) / self.half_range
        return np.sqrt(np.mean(d * d, axis=-1))

    def violations(self, u: np.ndarray, *, rtol: float = 1e-9) -> np.ndarray:
        """Number of actuators outside [min, max] (beyond rounding), per row."""
        tol = rtol * (self.u_max - self.u_min)
        u = np.asarray(u, dtype=np.float64)
        return ((u < self.u_min - tol) | (u > self.u_max + tol)).sum(axis=-1)

    def norm_wrench(self, v: np.ndarray) -> np.ndarray:
        """``||D v||`` as a fraction of the largest attainable wrench, per row."""
        return np.linalg.norm(np.asarray(v, dtype=np.float64) * self.row_weight,
                              axis=-1) / self.max_wrench

    def compare(self, other: 'Effectiveness') -> str | None:
        """Describe the first difference that changes allocation, or None when equal."""
        checks = (('axes', list(self.axes), list(other.axes)),
                  ('actuators', list(self.actuators), list(other.actuators)))
        for what, a, b in checks:
            if a != b:
                return f'{what} {a} vs {b}'
        pairs = (('B', self.matrix, other.matrix), ('limits.min', self.u_min, other.u_min),
                 ('limits.max', self.u_max, other.u_max), ('weights', self.weights,
                                                           other.weights),
                 ('preferred', self.preferred, other.preferred))
        for what, a, b in pairs:
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=1e-9):
                return f'{what} differs'
        if not math.isclose(self.effort_weight, other.effort_weight, rel_tol=1e-6):
            return 'effort_weight differs'
        return None

    def describe(self) -> str:
        """A few lines for the command line."""
        cond = float(np.linalg.cond(self.row_weight[:, None] * self.matrix * self.half_range))
        lines = [f'{self.name}: {self.n_actuators} actuators, axes {" ".join(self.axes)} '
                 f'(condition number {cond:.3g} after normalisation)']
        for a, s, w in zip(self.axes, self.scale, self.weights):
            lines.append(f'  {a}: largest attainable {s:.4g}, weight {w:g}')
        return '\n'.join(lines)


def _matrix_from_dict(data: Mapping[str, Any], axes: list[str] | None, frame: str,
                      source: str) -> tuple[np.ndarray, list[str]]:
    if axes is None:
        raise _err(source, 'matrix', 'is given without axes',
                   'add axes: naming the wrench axis of each row, e.g. [fx, fy, tz]')
    rows = data['matrix']
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise _err(source, 'matrix', 'is not a list of rows',
                   'write one row per axis, one column per actuator')
    if len(rows) != len(axes):
        raise _err(source, 'matrix', f'has {len(rows)} rows but axes lists {len(axes)}',
                   'give one row per axis in axes')
    n = len(rows[0])
    mat = np.stack([_vector(r, n, source, f'matrix[{i}]', what='columns (actuators)')
                    for i, r in enumerate(rows)])
    names = data.get('actuators')
    if names is None:
        names = [f'u{j}' for j in range(n)]
    elif not isinstance(names, list) or len(names) != n:
        raise _err(source, 'actuators', f'does not list {n} names',
                   'give one name per matrix column')
    full = np.zeros((6, n))
    for a, row in zip(axes, mat):
        full[AXES.index(a)] = row
    if frame == 'frd':
        full *= np.concatenate([_FRD, _FRD])[:, None]
    return full, [str(x) for x in names]


def _check_rank(full: np.ndarray, axes: Sequence[str], source: str) -> None:
    b = full[[AXES.index(a) for a in axes]]
    scale = float(np.abs(full).max()) or 1.0
    for a, row in zip(axes, b):
        if np.abs(row).max() <= 1e-9 * scale:
            raise _err(source, f'axis {a}', 'has no actuator acting on it',
                       f'remove {a} from axes or fix the geometry')
    if b.shape[0] > b.shape[1]:
        raise _err(source, 'axes', f'ask for {b.shape[0]} axes from {b.shape[1]} actuators',
                   'allocate at most as many axes as there are actuators')
    bn = b / np.abs(b).max(axis=1, keepdims=True)
    s = np.linalg.svd(bn, compute_uv=False)
    rank = int((s > 1e-9 * s[0]).sum())
    if rank < len(axes):
        _, _, vt = np.linalg.svd(bn.T)
        dep = vt[-1]
        combo = ' + '.join(f'{c:.2g} {a}' for c, a in zip(dep, axes) if abs(c) > 1e-6)
        raise _err(source, 'B', f'has rank {rank} for the {len(axes)} axes '
                   f'{", ".join(axes)} (no actuator moves {combo})',
                   'allocate fewer axes or fix the geometry')


def _largest_wrench(bn: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """max over the box of ||bn u|| (a convex function: its maximum is at a vertex)."""
    n = bn.shape[1]
    if n <= _VERTEX_LIMIT:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
    else:  # pragma: no cover - more actuators than any shipped configuration
        bits = np.random.default_rng(0).integers(0, 2, size=(1 << _VERTEX_LIMIT, n))
    verts = np.where(bits.astype(bool), hi, lo)
    return float(np.linalg.norm(verts @ bn.T, axis=1).max())


# --------------------------------------------------------------------------- allocators


class Allocator:
    """Common interface: ``allocate(v)`` for one wrench, ``allocate_batch(V)`` for many.

    ``v`` holds the allocated axes (:attr:`Effectiveness.axes`); the result always lies in
    [u_min, u_max], and in [lower, upper] when those tighter bounds are given (rate limits).
    """

    method = 'base'

    def __init__(self, eff: Effectiveness) -> None:
        self.eff = eff
        self.lo_, self.hi_ = eff.u_min.copy(), eff.u_max.copy()

    def allocate(self, v: np.ndarray, *, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None) -> np.ndarray:
        """Actuator commands (n,) for one wrench (k,)."""
        raise NotImplementedError

    def allocate_batch(self, v: np.ndarray) -> np.ndarray:
        """Actuator commands (N, n) for wrenches (N, k)."""
        v = np.asarray(v, dtype=np.float64)
        return np.stack([self.allocate(row) for row in v]) if len(v) else np.zeros(
            (0, self.eff.n_actuators))

    def describe(self) -> dict[str, Any]:
        """A plain dict for diagnostics."""
        return {'method': self.method}

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.eff.name!r})'


def _clip(u: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None,
          eff: Effectiveness) -> np.ndarray:
    lo = eff.u_min if lower is None else np.maximum(lower, eff.u_min)
    hi = eff.u_max if upper is None else np.minimum(upper, eff.u_max)
    return np.minimum(np.maximum(u, lo), hi)


class _Normalised:
    """The problem in normalised actuator units z = (u - mid) / half_range, z in [-1, 1]."""

    def __init__(self, eff: Effectiveness) -> None:
        self.eff = eff
        d = eff.row_weight
        self.az = (d[:, None] * eff.matrix) * eff.half_range  # (k, n)
        self.zp = (eff.preferred - eff.mid) / eff.half_range
        self.offset = eff.matrix @ eff.mid  # B mid
        self.d = d

    def target(self, v: np.ndarray) -> np.ndarray:
        """D (v - B mid): the right-hand side in normalised units."""
        return (v - self.offset) * self.d

    def to_u(self, z: np.ndarray) -> np.ndarray:
        return self.eff.mid + self.eff.half_range * z

    def to_z(self, u: np.ndarray) -> np.ndarray:
        return (u - self.eff.mid) / self.eff.half_range


class PseudoInverseAllocator(Allocator):
    """Minimum-norm pseudo-inverse about the preferred vector, then clipping (the naive one).

    ``u = u_pref + R pinv(B R) (v - B u_pref)``, clipped to the limits; ``R`` scales each
    actuator by its half range, so actuators of different sizes share the work fairly.
    """

    method = 'pseudo_inverse'

    def __init__(self, eff: Effectiveness) -> None:
        super().__init__(eff)
        br = eff.matrix * eff.half_range
        pinv = np.linalg.pinv(br)  # (n, k)
        self.gain_ = eff.half_range[:, None] * pinv  # u = gain v + bias
        self.bias_ = eff.preferred - self.gain_ @ (eff.matrix @ eff.preferred)
        self._gain_t = np.ascontiguousarray(self.gain_.T)

    def allocate(self, v: np.ndarray, *, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None) -> np.ndarray:
        u = self.gain_ @ v + self.bias_
        return _clip(u, lower, upper, self.eff)

    def allocate_batch(self, v: np.ndarray) -> np.ndarray:
        u = np.asarray(v, dtype=np.float64) @ self._gain_t + self.bias_
        return np.minimum(np.maximum(u, self.lo_), self.hi_)


class RedistributionAllocator(Allocator):
    """Redistributed pseudo-inverse (the generic form of PX4's sequential desaturation).

    Allocate with the weighted pseudo-inverse; actuators that would pass a limit are frozen
    there, and what they leave undone is re-allocated, in the weighted least-squares sense,
    to the actuators still free; repeat until nothing new saturates.
    """

    method = 'redistribution'

    def __init__(self, eff: Effectiveness) -> None:
        super().__init__(eff)
        self._p = _Normalised(eff)
        self._pinv: dict[bytes, np.ndarray] = {}

    def _pinv_of(self, free: np.ndarray) -> np.ndarray:
        key = free.tobytes()
        p = self._pinv.get(key)
        if p is None:
            p = np.linalg.pinv(self._p.az[:, free])
            self._pinv[key] = p
        return p

    def allocate(self, v: np.ndarray, *, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None) -> np.ndarray:
        prob = self._p
        lo = -np.ones(self.eff.n_actuators) if lower is None else np.maximum(
            prob.to_z(lower), -1.0)
        hi = np.ones(self.eff.n_actuators) if upper is None else np.minimum(
            prob.to_z(upper), 1.0)
        t = prob.target(np.asarray(v, dtype=np.float64))
        z = np.clip(prob.zp, lo, hi)
        free = np.ones(self.eff.n_actuators, dtype=bool)
        for _ in range(self.eff.n_actuators):
            fixed_part = prob.az[:, ~free] @ z[~free]
            zf = prob.zp[free] + self._pinv_of(free) @ (
                t - fixed_part - prob.az[:, free] @ prob.zp[free])
            low, high = zf < lo[free], zf > hi[free]
            sat = low | high
            z[free] = np.minimum(np.maximum(zf, lo[free]), hi[free])
            if not sat.any():
                break
            idx = np.flatnonzero(free)
            free[idx[sat]] = False
            if not free.any():
                break
        return _clip(prob.to_u(z), lower, upper, self.eff)


class ExactAllocator(Allocator):
    """The optimum: weighted box-constrained least squares with a secondary effort term.

    Minimises ``||D (B u - v)||^2 + effort_weight ||(u - u_pref) / r||^2`` over the box.
    ``solver='active_set'`` (default) is a primal active-set method on the normal equations
    (as QCAT's ``wls_alloc``), warm-started from the previous answer when ``warm_start``;
    ``solver='bvls'`` calls ``scipy.optimize.lsq_linear(method='bvls')``. Both reach the same
    unique optimum (the effort term makes it strictly convex).

    Args:
        eff: The effectiveness configuration.
        solver: 'active_set' or 'bvls'.
        warm_start: Start from the previous solution (the node); off for independent
            wrenches (evaluation), which start from the clipped unconstrained optimum.
        max_iter: Iteration cap of the active-set method (it rarely needs n + 2).
    """

    method = 'exact'

    def __init__(self, eff: Effectiveness, *, solver: str = 'active_set',
                 warm_start: bool = False, max_iter: int = 100) -> None:
        super().__init__(eff)
        if solver not in SOLVERS:
            raise ConfigError(f'exact solver {solver!r} is not one of {", ".join(SOLVERS)}')
        self.solver = solver
        self.warm_start = warm_start
        self.max_iter = max_iter
        p = _Normalised(eff)
        self._p = p
        n = eff.n_actuators
        gamma = eff.effort_weight
        self._h = p.az.T @ p.az + gamma * np.eye(n)  # Hessian in z
        self._g_v = p.az.T * p.d  # (n, k): gradient term from v
        self._g0 = -p.az.T @ (p.offset * p.d) + gamma * p.zp
        self._h_inv = np.linalg.inv(self._h)
        self._sqrt_gamma = math.sqrt(gamma)
        self._stack = np.vstack([p.az, self._sqrt_gamma * np.eye(n)])
        self._z_prev: np.ndarray | None = None
        self._w_prev: np.ndarray | None = None
        self.iterations_ = 0
        self.not_converged_ = 0

    def reset(self) -> None:
        """Forget the warm start."""
        self._z_prev = self._w_prev = None

    def _bounds_z(self, lower: np.ndarray | None, upper: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
        n = self.eff.n_actuators
        lo = -np.ones(n) if lower is None else np.maximum(self._p.to_z(lower), -1.0)
        hi = np.ones(n) if upper is None else np.minimum(self._p.to_z(upper), 1.0)
        return lo, np.maximum(hi, lo)

    def allocate(self, v: np.ndarray, *, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        lo, hi = self._bounds_z(lower, upper)
        g = self._g_v @ v + self._g0
        if self.solver == 'bvls':
            z = self._bvls(v, lo, hi)
        else:
            if self.warm_start and self._z_prev is not None:
                z0 = np.minimum(np.maximum(self._z_prev, lo), hi)
            else:
                z0 = np.minimum(np.maximum(self._h_inv @ g, lo), hi)
            w0 = np.where(z0 <= lo, -1, np.where(z0 >= hi, 1, 0))
            z, w = self._active_set(g, lo, hi, z0, w0.astype(np.int8))
            if self.warm_start:
                self._z_prev, self._w_prev = z, w
        return _clip(self._p.to_u(z), lower, upper, self.eff)

    def _bvls(self, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        from scipy.optimize import lsq_linear

        p = self._p
        b = np.concatenate([p.target(v), self._sqrt_gamma * p.zp])
        res = lsq_linear(self._stack, b, bounds=(lo, hi), method='bvls')
        return np.minimum(np.maximum(res.x, lo), hi)

    def _active_set(self, g: np.ndarray, lo: np.ndarray, hi: np.ndarray, z: np.ndarray,
                    w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Primal active-set method for min 1/2 z'Hz - g'z on the box [lo, hi].

        ``w`` is the working set: -1 held at the lower bound, +1 at the upper, 0 free.
        """
        h = self._h
        z = z.copy()
        for it in range(self.max_iter):
            grad = h @ z - g
            free = w == 0
            if free.any():
                idx = np.flatnonzero(free)
                p = np.linalg.solve(h[np.ix_(idx, idx)], -grad[idx])
                z_new = z[idx] + p
                below, above = z_new < lo[idx] - _FEAS_TOL, z_new > hi[idx] + _FEAS_TOL
            else:
                idx = p = z_new = None
                below = above = np.zeros(0, dtype=bool)
            if not (below.any() or above.any()):
                if idx is not None:
                    z[idx] = z_new
                    grad = h @ z - g
                lam = -w * grad  # >= 0 at the optimum for every held variable
                if w.any() and lam.min() < -1e-12:
                    w[int(np.argmin(lam))] = 0
                    continue
                self.iterations_ = it + 1
                return z, w
            # step to the first bound met
            with np.errstate(divide='ignore', invalid='ignore'):
                dist = np.where(p < 0, (lo[idx] - z[idx]) / p,
                                np.where(p > 0, (hi[idx] - z[idx]) / p, np.inf))
            k = int(np.argmin(dist))
            alpha = max(0.0, min(1.0, float(dist[k])))
            z[idx] += alpha * p
            j = int(idx[k])
            if p[k] < 0:
                w[j], z[j] = -1, lo[j]
            else:
                w[j], z[j] = 1, hi[j]
        self.not_converged_ += 1
        self.iterations_ = self.max_iter
        return np.minimum(np.maximum(z, lo), hi), w

    def describe(self) -> dict[str, Any]:
        return {'method': self.method, 'solver': self.solver, 'warm_start': self.warm_start}


class RateLimiter:
    """Slew limits as a moving box: each actuator may move at most ``rate * dt`` per step.

    Args:
        eff: The configuration; its ``rate`` (units per second) must be set.
    """

    def __init__(self, eff: Effectiveness) -> None:
        if eff.rate is None:
            raise ConfigError(f'{eff.source}: limits.rate is not set, so there is nothing to '
                              'rate-limit; add limits.rate or turn rate limiting off')
        self.rate = eff.rate
        self.eff = eff

    def bounds(self, previous: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
        """The box reachable from ``previous`` in ``dt_s`` seconds, inside the limits."""
        step = self.rate * max(0.0, float(dt_s))
        lo = np.maximum(self.eff.u_min, previous - step)
        hi = np.minimum(self.eff.u_max, previous + step)
        return lo, np.maximum(hi, lo)


class LearnedAllocator(Allocator):
    """An exported allocator network (``encdec train allocator``) run by ONNX Runtime.

    The network takes the wrench on the allocated axes divided by each axis's scale (stored
    in model.yaml) and returns, squashed into [0, 1] inside the network, the fraction s of
    each actuator's range: ``u = u_min + (u_max - u_min) s`` lies within the limits by
    construction. Tighter bounds (rate limits) are applied by clipping.

    Args:
        model_dir: The model directory, or a loaded :class:`~encdec_ros.modeldir.ModelDir`.
        effectiveness: The configuration the caller runs with; refused (AllocationError)
            when it differs from the model's.
        device: Inference device ('cpu' is fastest for these tiny networks at batch 1).
        threads: ONNX Runtime intra-op threads.
    """

    method = 'learned'
    BATCH_CHUNK = 4096

    def __init__(self, model_dir: Any, *, effectiveness: Effectiveness | None = None,
                 device: str = 'cpu', threads: int | None = None) -> None:
        from encdec_ros.modeldir import ModelDir

        model = model_dir if isinstance(model_dir, ModelDir) else ModelDir.load(
            model_dir, task='allocator')
        if model.task != 'allocator':
            raise ModelDirError(f'{model.path} is {"an" if model.task[0] in "aeiou" else "a"} '
                                f'{model.task} model, not an allocator; train one with '
                                '`encdec train allocator`')
        stored = Effectiveness.from_dict(model.section('allocator.effectiveness'),
                                         source=f'{model.path}/model.yaml')
        if effectiveness is not None:
            diff = stored.compare(effectiveness)
            if diff is not None:
                raise AllocationError(f'the model in {model.path} was trained for another '
                                      f'effectiveness ({diff}: {stored.source} vs '
                                      f'{effectiveness.source}); retrain it with `encdec train '
                                      'allocator --effectiveness ...` or pass its own config')
        super().__init__(effectiveness or stored)
        self.model = model
        scale = model.array('normalization.wrench_scale', dtype=np.float64)
        if scale.shape != (self.eff.n_axes,) or not (scale > 0).all():
            raise ModelDirError(f'normalization.wrench_scale in {model.path}/model.yaml does '
                                f'not hold {self.eff.n_axes} positive numbers; re-export the '
                                'model')
        self.inv_scale_ = 1.0 / scale
        self.span_ = self.eff.u_max - self.eff.u_min
        self.engine = model.engine(device, threads=threads)
        shape = self.engine.input_shapes[0]
        out = self.engine.output_shapes[0]
        if len(shape) != 2 or shape[1] != self.eff.n_axes or len(out) != 2 or \
                out[1] != self.eff.n_actuators:
            raise ModelDirError(f'{model.onnx_path} maps {list(shape)} to {list(out)} but the '
                                f'configuration has {self.eff.n_axes} axes and '
                                f'{self.eff.n_actuators} actuators; re-export the model')
        self._x = np.zeros((1, self.eff.n_axes), dtype=np.float32)
        self._xv = np.zeros(self.eff.n_axes)

    def allocate(self, v: np.ndarray, *, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None) -> np.ndarray:
        xv = self._xv
        np.multiply(v, self.inv_scale_, out=xv)
        # beyond 1e6 x the largest attainable wrench float32 squares would overflow
        np.minimum(np.maximum(xv, -_X_MAX, out=xv), _X_MAX, out=xv)
        self._x[0] = xv
        u = self.engine.run(self._x)[0] * self.span_
        u += self.eff.u_min
        if lower is None and upper is None:
            return np.minimum(u, self.eff.u_max, out=u)  # float rounding only
        return _clip(u, lower, upper, self.eff)

    def raw_batch(self, v: np.ndarray) -> np.ndarray:
        """Commands (N, n) straight from the network's output, without any clipping."""
        x = np.clip(np.asarray(v, dtype=np.float64) * self.inv_scale_, -_X_MAX, _X_MAX
                    ).astype(np.float32)
        outs = [self.engine.run(x[i:i + self.BATCH_CHUNK])
                for i in range(0, len(x), self.BATCH_CHUNK)]
        if not outs:
            return np.zeros((0, self.eff.n_actuators))
        return self.eff.u_min + self.span_ * np.concatenate(outs).astype(np.float64)

    def allocate_batch(self, v: np.ndarray) -> np.ndarray:
        return np.minimum(np.maximum(self.raw_batch(v), self.lo_), self.hi_)

    def describe(self) -> dict[str, Any]:
        return {'method': self.method, 'model': str(self.model.path),
                'provider': self.engine.provider}


def make_allocator(method: str, eff: Effectiveness | None = None, *,
                   model_dir: str | Path | None = None, device: str = 'cpu',
                   solver: str = 'active_set', warm_start: bool = False) -> Allocator:
    """Build the allocator for ``method`` ('learned' needs ``model_dir``)."""
    name = method_name(method)
    if name == 'learned':
        if not model_dir:
            raise AllocationError('the learned allocator needs a model directory; pass '
                                  'model_dir (trained with `encdec train allocator`)')
        return LearnedAllocator(model_dir, effectiveness=eff, device=device)
    if eff is None:
        raise AllocationError(f'the {name} allocator needs an effectiveness configuration; '
                              'pass one (e.g. config/quad_x.yaml)')
    if name == 'exact':
        return ExactAllocator(eff, solver=solver, warm_start=warm_start)
    if name == 'pseudo_inverse':
        return PseudoInverseAllocator(eff)
    return RedistributionAllocator(eff)


def effectiveness_of_model(model_dir: str | Path) -> Effectiveness:
    """The effectiveness configuration stored in an allocator model directory."""
    from encdec_ros.modeldir import ModelDir

    model = ModelDir.load(model_dir, task='allocator', check_onnx=False)
    return Effectiveness.from_dict(model.section('allocator.effectiveness'),
                                   source=f'{model.path}/model.yaml')


def time_per_call(fn: Any, *, repeats: int = 2000, min_s: float = 0.2) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` calls (at least ``min_s``)."""
    samples = []
    t_end = time.perf_counter() + min_s
    count = 0
    while count < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        count += 1
        if count >= 20 * repeats:
            break
    return float(np.median(samples))


__all__ = ['AXES', 'METHODS', 'AllocationError', 'Allocator', 'Effectiveness',
           'ExactAllocator', 'LearnedAllocator', 'PseudoInverseAllocator', 'RateLimiter',
           'RedistributionAllocator', 'effectiveness_of_model', 'make_allocator',
           'method_name', 'time_per_call']
