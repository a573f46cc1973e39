"""Shared node plumbing over real DDS: run_node, parameters, QoS, diagnostics."""

from __future__ import annotations

import os
import signal
import time

import pytest

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402

from encdec_ros.errors import ConfigError, EncdecError, ModelDirError  # noqa: E402
from encdec_ros.nodes.common import (  # noqa: E402
    EXECUTOR_ENV,
    DiagnosticsReporter,
    Param,
    check_params_file,
    declare_parameters,
    make_executor,
    qos_profile,
    ros_args_params_files,
    run_node,
)

FIX = 'model directory /no/such/dir does not exist; pass the directory written by `encdec train`'


# --------------------------------------------------------------------------- run_node


class BrokenNode(Node):
    NODE_NAME = 'broken_node'

    def __init__(self) -> None:
        super().__init__(self.NODE_NAME)
        raise ModelDirError(FIX)


class StopsItself(Node):
    """Shuts the default context down from a timer, as `ros2 lifecycle`/a launch stop would."""

    def __init__(self) -> None:
        super().__init__('stops_itself')
        self.ticks = 0
        self.create_timer(0.05, self._tick)

    def _tick(self) -> None:
        self.ticks += 1
        if self.ticks == 3:
            rclpy.try_shutdown()


class InterruptedNode(Node):
    def __init__(self) -> None:
        super().__init__('interrupted')
        self.create_timer(0.05, self._tick)

    def _tick(self) -> None:
        raise KeyboardInterrupt


class FailsLater(Node):
    def __init__(self) -> None:
        super().__init__('fails_later')
        self.create_timer(0.05, self._tick)

    def _tick(self) -> None:
        raise ConfigError('parameter threshold must be positive; set it to e.g. 1.0')


# rclpy's EventsExecutor logs callback exceptions through the deprecated logger.warn().
QUIET_RCLPY = pytest.mark.filterwarnings('ignore:Deprecated in favor of:DeprecationWarning')


@pytest.fixture(params=['events', 'single'])
def executor_kind(request, monkeypatch) -> str:
    monkeypatch.setenv(EXECUTOR_ENV, request.param)
    return request.param


def test_construction_error_logs_one_fatal_line_and_returns_1(capfd, executor_kind):
    assert run_node(BrokenNode, args=[]) == 1
    err = capfd.readouterr().err
    assert FIX in err
    assert 'FATAL' in err and 'broken_node' in err
    assert 'Traceback' not in err
    assert len([line for line in err.splitlines() if FIX in line]) == 1
    assert not rclpy.ok()


def test_external_shutdown_exits_cleanly(executor_kind):
    t0 = time.monotonic()
    assert run_node(StopsItself, args=[]) == 0
    assert time.monotonic() - t0 < 5
    assert not rclpy.ok()


@QUIET_RCLPY
def test_keyboard_interrupt_exits_cleanly(executor_kind):
    assert run_node(InterruptedNode, args=[]) == 0
    assert not rclpy.ok()


@QUIET_RCLPY
def test_user_error_while_spinning_returns_1(capfd, executor_kind):
    assert run_node(FailsLater, args=[]) == 1
    assert 'set it to e.g. 1.0' in capfd.readouterr().err


class SignalsItself(Node):
    """Sends itself a stop signal twice from a timer, while publishing from another timer
    (what the terminal's Ctrl-C and the SIGINT that ros2 launch forwards do)."""

    def __init__(self, signum: int) -> None:
        super().__init__('signals_itself')
        self.signum = signum
        self.pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(0.001, lambda: self.pub.publish(DiagnosticArray()))
        self.create_timer(0.05, self._tick)
        self.ticks = 0

    def _tick(self) -> None:
        self.ticks += 1
        if self.ticks == 2:
            os.kill(os.getpid(), self.signum)
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def restore_signals():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_stop_signals_end_the_spin_and_later_ones_are_ignored(capfd, executor_kind, signum,
                                                              restore_signals):
    t0 = time.monotonic()
    assert run_node(lambda: SignalsItself(signum), args=[]) == 0
    assert time.monotonic() - t0 < 5
    assert not rclpy.ok()
    err = capfd.readouterr().err
    assert 'Traceback' not in err and 'Exception' not in err, err
    # the process is on its way out: a further signal must not end it with an exception
    assert signal.getsignal(signum) == signal.SIG_IGN
    os.kill(os.getpid(), signum)


