"""What every encdec_ros node shares: start and stop, parameters, QoS and diagnostics.

A node's executable is::

    def main(args: list[str] | None = None) -> None:
        sys.exit(run_node(AnomalyDetectorNode, args))

:func:`run_node` turns a user mistake raised while the node starts (an
:class:`~encdec_ros.errors.EncdecError`, a parameter file that cannot be read) into one fatal
log line and exit status 1, and Ctrl-C, SIGTERM or an external shutdown into a clean exit 0.

Shutdown on a signal: rclpy's own handlers are not installed (they shut the context down from
inside the signal, under the feet of a running callback, and rclpy's Python handler raises
KeyboardInterrupt inside callbacks that the EventsExecutor calls from C++, which aborts the
process). Instead SIGINT and SIGTERM only *request* shutdown: the spin loop ends after the
callback in progress, the executor, the node and the context are destroyed in that order, and
further signals during teardown are ignored. Before the node spins (rclpy.init, loading the
model) the first signal still interrupts at once.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from encdec_ros.errors import ConfigError, EncdecError

SPIN_TIMEOUT_S = 0.1
"""Longest wait inside one spin step: how soon a requested shutdown is noticed when idle."""
EXECUTOR_ENV = 'ENCDEC_ROS_EXECUTOR'
"""Set to 'single' to use SingleThreadedExecutor instead of the EventsExecutor."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# --------------------------------------------------------------------------- run_node


def make_executor(context: rclpy.Context | None = None) -> Any:
    """Return rclpy's EventsExecutor where present (about 4x the message rate), else the
    SingleThreadedExecutor; ``ENCDEC_ROS_EXECUTOR=single`` forces the latter."""
    if os.environ.get(EXECUTOR_ENV, 'events') != 'single':
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:
            pass
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def spin(executor: Any, context: rclpy.Context | None = None, *,
         should_stop: Callable[[], bool] | None = None) -> None:
    """Spin until the context shuts down or ``should_stop()`` is true.

    Uses ``spin_once`` with a finite timeout: with the rclpy 9.1 wheels, the EventsExecutor's
    ``spin()`` (an infinite wait) runs no callbacks at all, while ``spin_once(timeout_sec=...)``
    does; the timeout also bounds how long a requested stop waits. Raises
    ExternalShutdownException or KeyboardInterrupt like ``spin()``.
    """
    while rclpy.ok(context=context) and not (should_stop is not None and should_stop()):
        executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)


