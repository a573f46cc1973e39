"""Evaluate denoisers on a bag: RMSE and lag against a clean reference, a report and a PNG.

``encdec eval denoise`` calls :func:`evaluate_denoise`, which reads the model's topic from a
bag at its native rate, pairs it with a clean reference (:func:`load_pairs`: a ground-truth
topic such as the synthetic robot's ``/imu/clean``, or the recorded signal itself with a
noise spec added to make the input), runs the model and every classical baseline through
the same :class:`~encdec_ros.denoise.filters.DenoiseCore` the node runs, and reports per channel:

- RMSE against the clean signal (and the RMSE without the error's mean, which no causal
  filter can remove when it is a sensor's turn-on bias);
- lag: the delay, in samples and in ms at the topic's nominal rate, that maximises the
  cross-correlation between the estimate and the clean signal (positive: the estimate is
  late), refined to a fraction of a sample by a parabola through the peak;
- the ratio of the model's RMSE to the best baseline's (overall, the baseline with the
  lowest normalised RMSE; per channel, also against the best baseline of each channel).

The figures go to a JSON report; a PNG overlays clean, noisy, model and best baseline on a
zoomed segment. This module never imports torch (the training code imports
:func:`load_pairs` from here).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encdec_ros.denoise.filters import BASELINES, METHODS, DenoiseCore, build_core, one_topic_spec
from encdec_ros.denoise.noise import NoiseSpec
from encdec_ros.errors import BagError, ConfigError, SpecError
from encdec_ros.io.bag import BagSource, bind_spec, read_streams
from encdec_ros.io.spec import SignalSpec

log = logging.getLogger(__name__)

CLEAN_SUFFIX = '/clean'
REPORT_NAME = 'denoise_report.json'
PNG_NAME = 'denoise_overlay.png'


# --------------------------------------------------------------------------- data


@dataclass
class Pair:
    """One recording's noisy input and clean target for the spec's topic."""

    source: str
    stamps_ns: np.ndarray            # [n] header (or receive) stamps
    noisy: np.ndarray                # [n, C] float64, what the denoiser sees
    clean: np.ndarray                # [n, C] float64, what it should output
    reference: str                   # how the clean signal was obtained


def parse_span(text: str | None) -> tuple[float | None, float | None] | None:
    """Parse ``START:END`` (seconds from the first sample; either side may be empty)."""
    if text is None or str(text).strip() == '':
        return None
    start, sep, end = str(text).partition(':')
    if not sep:
        raise ConfigError(f'span {text!r} must be START:END in seconds from the start of the '
                          'bag, e.g. :300 (the first 300 s) or 300: (from 300 s on)')
    try:
        lo = float(start) if start.strip() else None
        hi = float(end) if end.strip() else None
    except ValueError:
        raise ConfigError(f'span {text!r} must hold numbers of seconds, e.g. 0:300') from None
    if lo is not None and hi is not None and hi <= lo:
        raise ConfigError(f'span {text!r} ends before it starts; give START:END with END after '
                          'START')
    return lo, hi


def span_mask(stamps_ns: np.ndarray, span: tuple[float | None, float | None] | None
              ) -> np.ndarray:
    """Samples inside ``span`` (seconds from the first sample); all when span is None."""
    if span is None or stamps_ns.size == 0:
        return np.ones(stamps_ns.size, dtype=bool)
    rel = (stamps_ns - stamps_ns[0]) * 1e-9
    lo, hi = span
    keep = np.ones(stamps_ns.size, dtype=bool)
    if lo is not None:
        keep &= rel >= lo
    if hi is not None:
        keep &= rel < hi
    return keep


def match_stamps(stamps: np.ndarray, ref_stamps: np.ndarray, period_ns: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pair each sample with the reference sample nearest in time, within half a period.

    Returns:
        (indices into ``stamps``, indices into ``ref_stamps``) of the matched pairs.
    """
    if stamps.size == 0 or ref_stamps.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if ref_stamps.size == 1:
        pick = np.zeros(stamps.size, np.int64)
    else:
        right = np.clip(np.searchsorted(ref_stamps, stamps), 1, ref_stamps.size - 1)
        left = right - 1
        pick = np.where(np.abs(ref_stamps[left] - stamps) <= np.abs(ref_stamps[right] - stamps),
                        left, right)
    ok = np.abs(ref_stamps[pick] - stamps) <= period_ns // 2
    return np.flatnonzero(ok), pick[ok]


