"""The ROS sections of ``encdec bench``: subscriber CPU, latency and the soak.

Each measurement starts a subscriber process (a bare rclpy subscriber or a node, built as its
launch file builds it) and a publisher process (:mod:`~encdec_ros.bench.worker`), in a ROS
domain of their own with discovery on this machine, under the namespace ``/encdec_bench``:
a robot's own topics are never touched. The subscriber measures itself; rounds interleave
the variants so that a change of the machine's load hits them alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from encdec_ros.bench import repo_path

IMU = ('imu', 'sensor_msgs/msg/Imu')
MOTORS = ('motors', 'sensor_msgs/msg/JointState')
WRENCH = ('wrench_cmd', 'geometry_msgs/msg/WrenchStamped')
# the anomaly model's topics, at the simulated flight's rates relative to the IMU's
ANOMALY_TOPICS = [[*IMU, 1.0], [*MOTORS, 0.5], [*WRENCH, 0.5]]
VARIANTS = (  # (name, role, topics with their rates relative to the IMU's)
    ('bare rclpy, typed', 'typed', ANOMALY_TOPICS),
    ('bare rclpy, raw', 'raw', ANOMALY_TOPICS),
    ('anomaly_detector', 'anomaly_detector', ANOMALY_TOPICS),
    ('denoiser', 'denoiser', [[*IMU, 1.0]]),
    ('control_allocator', 'control_allocator', [[*WRENCH, 0.5]]),
)
WARMUP_S = 1.0
START_TIMEOUT_S = 90.0     # a node loading its model on a loaded machine


def models() -> dict[str, str]:
    """The launch files' default models (what a user gets from ``ros2 launch``)."""
    return {'anomaly': str(repo_path('models/anomaly_sim_lstm')),
            'denoise': str(repo_path('models/denoise_sim_imu')),
            'allocator': str(repo_path('models/allocator_sim_hexa')),
            'effectiveness': str(repo_path('config/sim_hexa.yaml'))}


