"""Launch the anomaly detector: the model's topics in, ~/anomaly, ~/score and /diagnostics out.

Usage::

    ros2 launch encdec_ros anomaly_detector.launch.py
    ros2 launch encdec_ros anomaly_detector.launch.py model_dir:=/path/to/models/my_robot \\
        device:=cuda namespace:=drone1
    ros2 launch encdec_ros anomaly_detector.launch.py params_file:=/path/to/my_params.yaml

Arguments (every launch file of the package takes model_dir, device, namespace and
params_file): model_dir defaults to the shipped model for the synthetic hexacopter
(models/anomaly_sim_lstm); device, left empty, comes from the parameter file, else the node's
default (auto); params_file defaults to config/anomaly_detector.yaml, and a path that does not
exist stops the launch with one line. A launch argument that is given wins over the parameter
file. The node subscribes to the spec's topics relative to its namespace (/imu is imu, so
namespace:=drone1 reads /drone1/imu); remap them in your own launch file with
``remappings=[('imu', '/imu')]`` if your robot keeps them outside the namespace.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

NODE = 'anomaly_detector'
PASSED = ('model_dir', 'device')  # launch arguments handed to the node when not empty


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    params_file = arg('params_file')
    if params_file and not os.path.isfile(params_file):
        raise RuntimeError(f'params_file {params_file} does not exist; pass an existing '
                           f'parameter file, or leave params_file out for config/{NODE}.yaml')
    given = {name: ParameterValue(arg(name), value_type=str) for name in PASSED if arg(name)}
    return [Node(
        package='encdec_ros',
        executable=NODE,
        name=NODE,
        namespace=arg('namespace'),
        parameters=[params_file, given] if params_file else [given],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    share = FindPackageShare('encdec_ros')
    return LaunchDescription([
        DeclareLaunchArgument(
            'model_dir',
            default_value=PathJoinSubstitution([share, 'models', 'anomaly_sim_lstm']),
            description='Anomaly model directory written by `encdec train anomaly` '
                        '(model.onnx and model.yaml)'),
        DeclareLaunchArgument(
            'device', default_value='',
            description='Inference device: auto, tensorrt, cuda (those two fall back to the CPU '
                        'with a WARN), tensorrt_strict, cuda_strict (fail instead) or cpu; '
                        'empty: the parameter file\'s, else auto'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and of its input topics (its outputs are '
                        '~/anomaly and ~/score)'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', f'{NODE}.yaml']),
            description='Parameter file for the other parameters (debounce, QoS, diagnostics)'),
        OpaqueFunction(function=_node),
    ])
