"""``encdec bench``: what the runtime costs, measured side by side with its floor in one run.

Sections (each a module here):

- ``subscriber``: CPU per message (getrusage of the subscribing process, user + system) and
  messages per second of a bare typed rclpy subscriber, a bare ``raw=True`` subscriber and
  each node with its shipped model, all on the EventsExecutor, the publisher in another
  process (:mod:`~encdec_ros.bench.live`).
- ``latency``: publish -> decision (anomaly_detector) and publish -> output (denoiser), p50
  and p99, at fixed input rates (:mod:`~encdec_ros.bench.live`).
- ``ingest``: bag ingest (``read_bag``) against rosbags' own reader and per-message
  deserialise, with a check that the arrays are identical (:mod:`~encdec_ros.bench.ingest`).
- ``inference``: each model kind at batch 1 / 32 / 256 on each usable ONNX Runtime provider
  against torch eager when torch is installed (:mod:`~encdec_ros.bench.inference`).
- ``soak``: RSS of the anomaly node over a bounded run at 1 kHz (off unless asked for).
- ``streams``: one anomaly node serving N streams at a rate each: received / sent, taken in,
  publish -> decision, node CPU, windows per inference call (off unless asked for).

Figures are ratios against a floor measured in the same run, rounds interleaved; a benchmark
prints figures, it does not fail on them. The machine's load is printed with them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SECTIONS = ('subscriber', 'latency', 'ingest', 'inference', 'soak', 'streams')
DEFAULT_SECTIONS = ('subscriber', 'latency', 'ingest', 'inference')


@dataclass
class BenchOptions:
    """What to measure and for how long."""

    sections: tuple[str, ...] = DEFAULT_SECTIONS
    rounds: int = 2                      # interleaved rounds per comparison
    seconds: float = 4.0                 # per subscriber measurement
    sub_rate: float = 1000.0             # IMU rate of the subscriber section (0: flat out)
    latency_seconds: float = 5.0         # per latency measurement
    rates: tuple[float, ...] = (200.0, 1000.0)
    messages: int = 50_000               # per synthetic bag (ingest)
    bags: tuple[str, ...] = ()           # extra bags for ingest (with spec)
    spec: str = ''                       # spec for the extra bags
    batches: tuple[int, ...] = (1, 32, 256)
    soak_seconds: float = 120.0
    streams: tuple[int, ...] = (1, 8, 32)  # streams served by one anomaly node
    stream_rate: float = 1000.0           # Imu rate of each stream
    domain_id: int | None = None
    log: Callable[[str], None] = field(default=lambda text: None)


def repo_path(relative: str) -> Path:
    """A shipped file (models/..., config/...): beside the source, else in the installed
    share directory."""
    here = Path(__file__).resolve().parents[2] / relative
    if here.exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('encdec_ros')) / relative
    except (ImportError, LookupError, ValueError):
        return here


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    load = os.getloadavg() if hasattr(os, 'getloadavg') else (0.0, 0.0, 0.0)
    return {'cpus': os.cpu_count(), 'load_1min': round(load[0], 2), 'python':
            platform.python_version(), 'machine': platform.machine(),
            'time': time.strftime('%Y-%m-%dT%H:%M:%S')}


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the chosen sections; return everything measured as plain data."""
    results: dict[str, Any] = {'machine': machine(), 'options': {
        'sections': list(options.sections), 'rounds': options.rounds,
        'seconds': options.seconds, 'sub_rate': options.sub_rate,
        'latency_seconds': options.latency_seconds,
        'rates': list(options.rates), 'messages': options.messages,
        'batches': list(options.batches), 'streams': list(options.streams),
        'stream_rate': options.stream_rate}}
    for section in options.sections:
        options.log(f'== {section}')
        notes: list[str] = []
        if section == 'ingest':
            from encdec_ros.bench.ingest import run_ingest
            results['ingest'] = run_ingest(options, notes)
        elif section == 'inference':
            from encdec_ros.bench.inference import run_inference
            results['inference'] = run_inference(options, notes)
        elif section == 'subscriber':
            from encdec_ros.bench.live import run_subscribers
            results['subscriber'] = run_subscribers(options, notes)
        elif section == 'latency':
            from encdec_ros.bench.live import run_latency
            results['latency'] = run_latency(options, notes)
        elif section == 'soak':
            from encdec_ros.bench.live import run_soak
            results['soak'] = run_soak(options, notes)
        elif section == 'streams':
            from encdec_ros.bench.live import run_streams
            results['streams'] = run_streams(options, notes)
        if notes:
            results[f'{section}_notes'] = notes
    results['machine_after'] = machine()
    return results


def to_json(results: dict[str, Any]) -> str:
    """The results as indented JSON."""
    return json.dumps(results, indent=2, default=float)


