"""Launch the denoiser: one topic in, the same message type out with its fields cleaned.

Usage::

    ros2 launch encdec_ros denoiser.launch.py
    ros2 launch encdec_ros denoiser.launch.py model_dir:=/path/to/models/my_imu \\
        method:=model namespace:=drone1 input_topic:=imu output_topic:=imu/clean_estimate
    ros2 launch encdec_ros denoiser.launch.py method:=kalman

Arguments (every launch file of the package takes model_dir, device, namespace and
params_file): model_dir defaults to the shipped model for the synthetic hexacopter's IMU
(models/denoise_sim_imu, /imu -> /imu/denoised); method, input_topic, output_topic and device,
left empty, come from the parameter file, else the node's defaults (method auto: the model
when a model directory is given, butterworth otherwise; device cpu); params_file defaults to
config/denoiser.yaml, and a path that does not exist stops the launch with one line. A launch
argument that is given wins over the parameter file.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

NODE = 'denoiser'
PASSED = ('model_dir', 'method', 'input_topic', 'output_topic', 'device')


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
            default_value=PathJoinSubstitution([share, 'models', 'denoise_sim_imu']),
            description='Denoise model directory (encdec train denoise): topic, type, '
                        'fields, model and tuned filters'),
        DeclareLaunchArgument(
            'method', default_value='',
            description='model, butterworth, one_euro, kalman or auto; empty: the parameter '
                        'file\'s, else auto'),
        DeclareLaunchArgument(
            'input_topic', default_value='',
            description="Topic to clean; empty: the model's topic, relative (in the namespace)"),
        DeclareLaunchArgument(
            'output_topic', default_value='',
            description='Topic of the cleaned messages; empty: <input_topic>/denoised'),
        DeclareLaunchArgument(
            'device', default_value='',
            description='Inference device of the model: auto, tensorrt, cuda (those two fall '
                        'back to the CPU with a WARN), tensorrt_strict, cuda_strict (fail '
                        'instead) or cpu; empty: the parameter file\'s, else cpu'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its relative topics'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', f'{NODE}.yaml']),
            description='Parameter file for the other parameters (QoS, filter overrides, ...)'),
        OpaqueFunction(function=_node),
    ])