def test_handlers_come_back_when_no_signal_came():
    before = signal.getsignal(signal.SIGINT)
    assert run_node(StopsItself, args=[]) == 0
    assert signal.getsignal(signal.SIGINT) is before


def test_bug_keeps_its_traceback():
    class Buggy(Node):
        def __init__(self) -> None:
            raise ZeroDivisionError('bug')

    with pytest.raises(ZeroDivisionError):
        run_node(Buggy, args=[])
    assert not rclpy.ok()


# --------------------------------------------------------------------------- parameters


SPECS = [
    Param('model_dir', '', 'Model directory (model.onnx + model.yaml).', read_only=True),
    Param('threshold_scale', 1.0, 'Multiplier on the calibrated threshold.', min=0.1, max=10.0),
    Param('debounce', 3, 'Windows over threshold before the flag rises.', min=1, max=100),
    Param('publish_score', True, 'Publish ~/score as well as ~/anomaly.'),
    Param('channels', [], 'Channels to report; empty: all.', type='string_array'),
    Param('gains', [1, 2.5], 'Per-channel gains.'),
]


def test_declare_parameters_types_defaults_descriptors(rclpy_context):
    node = Node('params', context=rclpy_context)
    try:
        values = declare_parameters(node, SPECS)
        assert values == {'model_dir': '', 'threshold_scale': 1.0, 'debounce': 3,
                          'publish_score': True, 'channels': [], 'gains': [1.0, 2.5]}
        desc = {d.name: d for d in node.describe_parameters([s.name for s in SPECS])}
        assert desc['model_dir'].read_only
        assert desc['threshold_scale'].description.startswith('Multiplier')
        assert desc['threshold_scale'].floating_point_range[0].to_value == 10.0
        assert desc['debounce'].integer_range[0].from_value == 1
        assert desc['debounce'].additional_constraints == '>= 1 and <= 100'
        assert all(d.type != 0 for d in desc.values())
    finally:
        node.destroy_node()


def test_parameter_overrides_are_checked(rclpy_context):
    from rclpy.parameter import Parameter

    ok = Node('ok', context=rclpy_context,
              parameter_overrides=[Parameter('debounce', value=7)])
    bad_range = Node('bad_range', context=rclpy_context,
                     parameter_overrides=[Parameter('debounce', value=1000)])
    bad_type = Node('bad_type', context=rclpy_context,
                    parameter_overrides=[Parameter('threshold_scale', value='high')])
    try:
        assert declare_parameters(ok, SPECS)['debounce'] == 7
        with pytest.raises(ConfigError, match=r"parameter 'debounce' of bad_range is invalid "
                                              r'\(.*\); it must be a int in \[1, 100\]'):
            declare_parameters(bad_range, SPECS)
        with pytest.raises(ConfigError, match=r"'threshold_scale' .* must be a double"):
            declare_parameters(bad_type, SPECS)
    finally:
        for node in (ok, bad_range, bad_type):
            node.destroy_node()


# --------------------------------------------------------------------------- ROS arguments


def test_params_files_are_found_in_ros_args_sections():
    args = ['node', '--params-file', 'not_ros.yaml', '--ros-args', '-p', 'a:=1',
            '--params-file', 'one.yaml', '--', '--params-file', 'two.yaml', '--ros-args',
            '--params-file', 'three.yaml']
    assert ros_args_params_files(args) == ['one.yaml', 'three.yaml']


@pytest.mark.parametrize('text, match', [
    ('/**/x:\n  ros__parameters:\n    a: [1, 2\n', r'is not valid YAML \(.* at line \d+\)'),
    ('[1, 2]\n', r'is not a ROS 2 parameter file \(the top level is not a mapping'),
    ('/**/x:\n  ros__parameters:\n    a: 1\n  b: 2\n',
     r"\(/\*\*/x has 'b' beside ros__parameters\)"),
    ('x:\n  a: 1\n', r'\(/x/a holds a value where ros__parameters was expected\)'),
])
def test_bad_parameter_files_are_named_in_one_sentence(tmp_path, text, match):
    path = tmp_path / 'params.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        check_params_file(path)
    with pytest.raises(ConfigError, match='does not exist'):
        check_params_file(tmp_path / 'missing.yaml')


