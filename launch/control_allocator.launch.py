"""Launch the control allocator: wanted wrenches in, actuator commands out.

Usage::

    ros2 launch encdec_ros control_allocator.launch.py
    ros2 launch encdec_ros control_allocator.launch.py \\
        effectiveness:=/path/to/my_robot.yaml model_dir:=/path/to/models/my_robot \\
        method:=learned namespace:=drone1 wrench_topic:=/controller/wrench

Arguments (every launch file of the package takes model_dir, device, namespace and
params_file): the synthetic hexacopter of `encdec sim` (config/sim_hexa.yaml) with its
shipped learned allocator (models/allocator_sim_hexa) by default; method and device, left
empty, come from the parameter file, else the node's defaults (method auto: learned when a
model is given, exact otherwise; device cpu); params_file defaults to
config/control_allocator.yaml, and a path that does not exist stops the launch with one line.
A launch argument that is given wins over the parameter file.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

NODE = 'control_allocator'
PASSED = ('effectiveness', 'model_dir', 'method', 'device')


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
        remappings=[('wrench_cmd', arg('wrench_topic')), ('actuator_cmd', arg('actuator_topic'))],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    share = FindPackageShare('encdec_ros')
    return LaunchDescription([
        DeclareLaunchArgument(
            'effectiveness',
            default_value=PathJoinSubstitution([share, 'config', 'sim_hexa.yaml']),
            description='Effectiveness YAML (B, limits, weights); empty: the model\'s own'),
        DeclareLaunchArgument(
            'model_dir',
            default_value=PathJoinSubstitution([share, 'models', 'allocator_sim_hexa']),
            description='Allocator model directory (encdec train allocator); empty: none'),
        DeclareLaunchArgument(
            'method', default_value='',
            description='learned, exact, pseudo_inverse, redistribution or auto; empty: the '
                        'parameter file\'s, else auto'),
        DeclareLaunchArgument(
            'device', default_value='',
            description='Inference device of the learned allocator: auto, tensorrt, cuda (those '
                        'two fall back to the CPU with a WARN), tensorrt_strict, cuda_strict '
                        '(fail instead) or cpu; empty: the parameter file\'s, else cpu'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its relative topics'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', f'{NODE}.yaml']),
            description='Parameter file for the other parameters (timeout_s, QoS, ...)'),
        DeclareLaunchArgument(
            'wrench_topic', default_value='wrench_cmd',
            description='Topic of the wanted wrenches (geometry_msgs/WrenchStamped)'),
        DeclareLaunchArgument(
            'actuator_topic', default_value='actuator_cmd',
            description='Topic of the actuator commands (std_msgs/Float64MultiArray)'),
        OpaqueFunction(function=_node),
    ])
