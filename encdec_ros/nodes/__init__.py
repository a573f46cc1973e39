"""Thin rclpy nodes, one per capability; shared start-up, parameters, QoS and diagnostics
live in :mod:`encdec_ros.nodes.common`."""