class ShutdownRequest:
    """SIGINT / SIGTERM handling that only requests shutdown (see the module docstring).

    While :attr:`interruptible` is true (before the node spins) the first signal raises
    KeyboardInterrupt, so a slow start (a TensorRT engine build) can still be interrupted;
    afterwards a signal only sets :attr:`requested`. Handlers are installed on entering the
    ``with`` block (main thread only; elsewhere nothing is installed); the previous ones are
    restored on leaving it unless a signal came: then the process is exiting, and later
    signals are ignored (SIG_IGN, which the interpreter keeps while it shuts down).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signals = 0
        self.interruptible = True
        self._previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals += 1
        first = not self.requested
        self.requested = True
        if first and self.interruptible:
            raise KeyboardInterrupt

    def __enter__(self) -> 'ShutdownRequest':
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self)
        return self

    def __exit__(self, *exc: object) -> None:
        # After a stop signal the process is on its way out, and a second Ctrl-C (ros2
        # launch forwards its own SIGINT right after the terminal's) must not end it with
        # KeyboardInterrupt or, once the interpreter has reset its handlers while exiting,
        # with the signal's default action (exit status -2): ignore them from now on.
        # Without a signal the caller's handlers come back.
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.signals else handler)
        self._previous.clear()


class _RclpyLogBridge(logging.Handler):
    """Python log records of ``encdec_ros.*`` (the engine's device fallback, ...) go to rclpy's
    logger of the node (the console and the ROS log file, like the node's own lines): by the
    node's name while it is being built, by its logger (namespace included) afterwards."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.INFO)
        self.node_name = name

    def emit(self, record: logging.LogRecord) -> None:
        logger = rclpy.logging.get_logger(self.node_name)
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            logger.error(text)
        elif record.levelno >= logging.WARNING:
            logger.warning(text)
        else:
            logger.info(text)


def run_node(node_cls: Callable[[], Node], args: list[str] | None = None) -> int:
    """Initialise rclpy, build the node, spin it and shut down; return the exit status.

    Args:
        node_cls: The node class (or any callable returning a node). Its optional class
            attribute ``NODE_NAME`` names the logger used when construction fails.
        args: Command-line arguments for rclpy (``--ros-args ...``); default ``sys.argv``.

    Returns:
        0 after Ctrl-C, SIGTERM or an external shutdown; 1 after an EncdecError or a
        parameter file or ROS argument that rclpy cannot read (logged as one fatal line, no
        traceback). Other exceptions are bugs and propagate with their traceback.
    """
    name = getattr(node_cls, 'NODE_NAME', None) or getattr(node_cls, '__name__', 'encdec_ros')
    logger = logging.getLogger('encdec_ros')
    bridge = _RclpyLogBridge(name)
    logger.addHandler(bridge)
    stop = ShutdownRequest()
    try:
        with stop:
            return _run(node_cls, args, name, stop, bridge)
    except KeyboardInterrupt:       # a signal while rclpy.init was running
        rclpy.try_shutdown()
        return 0
    finally:
        logger.removeHandler(bridge)


def _run(node_cls: Callable[[], Node], args: list[str] | None, name: str,
         stop: ShutdownRequest, bridge: _RclpyLogBridge) -> int:
    try:
        check_ros_args(sys.argv if args is None else args)
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except EncdecError as err:
        rclpy.logging.get_logger(name).fatal(str(err))
        return 1
    except RuntimeError as err:     # rclpy's RCLError: arguments rcl cannot parse
        rclpy.logging.get_logger(name).fatal(_rcl_message(err))
        return 1
    node: Node | None = None
    executor: Any = None
    try:
        node = node_cls()
        name = node.get_name()
        bridge.node_name = node.get_logger().name
        executor = make_executor()
        executor.add_node(node)
        stop.interruptible = False
        if not stop.requested:
            spin(executor, should_stop=lambda: stop.requested)
        return 0
    except EncdecError as err:
        rclpy.logging.get_logger(name).fatal(str(err))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        stop.interruptible = False
        stop.requested = True        # later signals are ignored while tearing down
        if executor is not None:
            if node is not None:
                executor.remove_node(node)
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


# --------------------------------------------------------------------------- ROS arguments


def ros_args_params_files(args: Sequence[str]) -> list[str]:
    """The ``--params-file`` paths inside the ``--ros-args`` sections of ``args``."""
    files: list[str] = []
    in_ros = False
    items = list(args)
    for i, item in enumerate(items):
        if item == '--ros-args':
            in_ros = True
        elif item == '--':
            in_ros = False
        elif in_ros and item == '--params-file' and i + 1 < len(items):
            files.append(items[i + 1])
    return files


def check_params_file(path: str | Path) -> None:
    """Refuse, in one sentence, a parameter file that rcl would fail on with a traceback.

    Raises:
        ConfigError: The file is missing, not valid YAML, or not shaped like
            ``<node name>: {ros__parameters: {...}}`` (namespaces may nest above it).
    """
    path = Path(path)
    fix = 'fix it or pass another file (--params-file, or params_file:= to ros2 launch)'
    try:
        text = path.read_text(encoding='utf-8')
    except FileNotFoundError:
        raise ConfigError(f'parameter file {path} does not exist; pass an existing YAML '
                          'file (--params-file, or params_file:= to ros2 launch)') from None
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else 'not UTF-8 text'
        raise ConfigError(f'parameter file {path} cannot be read ({why}); {fix}') from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' at line {mark.line + 1}' if mark is not None else ''
        problem = getattr(err, 'problem', None) or _first_line(err)
        raise ConfigError(f'parameter file {path} is not valid YAML ({problem}{where}); '
                          f'{fix}') from None
    problem = _params_shape_problem(data)
    if problem:
        raise ConfigError(f'parameter file {path} is not a ROS 2 parameter file ({problem}); '
                          'write it as <node name>: {ros__parameters: {name: value}}, like '
                          'config/anomaly_detector.yaml')


def _params_shape_problem(data: Any, where: str = '') -> str:
    if data is None and not where:
        return ''                   # an empty file sets nothing; rcl accepts it
    if not isinstance(data, dict):
        return f'{where or "the top level"} is not a mapping of node names'
    if 'ros__parameters' in data:
        extra = [str(k) for k in data if k != 'ros__parameters']
        if extra:
            return f'{where} has {extra[0]!r} beside ros__parameters'
        if data['ros__parameters'] is not None and not isinstance(data['ros__parameters'], dict):
            return f'{where}/ros__parameters is not a mapping of parameter names'
        return ''
    if where and not data:
        return f'{where} has no ros__parameters'
    for key, value in data.items():
        inner = f'{where}/{key}'.replace('//', '/')
        if not isinstance(value, dict):
            return f'{inner} holds a value where ros__parameters was expected'
        problem = _params_shape_problem(value, inner)
        if problem:
            return problem
    return ''


def check_ros_args(args: Sequence[str]) -> None:
    """Check every ``--params-file`` of ``args`` (see :func:`check_params_file`)."""
    for path in ros_args_params_files(args):
        check_params_file(path)


def _rcl_message(err: BaseException) -> str:
    """rcl's init error in one sentence, without its C source locations."""
    text = _first_line(err)
    for cut in (', at /', ' at /'):
        if cut in text:
            text = text[:text.index(cut)]
    text = text.removeprefix('failed to initialize rcl: ')
    return (f'rclpy cannot start with these ROS arguments ({text.rstrip(".")}); check the '
            '--ros-args, -p name:=value and --params-file options')


# --------------------------------------------------------------------------- names


def relative_topic(name: str) -> str:
    """A spec's topic as a node subscribes to it: relative (``/imu`` -> ``imu``), so that the
    node's namespace and ``-r`` remaps apply (``/imu`` in namespace ``robot1`` is
    ``/robot1/imu``; ``-r imu:=/imu`` takes it back to the absolute topic)."""
    return name.lstrip('/')


# --------------------------------------------------------------------------- parameters


def resolve_share_path(path: str) -> str:
    """Expand ``~``; a relative path that does not exist is also tried under the installed
    share directory (``models/denoise_sim_imu``, ``config/quad_x.yaml``). Empty stays empty."""
    if not path:
        return ''
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return str(p)
    try:
        from ament_index_python.packages import get_package_share_directory
        share = Path(get_package_share_directory('encdec_ros'))
    except (ImportError, LookupError, ValueError):  # not installed with colcon
        return str(p)
    candidate = share / p
    return str(candidate) if candidate.exists() else str(p)


@dataclass(frozen=True)
class Param:
    """One node parameter: name, default, description and optional constraints.

    Attributes:
        name: Parameter name.
        default: Default value; its Python type gives the parameter type.
        description: What it does, with units.
        read_only: Cannot be changed after start-up.
        min: Lowest allowed value (int or float parameters).
        max: Highest allowed value.
        step: Step for integer ranges (0: any).
        constraints: Free text for ``additional_constraints`` (default: the range).
        type: Type name where the default cannot tell it (an empty list): 'bool', 'int',
            'double', 'string', 'bool_array', 'int_array', 'double_array', 'string_array'.
    """

    name: str
    default: Any
    description: str
    read_only: bool = False
    min: float | None = None
    max: float | None = None
    step: float = 0
    constraints: str = ''
    type: str | None = None


def device_param(default: str) -> Param:
    """The ``device`` parameter every node takes (the same names as the engine's)."""
    return Param('device', default, 'Inference device: auto (TensorRT > CUDA > CPU, probed '
                 'quietly); tensorrt or cuda (that provider, else the next one down with a WARN '
                 'in the log and /diagnostics); tensorrt_strict or cuda_strict (that provider or '
                 'the node stops); cpu', read_only=True,
                 constraints='one of auto, tensorrt, cuda, cpu, tensorrt_strict, cuda_strict')


_TYPES = {
    'bool': ParameterType.PARAMETER_BOOL,
    'int': ParameterType.PARAMETER_INTEGER,
    'double': ParameterType.PARAMETER_DOUBLE,
    'string': ParameterType.PARAMETER_STRING,
    'bool_array': ParameterType.PARAMETER_BOOL_ARRAY,
    'int_array': ParameterType.PARAMETER_INTEGER_ARRAY,
    'double_array': ParameterType.PARAMETER_DOUBLE_ARRAY,
    'string_array': ParameterType.PARAMETER_STRING_ARRAY,
}


def _type_name(value: Any) -> str | None:
    for kind, name in ((bool, 'bool'), (int, 'int'), (float, 'double'), (str, 'string')):
        if isinstance(value, kind):
            return name
    if isinstance(value, (list, tuple)) and value:
        inner = {_type_name(v) for v in value}
        if inner == {'int', 'double'}:
            inner = {'double'}
        if len(inner) == 1 and None not in inner:
            return f'{inner.pop()}_array'
    return None


def _descriptor(spec: Param, kind: str) -> ParameterDescriptor:
    desc = ParameterDescriptor(type=_TYPES[kind], description=spec.description,
                               read_only=spec.read_only)
    low, high = spec.min, spec.max
    if kind == 'int' and (low is not None or high is not None):
        desc.integer_range = [IntegerRange(
            from_value=int(low) if low is not None else -2**63,
            to_value=int(high) if high is not None else 2**63 - 1, step=int(spec.step))]
    elif kind == 'double' and (low is not None or high is not None):
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(low) if low is not None else -sys.float_info.max,
            to_value=float(high) if high is not None else sys.float_info.max,
            step=float(spec.step))]
    text = spec.constraints
    if not text and (low is not None or high is not None):
        text = ' and '.join(part for part in (
            f'>= {low}' if low is not None else '', f'<= {high}' if high is not None else '')
            if part)
    desc.additional_constraints = text
    return desc