def load_pairs(bags: Sequence[str | Path], spec: SignalSpec, *,
               clean_topic: str | None = 'auto', noise: NoiseSpec | None = None,
               seed: int = 0, span: tuple[float | None, float | None] | None = None,
               also_uncorrupted: bool = False) -> tuple[SignalSpec, list[Pair]]:
    """Read the spec's topic and its clean reference from each bag.

    Args:
        bags: Bag paths.
        spec: A spec with one topic; ``rate_hz`` is that topic's nominal rate.
        clean_topic: 'auto' (``<topic>/clean`` where present), a topic name, or None (the
            recorded signal is the reference and ``noise`` makes the input).
        noise: Corruption added to the input; required when there is no clean topic.
        seed: Seed of the corruption (bag ``i`` uses ``seed + i``).
        span: (start, end) seconds from the first sample of each bag.
        also_uncorrupted: Also return each bag without ``noise`` (after all the corrupted
            pairs, same order); needs ``noise`` and a clean topic in every bag.

    Returns:
        The resolved spec and one :class:`Pair` per bag (two with ``also_uncorrupted``).
    """
    if also_uncorrupted and noise is None:
        raise ConfigError('--also-uncorrupted needs --noise: it trains on each bag both '
                          'with and without that corruption')
    if not bags:
        raise BagError('no bag given; pass at least one bag with --bag')
    if len(spec.topics) != 1:
        raise SpecError(f'{spec.source}: a denoising spec names exactly one topic (the one to '
                        f'clean), got {len(spec.topics)}: {", ".join(spec.topic_names)}')
    topic = spec.topics[0].name
    resolved: SignalSpec | None = spec if spec.resolved else None
    pairs, uncorrupted = [], []
    for i, path in enumerate(bags):
        with BagSource(path) as bag:
            this = bind_spec(spec, bag)
            if resolved is not None and this.channels != resolved.channels:
                raise SpecError(f'{path}: the spec resolves to {len(this.channels)} channels '
                                f'here but {len(resolved.channels)} were expected; record the '
                                'same fields')
            resolved = resolved or this
            ref = clean_topic
            if ref == 'auto':
                ref = topic + CLEAN_SUFFIX if topic + CLEAN_SUFFIX in bag.topics else None
            if ref == topic:
                raise ConfigError(f'the clean topic {ref} is the input topic itself, so every '
                                  'figure would compare the signal with itself; name the '
                                  'ground-truth topic, or use --clean-topic none with a noise '
                                  'spec')
            if ref is not None and ref not in bag.topics:
                raise BagError(f'clean topic {ref} is not in {path}; its topics are '
                               f'{", ".join(sorted(bag.topics))} (without one, give a noise '
                               'spec and the recorded signal serves as clean)')
            if ref is None and noise is None:
                raise ConfigError(f'{path} has no clean reference topic ({topic}{CLEAN_SUFFIX}); '
                                  'give a noise spec (e.g. gaussian:0.05,spikes:0.01:2) to add '
                                  'to the recorded signal, which then serves as clean')
            data = resolved.to_dict()
            if ref is not None:
                entry = dict(data['topics'][topic])
                entry.pop('type', None)
                data['topics'][ref] = entry
            both = bind_spec(SignalSpec.from_dict(data, source=resolved.source), bag)
            streams, warnings = read_streams(bag, both)
        for text in warnings:
            log.warning('%s', text)
        noisy_s = streams[topic]
        keep = span_mask(noisy_s.stamps_ns, span)
        if span is not None and noisy_s.stamps_ns.size and not keep.any():
            length = (noisy_s.stamps_ns[-1] - noisy_s.stamps_ns[0]) * 1e-9
            raise ConfigError(f'the span {"" if span[0] is None else span[0]:}:'
                              f'{"" if span[1] is None else span[1]:} s holds no {topic} message '
                              f'of {path}, which is {length:.1f} s long; give a span inside it '
                              '(seconds from its first message)')
        stamps, noisy = noisy_s.stamps_ns[keep], noisy_s.values[keep]
        if ref is not None:
            clean_s = streams[ref]
            a, b = match_stamps(stamps, clean_s.stamps_ns, resolved.period_ns)
            if a.size < 0.9 * max(stamps.size, 1):
                raise BagError(f'{path}: only {a.size} of {stamps.size} {topic} messages have a '
                               f'{ref} message within half a period; the clean topic must '
                               'carry the same header stamps')
            stamps, noisy, clean = stamps[a], noisy[a], clean_s.values[b]
            reference = f'ground truth {ref}'
        else:
            if also_uncorrupted:
                raise ConfigError(f'{path} has no clean reference topic, so without the '
                                  'corruption its input would equal its target; '
                                  '--also-uncorrupted needs ground truth (a <topic>/clean '
                                  'topic or --clean-topic)')
            clean = noisy
            reference = 'the recorded signal'
        check_rate(path, topic, stamps, resolved.rate_hz)
        if noise is None:
            pairs.append(_pair(path, stamps, noisy, clean, reference))
            continue
        corrupted = noise.apply(noisy, rate_hz=resolved.rate_hz,
                                rng=np.random.default_rng(seed + i))
        pairs.append(_pair(path, stamps, corrupted, clean, f'{reference}, input + {noise.text}'))
        if also_uncorrupted:
            uncorrupted.append(_pair(path, stamps, noisy, clean, reference))
    assert resolved is not None
    return resolved, pairs + uncorrupted


