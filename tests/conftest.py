"""Shared pytest set-up: an isolated ROS 2 domain and an rclpy context fixture.

The domain id is taken from the process id so that test sessions running at the same time
on one machine do not hear each other, and discovery stays on this machine.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


@pytest.fixture
def rclpy_context() -> Iterator[object]:
    """A fresh, initialised rclpy Context (not the default one), shut down afterwards."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)