class Runner:
    """Starts worker processes in a private ROS domain and collects their results."""

    def __init__(self, options: Any, tmp: Path) -> None:
        self.tmp = tmp
        self.log = options.log
        domain = options.domain_id
        if domain is None:
            taken = os.environ.get('ROS_DOMAIN_ID', '0')
            domain = 150 + os.getpid() % 80
            if str(domain) == taken:
                domain += 1
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(domain),
                        ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                        PYTHONPATH=os.pathsep.join(
                            [str(Path(__file__).resolve().parents[2]),
                             os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep))
        self._n = 0

    def start(self, cfg: dict[str, Any]) -> tuple[subprocess.Popen, Path]:
        self._n += 1
        path = self.tmp / f'w{self._n}_{cfg["role"]}.json'
        path.write_text(json.dumps(cfg))
        log = open(path.with_suffix('.log'), 'w', encoding='utf-8')   # noqa: SIM115
        proc = subprocess.Popen([sys.executable, '-m', 'encdec_ros.bench.worker', str(path)],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return proc, path

    def wait(self, proc: subprocess.Popen, path: Path, suffix: str, timeout: float
             ) -> dict[str, Any] | None:
        target = path.with_suffix(suffix)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if target.exists():
                if suffix == '.status':
                    return {}
                time.sleep(0.05)
                return json.loads(target.read_text())
            if proc.poll() is not None and not target.exists():
                break
            time.sleep(0.05)
        return None

    def tail(self, path: Path) -> str:
        try:
            lines = path.with_suffix('.log').read_text().strip().splitlines()
        except OSError:
            return ''
        return lines[-1] if lines else ''

    def pair(self, sub: dict[str, Any], pub: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run a subscriber and a publisher; return both results (or raise with the reason)."""
        sproc, spath = self.start(sub)
        pproc = None
        try:
            if self.wait(sproc, spath, '.status', START_TIMEOUT_S) is None:
                raise RuntimeError(f'{sub["role"]} did not start: {self.tail(spath)}')
            pproc, ppath = self.start(pub)
            result = self.wait(sproc, spath, '.result',
                               START_TIMEOUT_S + sub['warmup'] + sub['seconds'])
            if result is None or 'error' in result:
                why = result['error'] if result else self.tail(spath)
                raise RuntimeError(f'{sub["role"]}: {why}')
            published = self.wait(pproc, ppath, '.result', pub['seconds'] + 30.0) or {}
            return result, published
        finally:
            for proc in (sproc, pproc):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5.0)
                    except subprocess.TimeoutExpired:
                        proc.kill()


def _sub(role: str, topics: list, seconds: float, **extra: Any) -> dict[str, Any]:
    return {'role': role, 'topics': topics, 'models': models(), 'warmup': WARMUP_S,
            'seconds': seconds, **extra}


def _pub(topics: list, rate: float, seconds: float, **extra: Any) -> dict[str, Any]:
    # publish past the subscriber's window: first message, warm-up, window, margin
    return {'role': 'publish', 'topics': topics, 'rate': rate,
            'seconds': WARMUP_S + seconds + 3.0, **extra}


def run_subscribers(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """Section (a): CPU per message of each subscriber, the publisher at a fixed rate that
    every subscriber keeps up with (``sub_rate``: the IMU's rate, JointState and
    WrenchStamped at half of it), or as fast as it can (``sub_rate`` 0: then a subscriber
    that falls behind also pays DDS for the messages it drops)."""
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in VARIANTS}
    with tempfile.TemporaryDirectory(prefix='encdec_bench_') as tmp:
        runner = Runner(options, Path(tmp))
        for k in range(options.rounds):
            for name, role, topics in VARIANTS:
                options.log(f'subscriber: {name} (round {k + 1})')
                try:
                    got, _ = runner.pair(_sub(role, topics, options.seconds),
                                         _pub(topics, options.sub_rate, options.seconds))
                except RuntimeError as err:
                    notes.append(str(err))
                    continue
                if got['messages']:
                    figures[name].append((got['cpu_s'] / got['messages'] * 1e6,
                                          got['messages'] / got['wall_s']))
    rows = []
    typed = None
    for name, _, topics in VARIANTS:
        runs = figures[name]
        if not runs:
            continue
        cpu = float(np.median([c for c, _ in runs]))
        row = {'name': name, 'cpu_us_per_msg': cpu,
               'msgs_per_s': float(np.median([r for _, r in runs])),
               'rounds_cpu_us': [c for c, _ in runs],
               'topics': [t[0] for t in topics]}
        if name == 'bare rclpy, typed':
            typed = cpu
        rows.append(row)
    for row in rows:
        row['vs_typed'] = row['cpu_us_per_msg'] / typed if typed else None
    rate = f'Imu at {options.sub_rate:g} Hz, JointState and WrenchStamped at ' \
        f'{options.sub_rate / 2:g} Hz' if options.sub_rate > 0 else 'as fast as possible'
    notes.append(f'publisher: {rate}; the bare subscribers and anomaly_detector take all '
                 'three, denoiser Imu, control_allocator WrenchStamped')
    return rows


def decision_latency(decisions: list, stamps: dict[str, list[int]]) -> np.ndarray:
    """Publish -> decision in ns: a tick is decided once every topic has a message stamped
    after it, so the message that completes it is the latest of the topics' first messages
    after the tick (each stamped with its publication time)."""
    arrays = [np.asarray(s, dtype=np.int64) for s in stamps.values()]
    out = []
    for tick, decided in decisions:
        firsts = []
        for arr in arrays:
            i = int(np.searchsorted(arr, tick, side='right'))
            if i >= arr.size:
                break
            firsts.append(int(arr[i]))
        else:
            out.append(decided - max(firsts))
    return np.asarray(out, dtype=np.int64)


def run_latency(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """Section (b): publish -> decision (anomaly_detector), publish -> output (denoiser)."""
    pooled: dict[tuple[str, float], list[np.ndarray]] = {}
    seconds = options.latency_seconds
    with tempfile.TemporaryDirectory(prefix='encdec_bench_') as tmp:
        runner = Runner(options, Path(tmp))
        for rate in options.rates:
            for k in range(options.rounds):
                options.log(f'latency: anomaly_detector at {rate:g} Hz (round {k + 1})')
                try:
                    got, pub = runner.pair(
                        _sub('anomaly_detector', ANOMALY_TOPICS, seconds, latency=True),
                        _pub(ANOMALY_TOPICS, rate, seconds, record=True))
                    lat = decision_latency(got.get('decisions', []), pub.get('stamps', {}))
                    pooled.setdefault(('anomaly_detector (decision)', rate), []).append(lat)
                except RuntimeError as err:
                    notes.append(str(err))
                options.log(f'latency: denoiser at {rate:g} Hz (round {k + 1})')
                try:
                    got, _ = runner.pair(_sub('denoiser', [[*IMU, 1.0]], seconds, latency=True),
                                         _pub([[*IMU, 1.0]], rate, seconds))
                    pooled.setdefault(('denoiser (output)', rate), []).append(
                        np.asarray(got.get('latency_ns', []), dtype=np.int64))
                except RuntimeError as err:
                    notes.append(str(err))
    rows = []
    for (name, rate), parts in pooled.items():
        ms = np.concatenate(parts) * 1e-6 if parts else np.zeros(0)
        if ms.size == 0:
            notes.append(f'{name} at {rate:g} Hz: no samples')
            continue
        p50, p99 = np.percentile(ms, (50, 99))
        rows.append({'name': name, 'rate_hz': rate, 'p50_ms': float(p50), 'p99_ms': float(p99),
                     'max_ms': float(ms.max()), 'count': int(ms.size)})
    notes.append('input rates: Imu at the rate given, JointState and WrenchStamped at half '
                 'of it (the simulated flight\'s proportions); stamps are publication times')
    return rows


def run_soak(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The soak: a bare typed subscriber and anomaly_detector, one after the other, at 1 kHz
    for ``soak_seconds`` each, their RSS sampled each second."""
    seconds = options.soak_seconds
    rows = []
    with tempfile.TemporaryDirectory(prefix='encdec_bench_') as tmp:
        runner = Runner(options, Path(tmp))
        for name, role in (('bare rclpy, typed', 'typed'),
                           ('anomaly_detector', 'anomaly_detector')):
            options.log(f'soak: {name} at 1000 Hz for {seconds:g} s')
            try:
                got, _ = runner.pair(_sub(role, ANOMALY_TOPICS, seconds, rss=True),
                                     _pub(ANOMALY_TOPICS, 1000.0, seconds))
            except RuntimeError as err:
                notes.append(str(err))
                continue
            samples = np.asarray(got.get('rss', []), dtype=np.float64)
            if samples.shape[0] < 4:
                notes.append(f'soak: too few RSS samples of {name}')
                continue
            warm = min(10.0, seconds / 4)
            late = samples[samples[:, 0] >= warm]
            slope = float(np.polyfit(late[:, 0], late[:, 1], 1)[0]) * 60.0
            rows.append({'name': name, 'rate_hz': 1000.0, 'seconds': seconds, 'warmup_s': warm,
                         'rss_start_mb': float(late[0, 1]), 'rss_end_mb': float(late[-1, 1]),
                         'slope_mb_per_min': slope, 'hour_growth_mb': slope * 60.0,
                         'messages': got['messages'],
                         'cpu_us_per_msg': got['cpu_s'] / max(got['messages'], 1) * 1e6,
                         'samples': samples.tolist()})
    notes.append('RSS growth over one hour is extrapolated from the slope after the warm-up; '
                 'run --soak-seconds 3600 to measure it')
    return rows


def run_streams(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """One anomaly_detector serving N streams (``streams`` parameter), each with the model's
    three topics at ``stream_rate`` (Imu; JointState and WrenchStamped at half of it), one
    publisher process for all: what the node receives of what was sent, what it takes in of
    what it received, publish -> decision per stream (p50 / p99 pooled), the node's CPU and
    how many windows went to one inference call."""
    rows = []
    rate = options.stream_rate
    seconds = options.latency_seconds
    with tempfile.TemporaryDirectory(prefix='encdec_bench_') as tmp:
        runner = Runner(options, Path(tmp))
        for n in options.streams:
            names = [f's{k}' for k in range(n)]
            topics = [[f'{s}/{t}', msgtype, w] for s in names for t, msgtype, w in ANOMALY_TOPICS]
            options.log(f'streams: anomaly_detector serving {n} x {rate:g} Hz')
            try:
                got, pub = runner.pair(
                    _sub('anomaly_detector', topics, seconds, latency=True, streams=names),
                    _pub(topics, rate, seconds, record=True))
            except RuntimeError as err:
                notes.append(str(err))
                continue
            st = got['streams']
            lat = []
            stamps = pub.get('stamps', {})
            for s, decided in zip(names, st['decisions']):
                own = {t: v for t, v in stamps.items() if t.startswith(f'{s}/')}
                lat.append(decision_latency(decided, own))
            ms = np.concatenate(lat) * 1e-6 if lat else np.zeros(0)
            sent_rate = pub.get('sent', 0) / max(pub.get('seconds', 1.0), 1e-9)
            want = n * rate * sum(w for _, _, w in ANOMALY_TOPICS)
            received_rate = st['received'] / got['wall_s']
            inf = st['inference']
            rows.append({
                'streams': n, 'rate_hz': rate, 'wanted_msgs_per_s': want,
                'sent_msgs_per_s': sent_rate, 'received_msgs_per_s': received_rate,
                'received_share': received_rate / sent_rate if sent_rate else None,
                'lost_in_node': st['received'] - st['taken_in'],
                'node_cpu_share': got['cpu_s'] / got['wall_s'],
                'cpu_us_per_msg': got['cpu_s'] / max(st['received'], 1) * 1e6,
                'p50_ms': float(np.percentile(ms, 50)) if ms.size else None,
                'p99_ms': float(np.percentile(ms, 99)) if ms.size else None,
                'decisions': int(ms.size),
                'windows_per_call': inf['windows'] / max(inf['calls'], 1),
                'largest_call': inf['largest']})
    notes.append('sent: the publisher process\'s own rate (one Python process; below '
                 '"wanted" it is the bottleneck); received: what the node\'s subscriptions '
                 'got; lost in node: received but not taken in when the window closed '
                 '(in its buffers); node CPU: share of one core (the node is one thread)')
    return rows
