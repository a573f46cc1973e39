"""Launch the anomaly detector: the model's topics in, ~/anomaly, ~/score and /diagnostics out.

Usage::

    ros2 launch encdec_ros anomaly_detector.launch.py
    ros2 launch encdec_ros anomaly_detector.launch.py model_dir:=/path/to/models/my_robot \\
        device:=cuda namespace:=drone1
    ros2 launch encdec_ros anomaly_detector.launch.py params_file:=/path/to/my_params.yaml

Defaults: the shipped model for the synthetic hexacopter (models/anomaly_sim_lstm), device
auto, no namespace, the other parameters (debounce, QoS, diagnostics) from
config/anomaly_detector.yaml. The node subscribes to the topics named in the model's signal
spec; remap them with the usual launch remappings if your robot names them otherwise.
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
            default_value=PathJoinSubstitution([share, 'models', 'anomaly_sim_lstm']),
            description='Anomaly model directory written by `encdec train anomaly` '
                        '(model.onnx and model.yaml)'),
        DeclareLaunchArgument(
            'device', default_value='auto',
            description='Inference device: auto (TensorRT > CUDA > CPU), tensorrt, cuda or cpu'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node (its outputs are ~/anomaly and ~/score)'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', 'anomaly_detector.yaml']),
            description='Parameter file for the other parameters (debounce, QoS, diagnostics)'),
    ]
    node = Node(
        package='encdec_ros',
        executable='anomaly_detector',
        name='anomaly_detector',
        namespace=LaunchConfiguration('namespace'),
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'model_dir': ParameterValue(LaunchConfiguration('model_dir'), value_type=str),
                'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
            },
        ],
        output='screen',
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [node])
