"""Benchmark the denoiser (figures only, no assertions).

1. The synthetic robot's IMU: fault-free training flights (``--flights``, seeds 11, 12, ...)
   and a test flight of another seed (2); /imu against its ground truth /imu/clean. Trains
   each architecture, evaluates it and the tuned baselines on the test flight with
   ``encdec eval denoise``'s code, and prints per-channel RMSE, model / best-baseline ratios
   (target <= 0.7) and lags (target: no larger than that baseline's). Then the bound: the
   best causal linear filter (128 taps of every channel), fitted on the test flight itself
   with hindsight, with and without that flight's turn-on bias; and the spread of the clean
   signal's mean across flights beside the bias (why no estimator can see the bias).
   Then the same with glitches added on top of the simulated noise (spikes and dropped
   samples, as a flaky sensor bus gives), models trained with that corruption, beside a
   hand-made median + Butterworth; and MLPs trained without the glitches, with them and on
   both (``--also-uncorrupted``), each evaluated with and without them.
2. The node's per-message latency over DDS: the node runs in its own process (as
   ``ros2 run`` would start it); this process publishes /imu messages at 200 Hz and 1 kHz
   and times each one until its /imu/denoised comes back (publish, DDS, callback, denoise,
   publish, DDS). The node's own in-callback latency comes from its diagnostics.
3. A real bag: the Husky's /imu/data (30 Hz) in robot_localization/test1.bag (ROS 1), the
   recorded signal as the clean reference and noise added on top: trained on the first
   270 s, evaluated on the rest, with Gaussian noise alone and with a mix of Gaussian noise,
   spikes and dropped samples.

Usage::

    nice -n 10 python benchmarks/bench_denoise.py [--workdir /tmp/bench_denoise]
        [--archs mlp gru] [--epochs 30] [--flights 8] [--train-s 300] [--test-s 120]
        [--skip-accuracy] [--skip-glitches] [--skip-latency] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from encdec_ros.denoise.evaluate import evaluate_denoise, load_pairs  # noqa: E402
from encdec_ros.denoise.filters import BASELINES  # noqa: E402
from encdec_ros.denoise.noise import NoiseSpec  # noqa: E402
from encdec_ros.io.spec import SignalSpec  # noqa: E402
from encdec_ros.modeldir import ModelDir  # noqa: E402

SIM_SPEC = ROOT / 'config' / 'sim_imu_denoise_spec.yaml'
REAL_BAG = ROOT.parent / 'shared' / 'data' / 'bags' / 'robot_localization' / 'test1.bag'
REAL_SPEC = {
    'name': 'husky_imu', 'rate_hz': 30, 'window': 16, 'stride': 1,
    'topics': {'/imu/data': {'type': 'sensor_msgs/msg/Imu', 'fields': [
        'linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z',
        'angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z']}}}
REAL_NOISES = {
    'gaussian': 'relative,gaussian:0.3',
    'mix': 'relative,gaussian:0.3,spikes:0.02:3,drop:0.05:2',
}
REAL_SPLIT_S = 270.0


def short(name: str) -> str:
    return name.rsplit('/', 1)[-1]


# --------------------------------------------------------------------------- accuracy


TRAIN_SEED0 = 11
TEST_SEED = 2
SIM_GLITCHES = 'relative,spikes:0.01:3,drop:0.02:2'


def sim_bags(workdir: Path, flights: int, train_s: float, test_s: float
             ) -> tuple[list[Path], Path]:
    """``flights`` fault-free training flights (seeds 11, 12, ...) and one test flight."""
    from training.sim import SimConfig, simulate, write_bag

    plan = [(f'sim_train_{TRAIN_SEED0 + i}_{train_s:g}s', TRAIN_SEED0 + i, train_s)
            for i in range(flights)]
    plan.append((f'sim_test_{TEST_SEED}_{test_s:g}s', TEST_SEED, test_s))
    out = []
    for name, seed, duration in plan:
        path = workdir / name
        if not (path / 'metadata.yaml').exists():
            write_bag(simulate(SimConfig(duration_s=duration, seed=seed)), path)
        out.append(path)
    return out[:-1], out[-1]


def train(bags: list[Path], spec: Any, out: Path, arch: str, epochs: int, **kw: Any) -> Path:
    from training.denoise import DenoiseOptions, train_denoiser

    key = repr((sorted(str(b) for b in bags), arch, epochs, sorted(kw.items())))
    if (out / 'model.yaml').exists() and (out / 'bench_key.txt').exists() and (
            (out / 'bench_key.txt').read_text() == key):
        return out                          # trained by an earlier run with the same inputs
    opts = DenoiseOptions(arch=arch, epochs=epochs, threads=2, **kw)
    t0 = time.perf_counter()
    train_denoiser(bags, spec, out, options=opts, force=True, show_progress=False)
    print(f'  trained {arch} in {time.perf_counter() - t0:.0f} s -> {out}')
    (out / 'bench_key.txt').write_text(key)
    return out


def print_report(report: dict[str, Any], title: str) -> dict[str, Any]:
    methods = report['methods']
    comp = report['comparison']
    best = comp['best_baseline']
    print(f'\n{title}: {report["samples"]} messages, reference {report["reference"]}')
    head = f'  {"channel":<24}{"noisy":>10}{"model":>10}' + ''.join(
        f'{m:>13}' for m in BASELINES) + f'{"ratio":>8}{"ratio*":>8}  lag ms model / {best}'
    print(head)
    for c, name in enumerate(report['channels']):
        row = f'  {short(name):<24}{methods["noisy"]["rmse"][c]:>10.4g}'
        row += f'{methods["model"]["rmse"][c]:>10.4g}'
        row += ''.join(f'{methods[m]["rmse"][c]:>13.4g}' for m in BASELINES)
        row += f'{comp["ratio_per_channel"][c]:>8.3f}{comp["ratio_without_offset"][c]:>8.3f}'
        row += f'  {methods["model"]["lag_ms"][c]:>6.1f} / {methods[best]["lag_ms"][c]:<6.1f}'
        print(row)
    print(f'  overall (RMS of RMSE / noisy RMSE): model {methods["model"]["rmse_overall"]:.3f}, '
          + ', '.join(f'{m} {methods[m]["rmse_overall"]:.3f}' for m in BASELINES))
    print(f'  model / best baseline ({best}): overall {comp["ratio_overall"]:.3f} '
          f'(target <= 0.7); per channel vs each channel\'s best: '
          + ', '.join(f'{r:.3f}' for r in comp['ratio_per_channel_vs_each_best']))
    print(f'  model lag no larger than {best}\'s on every channel: '
          f'{"yes" if comp["lag_no_larger"] else "no"}')
    print('  (ratio* = the same without each method\'s mean error, i.e. the sensor offset)')
    return {'ratio_overall': comp['ratio_overall'], 'best_baseline': best,
            'ratio_per_channel': comp['ratio_per_channel'],
            'ratio_without_offset': comp['ratio_without_offset'],
            'lag_no_larger': comp['lag_no_larger'],
            'rmse_overall': {m: f['rmse_overall'] for m, f in methods.items()}}


def bounds(test_bag: Path, train_bags: list[Path], spec: SignalSpec, report: dict[str, Any],
           taps: int = 128, lookahead: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    """What any causal linear filter could reach on the test flight, and why no better.

    - ``linear_hindsight``: the least-squares causal FIR over ``taps`` past samples of every
      channel plus a constant, fitted on the test flight itself: it knows that flight's
      clean signal and its turn-on bias with hindsight, so no causal linear filter of that
      length can do better there. As a ratio to the best baseline, per channel and overall.
    - ``linear_no_bias``: the same filter without the hindsight bias (its error plus the
      flight's mean noise, which a filter of unit DC gain passes on).
    - ``lookahead``: the same without the bias, but also given the next K samples (a
      fixed-lag smoother answering K samples late): what the causality requirement costs.
    - ``clean_mean_spread`` and ``bias``: per channel, the spread across the training flights
      of the clean signal's mean and the test flight's turn-on bias: when the first is much
      larger, no estimator can tell the bias from the signal on this sensor alone.
    """
    _, pairs = load_pairs([test_bag], spec)
    noisy, clean = pairs[0].noisy, pairs[0].clean
    skip = int(report['skipped'])
    bias = np.mean(noisy - clean, axis=0)
    best = report['comparison']['best_baseline']
    base = np.asarray(report['methods'][best]['rmse'])
    noisy_rmse = np.asarray(report['methods']['noisy']['rmse'])

    def fit(future: int) -> np.ndarray:
        """RMSE per channel of the least-squares FIR over taps past + ``future`` next samples."""
        win = np.lib.stride_tricks.sliding_window_view(noisy, taps + future, axis=0)
        a = np.hstack([win.reshape(len(win), -1), np.ones((len(win), 1))])
        y = clean[taps - 1:taps - 1 + len(win)]
        err = (a @ np.linalg.lstsq(a, y, rcond=None)[0] - y)[max(skip - (taps - 1), 0):]
        return np.sqrt(np.mean(err ** 2, axis=0))

    def overall(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean((x / noisy_rmse) ** 2)))

    rmse = fit(0)
    rmse_nb = np.sqrt(rmse ** 2 + bias ** 2)
    ahead = {}
    for k in lookahead:
        r = np.sqrt(fit(k) ** 2 + bias ** 2)
        ahead[str(k)] = {'ratio': (r / base).tolist(), 'overall': overall(r) / overall(base)}
    _, train_pairs = load_pairs(train_bags, spec)
    means = np.stack([p.clean.mean(axis=0) for p in train_pairs])
    return {'taps': taps, 'rate_hz': spec.rate_hz,
            'linear_hindsight': (rmse / base).tolist(),
            'linear_hindsight_overall': overall(rmse) / overall(base),
            'linear_no_bias': (rmse_nb / base).tolist(),
            'linear_no_bias_overall': overall(rmse_nb) / overall(base),
            'lookahead': ahead,
            'bias': bias.tolist(),
            'clean_mean_spread': means.std(axis=0).tolist() if len(means) > 1 else None}


def print_bounds(b: dict[str, Any], channels: list[str]) -> None:
    print(f'  bound: causal linear FIR, {b["taps"]} taps x all channels + constant, fitted on '
          'the test flight itself (hindsight), / best baseline:')
    def row(label: str, ratios: list[float], overall: float) -> None:
        print(f'    {label:<44}' + ', '.join(f'{r:.3f}' for r in ratios)
              + f'; overall {overall:.3f}')

    row("with the flight's turn-on bias known:", b['linear_hindsight'],
        b['linear_hindsight_overall'])
    row('without it:', b['linear_no_bias'], b['linear_no_bias_overall'])
    for k, a in b.get('lookahead', {}).items():
        row(f'without it, answering {k} later ({1e3 * int(k) / b["rate_hz"]:g} ms):',
            a['ratio'], a['overall'])
    if b['clean_mean_spread'] is not None:
        print('  turn-on bias of the test flight vs the spread of the clean mean across the '
              'training flights (per channel):')
        print('    ' + ', '.join(f'{short(ch)} {abs(x):.3g} / {s:.3g}' for ch, x, s in
                              zip(channels, b['bias'], b['clean_mean_spread'])))


def median_reference(test_bag: Path, spec: SignalSpec, noise: NoiseSpec, seed: int,
                     report: dict[str, Any]) -> dict[str, Any]:
    """What an engineer would put in front of a low-pass against glitches: a causal running
    median (3, 5 or 7 samples) then a Butterworth, both tuned per channel on the test flight
    itself (hindsight, so the most this pair could do there), as a ratio to the model."""
    from encdec_ros.denoise.filters import tune_butterworth

    _, pairs = load_pairs([test_bag], spec, noise=noise, seed=seed)
    noisy, clean = pairs[0].noisy, pairs[0].clean
    skip = int(report['skipped'])
    best = np.full(noisy.shape[1], np.inf)
    best_k = np.zeros(noisy.shape[1], int)
    for k in (3, 5, 7):
        pad = np.concatenate([np.repeat(noisy[:1], k - 1, axis=0), noisy])
        med = np.median(np.lib.stride_tricks.sliding_window_view(pad, k, axis=0), axis=-1)
        rmse = np.asarray(tune_butterworth(med, clean, rate_hz=spec.rate_hz, skip=skip)['rmse'])
        best_k = np.where(rmse < best, k, best_k)
        best = np.minimum(best, rmse)
    model = np.asarray(report['methods']['model']['rmse'])
    noisy_rmse = np.asarray(report['methods']['noisy']['rmse'])
    overall = float(np.sqrt(np.mean((best / noisy_rmse) ** 2)))
    return {'median_taps': best_k.tolist(), 'rmse': best.tolist(),
            'model_ratio': (model / best).tolist(),
            'model_ratio_overall': report['methods']['model']['rmse_overall'] / overall}


def cross_table(train_bags: list[Path], spec: SignalSpec, test_bag: Path, noise: NoiseSpec,
                plain_model: Path, glitch_model: Path, epochs: int, mixed_out: Path
                ) -> dict[str, dict[str, float]]:
    """MLPs trained without glitches, with them, and on both (``also_uncorrupted``), each
    evaluated on the test flight without and with them: the model's overall figure."""
    mixed = train(train_bags, spec, mixed_out, 'mlp', epochs, noise=noise,
                  also_uncorrupted=True)
    table: dict[str, dict[str, float]] = {}
    print('\n  MLP overall figure (RMS over channels of RMSE / noisy RMSE), trained on '
          '(rows) vs evaluated on (columns):')
    print(f'    {"":<34}{"plain":>8}{"glitches":>10}')
    for label, model in (('plain flights', plain_model), ('glitches', glitch_model),
                         ('both (--also-uncorrupted)', mixed)):
        row = {}
        for column, add in (('plain', None), ('glitches', noise)):
            report = evaluate_denoise(model, test_bag, add_noise=add, seed=100,
                                      methods=('model',), plot=False)
            row[column] = report['methods']['model']['rmse_overall']
        table[label] = row
        print(f'    {label:<34}{row["plain"]:>8.3f}{row["glitches"]:>10.3f}')
    return table


def plot_bounds(path: Path, b: dict[str, Any], reports: dict[str, dict[str, Any]],
                channels: list[str]) -> Path:
    """Per channel: each model's and the linear bound's RMSE / best baseline, target line."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    bars = [(f'{arch.upper()} model', r['ratio_per_channel'], r['ratio_overall'])
            for arch, r in reports.items()]
    bars.append(('best linear filter, bias unknown (hindsight fit)', b['linear_no_bias'],
                 b['linear_no_bias_overall']))
    bars.append(('best linear filter, bias known (hindsight fit)', b['linear_hindsight'],
                 b['linear_hindsight_overall']))
    if b.get('lookahead'):                  # the price of answering now: a late one
        k = max(b['lookahead'], key=int)
        bars.append((f'best linear filter, bias unknown, answering {k} samples '
                     f'({1e3 * int(k) / b["rate_hz"]:g} ms) late', b['lookahead'][k]['ratio'],
                     b['lookahead'][k]['overall']))
    x = np.arange(len(channels) + 1)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for i, (label, per_channel, overall) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, list(per_channel) + [overall], width,
               label=label)
    ax.axhline(1.0, color='k', lw=0.8)
    ax.axhline(0.7, color='r', ls='--', lw=1.0, label='target 0.7')
    ax.set_xticks(x, [short(c).replace('linear_acceleration', 'acc').replace(
        'angular_velocity', 'gyro') for c in channels] + ['overall'])
    ax.set_ylabel('RMSE / best causal baseline')
    ax.set_ylim(0.35, 1.25)
    ax.set_title('Synthetic IMU, test flight: the models against the best linear filters, '
                 'fitted on that flight itself')
    ax.legend(fontsize=7.5, ncol=3, loc='upper center')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- latency


def node_latency(model_dir: Path, test_bag: Path, method: str, rate_hz: float,
                 count: int) -> dict[str, float]:
    """Round-trip latency of the node in its own process, timed from this process."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Imu

    from encdec_ros.io.bag import BagSource

    env = dict(os.environ, ROS_DOMAIN_ID=str(os.getpid() % 90 + 5),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONPATH=f'{ROOT}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    cmd = [sys.executable, '-m', 'encdec_ros.nodes.denoiser', '--ros-args',
           '-p', f'model_dir:={model_dir}', '-p', f'method:={method}', '-p', 'device:=cpu',
           '-p', 'reliability:=reliable', '-p', 'qos_depth:=100',
           '-p', 'diagnostics_period_s:=0.5']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    with BagSource(test_bag) as src:
        raws = [bytes(r) for _, _, r in src.raw_messages(['/imu'])][:count]
    msgs = [deserialize_message(r, Imu) for r in raws]
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node('bench_denoise_client', context=ctx)
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                     history=HistoryPolicy.KEEP_LAST)
    pub = node.create_publisher(Imu, '/imu', qos)
    sent: dict[tuple[int, int], float] = {}
    rtt: list[float] = []
    diag: dict[str, str] = {}

    def on_out(msg: Imu) -> None:
        t = time.perf_counter()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        if key in sent:
            rtt.append(t - sent.pop(key))

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.endswith(': denoiser'):
                diag.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(Imu, '/imu/denoised', on_out, qos)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.01)
                                               for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (pub.get_subscription_count() < 1 or
                                               node.count_publishers('/imu/denoised') < 1):
            if proc.poll() is not None:
                raise RuntimeError(f'the node exited: {proc.stderr.read()}')
            time.sleep(0.05)
        time.sleep(1.0)
        period = 1.0 / rate_hz
        start = time.perf_counter()
        for i, msg in enumerate(msgs):
            wait = start + i * period - time.perf_counter()
            if wait > 0:
                time.sleep(wait)       # sleeping frees the GIL for the receiving thread
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()
            pub.publish(msg)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(rtt) < len(msgs):
            time.sleep(0.05)
        time.sleep(1.2)                                   # one more diagnostics period
    finally:
        stop.set()
        spinner.join()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        proc.terminate()
        proc.wait(timeout=10)
    ms = np.asarray(rtt) * 1e3
    return {'sent': len(msgs), 'received': len(rtt),
            'rtt_p50': float(np.percentile(ms, 50)) if ms.size else float('nan'),
            'rtt_p99': float(np.percentile(ms, 99)) if ms.size else float('nan'),
            'rtt_max': float(ms.max()) if ms.size else float('nan'),
            'node_mean': float(diag.get('latency mean (ms)', 'nan')),
            'node_p99': float(diag.get('latency p99 (ms)', 'nan')),
            'provider': diag.get('provider', '?')}


