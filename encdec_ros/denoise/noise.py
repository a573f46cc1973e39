"""Corruption models for denoising: what training adds to clean signals, and eval to real bags.

A noise spec combines components, written as a string (command line)::

    gaussian:0.05,spikes:0.01:2.0,quant:0.01,bias_walk:1e-4,drop:0.02

or as YAML (a file given to ``--noise``, or inline in a config)::

    relative: false          # true: magnitudes are multiples of each channel's std
    gaussian: 0.05
    spikes: [0.01, 2.0]
    drop: 0.02

Components (magnitudes in the signal's units, or in multiples of each channel's standard
deviation when ``relative`` is set; the string form takes a bare ``relative`` token):

- ``gaussian:SIGMA``: white Gaussian noise of standard deviation SIGMA;
- ``spikes:RATE[:SCALE]``: heavy-tailed outliers: each sample of each channel, with
  probability RATE, jumps by ``±SCALE * (1 + E)`` with E exponential of mean 1 (default
  SCALE 1);
- ``quant:STEP``: quantisation to multiples of STEP (an ADC's resolution);
- ``bias_walk:SIGMA[:INIT]``: a bias that random-walks by SIGMA per square-root second
  (needs the sample rate), starting from a turn-on bias of standard deviation INIT
  (default 0);
- ``drop:PROB[:BURST]``: lost samples: a run of losses starts with probability PROB and
  lasts BURST samples on average (geometric, default 1); a lost sample repeats the last
  delivered one, as a driver that republishes its last reading does.

They are applied in that physical order: bias walk, Gaussian noise and spikes are added,
then the sum is quantised, then samples are dropped (all channels of a message at once).
The same spec, seed and input give the same output. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from encdec_ros.errors import ConfigError

NOISE_KINDS: tuple[str, ...] = ('gaussian', 'spikes', 'quant', 'bias_walk', 'drop')
"""Component kinds, in the order they are applied."""

# kind -> (parameter names, number required, defaults of the optional ones)
_PARAMS: dict[str, tuple[tuple[str, ...], int, tuple[float, ...]]] = {
    'gaussian': (('sigma',), 1, ()),
    'spikes': (('rate', 'scale'), 1, (1.0,)),
    'quant': (('step',), 1, ()),
    'bias_walk': (('sigma', 'init'), 1, (0.0,)),
    'drop': (('prob', 'burst'), 1, (1.0,)),
}
_EXAMPLE = 'gaussian:0.05,spikes:0.01:2.0,quant:0.01,bias_walk:1e-4,drop:0.02'


@dataclass(frozen=True)
class NoiseComponent:
    """One corruption: its kind and full parameter tuple (defaults filled in)."""

    kind: str
    params: tuple[float, ...]

    @property
    def text(self) -> str:
        """The component as written in a spec string."""
        return ':'.join([self.kind, *(f'{p:g}' for p in self.params)])


@dataclass(frozen=True)
class NoiseSpec:
    """A combination of corruption components; see the module docstring.

    Attributes:
        components: At most one per kind, in application order.
        relative: Magnitudes are multiples of each channel's standard deviation.
    """

    components: tuple[NoiseComponent, ...]
    relative: bool = False

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, text: str) -> 'NoiseSpec':
        """Parse the string form, e.g. ``'gaussian:0.05,drop:0.02'``."""
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f'a noise spec must be a non-empty string such as {_EXAMPLE!r}')
        relative = False
        found: dict[str, list[float]] = {}
        for item in text.split(','):
            item = item.strip()
            if not item:
                continue
            if item == 'relative':
                relative = True
                continue
            kind, *raw = item.split(':')
            values = []
            for value in raw:
                try:
                    values.append(float(value))
                except ValueError:
                    raise ConfigError(f'noise component {item!r} has the non-number {value!r}; '
                                      f'write kind:value[:value], e.g. {_EXAMPLE}') from None
            _add(found, kind.strip(), values, item)
        return cls._build(found, relative)

    @classmethod
    def from_value(cls, value: Any, *, source: str = 'noise spec') -> 'NoiseSpec':
        """Build from a string, a path to a YAML file, a mapping or a NoiseSpec."""
        if isinstance(value, NoiseSpec):
            return value
        if isinstance(value, (str, Path)):
            text = str(value).strip()
            if text.endswith(('.yaml', '.yml')):
                return cls.load(text)
            return cls.parse(text)
        if isinstance(value, Mapping):
            found: dict[str, list[float]] = {}
            relative = value.get('relative', False)
            if not isinstance(relative, bool):
                raise ConfigError(f'{source}: relative must be true or false, got {relative!r}')
            for kind, raw in value.items():
                if kind == 'relative':
                    continue
                values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in values):
                    raise ConfigError(f'{source}: {kind} takes numbers, got {raw!r}')
                _add(found, str(kind), [float(v) for v in values], f'{kind}: {raw!r}')
            return cls._build(found, relative)
        raise ConfigError(f'{source} must be a string such as {_EXAMPLE!r} or a mapping, '
                          f'got {type(value).__name__}')

    @classmethod
    def load(cls, path: str | Path) -> 'NoiseSpec':
        """Read a YAML noise spec (a mapping, or a string in the short form)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'noise spec file {path} does not exist; give a YAML file or a '
                              f'string such as {_EXAMPLE!r}')
        try:
            data = yaml.safe_load(path.read_text(encoding='utf-8'))
        except UnicodeDecodeError:
            raise ConfigError(f'noise spec file {path} is not a text YAML file; give a YAML '
                              f'file or a string such as {_EXAMPLE!r}') from None
        except yaml.YAMLError as err:
            raise ConfigError(f'{path} is not valid YAML ({getattr(err, "problem", err)}); '
                              'fix the syntax') from None
        if isinstance(data, Mapping) and 'noise' in data and len(data) == 1:
            data = data['noise']
        if isinstance(data, str):
            return cls.parse(data)
        return cls.from_value(data, source=str(path))

    @classmethod
    def _build(cls, found: Mapping[str, list[float]], relative: bool) -> 'NoiseSpec':
        if not found:
            raise ConfigError(f'the noise spec names no component; use some of '
                              f'{", ".join(NOISE_KINDS)}, e.g. {_EXAMPLE}')
        comps = []
        for kind in NOISE_KINDS:
            if kind in found:
                names, required, defaults = _PARAMS[kind]
                values = list(found[kind])
                values += list(defaults[len(values) - required:])
                comps.append(NoiseComponent(kind, tuple(values)))
        return cls(tuple(comps), relative)

    # ------------------------------------------------------------------ forms
    @property
    def text(self) -> str:
        """The canonical string form."""
        parts = ['relative'] if self.relative else []
        return ','.join(parts + [c.text for c in self.components])

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (what a model directory stores)."""
        out: dict[str, Any] = {'relative': self.relative}
        for comp in self.components:
            out[comp.kind] = list(comp.params) if len(comp.params) > 1 else comp.params[0]
        return out

    def get(self, kind: str) -> tuple[float, ...] | None:
        """The parameters of a component, or None when the spec lacks it."""
        for comp in self.components:
            if comp.kind == kind:
                return comp.params
        return None

    # ------------------------------------------------------------------ applying
    def apply(self, clean: np.ndarray, *, rate_hz: float,
              rng: np.random.Generator | int | None = None,
              scale: np.ndarray | Sequence[float] | None = None) -> np.ndarray:
        """Corrupt a signal.

        Args:
            clean: Samples [n, c] (or [n]).
            rate_hz: Sample rate, for the bias walk's per-square-root-second step.
            rng: A numpy Generator or a seed.
            scale: Per-channel scale of a relative spec; default the std of ``clean``.

        Returns:
            The corrupted samples, float64, same shape.
        """
        x = np.asarray(clean, dtype=np.float64)
        flat = x.ndim == 1
        if flat:
            x = x[:, None]
        if x.ndim != 2:
            raise ConfigError(f'noise is applied to samples [n, channels], got shape {x.shape}')
        if not (isinstance(rate_hz, (int, float)) and rate_hz > 0):
            raise ConfigError(f'rate_hz must be positive to apply noise, got {rate_hz!r}')
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        n, c = x.shape
        if self.relative:
            unit = np.std(x, axis=0) if scale is None else np.asarray(scale, np.float64)
            unit = np.where(np.isfinite(unit) & (unit > 0), unit, 1.0)
        else:
            unit = np.ones(c)
        y = x.copy()
        for comp in self.components:
            p = comp.params
            if comp.kind == 'bias_walk':
                steps = rng.normal(0.0, 1.0, (n, c)) * (p[0] / math.sqrt(rate_hz))
                start = rng.normal(0.0, 1.0, c) * p[1]
                y += (start + np.cumsum(steps, axis=0)) * unit
            elif comp.kind == 'gaussian':
                y += rng.normal(0.0, 1.0, (n, c)) * (p[0] * unit)
            elif comp.kind == 'spikes':
                hit = rng.random((n, c)) < p[0]
                size = p[1] * (1.0 + rng.exponential(1.0, (n, c)))
                sign = np.where(rng.random((n, c)) < 0.5, -1.0, 1.0)
                y += np.where(hit, sign * size, 0.0) * unit
            elif comp.kind == 'quant':
                step = p[0] * unit
                y = np.round(y / step) * step
            elif comp.kind == 'drop':
                y = y[_held_index(n, p[0], p[1], rng)]
        return y[:, 0] if flat else y


def _add(found: dict[str, list[float]], kind: str, values: list[float], item: str) -> None:
    """Check one component and record it."""
    if kind not in _PARAMS:
        raise ConfigError(f'unknown noise kind {kind!r} in {item!r}; the kinds are '
                          f'{", ".join(NOISE_KINDS)} (and the flag relative)')
    if kind in found:
        raise ConfigError(f'noise kind {kind!r} appears twice; give each kind once')
    names, required, _ = _PARAMS[kind]
    if not required <= len(values) <= len(names):
        form = ':'.join([kind, *(n.upper() for n in names[:required]),
                         *(f'[{n.upper()}]' for n in names[required:])])
        raise ConfigError(f'noise component {item!r} takes {form}')
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f'noise component {item!r} needs finite, non-negative numbers')
    if kind in ('spikes', 'drop') and not values[0] < 1:
        raise ConfigError(f'the {kind} probability in {item!r} must be below 1, e.g. 0.01')
    if kind == 'quant' and values[0] <= 0:
        raise ConfigError(f'the quantisation step in {item!r} must be positive, e.g. 0.01')
    if kind == 'drop' and len(values) > 1 and values[1] < 1:
        raise ConfigError(f'the mean burst length in {item!r} must be at least 1 sample')
    found[kind] = values


def _held_index(n: int, prob: float, burst: float, rng: np.random.Generator) -> np.ndarray:
    """Index of the delivered sample each output repeats (itself when not dropped)."""
    lost = np.zeros(n, dtype=bool)
    if prob > 0 and n > 1:
        starts = np.flatnonzero(rng.random(n) < prob)
        lengths = rng.geometric(1.0 / burst, starts.size) if burst > 1 else \
            np.ones(starts.size, dtype=np.int64)
        for s, k in zip(starts, lengths):
            lost[s:s + k] = True
        lost[0] = False                       # the first sample is always delivered
    idx = np.where(lost, 0, np.arange(n))
    return np.maximum.accumulate(idx)


def parse_noise(value: Any) -> NoiseSpec | None:
    """A NoiseSpec from an option value; None for None, '' or 'none'."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ('', 'none')):
        return None
    return NoiseSpec.from_value(value)
