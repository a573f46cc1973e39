"""The synthetic hexacopter: physics, faults, and the rosbag2 it writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from encdec_ros import cli
from encdec_ros.errors import BagError, ConfigError
from encdec_ros.io.labels import (
    LABEL_TOPIC,
    SIDECAR_NAME,
    intervals_from_label_messages,
    read_labels_csv,
)
from training.sim import (
    FAULT_KINDS,
    IMU_CHANNELS,
    TOPICS,
    HexaParams,
    SimConfig,
    parse_faults,
    simulate,
    write_bag,
)

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
REPO = Path(__file__).resolve().parents[1]

# A short flight with one fault early, for the bag tests.
SHORT = dict(duration_s=4.0, seed=5, faults=('stuck',), fault_duration_s=1.0,
             first_fault_after_s=1.0, min_gap_s=1.0)
# Every fault in one flight (motor faults last), and the same flight without faults.
ALL = dict(duration_s=125.0, seed=11, fault_duration_s=8.0)


def read_raw(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """Raw (log time, CDR bytes) per topic, in log-time order."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(path) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, bytes(raw)))
    return out


def decode(raw: dict[str, list[tuple[int, bytes]]], topic: str) -> list:
    return [TYPESTORE.deserialize_cdr(data, TOPICS[topic]) for _, data in raw[topic]]


def storage_of(path: Path) -> str:
    meta = yaml.safe_load((path / 'metadata.yaml').read_text())
    return meta['rosbag2_bagfile_information']['storage_identifier']


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def tilt_deg(quat: np.ndarray) -> np.ndarray:
    x, y = quat[:, 0], quat[:, 1]
    return np.degrees(np.arccos(np.clip(1.0 - 2.0 * (x * x + y * y), -1.0, 1.0)))


@pytest.fixture(scope='module')
def short(tmp_path_factory):
    result = simulate(SimConfig(**SHORT))
    path = write_bag(result, tmp_path_factory.mktemp('sim') / 'short')
    return result, path, read_raw(path)


@pytest.fixture(scope='module')
def flights():
    faulty = simulate(SimConfig(faults=FAULT_KINDS, **ALL))
    return faulty, simulate(SimConfig(**ALL))


def test_bag_has_the_topics_types_rates_and_counts(short):
    result, path, raw = short
    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert reader.duration == pytest.approx(4e9, rel=0.01)
    assert types == TOPICS
    assert storage_of(path) == 'sqlite3'
    counts = {topic: len(msgs) for topic, msgs in raw.items()}
    assert counts == result.counts()
    assert counts['/imu'] == counts['/imu/clean'] == 800
    assert counts['/motors'] == counts['/wrench_cmd'] == counts['/actuator_cmd'] == 400
    imu_stamps = np.array([stamp_ns(m) for m in decode(raw, '/imu')])
    motor_stamps = np.array([stamp_ns(m) for m in decode(raw, '/motors')])
    assert np.all(np.diff(imu_stamps) == 5_000_000)  # 200 Hz
    assert np.all(np.diff(motor_stamps) == 10_000_000)  # 100 Hz
    assert imu_stamps[0] == 1_700_000_000 * 10**9


def test_log_time_is_the_stamp_plus_a_transport_delay(short):
    _, _, raw = short
    for topic in ('/imu', '/imu/clean', '/motors', '/wrench_cmd'):
        log = np.array([t for t, _ in raw[topic]])
        stamps = np.array([stamp_ns(m) for m in decode(raw, topic)])
        delay = log - stamps
        assert delay.min() >= 100_000 and delay.max() <= 1_000_000, topic
        assert len(np.unique(delay)) > 10, topic