def declare_parameters(node: Node, specs: Iterable[Param]) -> dict[str, Any]:
    """Declare every parameter with a type, a default and a descriptor; return the values.

    Raises:
        ConfigError: A value given at start-up has the wrong type or is out of range.
    """
    values: dict[str, Any] = {}
    for spec in specs:
        kind = spec.type or _type_name(spec.default)
        if kind not in _TYPES:
            raise ValueError(f'parameter {spec.name}: give Param.type for default '
                             f'{spec.default!r}')
        default = spec.default
        if kind == 'double':
            default = float(default)
        elif kind == 'double_array':
            default = [float(v) for v in default]
        elif isinstance(default, tuple):
            default = list(default)
        if kind.endswith('_array') and not default:
            # an empty list has no type of its own: declare the type (unset until given)
            from rclpy.parameter import Parameter
            default = Parameter.Type(_TYPES[kind])
        try:
            param = node.declare_parameter(spec.name, default, _descriptor(spec, kind))
        except ParameterException as err:
            raise ConfigError(f'parameter {spec.name!r} of {node.get_name()} is invalid '
                              f'({_first_line(err)}); it must be a {kind.replace("_", " ")}'
                              f'{_range_text(spec)}') from err
        values[spec.name] = param.value if param.value is not None else []
    return values


