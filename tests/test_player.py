"""The bag player publishes a bag's exact bytes over real DDS."""

from __future__ import annotations

import threading
import time

import pytest

from encdec_ros.errors import BagError, ConfigError
from encdec_ros.io.bag import BagSource
from encdec_ros.io.player import BagPlayer
from training.sim import SimConfig, simulate, write_bag


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('play') / 'bag'
    return write_bag(simulate(SimConfig(duration_s=2.0, seed=3)), path)


def _play_and_receive(context, node, bag, got: dict[str, list], want: dict[str, int],
                      **player_options):
    """Spin ``node`` (its subscriptions fill ``got``) while a BagPlayer on it plays ``bag``;
    wait until each topic of ``want`` received that many messages; return the play's stats."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                               for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        with BagPlayer(node, bag, **player_options) as player:
            assert player.wait_for_subscribers(1, timeout_s=10)
            stats = player.play()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(len(got[t]) < n for t, n in want.items()):
            time.sleep(0.05)
    finally:
        stop.set()
        spinner.join()
        node.destroy_node()
    return stats


def test_player_publishes_the_stored_bytes_in_order(rclpy_context, small_bag):
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Imu, JointState

    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     history=HistoryPolicy.KEEP_ALL)
    node = rclpy.create_node('player_test', context=rclpy_context)
    got: dict[str, list[bytes]] = {'/t/imu': [], '/motors': []}
    node.create_subscription(Imu, '/t/imu', lambda m: got['/t/imu'].append(m), qos, raw=True)
    node.create_subscription(JointState, '/motors', lambda m: got['/motors'].append(m), qos,
                             raw=True)
    stats = _play_and_receive(rclpy_context, node, small_bag, got,
                              {'/t/imu': 400, '/motors': 200}, topics=['/imu', '/motors'],
                              rate=4.0, remap={'/imu': '/t/imu'}, qos=qos)
    assert stats.per_topic == {'/imu': 400, '/motors': 200}
    assert 2.5 < stats.speedup < 4.5        # paced at four times real time
    with BagSource(small_bag) as bag:
        want = {t: [bytes(r) for tt, _, r in bag.raw_messages([t])] for t in ('/imu', '/motors')}
    assert got['/t/imu'] == want['/imu']
    assert got['/motors'] == want['/motors']


def test_player_refuses_unknown_topics_and_rates(rclpy_context, small_bag):
    import rclpy

    node = rclpy.create_node('player_bad', context=rclpy_context)
    try:
        with pytest.raises(BagError, match='topic /nope is not in'):
            BagPlayer(node, small_bag, topics=['/nope'])
        with pytest.raises(ConfigError, match='playback rate must be'):
            BagPlayer(node, small_bag, rate=-1)
    finally:
        node.destroy_node()


def test_player_warns_when_given_one_file_of_a_split_bag(rclpy_context):
    import rclpy
    from data_paths import shared

    path = shared('bags/rosbag2-test-resources/rosbag2_py/test/resources/mcap/wbag')
    node = rclpy.create_node('player_split', context=rclpy_context)
    try:
        with BagPlayer(node, path / 'wbag_0.mcap', rate=0) as player:
            assert any(f'pass the directory {path}' in w for w in player.warnings)
            assert player.play().messages > 0
        with BagPlayer(node, path, topics=['AAA'], rate=0) as player:
            assert player.warnings == [] and player.play().messages == 804
    finally:
        node.destroy_node()


def _ros1_bag(path):
    """A ROS 1 bag written with rosbags' own writer: Imu and JointState (arrays, names)."""
    import numpy as np
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    Time, Header = T['builtin_interfaces/msg/Time'], T['std_msgs/msg/Header']
    V3, Q = T['geometry_msgs/msg/Vector3'], T['geometry_msgs/msg/Quaternion']
    sent = {'/imu': [], '/joints': []}
    with Writer(path) as writer:
        imu = writer.add_connection('/imu', 'sensor_msgs/msg/Imu', typestore=ts)
        joints = writer.add_connection('/joints', 'sensor_msgs/msg/JointState', typestore=ts)
        for i in range(50):
            stamp = Time(sec=100 + i // 10, nanosec=(i % 10) * 100_000_000)
            header = Header(seq=i, stamp=stamp, frame_id='imu_link')
            msg = T['sensor_msgs/msg/Imu'](
                header=header, orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0),
                orientation_covariance=np.arange(9, dtype=np.float64),
                angular_velocity=V3(x=0.1 * i, y=-0.2, z=0.3),
                angular_velocity_covariance=np.zeros(9),
                linear_acceleration=V3(x=0.0, y=0.5, z=9.81 + i),
                linear_acceleration_covariance=np.zeros(9))
            t_ns = (100 + i * 0.1) * 1e9
            writer.write(imu, int(t_ns), ts.serialize_ros1(msg, 'sensor_msgs/msg/Imu'))
            sent['/imu'].append((100 + i // 10, (i % 10) * 100_000_000, 0.1 * i, 9.81 + i))
            if i % 5 == 0:
                js = T['sensor_msgs/msg/JointState'](
                    header=Header(seq=i, stamp=stamp, frame_id=''), name=['a', 'b'],
                    position=np.array([1.0 * i, 2.0]), velocity=np.array([3.0, -1.0 * i]),
                    effort=np.array([], dtype=np.float64))
                writer.write(joints, int(t_ns) + 1,
                             ts.serialize_ros1(js, 'sensor_msgs/msg/JointState'))
                sent['/joints'].append((['a', 'b'], [1.0 * i, 2.0], [3.0, -1.0 * i]))
    return sent


def test_player_converts_a_ros1_bag_to_ros2_messages(rclpy_context, tmp_path):
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Imu, JointState

    path = tmp_path / 'robot.bag'
    sent = _ros1_bag(path)
    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     history=HistoryPolicy.KEEP_ALL)
    node = rclpy.create_node('player_ros1', context=rclpy_context)
    got: dict[str, list] = {'/imu': [], '/joints': []}
    node.create_subscription(Imu, '/imu', got['/imu'].append, qos)
    node.create_subscription(JointState, '/joints', got['/joints'].append, qos)
    stats = _play_and_receive(rclpy_context, node, path, got, {'/imu': 50, '/joints': 10},
                              rate=0, qos=qos)
    assert stats.per_topic == {'/imu': 50, '/joints': 10}
    imu = [(m.header.stamp.sec, m.header.stamp.nanosec, m.angular_velocity.x,
            m.linear_acceleration.z) for m in got['/imu']]
    assert imu == sent['/imu']                   # float64 survives the conversion exactly
    assert all(m.header.frame_id == 'imu_link' for m in got['/imu'])
    assert list(got['/imu'][3].orientation_covariance) == list(range(9))
    joints = [(list(m.name), list(m.position), list(m.velocity)) for m in got['/joints']]
    assert joints == sent['/joints']


def test_play_cli_on_the_real_ros1_bag_skips_types_not_installed(rclpy_context):
    import rclpy
    from data_paths import shared

    path = shared('bags/robot_localization/test1.bag')
    node = rclpy.create_node('player_husky', context=rclpy_context)
    try:
        with BagPlayer(node, path, rate=0) as player:
            assert '/imu/data' in player.topics and '/fix' in player.topics
            assert not _installed_here('nav_msgs/msg/Odometry') or \
                '/husky_velocity_controller/odom' in player.topics
            if '/husky_velocity_controller/odom' not in player.topics:
                assert any('/husky_velocity_controller/odom is not played' in w
                           for w in player.warnings)
            stats = player.play(should_stop=lambda: False)
        assert stats.per_topic['/imu/data'] == 11865 and stats.per_topic['/fix'] == 989
    finally:
        node.destroy_node()


def _installed_here(msgtype: str) -> bool:
    from encdec_ros.io.player import _installed

    return _installed(msgtype)
