"""``control_allocator``: turn wanted wrenches into actuator commands within limits.

Subscribes:
    ``wrench_cmd`` (geometry_msgs/WrenchStamped): the wanted body wrench (remap it).

Publishes:
    ``actuator_cmd`` (std_msgs/Float64MultiArray): one command per actuator, in the
    configuration's order, always within [min, max];
    ``~/actuators`` (sensor_msgs/JointState): the same commands as ``effort`` with the
    actuator names (``publish_joint_state``);
    ``~/wrench_error`` (geometry_msgs/WrenchStamped): achieved minus wanted, ``B u - v``, on
    all six axes (``publish_error``);
    ``~/error`` (std_msgs/Float32): the weighted, normalised error as a fraction of the
    largest attainable wrench (``publish_error``);
    ``/diagnostics``: method in use, fallback reason, watchdog state, error and latency;
    WARN before the first wanted wrench and while the watchdog commands the safe output
    (never STALE: the node is acting), WARN for wrenches with NaN or inf ignored in the last
    10 s (it clears), ERROR for wanted wrenches so large (near 1e308) that no finite command
    comes out (ignored, the last command holds); a command whose error overflows is
    published without ``~/error``.

Methods (parameter ``method``): ``learned`` (an exported model, ``model_dir``), ``exact``
(weighted box-constrained least squares, warm-started), ``pseudo_inverse``,
``redistribution``, or ``auto`` (learned when ``model_dir`` is set, else exact). When the
learned model is missing, does not match the effectiveness, or fails while running, the node
falls back to the exact solver and reports WARN with the reason. When no wrench arrives for
``timeout_s`` (also before the first one), the watchdog commands the configuration's
``safe_output`` on every tick until wrenches resume. Rate limits (``limits.rate``) bound how
far each command may move from the previous one.

Run::

    ros2 run encdec_ros control_allocator --ros-args -p effectiveness:=config/quad_x.yaml \\
        -p model_dir:=models/allocator_quad_x -r wrench_cmd:=/controller/wrench
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from geometry_msgs.msg import WrenchStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32, Float64MultiArray, MultiArrayDimension

from encdec_ros.allocation.allocators import (
    Allocator,
    Effectiveness,
    ExactAllocator,
    RateLimiter,
    effectiveness_of_model,
    make_allocator,
    method_name,
)
from encdec_ros.errors import ConfigError, EncdecError, EngineError
from encdec_ros.io.align import TopicClock
from encdec_ros.nodes.common import (
    LEVELS,
    DiagnosticsReporter,
    InputMonitor,
    Param,
    RecentCount,
    declare_parameters,
    device_param,
    qos_profile,
    resolve_share_path,
    run_node,
)

LATENCY_WINDOW = 1024
AXES = ('force.x', 'force.y', 'force.z', 'torque.x', 'torque.y', 'torque.z')
RECENT_S = 10.0
"""Seconds over which ignored wrenches and failed allocations keep /diagnostics at WARN or
ERROR after they stop."""
IDLE_S = 3.0
"""With the watchdog off, seconds without a wanted wrench before /diagnostics says so."""

PARAMS = [
    Param('effectiveness', '', 'Effectiveness YAML (B, limits, weights); empty: the one stored '
          'in model_dir.', read_only=True),
    Param('model_dir', '', 'Allocator model directory from `encdec train allocator`.',
          read_only=True),
    Param('method', 'auto', 'learned, exact, pseudo_inverse, redistribution or auto (learned '
          'when model_dir is set, else exact).', read_only=True),
    device_param('cpu'),
    Param('exact_solver', 'active_set', 'Solver of the exact method: active_set or bvls.',
          read_only=True),
    Param('timeout_s', 0.5, 'Seconds without a wanted wrench before the safe output is '
          'commanded; 0 disables the watchdog.', read_only=True, min=0.0, max=3600.0),
    Param('use_rate_limits', True, 'Apply limits.rate of the configuration when it has one.',
          read_only=True),
    Param('publish_joint_state', True, 'Also publish ~/actuators (JointState with names).',
          read_only=True),
    Param('publish_error', True, 'Publish ~/wrench_error and ~/error.', read_only=True),
    Param('input_reliability', 'best_effort', 'QoS reliability of wrench_cmd: best_effort '
          '(hears every publisher) or reliable.', read_only=True),
    Param('output_reliability', 'reliable', 'QoS reliability of the outputs.',
          read_only=True),
    Param('qos_depth', 5, 'QoS history depth.', read_only=True, min=1, max=1000),
    Param('diagnostics_period_s', 1.0, 'Period of /diagnostics in seconds.', read_only=True,
          min=0.01, max=60.0),
]


class ControlAllocatorNode(Node):
    """The control allocator node (a thin shell around :mod:`encdec_ros.allocation.allocators`)."""

    NODE_NAME = 'control_allocator'

    def __init__(self, *, node_name: str = NODE_NAME, namespace: str | None = None,
                 context: Any = None, parameter_overrides: list | None = None) -> None:
        super().__init__(node_name, namespace=namespace, context=context,
                         parameter_overrides=parameter_overrides)
        p = declare_parameters(self, PARAMS)
        self.params = p
        model_dir = str(p['model_dir']).strip()
        requested = str(p['method']).strip().lower()
        if requested != 'auto':
            requested = method_name(requested)
        self.eff = self._effectiveness(str(p['effectiveness']).strip(), model_dir)
        eff = self.eff
        if requested == 'auto':
            requested = 'learned' if model_dir else 'exact'
        self.requested_method = requested
        self.fallback_reason = ''
        self.core = self._build_core(requested, model_dir, str(p['device']),
                                     str(p['exact_solver']))

        self.limiter = None
        if p['use_rate_limits'] and eff.rate is not None:
            self.limiter = RateLimiter(eff)
        self.timeout_s = float(p['timeout_s'])
        depth = int(p['qos_depth'])
        qos_in = qos_profile(str(p['input_reliability']), depth)
        qos_out = qos_profile(str(p['output_reliability']), depth)
        self.pub_cmd = self.create_publisher(Float64MultiArray, 'actuator_cmd', qos_out)
        self.pub_joint = (self.create_publisher(JointState, '~/actuators', qos_out)
                          if p['publish_joint_state'] else None)
        self.pub_werr = self.pub_err = None
        if p['publish_error']:
            self.pub_werr = self.create_publisher(WrenchStamped, '~/wrench_error', qos_out)
            self.pub_err = self.create_publisher(Float32, '~/error', qos_out)
        self.monitor = InputMonitor(
            self, [(self.resolve_topic_name('wrench_cmd'), 'geometry_msgs/msg/WrenchStamped')],
            silent_after_s=None, quiet=('non-finite',))   # the watchdog's and below
        self._stamps = TopicClock(10_000_000)   # counts jumps in the wrench stamps
        self.sub = self.create_subscription(WrenchStamped, 'wrench_cmd', self._on_wrench,
                                            qos_in, event_callbacks=self.monitor.event_callbacks(0))
        # No STALE from the reporter: before the first wrench and after wrenches stop, the
        # node is commanding the safe output (or holding its command) and says so as WARN.
        self.diag = DiagnosticsReporter(self, 'control allocation', eff.name,
                                        period_s=float(p['diagnostics_period_s']),
                                        stale_after_s=None)
        self.diag.report_engine(getattr(self.core, 'engine', None))

        # state
        self._layout = [MultiArrayDimension(label='actuators', size=eff.n_actuators,
                                            stride=eff.n_actuators)]
        self._names = list(eff.actuators)
        self.prev_u: np.ndarray = eff.safe_output.copy()
        self._prev_t = time.monotonic()
        self._start = self._prev_t
        self.last_wrench_t: float | None = None
        self.timed_out = False
        self.commands = 0
        self._rejected = RecentCount(RECENT_S)      # wanted wrenches with NaN or inf
        self._unsolved = RecentCount(RECENT_S)      # allocations that gave no finite command
        self._bad_error = RecentCount(RECENT_S)     # finite commands whose error overflows
        self.watchdog_trips = 0
        self.rate_limited = 0
        self.frame_mismatch = ''
        self._last_error = 0.0
        self._err_sum = 0.0
        self._lat = np.zeros(LATENCY_WINDOW)
        self._lat_n = 0
        tick = 0.1 if self.timeout_s <= 0 else max(0.005, min(0.1, self.timeout_s / 4))
        self._timer = self.create_timer(tick, self._tick)
        self._refresh_diagnostics()
        self.get_logger().info(
            f'allocating {" ".join(eff.axes)} to {eff.n_actuators} actuators of {eff.name} with '
            f'{self.core.method}' + (f' (fallback: {self.fallback_reason})'
                                     if self.fallback_reason else ''))

    # ------------------------------------------------------------------ set-up

    def _effectiveness(self, path: str, model_dir: str) -> Effectiveness:
        if path:
            return Effectiveness.load(resolve_share_path(path))
        if model_dir:
            try:
                return effectiveness_of_model(resolve_share_path(model_dir))
            except EncdecError as err:
                raise ConfigError(f'the model directory cannot be read ({err}) and no '
                                  'effectiveness file is set; pass -p effectiveness:=FILE so '
                                  'the node can fall back to the exact solver') from err
        raise ConfigError('control_allocator needs an effectiveness configuration or a model; '
                          'pass -p effectiveness:=config/NAME.yaml or -p model_dir:=DIR')

    def _build_core(self, method: str, model_dir: str, device: str, solver: str
                    ) -> Allocator:
        if method == 'learned':
            if not model_dir:
                return self._fall_back('method learned needs model_dir, none is set', solver)
            try:
                return make_allocator('learned', self.eff, model_dir=resolve_share_path(model_dir),
                                      device=device)
            except EngineError as err:
                if device.endswith('_strict'):   # asked to fail rather than fall back
                    raise
                return self._fall_back(str(err), solver)
            except EncdecError as err:
                return self._fall_back(str(err), solver)
        return make_allocator(method, self.eff, solver=solver, warm_start=True)

    def _fall_back(self, reason: str, solver: str = 'active_set') -> Allocator:
        self.fallback_reason = f'learned allocator unavailable ({reason.rstrip(".")}); ' \
                               'using the exact solver'
        self.get_logger().warning(self.fallback_reason)
        self.core = ExactAllocator(self.eff, solver=solver, warm_start=True)
        return self.core

    @property
    def rejected(self) -> int:
        """Wanted wrenches with NaN or infinite values ignored since the start."""
        return self._rejected.total

    @property
    def unsolved(self) -> int:
        """Wanted wrenches so large that no finite command came out (ignored)."""
        return self._unsolved.total

    # ------------------------------------------------------------------ hot path

    def _on_wrench(self, msg: WrenchStamped) -> None:
        f, t = msg.wrench.force, msg.wrench.torque
        full = np.array((f.x, f.y, f.z, t.x, t.y, t.z))
        self.diag.mark_input()
        self.monitor.arrived(0)
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if stamp:
            self.monitor.stamp(0, stamp)
            self._stamps.offer(stamp)
        if not np.isfinite(full).all():
            self._rejected.add()
            self.monitor.nonfinite(0, [f'wrench.{a}' for a, ok in zip(AXES, np.isfinite(full))
                                       if not ok])
            return
        frame = msg.header.frame_id
        if frame and frame != self.eff.frame_id and not self.frame_mismatch:
            self.frame_mismatch = frame
            self.get_logger().warning(
                f'wrenches arrive in frame {frame!r} but {self.eff.name} is for '
                f'{self.eff.frame_id!r}; transform them upstream')
        now = time.monotonic()
        v = full[self.eff.axis_index]
        lower = upper = None
        if self.limiter is not None:
            lower, upper = self.limiter.bounds(self.prev_u, now - self._prev_t)
        t0 = time.perf_counter()
        # wanted wrenches near the float limit (1e308) overflow inside the solvers: no numpy
        # warning on stderr, the result is checked below
        with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
            try:
                u = self.core.allocate(v, lower=lower, upper=upper)
            except Exception as err:  # noqa: BLE001 - a failing network must not stop the robot
                if self.core.method != 'learned':
                    raise
                self._fall_back(f'it failed while running: {type(err).__name__}: {err}')
                u = self.core.allocate(v, lower=lower, upper=upper)
        self._lat[self._lat_n % LATENCY_WINDOW] = time.perf_counter() - t0
        self._lat_n += 1
        if not np.isfinite(u).all():
            self._unsolved.add()
            self.get_logger().error(
                f'a wanted wrench too large to allocate ({np.abs(v).max():.3g}) gave no finite '
                'command; it is ignored and the last command holds', throttle_duration_sec=5.0)
            return
        if lower is not None:
            held = ((u <= lower + 1e-12) & (lower > self.eff.u_min)) | (
                (u >= upper - 1e-12) & (upper < self.eff.u_max))
            if held.any():
                self.rate_limited += 1
        self.last_wrench_t = now
        if self.timed_out:
            self.timed_out = False
            self.get_logger().info('wanted wrenches resumed')
        self.commands += 1
        self._publish(u, msg, full, v)

    def _publish(self, u: np.ndarray, msg: WrenchStamped | None, full: np.ndarray | None,
                 v: np.ndarray | None) -> None:
        self.prev_u = u
        self._prev_t = time.monotonic()
        values = u.tolist()
        cmd = Float64MultiArray()
        cmd.layout.dim = self._layout
        cmd.data = values
        self.pub_cmd.publish(cmd)
        stamp = msg.header.stamp if msg is not None else self.get_clock().now().to_msg()
        if self.pub_joint is not None:
            js = JointState()
            js.header.stamp = stamp
            js.name = self._names
            js.effort = values
            self.pub_joint.publish(js)
        if self.pub_werr is not None and msg is not None:
            with np.errstate(over='ignore', invalid='ignore'):
                err = self.eff.achieved_full(u) - full
                e = float(self.eff.error(u, v))
            if not (np.isfinite(err).all() and np.isfinite(e)):
                self._bad_error.add()       # the command is fine; its error cannot be told
                return
            out = WrenchStamped()
            out.header = msg.header
            out.wrench.force.x, out.wrench.force.y, out.wrench.force.z = err[:3].tolist()
            out.wrench.torque.x, out.wrench.torque.y, out.wrench.torque.z = err[3:].tolist()
            self.pub_werr.publish(out)
            self._last_error = e
            self._err_sum += e
            self.pub_err.publish(Float32(data=e))

    # ------------------------------------------------------------------ watchdog, diagnostics

    def _tick(self) -> None:
        if self.timeout_s > 0:
            now = time.monotonic()
            last = self.last_wrench_t if self.last_wrench_t is not None else self._start
            if now - last > self.timeout_s:
                if not self.timed_out:
                    self.timed_out = True
                    self.watchdog_trips += 1
                    self.get_logger().warning(
                        f'no wanted wrench for {now - last:.2f} s (timeout_s '
                        f'{self.timeout_s:g}): commanding the safe output')
                self._publish(self.eff.safe_output.copy(), None, None, None)
        self._refresh_diagnostics()

    def _refresh_diagnostics(self) -> None:
        n = min(self._lat_n, LATENCY_WINDOW)
        lat = self._lat[:n] * 1e6 if n else np.zeros(1)
        values = {
            'method': self.core.method,
            'requested method': self.requested_method,
            'configuration': self.eff.source,
            'commands': self.commands,
            'rejected (non-finite)': self.rejected,
            'unsolved (too large)': self.unsolved,
            'error not finite': self._bad_error.total,
            'watchdog trips': self.watchdog_trips,
            'rate limited': self.rate_limited,
            'last error (fraction of largest wrench)': self._last_error,
            'mean error': self._err_sum / self.commands if self.commands else 0.0,
            'latency p50 (us)': float(np.percentile(lat, 50)),
            'latency p99 (us)': float(np.percentile(lat, 99)),
        }
        if self.fallback_reason:
            values['fallback'] = self.fallback_reason
        monitor, clock = self.monitor, self._stamps
        monitor.set(0, 'used', self.commands)
        monitor.set(0, 'jumps back', clock.jumps_back)
        monitor.set(0, 'jumps forward', clock.jumps_forward)
        level, inputs, input_values = monitor.report()
        monitor.log_started(self.get_logger())
        values.update(input_values)
        errors, problems = [], []
        unsolved = self._unsolved.recent()
        if unsolved:
            errors.append(f'{unsolved} wanted wrench(es) in the last {RECENT_S:g} s too large '
                          'to allocate (no finite command): ignored, the last command holds')
        if self.fallback_reason:
            problems.append(self.fallback_reason)
        if self.last_wrench_t is None:
            problems.append('no wanted wrench received yet' + (
                ': commanding the safe output' if self.timeout_s > 0 else ''))
        elif self.timed_out:
            problems.append(f'no wanted wrench for more than {self.timeout_s:g} s: commanding '
                            'the safe output')
        elif self.timeout_s <= 0 and time.monotonic() - self.last_wrench_t > IDLE_S:
            problems.append(f'no wanted wrench for more than {IDLE_S:g} s (watchdog off: '
                            'the last command holds)')
        rejected = self._rejected.recent()
        if rejected:
            axes = ', '.join(self.monitor.inputs[0].bad_channels)
            problems.append(f'{rejected} wrench(es) with NaN or infinite values ignored in the '
                            f'last {RECENT_S:g} s (last in {axes})')
        bad_error = self._bad_error.recent()
        if bad_error:
            problems.append(f'{bad_error} command(s) in the last {RECENT_S:g} s whose error '
                            'overflows (wanted wrench near the float limit): ~/error not '
                            'published for them')
        if self.frame_mismatch:
            problems.append(f'wrenches arrive in frame {self.frame_mismatch!r}, expected '
                            f'{self.eff.frame_id!r}')
        if errors or problems or inputs:
            level = max(level, LEVELS['ERROR'] if errors else LEVELS['WARN'])
            self.diag.update(level, '; '.join(errors + inputs + problems), values)
        else:
            self.diag.update('OK', f'{self.core.method}: last error '
                             f'{self._last_error:.2%} of the largest wrench', values)


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run encdec_ros control_allocator``."""
    sys.exit(run_node(ControlAllocatorNode, args))


if __name__ == '__main__':
    main()
