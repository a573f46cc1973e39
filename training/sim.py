"""A synthetic hexacopter that writes real rosbag2 files with labelled faults.

The vehicle is a PX4 hexa-X (six rotors on a circle, alternating spin directions) of about
2 kg, flying a smooth random trajectory (minimum-jerk moves between random waypoints, hover
segments, turns and climbs, with slow sinusoidal wander on top) through Ornstein-Uhlenbeck
wind gusts. A cascaded controller (position PID -> thrust vector -> tilt-prioritised
attitude P -> body-rate PI) produces a body wrench, which a pseudo-inverse allocator with
saturation handling (roll/pitch before thrust before yaw) turns into motor commands. Motors
follow their commands with a first-order lag, discretised exactly.

Everything is in REP-103 frames: the world is ENU (z up), the body ``base_link`` is FLU
(x forward, y left, z up). The IMU sits at the centre of mass (``imu_link`` = ``base_link``),
and its accelerometer reads specific force, about +9.81 m/s^2 on z at hover.

Usage::

    from training.sim import SimConfig, simulate, write_bag
    result = simulate(SimConfig(duration_s=300, seed=1, faults=('stuck', 'motor_failure')))
    write_bag(result, 'out/flight_1')        # rosbag2 directory + labels.csv

Topics (header stamps are sample times; bag log times add a 0.1-1 ms transport delay):

- ``/imu`` (sensor_msgs/Imu, 200 Hz, ``imu_link``): specific force, body rates and attitude
  with white noise, random-walk biases, aliased rotor vibration and the sensor faults;
  covariances hold the white-noise variances;
- ``/imu/clean`` (same type and stamps): the truth, covariances zero;
- ``/motors`` (sensor_msgs/JointState, 100 Hz): measured rotor speed (rad/s) as velocity
  and motor current (A) as effort for ``motor_0`` .. ``motor_5``;
- ``/wrench_cmd`` (geometry_msgs/WrenchStamped, 100 Hz, ``base_link``): commanded wrench;
- ``/actuator_cmd`` (std_msgs/Float64MultiArray, 100 Hz): normalised motor commands;
- :data:`encdec_ros.io.labels.LABEL_TOPIC`: active fault kinds at 10 Hz and at every change.

Faults (one at a time, 8-15 s each, >= 10 s apart, the first after >= 15 s; labels.csv
``detail`` names the channel or motor):

- ``stuck``: one /imu channel holds its last value;
- ``bias_drift``: one channel's bias ramps to 0.08-0.15 rad/s or 0.8-1.5 m/s^2;
- ``spikes``: about 3 % of one channel's samples jump by 1-3 rad/s or 8-25 m/s^2;
- ``vibration``: a damaged propeller: its once-per-revolution accelerometer vibration
  grows 8-12 fold over the first 30 % of the interval;
- ``motor_degradation``: one rotor loses 20-40 % of its thrust coefficient (its drag
  torque stays), so the controller spins it faster and it draws more current;
- ``motor_failure``: one motor stops; after 0.1 s the allocator drops it and the opposite
  rotor idles too, the vehicle holds position but loses yaw authority in one direction
  (as a real PNPNPN hexa does); the motor is restored when the interval ends.

Sensor faults change /imu only; motor faults change the physics, so /imu/clean shows them.

Normal changes of operating point (no label; a detector should live with them):

- ``payload_kg``: a mass picked up at ``payload_at_s`` (default: half-way); the controller
  keeps its nominal mass and its integrators take up the difference, so the motors spin
  faster and draw more current from then on;
- ``warmup_s``: a warm-up drift with this time constant (tens of minutes on a real vehicle):
  each accelerometer and gyro axis drifts by up to ``warmup_accel_bias`` / ``warmup_gyro_bias``
  (random signs) and the motor currents rise by ``warmup_current`` as the torque constant of
  a warm motor falls, all as ``1 - exp(-t / warmup_s)``.

The same seed gives the same data bit for bit. Trajectory, wind, sensor noise, fault
schedule and transport delays draw from separate random streams, so a run with faults and
one without (same seed and duration) share their trajectory and noise: sensor faults then
differ from the fault-free run only inside their intervals.

This module needs numpy and scipy only; rosbags is imported when a bag is written.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy.signal import lfilter

from encdec_ros.errors import ConfigError
from encdec_ros.io.labels import LABEL_TOPIC, LABEL_TYPE, SIDECAR_NAME, Interval, write_labels_csv

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

FAULT_KINDS: tuple[str, ...] = (
    'stuck', 'bias_drift', 'spikes', 'vibration', 'motor_degradation', 'motor_failure')
SENSOR_FAULTS: frozenset[str] = frozenset({'stuck', 'bias_drift', 'spikes', 'vibration'})
MOTOR_FAULTS: frozenset[str] = frozenset({'motor_degradation', 'motor_failure'})
IMU_CHANNELS: tuple[str, ...] = (
    'linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z',
    'angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z')
MOTOR_NAMES: tuple[str, ...] = tuple(f'motor_{i}' for i in range(6))
STORAGES: tuple[str, ...] = ('sqlite3', 'mcap')
TRAJECTORIES: tuple[str, ...] = ('random', 'hover')

IMU_TOPIC = '/imu'
IMU_CLEAN_TOPIC = '/imu/clean'
MOTORS_TOPIC = '/motors'
WRENCH_TOPIC = '/wrench_cmd'
ACTUATOR_TOPIC = '/actuator_cmd'
TOPICS: dict[str, str] = {
    IMU_TOPIC: 'sensor_msgs/msg/Imu',
    IMU_CLEAN_TOPIC: 'sensor_msgs/msg/Imu',
    MOTORS_TOPIC: 'sensor_msgs/msg/JointState',
    WRENCH_TOPIC: 'geometry_msgs/msg/WrenchStamped',
    ACTUATOR_TOPIC: 'std_msgs/msg/Float64MultiArray',
    LABEL_TOPIC: LABEL_TYPE,
}
IMU_FRAME = 'imu_link'
BODY_FRAME = 'base_link'
LABEL_RATE_HZ = 10.0


@dataclass(frozen=True)
class HexaParams:
    """Geometry and physical constants of the simulated hexa-X, in SI units.

    Motor ``motor_i`` is PX4's motor ``i + 1`` of the 'Hexarotor x' airframe. Seen from
    above, with the nose up the page (angles in the FLU body frame, counter-clockwise from
    +x toward +y, i.e. toward the left)::

                 front
          m2 (CW)      m4 (CCW)        m0:  -90 deg, right,       CW
                 \\    /                m1:  +90 deg, left,        CCW
       m1 (CCW) --  +  -- m0 (CW)      m2:  +30 deg, front-left,  CW
                 /    \\                m3: -150 deg, rear-right,  CCW
          m5 (CW)      m3 (CCW)        m4:  -30 deg, front-right, CCW
                 rear                  m5: +150 deg, rear-left,   CW

    Rotor ``i`` at body position ``(x_i, y_i, 0)`` spinning at ``omega_i`` (rad/s) gives a
    thrust ``T_i = thrust_coeff * omega_i^2`` along +z and a reaction torque about +z of
    ``-direction_i * moment_ratio_m * T_i`` (a counter-clockwise rotor, ``direction = +1``,
    twists the body clockwise). See :meth:`effectiveness_matrix`.
    """

    mass_kg: float = 2.0
    inertia_kgm2: tuple[float, float, float] = (0.035, 0.035, 0.060)  # diagonal, FLU axes
    arm_length_m: float = 0.275  # rotor centre to body centre (PX4 hexa-X default)
    rotor_angles_deg: tuple[float, ...] = (-90.0, 90.0, 30.0, -150.0, -30.0, 150.0)
    directions: tuple[int, ...] = (-1, 1, -1, 1, 1, -1)  # +1 counter-clockwise from above
    thrust_coeff: float = 1.1e-5  # N / (rad/s)^2, about a 10-inch propeller
    moment_ratio_m: float = 0.016  # rotor drag torque / thrust, N m / N
    omega_max_rad_s: float = 1000.0  # full command; 11 N per rotor, thrust/weight 3.4
    motor_time_constant_s: float = 0.03  # first-order rotor speed response
    torque_constant_nm_per_a: float = 0.0136  # Kt of a 700 KV motor
    no_load_current_a: float = 0.5  # drawn by a spinning motor with no load
    drag_coeff_xy: float = 0.35  # rotor and body drag, N per m/s of air speed, body x/y
    drag_coeff_z: float = 0.5  # same along body z
    rot_damping_nms: tuple[float, float, float] = (0.004, 0.004, 0.012)  # N m per rad/s
    gravity_m_s2: float = 9.81

    @property
    def n_rotors(self) -> int:
        """Number of rotors (6)."""
        return len(self.rotor_angles_deg)

    @property
    def torque_coeff(self) -> float:
        """Rotor drag torque coefficient in N m / (rad/s)^2."""
        return self.moment_ratio_m * self.thrust_coeff

    @property
    def max_thrust_n(self) -> float:
        """Thrust of one healthy rotor at full command, in newtons."""
        return self.thrust_coeff * self.omega_max_rad_s ** 2

    @property
    def hover_omega_rad_s(self) -> float:
        """Rotor speed of a healthy vehicle hovering on all six rotors, in rad/s."""
        return math.sqrt(self.mass_kg * self.gravity_m_s2 / self.n_rotors / self.thrust_coeff)

    def rotor_positions(self) -> np.ndarray:
        """Rotor centres in base_link (FLU), in metres; shape (6, 3)."""
        ang = np.radians(np.asarray(self.rotor_angles_deg, dtype=np.float64))
        r = self.arm_length_m
        return np.stack([r * np.cos(ang), r * np.sin(ang), np.zeros_like(ang)], axis=1)

    def effectiveness_matrix(self) -> np.ndarray:
        """Control effectiveness B, shape (6, 6): body wrench = B @ rotor thrusts (N).

        Rows are Fx, Fy, Fz (N) and Mx, My, Mz (N m) in base_link (FLU); column ``i`` is
        motor ``i``'s thrust in newtons. Fx and Fy rows are zero (rotors are not tilted).
        """
        pos = self.rotor_positions()
        b = np.zeros((6, self.n_rotors))
        b[2] = 1.0
        b[3] = pos[:, 1]  # r x F with F = (0, 0, T): Mx = y T
        b[4] = -pos[:, 0]  # My = -x T
        b[5] = -np.asarray(self.directions, dtype=np.float64) * self.moment_ratio_m
        return b


@dataclass(frozen=True)
class SensorParams:
    """IMU and motor-telemetry noise (standard deviations, SI units)."""

    accel_noise: float = 0.05  # m/s^2, white, per sample
    warmup_accel_bias: float = 0.3  # m/s^2 per axis reached by a warm-up drift, random sign
    warmup_gyro_bias: float = 0.01  # rad/s per axis
    warmup_current: float = 0.06  # relative rise of motor current (torque constant falls)
    gyro_noise: float = 0.005  # rad/s, white, per sample
    orientation_noise: float = 0.005  # rad, white, per axis
    accel_bias_init: float = 0.03  # m/s^2, turn-on bias
    gyro_bias_init: float = 0.001  # rad/s
    accel_bias_walk: float = 0.001  # m/s^2 per sqrt(s)
    gyro_bias_walk: float = 2e-5  # rad/s per sqrt(s)
    vibration_1x: float = 0.1  # m/s^2 per rotor at hover speed, radial (x/y), imbalance
    vibration_2x: float = 0.06  # m/s^2 per rotor at hover speed, z, blade passing
    speed_noise: float = 2.0  # rad/s, measured rotor speed
    current_noise: float = 0.05  # A, measured motor current
    transport_delay_ms: tuple[float, float] = (0.1, 1.0)  # stamp -> bag receive time


@dataclass(frozen=True)
class _Gains:
    """Controller gains (accelerations per error; rate loop normalised by inertia)."""

    pos_p_xy: float = 1.2
    pos_p_z: float = 1.5
    vel_p_xy: float = 2.2
    vel_p_z: float = 3.0
    pos_i_xy: float = 0.15
    pos_i_z: float = 0.4
    pos_i_limit: float = 4.0  # m s
    max_tilt_rad: float = math.radians(35.0)
    att_p: float = 7.0
    yaw_p: float = 2.5
    rate_limit_rp: float = 3.5
    rate_limit_yaw: float = 1.5
    rate_p_rp: float = 22.0
    rate_i_rp: float = 8.0
    rate_p_yaw: float = 8.0
    rate_i_yaw: float = 2.0
    rate_i_torque_limit_rp: float = 0.6  # N m
    rate_i_torque_limit_yaw: float = 0.2  # N m
    failure_detect_s: float = 0.1  # a failed motor leaves the allocation after this


@dataclass
class SimConfig:
    """Options of one simulated flight; invalid values raise :class:`ConfigError`."""

    duration_s: float = 120.0
    seed: int = 0
    faults: tuple[str, ...] = ()  # kinds from FAULT_KINDS, injected in this order
    fault_duration_s: float | None = None  # None: each fault lasts 8-15 s at random
    first_fault_after_s: float = 15.0  # normal flight before the first fault
    min_gap_s: float = 10.0  # normal flight between faults and after the last one
    start_time_ns: int = 1_700_000_000 * 10**9  # stamp of the first sample
    physics_rate_hz: float = 200.0  # simulation and controller step
    imu_rate_hz: float = 200.0  # must divide physics_rate_hz
    motor_rate_hz: float = 100.0  # /motors, /wrench_cmd, /actuator_cmd; divides physics rate
    storage: str = 'sqlite3'  # 'sqlite3' or 'mcap'
    trajectory: str = 'random'  # 'random' flight or 'hover' in place (calm air)
    payload_kg: float = 0.0  # mass picked up mid-flight (a normal change, not a fault)
    payload_at_s: float | None = None  # when (None: half-way through the flight)
    warmup_s: float = 0.0  # time constant of a warm-up drift (0: none), see module docstring
    params: HexaParams = field(default_factory=HexaParams)
    sensors: SensorParams = field(default_factory=SensorParams)

    def __post_init__(self) -> None:
        if isinstance(self.faults, str):
            self.faults = parse_faults(self.faults)
        self.faults = tuple(self.faults)
        self.validate()

    @property
    def max_fault_duration_s(self) -> float:
        """Longest duration a fault of this config can take, in seconds."""
        return 15.0 if self.fault_duration_s is None else float(self.fault_duration_s)

    def validate(self) -> None:
        """Raise :class:`ConfigError` with one sentence if an option is invalid."""
        for kind in self.faults:
            _check_fault_kind(kind)
        if not self.duration_s >= 1.0:
            msg = f'duration_s must be at least 1 s, got {self.duration_s:g}'
            raise ConfigError(msg)
        if self.fault_duration_s is not None and not self.fault_duration_s > 0:
            msg = f'fault_duration_s must be positive, got {self.fault_duration_s:g}'
            raise ConfigError(msg)
        if self.first_fault_after_s < 0 or self.min_gap_s < 0:
            msg = 'first_fault_after_s and min_gap_s must not be negative'
            raise ConfigError(msg)
        if self.storage not in STORAGES:
            msg = f'storage must be sqlite3 or mcap, got {self.storage!r}'
            raise ConfigError(msg)
        if not 0.0 <= self.payload_kg <= 2.0 * self.params.mass_kg:
            msg = (f'payload_kg must be within 0-{2.0 * self.params.mass_kg:g} kg (twice the '
                   f'vehicle), got {self.payload_kg:g}')
            raise ConfigError(msg)
        if self.payload_at_s is not None and not 0.0 <= self.payload_at_s <= self.duration_s:
            msg = (f'payload_at_s must be within the flight (0-{self.duration_s:g} s), got '
                   f'{self.payload_at_s:g}')
            raise ConfigError(msg)
        if not self.warmup_s >= 0.0:
            msg = f'warmup_s must be 0 (none) or a positive time constant, got {self.warmup_s:g}'
            raise ConfigError(msg)
        if self.trajectory not in TRAJECTORIES:
            msg = f'trajectory must be random or hover, got {self.trajectory!r}'
            raise ConfigError(msg)
        if not 100.0 <= self.physics_rate_hz <= 2000.0:
            msg = f'physics_rate_hz must be within 100-2000 Hz, got {self.physics_rate_hz:g}'
            raise ConfigError(msg)
        for name in ('imu_rate_hz', 'motor_rate_hz'):
            rate = getattr(self, name)
            ratio = self.physics_rate_hz / rate if rate > 0 else 0.0
            if rate <= 0 or abs(ratio - round(ratio)) > 1e-9:
                msg = (f'{name}={rate:g} must divide physics_rate_hz='
                       f'{self.physics_rate_hz:g} into a whole number of steps')
                raise ConfigError(msg)
        if self.faults:
            n = len(self.faults)
            need = (self.first_fault_after_s + n * self.max_fault_duration_s
                    + n * self.min_gap_s)
            if self.duration_s < need:
                msg = (f'duration_s={self.duration_s:g} is too short for {n} fault(s) of up '
                       f'to {self.max_fault_duration_s:g} s each, which need at least '
                       f'{need:g} s ({self.first_fault_after_s:g} s before the first and '
                       f'{self.min_gap_s:g} s after each); raise the duration or lower '
                       f'the fault duration')
                raise ConfigError(msg)


def parse_faults(text: str) -> tuple[str, ...]:
    """Parse ``all``, ``none``/empty or a comma-separated list of fault kinds."""
    text = text.strip()
    if text in ('', 'none'):
        return ()
    if text == 'all':
        return FAULT_KINDS
    kinds = tuple(k.strip() for k in text.split(',') if k.strip())
    for kind in kinds:
        _check_fault_kind(kind)
    return kinds


def _check_fault_kind(kind: str) -> None:
    if kind not in FAULT_KINDS:
        msg = (f'unknown fault kind {kind!r}; choose from {", ".join(FAULT_KINDS)}, '
               f'or all or none')
        raise ConfigError(msg)


@dataclass
class SimResult:
    """Everything one flight produced, as numpy arrays (float64 unless noted).

    Times are int64 nanoseconds since the epoch. ``*_receive_ns`` are the bag's log times
    (stamp plus a transport delay). Quaternions are (x, y, z, w), world ENU <- body FLU.
    ``wrench_cmd`` columns are force x, y, z then torque x, y, z in base_link: the wrench
    the attitude controller asked for, before the allocator met the motor limits.
    ``actuator_cmd`` is the allocator's answer, each motor's thrust over its full thrust.
    """

    config: SimConfig
    imu_stamp_ns: np.ndarray  # (N,) int64
    imu_receive_ns: np.ndarray  # (N,) int64
    imu_clean_receive_ns: np.ndarray  # (N,) int64
    imu_linear_acceleration: np.ndarray  # (N, 3) m/s^2, noisy, with faults
    imu_angular_velocity: np.ndarray  # (N, 3) rad/s
    imu_orientation: np.ndarray  # (N, 4)
    clean_linear_acceleration: np.ndarray  # (N, 3) truth
    clean_angular_velocity: np.ndarray  # (N, 3)
    clean_orientation: np.ndarray  # (N, 4)
    linear_acceleration_covariance: np.ndarray  # (9,)
    angular_velocity_covariance: np.ndarray  # (9,)
    orientation_covariance: np.ndarray  # (9,)
    motor_stamp_ns: np.ndarray  # (M,) int64, shared by /motors, /wrench_cmd, /actuator_cmd
    motor_receive_ns: np.ndarray  # (M,) int64
    wrench_receive_ns: np.ndarray  # (M,) int64
    actuator_receive_ns: np.ndarray  # (M,) int64
    motor_speed: np.ndarray  # (M, 6) rad/s, measured
    motor_current: np.ndarray  # (M, 6) A, measured
    wrench_cmd: np.ndarray  # (M, 6)
    actuator_cmd: np.ndarray  # (M, 6) normalised thrust command in [0, 1]
    label_stamp_ns: np.ndarray  # (L,) int64, also the label messages' log times
    label_text: list[str]
    intervals: list[Interval]
    position: np.ndarray  # (N, 3) m, world ENU, truth
    velocity: np.ndarray  # (N, 3) m/s, world ENU, truth
    wind: np.ndarray  # (N, 3) m/s, world ENU
    rotor_speed: np.ndarray  # (M, 6) rad/s, truth
    rotor_thrust: np.ndarray  # (M, 6) N, truth
    wall_time_s: float = 0.0

    @property
    def params(self) -> HexaParams:
        """The vehicle's constants."""
        return self.config.params

    def counts(self) -> dict[str, int]:
        """Number of messages per topic."""
        n_imu, n_mot = len(self.imu_stamp_ns), len(self.motor_stamp_ns)
        return {IMU_TOPIC: n_imu, IMU_CLEAN_TOPIC: n_imu, MOTORS_TOPIC: n_mot,
                WRENCH_TOPIC: n_mot, ACTUATOR_TOPIC: n_mot, LABEL_TOPIC: len(self.label_text)}


