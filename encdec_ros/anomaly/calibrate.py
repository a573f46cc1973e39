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
from typing import Any, Sequence

import numpy as np

from encdec_ros.anomaly.scorer import (
    SLOW_MIN_WINDOWS,
    ChannelStats,
    Debouncer,
    SlowContext,
    SlowStats,
    T2Stats,
    aggregate_errors,
    window_features,
)
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


# --------------------------------------------------------------------------- the detector


SLOW_MIN_CONTEXTS = 50
"""Held-out decisions needed to calibrate a slow context, in context lengths."""


@dataclass
class DetectorFit:
    """Everything calibrated on held-out normal errors: statistics, threshold, self-check.

    Attributes:
        stats: Each channel's normal statistics (with the slow context's, if any).
        calibration: How the threshold was found.
        threshold: The threshold on the aggregate error (after the scale).
        slow_windows: Decisions in the slow context (0: none).
        notes: Sentences for the user (a slow context turned off, a small-data bound...).
        exceed_share: Share of held-out decisions whose score reaches the threshold.
        flagged_share: Share of held-out decisions with the debounced flag up (the
            self-check: a detector flagging much of its own normal data is refused).
        decisions: Held-out decisions scored.
        blame: [C] how many of the held-out decisions above the threshold each channel
            was the most unusual in.
    """

    stats: ChannelStats
    calibration: Calibration
    threshold: float
    slow_windows: int
    notes: list[str] = field(default_factory=list)
    exceed_share: float = 0.0
    flagged_share: float = 0.0
    decisions: int = 0
    blame: np.ndarray | None = None

    def section(self) -> dict[str, Any]:
        """The ``calibration`` section of model.yaml (without the threshold's scale)."""
        return {**self.calibration.to_dict(), 'threshold': self.threshold,
                'calibrated_threshold': self.calibration.threshold,
                'heldout_decisions': self.decisions,
                'exceed_heldout': self.exceed_share, 'flagged_heldout': self.flagged_share}


def slow_context_windows(slow_s: float, rate_hz: float, stride: int,
                         part_lengths: Sequence[int]) -> tuple[int, str]:
    """Decisions in a slow context of ``slow_s`` seconds (0: none), and a note when it had to
    be turned off because the held-out parts (their lengths in decisions) cannot calibrate
    it."""
    if not slow_s:
        return 0, ''
    windows = int(round(slow_s * rate_hz / stride))
    if windows < SLOW_MIN_WINDOWS:
        return 0, (f'slow context off: {slow_s:g} s is only {windows} decision(s) at '
                   f'{rate_hz:g} Hz with stride {stride}; give --slow of at least '
                   f'{SLOW_MIN_WINDOWS * stride / rate_hz:g} s')
    longest = max(part_lengths, default=0)
    total = sum(part_lengths)
    if longest < 3 * windows or total < SLOW_MIN_CONTEXTS * windows:
        return 0, (f'slow context off: the held-out data holds {total} decisions (longest '
                   f'part {longest}), too few to calibrate a context of {windows} decisions '
                   f'(it needs {SLOW_MIN_CONTEXTS} contexts, the longest part 3); give longer '
                   'bags or a shorter --slow')
    return windows, ''


def slow_runs(parts: Sequence[np.ndarray], windows: int) -> list[np.ndarray]:
    """The slow context's running means [n, 2C] over each held-out part, restarted at every
    part (parts are not contiguous in time)."""
    out = []
    for part in parts:
        context = SlowContext(windows, part.shape[1])
        out.append(context.run(window_features(part)))
    return out


def margin_factor(margin: float, decisions: int) -> float:
    """How much a threshold calibrated on ``decisions`` held-out normal decisions is raised:
    ``1 + margin / sqrt(decisions)``. The fewer normal decisions, the less of the robot's
    normal operation the model and its tail estimate have seen, and the wider the margin
    (about 1.9 on 300 decisions, 1.27 on 3,600 and 1.1 on 25,000 with ``margin`` 16)."""
    return 1.0 + float(margin) / math.sqrt(max(int(decisions), 1))