def tables(results: dict[str, Any]) -> str:
    """The results as plain-text tables, one per section."""
    out = []
    m = results['machine']
    out.append(f'machine: {m["cpus"]} CPUs, load {m["load_1min"]} at start '
               f'({results.get("machine_after", m)["load_1min"]} at end), Python {m["python"]}')
    rows = results.get('subscriber')
    if rows:
        out.append('\n(a) subscriber CPU per message (getrusage of the subscriber process, '
                   'EventsExecutor, publisher in another process; median of rounds)')
        out.append(_table(['subscriber', 'CPU us/msg', 'msgs/s', 'x typed', 'rounds'], [
            [r['name'], _f(r['cpu_us_per_msg']), _f(r['msgs_per_s'], 0),
             _f(r.get('vs_typed'), 2), ' '.join(_f(v) for v in r['rounds_cpu_us'])]
            for r in rows]))
    rows = results.get('latency')
    if rows:
        out.append('\n(b) latency, publish -> decision (anomaly) / output (denoiser)')
        out.append(_table(['node', 'input Hz', 'p50 ms', 'p99 ms', 'max ms', 'samples'], [
            [r['name'], _f(r['rate_hz'], 0), _f(r['p50_ms'], 3), _f(r['p99_ms'], 3),
             _f(r['max_ms'], 3), str(r['count'])] for r in rows]))
    rows = results.get('ingest')
    if rows:
        out.append('\n(c) bag ingest: read_bag vs rosbags (Reader + deserialize_cdr + field '
                   'extraction per message); messages/s of CPU time, median of rounds')
        out.append(_table(['bag', 'messages', 'rosbags msg/s', 'read_bag msg/s', 'x rosbags',
                           'identical'], [
            [r['name'], str(r['messages']), _f(r['floor_msgs_per_s'], 0),
             _f(r['ours_msgs_per_s'], 0), _f(r['ratio'], 1), 'yes' if r['identical'] else 'NO']
            for r in rows]))
        parts = ('open', 'bind', 'read', 'decode', 'order_align')
        split = [r for r in rows if 'us_per_msg' in r]
        if split:
            out.append('where read_bag\'s CPU goes, us per message:')
            out.append(_table(['bag', *parts], [
                [r['name'], *(_f(r['us_per_msg'][p], 2) for p in parts)] for r in split]))
    rows = results.get('inference')
    if rows:
        out.append('\n(d) inference per call (median), ONNX Runtime (1 thread, as the nodes) vs '
                   'torch eager (1 thread)')
        out.append(_table(['model', 'provider', 'batch', 'ORT us', 'torch us', 'x torch'], [
            [r['kind'], r['provider'], str(r['batch']), _f(r['ort_us']), _f(r.get('torch_us')),
             _f(r.get('ratio'), 1)] for r in rows]))
    rows = results.get('soak')
    if rows:
        out.append('\nsoak: RSS of the subscriber process at 1 kHz (Imu; JointState and '
                   'WrenchStamped at 500 Hz)')
        out.append(_table(['subscriber', 'seconds', 'RSS start MB', 'RSS end MB', 'MB/min',
                           'MB/hour (extrapolated)'], [
            [r['name'], _f(r['seconds'], 0), _f(r['rss_start_mb']), _f(r['rss_end_mb']),
             _f(r['slope_mb_per_min'], 3), _f(r['hour_growth_mb'])] for r in rows]))
    rows = results.get('streams')
    if rows:
        out.append('\nstreams: one anomaly_detector serving N streams (Imu at the rate, '
                   'JointState and WrenchStamped at half of it, per stream)')
        out.append(_table(['streams', 'Hz', 'wanted msg/s', 'sent msg/s', 'received msg/s',
                           'received/sent', 'lost in node', 'node CPU (cores)', 'CPU us/msg',
                           'p50 ms', 'p99 ms', 'windows/call'], [
            [str(r['streams']), _f(r['rate_hz'], 0), _f(r['wanted_msgs_per_s'], 0),
             _f(r['sent_msgs_per_s'], 0), _f(r['received_msgs_per_s'], 0),
             _f(r['received_share'], 3), str(r['lost_in_node']), _f(r['node_cpu_share'], 2),
             _f(r['cpu_us_per_msg']), _f(r['p50_ms'], 2), _f(r['p99_ms'], 2),
             _f(r['windows_per_call'], 1)] for r in rows]))
    for section in SECTIONS:
        notes = results.get(f'{section}_notes')
        for note in notes or ():
            out.append(f'note ({section}): {note}')
    return '\n'.join(out)


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return '-'
    if isinstance(value, float) and value != value:
        return 'nan'
    return f'{value:,.{digits}f}'


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = ['  '.join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths)))]
    for row in rows:
        lines.append('  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    return '\n'.join(lines)
