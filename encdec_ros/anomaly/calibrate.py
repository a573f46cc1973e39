"""Threshold calibration on errors of held-out normal data: a quantile rule and POT (no torch).

- ``quantile``: the threshold is the ``q`` quantile of the normal errors. Simple, but it
  cannot reach beyond the data: with 2,000 windows, q = 0.9999 is simply the maximum.
- ``pot`` (peaks over threshold, Siffer et al., KDD 2017): the errors above an initial
  level ``u`` (their ``init_quantile``) are fitted with a generalised Pareto distribution
  (``scipy.stats.genpareto``, location 0, maximum likelihood), and the threshold is the level
  that a normal window exceeds with probability ``risk``::

      z = u + sigma / xi * ((risk * n / n_u) ** -xi - 1)      (xi != 0)
      z = u - sigma * log(risk * n / n_u)                       (xi == 0)

  Extreme-value theory says the tail above a high level is GPD-shaped whatever the error
  distribution, so this extrapolates past the largest error seen, where a quantile cannot.
  When fewer than :data:`MIN_PEAKS` errors lie above ``u``, or ``risk`` is not inside the
  fitted tail, the rule falls back to the quantile ``1 - risk`` and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from encdec_ros.errors import ConfigError

RULES = ('pot', 'quantile')
MIN_PEAKS = 10


@dataclass
class Calibration:
    """A calibrated threshold and how it was found.

    Attributes:
        threshold: The threshold on the aggregate error.
        rule: 'pot' or 'quantile' (the rule asked for).
        used: The rule that produced the threshold ('quantile' after a POT fallback).
        details: Figures for model.yaml (level, peaks, GPD shape and scale, ...).
    """

    threshold: float
    rule: str
    used: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for model.yaml."""
        return {'rule': self.rule, 'used': self.used, 'threshold': self.threshold,
                **self.details}


def quantile_threshold(errors: np.ndarray, q: float) -> float:
    """The ``q`` quantile of the finite errors (linear interpolation)."""
    errors = _finite(errors)
    if not 0.0 < q < 1.0:
        raise ConfigError(f'quantile must be between 0 and 1, got {q!r}; e.g. 0.999')
    return float(np.quantile(errors, q))


def pot_threshold(errors: np.ndarray, risk: float, *, init_quantile: float = 0.98
                  ) -> tuple[float, dict[str, Any]]:
    """Peaks-over-threshold: the level exceeded with probability ``risk`` under a GPD tail.

    Returns:
        (threshold, details) where details hold ``level`` (u), ``peaks`` (n_u), ``xi``,
        ``sigma``, and ``fallback`` (a reason) when the quantile rule had to be used.
    """
    from scipy.stats import genpareto

    errors = _finite(errors)
    if not 0.0 < risk < 1.0:
        raise ConfigError(f'risk must be between 0 and 1, got {risk!r}; e.g. 1e-4 (one '
                          'normal window in 10,000 above the threshold)')
    if not 0.0 < init_quantile < 1.0:
        raise ConfigError(f'init_quantile must be between 0 and 1, got {init_quantile!r}')
    n = errors.size
    level = float(np.quantile(errors, init_quantile))
    peaks = errors[errors > level] - level
    details: dict[str, Any] = {'risk': risk, 'init_quantile': init_quantile, 'level': level,
                               'peaks': int(peaks.size), 'windows': int(n)}
    ratio = risk * n / max(peaks.size, 1)
    reason = ''
    if peaks.size < MIN_PEAKS:
        reason = (f'only {peaks.size} errors above the initial level (need {MIN_PEAKS}); '
                  'give more normal data or a lower init_quantile')
    elif ratio >= 1.0:
        reason = (f'risk {risk:g} is not inside the tail above the {init_quantile:g} '
                  'quantile; lower the risk or the init_quantile')
    if not reason:
        xi, _, sigma = genpareto.fit(peaks, floc=0.0)
        xi, sigma = float(xi), float(sigma)
        if not (math.isfinite(xi) and math.isfinite(sigma) and sigma > 0):
            reason = 'the generalised Pareto fit did not converge'
        else:
            if abs(xi) < 1e-9:
                threshold = level - sigma * math.log(ratio)
            else:
                threshold = level + sigma / xi * (ratio ** -xi - 1.0)
            details.update(xi=xi, sigma=sigma)
            return float(threshold), details
    details['fallback'] = reason
    return quantile_threshold(errors, 1.0 - risk), details


def calibrate(errors: np.ndarray, *, rule: str = 'pot', risk: float = 1e-4,
              quantile: float | None = None, init_quantile: float = 0.98) -> Calibration:
    """Calibrate a threshold on normal errors with ``rule`` ('pot' or 'quantile').

    Args:
        errors: Aggregate errors of held-out normal windows.
        rule: 'pot' (default) or 'quantile'.
        risk: Target probability that a normal window exceeds the threshold (POT), and
            the default quantile ``1 - risk``.
        quantile: Quantile for the 'quantile' rule (default ``1 - risk``).
        init_quantile: POT's initial level, as a quantile of the errors.
    """
    if rule not in RULES:
        raise ConfigError(f'threshold rule {rule!r} is not one of {", ".join(RULES)}; '
                          'use --threshold pot or quantile')
    errors = _finite(errors)
    summary = {'error_p50': float(np.quantile(errors, 0.5)),
               'error_p99': float(np.quantile(errors, 0.99)),
               'error_max': float(errors.max())}
    if rule == 'quantile':
        q = 1.0 - risk if quantile is None else quantile
        return Calibration(quantile_threshold(errors, q), rule, 'quantile',
                           {'quantile': q, 'windows': int(errors.size), **summary})
    threshold, details = pot_threshold(errors, risk, init_quantile=init_quantile)
    used = 'quantile' if 'fallback' in details else 'pot'
    return Calibration(threshold, rule, used, {**details, **summary})


def _finite(errors: np.ndarray) -> np.ndarray:
    errors = np.asarray(errors, dtype=np.float64).ravel()
    errors = errors[np.isfinite(errors)]
    if errors.size < 2:
        raise ConfigError(f'threshold calibration needs at least 2 normal windows, got '
                          f'{errors.size}; give a longer bag or a smaller window')
    return errors