def test_good_parameter_files_pass(tmp_path):
    from pathlib import Path

    for config in sorted(Path(__file__).resolve().parents[1].glob('config/*.yaml')):
        if 'ros__parameters' in config.read_text():
            check_params_file(config)
    nested = tmp_path / 'nested.yaml'
    nested.write_text('robot1:\n  anomaly_detector:\n    ros__parameters: {threads: 2}\n')
    check_params_file(nested)
    (tmp_path / 'empty.yaml').write_text('')
    check_params_file(tmp_path / 'empty.yaml')


@pytest.mark.parametrize('case', ['invalid_yaml', 'missing', 'bad_rule'])
def test_run_node_refuses_bad_ros_arguments_in_one_line(capfd, tmp_path, case):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('/**/broken_node:\n  ros__parameters: {a: [1, 2}\n')
    args = {'invalid_yaml': ['--ros-args', '--params-file', str(bad)],
            'missing': ['--ros-args', '--params-file', str(tmp_path / 'nope.yaml')],
            'bad_rule': ['--ros-args', '-r', 'a:=b:=c']}[case]
    assert run_node(BrokenNode, args=['node', *args]) == 1
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err
    fatal = [line for line in err.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1 and 'broken_node' in fatal[0], err
    assert not rclpy.ok()


# --------------------------------------------------------------------------- QoS


def test_qos_profile():
    default = qos_profile()
    for field in ('history', 'depth', 'reliability', 'durability'):
        assert getattr(default, field) == getattr(qos_profile_sensor_data, field)
    reliable = qos_profile('reliable', depth=20)
    assert reliable.reliability == rclpy.qos.ReliabilityPolicy.RELIABLE and reliable.depth == 20
    with pytest.raises(ConfigError, match="reliability 'fast' is not one of best_effort"):
        qos_profile('fast')
    with pytest.raises(ConfigError, match='depth must be a whole number >= 1'):
        qos_profile(depth=0)
    assert issubclass(ConfigError, EncdecError)


# --------------------------------------------------------------------------- diagnostics


def _spin_until(executor, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.02)
        if predicate():
            return True
    return False


def test_diagnostics_ok_then_stale_over_dds(rclpy_context):
    source = Node('diag_source', context=rclpy_context)
    listener = Node('diag_listener', context=rclpy_context)
    reporter = DiagnosticsReporter(source, 'anomaly', '/imu', period_s=0.1, stale_after_s=0.3)
    received: list[DiagnosticStatus] = []
    listener.create_subscription(DiagnosticArray, '/diagnostics',
                                 lambda msg: received.extend(msg.status), 10)

    def feed() -> None:
        reporter.mark_input()
        reporter.update('OK', 'score 0.2 of threshold', {'score': 0.2, 'flag': False})

    feeder = source.create_timer(0.02, feed)
    executor = make_executor(context=rclpy_context)
    executor.add_node(source)
    executor.add_node(listener)
    try:
        assert _spin_until(executor, lambda: any(s.level == DiagnosticStatus.OK
                                                 for s in received), 10.0)
        ok = next(s for s in received if s.level == DiagnosticStatus.OK)
        assert ok.name == '/diag_source: anomaly' and ok.hardware_id == '/imu'
        values = {kv.key: kv.value for kv in ok.values}
        assert values['score'] == '0.2' and values['flag'] == 'False'
        assert int(values['inputs']) > 0
        source.destroy_timer(feeder)  # inputs stop
        n_before = len(received)
        assert _spin_until(executor, lambda: any(s.level == DiagnosticStatus.STALE
                                                 for s in received[n_before:]), 5.0)
        stale = next(s for s in received[n_before:] if s.level == DiagnosticStatus.STALE)
        assert stale.message.startswith('no input for')
    finally:
        reporter.destroy()
        source.destroy_node()
        listener.destroy_node()


def test_diagnostics_levels_and_waiting(rclpy_context):
    node = Node('diag_levels', context=rclpy_context)
    try:
        reporter = DiagnosticsReporter(node, 'x', 'hw', stale_after_s=60)
        assert reporter.level == 3 and reporter.status().message == 'waiting for the first input'
        reporter.mark_input()
        reporter.update('WARN', 'slow')
        assert reporter.status().level == DiagnosticStatus.WARN
        reporter.update(DiagnosticStatus.ERROR, 'broken')
        assert reporter.level == 2
        with pytest.raises(ValueError, match='not one of OK, WARN, ERROR, STALE'):
            reporter.update('BAD', 'x')
        with pytest.raises(ConfigError, match='must be positive seconds'):
            DiagnosticsReporter(node, 'y', 'hw', period_s=0)
    finally:
        node.destroy_node()
