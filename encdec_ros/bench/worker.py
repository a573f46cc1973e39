"""The processes ``encdec bench`` starts: a publisher, bare subscribers and the nodes.

Run as ``python -m encdec_ros.bench.worker CONFIG.json``; the config names the role. A
subscriber writes ``ready`` into its status file once its subscriptions exist, measures its
own CPU time (``getrusage``: user + system, every thread of the process) over a window that
starts after the first message and a warm-up, and writes its figures as JSON.
"""

from __future__ import annotations

import json
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

NAMESPACE = '/encdec_bench'
STAMP = struct.Struct('<iI')      # builtin_interfaces/Time right after the CDR header


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def template(msgtype: str) -> bytearray:
    """One serialised message of a type the bench publishes (plausible values)."""
    from rclpy.serialization import serialize_message

    from encdec_ros.io.player import message_class

    msg = message_class(msgtype)()
    if msgtype == 'sensor_msgs/msg/Imu':
        msg.header.frame_id = 'imu_link'
        msg.orientation.w = 1.0
        msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = 0.01, -0.02, 0.1
        msg.linear_acceleration.x, msg.linear_acceleration.z = 0.3, 9.81
    elif msgtype == 'sensor_msgs/msg/JointState':
        msg.header.frame_id = 'base_link'
        msg.name = [f'motor{i + 1}' for i in range(6)]
        msg.position = [0.0] * 6
        msg.velocity = [600.0 + 10 * i for i in range(6)]
        msg.effort = [0.5] * 6
    elif msgtype == 'geometry_msgs/msg/WrenchStamped':
        msg.header.frame_id = 'base_link'
        msg.wrench.force.z = 20.0
        msg.wrench.torque.x, msg.wrench.torque.y, msg.wrench.torque.z = 0.1, -0.1, 0.02
    return bytearray(serialize_message(msg))


# --------------------------------------------------------------------------- publisher