def _range_text(spec: Param) -> str:
    if spec.min is None and spec.max is None:
        return ''
    low = '-inf' if spec.min is None else spec.min
    high = 'inf' if spec.max is None else spec.max
    return f' in [{low}, {high}]'


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --------------------------------------------------------------------------- QoS


def qos_profile(reliability: str = 'best_effort', depth: int = 5) -> QoSProfile:
    """A keep-last, volatile QoS profile; the defaults equal ``qos_profile_sensor_data``.

    Args:
        reliability: 'best_effort' (sensor streams) or 'reliable'.
        depth: History depth, at least 1.
    """
    policies = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                'reliable': ReliabilityPolicy.RELIABLE}
    if reliability not in policies:
        raise ConfigError(f'QoS reliability {reliability!r} is not one of best_effort, '
                          'reliable; set the reliability parameter to one of them')
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f'QoS depth must be a whole number >= 1, got {depth!r}; '
                          'set the qos_depth parameter to e.g. 5')
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=policies[reliability], durability=DurabilityPolicy.VOLATILE)


# --------------------------------------------------------------------------- diagnostics


LEVELS = {'OK': 0, 'WARN': 1, 'ERROR': 2, 'STALE': 3}
_LEVEL_BYTES = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR,
                3: DiagnosticStatus.STALE}


def _level(level: Any) -> int:
    if isinstance(level, (bytes, bytearray)) and len(level) == 1:
        level = level[0]
    if isinstance(level, str) and level.upper() in LEVELS:
        return LEVELS[level.upper()]
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 3:
        return level
    raise ValueError(f'diagnostic level {level!r} is not one of OK, WARN, ERROR, STALE')


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


