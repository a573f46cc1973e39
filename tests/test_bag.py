"""The bag reader on bags we write ourselves (both storages, custom types) and on real bags."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_paths import shared

from encdec_ros.errors import BagError, SpecError
from encdec_ros.io.bag import BagSource, read_bag, read_bags
from encdec_ros.io.bagwrite import BagWriter
from encdec_ros.io.spec import SignalSpec

T0 = 1_700_000_000_000_000_000
THERMAL = """\
std_msgs/Header header
float32 temperature
uint16[4] fan_rpm
string label
"""

SPEC = {
    'rate_hz': 100, 'window': 10, 'stride': 5,
    'topics': {
        '/imu': {'fields': ['angular_velocity.z', 'linear_acceleration.x']},
        '/motors': {'fields': ['velocity[*]']},
        '/thermal': {'fields': ['temperature', 'fan_rpm[1:3]']},
        '/cmd': {'fields': ['data[0]']},
    },
}


def write_bag(path: Path, *, storage: str, seconds: float = 2.0) -> dict:
    """A bag with Imu (200 Hz), JointState (100 Hz), a custom type (50 Hz), an array (20 Hz)."""
    from rosbags.typesys import get_types_from_msg

    rng = np.random.default_rng(1)
    truth: dict = {}
    with BagWriter(path, storage=storage) as bag:
        bag.typestore.register(get_types_from_msg(THERMAL, 'my_robot_msgs/msg/Thermal'))
        for topic, msgtype in (('/imu', 'sensor_msgs/msg/Imu'),
                               ('/motors', 'sensor_msgs/msg/JointState'),
                               ('/thermal', 'my_robot_msgs/msg/Thermal'),
                               ('/cmd', 'std_msgs/msg/Float64MultiArray')):
            bag.add_topic(topic, msgtype)
        vec = bag.typestore.types['geometry_msgs/msg/Vector3']
        quat = bag.typestore.types['geometry_msgs/msg/Quaternion']
        for topic, rate, width in (('/imu', 200, 2), ('/motors', 100, 3), ('/thermal', 50, 3),
                                   ('/cmd', 20, 1)):
            n = int(seconds * rate)
            stamps = T0 + np.arange(n) * (1_000_000_000 // rate) + rng.integers(0, 999_999, n)
            values = rng.normal(size=(n, width))
            if topic == '/thermal':
                values[:, 1:] = rng.integers(0, 5000, size=(n, 2))
            truth[topic] = (stamps, values)
            for stamp, row in zip(stamps, values):
                stamp = int(stamp)
                if topic == '/imu':
                    msg = bag.new('sensor_msgs/msg/Imu', header=bag.header(stamp, 'imu'),
                                  orientation=quat(x=0., y=0., z=0., w=1.),
                                  orientation_covariance=np.zeros(9),
                                  angular_velocity=vec(x=0., y=0., z=row[0]),
                                  angular_velocity_covariance=np.zeros(9),
                                  linear_acceleration=vec(x=row[1], y=0., z=9.81),
                                  linear_acceleration_covariance=np.zeros(9))
                elif topic == '/motors':
                    msg = bag.new('sensor_msgs/msg/JointState', header=bag.header(stamp),
                                  name=['a', 'b', 'c'], position=np.zeros(0), velocity=row,
                                  effort=np.zeros(0))
                elif topic == '/thermal':
                    msg = bag.new('my_robot_msgs/msg/Thermal', header=bag.header(stamp),
                                  temperature=np.float32(row[0]),
                                  fan_rpm=np.array([0, row[1], row[2], 0], dtype=np.uint16),
                                  label='ok')
                else:
                    layout = bag.new('std_msgs/msg/MultiArrayLayout', dim=[], data_offset=0)
                    msg = bag.new('std_msgs/msg/Float64MultiArray', layout=layout, data=row)
                bag.write(topic, stamp + 300_000, msg)   # received 0.3 ms after the stamp
    return truth


@pytest.fixture(scope='module', params=['sqlite3', 'mcap'])
def written(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / 'bag'
    return path, write_bag(path, storage=request.param)


def test_round_trip_gives_the_exact_values_written(written):
    path, truth = written
    rec = read_bag(path, SignalSpec.from_dict(SPEC))
    assert rec.channels == ['/imu/angular_velocity.z', '/imu/linear_acceleration.x',
                            '/motors/velocity[0]', '/motors/velocity[1]', '/motors/velocity[2]',
                            '/thermal/temperature', '/thermal/fan_rpm[1]', '/thermal/fan_rpm[2]',
                            '/cmd/data[0]']
    assert rec.data.dtype == np.float32 and rec.warnings == []
    # raw streams hold the exact values (float64 as written; the custom float32 as float32)
    for topic, cols in (('/imu', slice(0, 2)), ('/motors', slice(0, 3))):
        stamps, values = truth[topic]
        np.testing.assert_array_equal(rec.streams[topic].stamps_ns, stamps)
        np.testing.assert_array_equal(rec.streams[topic].values, values[:, cols])
    stamps, values = truth['/thermal']
    np.testing.assert_array_equal(rec.streams['/thermal'].values[:, 0],
                                  values[:, 0].astype(np.float32))
    np.testing.assert_array_equal(rec.streams['/thermal'].values[:, 1:],
                                  values[:, 1:].astype(np.uint16))
    # /cmd has no header: its stamps are the receive (log) times
    np.testing.assert_array_equal(rec.streams['/cmd'].stamps_ns, truth['/cmd'][0] + 300_000)
    # the aligned rows hold each topic's last sample at or before every tick
    for k in range(0, rec.times_ns.size, 37):
        t = rec.times_ns[k]
        stamps, values = truth['/motors']
        j = np.searchsorted(stamps, t, side='right') - 1
        np.testing.assert_array_equal(rec.data[k, 2:5], values[j].astype(np.float32))
    assert np.all(np.diff(rec.times_ns) == 10_000_000)


def test_types_come_from_the_bag_definitions(written):
    path, _ = written
    with BagSource(path) as bag:
        assert bag.topics['/thermal'].type == 'my_robot_msgs/msg/Thermal'
        assert bag.topics['/thermal'].has_definition
        assert bag.topics['/imu'].count == 400


def test_several_bags_share_one_resolved_spec(written, tmp_path):
    path, _ = written
    recs = read_bags([path, path], SignalSpec.from_dict(SPEC))
    assert len(recs) == 2 and recs[0].channels == recs[1].channels
    np.testing.assert_array_equal(recs[0].data, recs[1].data)


def test_spec_errors_against_a_bag(written):
    path, _ = written
    bad = dict(SPEC, topics={'/imu': ['angular_velocity.q']})
    with pytest.raises(SpecError, match="Vector3 has no field 'q'"):
        read_bag(path, SignalSpec.from_dict(bad))
    bad = dict(SPEC, topics={'/thermal': ['label']})
    with pytest.raises(SpecError, match='is of type string, not a number'):
        read_bag(path, SignalSpec.from_dict(bad))
    bad = dict(SPEC, topics={'/imu_raw': ['angular_velocity.x']})
    with pytest.raises(SpecError, match='topic /imu_raw is not in'):
        read_bag(path, SignalSpec.from_dict(bad))


def test_fewer_messages_than_metadata_says_is_reported(tmp_path):
    path = tmp_path / 'bag'
    write_bag(path, storage='sqlite3', seconds=1.0)
    meta_path = path / 'metadata.yaml'
    meta = yaml.safe_load(meta_path.read_text())
    for entry in meta['rosbag2_bagfile_information']['topics_with_message_count']:
        if entry['topic_metadata']['name'] == '/imu':
            entry['message_count'] += 50
    meta_path.write_text(yaml.safe_dump(meta))
    rec = read_bag(path, SignalSpec.from_dict(SPEC))
    assert any('/imu: read 200 of the 250 messages that metadata.yaml lists' in w
               for w in rec.warnings)


def test_output_exists_and_bad_paths(tmp_path):
    path = tmp_path / 'bag'
    write_bag(path, storage='mcap', seconds=0.2)
    with pytest.raises(BagError, match='already exists; choose another output path'):
        BagWriter(path)
    with pytest.raises(BagError, match='does not exist'):
        BagSource(tmp_path / 'missing')
    (tmp_path / 'empty_dir').mkdir()
    with pytest.raises(BagError, match='not a rosbag2 bag'):
        BagSource(tmp_path / 'empty_dir')
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(BagError, match='is not a bag'):
        BagSource(tmp_path / 'notes.txt')
    broken = tmp_path / 'broken'
    shutil.copytree(path, broken)
    (broken / 'metadata.yaml').write_text('rosbag2_bagfile_information: {version: 5}\n')
    with pytest.raises(BagError, match='cannot open bag'):
        BagSource(broken)


# ---------------------------------------------------------------------- real bags
RESOURCES = 'bags/rosbag2-test-resources'


def test_real_rosbag2_bags_yield_every_message_metadata_lists():
    """The QoS trap: matching connections on QoS reads 0 of these; we read them all."""
    root = shared(RESOURCES)
    checked = 0
    for meta in sorted(root.rglob('metadata.yaml')):
        if 'wrong_rmw' in str(meta):
            continue
        with BagSource(meta.parent) as bag:
            counts = {t: 0 for t in bag.topics}
            for topic, _, _ in bag.raw_messages():
                counts[topic] += 1
            for name, info in bag.topics.items():
                assert counts[name] == info.meta_count, (meta.parent, name)
            checked += 1
    assert checked >= 19


def test_real_qos_trap_bag_reads_through_a_spec():
    """convert_a lists QoS in metadata.yaml that differ from its storage file's."""
    spec = SignalSpec.from_dict({'rate_hz': 1000, 'window': 2, 'topics': {
        'b_basictypes': {'stamp': 'receive', 'fields': ['int32_value', 'float64_value']}}})
    path = shared(RESOURCES, 'rosbag2_py/test/resources/mcap/convert_a')
    with BagSource(path) as bag:
        assert bag.topics['b_basictypes'].meta_count == 50
    rec = read_bag(path, spec)   # a relative topic name, as the bag holds it
    assert rec.streams['b_basictypes'].values.shape == (50, 2)
    # the sqlite3 twin carries no definition of test_msgs: one sentence says so
    with pytest.raises(SpecError, match='definition of test_msgs/msg/BasicTypes .* unknown'):
        read_bag(shared(RESOURCES, 'rosbag2_py/test/resources/sqlite3/convert_a'), spec)
    with pytest.raises(BagError, match='less than one sample at 10 Hz'):
        read_bag(path, spec.with_window(rate_hz=10))