def core_latency(model_dir: Path, test_bag: Path, method: str, count: int) -> dict[str, float]:
    """In-process cost of DenoiseCore.process on rclpy messages (no DDS)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Imu

    from encdec_ros.denoise.filters import build_core
    from encdec_ros.io.bag import BagSource

    with BagSource(test_bag) as src:
        raws = [bytes(r) for _, _, r in src.raw_messages(['/imu'])][:count]
    msgs = [deserialize_message(r, Imu) for r in raws]
    core = build_core(method, model_dir=model_dir, device='cpu')
    times = np.empty(len(msgs))
    for i, msg in enumerate(msgs):
        t0 = time.perf_counter()
        core.process(msg)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {'mean': float(ms.mean()), 'p50': float(np.percentile(ms, 50)),
            'p99': float(np.percentile(ms, 99))}


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', default='/tmp/bench_denoise')
    parser.add_argument('--archs', nargs='+', default=['mlp', 'gru'])
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--flights', type=int, default=8,
                        help='fault-free training flights (seeds 11, 12, ...)')
    parser.add_argument('--train-s', type=float, default=300.0)
    parser.add_argument('--test-s', type=float, default=120.0)
    parser.add_argument('--latency-messages', type=int, default=4000)
    parser.add_argument('--skip-accuracy', action='store_true',
                        help='train (or reuse) the sim models but do not evaluate them')
    parser.add_argument('--skip-latency', action='store_true')
    parser.add_argument('--skip-glitches', action='store_true')
    parser.add_argument('--skip-real', action='store_true')
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}

    print(f'== synthetic IMU: train {args.flights} x {args.train_s:g} s (seeds '
          f'{TRAIN_SEED0}-{TRAIN_SEED0 + args.flights - 1}), test {args.test_s:g} s '
          f'(seed {TEST_SEED}), fault-free')
    train_bags, test_bag = sim_bags(workdir, args.flights, args.train_s, args.test_s)
    spec = SignalSpec.load(SIM_SPEC)
    models = {}
    for arch in args.archs:
        models[arch] = train(train_bags, spec, workdir / f'sim_{arch}', arch, args.epochs)
        if args.skip_accuracy:
            continue
        report = evaluate_denoise(models[arch], test_bag, out_dir=workdir / f'eval_sim_{arch}')
        summary[f'sim_{arch}'] = print_report(report, f'sim /imu, {arch}')
        print(f'  plot: {report.get("png")}')
        summary['sim_channels'] = report['channels']
        if 'sim_bounds' not in summary:
            summary['sim_bounds'] = bounds(test_bag, train_bags, spec, report)
        print_bounds(summary['sim_bounds'], report['channels'])

    sim_reports = {a: summary[f'sim_{a}'] for a in args.archs if f'sim_{a}' in summary}
    if sim_reports and 'sim_bounds' in summary:
        png = plot_bounds(workdir / 'sim_bound.png', summary['sim_bounds'], sim_reports,
                          summary['sim_channels'])
        print(f'  bound plot: {png}')

    if not args.skip_glitches and not args.skip_accuracy:
        noise = NoiseSpec.parse(SIM_GLITCHES)
        print(f'\n== synthetic IMU with glitches added on top: {SIM_GLITCHES}')
        for arch in args.archs:
            out = train(train_bags, spec, workdir / f'sim_glitch_{arch}', arch, args.epochs,
                        noise=noise)
            report = evaluate_denoise(out, test_bag, add_noise=noise, seed=100,
                                      out_dir=workdir / f'eval_sim_glitch_{arch}')
            summary[f'sim_glitch_{arch}'] = print_report(report,
                                                         f'sim /imu + glitches, {arch}')
            print(f'  plot: {report.get("png")}')
            med = median_reference(test_bag, spec, noise, 100, report)
            summary[f'sim_glitch_{arch}']['median_butterworth'] = med
            print(f'  reference: causal median ({"/".join(map(str, med["median_taps"]))} taps) '
                  f'then Butterworth, tuned on the test flight itself: model / it '
                  + ', '.join(f'{r:.3f}' for r in med['model_ratio'])
                  + f'; overall {med["model_ratio_overall"]:.3f}')

        if 'mlp' in models:
            summary['sim_cross'] = cross_table(train_bags, spec, test_bag, noise, models['mlp'],
                                               workdir / 'sim_glitch_mlp', args.epochs,
                                               workdir / 'sim_mixed_mlp')

    if not args.skip_latency:
        arch = args.archs[0]
        print(f'\n== node latency over DDS (node in its own process, {arch} model dir)')
        for method in ('model', 'kalman'):
            core = core_latency(models[arch], test_bag, method, 2000)
            print(f'  {method:<7} DenoiseCore.process alone: mean {core["mean"]:.3f} ms, '
                  f'p99 {core["p99"]:.3f} ms')
            for rate in (200.0, 1000.0):
                lat = node_latency(models[arch], test_bag, method, rate,
                                   args.latency_messages)
                summary[f'latency_{method}_{rate:g}hz'] = lat
                print(f'  {method:<7} at {rate:>5g} Hz: {lat["received"]}/{lat["sent"]} back; '
                      f'round trip p50 {lat["rtt_p50"]:.3f} ms, p99 {lat["rtt_p99"]:.3f} ms, '
                      f'max {lat["rtt_max"]:.2f} ms; in the node\'s callback mean '
                      f'{lat["node_mean"]:.3f} ms, p99 {lat["node_p99"]:.3f} ms '
                      f'({lat["provider"]})')

    if not args.skip_real:
        if not REAL_BAG.exists():
            print(f'\n{REAL_BAG} is absent; skipping the real bag')
        else:
            real_spec = SignalSpec.from_dict(REAL_SPEC, source='husky_imu')
            for label, text in REAL_NOISES.items():
                noise = NoiseSpec.parse(text)
                print(f'\n== real bag: Husky /imu/data (30 Hz), noise {text}; train :'
                      f'{REAL_SPLIT_S:g} s, evaluate {REAL_SPLIT_S:g} s:')
                for arch in args.archs:
                    out = train([REAL_BAG], real_spec, workdir / f'real_{label}_{arch}', arch,
                                args.epochs, noise=noise, clean_topic=None,
                                train_span=(None, REAL_SPLIT_S))
                    report = evaluate_denoise(out, REAL_BAG, clean_topic=None, add_noise=noise,
                                              seed=100, span=(REAL_SPLIT_S, None),
                                              out_dir=workdir / f'eval_real_{label}_{arch}')
                    summary[f'real_{label}_{arch}'] = print_report(
                        report, f'husky /imu/data, {label} noise, {arch}')
                    print(f'  plot: {report.get("png")}')

    path = workdir / 'summary.json'
    if path.exists():                       # keep the figures of parts skipped this time
        summary = {**json.loads(path.read_text()), **summary}
    path.write_text(json.dumps(summary, indent=2) + '\n')
    print(f'\nsummary: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
