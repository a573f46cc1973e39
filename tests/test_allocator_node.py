"""The control_allocator node over real DDS: answers equal the core's, limits, fallback,
watchdog, rate limits, launch file and parameter file."""

from __future__ import annotations

import math
import py_compile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import WrenchStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float32, Float64MultiArray  # noqa: E402

from encdec_ros.allocation.allocators import (  # noqa: E402
    Effectiveness,
    ExactAllocator,
    LearnedAllocator,
    PseudoInverseAllocator,
)
from encdec_ros.errors import EngineError  # noqa: E402
from encdec_ros.nodes.common import make_executor, run_node  # noqa: E402
from encdec_ros.nodes.control_allocator import PARAMS, ControlAllocatorNode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUAD = str(ROOT / 'config' / 'quad_x.yaml')
WRENCHES = [
    (0, 0, 13.0, 0.0, 0.0, 0.0),       # hover-ish
    (0, 0, 20.0, 0.8, -0.3, 0.1),      # attainable with torque
    (0, 0, 30.0, 3.0, 2.0, 1.0),       # far outside: saturation
    (1.0, 0, -5.0, 0.0, 0.0, 0.2),     # negative thrust, and a force no quad can make
    (0, 0, 8.0, -0.5, 0.4, -0.2),
]


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip('torch')
    from training.allocator import AllocatorTrainConfig, export_allocator, train_allocator

    eff = Effectiveness.load(QUAD)
    cfg = AllocatorTrainConfig(hidden=(16,), steps=50, samples=500, val_samples=50,
                               batch=128, threads=1)
    out = tmp_path_factory.mktemp('node_model') / 'quad'
    export_allocator(train_allocator(eff, cfg, show_progress=False), out)
    return out


class Peer:
    """Publishes wrenches and records everything the allocator publishes."""

    def __init__(self, context, ns: str = '') -> None:
        self.node = Node('alloc_test_peer', context=context, namespace=ns or None)
        self.cmds: list[tuple[float, list[float]]] = []
        self.joints: list[JointState] = []
        self.werr: list[WrenchStamped] = []
        self.err: list[float] = []
        self.diag: list[DiagnosticStatus] = []
        n = self.node
        n.create_subscription(Float64MultiArray, 'actuator_cmd',
                              lambda m: self.cmds.append((time.monotonic(), list(m.data))), 50)
        n.create_subscription(JointState, 'control_allocator/actuators', self.joints.append, 50)
        n.create_subscription(WrenchStamped, 'control_allocator/wrench_error', self.werr.append,
                              50)
        n.create_subscription(Float32, 'control_allocator/error',
                              lambda m: self.err.append(m.data), 50)
        n.create_subscription(DiagnosticArray, '/diagnostics',
                              lambda m: self.diag.extend(m.status), 50)
        self.pub = n.create_publisher(WrenchStamped, 'wrench_cmd', 10)

    def send(self, w, frame: str = 'base_link') -> None:
        msg = WrenchStamped()
        msg.header.frame_id = frame
        msg.header.stamp.sec = 7
        (msg.wrench.force.x, msg.wrench.force.y, msg.wrench.force.z, msg.wrench.torque.x,
         msg.wrench.torque.y, msg.wrench.torque.z) = [float(x) for x in w]
        self.pub.publish(msg)


def start(context, tmp_ns: str, **params):
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = ControlAllocatorNode(context=context, namespace=tmp_ns,
                                parameter_overrides=overrides)
    peer = Peer(context, tmp_ns)
    executor = make_executor(context)
    executor.add_node(node)
    executor.add_node(peer.node)
    return node, peer, executor


def spin_until(executor, predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.01)
        if predicate():
            return True
    return False


def connected(executor, node, peer) -> None:
    assert spin_until(executor, lambda: node.sub.get_publisher_count() > 0
                      and peer.pub.get_subscription_count() > 0
                      and node.pub_cmd.get_subscription_count() > 0), 'no DDS match'


def exchange(executor, node, peer, wrenches) -> list[list[float]]:
    """Send each wrench and wait for its command; returns the commands in order."""
    out = []
    for w in wrenches:
        before = node.commands
        n_cmds = len(peer.cmds)
        peer.send(w)
        assert spin_until(executor, lambda: node.commands > before and
                          len(peer.cmds) > n_cmds and peer.cmds[-1][1] is not None)
        assert spin_until(executor, lambda: min(len(peer.werr), len(peer.err),
                                                len(peer.joints)) >= node.commands, 2.0)
        out.append(peer.cmds[-1][1])
    return out