def test_real_test_msgs_decode_only_from_mcap_definitions():
    path = shared(RESOURCES, 'rosbag2_tests/resources/mcap/cdr_test')
    spec = SignalSpec.from_dict({'rate_hz': 1, 'window': 1, 'topics': {
        '/test_topic': {'stamp': 'receive', 'fields': ['float64_value', 'int8_value']},
        '/array_topic': {'stamp': 'receive', 'fields': ['float64_values[0:3]']}}})
    with BagSource(path) as bag:
        assert bag.topics['/test_topic'].has_definition
        msgs = [m for _, _, m in bag.messages(['/test_topic'])]
    assert len(msgs) == 3 and all(m.int32_value == 123 for m in msgs)
    from encdec_ros.io.bag import bind_spec
    with BagSource(path) as bag:
        resolved = bind_spec(spec, bag)
    assert resolved.channels[-1] == '/array_topic/float64_values[2]'


def test_real_talker_bags_decode_rosout_in_its_recorded_layout():
    for storage in ('sqlite3', 'mcap'):
        with BagSource(shared(RESOURCES, 'rosbag2_py/test/resources', storage, 'talker')) as bag:
            logs = [m for _, _, m in bag.messages(['/rosout'])]
            strings = [m.data for _, _, m in bag.messages(['/topic'])]
        assert len(logs) == 10 and all(isinstance(m.msg, str) and m.msg for m in logs)
        assert len(strings) == 10 and strings[0].startswith('Hello')


