"""Launch the denoiser: one topic in, the same message type out with its fields cleaned.

Usage::

    ros2 launch encdec_ros denoiser.launch.py
    ros2 launch encdec_ros denoiser.launch.py model_dir:=/path/to/models/my_imu \\
        method:=model namespace:=drone1 input_topic:=imu output_topic:=imu/clean_estimate
    ros2 launch encdec_ros denoiser.launch.py method:=kalman

Defaults: the shipped model for the synthetic hexacopter's IMU (models/denoise_sim_imu,
/imu -> /imu/denoised), method auto (the model when a model directory is given, butterworth
otherwise), the other parameters from config/denoiser.yaml.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare('encdec_ros')
    arguments = [
        DeclareLaunchArgument(
            'model_dir',
            default_value=PathJoinSubstitution([share, 'models', 'denoise_sim_imu']),
            description='Denoise model directory (encdec train denoise): topic, type, '
                        'fields, model and tuned filters'),
        DeclareLaunchArgument(
            'method', default_value='auto',
            description='model, butterworth, one_euro, kalman or auto'),
        DeclareLaunchArgument(
            'input_topic', default_value='',
            description="Topic to clean; empty: the model's topic"),
        DeclareLaunchArgument(
            'output_topic', default_value='',
            description='Topic of the cleaned messages; empty: <input_topic>/denoised'),
        DeclareLaunchArgument(
            'device', default_value='cpu',
            description='Inference device of the model: auto, tensorrt, cuda or cpu'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its relative topics'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', 'denoiser.yaml']),
            description='Parameter file for the other parameters (QoS, filter overrides, ...)'),
    ]
    node = Node(
        package='encdec_ros',
        executable='denoiser',
        name='denoiser',
        namespace=LaunchConfiguration('namespace'),
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'model_dir': ParameterValue(LaunchConfiguration('model_dir'), value_type=str),
                'method': ParameterValue(LaunchConfiguration('method'), value_type=str),
                'input_topic': ParameterValue(LaunchConfiguration('input_topic'),
                                              value_type=str),
                'output_topic': ParameterValue(LaunchConfiguration('output_topic'),
                                               value_type=str),
                'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
            },
        ],
        output='screen',
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [node])