def test_messages_read_back_equal_the_result_arrays(short):
    r, _, raw = short
    imu = decode(raw, '/imu')
    assert {m.header.frame_id for m in imu} == {'imu_link'}
    np.testing.assert_array_equal(
        [[m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
         for m in imu], r.imu_linear_acceleration)
    np.testing.assert_array_equal(
        [[m.angular_velocity.x, m.angular_velocity.y, m.angular_velocity.z] for m in imu],
        r.imu_angular_velocity)
    np.testing.assert_array_equal(
        [[m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w] for m in imu],
        r.imu_orientation)
    np.testing.assert_array_equal(imu[0].linear_acceleration_covariance,
                                  np.diag([0.05 ** 2] * 3).ravel())
    np.testing.assert_array_equal(imu[0].angular_velocity_covariance,
                                  np.diag([0.005 ** 2] * 3).ravel())
    clean = decode(raw, '/imu/clean')
    np.testing.assert_array_equal(
        [[m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
         for m in clean], r.clean_linear_acceleration)
    np.testing.assert_array_equal(
        [[m.angular_velocity.x, m.angular_velocity.y, m.angular_velocity.z] for m in clean],
        r.clean_angular_velocity)
    motors = decode(raw, '/motors')
    assert list(motors[0].name) == [f'motor_{i}' for i in range(6)]
    assert len(motors[0].position) == 0
    np.testing.assert_array_equal([m.velocity for m in motors], r.motor_speed)
    np.testing.assert_array_equal([m.effort for m in motors], r.motor_current)
    wrench = decode(raw, '/wrench_cmd')
    assert {m.header.frame_id for m in wrench} == {'base_link'}
    np.testing.assert_array_equal(
        [[m.wrench.force.x, m.wrench.force.y, m.wrench.force.z,
          m.wrench.torque.x, m.wrench.torque.y, m.wrench.torque.z] for m in wrench],
        r.wrench_cmd)
    actuators = decode(raw, '/actuator_cmd')
    dim = actuators[0].layout.dim[0]
    assert (dim.label, dim.size, dim.stride) == ('motors', 6, 6)
    np.testing.assert_array_equal([m.data for m in actuators], r.actuator_cmd)
    assert np.all((r.actuator_cmd >= 0.0) & (r.actuator_cmd <= 1.0))
    labels = decode(raw, LABEL_TOPIC)
    assert [m.data for m in labels] == r.label_text
    assert [t for t, _ in raw[LABEL_TOPIC]] == r.label_stamp_ns.tolist()


def test_labels_csv_round_trips_and_matches_the_label_topic(short):
    r, path, raw = short
    assert read_labels_csv(path / SIDECAR_NAME) == r.intervals
    (iv,) = r.intervals
    assert iv.kind == 'stuck' and iv.detail in IMU_CHANNELS
    assert iv.start_ns >= r.imu_stamp_ns[0] + 1_000_000_000
    assert iv.end_ns <= r.imu_stamp_ns[-1] - 1_000_000_000
    assert iv.end_ns - iv.start_ns == 1_000_000_000
    stamps = [t for t, _ in raw[LABEL_TOPIC]]
    texts = [m.data for m in decode(raw, LABEL_TOPIC)]
    rebuilt = intervals_from_label_messages(stamps, texts)
    assert [(i.start_ns, i.end_ns, i.kind) for i in rebuilt] == [
        (i.start_ns, i.end_ns, i.kind) for i in r.intervals]
    assert np.all(np.diff(stamps) <= 100_000_000)  # at least 10 Hz


def test_same_seed_gives_identical_messages_and_another_seed_differs(short, tmp_path):
    _, path, raw = short
    again = write_bag(simulate(SimConfig(**SHORT)), tmp_path / 'again')
    assert read_raw(again) == raw
    other = simulate(SimConfig(**{**SHORT, 'seed': 6}))
    first = simulate(SimConfig(**SHORT))
    assert not np.array_equal(other.imu_linear_acceleration, first.imu_linear_acceleration)
    assert not np.array_equal(other.clean_angular_velocity, first.clean_angular_velocity)
    assert not np.array_equal(other.motor_speed, first.motor_speed)


def test_mcap_storage_holds_the_same_messages(short, tmp_path):
    r, _, raw = short
    path = write_bag(r, tmp_path / 'mcap', storage='mcap')
    assert (path / 'mcap.mcap').is_file() and (path / SIDECAR_NAME).is_file()
    assert storage_of(path) == 'mcap'
    assert read_raw(path) == raw


def test_write_bag_refuses_to_overwrite(short):
    r, path, _ = short
    with pytest.raises(BagError, match=r'already exists; choose another output path'):
        write_bag(r, path)


def test_hover_physics_is_sane():
    r = simulate(SimConfig(duration_s=5.0, seed=2, trajectory='hover'))
    p = r.params
    mg = p.mass_kg * p.gravity_m_s2
    assert r.clean_linear_acceleration[:, 2].mean() == pytest.approx(9.81, abs=0.01)
    assert r.imu_linear_acceleration[:, 2].mean() == pytest.approx(9.81, abs=0.1)
    assert np.abs(r.clean_linear_acceleration[:, :2]).max() < 0.05
    assert r.rotor_thrust.sum(axis=1).mean() == pytest.approx(mg, rel=1e-3)
    assert r.motor_speed.mean() == pytest.approx(p.hover_omega_rad_s, rel=0.01)
    assert 400 < p.hover_omega_rad_s < 700  # a 10-inch propeller
    assert np.all((r.motor_current > 2.0) & (r.motor_current < 8.0))
    expected = p.no_load_current_a + p.torque_coeff * p.hover_omega_rad_s ** 2 / (
        p.torque_constant_nm_per_a)
    assert r.motor_current.mean() == pytest.approx(expected, rel=0.02)
    np.testing.assert_allclose(r.wrench_cmd[:, 2].mean(), mg, rtol=0.01)
    gyro_noise = r.imu_angular_velocity - r.clean_angular_velocity
    assert gyro_noise.std(axis=0) == pytest.approx([0.005] * 3, rel=0.2)
    accel_noise = r.imu_linear_acceleration - r.clean_linear_acceleration
    assert np.all(accel_noise.std(axis=0) > 0.05)  # white noise plus rotor vibration
    assert np.all(accel_noise.std(axis=0) < 0.5)
    assert np.abs(r.position - r.position[0]).max() < 0.01


def test_random_flight_is_varied_and_bounded(flights):
    _, base = flights
    assert np.ptp(base.position[:, :2], axis=0).max() > 5.0  # it travels
    assert np.ptp(base.position[:, 2]) > 1.0  # and climbs
    assert tilt_deg(base.clean_orientation).max() < 40.0
    assert base.position[:, 2].min() > 1.0
    assert np.abs(base.velocity).max() < 10.0
    for name in ('imu_linear_acceleration', 'imu_angular_velocity', 'motor_speed',
                 'motor_current', 'wrench_cmd', 'actuator_cmd'):
        assert np.all(np.isfinite(getattr(base, name))), name


def test_faults_are_scheduled_apart_and_labelled(flights):
    faulty, _ = flights
    t0 = faulty.imu_stamp_ns[0]
    ivs = faulty.intervals
    assert [iv.kind for iv in ivs] == list(FAULT_KINDS)
    assert ivs[0].start_ns - t0 >= 15e9
    for a, b in zip(ivs, ivs[1:]):
        assert b.start_ns - a.end_ns >= 10e9
    assert all(iv.duration_s == pytest.approx(8.0) for iv in ivs)
    assert faulty.imu_stamp_ns[-1] - ivs[-1].end_ns >= 9.9e9


def _imu(r) -> np.ndarray:
    return np.concatenate([r.imu_linear_acceleration, r.imu_angular_velocity], axis=1)


def _interval(r, kind: str):
    (iv,) = [iv for iv in r.intervals if iv.kind == kind]
    inside = (r.imu_stamp_ns >= iv.start_ns) & (r.imu_stamp_ns < iv.end_ns)
    motor_inside = (r.motor_stamp_ns >= iv.start_ns) & (r.motor_stamp_ns < iv.end_ns)
    return iv, inside, motor_inside


def _outside_other_faults(r, kind: str) -> np.ndarray:
    mask = np.ones(len(r.imu_stamp_ns), dtype=bool)
    for iv in r.intervals:
        if iv.kind != kind:
            mask &= (r.imu_stamp_ns < iv.start_ns) | (r.imu_stamp_ns >= iv.end_ns)
    return mask


def _before_motor_faults(r) -> np.ndarray:
    first = min(iv.start_ns for iv in r.intervals if iv.kind.startswith('motor_'))
    return r.imu_stamp_ns < first


@pytest.mark.parametrize('kind', ['stuck', 'bias_drift', 'spikes'])
def test_channel_faults_change_only_their_channel_inside_their_interval(flights, kind):
    faulty, base = flights
    iv, inside, _ = _interval(faulty, kind)
    ch = IMU_CHANNELS.index(iv.detail)
    diff = _imu(faulty) - _imu(base)
    early = _before_motor_faults(faulty)
    changed = (early & _outside_other_faults(faulty, kind))[:, None] & (diff != 0.0)
    assert changed[:, ch].any()
    assert not changed[~inside].any()  # nothing outside the interval
    assert not np.delete(changed, ch, axis=1).any()  # no other channel
    # /imu/clean is ground truth: sensor faults never reach it
    np.testing.assert_array_equal(faulty.clean_angular_velocity[early],
                                  base.clean_angular_velocity[early])
    values = _imu(faulty)[inside, ch]
    gyro = ch >= 3
    if kind == 'stuck':
        assert np.ptp(values) == 0.0
        assert values[0] == _imu(faulty)[np.flatnonzero(inside)[0] - 1, ch]
    elif kind == 'bias_drift':
        ramp = diff[inside, ch]
        peak = np.abs(ramp[-1])
        assert (0.08 <= peak <= 0.15) if gyro else (0.8 <= peak <= 1.5)
        assert np.abs(ramp[:len(ramp) // 10]).max() <= peak / 9  # it ramps up
        assert np.all(np.diff(np.abs(ramp)) >= 0.0)
    else:
        spikes = np.abs(diff[inside, ch]) > (0.5 if gyro else 5.0)
        assert 1 <= spikes.sum() <= 0.1 * inside.sum()


def test_vibration_fault_shakes_the_accelerometer_only_inside(flights):
    faulty, base = flights
    iv, inside, _ = _interval(faulty, 'vibration')
    assert iv.detail.startswith('motor_')
    shake = faulty.imu_linear_acceleration - faulty.clean_linear_acceleration
    before = (faulty.imu_stamp_ns < iv.start_ns) & (faulty.imu_stamp_ns >= iv.start_ns - 8e9)
    late = inside & (faulty.imu_stamp_ns >= iv.start_ns + 4e9)
    assert np.all(shake[late, :2].std(axis=0) > 2.5 * shake[before, :2].std(axis=0))
    diff = _imu(faulty) - _imu(base)
    early = _before_motor_faults(faulty)
    vib_changed = early & _outside_other_faults(faulty, 'vibration') & (
        diff[:, :2] != 0.0).any(axis=1)
    assert vib_changed[inside].any() and not vib_changed[~inside].any()
    assert not (diff[inside, 2:] != 0.0).any()  # z and gyro untouched
    np.testing.assert_array_equal(faulty.clean_linear_acceleration[early],
                                  base.clean_linear_acceleration[early])


def test_motor_degradation_raises_that_motors_speed_and_current(flights):
    faulty, base = flights
    iv, inside, motor_inside = _interval(faulty, 'motor_degradation')
    k = int(iv.detail.removeprefix('motor_'))
    settled = motor_inside & (faulty.motor_stamp_ns >= iv.start_ns + 1e9)
    speed_ratio = faulty.motor_speed[settled, k].mean() / base.motor_speed[settled, k].mean()
    current_ratio = (faulty.motor_current[settled, k].mean()
                     / base.motor_current[settled, k].mean())
    assert 1.04 < speed_ratio < 1.3
    assert 1.08 < current_ratio < 1.6
    before = faulty.motor_stamp_ns < iv.start_ns
    np.testing.assert_array_equal(faulty.motor_speed[before], base.motor_speed[before])
    assert tilt_deg(faulty.clean_orientation[inside]).max() < 40.0
    # the controller restores the lost thrust: the physics shows on /imu/clean too
    assert not np.array_equal(faulty.clean_angular_velocity[inside],
                              base.clean_angular_velocity[inside])


def test_motor_failure_stops_the_motor_and_the_vehicle_stays_up(flights):
    faulty, base = flights
    iv, inside, motor_inside = _interval(faulty, 'motor_failure')
    k = int(iv.detail.removeprefix('motor_'))
    hover = faulty.params.hover_omega_rad_s
    dead = motor_inside & (faulty.motor_stamp_ns >= iv.start_ns + 3e8)
    assert faulty.motor_speed[dead, k].max() < 0.05 * hover
    assert faulty.motor_current[dead, k].max() < 0.3
    others = np.delete(faulty.motor_speed[dead], k, axis=1)
    assert others.max() < faulty.params.omega_max_rad_s
    assert tilt_deg(faulty.clean_orientation).max() < 45.0
    assert np.abs(faulty.clean_angular_velocity[:, :2]).max() < 4.0
    assert np.abs(faulty.position - base.position)[inside].max() < 2.0
    assert faulty.position[:, 2].min() > 1.0
    after = faulty.motor_stamp_ns >= iv.end_ns + 2e9
    assert faulty.motor_speed[after, k].mean() > 0.8 * hover  # restored
    for name in ('imu_linear_acceleration', 'imu_angular_velocity', 'imu_orientation',
                 'motor_speed', 'motor_current', 'actuator_cmd', 'position'):
        assert np.all(np.isfinite(getattr(faulty, name))), name


def test_effectiveness_matrix_matches_the_hexa_x_geometry():
    p = HexaParams()
    b = p.effectiveness_matrix()
    assert b.shape == (6, 6)
    assert np.linalg.matrix_rank(b) == 4
    hover = np.full(6, p.mass_kg * p.gravity_m_s2 / 6)
    np.testing.assert_allclose(b @ hover, [0, 0, p.mass_kg * p.gravity_m_s2, 0, 0, 0],
                               atol=1e-12)
    # motor_0 sits on the right (y < 0) and spins clockwise: it rolls left-side up
    # (Mx < 0) and twists the body counter-clockwise (Mz > 0)
    assert b[3, 0] < 0 and b[4, 0] == pytest.approx(0.0) and b[5, 0] > 0
    angles = np.degrees(np.arctan2(p.rotor_positions()[:, 1], p.rotor_positions()[:, 0]))
    order = np.argsort(angles)
    assert np.all(np.diff(np.sign(b[5, order])) != 0)  # spins alternate around the circle
    np.testing.assert_allclose(np.hypot(*p.rotor_positions()[:, :2].T), 0.275)


@pytest.mark.parametrize(('options', 'message'), [
    (dict(faults=('stuck', 'wobble')), r"unknown fault kind 'wobble'; choose from stuck"),
    (dict(duration_s=60.0, faults=('stuck', 'spikes')),
     r'duration_s=60 is too short for 2 fault\(s\).*need at least 65 s'),
    (dict(duration_s=0.5), r'duration_s must be at least 1 s'),
    (dict(fault_duration_s=0.0, faults=('stuck',)), r'fault_duration_s must be positive'),
    (dict(imu_rate_hz=150.0), r'imu_rate_hz=150 must divide physics_rate_hz=200'),
    (dict(storage='hdf5'), r'storage must be sqlite3 or mcap'),
])
def test_bad_options_raise_config_error(options, message):
    with pytest.raises(ConfigError, match=message):
        SimConfig(**options)


def test_parse_faults():
    assert parse_faults('all') == FAULT_KINDS
    assert parse_faults('none') == parse_faults('') == ()
    assert parse_faults('stuck, motor_failure') == ('stuck', 'motor_failure')
    with pytest.raises(ConfigError, match=r"unknown fault kind 'stuk'"):
        parse_faults('stuk')


def test_cli_writes_a_bag_and_prints_a_summary(tmp_path, monkeypatch, capsys):
    from encdec_ros.cli import sim as cli_sim
    assert cli_sim.FAULT_CHOICES == FAULT_KINDS
    # only this command's module, so the test does not depend on its siblings
    monkeypatch.setattr(cli, 'COMMAND_MODULES', ('sim',))
    out = tmp_path / 'cli_bag'
    argv = ['sim', '--out', str(out), '--duration', '6', '--seed', '3', '--faults', 'none',
            '--storage', 'mcap']
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f'wrote {out} (mcap)' in text
    assert '/imu/clean' in text and '1200' in text and 'faults: none' in text
    assert (out / 'metadata.yaml').is_file() and (out / SIDECAR_NAME).is_file()
    assert cli.main(argv) == 2  # refuses to overwrite, one line on stderr
    err = capsys.readouterr().err
    assert err.startswith('encdec: error: output path') and err.count('\n') == 1
    assert cli.main(['sim', '--out', str(tmp_path / 'x'), '--faults', 'wobble']) == 2
    assert "unknown fault kind 'wobble'" in capsys.readouterr().err


def test_importing_the_simulator_does_not_import_torch():
    code = 'import sys, training.sim; sys.exit(int("torch" in sys.modules))'
    assert subprocess.run([sys.executable, '-c', code], cwd=REPO).returncode == 0
