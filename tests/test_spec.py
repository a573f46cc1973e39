"""The signal spec: loading, every user mistake's message, binding to message types."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from encdec_ros.errors import SpecError
from encdec_ros.io.bag import standard_typestore
from encdec_ros.io.fields import compile_path, parse_path
from encdec_ros.io.spec import SignalSpec

GOOD = """\
rate_hz: 100
window: 32
stride: 4
topics:
  /imu:
    type: sensor_msgs/msg/Imu
    fields: [angular_velocity.x, 'orientation_covariance[0:3]']
  /motors:
    type: sensor_msgs/JointState
    stamp: receive
    fields: ['velocity[*]', {path: 'effort[0]', name: current_0}]
  /cmd:
    fields: ['data[0:2]']
"""

TYPES = {'/imu': 'sensor_msgs/msg/Imu', '/motors': 'sensor_msgs/msg/JointState',
         '/cmd': 'std_msgs/msg/Float64MultiArray', '/wrench': 'geometry_msgs/msg/WrenchStamped'}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'spec.yaml'
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope='module')
def fielddefs():
    return standard_typestore().fielddefs


def joint_state(n: int):
    store = standard_typestore()
    import numpy as np
    header = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='')
    return store.types['sensor_msgs/msg/JointState'](
        header=header, name=[f'm{i}' for i in range(n)], position=np.zeros(n),
        velocity=np.arange(n, dtype=float), effort=np.arange(n, dtype=float) * 2)


def test_load_and_round_trip(tmp_path, fielddefs):
    spec = SignalSpec.load(write(tmp_path, GOOD))
    assert spec.rate_hz == 100.0 and spec.window == 32 and spec.stride == 4
    assert spec.period_ns == 10_000_000
    assert spec.topic_names == ['/imu', '/motors', '/cmd']
    assert not spec.resolved          # velocity[*] of a variable-length array needs data
    assert spec.topic('/motors').type == 'sensor_msgs/msg/JointState'
    again = SignalSpec.from_dict(spec.to_dict())
    assert again == spec


def test_bind_sizes_star_from_first_message_and_names_channels(tmp_path, fielddefs):
    spec = SignalSpec.load(write(tmp_path, GOOD))
    bound = spec.bind(TYPES, fielddefs, first_messages={'/motors': joint_state(3)})
    assert bound.resolved
    assert bound.channels == [
        '/imu/angular_velocity.x', '/imu/orientation_covariance[0]',
        '/imu/orientation_covariance[1]', '/imu/orientation_covariance[2]',
        '/motors/velocity[0]', '/motors/velocity[1]', '/motors/velocity[2]',
        '/motors/current_0', '/cmd/data[0]', '/cmd/data[1]']
    assert bound.topic('/imu').stamp == 'header'
    assert bound.topic('/cmd').stamp == 'receive'      # Float64MultiArray has no header
    assert bound.topic('/motors').fields[0].path.text == 'velocity[0:3]'
    # the resolved spec survives a trip through YAML (as it does inside model.yaml)
    again = SignalSpec.from_dict(bound.to_dict())
    assert again.resolved and again.channels == bound.channels
    assert bound.mismatch(again) is None


@pytest.mark.parametrize(('text', 'message'), [
    ('rate_hz: 0\nwindow: 4\ntopics: {/a: [data]}', 'rate_hz must be a number'),
    ('rate_hz: fast\nwindow: 4\ntopics: {/a: [data]}', 'rate_hz must be a number'),
    ('rate_hz: true\nwindow: 4\ntopics: {/a: [data]}', 'rate_hz must be a number'),
    ('rate_hz: 10\nwindow: 2.5\ntopics: {/a: [data]}', 'window must be a whole number'),
    ('rate_hz: 10\nwindow: 4\nstride: 8\ntopics: {/a: [data]}', 'stride .8. is larger'),
    ('rate_hz: 10\nwindow: 4\ntopic: {/a: [data]}', "unknown key 'topic'"),
    ('rate_hz: 10\nwindow: 4\ntopics: []', 'topics must map each topic'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/imu bad: [data]}', 'must be a ROS topic name'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: {fields: []}}', 'needs a non-empty fields'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: {fields: [x], qos: 1}}', "unknown key 'qos'"),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: {fields: [x], stamp: now}}', "stamp 'now'"),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: {fields: [x], type: Imu}}', 'package/msg/Name'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: [a..b]}', 'malformed'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: ["a[*].b[*]"]}', 'more than one'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: ["a[3:1]"]}', 'empty slice'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: [{path: "a[0:2]", names: [x]}]}', '2 numbers but 1'),
    ('rate_hz: 10\nwindow: 4\ntopics: {/a: [1]}', 'must be a string path'),
    ('rate_hz: 10\nwindow: [4\n', 'not valid YAML at line'),
    ('- just\n- a list\n', 'must be a mapping'),
])
def test_each_shape_error_is_one_sentence_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=message) as info:
        SignalSpec.load(path)
    assert str(path) in str(info.value)
    assert '\n' not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match='does not exist'):
        SignalSpec.load(tmp_path / 'nope.yaml')


@pytest.mark.parametrize('data', [
    b'#ROSBAG V2.0\nE\x00\x00\x00\x04\x00\x00\x00op=\x03\xbb\xfe\xff',  # a ROS 1 bag
    b'SQLite format 3\x00\x10\x00\x01\x01',                            # a .db3 bag
    b'rate_hz: 10\x00\nwindow: 4\n',                                    # UTF-8 with a NUL
], ids=['ros1', 'sqlite', 'nul'])
def test_binary_file_is_not_a_spec(tmp_path, data):
    path = tmp_path / 'recording.bag'
    path.write_bytes(data)
    with pytest.raises(SpecError, match=r'spec file .*recording.bag is not a text YAML file '
                                        r'\(did you pass a bag\?\); pass the signal spec YAML'
                       ) as info:
        SignalSpec.load(path)
    assert '\n' not in str(info.value)


def test_directory_is_not_a_spec(tmp_path):
    with pytest.raises(SpecError, match=r'is a directory; pass a signal spec YAML file instead'):
        SignalSpec.load(tmp_path)
    (tmp_path / 'imu.yaml').write_text('rate_hz: 10\n')
    with pytest.raises(SpecError, match=r'is a directory; pass a signal spec YAML file such as '
                                        r'.*imu.yaml instead'):
        SignalSpec.load(tmp_path)
    bag = tmp_path / 'bag'
    bag.mkdir()
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: {}\n')
    with pytest.raises(SpecError, match=r'bag is a bag directory, not a spec; pass the signal '
                                        r'spec YAML file'):
        SignalSpec.load(bag)


def test_cli_inspect_with_a_bag_as_spec_is_one_line(tmp_path, capsys):
    from encdec_ros.cli import main

    path = tmp_path / 'recording.bag'
    path.write_bytes(b'#ROSBAG V2.0\n\xbb\xfe\xff')
    assert main(['inspect', str(path), '--spec', str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('encdec: error: spec file') and err.count('\n') == 1
    assert 'did you pass a bag?' in err and 'Traceback' not in err
    assert main(['inspect', str(path), '--spec', str(tmp_path)]) == 2
    assert 'is a directory; pass a signal spec YAML file' in capsys.readouterr().err


@pytest.mark.parametrize(('topic', 'field', 'message'), [
    ('/imuu', 'angular_velocity.x', r'topic /imuu is not in .*did you mean /imu\?'),
    ('/imu', 'angular_velocity.w', "geometry_msgs/msg/Vector3 has no field 'w'.*x, y, z"),
    ('/imu', 'header.frame_id', 'is of type string, not a number'),
    ('/imu', 'header.stamp', r'is a message \(builtin_interfaces/msg/Time\).*sec, nanosec'),
    ('/imu', 'orientation_covariance', 'is an array of 9'),
    ('/imu', 'orientation_covariance[9]', 'has 9 elements'),
    ('/imu', 'orientation_covariance[4:12]', 'slices up to 12'),
    ('/imu', 'angular_velocity[0]', 'is not an array'),
    ('/imu', 'angular_velocity.x.y', 'continues past'),
    ('/motors', 'velocity[*]', 'only known from data'),
])
def test_each_binding_error_names_the_entry_and_the_fix(fielddefs, topic, field, message):
    spec = SignalSpec.from_dict({'rate_hz': 50, 'window': 8, 'topics': {topic: [field]}},
                                source='my_spec.yaml')
    with pytest.raises(SpecError, match=message) as info:
        spec.bind(TYPES | {'/imu': 'sensor_msgs/msg/Imu'}, fielddefs, where='bag X')
    assert str(info.value).startswith('my_spec.yaml')


def test_declared_type_must_match_and_header_stamp_needs_a_header(fielddefs):
    spec = SignalSpec.from_dict({'rate_hz': 50, 'window': 8, 'topics': {
        '/imu': {'type': 'sensor_msgs/msg/JointState', 'fields': ['velocity[0]']}}})
    with pytest.raises(SpecError, match='declared as sensor_msgs/msg/JointState but is '
                                        'sensor_msgs/msg/Imu'):
        spec.bind(TYPES, fielddefs)
    spec = SignalSpec.from_dict({'rate_hz': 50, 'window': 8, 'topics': {
        '/cmd': {'stamp': 'header', 'fields': ['data[0]']}}})
    with pytest.raises(SpecError, match='has no header, so stamp: header is impossible'):
        spec.bind(TYPES, fielddefs)


def test_unknown_type_and_duplicate_channels(fielddefs):
    spec = SignalSpec.from_dict({'rate_hz': 50, 'window': 8, 'topics': {'/x': ['a']}})
    with pytest.raises(SpecError, match='definition of my_pkg/msg/Thing .* is unknown'):
        spec.bind({'/x': 'my_pkg/msg/Thing'}, fielddefs)
    spec = SignalSpec.from_dict({'rate_hz': 50, 'window': 8, 'topics': {
        '/imu': ['angular_velocity.x', 'angular_velocity.x']}})
    with pytest.raises(SpecError, match='appears twice'):
        spec.bind(TYPES, fielddefs)


def test_extraction_is_identical_on_rclpy_and_rosbags_messages():
    from sensor_msgs.msg import JointState

    live = JointState()
    live.velocity = [1.0, 2.0, 3.0, 4.0]
    live.effort = [5.0, 6.0]
    stored = joint_state(4)
    stored.velocity[:] = [1.0, 2.0, 3.0, 4.0]
    for text, want in (('velocity[1:3]', [2.0, 3.0]), ('velocity[3]', [4.0])):
        fn = compile_path(parse_path(text))
        assert list(fn(live)) == want
        assert list(fn(stored)) == want
    from encdec_ros.io.fields import ShortMessageError
    with pytest.raises(ShortMessageError):
        compile_path(parse_path('effort[0:3]'))(live)
