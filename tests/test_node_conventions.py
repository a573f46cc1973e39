"""What every node does alike, checked on the three nodes with the shipped models: relative
input topics, /diagnostics names with the full node name, the device fallback and its strict
form, model paths found in the installed share, and launch files with the same arguments."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from encdec_ros.engine import available_devices  # noqa: E402
from encdec_ros.errors import EngineError  # noqa: E402
from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode  # noqa: E402
from encdec_ros.nodes.common import resolve_share_path  # noqa: E402
from encdec_ros.nodes.control_allocator import ControlAllocatorNode  # noqa: E402
from encdec_ros.nodes.denoiser import DenoiserNode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODES = {
    'anomaly_detector': (AnomalyDetectorNode, 'models/anomaly_sim_lstm', {}),
    'denoiser': (DenoiserNode, 'models/denoise_sim_imu', {}),
    'control_allocator': (ControlAllocatorNode, 'models/allocator_sim_hexa',
                          {'effectiveness': 'config/sim_hexa.yaml'}),
}
HAS_GPU = len(available_devices()['usable']) > 1


def _make(kind: str, context, *, namespace: str, model_dir: str | None = None, **params):
    cls, model, extra = NODES[kind]
    values = {'model_dir': model_dir or str(ROOT / model), **extra, **params}
    if 'effectiveness' in values and not os.path.isabs(values['effectiveness']):
        values['effectiveness'] = str(ROOT / values['effectiveness'])
    return cls(context=context, namespace=namespace,
               parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])


def _inputs(kind: str, node) -> list[str]:
    return {'anomaly_detector': lambda: node.topic_names,
            'denoiser': lambda: [node.input_topic],
            'control_allocator': lambda: [node.sub.topic_name]}[kind]()


def _reporter(node):
    return getattr(node, 'diagnostics', None) or getattr(node, '_diag', None) or node.diag


@pytest.mark.parametrize('kind', sorted(NODES))
def test_inputs_are_relative_and_diagnostics_carry_the_full_node_name(kind, rclpy_context):
    node = _make(kind, rclpy_context, namespace='robot7', device='cpu')
    try:
        expected = {'anomaly_detector': ['/robot7/imu', '/robot7/motors', '/robot7/wrench_cmd'],
                    'denoiser': ['/robot7/imu'],
                    'control_allocator': ['/robot7/wrench_cmd']}[kind]
        assert _inputs(kind, node) == expected
        status = _reporter(node).status()
        assert status.name.startswith(f'/robot7/{kind}: ')
        assert 'is not usable here' not in status.message
    finally:
        node.destroy_node()


@pytest.mark.skipif(HAS_GPU, reason='a usable GPU is present')
@pytest.mark.parametrize('kind', sorted(NODES))
def test_cuda_without_a_gpu_runs_on_the_cpu_with_a_standing_warn(kind, rclpy_context):
    node = _make(kind, rclpy_context, namespace='gpuless', device='cuda')
    try:
        reporter = _reporter(node)
        reporter.mark_input()
        reporter.update('OK', 'all good')
        status = reporter.status()
        assert status.level == DiagnosticStatus.WARN
        assert "device 'cuda' is not usable here" in status.message
        assert 'running on CPUExecutionProvider instead' in status.message
        if kind == 'control_allocator':
            assert node.core.method == 'learned' and not node.fallback_reason
    finally:
        node.destroy_node()


@pytest.mark.skipif(HAS_GPU, reason='a usable GPU is present')
@pytest.mark.parametrize('kind', sorted(NODES))
def test_strict_device_without_a_gpu_stops_the_node(kind, rclpy_context):
    with pytest.raises(EngineError, match="device 'cuda_strict' is not usable here"):
        _make(kind, rclpy_context, namespace='strict', device='cuda_strict').destroy_node()


@pytest.mark.parametrize('kind', sorted(NODES))
def test_relative_model_dir_is_found_in_the_installed_share(kind, rclpy_context, tmp_path,
                                                          monkeypatch):
    pytest.importorskip('ament_index_python')
    prefix = tmp_path / 'install'
    share = prefix / 'share'
    (share / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (share / 'ament_index' / 'resource_index' / 'packages' / 'encdec_ros').write_text('')
    (share / 'encdec_ros').mkdir()
    (share / 'encdec_ros' / 'models').symlink_to(ROOT / 'models')
    (share / 'encdec_ros' / 'config').symlink_to(ROOT / 'config')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))
    monkeypatch.chdir(tmp_path)            # models/... does not exist here
    relative = NODES[kind][1]
    assert resolve_share_path(relative) == str(share / 'encdec_ros' / relative)
    extra = {'effectiveness': 'config/sim_hexa.yaml'} if kind == 'control_allocator' else {}
    cls = NODES[kind][0]
    node = cls(context=rclpy_context, namespace='share', parameter_overrides=[
        Parameter('model_dir', value=relative), Parameter('device', value='cpu'),
        *[Parameter(k, value=v) for k, v in extra.items()]])
    try:
        if kind == 'control_allocator':
            assert node.core.method == 'learned', node.fallback_reason
    finally:
        node.destroy_node()


LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
COMMON_ARGUMENTS = ('model_dir', 'device', 'namespace', 'params_file')


@pytest.mark.parametrize('launch', LAUNCH_FILES, ids=lambda p: p.name)
def test_every_launch_file_takes_the_common_arguments(launch):
    declared = re.findall(r"DeclareLaunchArgument\(\s*'(\w+)'", launch.read_text())
    assert set(COMMON_ARGUMENTS) <= set(declared), declared


def _launch_node(launch: Path, arguments: dict[str, str]):
    """Evaluate a launch file as ros2 launch would, up to the Node it starts."""
    pytest.importorskip('launch_ros')  # not on PyPI: only where the ROS tools are installed
    import importlib.util

    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location(launch.stem.replace('.', '_'), launch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.Node = lambda **kwargs: kwargs       # what the launch file hands launch_ros's Node
    context = LaunchContext()
    context.launch_configurations.update(arguments)
    nodes = []
    for entity in module.generate_launch_description().entities:
        if isinstance(entity, DeclareLaunchArgument):
            if entity.name not in context.launch_configurations:
                default = entity.default_value
                context.launch_configurations[entity.name] = (
                    ''.join(s.perform(context) for s in default) if default else '')
        elif isinstance(entity, OpaqueFunction):
            nodes.extend(entity.execute(context) or [])
    (node,) = nodes
    return node, context


@pytest.mark.parametrize('launch', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_refuse_a_missing_params_file_and_pass_only_given_arguments(launch,
                                                                                  tmp_path):
    params = tmp_path / 'p.yaml'
    params.write_text('/**:\n  ros__parameters: {}\n')
    base = {'params_file': str(params), 'model_dir': '/m', 'effectiveness': '/e.yaml'}
    with pytest.raises(RuntimeError, match=r'params_file /no/such\.yaml does not exist; pass '):
        _launch_node(launch, {**base, 'params_file': '/no/such.yaml'})
    node, _ = _launch_node(launch, base)
    file_arg, given = node['parameters']
    assert file_arg == str(params) and node['namespace'] == ''
    assert 'model_dir' in given and 'device' not in given  # empty: the file's value stands
    node, _ = _launch_node(launch, {**base, 'device': 'cuda', 'namespace': 'r1'})
    assert node['parameters'][-1]['device'].value == 'cuda' and node['namespace'] == 'r1'
    node, _ = _launch_node(launch, {**base, 'params_file': ''})
    assert len(node['parameters']) == 1        # no parameter file at all: the node's defaults