def test_real_unsupported_serialisation_and_empty_bag():
    with pytest.raises(BagError, match="unsupported serialisation format .wrong_format."):
        BagSource(shared(RESOURCES, 'rosbag2_tests/resources/sqlite3/wrong_rmw_test'))
    spec = SignalSpec.from_dict({'rate_hz': 1, 'window': 1, 'topics': {
        '/rosout': {'stamp': 'receive', 'fields': ['level']}}})
    with pytest.raises(BagError, match='no usable messages on /rosout'):
        read_bag(shared(RESOURCES, 'ros2bag/test/resources/empty_bag'), spec)


def test_real_split_bag_without_metadata_is_read_file_by_file():
    path = shared(RESOURCES, 'rosbag2_py/test/resources/mcap/reindex_test_bags/multiple_files')
    with BagSource(path) as bag:
        assert any('no metadata.yaml' in w for w in bag.warnings)
        assert sum(1 for _ in bag.raw_messages()) == bag.topics['/chatter'].count > 1000


def test_real_ros1_husky_bag_aligns_imu_and_odometry():
    path = shared('bags/robot_localization/test1.bag')
    spec = SignalSpec.from_dict({'rate_hz': 10, 'window': 20, 'stride': 5, 'topics': {
        '/imu/data': ['angular_velocity.y', 'linear_acceleration.x'],
        '/husky_velocity_controller/odom': ['twist.twist.linear.x', 'twist.twist.angular.z']}})
    rec = read_bag(path, spec)
    assert rec.streams['/imu/data'].stamps_ns.size == 11865
    assert rec.streams['/husky_velocity_controller/odom'].stamps_ns.size == 3952
    assert 390 < rec.duration_s < 396 and rec.data.shape == (rec.times_ns.size, 4)
    # gyro and wheel odometry agree on the yaw rate of a real robot; this Husky's IMU is
    # mounted with its y axis vertical, so its y rate (not z) follows the odometry's yaw rate
    corr = np.corrcoef(rec.data[:, 0], rec.data[:, 3])[0, 1]
    assert corr > 0.8


