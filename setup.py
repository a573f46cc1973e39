"""ament_python packaging: `colcon build` on a robot; see README for a plain virtualenv."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'encdec_ros'


def model_files():
    """Install each shipped model directory under share/encdec_ros/models/NAME."""
    out = []
    for model in sorted(glob('models/*/')):
        files = [f for f in glob(os.path.join(model, '*')) if os.path.isfile(f)]
        if files:
            out.append((os.path.join('share', package_name, model.rstrip('/')), files))
    return out


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['encdec_ros', 'encdec_ros.*', 'training', 'training.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml')),
        *model_files(),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},
    zip_safe=True,
    maintainer='encdec_ros maintainers',
    maintainer_email='maintainers@encdec-ros.dev',
    description='Encoder-decoder networks (anomaly detection, denoising, control allocation) '
                'on ROS 2 sensor streams with ONNX Runtime inference.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'encdec = encdec_ros.cli:main',
            'control_allocator = encdec_ros.nodes.control_allocator:main',
            'denoiser = encdec_ros.nodes.denoiser:main',
            'anomaly_detector = encdec_ros.nodes.anomaly_detector:main',
        ],
    },
)
