"""The ``denoiser`` node: one topic in, the same message type out with its fields cleaned.

Usage::

    ros2 run encdec_ros denoiser --ros-args -p model_dir:=models/denoise_sim_imu
    ros2 run encdec_ros denoiser --ros-args -p model_dir:=models/denoise_sim_imu \\
        -p method:=kalman -p input_topic:=/drone1/imu
    ros2 run encdec_ros denoiser --ros-args -p spec_file:=my_joint_spec.yaml \\
        -p method:=butterworth -p butterworth_cutoff_hz:=20.0

It subscribes to the spec's topic (any message type with numeric fields: sensor_msgs/Imu,
JointState, geometry_msgs/WrenchStamped, std_msgs/Float64MultiArray ...), replaces the
spec's fields of every message by their denoised values in the callback, and publishes the
message on ``<input_topic>/denoised`` (or ``output_topic``): one output per input, nothing
queued, header, frame_id, covariances, names and all other fields as they came, byte for
byte. The message path needs no Python message object: the subscription is ``raw=True``, the
fields are read where they lie in the serialised message (:meth:`MessageDecoder.layout
<encdec_ros.io.cdr.MessageDecoder.layout>`, learnt from the first message and checked on
each), the cleaned values are written back at the same places, and the bytes are published.
A message whose layout cannot be known that way (fields inside a sequence of structs, a field
of an integer type) takes the typed path: deserialised, cleaned and published as an rclpy
message, with the same result. The spec's
topic is taken relative to the node's namespace (``/imu`` in namespace ``drone1`` is
``/drone1/imu``); an explicit ``input_topic`` is used as given. A message
whose arrays are shorter than the spec needs is passed on unchanged (counted, WARN). A NaN or
infinite input value is passed on as it came, never replaced by a made-up one: the
consumer must see a dead sensor; /diagnostics turns ERROR and names the channel. Where the
topic's stamps (header, or receive time) jump back or stop for more than ten periods, the
denoiser starts again from the next message instead of running on stale state (counted and
logged).

The work is done by :class:`encdec_ros.denoise.filters.DenoiseCore`, the class
``encdec eval denoise``
runs offline. ``method`` picks the learned model or a classical filter (butterworth,
one_euro, kalman), whose parameters come from the model directory (tuned at training time)
or sensible defaults, and can be overridden here. Diagnostics on ``/diagnostics``: method,
provider, per-message latency (callback, denoise and publish), messages, pass-throughs, and
the input's counters (rate, last stamp age, short, non-finite, gaps, jumps, publishers of
another type; see :class:`~encdec_ros.nodes.common.InputMonitor`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
from rclpy.node import Node

from encdec_ros.denoise.filters import METHODS, DenoiseCore, build_core
from encdec_ros.errors import ConfigError, EncdecError
from encdec_ros.io.cdr import Layout, MessageDecoder
from encdec_ros.io.player import message_class
from encdec_ros.nodes.common import (
    LEVELS,
    DiagnosticsReporter,
    InputMonitor,
    Param,
    declare_parameters,
    device_param,
    qos_profile,
    relative_topic,
    resolve_share_path,
    run_node,
)

LATENCY_WINDOW = 4096  # recent callbacks kept for the latency figures; a power of two

PARAMETERS = (
    Param('model_dir', '', 'Denoise model directory (encdec train denoise): the topic, type, '
          'fields, model and tuned filter parameters. Empty: use spec_file', read_only=True),
    Param('spec_file', '', 'One-topic signal spec YAML, used without model_dir (classical '
          'methods only); its type: must be given', read_only=True),
    Param('method', 'auto', 'model, butterworth, one_euro or kalman; auto: model when '
          'model_dir is set, else butterworth', read_only=True,
          constraints='auto, model, butterworth, one_euro or kalman'),
    Param('input_topic', '', "Topic to clean; empty: the spec's topic, relative (in the "
          "node's namespace)", read_only=True),
    Param('output_topic', '', 'Topic of the cleaned messages; empty: <input_topic>/denoised',
          read_only=True),
    device_param('cpu'),
    Param('threads', 1, 'ONNX Runtime CPU threads (1 is fastest for small models)',
          read_only=True, min=0, max=64),
    Param('reliability', 'best_effort', 'QoS reliability of the input subscription: '
          'best_effort (sensor data, matches every publisher) or reliable', read_only=True),
    Param('output_reliability', 'reliable', 'QoS reliability of the output: reliable (matches '
          'every subscriber) or best_effort', read_only=True),
    Param('qos_depth', 10, 'QoS history depth of input and output', read_only=True, min=1,
          max=10000),
    Param('diagnostics_period_s', 1.0, 'Seconds between diagnostics', read_only=True,
          min=0.05, max=60.0),
    Param('butterworth_order', 0, 'Butterworth order, 1-8; 0: tuned (model_dir) or 2',
          read_only=True, min=0, max=8),
    Param('butterworth_cutoff_hz', 0.0, 'Butterworth cut-off in Hz; 0: tuned or rate/10',
          read_only=True, min=0.0),
    Param('one_euro_min_cutoff', 0.0, '1-Euro minimum cut-off in Hz; 0: tuned or rate/10',
          read_only=True, min=0.0),
    Param('one_euro_beta', -1.0, '1-Euro speed coefficient; negative: tuned or 0',
          read_only=True),
    Param('one_euro_d_cutoff', 0.0, '1-Euro derivative cut-off in Hz; 0: tuned or 1',
          read_only=True, min=0.0),
    Param('kalman_q', 0.0, 'Kalman white-acceleration density (units^2/s^3); 0: tuned or a '
          'bandwidth of rate/10', read_only=True, min=0.0),
    Param('kalman_r', 0.0, 'Kalman measurement variance (units^2); 0: tuned or 1',
          read_only=True, min=0.0),
)


def overrides(values: dict[str, Any], method: str) -> dict[str, Any]:
    """The baseline parameters set on the node (unset ones are None)."""
    if method == 'butterworth':
        return {'order': values['butterworth_order'] or None,
                'cutoff_hz': values['butterworth_cutoff_hz'] or None}
    if method == 'one_euro':
        beta = values['one_euro_beta']
        return {'min_cutoff': values['one_euro_min_cutoff'] or None,
                'beta': beta if beta >= 0 else None,
                'd_cutoff': values['one_euro_d_cutoff'] or None}
    if method == 'kalman':
        return {'q': values['kalman_q'] or None, 'r': values['kalman_r'] or None}
    return {}


class DenoiserNode(Node):
    """Subscribe to one topic, denoise each message in the callback, publish it."""

    NODE_NAME = 'denoiser'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(self.NODE_NAME, **kwargs)
        values = declare_parameters(self, PARAMETERS)
        method = values['method']
        if method == 'auto':
            method = 'model' if values['model_dir'] else 'butterworth'
        if method not in METHODS:
            raise ConfigError(f'parameter method is {method!r}; use auto, '
                              f'{", ".join(METHODS)}')
        self.core: DenoiseCore = build_core(
            method, model_dir=resolve_share_path(values['model_dir']) or None,
            spec=resolve_share_path(values['spec_file']) or None, device=values['device'],
            threads=values['threads'], params=overrides(values, method))
        topic = self.core.topic
        given = values['input_topic'] or relative_topic(topic.name)
        output = values['output_topic'] or f'{given}/denoised'
        msg_cls = message_class(topic.type)
        self._cls = msg_cls
        self._header = topic.stamp == 'header'
        self._decoder = MessageDecoder.for_class(msg_cls, [f.path for f in topic.fields],
                                                 header_stamp=self._header, where=given)
        self._layout: Layout | None = None
        self._width = self._decoder.width
        raw = self._decoder.complete and not self._decoder.fallback
        self.typed_messages = 0        # messages that took the typed path
        self._pub = self.create_publisher(
            msg_cls, output, qos_profile(values['output_reliability'], values['qos_depth']))
        self.monitor = InputMonitor(self, [(self.resolve_topic_name(given), topic.type)],
                                    silent_after_s=None)
        self._sub = self.create_subscription(
            msg_cls, given, self._on_raw if raw else self._on_message,
            qos_profile(values['reliability'], values['qos_depth']), raw=raw,
            event_callbacks=self.monitor.event_callbacks(0))
        self.input_topic: str = self._sub.topic_name
        self.output_topic: str = self._pub.topic_name
        self._lat = np.zeros(LATENCY_WINDOW)
        self._count = 0
        self._failed = 0
        describe = self.core.denoiser.describe()
        self.provider = str(describe.get('provider', 'numpy'))
        self._logged: dict[str, float] = {}
        self._diag = DiagnosticsReporter(self, 'denoiser', self.input_topic,
                                         values['diagnostics_period_s'], source=self._status)
        self._diag.report_engine(getattr(self.core.denoiser, 'engine', None))
        self.get_logger().info(
            f'denoising {self.input_topic} ({topic.type}, {len(self.core.channels)} fields) '
            f'with {method} on {self.provider} -> {self.output_topic}')

    @property
    def method(self) -> str:
        """The method in use."""
        return self.core.method

    def _on_raw(self, data: bytes) -> None:
        """The message path: read the fields where they lie, clean them, write them back."""
        t0 = time.perf_counter()
        layout = self._layout
        got = layout.read_one(data, self._width) if layout is not None else None
        if got is None:                    # the first message, or another layout
            layout = self._decoder.layout(data)
            got = layout.read_one(data, self._width) if layout is not None else None
            if got is None:                # short, or not readable here: the typed path
                self._typed(data, t0)
                return
            self._layout = layout
        self.monitor.arrived(0)
        values, (sec, nsec) = got
        if self._header:
            stamp = sec * 1_000_000_000 + nsec or None      # zero: never filled in
        else:
            stamp = self.get_clock().now().nanoseconds
        core = self.core
        restarts, bad = core.restarts_, core.nonfinite_messages_
        out = bytearray(data)
        try:
            cleaned = core.process_values(np.asarray(values, dtype=np.float64), stamp)
        except EncdecError as err:        # e.g. the engine failed: pass the message on
            self._cannot(err)
        else:
            if not layout.write(out, cleaned.tolist()):      # an integer field, a huge value
                msg = self._typed(data)
                core.write(msg, cleaned)                     # as the typed path writes it
                self._pub.publish(msg)
                self._done(t0, True, stamp, restarts, bad)
                return
        self._pub.publish(bytes(out))
        self._done(t0, True, stamp, restarts, bad)

    def _typed(self, data: bytes, t0: float | None = None) -> Any:
        """A message the raw path cannot handle, as an rclpy message: handled by the typed
        path (with ``t0``), or returned."""
        from rclpy.serialization import deserialize_message

        self.typed_messages += 1
        msg = deserialize_message(data, self._cls)
        if t0 is not None:
            self._on_message(msg, t0)
        return msg

    def _cannot(self, err: EncdecError) -> None:
        self._failed += 1
        self.get_logger().error(f'cannot denoise a message on {self.input_topic} ({err}); '
                                'passed on unchanged', throttle_duration_sec=5.0)

    def _on_message(self, msg: Any, t0: float | None = None) -> None:
        t0 = time.perf_counter() if t0 is None else t0
        self.monitor.arrived(0)
        stamp: int | None
        if self._header:
            st = msg.header.stamp
            stamp = st.sec * 1_000_000_000 + st.nanosec or None   # zero: never filled in
        else:
            stamp = self.get_clock().now().nanoseconds
        core = self.core
        restarts, bad = core.restarts_, core.nonfinite_messages_
        try:
            ok = core.process(msg, stamp)
        except EncdecError as err:        # e.g. the engine failed: pass the message on
            ok = True
            self._cannot(err)
        self._pub.publish(msg)
        self._done(t0, ok, stamp, restarts, bad)

    def _done(self, t0: float, ok: bool, stamp: int | None, restarts: int, bad: int) -> None:
        """What every message leaves behind: latency, counts, logs, diagnostics when due."""
        core = self.core
        self._lat[self._count & (LATENCY_WINDOW - 1)] = time.perf_counter() - t0
        self._count += 1
        self._diag.mark_input()
        if stamp is not None:
            self.monitor.stamp(0, stamp)
        if not ok:
            self._once('short', f'a message on {self.input_topic} has fewer array elements '
                       'than the spec needs; passed on unchanged')
        if core.nonfinite_messages_ != bad:
            self._once('nan', f'{self.input_topic}: NaN or infinite values in '
                       f'{", ".join(core.bad_channels)} (a dead sensor?); passed on as they '
                       'came, not smoothed over')
        if core.restarts_ != restarts:
            self._once('restart', f'{self.input_topic}: its stamps jumped or stopped for '
                       'longer than ten periods; the denoiser starts again from this message')
        self._diag.publish_due()           # a flood of input must not starve /diagnostics

    def _once(self, kind: str, text: str) -> None:
        """Log a warning at most every 5 s per kind (the counts are on /diagnostics)."""
        now = time.monotonic()
        if now - self._logged.get(kind, -5.0) >= 5.0:
            self._logged[kind] = now
            self.get_logger().warning(text)

    def latency_ms(self) -> dict[str, float]:
        """Per-message latency of the recent callbacks (denoise and publish), in ms."""
        n = min(self._count, LATENCY_WINDOW)
        if n == 0:
            return {'count': 0, 'mean': 0.0, 'p50': 0.0, 'p99': 0.0, 'max': 0.0}
        recent = self._lat[:n] * 1e3
        p50, p99 = np.percentile(recent, (50, 99))
        return {'count': self._count, 'mean': float(recent.mean()), 'p50': float(p50),
                'p99': float(p99), 'max': float(recent.max())}

    def _status(self) -> tuple[int, str, dict[str, Any]]:
        """(level, message, values) for /diagnostics, built when they are published."""
        core, monitor = self.core, self.monitor
        clock = core.clock
        monitor.set(0, 'used', self._count - core.short_)
        monitor.set(0, 'short', core.short_)
        monitor.set(0, 'non-finite', core.nonfinite_messages_)
        monitor.set(0, 'missing (stamp gaps)', clock.missing)
        monitor.set(0, 'gaps', clock.gaps)
        monitor.set(0, 'jumps back', clock.jumps_back)
        monitor.set(0, 'jumps forward', clock.jumps_forward)
        if core.bad_channels:
            monitor.inputs[0].bad_channels = core.bad_channels
        level, problems, inputs = monitor.report()
        monitor.log_started(self.get_logger(), skip=('short', 'non-finite'))
        lat = self.latency_ms()
        values = {
            'method': self.method,
            'provider': self.provider,
            'input': self.input_topic,
            'output': self.output_topic,
            'messages': self._count,
            'latency mean (ms)': round(lat['mean'], 4),
            'latency p99 (ms)': round(lat['p99'], 4),
            'latency max (ms)': round(lat['max'], 4),
            'passed unchanged (short)': core.short_,
            'passed unchanged (errors)': self._failed,
            'non-finite values passed on': core.denoiser.nonfinite_,
            'restarts (gaps, jumps in the stamps)': core.restarts_,
        }
        values.update(inputs)
        if self._failed:
            level = LEVELS['ERROR']
            problems.append(f'{self._failed} messages could not be denoised and were passed on '
                            'unchanged')
        if problems:
            return level, '; '.join(problems), values
        return LEVELS['OK'], f'denoising with {self.method}', values


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run encdec_ros denoiser``."""
    sys.exit(run_node(DenoiserNode, args))


if __name__ == '__main__':
    main()
