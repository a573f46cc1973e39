"""Benchmark the denoiser (figures only, no assertions).

1. The synthetic robot's IMU: a fault-free training flight (seed 1) and a test flight of
   another seed (2); /imu against its ground truth /imu/clean. Trains each architecture,
   evaluates it and the tuned baselines on the test flight with ``encdec eval denoise``'s
   code, and prints per-channel RMSE, model / best-baseline ratios (target <= 0.7) and lags
   (target: no larger than that baseline's). Also prints two reference points: the same
   ratios without each method's mean error (the turn-on bias no causal filter can see), and
   an oracle: the best causal linear FIR filter of the same window, fitted by least squares
   on the test flight itself (an upper bound for every linear filter of that length).
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
        [--archs mlp gru] [--epochs 30] [--train-s 300] [--test-s 120]
        [--skip-accuracy] [--skip-latency] [--skip-real]
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

from encdec_ros.denoise import BASELINES  # noqa: E402
from encdec_ros.denoise_eval import evaluate_denoise, load_pairs  # noqa: E402
from encdec_ros.modeldir import ModelDir  # noqa: E402
from encdec_ros.noise import NoiseSpec  # noqa: E402
from encdec_ros.spec import SignalSpec  # noqa: E402

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


def sim_bags(workdir: Path, train_s: float, test_s: float) -> tuple[Path, Path]:
    from training.sim import SimConfig, simulate, write_bag

    out = []
    for name, seed, duration in (('sim_train', 1, train_s), ('sim_test', 2, test_s)):
        path = workdir / f'{name}_{seed}_{duration:g}s'
        if not (path / 'metadata.yaml').exists():
            write_bag(simulate(SimConfig(duration_s=duration, seed=seed)), path)
        out.append(path)
    return out[0], out[1]


def train(bags: list[Path], spec: Any, out: Path, arch: str, epochs: int, **kw: Any) -> Path:
    from training.denoise import DenoiseOptions, train_denoiser

    if (out / 'model.yaml').exists() and ModelDir.load(out).section(
            'training.options.epochs', None) == epochs:
        return out
    opts = DenoiseOptions(arch=arch, epochs=epochs, threads=2, **kw)
    t0 = time.perf_counter()
    train_denoiser(bags, spec, out, options=opts, force=True, show_progress=False)
    print(f'  trained {arch} in {time.perf_counter() - t0:.0f} s -> {out}')
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


def oracle_linear(test_bag: Path, spec: SignalSpec, window: int, report: dict[str, Any]
                  ) -> list[float]:
    """The least-squares causal FIR fitted on the test data, against the best baseline.

    Both without their mean error (the oracle would otherwise learn the test flight's
    turn-on bias with hindsight): compare with ratio*.
    """
    _, pairs = load_pairs([test_bag], spec)
    noisy, clean = pairs[0].noisy, pairs[0].clean
    c = noisy.shape[1]
    win = np.lib.stride_tricks.sliding_window_view(noisy, (window, c))[:, 0]
    rel = (win - win[:, -1:, :]).reshape(len(win), -1)
    a = np.hstack([rel, np.ones((len(rel), 1))])
    y = (noisy - clean)[window - 1:]
    w = np.linalg.lstsq(a, y, rcond=None)[0]
    est = noisy[window - 1:] - a @ w
    skip = int(report['skipped']) - (window - 1)
    err = (est - clean[window - 1:])[max(skip, 0):]
    best = report['comparison']['best_baseline']
    return (np.std(err, axis=0) /
            np.asarray(report['methods'][best]['rmse_without_offset'])).tolist()


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

    from encdec_ros.bag import BagSource

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

    from encdec_ros.bag import BagSource
    from encdec_ros.denoise import build_core

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
    parser.add_argument('--train-s', type=float, default=300.0)
    parser.add_argument('--test-s', type=float, default=120.0)
    parser.add_argument('--latency-messages', type=int, default=4000)
    parser.add_argument('--skip-accuracy', action='store_true',
                        help='train (or reuse) the sim models but do not evaluate them')
    parser.add_argument('--skip-latency', action='store_true')
    parser.add_argument('--skip-real', action='store_true')
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}

    print(f'== synthetic IMU: train {args.train_s:g} s (seed 1), test {args.test_s:g} s '
          '(seed 2), fault-free')
    train_bag, test_bag = sim_bags(workdir, args.train_s, args.test_s)
    spec = SignalSpec.load(SIM_SPEC)
    models = {}
    for arch in args.archs:
        models[arch] = train([train_bag], spec, workdir / f'sim_{arch}', arch, args.epochs)
        if args.skip_accuracy:
            continue
        report = evaluate_denoise(models[arch], test_bag, out_dir=workdir / f'eval_sim_{arch}')
        summary[f'sim_{arch}'] = print_report(report, f'sim /imu, {arch}')
        print(f'  plot: {report.get("png")}')
        window = int(report['skipped'])
        oracle = oracle_linear(test_bag, spec.with_window(window=window), window, report)
        summary[f'sim_{arch}']['oracle_linear_fir'] = oracle
        print('  oracle causal linear FIR (fitted on the test flight), as ratio*: '
              + ', '.join(f'{r:.3f}' for r in oracle))

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