def publish(cfg: dict[str, Any]) -> dict[str, Any]:
    """Publish the topics at their rates (0: as fast as possible, round robin by weight),
    each message stamped with the wall-clock time of its publication."""
    import rclpy

    from encdec_ros.nodes.common import qos_profile

    node = rclpy.create_node('encdec_bench_publisher', namespace=NAMESPACE)
    qos = qos_profile('best_effort', cfg.get('depth', 50))
    topics = cfg['topics']                         # [[relative name, type, rate multiplier]]
    pubs = [node.create_publisher(_cls(t), name, qos) for name, t, _ in topics]
    raws = [template(t) for _, t, _ in topics]
    rate = float(cfg['rate'])
    seconds = float(cfg['seconds'])
    record = bool(cfg.get('record'))
    stamps: list[list[int]] = [[] for _ in topics]
    # wait until the subscriber is matched on every topic (discovery), then publish
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and any(p.get_subscription_count() < 1 for p in pubs):
        time.sleep(0.02)
    sent = 0
    start = time.monotonic()
    end = start + seconds
    pack = STAMP.pack_into
    now_ns = time.time_ns
    if rate <= 0:                                     # as fast as possible, by weight
        low = min(w for _, _, w in topics)
        order = [k for k, (_, _, w) in enumerate(topics) for _ in range(round(w / low))]
        while time.monotonic() < end:
            for k in order:
                stamp = now_ns()
                pack(raws[k], 4, stamp // 1_000_000_000, stamp % 1_000_000_000)
                pubs[k].publish(bytes(raws[k]))
            sent += len(order)
    else:
        import heapq

        periods = [1.0 / (rate * w) for _, _, w in topics]
        due = [(start, k) for k in range(len(topics))]        # a heap: many topics stay cheap
        while True:
            now = time.monotonic()
            if now >= end:
                break
            when, k = due[0]
            if when > now:
                time.sleep(when - now)
            stamp = now_ns()
            pack(raws[k], 4, stamp // 1_000_000_000, stamp % 1_000_000_000)
            pubs[k].publish(bytes(raws[k]))
            if record:
                stamps[k].append(stamp)
            heapq.heapreplace(due, (when + periods[k], k))
            sent += 1
    stop = time.monotonic()
    node.destroy_node()
    # time.monotonic() is the machine's steady clock: another process can compare with it
    out: dict[str, Any] = {'sent': sent, 'seconds': stop - start, 'started': start,
                           'stopped': stop}
    if record:
        out['stamps'] = {name: s for (name, _, _), s in zip(topics, stamps)}
    return out


def _cls(msgtype: str) -> Any:
    from encdec_ros.io.player import message_class
    return message_class(msgtype)


# --------------------------------------------------------------------------- subscribers


def _remaps(topics: list[str]) -> list[str]:
    """Command-line remappings that move absolute topics into the bench's namespace."""
    args = ['--ros-args']
    for topic in topics:
        args += ['-r', f'{topic}:={NAMESPACE}{topic}']
    return args


def _node_parameters(node: str, model: dict[str, Any]) -> list[Any]:
    """The node's parameters as its launch file sets them: the params file, then the
    launch arguments (model directory and the like)."""
    import yaml
    from rclpy.parameter import Parameter

    from encdec_ros.bench import repo_path

    values: dict[str, Any] = {}
    params = yaml.safe_load(repo_path(f'config/{node}.yaml').read_text())
    for entry in params.values():
        values.update(entry.get('ros__parameters', {}))
    values.update(model)
    return [Parameter(name, value=value) for name, value in values.items()]


def _diagnostics_inputs(node: Any) -> Callable[[], int]:
    """Messages a node handled, as its diagnostics count them (every node marks each input)."""
    from encdec_ros.nodes.common import DiagnosticsReporter

    reporters = [v for v in vars(node).values() if isinstance(v, DiagnosticsReporter)]
    if hasattr(node, 'streams'):                # one reporter per stream
        reporters = [s.diagnostics for s in node.streams]
        return lambda: sum(int(r._inputs) for r in reporters)
    if not reporters:
        raise RuntimeError(f'{node.get_name()} has no DiagnosticsReporter to count its inputs')
    reporter = reporters[0]
    return lambda: int(reporter._inputs)


def _after_publish(node: Any, suffix: str, note: Callable[[Any], None]) -> None:
    """Call ``note(msg)`` right after the node publishes on its topic ending in ``suffix``."""
    _wrap(next(p for p in node.publishers if p.topic_name.endswith(suffix)), note)


def _wrap(pub: Any, note: Callable[[Any], None]) -> None:
    """Call ``note(msg)`` right after ``pub`` publishes."""
    original = pub.publish

    def publish(msg: Any) -> None:
        original(msg)
        note(msg)
    pub.publish = publish


def _stamp_ns(msg: Any) -> int:
    """The header stamp of a message, or of its serialised bytes (what a raw path publishes)."""
    if isinstance(msg, (bytes, bytearray)):
        sec, nsec = STAMP.unpack_from(msg, 4)
    else:
        sec, nsec = msg.header.stamp.sec, msg.header.stamp.nanosec
    return sec * 1_000_000_000 + nsec


def make_subscriber(role: str, cfg: dict[str, Any]) -> tuple[list[Any], Callable[[], int],
                                                              dict[str, Any]]:
    """The nodes of a subscriber role, a counter of handled messages, and a dict the node
    fills with latency samples."""
    import rclpy

    from encdec_ros.nodes.common import qos_profile

    extra: dict[str, Any] = {}
    if role in ('typed', 'raw'):
        node = rclpy.create_node('encdec_bench_subscriber', namespace=NAMESPACE)
        qos = qos_profile('best_effort', 50)
        count = [0]

        def callback(_msg: Any) -> None:
            count[0] += 1
        subs = [node.create_subscription(_cls(t), name, callback, qos, raw=role == 'raw')
                for name, t, _ in cfg['topics']]
        extra['subs'] = subs
        return [node], lambda: count[0], extra
    models = cfg['models']
    if role == 'anomaly_detector':
        from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode
        streams = cfg.get('streams') or []
        given = {'model_dir': models['anomaly']}
        if streams:
            given['streams'] = streams
        node = AnomalyDetectorNode(
            record=bool(cfg.get('latency')), namespace=NAMESPACE,
            cli_args=_remaps(([] if streams else ['/imu', '/motors', '/wrench_cmd'])
                             + ['/diagnostics']),
            parameter_overrides=_node_parameters(role, given))
        if streams and cfg.get('latency'):
            per: list[list[int]] = [[] for _ in streams]
            extra['stream_decision_ns'] = per
            extra['stream_counts'] = lambda: _stream_counts(node)
            for stream, times in zip(node.streams, per):
                _wrap(stream.pub_score, lambda _msg, t=times: t.append(time.time_ns()))
        elif cfg.get('latency'):
            times: list[int] = []
            extra['decision_ns'] = times
            _after_publish(node, '/score', lambda _msg: times.append(time.time_ns()))
    elif role == 'denoiser':
        from encdec_ros.nodes.denoiser import DenoiserNode
        node = DenoiserNode(
            namespace=NAMESPACE, cli_args=_remaps(['/diagnostics']),
            parameter_overrides=_node_parameters(role, {'model_dir': models['denoise']}))
        if cfg.get('latency'):
            lat: list[int] = []
            extra['latency_ns'] = lat
            _after_publish(node, '/denoised', lambda msg: lat.append(
                time.time_ns() - _stamp_ns(msg)))
    elif role == 'control_allocator':
        from encdec_ros.nodes.control_allocator import ControlAllocatorNode
        node = ControlAllocatorNode(
            namespace=NAMESPACE, parameter_overrides=_node_parameters(role, {
                'model_dir': models['allocator'], 'effectiveness': models['effectiveness']}))
    else:
        raise ValueError(f'unknown role {role!r}')
    return [node], _diagnostics_inputs(node), extra


def subscribe(role: str, cfg: dict[str, Any], status: Path) -> dict[str, Any]:
    """Subscribe, wait for the first message and a warm-up, then measure."""
    from encdec_ros.nodes.common import make_executor

    nodes, handled, extra = make_subscriber(role, cfg)
    executor = make_executor()
    for node in nodes:
        executor.add_node(node)
    status.write_text('ready')
    spin = executor.spin_once
    deadline = time.monotonic() + 30.0
    while handled() == 0:
        spin(timeout_sec=0.05)
        if time.monotonic() > deadline:
            return {'error': 'no message arrived within 30 s'}
    warm_end = time.monotonic() + float(cfg['warmup'])
    while time.monotonic() < warm_end:
        spin(timeout_sec=0.05)
    rss = []
    for values in extra.values():
        if isinstance(values, list):
            for inner in values if values and isinstance(values[0], list) else [values]:
                inner.clear()
    counts0 = extra['stream_counts']() if 'stream_counts' in extra else None
    cpu0, n0, t0 = _cpu(), handled(), time.monotonic()
    end = t0 + float(cfg['seconds'])
    next_rss = t0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        spin(timeout_sec=min(0.05, end - now))
        if cfg.get('rss') and now >= next_rss:
            rss.append((now - t0, _rss_mb()))
            next_rss += 1.0
    cpu1, n1, t1 = _cpu(), handled(), time.monotonic()
    counts1 = extra['stream_counts']() if 'stream_counts' in extra else None
    out: dict[str, Any] = {'cpu_s': cpu1 - cpu0, 'messages': n1 - n0, 'wall_s': t1 - t0,
                           'window_ns': [time.time_ns() - int((t1 - t0) * 1e9),
                                         time.time_ns()]}
    if rss:
        out['rss'] = rss
    if 'decision_ns' in extra:
        node = nodes[0]
        ticks = [d[0] for d in node.decisions]
        times = extra['decision_ns']
        out['decisions'] = list(zip(ticks[-len(times):] if times else [], times))
    if 'latency_ns' in extra:
        out['latency_ns'] = extra['latency_ns']
    if 'stream_decision_ns' in extra:
        out['streams'] = _stream_figures(nodes[0], extra['stream_decision_ns'])
        out['streams']['received'], out['streams']['taken_in'] = \
            (b - a for a, b in zip(counts0, counts1))
    for node in nodes:
        node.destroy_node()
    return out


def _stream_figures(node: Any, times: list[list[int]]) -> dict[str, Any]:
    """Per stream of a node serving several: its (tick, decided) pairs in the window, what its
    subscriptions received and what its inputs took in, and the batching of inference."""
    decisions = []
    for stream, decided in zip(node.streams, times):
        ticks = [d[0] for d in stream.decisions]
        decisions.append(list(zip(ticks[-len(decided):] if decided else [], decided)))
    return {'decisions': decisions, 'inference': dict(node.inference),
            'latency_ms': [node.latency_ms(k) for k in range(len(node.streams))]}


def _stream_counts(node: Any) -> tuple[int, int]:
    """Messages the subscriptions of all streams received (taken in, or waiting in the
    streams' buffers), and those taken in and decoded (handed to the time model, or counted
    as short / unstamped / undecodable)."""
    received = taken = 0
    for stream in node.streams:
        received += sum(i.counts['received'] for i in stream.monitor.inputs) + \
            sum(len(b) for b in stream.bufs)
        c = stream.counts
        taken += c['messages'] + c['short'] + c['unstamped'] + c['undecodable']
    return received, taken


def _rss_mb() -> float:
    with open('/proc/self/status', encoding='ascii') as fh:
        for line in fh:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def main(argv: list[str] | None = None) -> int:
    """Run one role from a JSON config file; write the result next to it."""
    import rclpy

    path = Path((argv if argv is not None else sys.argv[1:])[0])
    cfg = json.loads(path.read_text())
    status = path.with_suffix('.status')
    rclpy.init()
    try:
        if cfg['role'] == 'publish':
            status.write_text('ready')
            result = publish(cfg)
        else:
            result = subscribe(cfg['role'], cfg, status)
    except Exception as err:  # noqa: BLE001 - reported to the bench, which says it once
        result = {'error': f'{type(err).__name__}: {err}'}
    finally:
        rclpy.try_shutdown()
    path.with_suffix('.result').write_text(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