def close(node, peer) -> None:
    node.destroy_node()
    peer.node.destroy_node()


def test_exact_commands_equal_the_core_and_respect_limits(rclpy_context):
    node, peer, ex = start(rclpy_context, '/alloc_exact', effectiveness=QUAD, method='exact',
                           timeout_s=0.0)
    try:
        connected(ex, node, peer)
        cmds = exchange(ex, node, peer, WRENCHES)
        eff = Effectiveness.load(QUAD)
        core = ExactAllocator(eff)
        for w, u in zip(WRENCHES, cmds):
            want = core.allocate(eff.select(np.array(w)))
            np.testing.assert_allclose(u, want, atol=1e-9)
            assert eff.violations(np.array(u)) == 0
        joint = peer.joints[-1]
        assert list(joint.name) == ['motor1', 'motor2', 'motor3', 'motor4']
        np.testing.assert_allclose(joint.effort, cmds[-1])
        assert joint.header.stamp.sec == 7
        err = peer.werr[-1]
        expect = eff.achieved_full(np.array(cmds[-1])) - np.array(WRENCHES[-1])
        got = [err.wrench.force.x, err.wrench.force.y, err.wrench.force.z,
               err.wrench.torque.x, err.wrench.torque.y, err.wrench.torque.z]
        np.testing.assert_allclose(got, expect, atol=1e-9)
        assert err.header.frame_id == 'base_link'
        want = eff.error(np.array(cmds[-1]), eff.select(np.array(WRENCHES[-1])))
        assert peer.err[-1] == pytest.approx(float(want), rel=1e-5)
        # the quad cannot push sideways: the error topic shows it
        assert peer.werr[3].wrench.force.x == pytest.approx(-1.0)
        assert spin_until(ex, lambda: any(s.level == DiagnosticStatus.OK and
                                          s.name.endswith('control allocation')
                                          for s in peer.diag), 3.0)
    finally:
        close(node, peer)


def test_learned_commands_equal_the_core(rclpy_context, tiny_model):
    node, peer, ex = start(rclpy_context, '/alloc_learned', effectiveness=QUAD,
                           model_dir=str(tiny_model), method='learned', timeout_s=0.0)
    try:
        assert node.core.method == 'learned' and not node.fallback_reason
        connected(ex, node, peer)
        cmds = exchange(ex, node, peer, WRENCHES)
        eff = Effectiveness.load(QUAD)
        core = LearnedAllocator(tiny_model, effectiveness=eff)
        for w, u in zip(WRENCHES, cmds):
            np.testing.assert_allclose(u, core.allocate(eff.select(np.array(w))), atol=1e-6)
            assert eff.violations(np.array(u)) == 0
    finally:
        close(node, peer)


def test_missing_model_falls_back_to_exact_with_a_warning(rclpy_context, tmp_path):
    node, peer, ex = start(rclpy_context, '/alloc_fallback', effectiveness=QUAD,
                           model_dir=str(tmp_path / 'no_model'), timeout_s=0.0,
                           diagnostics_period_s=0.1)
    try:
        assert node.requested_method == 'learned' and node.core.method == 'exact'
        connected(ex, node, peer)
        cmds = exchange(ex, node, peer, WRENCHES[:2])
        eff = Effectiveness.load(QUAD)
        np.testing.assert_allclose(cmds[1], ExactAllocator(eff).allocate(
            eff.select(np.array(WRENCHES[1]))), atol=1e-9)
        assert spin_until(ex, lambda: any(s.level == DiagnosticStatus.WARN and
                                          'learned allocator unavailable' in s.message
                                          for s in peer.diag), 3.0)
        warn = next(s for s in peer.diag if s.level == DiagnosticStatus.WARN)
        assert 'does not exist' in warn.message and 'using the exact solver' in warn.message
    finally:
        close(node, peer)


def test_model_for_another_robot_falls_back(rclpy_context, tiny_model):
    hexa = str(ROOT / 'config' / 'hexa_x.yaml')
    node = ControlAllocatorNode(context=rclpy_context, namespace='/alloc_mismatch',
                                parameter_overrides=[Parameter('effectiveness', value=hexa),
                                                     Parameter('model_dir',
                                                               value=str(tiny_model))])
    try:
        assert node.core.method == 'exact'
        assert 'trained for another effectiveness' in node.fallback_reason
    finally:
        node.destroy_node()