def fit_detector(parts: Sequence[np.ndarray], *, error: str, slow_windows: int = 0,
                 rule: str = 'pot', risk: float = 1e-4, quantile: float | None = None,
                 init_quantile: float = 0.98, threshold_scale: float = 1.0,
                 margin: float = 0.0,
                 debounce: tuple[int, int, float] = (3, 5, 0.8),
                 t2: T2Stats | None = None,
                 t2_parts: Sequence[np.ndarray] | None = None) -> DetectorFit:
    """Calibrate a detector on per-channel errors of held-out normal windows.

    Args:
        parts: Per-channel statistics [n, 2C] (:func:`~encdec_ros.anomaly.scorer.
            reconstruction_errors`) of held-out normal decisions, one array per stretch
            that is contiguous in time (the slow context restarts at each).
        error: Aggregation, one of :data:`~encdec_ros.anomaly.scorer.ERROR_KINDS`.
        slow_windows: Decisions in the slow context (0: none); see
            :func:`slow_context_windows`.
        rule, risk, quantile, init_quantile: The threshold rule (:func:`calibrate`).
        threshold_scale: Multiply the calibrated threshold.
        margin: Raise it further by :func:`margin_factor` of the held-out decisions.
        debounce: (k, n, release) of the debouncer, for the self-check.
        t2: Hotelling T^2 of the code (a PCA model's centre and scale), with ``t2_parts``
            the T^2 [n] of the same held-out decisions: its normal statistics are fitted on
            them and it joins the aggregate (T^2 + Q).
    """
    parts, t2_parts = _parts(parts, t2_parts)
    stats = ChannelStats.fit(np.concatenate(parts))
    if t2 is not None and t2_parts is not None:
        stats = stats.with_t2(t2.fitted(np.concatenate(t2_parts)))
    if slow_windows and error != 'mse':
        slow = slow_runs(parts, slow_windows)
        stats = stats.with_slow(SlowStats.fit(np.concatenate(slow), slow_windows))
    return calibrate_parts(parts, stats, error=error, rule=rule, risk=risk, quantile=quantile,
                           init_quantile=init_quantile, threshold_scale=threshold_scale,
                           margin=margin, debounce=debounce, t2_parts=t2_parts)


def calibrate_parts(parts: Sequence[np.ndarray], stats: ChannelStats, *, error: str,
                    rule: str = 'pot', risk: float = 1e-4, quantile: float | None = None,
                    init_quantile: float = 0.98, threshold_scale: float = 1.0,
                    margin: float = 0.0,
                    debounce: tuple[int, int, float] = (3, 5, 0.8),
                    t2_parts: Sequence[np.ndarray] | None = None) -> DetectorFit:
    """The threshold and self-check of :func:`fit_detector` with given channel statistics
    (``t2_parts``: the T^2 of the held-out decisions, for statistics with T^2)."""
    parts, t2_parts = _parts(parts, t2_parts)
    slow = slow_runs(parts, stats.slow.windows) if stats.slow is not None and \
        error != 'mse' else None
    if stats.t2 is not None and t2_parts is None:
        raise ConfigError('the detector scores the T^2 of its code but no T^2 of the '
                          'held-out windows was given to calibrate it on')
    pairs = [aggregate_errors(p, error, stats, None if slow is None else slow[i],
                              None if t2_parts is None else t2_parts[i])
             for i, p in enumerate(parts)]
    aggs = [a for a, _ in pairs]
    agg = np.concatenate(aggs)
    cal = calibrate(agg, rule=rule, risk=risk, quantile=quantile, init_quantile=init_quantile)
    factor = margin_factor(margin, int(np.isfinite(agg).sum()))
    cal.details['margin'] = float(margin)
    cal.details['margin_factor'] = factor
    threshold = cal.threshold * threshold_scale * factor
    if not (math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f'the calibrated threshold is {threshold!r}, not a positive number; '
                          'use --error mse or the quantile rule')
    k, n, release = debounce
    flagged = decisions = 0
    for a in aggs:
        flags = Debouncer(k=k, n=n, release=release).run(a / threshold)
        flagged += int(flags.sum())
        decisions += int(np.isfinite(a).sum())
    finite = agg[np.isfinite(agg)]
    z = np.concatenate([zz for _, zz in pairs])
    above = np.isfinite(agg) & (agg >= threshold)
    blame = np.bincount(np.nanargmax(np.nan_to_num(z[above], nan=-np.inf), axis=1),
                        minlength=z.shape[1]) if above.any() else np.zeros(z.shape[1], int)
    return DetectorFit(stats, cal, float(threshold), stats.slow.windows if slow else 0, [],
                       float(np.mean(finite >= threshold)) if finite.size else 0.0,
                       flagged / max(decisions, 1), decisions, blame)


def _parts(parts: Sequence[np.ndarray], t2_parts: Sequence[np.ndarray] | None = None
           ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The non-empty held-out parts (float64), and their T^2 alike (None: none given)."""
    if t2_parts is not None and len(t2_parts) != len(parts):
        raise ConfigError(f'{len(t2_parts)} parts of T^2 were given for {len(parts)} parts of '
                          'held-out errors; give one per part')
    keep = [i for i, p in enumerate(parts) if len(p)]
    if not keep:
        raise ConfigError('threshold calibration needs held-out normal windows and got none; '
                          'give a longer bag or a smaller window')
    return ([np.asarray(parts[i], dtype=np.float64) for i in keep],
            None if t2_parts is None else [np.asarray(t2_parts[i], dtype=np.float64)
                                           for i in keep])