@dataclass(frozen=True)
class _Fault:
    kind: str
    start: int  # physics step, inclusive
    end: int  # physics step, exclusive
    channel: int  # IMU channel or motor index
    magnitude: float  # kind-specific, see _schedule_faults


def simulate(config: SimConfig, *, progress: bool = False) -> SimResult:
    """Fly the hexacopter as configured and return every recorded signal.

    With ``progress`` a tqdm bar on stderr shows the physics loop when it runs longer than
    a second on a terminal.
    """
    config.validate()
    t_wall = time.perf_counter()
    seeds = np.random.SeedSequence(config.seed).spawn(6)
    rng_traj, rng_wind, rng_sens, rng_fault, rng_delay, rng_vib = (
        np.random.default_rng(s) for s in seeds)
    p = config.params
    dt = 1.0 / config.physics_rate_hz
    n = int(round(config.duration_s * config.physics_rate_hz))
    ref = _reference(rng_traj, n, dt, hover=config.trajectory == 'hover')
    wind, torque_dist = _wind(rng_wind, n, dt, calm=config.trajectory == 'hover')
    faults = _schedule_faults(rng_fault, config, n, dt)
    payload = None
    if config.payload_kg > 0:
        at = config.duration_s / 2 if config.payload_at_s is None else config.payload_at_s
        payload = (min(n - 1, int(round(at / dt))), p.mass_kg + config.payload_kg)

    rec = _fly(p, _Gains(), ref, wind, torque_dist, faults, dt, progress=progress,
               payload=payload)

    imu_step = int(round(config.physics_rate_hz / config.imu_rate_hz))
    mot_step = int(round(config.physics_rate_hz / config.motor_rate_hz))
    period_ns = int(round(1e9 * dt))
    stamps = config.start_time_ns + np.arange(n, dtype=np.int64) * period_ns
    imu_idx = np.arange(0, n, imu_step)
    mot_idx = np.arange(0, n, mot_step)

    quat = rec[:, 0:4]
    gyro = rec[:, 4:7]
    accel = rec[:, 7:10]
    omega = rec[:, 16:22]
    kf_eff = rec[:, 32:38]
    energised = rec[:, 38:44] > 0.5

    # Sensor model (vectorised): bias random walk, white noise, rotor vibration, faults.
    s = config.sensors
    n_imu = len(imu_idx)
    dt_imu = dt * imu_step
    accel_bias = (rng_sens.normal(0.0, s.accel_bias_init, 3)
                  + np.cumsum(rng_sens.normal(0.0, s.accel_bias_walk * math.sqrt(dt_imu),
                                              (n_imu, 3)), axis=0))
    gyro_bias = (rng_sens.normal(0.0, s.gyro_bias_init, 3)
                 + np.cumsum(rng_sens.normal(0.0, s.gyro_bias_walk * math.sqrt(dt_imu),
                                             (n_imu, 3)), axis=0))
    accel_white = rng_sens.normal(0.0, s.accel_noise, (n_imu, 3))
    gyro_white = rng_sens.normal(0.0, s.gyro_noise, (n_imu, 3))
    att_noise = rng_sens.normal(0.0, s.orientation_noise, (n_imu, 3))
    speed_white = rng_sens.normal(0.0, s.speed_noise, (len(mot_idx), 6))
    current_white = rng_sens.normal(0.0, s.current_noise, (len(mot_idx), 6))

    damage = np.ones((n, 6))  # imbalance multiplier per rotor (vibration fault)
    for f in faults:
        if f.kind == 'vibration':
            length = f.end - f.start
            ramp = np.clip(np.arange(length) / max(1.0, 0.3 * length), 0.0, 1.0)
            damage[f.start:f.end, f.channel] = 1.0 + (f.magnitude - 1.0) * ramp
    vib = _vibration(rng_vib, p, s, omega, damage, dt)[imu_idx]

    clean_acc = accel[imu_idx]
    clean_gyro = gyro[imu_idx]
    clean_quat = quat[imu_idx]
    warm = _warmup(config, imu_idx * dt)     # (n_imu,) 0 -> 1 as the vehicle warms up
    if warm is not None:
        # a separate random stream, so that flights without warm-up are unchanged
        rng_warm = np.random.default_rng(np.random.SeedSequence(config.seed).spawn(7)[6])
        signs = rng_warm.choice((-1.0, 1.0), 6)
        accel_bias = accel_bias + warm[:, None] * s.warmup_accel_bias * signs[:3]
        gyro_bias = gyro_bias + warm[:, None] * s.warmup_gyro_bias * signs[3:]
    imu_acc = clean_acc + accel_bias + accel_white + vib
    imu_gyro = clean_gyro + gyro_bias + gyro_white
    imu_quat = _quat_mul(clean_quat, _quat_exp(att_noise))
    imu = np.concatenate([imu_acc, imu_gyro], axis=1)  # channels as IMU_CHANNELS
    _apply_sensor_faults(imu, faults, imu_idx, rng_fault)
    imu_acc, imu_gyro = imu[:, :3].copy(), imu[:, 3:].copy()

    # Motor telemetry: measured speed, current from the load torque.
    w_true = omega[mot_idx]
    load = p.torque_coeff * w_true ** 2
    current = np.where(energised[mot_idx], p.no_load_current_a, 0.0)
    current = current + load / p.torque_constant_nm_per_a
    warm = _warmup(config, mot_idx * dt)
    if warm is not None:   # a warm motor's torque constant falls: more current, same torque
        current = current * (1.0 + s.warmup_current * warm)[:, None]
    motor_speed = np.maximum(w_true + speed_white, 0.0)
    motor_current = np.maximum(current + current_white, 0.0)

    wrench = np.zeros((n, 6))
    wrench[:, 2:6] = rec[:, 22:26]
    lo_ms, hi_ms = s.transport_delay_ms

    def delays(size: int) -> np.ndarray:
        return rng_delay.integers(int(lo_ms * 1e6), int(hi_ms * 1e6), size, endpoint=True)

    imu_stamp = stamps[imu_idx]
    mot_stamp = stamps[mot_idx]
    intervals = [Interval(int(stamps[0] + f.start * period_ns),
                          int(stamps[0] + f.end * period_ns), f.kind, _detail(f))
                 for f in faults]
    label_ns, label_text = _label_messages(intervals, config, int(stamps[0]))

    return SimResult(
        config=config,
        imu_stamp_ns=imu_stamp,
        imu_receive_ns=imu_stamp + delays(n_imu),
        imu_clean_receive_ns=imu_stamp + delays(n_imu),
        imu_linear_acceleration=imu_acc,
        imu_angular_velocity=imu_gyro,
        imu_orientation=imu_quat,
        clean_linear_acceleration=np.ascontiguousarray(clean_acc),
        clean_angular_velocity=np.ascontiguousarray(clean_gyro),
        clean_orientation=np.ascontiguousarray(clean_quat),
        linear_acceleration_covariance=np.diag([s.accel_noise ** 2] * 3).ravel(),
        angular_velocity_covariance=np.diag([s.gyro_noise ** 2] * 3).ravel(),
        orientation_covariance=np.diag([s.orientation_noise ** 2] * 3).ravel(),
        motor_stamp_ns=mot_stamp,
        motor_receive_ns=mot_stamp + delays(len(mot_idx)),
        wrench_receive_ns=mot_stamp + delays(len(mot_idx)),
        actuator_receive_ns=mot_stamp + delays(len(mot_idx)),
        motor_speed=motor_speed,
        motor_current=motor_current,
        wrench_cmd=wrench[mot_idx],
        actuator_cmd=np.ascontiguousarray(rec[mot_idx, 26:32]),
        label_stamp_ns=label_ns,
        label_text=label_text,
        intervals=intervals,
        position=np.ascontiguousarray(rec[imu_idx, 10:13]),
        velocity=np.ascontiguousarray(rec[imu_idx, 13:16]),
        wind=np.ascontiguousarray(wind[imu_idx]),
        rotor_speed=np.ascontiguousarray(w_true),
        rotor_thrust=kf_eff[mot_idx] * w_true ** 2,
        wall_time_s=time.perf_counter() - t_wall,
    )