def test_model_failing_while_running_falls_back(rclpy_context, tiny_model):
    node, peer, ex = start(rclpy_context, '/alloc_breaks', effectiveness=QUAD,
                           model_dir=str(tiny_model), timeout_s=0.0)
    try:
        connected(ex, node, peer)
        exchange(ex, node, peer, WRENCHES[:1])
        assert node.core.method == 'learned'

        def broken(_x):
            raise EngineError('onnxruntime failed to run model.onnx (CUDA error 700)')

        node.core.engine.run = broken  # the GPU goes away mid-flight
        cmds = exchange(ex, node, peer, WRENCHES[1:2])
        assert node.core.method == 'exact' and 'CUDA error 700' in node.fallback_reason
        eff = Effectiveness.load(QUAD)
        np.testing.assert_allclose(cmds[0], ExactAllocator(eff).allocate(
            eff.select(np.array(WRENCHES[1]))), atol=1e-9)
    finally:
        close(node, peer)


def test_watchdog_commands_the_safe_output(rclpy_context, tmp_path):
    cfg = yaml.safe_load(Path(QUAD).read_text())
    cfg['safe_output'] = [0.1, 0.1, 0.1, 0.1]
    path = tmp_path / 'quad_safe.yaml'
    path.write_text(yaml.safe_dump(cfg))
    node, peer, ex = start(rclpy_context, '/alloc_watchdog', effectiveness=str(path),
                           method='pseudo_inverse', timeout_s=0.25, diagnostics_period_s=0.1)
    try:
        connected(ex, node, peer)
        # before any wrench: the safe output
        assert spin_until(ex, lambda: any(c == [0.1] * 4 for _, c in peer.cmds), 3.0)
        cmds = exchange(ex, node, peer, WRENCHES[1:2])
        assert cmds[0] != [0.1] * 4 and not node.timed_out
        t_last = time.monotonic()
        n = len(peer.cmds)
        assert spin_until(ex, lambda: len(peer.cmds) > n and peer.cmds[-1][1] == [0.1] * 4)
        assert peer.cmds[-1][0] - t_last >= 0.2
        assert node.timed_out and node.watchdog_trips == 2
        assert spin_until(ex, lambda: any(s.level == DiagnosticStatus.WARN and
                                          'safe output' in s.message for s in peer.diag), 3.0)
        cmds = exchange(ex, node, peer, WRENCHES[1:2])  # wrenches resume
        assert not node.timed_out
        eff = Effectiveness.load(path)
        np.testing.assert_allclose(cmds[0], PseudoInverseAllocator(eff).allocate(
            eff.select(np.array(WRENCHES[1]))))
    finally:
        close(node, peer)


def test_rate_limits_and_bad_input(rclpy_context, tmp_path):
    cfg = yaml.safe_load(Path(QUAD).read_text())
    cfg['limits']['rate'] = 2.0  # full range in 0.5 s
    path = tmp_path / 'quad_rate.yaml'
    path.write_text(yaml.safe_dump(cfg))
    node, peer, ex = start(rclpy_context, '/alloc_rate', effectiveness=str(path),
                           method='exact', timeout_s=0.0)
    try:
        connected(ex, node, peer)
        exchange(ex, node, peer, [(0, 0, 0.0, 0, 0, 0)])
        t0 = peer.cmds[-1][0]
        first = np.array(peer.cmds[-1][1])
        cmds = exchange(ex, node, peer, [(0, 0, 26.0, 0, 0, 0)])  # full thrust at once
        dt = peer.cmds[-1][0] - t0
        step = np.abs(np.array(cmds[0]) - first).max()
        assert step <= 2.0 * (dt + 0.05) and step < 1.0
        assert node.rate_limited >= 1
        before = node.commands
        peer.send((0, 0, math.nan, 0, 0, 0))
        assert spin_until(ex, lambda: node.rejected == 1)
        assert node.commands == before
        node._refresh_diagnostics()         # a dead input is named, with its counts
        status = node.diag.status()
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.WARN and 'in wrench.force.z' in status.message
        assert values['/alloc_rate/wrench_cmd: non-finite'] == '1'
        assert values['/alloc_rate/wrench_cmd: received'] == str(before + 1)
        peer.send((0, 0, 10.0, 0, 0, 0), frame='odom')
        assert spin_until(ex, lambda: node.commands == before + 1)
        assert node.frame_mismatch == 'odom'
    finally:
        close(node, peer)