def _pair(path: Any, stamps: np.ndarray, noisy: np.ndarray, clean: np.ndarray,
          reference: str) -> Pair:
    """A Pair without the samples where input or reference is not finite (warned)."""
    finite = np.isfinite(noisy).all(axis=1) & np.isfinite(clean).all(axis=1)
    if not finite.all():
        log.warning('%s: left out %d samples with NaN or infinite values', path,
                    int((~finite).sum()))
        stamps, noisy, clean = stamps[finite], noisy[finite], clean[finite]
    return Pair(str(path), stamps, np.asarray(noisy, np.float64),
                np.asarray(clean, np.float64), reference)


def measured_rate(path: Any, topic: str, stamps: np.ndarray) -> float:
    """The topic's rate in Hz from the median stamp step (stamps that mostly repeat are
    refused when the bag is read: :func:`encdec_ros.io.align.stalled`)."""
    if stamps.size < 3:
        raise BagError(f'{path}: {topic} has only {stamps.size} usable messages; record longer')
    return 1e9 / max(float(np.median(np.diff(stamps))), 1.0)


def check_rate(path: Any, topic: str, stamps: np.ndarray, rate_hz: float) -> float:
    """Warn when the topic's measured rate is far from the spec's; return the measured one."""
    actual = measured_rate(path, topic, stamps)
    if not 0.8 <= actual / rate_hz <= 1.25:
        log.warning('%s: %s arrives at about %.4g Hz but the spec says rate_hz %g; set rate_hz '
                    "to the topic's own rate (filters and lags use it)", path, topic, actual,
                    rate_hz)
    return actual


# --------------------------------------------------------------------------- metrics


