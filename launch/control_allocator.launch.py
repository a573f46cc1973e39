"""Launch the control allocator: wanted wrenches in, actuator commands out.

Usage::

    ros2 launch encdec_ros control_allocator.launch.py
    ros2 launch encdec_ros control_allocator.launch.py \\
        effectiveness:=/path/to/my_robot.yaml model_dir:=/path/to/models/my_robot \\
        method:=learned namespace:=drone1 wrench_topic:=/controller/wrench

Defaults: the synthetic hexacopter of `encdec sim` (config/sim_hexa.yaml) with its shipped
learned allocator (models/allocator_sim_hexa), method auto (learned when a model is given,
exact otherwise), the other parameters from config/control_allocator.yaml.
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
            'effectiveness',
            default_value=PathJoinSubstitution([share, 'config', 'sim_hexa.yaml']),
            description='Effectiveness YAML (B, limits, weights); empty: the model\'s own'),
        DeclareLaunchArgument(
            'model_dir',
            default_value=PathJoinSubstitution([share, 'models', 'allocator_sim_hexa']),
            description='Allocator model directory (encdec train allocator); empty: none'),
        DeclareLaunchArgument(
            'method', default_value='auto',
            description='learned, exact, pseudo_inverse, redistribution or auto'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its relative topics'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', 'control_allocator.yaml']),
            description='Parameter file for the other parameters (timeout_s, QoS, ...)'),
        DeclareLaunchArgument(
            'wrench_topic', default_value='wrench_cmd',
            description='Topic of the wanted wrenches (geometry_msgs/WrenchStamped)'),
        DeclareLaunchArgument(
            'actuator_topic', default_value='actuator_cmd',
            description='Topic of the actuator commands (std_msgs/Float64MultiArray)'),
    ]
    node = Node(
        package='encdec_ros',
        executable='control_allocator',
        name='control_allocator',
        namespace=LaunchConfiguration('namespace'),
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'effectiveness': ParameterValue(LaunchConfiguration('effectiveness'),
                                                value_type=str),
                'model_dir': ParameterValue(LaunchConfiguration('model_dir'), value_type=str),
                'method': ParameterValue(LaunchConfiguration('method'), value_type=str),
            },
        ],
        remappings=[
            ('wrench_cmd', LaunchConfiguration('wrench_topic')),
            ('actuator_cmd', LaunchConfiguration('actuator_topic')),
        ],
        output='screen',
        emulate_tty=True,
    )
    return LaunchDescription(arguments + [node])