# ---------------------------------------------------------------------- odd bags
@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_per_message_compressed_bag_reads_back_exactly(tmp_path, storage):
    """rosbag2's compression mode message: each message is a zstd frame of its own."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    from encdec_ros.io.bag import standard_typestore

    store = standard_typestore()
    path = tmp_path / 'bag'
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    writer = Writer(path, version=8, storage_plugin=plugin)
    writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    writer.open()
    conn = writer.add_connection('/x', 'std_msgs/msg/Float64', typestore=store)
    values = np.random.default_rng(4).normal(size=30)
    for k, value in enumerate(values):
        msg = store.types['std_msgs/msg/Float64'](data=float(value))
        writer.write(conn, T0 + k * 10_000_000, store.serialize_cdr(msg, 'std_msgs/msg/Float64'))
    writer.close()
    meta = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['compression_mode'].lower() == 'message'
    rec = read_bag(path, SignalSpec.from_dict({'rate_hz': 100, 'window': 2, 'topics': {
        '/x': ['data']}}))
    np.testing.assert_array_equal(rec.streams['/x'].values[:, 0], values)
    np.testing.assert_array_equal(rec.streams['/x'].stamps_ns, T0 + np.arange(30) * 10_000_000)


def test_compressed_bag_without_a_zstd_module_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from encdec_ros.io.bag import _zstd_decompress

    for name in ('compression.zstd', 'backports.zstd', 'zstandard'):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BagError, match='no zstd module is installed; install one with '
                                       '`pip install backports.zstd`'):
        _zstd_decompress(tmp_path)


def test_damaged_bags_name_the_repair(tmp_path):
    for storage in ('sqlite3', 'mcap'):
        path = tmp_path / storage
        write_bag(path, storage=storage, seconds=0.2)
        meta = path / 'metadata.yaml'
        meta.write_text(meta.read_text()[:300])          # metadata.yaml cut short
        with pytest.raises(BagError, match=r'metadata.yaml is incomplete or damaged; rename .*'
                                           r'`ros2 bag reindex'):
            BagSource(path)
        meta.unlink()                                    # without it, the storage file reads
        with BagSource(path) as bag:
            assert sum(1 for _ in bag.raw_messages()) == 40 + 20 + 10 + 4
        file = next(path.glob('*.db3' if storage == 'sqlite3' else '*.mcap'))
        file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])   # storage cut short
        fix = '.recover' if storage == 'sqlite3' else f'mcap recover {file}'
        with pytest.raises(BagError, match=re_escape(fix)):
            BagSource(path)
    cut = tmp_path / 'cut.bag'
    cut.write_bytes(shared('bags/robot_localization/test1.bag').read_bytes()[:700_000])
    with pytest.raises(BagError, match=re_escape(f'its index is damaged or missing, as when a '
                                                 f'recording is cut short; rebuild it with '
                                                 f'`rosbag reindex {cut}`')):
        BagSource(cut)


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def write_stamped(path: Path, stamps: np.ndarray) -> np.ndarray:
    """A bag of /imu with the given header stamps, logged at 100 Hz, and a /fast topic
    whose log times lie a nanosecond apart; returns the log times of /imu."""
    logs = T0 + np.arange(stamps.size) * 10_000_000
    with BagWriter(path) as bag:
        bag.add_topic('/imu', 'sensor_msgs/msg/Imu')
        bag.add_topic('/fast', 'std_msgs/msg/Float64')
        for k, (stamp, log_ns) in enumerate(zip(stamps, logs)):
            msg = bag.new('sensor_msgs/msg/Imu', header=bag.header(int(stamp)),
                          orientation=bag.new('geometry_msgs/msg/Quaternion', x=0., y=0., z=0.,
                                              w=1.),
                          orientation_covariance=np.zeros(9),
                          angular_velocity=bag.new('geometry_msgs/msg/Vector3', x=0., y=0.,
                                                   z=float(k)),
                          angular_velocity_covariance=np.zeros(9),
                          linear_acceleration=bag.new('geometry_msgs/msg/Vector3', x=0., y=0.,
                                                      z=9.81),
                          linear_acceleration_covariance=np.zeros(9))
            bag.write('/imu', int(log_ns), msg)
            bag.write('/fast', 1000 + k, bag.new('std_msgs/msg/Float64', data=float(k)))
    return logs


STAMP_SPEC = {'rate_hz': 100, 'window': 2, 'topics': {'/imu': ['angular_velocity.z']}}


@pytest.mark.parametrize('kind', ['zero', 'pairs'])
def test_header_stamps_that_repeat_are_refused_with_the_receive_fix(tmp_path, kind):
    good = T0 + np.arange(40) * 10_000_000
    stamps = np.zeros(40, np.int64) if kind == 'zero' else np.repeat(good[::2], 2)
    logs = write_stamped(tmp_path / 'bag', stamps)
    how = 'are all zero' if kind == 'zero' else 'repeat the one before in 20 of 40 messages'
    with pytest.raises(BagError, match=f'the header stamps of /imu {how}, so they cannot time '
                                       'its samples; set stamp: receive under /imu'):
        read_bag(tmp_path / 'bag', SignalSpec.from_dict(STAMP_SPEC))
    spec = dict(STAMP_SPEC, topics={'/imu': {'stamp': 'receive', 'fields': ['angular_velocity.z']}})
    rec = read_bag(tmp_path / 'bag', SignalSpec.from_dict(spec))
    np.testing.assert_array_equal(rec.streams['/imu'].stamps_ns, logs)
    np.testing.assert_array_equal(rec.streams['/imu'].values[:, 0], np.arange(40.))


def test_inspect_flags_stamps_rates_duplicates_and_definitions(tmp_path, capsys):
    from encdec_ros.cli import main

    write_stamped(tmp_path / 'bag', np.zeros(40, np.int64))
    spec = tmp_path / 'spec.yaml'
    spec.write_text(yaml.safe_dump(STAMP_SPEC))
    assert main(['inspect', str(tmp_path / 'bag'), '--spec', str(spec)]) == 1
    out = capsys.readouterr().out
    fast = next(line for line in out.splitlines() if line.startswith('/fast'))
    assert fast.split()[3] == '?' and '40 messages lie within 39 ns of log time' in out
    imu = next(line for line in out.splitlines() if line.startswith('/imu'))
    assert imu.split()[3] == '100.00'
    assert 'the header stamps of /imu are all zero' in out and 'stamp: receive' in out
    # the same field twice: inspect refuses it as train does
    spec.write_text(yaml.safe_dump(dict(STAMP_SPEC, topics={'/fast': {
        'stamp': 'receive', 'fields': ['data', 'data']}})))
    assert main(['inspect', str(tmp_path / 'bag'), '--spec', str(spec)]) == 1
    assert 'channel /fast/data appears twice; list each field once' in capsys.readouterr().out
    # a sqlite3 bag without definitions of test_msgs: neither column nor check calls it standard
    path = shared(RESOURCES, 'rosbag2_py/test/resources/sqlite3/convert_a')
    assert main(['inspect', str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith('b_basictypes'))
    assert line.endswith('none (not a standard type)')


def test_one_file_of_a_split_bag_warns_to_pass_its_directory():
    path = shared(RESOURCES, 'rosbag2_py/test/resources/mcap/wbag')
    with BagSource(path / 'wbag_0.mcap') as bag:
        assert any(f'only one of the 5 storage files of the split bag {path}' in w and
                   f'pass the directory {path}' in w for w in bag.warnings)
    with BagSource(path) as bag:
        assert not bag.warnings


# ---------------------------------------------------------------------- batch = per message
def per_message_streams(bag: BagSource, spec: SignalSpec) -> dict:
    """What read_streams did before the batch decoder: rosbags' deserialise, compile_path
    per message, short messages skipped; then the same clean-up (the time model)."""
    from encdec_ros.io.align import clean
    from encdec_ros.io.fields import ShortMessageError, compile_path

    out = {}
    for topic in spec.topics:
        fns = [compile_path(f.path) for f in topic.fields]
        width = len(topic.channel_names())
        stamps, rows, short = [], [], 0
        for _, log_ns, msg in bag.messages([topic.name]):
            try:
                row = [v for fn in fns for v in fn(msg)]
            except ShortMessageError:
                short += 1
                continue
            if topic.stamp == 'header':
                st = msg.header.stamp
                log_ns = st.sec * 1_000_000_000 + st.nanosec
            stamps.append(log_ns)
            rows.append(row)
        stream = clean(np.asarray(stamps, dtype=np.int64),
                       np.asarray(rows, dtype=np.float64).reshape(-1, width), spec.period_ns,
                       max_hold_ns=topic.max_hold_ns)
        out[topic.name] = (stream, short)
    return out


def assert_batch_equals_per_message(path: Path, spec: SignalSpec) -> dict:
    from encdec_ros.io.bag import bind_spec, read_streams

    with BagSource(path) as bag:
        resolved = bind_spec(spec, bag)
        streams, warnings = read_streams(bag, resolved, show_progress=False)
        want = per_message_streams(bag, resolved)
    for topic, (stream, short) in want.items():
        got = streams[topic]
        np.testing.assert_array_equal(got.stamps_ns, stream.stamps_ns)
        assert got.values.view(np.uint64).tolist() == stream.values.view(np.uint64).tolist()
        assert got.dropped == stream.dropped
        assert (f'{topic}: skipped {short} messages with fewer array' in ' '.join(warnings)) \
            == bool(short)
    return streams


def test_batch_ingest_equals_the_per_message_path(written):
    path, _ = written
    assert_batch_equals_per_message(path, SignalSpec.from_dict(SPEC))


def test_batch_ingest_of_joint_states_whose_arrays_change_length(tmp_path):
    """effort[*] is sized from the first message (6 joints); messages with fewer joints are
    skipped and counted, messages with more give their first 6; NaN payloads pass as they are."""
    rng = np.random.default_rng(5)
    nan = np.array([0x7FF8000000000001, 0x7FF4000000000abc], np.uint64).view(np.float64)
    counts = [6] * 40
    counts[7], counts[8], counts[20] = 3, 0, 9
    with BagWriter(tmp_path / 'bag', storage='mcap') as bag:
        bag.add_topic('/joints', 'sensor_msgs/msg/JointState')
        for k, n in enumerate(counts):
            effort = rng.normal(size=n)
            if k == 11:
                effort[:2] = nan
            msg = bag.new('sensor_msgs/msg/JointState',
                          header=bag.header(T0 + k * 10_000_000, 'base' * (k % 3)),
                          name=[f'joint_{i}' * (k % 4 + 1) for i in range(n)],
                          position=rng.normal(size=n // 2), velocity=rng.normal(size=n),
                          effort=effort)
            bag.write('/joints', T0 + k * 10_000_000 + 5, msg)
    spec = SignalSpec.from_dict({'rate_hz': 100, 'window': 2, 'topics': {
        '/joints': ['effort[*]', 'velocity[1:3]', 'position[0]']}})
    streams = assert_batch_equals_per_message(tmp_path / 'bag', spec)
    assert streams['/joints'].values.shape == (38, 9)
    got = streams['/joints'].values[9]        # message 11 (two skipped before it)
    assert got[:2].view(np.uint64).tolist() == [0x7FF8000000000001, 0x7FF4000000000abc]


def test_batch_ingest_of_real_ros1_and_compressed_bags(tmp_path):
    spec = SignalSpec.from_dict({'rate_hz': 10, 'window': 20, 'stride': 5, 'topics': {
        '/imu/data': ['angular_velocity.y', 'linear_acceleration.x', 'orientation.w'],
        '/husky_velocity_controller/odom': ['twist.twist.linear.x', 'pose.covariance[0:3]'],
        '/fix': {'stamp': 'receive', 'fields': ['latitude', 'status.status']}}})
    assert_batch_equals_per_message(shared('bags/robot_localization/test1.bag'), spec)


def test_batch_ingest_reads_a_directory_of_storage_files_file_by_file(tmp_path):
    """Two storage files in one directory without metadata.yaml: file by file, as before."""
    parts = tmp_path / 'parts'
    parts.mkdir()
    for k in range(2):
        write_bag(tmp_path / f'b{k}', storage='sqlite3', seconds=0.3)
        db = next((tmp_path / f'b{k}').glob('*.db3'))
        db.rename(parts / f'part_{k}.db3')
    streams = assert_batch_equals_per_message(parts, SignalSpec.from_dict(SPEC))
    imu = streams['/imu']        # the same seed twice: the second file steps back in time,
    assert imu.stamps_ns.size == 120 and imu.jumps_back == 1     # a new segment (time model)


def _chunks_by_topic(chunks) -> dict:
    """Per topic: (log times, message bytes) in the storage order the chunks define."""
    out: dict = {}
    for item in chunks:
        topic, chunk = item[-2], item[-1]
        logs, orders, datas = out.setdefault(topic, ([], [], []))
        logs.extend(chunk.log_ns.tolist())
        orders.extend(chunk.order.tolist())
        datas.extend(chunk.batch.message(i) for i in range(len(chunk.batch)))
    result = {}
    for topic, (logs, orders, datas) in out.items():
        sort = np.lexsort((np.array(orders), np.array(logs)))
        result[topic] = ([logs[i] for i in sort], [datas[i] for i in sort])
    return result


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_raw_chunks_give_what_the_per_message_reader_gives(tmp_path, storage):
    """The fast storage paths (SQL rows, MCAP message indexes), the MCAP record walk used
    when an index does not fit, and the generic per-message path agree message for message
    with raw_messages."""
    from encdec_ros.io.bag import _generic_chunks, _mcap_records, _walk_mcap

    write_bag(tmp_path / 'bag', storage=storage, seconds=0.5)
    with BagSource(tmp_path / 'bag') as bag:
        topics = list(bag.topics)
        want: dict = {}
        for topic, log_ns, raw in bag.raw_messages(topics):
            want.setdefault(topic, ([], []))
            want[topic][0].append(log_ns)
            want[topic][1].append(bytes(raw))
        assert _chunks_by_topic(bag.raw_chunks(topics, max_messages=7)) == want
        storage_obj = bag._storages[0][0]
        generic = _generic_chunks(storage_obj, list(storage_obj.connections), None, 9)
        assert _chunks_by_topic(generic) == want
        if storage == 'mcap':
            import struct

            from rosbags.rosbag2.storage_mcap import decompress
            for chunk in storage_obj.chunks:
                bio = storage_obj.bio
                bio.seek(chunk.chunk_start_offset + 9 + 24)
                crc = struct.unpack('<I', bio.read(4))[0]
                bio.seek(chunk.chunk_start_offset + 9 + 40 + len(chunk.compression))
                data = decompress(bio.read(chunk.compressed_size), chunk.compression,
                                  chunk.uncompressed_size, crc)
                walked = _walk_mcap(data, set(chunk.message_index_offsets))
                for cid, offset in chunk.message_index_offsets.items():
                    bio.seek(offset)
                    _, _, _, size = struct.unpack('<BQHI', bio.read(15))
                    pairs = np.frombuffer(bio.read(size), '<u8').reshape(-1, 2).astype(np.int64)
                    found = _mcap_records(np.frombuffer(data, np.uint8), pairs, cid)
                    for a, b in zip(found, walked[cid]):
                        np.testing.assert_array_equal(np.sort(a), np.sort(b))
                    # an index that points beside the records is refused (then walked)
                    assert _mcap_records(np.frombuffer(data, np.uint8), pairs + 1, cid) is None