# --------------------------------------------------------------------------------------
# Reference trajectory and disturbances


def _warmup(config: SimConfig, t: np.ndarray) -> np.ndarray | None:
    """How far the warm-up drift has gone at times ``t`` (0 cold, 1 warm), or None."""
    if not config.warmup_s:
        return None
    return 1.0 - np.exp(-t / config.warmup_s)


def _min_jerk(tau: np.ndarray, length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-jerk blend 0 -> 1 over ``length`` seconds at normalised times ``tau``."""
    s = tau ** 3 * (10.0 - 15.0 * tau + 6.0 * tau ** 2)
    ds = 30.0 * tau ** 2 * (1.0 - tau) ** 2 / length
    dds = 60.0 * tau * (1.0 - tau) * (1.0 - 2.0 * tau) / length ** 2
    return s, ds, dds


def _reference(rng: np.random.Generator, n: int, dt: float,
               *, hover: bool) -> dict[str, np.ndarray]:
    """Smooth random reference: position/velocity/acceleration (n, 3), yaw and yaw rate."""
    t = np.arange(n) * dt
    pos = np.zeros((n, 3))
    vel = np.zeros((n, 3))
    acc = np.zeros((n, 3))
    yaw = np.zeros(n)
    yaw_rate = np.zeros(n)
    p0 = np.array([0.0, 0.0, rng.uniform(4.0, 8.0)])
    y0 = rng.uniform(-math.pi, math.pi)
    if hover:
        pos[:] = p0
        yaw[:] = y0
        return {'pos': pos, 'vel': vel, 'acc': acc, 'yaw': yaw, 'yaw_rate': yaw_rate}
    t0 = 0.0
    kinds = ('hover', 'move', 'climb', 'turn')
    while t0 < t[-1] + dt:
        kind = kinds[rng.choice(4, p=(0.2, 0.45, 0.15, 0.2))]
        p1, y1 = p0.copy(), y0
        if kind == 'hover':
            length = rng.uniform(2.0, 8.0)
        elif kind == 'move':
            heading = rng.uniform(-math.pi, math.pi)
            if np.hypot(p0[0], p0[1]) > 25.0:  # turn back toward the origin
                heading = math.atan2(-p0[1], -p0[0]) + rng.uniform(-0.6, 0.6)
            dist = rng.uniform(5.0, 20.0)
            p1[:2] += dist * np.array([math.cos(heading), math.sin(heading)])
            p1[2] = np.clip(p0[2] + rng.uniform(-2.0, 2.0), 3.0, 18.0)
            length = max(4.0, 1.875 * dist / rng.uniform(1.5, 5.0))
            if rng.random() < 0.6:  # face the direction of travel
                y1 = y0 + _wrap(heading - y0)
        elif kind == 'climb':
            dz = rng.choice((-1.0, 1.0)) * rng.uniform(2.0, 6.0)
            p1[2] = np.clip(p0[2] + dz, 3.0, 18.0)
            length = max(3.0, 1.875 * abs(p1[2] - p0[2]) / rng.uniform(0.8, 2.0))
        else:
            turn = rng.uniform(math.pi / 4, math.pi)
            y1 = y0 + rng.choice((-1.0, 1.0)) * turn
            length = max(3.0, 1.875 * turn / rng.uniform(0.5, 1.2))
        sel = (t >= t0) & (t < t0 + length)
        s, ds, dds = _min_jerk((t[sel] - t0) / length, length)
        d = p1 - p0
        pos[sel] = p0 + s[:, None] * d
        vel[sel] = ds[:, None] * d
        acc[sel] = dds[:, None] * d
        yaw[sel] = y0 + s * (y1 - y0)
        yaw_rate[sel] = ds * (y1 - y0)
        p0, y0, t0 = p1, y1, t0 + length
    # slow wander on top, zero at t = 0 (amplitude m, angular frequency rad/s)
    for axis, amp in ((0, 1.2), (1, 1.2), (2, 0.4)):
        for _ in range(3):
            a = rng.uniform(0.2, 1.0) * amp
            w = 2.0 * math.pi * rng.uniform(0.02, 0.12)
            pos[:, axis] += a * (1.0 - np.cos(w * t))
            vel[:, axis] += a * w * np.sin(w * t)
            acc[:, axis] += a * w * w * np.cos(w * t)
    return {'pos': pos, 'vel': vel, 'acc': acc, 'yaw': yaw, 'yaw_rate': yaw_rate}


def _ou(rng: np.random.Generator, n: int, dt: float, sigma: Sequence[float],
        tau: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck noise, shape (n, len(sigma)), exact discretisation."""
    phi = math.exp(-dt / tau)
    sig = np.asarray(sigma, dtype=np.float64)
    e = rng.standard_normal((n, len(sig))) * sig * math.sqrt(1.0 - phi * phi)
    e[0] = rng.standard_normal(len(sig)) * sig
    return lfilter([1.0], [1.0, -phi], e, axis=0)


def _wind(rng: np.random.Generator, n: int, dt: float,
          *, calm: bool) -> tuple[np.ndarray, np.ndarray]:
    """World wind (n, 3) in m/s (mean plus gusts) and a body disturbance torque (n, 3)."""
    speed = rng.uniform(0.0, 4.0)
    heading = rng.uniform(-math.pi, math.pi)
    mean = np.array([speed * math.cos(heading), speed * math.sin(heading), 0.0])
    gust = _ou(rng, n, dt, (1.0, 1.0, 0.3), 3.0)
    torque = _ou(rng, n, dt, (0.01, 0.01, 0.005), 0.5)
    if calm:
        return np.zeros((n, 3)), np.zeros((n, 3))
    return mean + gust, torque


# --------------------------------------------------------------------------------------
# Faults


def _schedule_faults(rng: np.random.Generator, config: SimConfig, n: int,
                     dt: float) -> list[_Fault]:
    """Place the faults in order with random slack; pick channels and magnitudes.

    ``magnitude`` is the bias peak (stuck: unused; bias_drift: m/s^2 or rad/s, signed),
    the spike size scale, the vibration multiplier, or the thrust coefficient factor.
    """
    kinds = config.faults
    if not kinds:
        return []
    if config.fault_duration_s is None:
        lengths = rng.uniform(8.0, 15.0, len(kinds))
    else:
        lengths = np.full(len(kinds), float(config.fault_duration_s))
    need = config.first_fault_after_s + lengths.sum() + len(kinds) * config.min_gap_s
    slack = max(0.0, config.duration_s - need)
    shares = rng.dirichlet(np.ones(len(kinds) + 1)) * slack
    out: list[_Fault] = []
    t = config.first_fault_after_s
    for kind, length, share in zip(kinds, lengths, shares):
        t += share
        start = int(round(t / dt))
        end = min(n - 1, start + max(1, int(round(length / dt))))
        t += length + config.min_gap_s
        channel = int(rng.integers(6))  # IMU channel or motor index
        gyro = channel >= 3
        if kind == 'bias_drift':
            mag = rng.uniform(0.08, 0.15) if gyro else rng.uniform(0.8, 1.5)
            mag *= rng.choice((-1.0, 1.0))
        elif kind == 'spikes':
            mag = 1.0 if gyro else 8.0  # spikes are 1-3x this, random sign
        elif kind == 'vibration':
            mag = rng.uniform(8.0, 12.0)
        elif kind == 'motor_degradation':
            mag = 1.0 - rng.uniform(0.2, 0.4)
        else:
            mag = 0.0
        out.append(_Fault(kind, start, end, channel, float(mag)))
    return out


def _detail(f: _Fault) -> str:
    if f.kind in ('vibration', 'motor_degradation', 'motor_failure'):
        return MOTOR_NAMES[f.channel]
    return IMU_CHANNELS[f.channel]


def _apply_sensor_faults(imu: np.ndarray, faults: list[_Fault], imu_idx: np.ndarray,
                         rng: np.random.Generator) -> None:
    """Apply stuck, bias_drift and spikes in place to ``imu`` (n_imu, 6)."""
    for f in faults:
        lo, hi = np.searchsorted(imu_idx, [f.start, f.end])
        if hi <= lo:
            continue
        ch = f.channel
        if f.kind == 'stuck':
            imu[lo:hi, ch] = imu[max(lo - 1, 0), ch]
        elif f.kind == 'bias_drift':
            imu[lo:hi, ch] += f.magnitude * np.linspace(0.0, 1.0, hi - lo)
        elif f.kind == 'spikes':
            hit = rng.random(hi - lo) < 0.03
            hit[rng.integers(hi - lo)] = True  # at least one spike
            size = f.magnitude * rng.uniform(1.0, 3.0, hi - lo) * rng.choice((-1.0, 1.0),
                                                                                hi - lo)
            imu[lo:hi, ch] += np.where(hit, size, 0.0)


def _label_messages(intervals: list[Interval], config: SimConfig,
                    t0_ns: int) -> tuple[np.ndarray, list[str]]:
    """Label-topic stamps (10 Hz and at every fault start and end) and their texts."""
    period = int(round(1e9 / LABEL_RATE_HZ))
    end_ns = t0_ns + int(round(config.duration_s * 1e9))
    stamps = set(range(t0_ns, end_ns, period))
    for iv in intervals:
        stamps.update((iv.start_ns, iv.end_ns))
    ordered = np.array(sorted(stamps), dtype=np.int64)
    texts = []
    for s in ordered:
        active = sorted({iv.kind for iv in intervals if iv.start_ns <= s < iv.end_ns})
        texts.append(','.join(active))
    return ordered, texts


# --------------------------------------------------------------------------------------
# Vectorised helpers


def _wrap(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def _quat_exp(rotvec: np.ndarray) -> np.ndarray:
    """Quaternions (x, y, z, w) of rotation vectors, shape (n, 3) -> (n, 4)."""
    angle = np.linalg.norm(rotvec, axis=1, keepdims=True)
    half = 0.5 * angle
    scale = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    return np.concatenate([rotvec * scale, np.cos(half)], axis=1)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (x, y, z, w) quaternion arrays."""
    ax, ay, az, aw = a.T
    bx, by, bz, bw = b.T
    return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz], axis=1)


def _vibration(rng: np.random.Generator, p: HexaParams, s: SensorParams, omega: np.ndarray,
               damage: np.ndarray, dt: float) -> np.ndarray:
    """Rotor vibration on the accelerometer (n, 3), sampled at the physics rate.

    Each rotor adds a once-per-revolution imbalance (radial, in the body x/y plane) and a
    blade-passing component (twice per revolution, along z), both growing with the square
    of its speed. The phase is the integrated rotor angle, so sampling it at the IMU rate
    aliases the 80-110 Hz and 160-220 Hz lines as a real IMU without anti-alias filter does.
    """
    phase0 = rng.uniform(0.0, 2.0 * math.pi, (3, 6))
    angle = np.cumsum(np.vstack([np.zeros((1, 6)), 0.5 * (omega[1:] + omega[:-1]) * dt]),
                      axis=0)
    load = (omega / p.hover_omega_rad_s) ** 2
    a1 = s.vibration_1x * load * damage
    a2 = s.vibration_2x * load
    d = np.asarray(p.directions, dtype=np.float64)
    out = np.empty((len(omega), 3))
    out[:, 0] = (a1 * np.cos(angle + phase0[0])).sum(axis=1)
    out[:, 1] = (a1 * d * np.sin(angle + phase0[0])).sum(axis=1)
    out[:, 2] = (a2 * np.sin(2.0 * angle + phase0[2])).sum(axis=1)
    return out


# --------------------------------------------------------------------------------------
# Physics and control loop (plain floats: about 20 us per step)


def _allocation_matrices(p: HexaParams) -> list[list[tuple[float, float, float, float]]]:
    """Pseudo-inverses of B's (Fz, Mx, My, Mz) rows: all rotors, then without rotor i."""
    b4 = p.effectiveness_matrix()[2:6]
    out = []
    for removed in (None, *range(p.n_rotors)):
        cols = [i for i in range(p.n_rotors) if i != removed]
        pinv = np.zeros((p.n_rotors, 4))
        pinv[cols] = np.linalg.pinv(b4[:, cols])
        out.append([tuple(float(v) for v in row) for row in pinv])
    return out


def _allocate(pinv: list[tuple[float, float, float, float]], thrust: float, mx: float,
              my: float, mz: float, tmax: float) -> list[float]:
    """Rotor thrusts for a wrench: roll/pitch first, then collective thrust, then yaw."""
    t = [r[0] * thrust for r in pinv]
    rp = [r[1] * mx + r[2] * my for r in pinv]
    col = [r[0] for r in pinv]
    scale = 1.0
    for _ in range(12):  # shrink roll/pitch until a collective shift makes it fit
        lo_s, hi_s = -1e9, 1e9
        for ti, ri, ci in zip(t, rp, col):
            if ci > 1e-9:
                v = ti + scale * ri
                lo_s = max(lo_s, -v / ci)
                hi_s = min(hi_s, (tmax - v) / ci)
        if lo_s <= hi_s:
            shift = min(max(0.0, lo_s), hi_s)
            break
        scale *= 0.8
    else:
        shift = 0.0
    t = [ti + scale * ri + shift * ci for ti, ri, ci in zip(t, rp, col)]
    k = 1.0
    for ti, r in zip(t, pinv):
        y = r[3] * mz
        if ti + k * y > tmax:
            k = max(0.0, (tmax - ti) / y)
        elif ti + k * y < 0.0:
            k = max(0.0, -ti / y)
    return [min(max(ti + k * r[3] * mz, 0.0), tmax) for ti, r in zip(t, pinv)]


def _fly(p: HexaParams, g: _Gains, ref: dict[str, np.ndarray], wind: np.ndarray,
         torque_dist: np.ndarray, faults: list[_Fault], dt: float,
         *, progress: bool, payload: tuple[int, float] | None = None) -> np.ndarray:
    """Run the closed loop for ``len(wind)`` steps; returns one row of 44 values per step.

    Columns: quaternion xyzw (0:4), body rates (4:7), specific force in the body frame
    (7:10), position (10:13), velocity (13:16), rotor speeds (16:22), commanded thrust and
    torques (22:26), normalised motor commands (26:32), effective thrust coefficients
    (32:38), motor energised flags (38:44). All at the step's start time.

    ``payload`` (step, mass) changes the vehicle's mass from that step on; the controller
    keeps using the nominal mass (its integrators take up the difference).
    """
    n = len(wind)
    m, grav = p.mass_kg, p.gravity_m_s2   # the controller's mass
    mass = m                               # the physics' mass
    jx, jy, jz = p.inertia_kgm2
    cx, cy, cz = p.rot_damping_nms
    pos = p.rotor_positions()
    rx, ry = [float(v) for v in pos[:, 0]], [float(v) for v in pos[:, 1]]
    yaw_sign = [-float(d) for d in p.directions]
    kd = p.torque_coeff
    tmax = p.max_thrust_n
    wmax = p.omega_max_rad_s
    decay = math.exp(-dt / p.motor_time_constant_s)
    tan_tilt = math.tan(g.max_tilt_rad)
    ilim_rp_x = g.rate_i_torque_limit_rp / (jx * g.rate_i_rp)
    ilim_rp_y = g.rate_i_torque_limit_rp / (jy * g.rate_i_rp)
    ilim_yaw = g.rate_i_torque_limit_yaw / (jz * g.rate_i_yaw)
    pinvs = _allocation_matrices(p)
    detect = int(round(g.failure_detect_s / dt))

    # events: step -> list of (what, motor, value)
    events: dict[int, list[tuple[str, int, float]]] = {}
    if payload is not None:
        events.setdefault(payload[0], []).append(('mass', 0, payload[1]))
    for f in faults:
        if f.kind == 'motor_degradation':
            events.setdefault(f.start, []).append(('kf', f.channel, f.magnitude))
            events.setdefault(f.end, []).append(('kf', f.channel, 1.0))
        elif f.kind == 'motor_failure':
            events.setdefault(f.start, []).append(('dead', f.channel, 1.0))
            events.setdefault(min(f.start + detect, f.end), []).append(
                ('alloc', f.channel + 1, 0.0))
            events.setdefault(f.end, []).append(('dead', f.channel, 0.0))
            events.setdefault(f.end, []).append(('alloc', 0, 0.0))

    prx, pry, prz = (ref['pos'][:, i].tolist() for i in range(3))
    vrx, vry, vrz = (ref['vel'][:, i].tolist() for i in range(3))
    arx, ary, arz = (ref['acc'][:, i].tolist() for i in range(3))
    yaw_ref, yaw_rate_ref = ref['yaw'].tolist(), ref['yaw_rate'].tolist()
    wdx, wdy, wdz = (wind[:, i].tolist() for i in range(3))
    tdx, tdy, tdz = (torque_dist[:, i].tolist() for i in range(3))

    px, py, pz = prx[0], pry[0], prz[0]
    vx, vy, vz = vrx[0], vry[0], vrz[0]
    half = 0.5 * yaw_ref[0]
    qw, qx, qy, qz = math.cos(half), 0.0, 0.0, math.sin(half)
    wx = wy = wz = 0.0
    omega = [p.hover_omega_rad_s] * 6
    kf = [p.thrust_coeff] * 6
    dead = [False] * 6
    pinv = pinvs[0]
    ipx = ipy = ipz = 0.0
    irx = iry = irz = 0.0
    rec: list[float] = []
    extend = rec.extend
    sqrt, atan2, pi2 = math.sqrt, math.atan2, 2.0 * math.pi

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=round(n * dt), unit='s', desc='simulating', delay=1.0,
                   disable=None, file=sys.stderr, leave=False)
    chunk = max(1, int(round(1.0 / dt)))

    for k in range(n):
        if k in events:
            for what, i, value in events[k]:
                if what == 'kf':
                    kf[i] = p.thrust_coeff * value
                elif what == 'dead':
                    dead[i] = value > 0.5
                elif what == 'mass':
                    mass = value
                else:
                    pinv = pinvs[i]
        if bar is not None and k % chunk == 0 and k:
            bar.update(1)
        # rotation matrix body -> world
        xx, yy, zz = qx * qx, qy * qy, qz * qz
        xy, xz, yz = qx * qy, qx * qz, qy * qz
        wxq, wyq, wzq = qw * qx, qw * qy, qw * qz
        r00, r01, r02 = 1.0 - 2.0 * (yy + zz), 2.0 * (xy - wzq), 2.0 * (xz + wyq)
        r10, r11, r12 = 2.0 * (xy + wzq), 1.0 - 2.0 * (xx + zz), 2.0 * (yz - wxq)
        r20, r21, r22 = 2.0 * (xz - wyq), 2.0 * (yz + wxq), 1.0 - 2.0 * (xx + yy)

        # position loop -> desired thrust vector (world)
        ex, ey, ez = prx[k] - px, pry[k] - py, prz[k] - pz
        ipx = min(max(ipx + ex * dt, -g.pos_i_limit), g.pos_i_limit)
        ipy = min(max(ipy + ey * dt, -g.pos_i_limit), g.pos_i_limit)
        ipz = min(max(ipz + ez * dt, -g.pos_i_limit), g.pos_i_limit)
        fx = m * (arx[k] + g.pos_p_xy * ex + g.vel_p_xy * (vrx[k] - vx) + g.pos_i_xy * ipx)
        fy = m * (ary[k] + g.pos_p_xy * ey + g.vel_p_xy * (vry[k] - vy) + g.pos_i_xy * ipy)
        fz = m * (arz[k] + g.pos_p_z * ez + g.vel_p_z * (vrz[k] - vz) + g.pos_i_z * ipz + grav)
        fz = max(fz, 0.3 * m * grav)
        fh = sqrt(fx * fx + fy * fy)
        if fh > fz * tan_tilt:
            fx, fy = fx * fz * tan_tilt / fh, fy * fz * tan_tilt / fh
        fn = sqrt(fx * fx + fy * fy + fz * fz)
        bx, by, bz = fx / fn, fy / fn, fz / fn
        thrust = min(max(fx * r02 + fy * r12 + fz * r22, 0.1 * m * grav), 5.5 * tmax)

        # tilt-prioritised attitude loop -> body rate setpoint
        ewx, ewy, ewz = r12 * bz - r22 * by, r22 * bx - r02 * bz, r02 * by - r12 * bx
        ebx = r00 * ewx + r10 * ewy + r20 * ewz
        eby = r01 * ewx + r11 * ewy + r21 * ewz
        if r22 < 0.0:  # upside down: turn at full rate about the tilt axis
            norm = sqrt(ebx * ebx + eby * eby) or 1.0
            ebx, eby = ebx / norm, eby / norm
        eyaw = (yaw_ref[k] - atan2(r10, r00) + math.pi) % pi2 - math.pi
        lim, limy = g.rate_limit_rp, g.rate_limit_yaw
        sx = min(max(g.att_p * ebx, -lim), lim)
        sy = min(max(g.att_p * eby, -lim), lim)
        sz = min(max(g.yaw_p * eyaw + yaw_rate_ref[k], -limy), limy)

        # rate loop -> body torque
        erx, ery, erz = sx - wx, sy - wy, sz - wz
        irx = min(max(irx + erx * dt, -ilim_rp_x), ilim_rp_x)
        iry = min(max(iry + ery * dt, -ilim_rp_y), ilim_rp_y)
        irz = min(max(irz + erz * dt, -ilim_yaw), ilim_yaw)
        mx = jx * (g.rate_p_rp * erx + g.rate_i_rp * irx) + (jz - jy) * wy * wz
        my = jy * (g.rate_p_rp * ery + g.rate_i_rp * iry) + (jx - jz) * wz * wx
        mz = jz * (g.rate_p_yaw * erz + g.rate_i_yaw * irz) + (jy - jx) * wx * wy

        # allocation -> normalised commands -> rotor speed setpoints
        tcmd = _allocate(pinv, thrust, mx, my, mz, tmax)
        u = [ti / tmax for ti in tcmd]

        # forces and moments at this instant
        ft = amx = amy = amz = 0.0
        for i in range(6):
            wi = omega[i]
            ti = kf[i] * wi * wi
            ft += ti
            amx += ry[i] * ti
            amy -= rx[i] * ti
            amz += yaw_sign[i] * kd * wi * wi
        # air-relative velocity in the body frame, drag, specific force (body)
        ax_, ay_, az_ = vx - wdx[k], vy - wdy[k], vz - wdz[k]
        vbx = r00 * ax_ + r10 * ay_ + r20 * az_
        vby = r01 * ax_ + r11 * ay_ + r21 * az_
        vbz = r02 * ax_ + r12 * ay_ + r22 * az_
        sfx = -p.drag_coeff_xy * vbx / mass
        sfy = -p.drag_coeff_xy * vby / mass
        sfz = (ft - p.drag_coeff_z * vbz) / mass

        extend((qx, qy, qz, qw, wx, wy, wz, sfx, sfy, sfz, px, py, pz, vx, vy, vz))
        extend(omega)
        extend((thrust, mx, my, mz))
        extend(u)
        extend(kf)
        extend([0.0 if d else 1.0 for d in dead])

        # integrate: motors exactly (zero-order hold), rigid body semi-implicitly
        for i in range(6):
            target = 0.0 if dead[i] else wmax * sqrt(u[i])
            omega[i] = target + (omega[i] - target) * decay
        vx += (r00 * sfx + r01 * sfy + r02 * sfz) * dt
        vy += (r10 * sfx + r11 * sfy + r12 * sfz) * dt
        vz += (r20 * sfx + r21 * sfy + r22 * sfz - grav) * dt
        px += vx * dt
        py += vy * dt
        pz += vz * dt
        wx += (amx + tdx[k] - cx * wx - (jz - jy) * wy * wz) / jx * dt
        wy += (amy + tdy[k] - cy * wy - (jx - jz) * wz * wx) / jy * dt
        wz += (amz + tdz[k] - cz * wz - (jy - jx) * wx * wy) / jz * dt
        # q <- q * exp(omega dt / 2), then renormalise
        ang = sqrt(wx * wx + wy * wy + wz * wz) * dt
        if ang > 1e-12:
            sa = math.sin(0.5 * ang) / ang * dt
            dw, dx, dy, dz = math.cos(0.5 * ang), wx * sa, wy * sa, wz * sa
            qw, qx, qy, qz = (qw * dw - qx * dx - qy * dy - qz * dz,
                              qw * dx + qx * dw + qy * dz - qz * dy,
                              qw * dy - qx * dz + qy * dw + qz * dx,
                              qw * dz + qx * dy - qy * dx + qz * dw)
            qn = 1.0 / sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
            qw, qx, qy, qz = qw * qn, qx * qn, qy * qn, qz * qn
    if bar is not None:
        bar.close()
    out = np.array(rec, dtype=np.float64).reshape(n, 44)
    if not np.all(np.isfinite(out)):
        raise RuntimeError('the simulated vehicle diverged (non-finite state); this is a bug')
    return out


# --------------------------------------------------------------------------------------
# rosbag2 output


def write_bag(result: SimResult, path: str | Path, *, storage: str = 'sqlite3') -> Path:
    """Write ``result`` as a rosbag2 directory at ``path`` plus ``labels.csv`` inside it.

    Messages go in log-time order; their header stamps are the sample times and their log
    times the stamps plus the transport delay (label messages, which carry no header, are
    logged at their exact times). Returns the bag directory.
    """
    from encdec_ros.io.bagwrite import BagWriter

    path = Path(path)
    if storage not in STORAGES:
        msg = f'storage must be sqlite3 or mcap, got {storage!r}'
        raise ConfigError(msg)
    with BagWriter(path, storage=storage) as bag:
        streams = _serialise(result, bag.typestore)
        order_t = np.concatenate([times for _, times, _ in streams])
        order_topic = np.concatenate([np.full(len(times), i) for i, (_, times, _) in
                                      enumerate(streams)])
        order_index = np.concatenate([np.arange(len(times)) for _, times, _ in streams])
        order = np.lexsort((order_topic, order_t))
        names = [topic for topic, _, _ in streams]
        for topic in names:
            bag.add_topic(topic, TOPICS[topic])
        times = order_t.tolist()
        topics = order_topic.tolist()
        indices = order_index.tolist()
        write = bag.write_raw
        for j in order.tolist():
            ti = topics[j]
            write(names[ti], times[j], streams[ti][2][indices[j]])
    write_labels_csv(path / SIDECAR_NAME, result.intervals)
    return path


def _serialise(result: SimResult,
               ts: Typestore) -> list[tuple[str, np.ndarray, list[bytes]]]:
    """CDR bytes of every message, per topic, with their log times."""
    types = ts.types
    ser = ts.serialize_cdr
    Time = types['builtin_interfaces/msg/Time']
    Header = types['std_msgs/msg/Header']
    Quaternion = types['geometry_msgs/msg/Quaternion']
    Vector3 = types['geometry_msgs/msg/Vector3']
    Imu = types['sensor_msgs/msg/Imu']
    JointState = types['sensor_msgs/msg/JointState']
    Wrench = types['geometry_msgs/msg/Wrench']
    WrenchStamped = types['geometry_msgs/msg/WrenchStamped']
    Float64MultiArray = types['std_msgs/msg/Float64MultiArray']
    MultiArrayLayout = types['std_msgs/msg/MultiArrayLayout']
    MultiArrayDimension = types['std_msgs/msg/MultiArrayDimension']
    String = types['std_msgs/msg/String']

    def header(stamp: int, frame: str) -> object:
        return Header(stamp=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000),
                      frame_id=frame)

    r = result
    empty = np.zeros(0, dtype=np.float64)
    imu_type = TOPICS[IMU_TOPIC]

    def imus(acc: np.ndarray, gyr: np.ndarray, quat: np.ndarray,
             covs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[bytes]:
        out = []
        oc, gc, ac = covs
        for stamp, a, w, q in zip(r.imu_stamp_ns.tolist(), acc.tolist(), gyr.tolist(),
                                  quat.tolist()):
            msg = Imu(header=header(stamp, IMU_FRAME),
                      orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]),
                      orientation_covariance=oc,
                      angular_velocity=Vector3(x=w[0], y=w[1], z=w[2]),
                      angular_velocity_covariance=gc,
                      linear_acceleration=Vector3(x=a[0], y=a[1], z=a[2]),
                      linear_acceleration_covariance=ac)
            out.append(bytes(ser(msg, imu_type)))
        return out

    zero9 = np.zeros(9)
    imu = imus(r.imu_linear_acceleration, r.imu_angular_velocity, r.imu_orientation,
               (r.orientation_covariance, r.angular_velocity_covariance,
                r.linear_acceleration_covariance))
    clean = imus(r.clean_linear_acceleration, r.clean_angular_velocity, r.clean_orientation,
                 (zero9, zero9, zero9))
    names = list(MOTOR_NAMES)
    motors = [bytes(ser(JointState(header=header(s, ''), name=names, position=empty,
                                   velocity=v, effort=e), TOPICS[MOTORS_TOPIC]))
              for s, v, e in zip(r.motor_stamp_ns.tolist(), r.motor_speed, r.motor_current)]
    wrenches = [bytes(ser(WrenchStamped(header=header(s, BODY_FRAME),
                                        wrench=Wrench(force=Vector3(x=w[0], y=w[1], z=w[2]),
                                                      torque=Vector3(x=w[3], y=w[4], z=w[5]))),
                          TOPICS[WRENCH_TOPIC]))
                for s, w in zip(r.motor_stamp_ns.tolist(), r.wrench_cmd.tolist())]
    layout = MultiArrayLayout(dim=[MultiArrayDimension(label='motors', size=6, stride=6)],
                              data_offset=0)
    actuators = [bytes(ser(Float64MultiArray(layout=layout, data=u), TOPICS[ACTUATOR_TOPIC]))
                 for u in r.actuator_cmd]
    labels = [bytes(ser(String(data=text), LABEL_TYPE)) for text in r.label_text]
    return [
        (IMU_TOPIC, r.imu_receive_ns, imu),
        (IMU_CLEAN_TOPIC, r.imu_clean_receive_ns, clean),
        (MOTORS_TOPIC, r.motor_receive_ns, motors),
        (WRENCH_TOPIC, r.wrench_receive_ns, wrenches),
        (ACTUATOR_TOPIC, r.actuator_receive_ns, actuators),
        (LABEL_TOPIC, r.label_stamp_ns, labels),
    ]
