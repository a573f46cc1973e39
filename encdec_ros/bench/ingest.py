"""Bag ingest: ``read_bag`` against rosbags' own reader and per-message deserialise.

The floor is what reading a bag with rosbags costs: its ``AnyReader`` (reader and type
definitions from the bag), ``deserialize`` per message, the spec's fields picked from each
message object with :func:`~encdec_ros.io.fields.compile_path` (as the runtime did before its
batch decoder), and the arrays built. Ours is :func:`~encdec_ros.io.bag.read_bag` end to end:
open, bind the spec, read and decode in batches, align. Both run on the same bags in the same
process, rounds interleaved; the arrays must be identical bit for bit.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encdec_ros.io.spec import SignalSpec

T0 = 1_700_000_000_000_000_000
IMU_SPEC = {'rate_hz': 200, 'window': 8, 'topics': {'/imu': {'type': 'sensor_msgs/msg/Imu',
            'fields': ['angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z',
                       'linear_acceleration.x', 'linear_acceleration.y',
                       'linear_acceleration.z']}}}
JOINT_SPEC = {'rate_hz': 200, 'window': 8, 'topics': {'/joints': {
    'type': 'sensor_msgs/msg/JointState', 'fields': ['velocity[*]', 'effort[*]']}}}


def write_bags(root: Path, messages: int, log: Any) -> list[tuple[str, Path, dict]]:
    """Synthetic bags (Imu at 1 kHz, JointState of 6 joints) in both rosbag2 storages."""
    from encdec_ros.io.bagwrite import BagWriter

    rng = np.random.default_rng(0)
    out = []
    for storage in ('sqlite3', 'mcap'):
        for kind, spec in (('Imu', IMU_SPEC), ('JointState', JOINT_SPEC)):
            path = root / f'{kind.lower()}_{storage}'
            log(f'writing {messages} {kind} messages ({storage})')
            topic = next(iter(spec['topics']))
            with BagWriter(path, storage=storage) as bag:
                msgtype = spec['topics'][topic]['type']
                bag.add_topic(topic, msgtype)
                values = rng.normal(size=(messages, 6))
                for k in range(messages):
                    stamp = T0 + k * 1_000_000
                    bag.write(topic, stamp + 20_000, _message(bag, kind, stamp, values[k]))
            out.append((f'{kind} {storage}', path, spec))
    return out


def _message(bag: Any, kind: str, stamp: int, row: np.ndarray) -> Any:
    if kind == 'Imu':
        vec = bag.typestore.types['geometry_msgs/msg/Vector3']
        quat = bag.typestore.types['geometry_msgs/msg/Quaternion']
        return bag.new('sensor_msgs/msg/Imu', header=bag.header(stamp, 'imu_link'),
                       orientation=quat(x=0.0, y=0.0, z=0.0, w=1.0),
                       orientation_covariance=np.zeros(9),
                       angular_velocity=vec(x=row[0], y=row[1], z=row[2]),
                       angular_velocity_covariance=np.zeros(9),
                       linear_acceleration=vec(x=row[3], y=row[4], z=row[5]),
                       linear_acceleration_covariance=np.zeros(9))
    return bag.new('sensor_msgs/msg/JointState', header=bag.header(stamp, 'base_link'),
                   name=[f'joint_{i}' for i in range(6)], position=row * 0.1, velocity=row,
                   effort=row * 2.0)


def rosbags_floor(path: Path, spec: SignalSpec) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stamps and values per topic, the rosbags way: one message object per message."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from encdec_ros.io.fields import ShortMessageError, compile_path

    out = {}
    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        for topic in spec.topics:
            fns = [compile_path(f.path) for f in topic.fields]
            header = topic.stamp == 'header'
            conns = [c for c in reader.connections if c.topic == topic.name]
            stamps, rows = [], []
            for conn, log_ns, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    row: list[float] = []
                    for fn in fns:
                        row.extend(fn(msg))
                except ShortMessageError:
                    continue
                if header:
                    st = msg.header.stamp
                    log_ns = st.sec * 1_000_000_000 + st.nanosec
                stamps.append(log_ns)
                rows.append(row)
            out[topic.name] = (np.asarray(stamps, dtype=np.int64),
                               np.asarray(rows, dtype=np.float64).reshape(
                                   len(rows), len(topic.channel_names())))
    return out


def _timed(fn: Any) -> tuple[Any, float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - c0, time.perf_counter() - w0


def compare(name: str, path: Path, spec: SignalSpec, rounds: int) -> dict[str, Any]:
    """Time both readers on one bag; check that they give the same arrays."""
    from encdec_ros.io.align import clean
    from encdec_ros.io.bag import BagSource, bind_spec, read_bag

    with BagSource(path) as bag:
        resolved = bind_spec(spec, bag)
        count = sum(bag.topics[t].count for t in resolved.topic_names)
    floor_cpu, ours_cpu, floor_wall, ours_wall = [], [], [], []
    floor = rec = None
    for k in range(rounds):
        order = ('floor', 'ours') if k % 2 == 0 else ('ours', 'floor')
        for which in order:
            if which == 'floor':
                floor, cpu, wall = _timed(lambda: rosbags_floor(path, resolved))
                floor_cpu.append(cpu)
                floor_wall.append(wall)
            else:
                rec, cpu, wall = _timed(lambda: read_bag(path, resolved, show_progress=False))
                ours_cpu.append(cpu)
                ours_wall.append(wall)
    identical = True
    for topic, (stamps, values) in floor.items():
        want = clean(stamps, values, resolved.period_ns,
                     max_hold_ns=resolved.topic(topic).max_hold_ns)
        got = rec.streams[topic]
        identical &= bool(np.array_equal(got.stamps_ns, want.stamps_ns) and
                          got.values.shape == want.values.shape and
                          np.array_equal(got.values.view(np.uint64),
                                         want.values.view(np.uint64)))
    f_cpu, o_cpu = float(np.median(floor_cpu)), float(np.median(ours_cpu))
    return {'name': name, 'path': str(path), 'messages': count,
            'floor_msgs_per_s': count / f_cpu, 'ours_msgs_per_s': count / o_cpu,
            'ratio': f_cpu / o_cpu, 'identical': identical,
            'floor_cpu_s': floor_cpu, 'ours_cpu_s': ours_cpu,
            'floor_wall_s': floor_wall, 'ours_wall_s': ours_wall,
            'wall_ratio': float(np.median(floor_wall) / np.median(ours_wall))}


def breakdown(path: Path, spec: SignalSpec) -> dict[str, float]:
    """Where read_bag's CPU time goes, in µs per message: opening the bag (rosbags parses
    metadata and indexes), binding the spec, reading the bytes from the storage, decoding,
    and putting the streams in order and aligning them."""
    from encdec_ros.io.align import align
    from encdec_ros.io.bag import BagSource, _stream, bind_spec
    from encdec_ros.progress import Counter

    clock = time.process_time
    t0 = clock()
    with BagSource(path) as bag:
        t1 = clock()
        resolved = bind_spec(spec, bag)
        decoders = {t.name: bag.batch_decoder(t) for t in resolved.topics}
        t2 = clock()
        chunks = list(bag.raw_chunks(list(decoders)))
        t3 = clock()
        parts: dict[str, list] = {t: [] for t in decoders}
        for index, topic, chunk in chunks:
            parts[topic].append((index, chunk, decoders[topic].decode(chunk.batch)))
        t4 = clock()
        with Counter(enable=False):
            streams = [_stream(bag, t, decoders[t.name].width, parts[t.name],
                               resolved.period_ns)[0] for t in resolved.topics]
        align(streams, resolved.period_ns)
        t5 = clock()
        count = sum(len(c.batch) for _, _, c in chunks)
    scale = 1e6 / max(count, 1)
    return {'open': (t1 - t0) * scale, 'bind': (t2 - t1) * scale, 'read': (t3 - t2) * scale,
            'decode': (t4 - t3) * scale, 'order_align': (t5 - t4) * scale}


def run_ingest(options: Any, notes: list[str]) -> list[dict[str, Any]]:
    """The ingest section: synthetic Imu and JointState bags in both storages, then any bags
    the user gave (with their spec)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix='encdec_bench_') as tmp:
        for name, path, spec in write_bags(Path(tmp), options.messages, options.log):
            options.log(f'ingest: {name}')
            row = compare(name, path, SignalSpec.from_dict(spec), options.rounds)
            row['us_per_msg'] = breakdown(path, SignalSpec.from_dict(spec))
            rows.append(row)
    notes.append('rosbags floor: AnyReader + deserialize + compile_path per message; '
                 'read_bag: open, bind, batch decode, align; CPU time of this process')
    extra: Sequence[str] = options.bags
    if extra:
        spec = SignalSpec.load(options.spec)
        for bag in extra:
            options.log(f'ingest: {bag}')
            row = compare(Path(bag).name, Path(bag), spec, options.rounds)
            row['us_per_msg'] = breakdown(Path(bag), spec)
            rows.append(row)
    return rows