def lag(estimate: np.ndarray, clean: np.ndarray, max_lag: int) -> tuple[float, float]:
    """Delay of ``estimate`` behind ``clean`` that maximises their cross-correlation.

    Both are mean-removed; lags from ``-max_lag`` to ``max_lag`` samples are tried, and the
    peak is refined by a parabola through it and its neighbours.

    Returns:
        (lag in samples, positive when the estimate is late; correlation at the peak).
    """
    e = np.asarray(estimate, np.float64) - np.mean(estimate)
    c = np.asarray(clean, np.float64) - np.mean(clean)
    n = e.size
    max_lag = int(max(1, min(max_lag, n // 4)))
    norm = math.sqrt(float(e @ e) * float(c @ c))
    if n < 4 or norm == 0.0:
        return 0.0, 0.0
    size = 1 << int(math.ceil(math.log2(2 * n)))
    full = np.fft.irfft(np.fft.rfft(e, size) * np.conj(np.fft.rfft(c, size)), size)
    # full[d] = sum_t e[t + d] c[t] (d >= 0), full[size + d] for d < 0
    corr = np.concatenate([full[size - max_lag:], full[:max_lag + 1]]) / norm
    k = int(np.argmax(corr))
    frac = 0.0
    if 0 < k < corr.size - 1:
        y0, y1, y2 = corr[k - 1], corr[k], corr[k + 1]
        den = y0 - 2.0 * y1 + y2
        if den < 0:
            frac = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
    return float(k - max_lag + frac), float(corr[k])


def score(estimate: np.ndarray, clean: np.ndarray, noise_rmse: np.ndarray, rate_hz: float,
          max_lag: int) -> dict[str, Any]:
    """RMSE, RMSE without the mean error, normalised overall RMSE and lag, per channel."""
    err = estimate - clean
    rmse = np.sqrt(np.mean(err ** 2, axis=0))
    unbiased = np.std(err, axis=0)
    lags = [lag(estimate[:, c], clean[:, c], max_lag) for c in range(clean.shape[1])]
    lag_s = np.array([v for v, _ in lags])
    noisy = noise_rmse > 0          # a channel whose input equals its reference has no figure
    rel = np.where(noisy, rmse / np.where(noisy, noise_rmse, 1.0), np.nan)
    return {
        'rmse': rmse.tolist(),
        'rmse_without_offset': unbiased.tolist(),
        'mean_error': err.mean(axis=0).tolist(),
        'rmse_relative': _or_none(rel),
        'rmse_overall': float(np.sqrt(np.mean(rel[noisy] ** 2))) if noisy.any() else None,
        'lag_samples': [round(v, 2) for v in lag_s.tolist()],
        'lag_ms': [round(v * 1e3 / rate_hz, 2) for v in lag_s.tolist()],
        'lag_samples_mean': round(float(lag_s.mean()), 2),
        'correlation': [round(c, 5) for _, c in lags],
    }


def _or_none(values: np.ndarray) -> list[float | None]:
    """A list for JSON: None where a figure is undefined (NaN)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


def compare(methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The model against the best baseline: RMSE ratios and whether its lag is no larger.

    Channels whose noisy input equals the reference (nothing to remove) get None."""
    have = [m for m in BASELINES if m in methods]
    if 'model' not in methods or not have or methods['model']['rmse_overall'] is None:
        return {}
    best = min(have, key=lambda m: methods[m]['rmse_overall'])
    model = methods['model']
    noisy = np.asarray(methods['noisy']['rmse']) > 0

    def ratio(a: Any, b: Any) -> list[float | None]:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        ok = noisy & (b > 0)
        return _or_none(np.where(ok, a / np.where(ok, b, 1.0), np.nan))

    m_rmse = np.asarray(model['rmse'])
    per_best = np.array([min(methods[m]['rmse'][c] for m in have) for c in range(m_rmse.size)])
    per_name = [min(have, key=lambda m: methods[m]['rmse'][c]) for c in range(m_rmse.size)]
    m_lag = np.asarray(model['lag_samples'])
    b_lag = np.asarray(methods[best]['lag_samples'])
    tol = 0.25  # a quarter sample: below what the cross-correlation resolves reliably
    return {
        'best_baseline': best,
        'ratio_overall': model['rmse_overall'] / max(methods[best]['rmse_overall'], 1e-300),
        'ratio_per_channel': ratio(m_rmse, methods[best]['rmse']),
        'best_baseline_per_channel': per_name,
        'ratio_per_channel_vs_each_best': ratio(m_rmse, per_best),
        'ratio_without_offset': ratio(model['rmse_without_offset'],
                                      methods[best]['rmse_without_offset']),
        'lag_no_larger': bool(np.all(m_lag <= b_lag + tol)),
        'lag_no_larger_per_channel': (m_lag <= b_lag + tol).tolist(),
    }


# --------------------------------------------------------------------------- evaluation


def evaluate_cores(cores: dict[str, DenoiseCore], pair: Pair, *, rate_hz: float,
                   skip: int, max_lag: int | None = None,
                   channels: Sequence[str] | None = None) -> tuple[dict[str, Any],
                                                                   dict[str, np.ndarray]]:
    """Run each core over the noisy samples and score it against the clean ones.

    Returns:
        (figures per method, including 'noisy' for the untouched input; estimates per
        method, [n, C]).
    """
    if pair.noisy.shape[0] <= skip + 10:
        raise BagError(f'{pair.source}: {pair.noisy.shape[0]} samples are too few to evaluate '
                       f'after a warm-up of {skip}; use a longer bag or span')
    max_lag = max_lag if max_lag is not None else int(max(8, round(0.25 * rate_hz)))
    clean = pair.clean[skip:]
    noise_rmse = np.sqrt(np.mean((pair.noisy[skip:] - clean) ** 2, axis=0))
    if not (noise_rmse > 0).all():
        same = [channels[c] if channels else str(c) for c in np.flatnonzero(noise_rmse <= 0)]
        log.warning('%s: on channel(s) %s the input equals the reference, so there is no noise '
                    'to remove there; those channels get no ratio and stay out of the overall '
                    'figure', pair.source, ', '.join(same))
    estimates: dict[str, np.ndarray] = {'noisy': pair.noisy}
    figures = {'noisy': score(pair.noisy[skip:], clean, noise_rmse, rate_hz, max_lag)}
    for method, core in cores.items():
        core.reset()
        est = core.run(pair.noisy, pair.stamps_ns)   # restarts where the stamps jump, as live
        estimates[method] = est
        figures[method] = score(est[skip:], clean, noise_rmse, rate_hz, max_lag)
        figures[method]['describe'] = core.denoiser.describe()
    return figures, estimates


def evaluate_denoise(model_dir: str | Path, bag: str | Path, *, clean_topic: str | None = 'auto',
                     add_noise: NoiseSpec | None = None, seed: int = 0,
                     span: tuple[float | None, float | None] | None = None,
                     methods: Sequence[str] = METHODS, device: str = 'cpu',
                     out_dir: str | Path | None = None, plot: bool = True,
                     segment_s: float = 2.0) -> dict[str, Any]:
    """Evaluate a denoise model directory and the baselines on one bag; write JSON and PNG.

    Args:
        model_dir: The model directory (its spec, model and tuned baselines).
        bag: The bag to evaluate on.
        clean_topic: 'auto', a ground-truth topic, or None (the recorded signal is clean and
            ``add_noise`` makes the input).
        add_noise: Corruption added to the input.
        seed: Seed of that corruption.
        span: (start, end) seconds of the bag to use.
        methods: Which of 'model', 'butterworth', 'one_euro', 'kalman' to run.
        device: ONNX Runtime device for the model.
        out_dir: Where the report and PNG go (created); None writes nothing.
        plot: Write the PNG.
        segment_s: Length of the zoomed segment in the PNG.

    Returns:
        The report (also written as ``denoise_report.json``).
    """
    from encdec_ros.modeldir import ModelDir, check_output_dir

    if out_dir is not None:
        check_output_dir(out_dir, what='report directory')
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f'unknown method {unknown[0] if unknown else ""!r}; choose from '
                          f'{", ".join(METHODS)}')
    model = ModelDir.load(model_dir, task='denoise')
    spec = one_topic_spec(SignalSpec.from_dict(model.section('spec'), source=str(model.path)))
    window = int(model.section('denoise.window'))
    resolved, pairs = load_pairs([bag], spec, clean_topic=clean_topic, noise=add_noise,
                                 seed=seed, span=span)
    pair = pairs[0]
    measured = measured_rate(bag, spec.topics[0].name, pair.stamps_ns)
    cores = {m: build_core(m, model_dir=model.path, device=device) for m in methods}
    figures, estimates = evaluate_cores(cores, pair, rate_hz=spec.rate_hz, skip=window,
                                        channels=spec.channels)
    report: dict[str, Any] = {
        'bag': str(bag),
        'model_dir': str(model.path),
        'topic': spec.topics[0].name,
        'type': spec.topics[0].type,
        'channels': spec.channels,
        'rate_hz': spec.rate_hz,
        'measured_rate_hz': round(measured, 3),
        'reference': pair.reference,
        'span': list(span) if span else None,
        'samples': int(pair.noisy.shape[0]),
        'skipped': window,
        'methods': figures,
        'comparison': compare(figures),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plot:
            png = plot_overlay(out / PNG_NAME, pair, estimates, report, segment_s=segment_s)
            report['png'] = str(png) if png else None
        path = out / REPORT_NAME
        path.write_text(json.dumps(report, indent=2) + '\n')
        report['report'] = str(path)
    return report


# --------------------------------------------------------------------------- plot


def zoom_segment(clean: np.ndarray, length: int, skip: int) -> tuple[int, int]:
    """The ``length``-sample segment (after ``skip``) where the clean signal moves most."""
    n = clean.shape[0]
    length = max(2, min(length, n - skip))
    scale = np.std(clean[skip:], axis=0)
    z = (clean - clean.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    motion = np.concatenate([[0.0], np.sum(np.abs(np.diff(z, axis=0)), axis=1)])
    csum = np.concatenate([[0.0], np.cumsum(motion)])
    starts = np.arange(skip, n - length + 1)
    if starts.size == 0:
        return skip, n
    totals = csum[starts + length] - csum[starts]
    start = int(starts[int(np.argmax(totals))])
    return start, start + length


def plot_overlay(path: Path, pair: Pair, estimates: dict[str, np.ndarray],
                 report: dict[str, Any], *, segment_s: float = 2.0) -> Path | None:
    """Clean, noisy, model and best baseline on a zoomed segment, one panel per channel."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional on a robot
        log.warning('matplotlib is not installed; no PNG written')
        return None
    rate = float(report['rate_hz'])
    channels = report['channels']
    comparison = report.get('comparison') or {}
    best = comparison.get('best_baseline') or next(
        (m for m in BASELINES if m in estimates), None)
    a, b = zoom_segment(pair.clean, int(round(segment_s * rate)), int(report['skipped']))
    t = (pair.stamps_ns[a:b] - pair.stamps_ns[0]) * 1e-9
    shown = channels[:6]
    fig, axes = plt.subplots(len(shown), 2, figsize=(14, 1.9 * len(shown) + 0.8), sharex=True,
                             squeeze=False, gridspec_kw={'width_ratios': (3, 2)})
    methods = report['methods']
    for c, name in enumerate(shown):
        ax, err_ax = axes[c]
        ax.plot(t, pair.noisy[a:b, c], color='0.7', lw=0.7, label='noisy')
        ax.plot(t, pair.clean[a:b, c], color='k', lw=1.6, label='clean')
        err_ax.axhline(0.0, color='k', lw=0.8)
        for method, color in (('model', 'C0'), (best, 'C1')):
            if method is None or method not in estimates:
                continue
            label = f'{method} ({methods[method]["rmse"][c]:.3g})'
            ax.plot(t, estimates[method][a:b, c], color=color, lw=1.1, label=label)
            err_ax.plot(t, estimates[method][a:b, c] - pair.clean[a:b, c], color=color, lw=0.9,
                        label=label)
        ax.set_ylabel(name.rsplit('/', 1)[-1], fontsize=8)
        ax.legend(loc='upper right', fontsize=7, ncol=4)
        lo = float(np.min(pair.clean[a:b, c]))
        hi = float(np.max(pair.clean[a:b, c]))
        pad = max(hi - lo, 1e-9) * 0.6
        ax.set_ylim(lo - pad, hi + pad)
        if c == 0:
            ax.set_title('signal (RMSE over the whole bag in the legend)', fontsize=8)
            err_ax.set_title('estimate minus clean', fontsize=8)
    axes[-1, 1].set_xlabel('time since the first evaluated sample (s)')
    axes[-1, 0].set_xlabel('time since the first evaluated sample (s)')
    ratio = comparison.get('ratio_overall')
    title = f'{report["topic"]}: {report["reference"]}'
    if ratio is not None:
        title += f'\nmodel RMSE / {best} RMSE = {ratio:.3f} (overall)'
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