def test_diagnostics_warn_before_the_first_wrench_and_ignored_wrenches_clear(
        rclpy_context, monkeypatch):
    import encdec_ros.nodes.control_allocator as module

    monkeypatch.setattr(module, 'RECENT_S', 1.0)
    node, peer, ex = start(rclpy_context, '/alloc_diag', effectiveness=QUAD, method='exact',
                           timeout_s=0.0, diagnostics_period_s=0.05)
    try:
        connected(ex, node, peer)
        # before any wrench: WARN (not STALE), and it says why
        assert spin_until(ex, lambda: bool(peer.diag), 3.0)
        first = peer.diag[0]
        assert first.level == DiagnosticStatus.WARN, first
        assert first.message == 'no wanted wrench received yet'
        exchange(ex, node, peer, WRENCHES[:1])
        peer.send((0, 0, math.nan, 0, 0, 0))
        assert spin_until(ex, lambda: node.rejected == 1)
        assert spin_until(ex, lambda: 'ignored in the last 1 s' in peer.diag[-1].message, 3.0)
        assert peer.diag[-1].level == DiagnosticStatus.WARN
        exchange(ex, node, peer, WRENCHES[:1])       # wrenches go on: the WARN clears
        n = len(peer.diag)
        assert spin_until(ex, lambda: len(peer.diag) > n and
                          peer.diag[-1].level == DiagnosticStatus.OK, 4.0), peer.diag[-1]
        values = {kv.key: kv.value for kv in peer.diag[-1].values}
        assert values['rejected (non-finite)'] == '1'
    finally:
        close(node, peer)


@pytest.mark.parametrize('method', ['exact', 'pseudo_inverse'])
def test_wrenches_near_the_float_limit_are_a_reported_fault_never_inf(rclpy_context, capfd,
                                                                       method):
    node, peer, ex = start(rclpy_context, f'/alloc_huge_{method}', effectiveness=QUAD,
                           method=method, timeout_s=0.0, diagnostics_period_s=0.05)
    try:
        connected(ex, node, peer)
        exchange(ex, node, peer, WRENCHES[:1])
        n_cmds, n_err = len(peer.cmds), len(peer.err)
        peer.send((0, 0, 1e308, 1e308, -1e308, 1e308))
        assert spin_until(ex, lambda: any(word in node.diag.status().message
                                          for word in ('too large', 'overflows')), 5.0)
        spin_until(ex, lambda: False, 0.3)
        assert all(math.isfinite(e) for e in peer.err[n_err:])
        assert len(peer.err) == n_err                # no ~/error for it
        for _, cmd in peer.cmds[n_cmds:]:            # any command sent is within the limits
            assert all(0.0 <= c <= 1.0 for c in cmd), cmd
        if method == 'exact':                        # no finite solution: ERROR, command held
            assert node.unsolved == 1 and len(peer.cmds) == n_cmds
            assert node.diag.level == 2
        else:                                        # saturated command, error not told
            assert node.unsolved == 0 and len(peer.cmds) == n_cmds + 1
            assert node.diag.level == 1
        err = capfd.readouterr().err
        assert 'RuntimeWarning' not in err and 'overflow' not in err, err
    finally:
        close(node, peer)


def test_startup_errors_are_one_fatal_line(capfd, tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('rotors: []\nlimits: {min: 0, max: 1}\n')
    rc = run_node(ControlAllocatorNode, args=['--ros-args', '-p', f'effectiveness:={bad}',
                                              '-r', '__ns:=/alloc_fatal'])
    err = capfd.readouterr().err
    assert rc == 1 and 'Traceback' not in err
    assert 'rotors/thrusters are empty' in err and 'FATAL' in err
    rc = run_node(ControlAllocatorNode, args=['--ros-args', '-r', '__ns:=/alloc_fatal2'])
    assert rc == 1 and 'needs an effectiveness configuration' in capfd.readouterr().err


def test_launch_file_and_parameter_file(rclpy_context, tmp_path):
    launch = ROOT / 'launch' / 'control_allocator.launch.py'
    py_compile.compile(str(launch), cfile=str(tmp_path / 'launch.pyc'), doraise=True)
    text = launch.read_text()
    for arg in ('effectiveness', 'model_dir', 'method', 'namespace', 'params_file'):
        assert f"'{arg}'" in text
    params = yaml.safe_load((ROOT / 'config' / 'control_allocator.yaml').read_text())
    (key, body), = params.items()
    assert key.endswith('control_allocator')
    values = body['ros__parameters']
    declared = {p.name for p in PARAMS}
    assert set(values) <= declared
    overrides = [Parameter(k, value=v) for k, v in values.items()]
    overrides.append(Parameter('effectiveness', value=QUAD))
    node = ControlAllocatorNode(context=rclpy_context, namespace='/alloc_params',
                                parameter_overrides=overrides)
    try:
        for name, value in values.items():
            assert node.get_parameter(name).value == value
        assert node.core.method == 'exact'
    finally:
        node.destroy_node()
