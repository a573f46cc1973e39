"""encdec_ros: encoder-decoder networks on ROS 2 sensor streams (robot-side runtime).

This package never imports torch; training lives in the separate ``training`` package.
"""

__version__ = '0.1.0'
