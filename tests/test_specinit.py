"""From a robot's bag to a spec without writing YAML: `encdec spec init` and `encdec train
anomaly --topics`, on a rosbag2 written here, the synthetic robot's bag and a real Husky bag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_paths import shared

from encdec_ros.cli import main
from encdec_ros.errors import SpecError
from encdec_ros.io.bag import read_bag
from encdec_ros.io.bagwrite import BagWriter
from encdec_ros.io.spec import SignalSpec
from encdec_ros.io.specinit import starter_spec

T0 = 1_700_000_000_000_000_000


def _vec(bag: BagWriter, x: float, y: float, z: float):
    return bag.new('geometry_msgs/msg/Vector3', x=x, y=y, z=z)


@pytest.fixture(scope='module')
def robot_bag(tmp_path_factory) -> Path:
    """30 s of a small robot: an IMU whose driver leaves header stamps at zero (50 Hz), joint
    states with one joint that never moves and no efforts (50 Hz), wheel odometry (25 Hz), a
    laser scan (10 Hz), a status string and /rosout."""
    path = tmp_path_factory.mktemp('specinit') / 'robot'
    rng = np.random.default_rng(0)
    with BagWriter(path) as bag:
        for topic, msgtype in (('/imu', 'sensor_msgs/msg/Imu'),
                               ('/joint_states', 'sensor_msgs/msg/JointState'),
                               ('/odom', 'nav_msgs/msg/Odometry'),
                               ('/scan', 'sensor_msgs/msg/LaserScan'),
                               ('/status', 'std_msgs/msg/String'),
                               ('/rosout', 'rcl_interfaces/msg/Log')):
            bag.add_topic(topic, msgtype)
        quat = bag.new('geometry_msgs/msg/Quaternion', x=0.0, y=0.0, z=0.0, w=1.0)
        cov = np.eye(3).ravel() * 0.01
        for k in range(1500):                                    # 50 Hz
            t = T0 + k * 20_000_000
            a = rng.normal(size=6)
            bag.write('/imu', t, bag.new(
                'sensor_msgs/msg/Imu', header=bag.header(0, 'imu'), orientation=quat,
                orientation_covariance=cov, angular_velocity=_vec(bag, *a[:3]),
                angular_velocity_covariance=cov, linear_acceleration=_vec(bag, *a[3:]),
                linear_acceleration_covariance=cov))
            q = np.array([np.sin(k / 50), 0.0, np.cos(k / 40)])
            bag.write('/joint_states', t + 1000, bag.new(
                'sensor_msgs/msg/JointState', header=bag.header(t, ''), name=['a', 'b', 'c'],
                position=q, velocity=np.array([np.cos(k / 50), 0.0, -np.sin(k / 40)]),
                effort=np.zeros(0)))
            if k % 5 == 0:                                       # 10 Hz
                bag.write('/scan', t + 2000, bag.new(
                    'sensor_msgs/msg/LaserScan', header=bag.header(t, 'laser'),
                    angle_min=-3.14, angle_max=3.14, angle_increment=0.0175,
                    time_increment=0.0, scan_time=0.1, range_min=0.1, range_max=30.0,
                    ranges=rng.uniform(1, 5, 360).astype(np.float32),
                    intensities=np.zeros(0, np.float32)))
                bag.write('/status', t, bag.new('std_msgs/msg/String', data='ok'))
            if k % 25 == 0:
                bag.write('/rosout', t, bag.new(
                    'rcl_interfaces/msg/Log', stamp=bag.header(t).stamp, level=20,
                    name='n', msg='hello', file='f', function='g', line=k))
            if k % 2 == 0:                                       # 25 Hz
                pose = bag.new('geometry_msgs/msg/Pose', position=bag.new(
                    'geometry_msgs/msg/Point', x=k * 0.01, y=np.sin(k / 100), z=0.0),
                    orientation=quat)
                twist = bag.new('geometry_msgs/msg/Twist', linear=_vec(bag, 0.5, 0.0, 0.0),
                                angular=_vec(bag, 0.0, 0.0, float(np.cos(k / 100))))
                bag.write('/odom', t + 3000, bag.new(
                    'nav_msgs/msg/Odometry', header=bag.header(t, 'odom'),
                    child_frame_id='base_link',
                    pose=bag.new('geometry_msgs/msg/PoseWithCovariance', pose=pose,
                                 covariance=np.zeros(36)),
                    twist=bag.new('geometry_msgs/msg/TwistWithCovariance', twist=twist,
                                  covariance=np.zeros(36))))
    return path


def test_every_changing_numeric_field_is_kept_and_the_rest_commented(robot_bag, tmp_path):
    starter = starter_spec(robot_bag)
    spec = starter.spec
    assert spec.topic_names == ['/imu', '/joint_states', '/odom']
    fields = {t.name: [f.path.text for f in t.fields] for t in spec.topics}
    assert fields == {
        '/imu': ['angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z',
                 'linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z'],
        '/joint_states': ['position[0]', 'position[2]', 'velocity[0]', 'velocity[2]'],
        '/odom': ['twist.twist.angular.z'],
    }
    # the IMU's header stamps are all zero: its log times time it
    assert spec.topic('/imu').stamp == 'receive' and spec.topic('/odom').stamp == 'header'
    # clock from the fastest topic (50 Hz), window 0.5 s, a tenth of it as stride
    assert (spec.rate_hz, spec.window, spec.stride) == (50.0, 25, 2)
    text = starter.yaml_text()
    assert yaml.safe_load(text) == spec.to_dict() | {'name': 'robot'}
    for line in ("# - pose.pose.position.x  # left out: absolute position",
                 "# - 'orientation_covariance[0:9]'  # left out: a covariance",
                 "# - 'position[1]'  # left out: constant in the bag (0)",
                 "# - 'effort[*]'  # left out: empty in every message of the bag",
                 "# - twist.twist.linear.x  # left out: constant in the bag (0.5)",
                 '# topic /scan (sensor_msgs/msg/LaserScan) left out: every numeric field is '
                 'left out (360 elements',
                 '# topic /status (std_msgs/msg/String) left out: no numeric field',
                 'stamp: receive  # header stamps are all zero in the bag'):
        assert line in text, line
    assert '/rosout' not in text
    # uncommenting a line puts the field back, and the spec reads the bag
    back = text.replace('# - pose.pose.position.x  #', '- pose.pose.position.x  #')
    path = tmp_path / 'spec.yaml'
    path.write_text(back)
    rec = read_bag(robot_bag, SignalSpec.load(path))
    assert '/odom/pose.pose.position.x' in rec.channels
    assert rec.data.shape[1] == 6 + 4 + 2 and np.isfinite(rec.data).all()


def test_cli_writes_the_spec_and_refuses_what_it_cannot_do(robot_bag, tmp_path, capsys):
    out = tmp_path / 'my_spec.yaml'
    assert main(['spec', 'init', str(robot_bag), '--topics', 'imu,/joint_states',
                 '--out', str(out)]) == 0
    text = capsys.readouterr().out
    assert '2 topic(s), 10 channels at 50 Hz' in text and f'wrote {out}' in text
    assert SignalSpec.load(out).topic_names == ['/imu', '/joint_states']
    assert main(['spec', 'init', str(robot_bag), '--out', str(out)]) == 2
    assert 'already exists; pass --force' in capsys.readouterr().err
    assert main(['spec', 'init', str(robot_bag), '--topics', '/jointstates', '--out',
                 str(tmp_path / 'x.yaml')]) == 2
    err = capsys.readouterr().err
    assert 'topic /jointstates is not in' in err and 'did you mean /joint_states?' in err
    assert err.count('\n') == 1
    with pytest.raises(SpecError, match='has no topic with a numeric field that changes'):
        starter_spec(robot_bag, topics=['/scan', '/status'])


def test_train_with_topics_and_no_spec_stores_the_inferred_spec(robot_bag, tmp_path, capsys):
    pytest.importorskip('torch')
    model = tmp_path / 'model'
    assert main(['train', 'anomaly', '--bag', str(robot_bag), '--topics', '/imu,/joint_states',
                 '--out', str(model), '--arch', 'mlp', '--epochs', '1', '--hidden', '8',
                 '--latent', '2', '--slow', '0']) == 0
    text = capsys.readouterr().out
    assert 'spec: inferred from the topics asked of' in text
    meta = yaml.safe_load((model / 'model.yaml').read_text())
    assert list(meta['spec']['topics']) == ['/imu', '/joint_states']
    assert meta['spec']['rate_hz'] == 50.0 and meta['window']['length'] == 25
    assert '--topics /imu,/joint_states' in meta['training']['command']
    assert main(['train', 'anomaly', '--bag', str(robot_bag), '--topics', '/imu', '--spec',
                 str(tmp_path / 'x.yaml'), '--out', str(tmp_path / 'm2')]) == 2
    assert 'give --spec or --topics, not both' in capsys.readouterr().err
    # the model evaluates on its bag (no labels: time flagged and false alarms only)
    assert main(['eval', 'anomaly', '--model', str(model), '--bag', str(robot_bag), '--out',
                 str(tmp_path / 'eval'), '--no-plot']) == 0
    assert 'point-wise: no labelled point, so no precision' in capsys.readouterr().out
    report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
    assert report['metrics']['time']['normal_s'] == pytest.approx(30, abs=1)


def test_the_synthetic_robots_bag(tmp_path):
    from training.sim import SimConfig, simulate, write_bag

    bag = write_bag(simulate(SimConfig(duration_s=8, seed=5)), tmp_path / 'sim')
    spec = starter_spec(bag, topics=['/imu', '/motors', '/wrench_cmd']).spec
    hand = SignalSpec.load(Path(__file__).resolve().parents[1] / 'config' / 'sim_spec.yaml')
    assert (spec.rate_hz, spec.window, spec.stride) == (hand.rate_hz, hand.window, hand.stride)
    fields = {t.name: [f.path.text for f in t.fields] for t in spec.topics}
    assert fields['/motors'] == ['velocity[*]', 'effort[*]']
    assert fields['/wrench_cmd'] == ['wrench.force.z', 'wrench.torque.x', 'wrench.torque.y',
                                     'wrench.torque.z']
    rec = read_bag(bag, spec)
    # the hand-written spec's channels, plus the attitude it leaves out
    assert set(read_bag(bag, hand).channels) < set(rec.channels)


def test_a_real_husky_bag():
    bag = shared('bags', 'robot_localization', 'test1.bag')
    starter = starter_spec(bag)
    spec = starter.spec
    assert spec.topic_names == ['/husky_velocity_controller/odom', '/imu/data']
    assert (spec.rate_hz, spec.window, spec.stride) == (30.0, 16, 1)
    text = starter.yaml_text()
    assert '# topic /fix (sensor_msgs/msg/NavSatFix) left out: every numeric field is left ' \
           'out (a covariance, absolute position, constant in the bag)' in text
    rec = read_bag(bag, spec)
    assert len(rec.channels) == 14 and rec.duration_s > 380
