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


def test_player_publishes_the_stored_bytes_in_order(rclpy_context, small_bag):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Imu, JointState

    qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     history=HistoryPolicy.KEEP_ALL)
    node = rclpy.create_node('player_test', context=rclpy_context)
    got: dict[str, list[bytes]] = {'/t/imu': [], '/motors': []}
    node.create_subscription(Imu, '/t/imu', lambda m: got['/t/imu'].append(m), qos, raw=True)
    node.create_subscription(JointState, '/motors', lambda m: got['/motors'].append(m), qos,
                             raw=True)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                               for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        with BagPlayer(node, small_bag, topics=['/imu', '/motors'], rate=4.0,
                       remap={'/imu': '/t/imu'}, qos=qos) as player:
            assert player.wait_for_subscribers(1, timeout_s=10)
            stats = player.play()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(got['/t/imu']) < 400 or
                                               len(got['/motors']) < 200):
            time.sleep(0.05)
    finally:
        stop.set()
        spinner.join()
        node.destroy_node()
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
