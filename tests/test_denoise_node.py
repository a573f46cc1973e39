"""The denoiser node over real DDS: one output per input, fields as the offline core computes."""

from __future__ import annotations

import py_compile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import Imu, JointState  # noqa: E402

from encdec_ros.cli import main as cli_main  # noqa: E402
from encdec_ros.denoise.filters import build_core  # noqa: E402
from encdec_ros.errors import ConfigError, ModelDirError  # noqa: E402
from encdec_ros.io.bag import BagSource  # noqa: E402
from encdec_ros.io.player import BagPlayer  # noqa: E402
from encdec_ros.nodes.denoiser import PARAMETERS, DenoiserNode  # noqa: E402
from training.sim import SimConfig, simulate, write_bag  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=2000, reliability=ReliabilityPolicy.RELIABLE,
                      history=HistoryPolicy.KEEP_LAST)
SPEC = {'rate_hz': 200, 'window': 8, 'stride': 1, 'topics': {'/imu': {
    'type': 'sensor_msgs/msg/Imu',
    'fields': ['linear_acceleration.x', 'linear_acceleration.y', 'linear_acceleration.z',
               'angular_velocity.x', 'angular_velocity.y', 'angular_velocity.z']}}}


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('denoise_node') / 'flight'
    return write_bag(simulate(SimConfig(duration_s=3.0, seed=5)), path)


@pytest.fixture(scope='module')
def model_dir(bag, tmp_path_factory):
    pytest.importorskip('torch')   # training is offline; the node tests run without it
    root = tmp_path_factory.mktemp('denoise_node_model')
    (root / 'spec.yaml').write_text(yaml.safe_dump(SPEC))
    out = root / 'model'
    assert cli_main(['train', 'denoise', '--bag', str(bag), '--spec', str(root / 'spec.yaml'),
                     '--out', str(out), '--hidden', '16', '--layers', '1', '--epochs', '1',
                     '--threads', '1']) == 0
    return out


class Spinner:
    """Spin an executor on a thread (spin_once loop, never spin())."""

    def __init__(self, context, *nodes) -> None:
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def __enter__(self) -> 'Spinner':
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.executor.shutdown()