class RecentCount:
    """Events counted over the last ``window_s`` seconds (one-second buckets) and in total,
    so that a WARN about them clears once they stop."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.total = 0
        self._buckets: deque[list[int]] = deque()

    def add(self, count: int = 1) -> None:
        """Count ``count`` events now."""
        second = int(time.monotonic())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self.total += count
        self._prune(second)

    def recent(self) -> int:
        """Events in the last ``window_s`` seconds."""
        self._prune(int(time.monotonic()))
        return sum(count for _, count in self._buckets)

    def _prune(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()


class DiagnosticsReporter:
    """Publish one DiagnosticStatus on ``/diagnostics`` from a steady-clock timer.

    The node reports its state with :meth:`update`, or gives ``source``, a function returning
    ``(level, message, values)`` that is asked just before each publication (so that nothing
    is computed per message), and calls :meth:`mark_input` for each message it handles (cheap:
    a timestamp and a counter). When no input has come for ``stale_after_s`` the status turns
    STALE by itself; ``inputs`` and ``input rate (Hz)`` are added to the values.

    Under a flood of input rclpy's EventsExecutor can starve timers (a node's /diagnostics
    timer was seen not to fire for 25 s): a node's data path calls :meth:`publish_due`, which
    publishes when a period has passed since the last publication, whoever made it. A node
    serving several streams builds one reporter per stream (``timer=False``, ``prefix``) and
    publishes their statuses in one message (:func:`publish_statuses`).

    Args:
        node: The node that owns the publisher and the timer.
        name: Status name; published as ``'<fully qualified node name>: <name>'``
            (``/robot1/anomaly_detector: anomaly``), so nodes in two namespaces differ.
        hardware_id: What the status is about (e.g. the input topic or the robot part).
        period_s: Publishing period in seconds.
        stale_after_s: Seconds without input after which the status is STALE; None: the
            node reports the absence of input itself (the allocator's watchdog does).
        topic: Where to publish.
        source: Asked for (level, message, values) before each publication.
        prefix: What the status name starts with (default: the node's fully qualified name).
        timer: Publish from a timer of its own; False: the owner publishes.
    """

    def __init__(self, node: Node, name: str, hardware_id: str, period_s: float = 1.0, *,
                 stale_after_s: float | None = 3.0, topic: str = '/diagnostics',
                 source: Callable[[], tuple[Any, str, Mapping[str, Any]]] | None = None,
                 prefix: str | None = None, timer: bool = True) -> None:
        if not period_s > 0 or not (stale_after_s is None or stale_after_s > 0):
            raise ConfigError(f'diagnostics period ({period_s}) and stale time '
                              f'({stale_after_s}) must be positive seconds')
        self._node = node
        self._source = source
        self.name = f'{prefix or node.get_fully_qualified_name()}: {name}'
        self.period_s = period_s
        self.published = -math.inf        # time.monotonic() of the last publication
        self.hardware_id = hardware_id
        self.stale_after_s = stale_after_s
        self._level = 0
        self._message = 'running'
        self._values: dict[str, Any] = {}
        self._standing: dict[str, tuple[int, str]] = {}
        self._inputs = 0
        self._last_input: float | None = None
        self._rate_mark = (time.monotonic(), 0)
        self._rate = 0.0
        self._pub = node.create_publisher(DiagnosticArray, topic, 10) if timer else None
        self._timer = node.create_timer(period_s, lambda: self.publish_due(),
                                        clock=Clock(clock_type=ClockType.STEADY_TIME)) \
            if timer else None

    def mark_input(self, count: int = 1, when: float | None = None) -> None:
        """Note that ``count`` input messages arrived (the last at ``when``, a
        ``time.monotonic()`` value; default now)."""
        self._last_input = time.monotonic() if when is None else when
        self._inputs += count

    def update(self, level: Any, message: str, values: Mapping[str, Any] | None = None) -> None:
        """Set the level ('OK', 'WARN', 'ERROR', 'STALE' or 0–3), message and values."""
        self._level = _level(level)
        self._message = message
        if values is not None:
            self._values = dict(values)

    def set_standing(self, key: str, level: Any, text: str) -> None:
        """A condition that holds until cleared (a device fallback): every status is then at
        least ``level`` and its message ends with ``text``; an empty ``text`` clears ``key``."""
        if text:
            self._standing[key] = (_level(level), text)
        else:
            self._standing.pop(key, None)

    def report_engine(self, engine: Any) -> None:
        """Standing WARN naming the provider in use when ``engine`` (an InferenceEngine, or
        None) does not run on the device asked for."""
        self.set_standing('device', 'WARN', getattr(engine, 'fallback', '') or '')

    @property
    def level(self) -> int:
        """The level the next publication will carry (0 OK … 3 STALE)."""
        return self._current()[0]

    def _current(self) -> tuple[int, str]:
        now = time.monotonic()
        if self.stale_after_s is None:
            level, message = self._level, self._message
        elif self._last_input is None:
            level, message = 3, 'waiting for the first input'
        elif now - self._last_input > self.stale_after_s:
            level, message = 3, f'no input for {now - self._last_input:.1f} s'
        else:
            level, message = self._level, self._message
        for extra, text in self._standing.values():
            level = max(level, extra)
            message = f'{message}; {text}'
        return level, message

    def status(self) -> DiagnosticStatus:
        """Build the DiagnosticStatus that would be published now."""
        if self._source is not None:
            self.update(*self._source())
        now = time.monotonic()
        then, count = self._rate_mark
        if now - then >= 0.5:
            self._rate = (self._inputs - count) / (now - then)
            self._rate_mark = (now, self._inputs)
        level, message = self._current()
        values = dict(self._values)
        values['inputs'] = self._inputs
        values['input rate (Hz)'] = round(self._rate, 3) if math.isfinite(self._rate) else 0.0
        return DiagnosticStatus(level=_LEVEL_BYTES[level], name=self.name, message=message,
                                hardware_id=self.hardware_id,
                                values=[KeyValue(key=str(k), value=_text(v))
                                        for k, v in values.items()])

    def publish(self) -> None:
        """Publish the current status now."""
        if self._pub is not None:
            publish_statuses(self._node, self._pub, [self])

    def publish_due(self, now: float | None = None) -> bool:
        """Publish if a period has passed since the last publication (``now``: a
        ``time.monotonic()`` value); whether it did. The timer calls it, and so may a node's
        data path, which a flood of input cannot starve."""
        now = time.monotonic() if now is None else now
        # a timer firing a little early still publishes (it is due, not a burst)
        if now - self.published < 0.9 * self.period_s:
            return False
        self.publish()
        return True

    def destroy(self) -> None:
        """Stop the timer and the publisher."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)


def publish_statuses(node: Node, publisher: Any, reporters: Sequence[DiagnosticsReporter]
                     ) -> None:
    """Publish the reporters' current statuses in one DiagnosticArray, and note the time."""
    msg = DiagnosticArray()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.status = [r.status() for r in reporters]
    publisher.publish(msg)
    now = time.monotonic()
    for r in reporters:
        r.published = now


# --------------------------------------------------------------------------- inputs


RECENT_S = 5.0
"""How long a WARN or ERROR about an input stays up after the last event that caused it."""
TYPE_CHECK_S = 1.0
"""Seconds between checks of the ROS graph for publishers of another type."""
COUNTS = ('received', 'used', 'dropped (stamps)', 'pending', 'short', 'unstamped',
          'undecodable', 'non-finite', 'missing (stamp gaps)', 'lost (rmw)', 'gaps',
          'jumps back', 'jumps forward')
"""The counters kept per input topic, in the order /diagnostics shows them. Every message
received is counted once in ``used``, ``dropped (stamps)``, ``pending`` (held back until the
next stamp), ``short`` (arrays shorter than the spec), ``unstamped`` (zero header stamp) or
``undecodable`` (bytes that do not match the message definition);
``non-finite`` counts the used ones holding NaN or infinite values; ``missing`` and ``lost``
estimate messages that never arrived (from the gaps in the stamps, and from the middleware)."""


class _Input:
    __slots__ = ('name', 'type', 'counts', 'seen', 'last_arrival', 'last_stamp_ns',
                 'period_s', 'bad_channels', 'wrong', 'qos', 'rate', 'mark', 'changed')

    def __init__(self, name: str, msgtype: str) -> None:
        self.name = name
        self.type = msgtype
        self.counts = dict.fromkeys(COUNTS, 0)
        self.seen = dict(self.counts)          # the counts at the last report
        self.changed: dict[str, float] = {}    # counter -> when it last grew
        self.last_arrival: float | None = None
        self.last_stamp_ns: int | None = None
        self.period_s: float | None = None
        self.bad_channels: list[str] = []
        self.wrong: list[str] = []             # 'type by node' of publishers of another type
        self.qos = 0                           # incompatible QoS events
        self.rate = 0.0
        self.mark: tuple[float, int] | None = None


class InputMonitor:
    """Per input topic of a node: arrivals, what became of each message, and what is wrong.

    The node calls :meth:`arrived` for every message (cheap), :meth:`add` or :meth:`set` for
    the counters of :data:`COUNTS`, and :meth:`report` just before publishing diagnostics:
    it returns the worst level, one sentence per problem (each naming its topic) and the
    values ``'<topic>: rate (Hz)'``, ``'<topic>: last stamp age (s)'``, ``'<topic>: silent
    for (s)'`` and ``'<topic>: <counter>'``. A subscription of the wrong type receives
    nothing at all, so the ROS graph is checked for publishers of another type
    (``get_publishers_info_by_topic``), and the middleware's incompatible-QoS and
    message-lost events are counted (:meth:`event_callbacks`).

    Args:
        node: The node (for its clock and the graph).
        inputs: (resolved topic name, message type ``pkg/msg/Name``) per input.
        silent_after_s: An input without a message for this long (and for at least four of
            its periods, see :meth:`expect_period`) is an ERROR; None: not checked.
        quiet: Kinds of problem the node words itself (e.g. 'non-finite'): counted and shown
            in the values, but not made a sentence here.
    """

    def __init__(self, node: Node, inputs: Iterable[tuple[str, str]], *,
                 silent_after_s: float | None = 0.5, quiet: Iterable[str] = ()) -> None:
        self._node = node
        self.inputs = [_Input(name, msgtype) for name, msgtype in inputs]
        self.silent_after_s = silent_after_s
        self.quiet = frozenset(quiet)
        self._start = time.monotonic()
        self._checked = 0.0
        self._active: set[tuple[str, str]] = set()
        self.started: list[tuple[int, str, str]] = []   # problems that began, for the log

    def reset(self) -> None:
        """Forget the counts and arrivals (a fresh start)."""
        self.inputs = [_Input(i.name, i.type) for i in self.inputs]
        self._start = time.monotonic()
        self._active = set()

    def log_started(self, logger: Any, *, skip: Iterable[str] = ()) -> None:
        """Log each problem once, when it begins (WARN or ERROR as on /diagnostics), but
        for the kinds in ``skip`` (that the node logs in more detail itself)."""
        skip = set(skip)
        for level, kind, text in self.started:
            if kind in skip:
                continue
            if level >= 2:      # rclpy wants one severity per call site
                logger.error(text)
            else:
                logger.warning(text)
        self.started.clear()

    # ------------------------------------------------------------------ the hot path

    def arrived(self, index: int, count: int = 1, when: float | None = None) -> None:
        """``count`` messages of input ``index`` were delivered (the last at ``when``, a
        ``time.monotonic()`` value; default now)."""
        item = self.inputs[index]
        item.counts['received'] += count
        item.last_arrival = time.monotonic() if when is None else when

    def add(self, index: int, key: str, count: int = 1) -> None:
        """Add to one counter of input ``index``."""
        self.inputs[index].counts[key] += count

    def set(self, index: int, key: str, value: int) -> None:
        """Set one counter (kept by a core, e.g. the aligner's)."""
        self.inputs[index].counts[key] = int(value)

    def stamp(self, index: int, stamp_ns: int) -> None:
        """The newest stamp of input ``index``."""
        self.inputs[index].last_stamp_ns = stamp_ns

    def nonfinite(self, index: int, channels: list[str], count: int = 1) -> None:
        """``count`` used messages of input ``index`` held NaN or inf (the last in these
        channels)."""
        item = self.inputs[index]
        item.counts['non-finite'] += count
        item.bad_channels = channels

    def expect_period(self, index: int, seconds: float | None) -> None:
        """The input's measured period (its silence is judged against four of them)."""
        self.inputs[index].period_s = seconds

    def event_callbacks(self, index: int) -> Any:
        """SubscriptionEventCallbacks counting lost messages and incompatible QoS offers."""
        from rclpy.event_handler import SubscriptionEventCallbacks

        def lost(info: Any) -> None:
            self.inputs[index].counts['lost (rmw)'] = int(info.total_count)

        def qos(info: Any) -> None:
            self.inputs[index].qos = int(info.total_count)

        return SubscriptionEventCallbacks(message_lost=lost, incompatible_qos=qos)

    # ------------------------------------------------------------------ reporting

    def check_types(self) -> None:
        """Look in the ROS graph for publishers of another type on each input."""
        self._checked = time.monotonic()
        for item in self.inputs:
            try:
                infos = self._node.get_publishers_info_by_topic(item.name)
            except Exception:  # noqa: BLE001 - a graph query must never stop the node
                continue
            item.wrong = [f'{info.topic_type} by {info.node_namespace.rstrip("/")}/'
                          f'{info.node_name}' for info in infos if info.topic_type != item.type]

    def report(self) -> tuple[int, list[str], dict[str, Any]]:
        """(worst level 0-2, one sentence per problem, values) for /diagnostics; problems
        that began since the last report are also added to :attr:`started` (for the log)."""
        now = time.monotonic()
        if now - self._checked >= TYPE_CHECK_S:
            self.check_types()
        clock_ns = self._node.get_clock().now().nanoseconds
        arrivals = [i.last_arrival for i in self.inputs if i.last_arrival is not None]
        # silence is an input's fault only while another one still arrives (when all stop,
        # the status turns STALE instead)
        others = now - max(arrivals) if arrivals else math.inf
        level, problems, values = 0, [], {}
        active: set[tuple[str, str]] = set()
        for item in self.inputs:
            c = item.counts
            grew = {key for key, value in c.items() if value > item.seen[key]}
            for key in grew:
                item.changed[key] = now
            item.seen = dict(c)
            if item.mark is not None and now - item.mark[0] >= 0.5:
                item.rate = (c['received'] - item.mark[1]) / (now - item.mark[0])
                item.mark = (now, c['received'])
            elif item.mark is None:
                item.mark = (now, c['received'])
            idle = now - (item.last_arrival if item.last_arrival is not None else self._start)
            recent = {k for k, t in item.changed.items() if now - t <= RECENT_S}
            for lvl, kind, text in self._problems(item, idle, others, recent, grew):
                if kind in self.quiet:
                    continue
                level = max(level, lvl)
                problems.append(text)
                active.add((item.name, kind))
                if (item.name, kind) not in self._active:
                    self.started.append((lvl, kind, text))
            name = item.name
            values[f'{name}: rate (Hz)'] = round(item.rate, 3)
            values[f'{name}: last stamp age (s)'] = \
                round((clock_ns - item.last_stamp_ns) * 1e-9, 3) \
                if item.last_stamp_ns is not None else 'none'
            values[f'{name}: silent for (s)'] = round(idle, 3)
            for key, value in c.items():
                values[f'{name}: {key}'] = value
            values[f'{name}: publishers of another type'] = len(item.wrong)
        self._active = active
        return level, problems, values

    def _problems(self, item: _Input, idle: float, others: float, recent: set[str],
                  grew: set[str]) -> list[tuple[int, str, str]]:
        name, c = item.name, item.counts
        out: list[tuple[int, str, str]] = []
        if item.wrong:
            right = c['received'] > 0 and idle <= RECENT_S
            out.append((1 if right else 2, 'wrong type',
                        f'{name} is published as {", ".join(item.wrong)}, but {item.type} is '
                        f'expected: those messages never arrive; publish {item.type} there or '
                        'remap the input'))
        if item.qos:
            out.append((2 if c['received'] == 0 else 1, 'qos',
                        f'{name} has a publisher with incompatible QoS (e.g. best_effort '
                        'while this node asks for reliable): its messages never arrive; match '
                        'the reliability'))
        limit = self.silent_after_s
        if limit is not None and not item.wrong:
            limit = max(limit, 4 * (item.period_s or 0.0))
            if idle > limit and others <= limit:
                out.append((2, 'silent', f'no message on {name} yet' if c['received'] == 0
                            else f'no message on {name} for {idle:.1f} s'))
        if 'non-finite' in recent:
            channels = ', '.join(item.bad_channels[:4]) + \
                (' ...' if len(item.bad_channels) > 4 else '')
            out.append((2, 'non-finite',
                        f'{name} holds NaN or infinite values in {channels} (a dead sensor?)'))
        if 'unstamped' in recent:
            out.append((2, 'unstamped',
                        f'{name} arrives with zero header stamps (its driver leaves them unset), '
                        'so its messages cannot be timed; make the driver stamp them, or use '
                        f'stamp: receive under {name} in the spec'))
        if 'undecodable' in recent:
            out.append((2, 'undecodable',
                        f'{name}: {c["undecodable"]} messages that do not match {item.type} '
                        'were left out (a publisher with another definition of the type?)'))
        if 'short' in recent:
            only = 'short' in grew and 'used' not in grew      # since the last report
            out.append((2 if only else 1, 'short',
                        f'{name}: {c["short"]} messages with fewer array elements than the '
                        'spec needs were not used' + ('; none is usable now' if only else '')))
        if 'dropped (stamps)' in recent:
            out.append((1, 'dropped',
                        f'{name}: {c["dropped (stamps)"]} messages dropped whose stamps jump '
                        'away from the ones around them'))
        if recent & {'missing (stamp gaps)', 'lost (rmw)'}:
            out.append((1, 'missing',
                        f'{name}: about {c["missing (stamp gaps)"] + c["lost (rmw)"]} messages '
                        'missing so far (gaps in its stamps: a full queue, a lossy link or a '
                        'slow publisher); no decision spans a long gap'))
        if 'jumps back' in recent:
            out.append((1, 'back', f'{name}: its stamps jumped back in time '
                                   f'({c["jumps back"]} so far): the time line starts again'))
        if 'jumps forward' in recent:
            out.append((1, 'forward',
                        f'{name}: its stamps jumped forward ({c["jumps forward"]} so far)'))
        return out