def wait_for(predicate, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def play_through(context, bag, node_params: dict, topic: str, msg_cls, out_topic: str,
                 name: str, remap: dict | None = None):
    """Start a denoiser with ``node_params``, play ``topic`` to it, return inputs, outputs."""
    overrides = [Parameter(k, value=v) for k, v in {
        'reliability': 'reliable', 'qos_depth': 2000, 'device': 'cpu',
        'diagnostics_period_s': 0.2, **node_params}.items()]
    node = DenoiserNode(context=context, parameter_overrides=overrides,
                        namespace=f'/{name}')
    client = rclpy.create_node(f'{name}_client', context=context)
    got: list = []
    diags: list = []
    client.create_subscription(msg_cls, out_topic, got.append, RELIABLE)
    client.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    with BagSource(bag) as src:
        raws = [bytes(r) for _, _, r in src.raw_messages([topic])]
    try:
        with Spinner(context, node, client):
            with BagPlayer(client, bag, topics=[topic], rate=0, qos=RELIABLE,
                           remap=remap) as player:
                assert player.wait_for_subscribers(1, timeout_s=10)
                assert wait_for(lambda: node.count_publishers(node.input_topic) >= 1
                                and client.count_publishers(out_topic) >= 1)
                time.sleep(0.3)
                player.play()
            assert wait_for(lambda: len(got) >= len(raws))
            assert wait_for(lambda: any(
                s.name.endswith(': denoiser') and any(
                    kv.key == 'messages' and kv.value == str(len(raws)) for kv in s.values)
                for d in list(diags) for s in d.status))
            time.sleep(0.2)
        return node, raws, got, diags
    finally:
        node.destroy_node()
        client.destroy_node()


def test_node_publishes_one_cleaned_message_per_input_as_the_core_computes(
        rclpy_context, bag, model_dir):
    node, raws, got, diags = play_through(
        rclpy_context, bag, {'model_dir': str(model_dir)}, '/imu', Imu, '/dn_a/imu/denoised',
        'dn_a', remap={'/imu': '/dn_a/imu'})
    assert node.input_topic == '/dn_a/imu' and node.output_topic == '/dn_a/imu/denoised'
    assert len(got) == len(raws) == 600                  # one output per input, none extra
    assert node.typed_messages == 0                      # all on the raw path
    core = build_core('model', model_dir=model_dir, device='cpu')
    for raw, out in zip(raws, got):
        want = deserialize_message(raw, Imu)
        original = deserialize_message(raw, Imu)
        core.process(want)                                # the offline core, per message
        assert np.array_equal(core.extract(out), core.extract(want))
        assert not np.array_equal(core.extract(out), core.extract(original))
        assert out.header == original.header and out.orientation == original.orientation
        for cov in ('orientation_covariance', 'angular_velocity_covariance',
                    'linear_acceleration_covariance'):
            assert np.array_equal(getattr(out, cov), getattr(original, cov))
    status = [s for d in diags for s in d.status if s.name.endswith(': denoiser')][-1]
    values = {kv.key: kv.value for kv in status.values}
    assert values['method'] == 'model' and values['provider'] == 'CPUExecutionProvider'
    assert float(values['latency mean (ms)']) > 0 and status.level == b'\x00'


def test_classical_method_from_a_spec_on_joint_states(rclpy_context, bag, tmp_path):
    spec = {'rate_hz': 100, 'window': 4, 'topics': {'/motors': {
        'type': 'sensor_msgs/msg/JointState', 'fields': ['velocity[0:6]']}}}
    (tmp_path / 'motors.yaml').write_text(yaml.safe_dump(spec))
    node, raws, got, _ = play_through(
        rclpy_context, bag, {'spec_file': str(tmp_path / 'motors.yaml'), 'method': 'kalman',
                             'kalman_q': 1e5, 'input_topic': '/motors',
                             'output_topic': 'speeds_clean'},
        '/motors', JointState, '/dn_b/speeds_clean', 'dn_b')
    assert node.input_topic == '/motors'
    assert node.method == 'kalman' and len(got) == len(raws) == 300
    assert node.typed_messages == 0
    core = build_core('kalman', spec=tmp_path / 'motors.yaml', params={'q': 1e5})
    for raw, out in zip(raws, got):
        want = deserialize_message(raw, JointState)
        original = deserialize_message(raw, JointState)
        core.process(want)
        assert list(out.velocity) == list(want.velocity)
        assert list(out.effort) == list(original.effort) and out.name == original.name
        assert out.header == original.header


def test_the_raw_path_writes_what_the_typed_path_writes_and_passes_short_ones_on(
        rclpy_context, tmp_path):
    """Byte for byte: the raw path's output equals the typed path's serialised; a message with
    fewer joints (another layout, short) goes the typed path and passes unchanged; a frame_id
    of another length is a new layout, still on the raw path."""
    from rclpy.serialization import serialize_message

    spec = {'rate_hz': 100, 'window': 4, 'topics': {'/motors': {
        'type': 'sensor_msgs/msg/JointState', 'fields': ['velocity[0:3]', 'effort[1]']}}}
    (tmp_path / 'm.yaml').write_text(yaml.safe_dump(spec))
    params = [Parameter('spec_file', value=str(tmp_path / 'm.yaml')),
              Parameter('method', value='one_euro'), Parameter('input_topic', value='/motors')]
    raw_node = DenoiserNode(context=rclpy_context, parameter_overrides=params, namespace='/r')
    typed_node = DenoiserNode(context=rclpy_context, parameter_overrides=params,
                              namespace='/t')
    out: dict[str, list] = {'raw': [], 'typed': []}
    raw_node._pub.publish = out['raw'].append
    typed_node._pub.publish = lambda m: out['typed'].append(serialize_message(m))
    try:
        msgs = []
        for k in range(40):
            n = 2 if k == 17 else 3
            msg = JointState(name=['a', 'bb', 'ccc'][:n], velocity=[k * 0.1, -k, 2.0][:n],
                             effort=[0.5, k * 1.5, 0.0][:n], position=[1.0, 2.0, 3.0][:n])
            msg.header.frame_id = 'base' if k < 25 else 'base_link'
            msg.header.stamp.sec, msg.header.stamp.nanosec = 10 + k // 100, (k % 100) * 10**7
            msgs.append(msg)
        for msg in msgs:
            raw_node._sub.callback(serialize_message(msg))
            typed_node._on_message(msg)
        assert raw_node.typed_messages == 1 and raw_node.core.short_ == 1
        got = [m if isinstance(m, bytes) else serialize_message(m) for m in out['raw']]
        assert got == out['typed']
        assert got[17] == serialize_message(msgs[17])                 # passed on unchanged
    finally:
        raw_node.destroy_node()
        typed_node.destroy_node()


def test_bad_parameters_stop_the_node_with_one_sentence(rclpy_context, tmp_path):
    cases = [
        ({'method': 'model'}, ConfigError, 'give a model directory'),
        ({'method': 'median', 'model_dir': 'x'}, ConfigError, "parameter method is 'median'"),
        ({'model_dir': str(tmp_path / 'none')}, ModelDirError, 'does not exist'),
    ]
    for params, error, match in cases:
        with pytest.raises(error, match=match):
            DenoiserNode(context=rclpy_context,
                         parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_launch_file_compiles_and_config_parses_into_the_node_parameters(
        rclpy_context, model_dir):
    py_compile.compile(str(ROOT / 'launch' / 'denoiser.launch.py'), doraise=True)
    config = yaml.safe_load((ROOT / 'config' / 'denoiser.yaml').read_text())
    (key, section), = config.items()
    assert key.endswith('/denoiser')
    params = section['ros__parameters']
    declared = {p.name: p.default for p in PARAMETERS}
    assert set(params) <= set(declared)
    for name, value in params.items():
        assert type(value) is type(declared[name]), name
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    overrides.append(Parameter('model_dir', value=str(model_dir)))
    node = DenoiserNode(context=rclpy_context, parameter_overrides=overrides,
                        namespace='/dn_launch')
    try:
        assert node.method == 'model' and node.get_parameter('device').value == 'cpu'
    finally:
        node.destroy_node()
    text = (ROOT / 'launch' / 'denoiser.launch.py').read_text()
    for arg in ('model_dir', 'method', 'input_topic', 'output_topic', 'namespace',
                'params_file'):
        assert f"'{arg}'" in text


def test_nan_is_passed_on_and_named_and_a_jump_in_time_restarts_the_filter(
        rclpy_context, bag, tmp_path):
    """A dead gyro channel (NaN for 0.25 s) and stamps 2 s back, over DDS: the NaN reaches the
    output as it came (never a made-up value), /diagnostics says ERROR and names the channel,
    the jump restarts the filter, and every output equals the offline core's."""
    from rclpy.serialization import serialize_message

    from encdec_ros.io.bagwrite import BagWriter

    with BagSource(bag) as src:
        msgs = [(log, deserialize_message(bytes(r), Imu)) for _, log, r in
                src.raw_messages(['/imu'])]
    for k, (_, msg) in enumerate(msgs):
        if 200 <= k < 250:
            msg.angular_velocity.y = float('nan')
        if k >= 400:
            msg.header.stamp.sec -= 2                      # a simulator reset: 2 s back
    faulty = tmp_path / 'faulty'
    with BagWriter(faulty) as out:
        out.add_topic('/imu', 'sensor_msgs/msg/Imu')
        for log, msg in msgs:
            out.write_raw('/imu', log, serialize_message(msg))
    spec = tmp_path / 'spec.yaml'
    spec.write_text(yaml.safe_dump(SPEC))
    node, raws, got, diags = play_through(
        rclpy_context, faulty, {'spec_file': str(spec), 'method': 'butterworth',
                                'input_topic': '/imu'}, '/imu', Imu, '/imu/denoised', 'dn_c')
    core = build_core('butterworth', spec=spec)
    noisy = np.array([core.extract(m) for _, m in msgs])
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in msgs])
    want = core.run(noisy, stamps)
    outs = np.array([core.extract(m) for m in got])
    np.testing.assert_array_equal(outs, want)
    assert np.isnan(outs[200:250, 4]).all() and np.isfinite(np.delete(outs, 4, axis=1)).all()
    assert core.restarts_ == 1 and np.isfinite(outs[250:, 4]).all()
    statuses = [s for d in diags for s in d.status if s.name.endswith(': denoiser')]
    assert any(s.level == b'\x02' and '/imu/angular_velocity.y' in s.message for s in statuses)
    values = {kv.key: kv.value for kv in statuses[-1].values}
    assert values['/imu: non-finite'] == '50' and values['/imu: jumps back'] == '1'
    assert values['restarts (gaps, jumps in the stamps)'] == '1'
