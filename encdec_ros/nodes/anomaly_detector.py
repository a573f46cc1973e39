"""``anomaly_detector``: flag faults on live topics with an exported autoencoder.

Usage::

    ros2 run encdec_ros anomaly_detector --ros-args -p model_dir:=/path/to/model
    ros2 launch encdec_ros anomaly_detector.launch.py model_dir:=/path/to/model

The node subscribes to the topics of the model's signal spec, taken relative (``/imu`` is
``imu``, so in namespace ``robot1`` it reads ``/robot1/imu``; remap with ``-r imu:=/imu`` to
read a topic outside the namespace), extracts the spec's fields,
stamps each sample with its header stamp (or its receive time, as the spec says), aligns the
topics onto the spec's clock (:class:`~encdec_ros.io.align.StreamingAligner`), keeps the last
window (:class:`~encdec_ros.io.window.RingWindow`) and, at every tick index ``k`` with
``k % stride == 0`` once the window is full, asks :class:`~encdec_ros.anomaly.scorer.AnomalyScorer`
for a decision: the same scorer ``encdec eval anomaly`` uses offline.

Publishes, once per decision: ``~/anomaly`` (std_msgs/Bool, the debounced flag) and
``~/score`` (std_msgs/Float32, error / threshold; NaN for a window with non-finite inputs);
and on ``/diagnostics`` a status that is OK, WARN (or ERROR, parameter ``flag_level``) while
the flag is up, ERROR when windows cannot be scored, STALE when the inputs stop; its values
hold the score, threshold, top channels, provider and latencies. With ``publish_latent``
on, also ``~/latent`` (std_msgs/Float32MultiArray): the code of each decided window (the
encoder mean for a VAE), from the same inference as the score; its layout names the size.

"This is normal now": the service ``~/rebaseline`` (std_srvs/Trigger) re-baselines the model
on the last ``rebaseline_minutes`` of aligned input (:func:`encdec_ros.anomaly.rebaseline.
rebaseline`: the same ONNX model, each channel's level, normal statistics and threshold refit
through the runtime's own code, no torch), writes it to a new model directory under
``rebaseline_dir`` and switches to it; the response says where, and /diagnostics shows the
model in use.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, Float32MultiArray, MultiArrayDimension, MultiArrayLayout
from std_srvs.srv import Trigger

from encdec_ros.anomaly.scorer import AnomalyScorer, Debouncer, Decision, check_debounce
from encdec_ros.engine import DEVICES
from encdec_ros.errors import ConfigError, EncdecError
from encdec_ros.io.align import StreamingAligner
from encdec_ros.io.fields import ShortMessageError, compile_path
from encdec_ros.io.player import message_class
from encdec_ros.io.window import RingWindow
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

LATENCY_WINDOW = 4096   # recent samples kept per latency kind (a power of two)
LOG_EVERY_S = 10.0      # the same kind of time event on one topic is logged at most this often
TIME_DISAGREE_S = 5.0   # stamps of one input this far from the others' cannot be aligned

PARAMS = (
    Param('model_dir', '', 'Model directory written by `encdec train anomaly` (model.onnx and '
          'model.yaml); a relative path that does not exist is also looked up in the '
          'installed share directory', read_only=True),
    device_param('auto'),
    Param('threads', 1, 'ONNX Runtime intra-op threads on the CPU (0: one per core)',
          read_only=True, min=0, max=64),
    Param('stride', 0, 'Ticks between decisions; a decision is taken at tick index k when '
          "k % stride == 0 (0: the model's stride)", read_only=True, min=0, max=100_000),
    Param('debounce_k', 0, "Windows at or above the threshold, of the last debounce_n, that "
          "raise the flag (0: the model's)", min=0, max=10_000),
    Param('debounce_n', 0, "Windows the debouncer remembers (0: the model's)", min=0,
          max=10_000),
    Param('release', 0.0, 'Hysteresis: the flag falls when the last debounce_n scores all stay '
          "below this fraction of the threshold (0: the model's)", min=0.0, max=1.0),
    Param('threshold_scale', 1.0, 'Multiply the calibrated threshold (above 1: fewer flags)',
          min=1e-3, max=1e3),
    Param('qos_reliability', 'best_effort', 'Input QoS reliability: best_effort (sensor data) '
          'or reliable', read_only=True, constraints='one of best_effort, reliable'),
    Param('qos_history', 'keep_last', 'Input QoS history: keep_last (qos_depth) or keep_all '
          '(with reliable: for replaying bags; any loss is reported on /diagnostics)',
          read_only=True,
          constraints='one of keep_last, keep_all'),
    Param('qos_depth', 50, 'Input QoS history depth per topic', read_only=True, min=1,
          max=100_000),
    Param('output_depth', 100, 'Depth of the reliable ~/anomaly and ~/score publishers',
          read_only=True, min=1, max=100_000),
    Param('diagnostics_period', 1.0, 'Seconds between /diagnostics messages', read_only=True,
          min=0.01, max=3600.0),
    Param('stale_after', 3.0, 'Seconds without input after which diagnostics turn STALE',
          read_only=True, min=0.01, max=3600.0),
    Param('input_timeout', 0.5, 'Seconds without a message on one input (and at least four '
          'of its periods) after which diagnostics report that input as ERROR',
          read_only=True, min=0.01, max=3600.0),
    Param('top_channels', 3, 'Channels named in diagnostics as contributing most', min=1,
          max=100),
    Param('flag_level', 'WARN', 'Diagnostic level while the anomaly flag is up: WARN or ERROR',
          constraints='one of WARN, ERROR'),
    Param('publish_latent', False, 'Publish the code of each decided window (the encoder mean '
          'for a VAE) on ~/latent as std_msgs/Float32MultiArray, from the same inference; the '
          'model needs a code output', read_only=True),
    Param('rebaseline_minutes', 5.0, 'Minutes of recent input kept for the ~/rebaseline '
          'service ("this is normal now")', read_only=True, min=0.1, max=240.0),
    Param('rebaseline_dir', '', 'Directory for re-baselined models (empty: $ROS_HOME/encdec_ros'
          '/models, ROS_HOME defaulting to ~/.ros)', read_only=True),
)


class _Latency:
    """A ring of recent durations in seconds, summarised in milliseconds."""

    def __init__(self) -> None:
        self._buf = np.zeros(LATENCY_WINDOW, dtype=np.float64)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._buf[self.count & (LATENCY_WINDOW - 1)] = seconds
        self.count += 1

    def summary(self) -> dict[str, float]:
        n = min(self.count, LATENCY_WINDOW)
        if n == 0:
            return {'count': 0, 'mean': 0.0, 'p50': 0.0, 'p99': 0.0, 'max': 0.0}
        ms = self._buf[:n] * 1e3
        p50, p99 = np.percentile(ms, (50, 99))
        return {'count': self.count, 'mean': float(ms.mean()), 'p50': float(p50),
                'p99': float(p99), 'max': float(ms.max())}


class AnomalyDetectorNode(Node):
    """Subscribe to a model's topics and publish debounced anomaly flags and scores.

    Args:
        node_name: The node's name.
        record: Keep every decision as ``(tick_ns, score, flag)`` in :attr:`decisions`
            (for the demo and tests; it grows without bound).
        **kwargs: Passed to ``rclpy.node.Node`` (context, namespace, parameter_overrides...).
    """

    NODE_NAME = 'anomaly_detector'

    def __init__(self, node_name: str = NODE_NAME, *, record: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, PARAMS)
        if not p['model_dir']:
            raise ConfigError(f'parameter model_dir of {self.get_name()} is empty; set it to a '
                              'directory written by `encdec train anomaly`, e.g. '
                              '--ros-args -p model_dir:=/path/to/model')
        if p['device'] not in DEVICES:
            raise ConfigError(f'parameter device is {p["device"]!r}; use one of '
                              f'{", ".join(DEVICES)}')
        if p['flag_level'] not in ('WARN', 'ERROR'):
            raise ConfigError(f'parameter flag_level is {p["flag_level"]!r}; use WARN or ERROR')
        if p['qos_history'] not in ('keep_last', 'keep_all'):
            raise ConfigError(f'parameter qos_history is {p["qos_history"]!r}; use keep_last '
                              'or keep_all')
        model_dir = resolve_share_path(p['model_dir'])
        self._scorer_options = {'device': p['device'], 'threads': p['threads'],
                                'stride': p['stride'] or None}
        self.scorer = AnomalyScorer(
            model_dir, debounce_k=p['debounce_k'] or None,
            debounce_n=p['debounce_n'] or None, release=p['release'] or None,
            threshold_scale=p['threshold_scale'], **self._scorer_options)
        self.model_dir = str(self.scorer.model.path)
        spec = self.scorer.spec
        self.spec = spec
        self.stride: int = self.scorer.stride
        self._period = spec.period_ns
        self._aligner = StreamingAligner(spec.channel_counts, spec.period_ns,
                                         max_hold_ns=spec.max_holds_ns)
        self._ring = RingWindow(spec.window, len(self.scorer.channels))
        offsets = np.cumsum([0, *spec.channel_counts])
        self._topic_channels = [self.scorer.channels[a:b]
                                for a, b in zip(offsets[:-1], offsets[1:])]
        self._logged: dict[tuple[int, str], float] = {}
        self._dropped_seen = [0] * len(spec.topics)
        self._flag_level = p['flag_level']
        self._top = p['top_channels']
        self.record = record
        self.decisions: list[tuple[int, float, bool]] = []
        self.counts = {'messages': 0, 'short': 0, 'ticks': 0, 'decisions': 0, 'flagged': 0,
                       'invalid': 0, 'raised': 0, 'unstamped': 0, 'burst': 0}
        self.latency = _Latency()          # message received -> decision published
        self.handling = _Latency()         # every message: received -> callback done
        self._last: Decision | None = None
        self._bad: list[str] = []          # channels with NaN / inf in the last window
        self._logged_bad = False
        self._error = ''
        keep = max(spec.window, int(p['rebaseline_minutes'] * 60 * spec.rate_hz))
        self._recent: deque[tuple[int, np.ndarray]] = deque(maxlen=keep)
        self._rebaseline_dir = p['rebaseline_dir']
        self._rebaselining: threading.Thread | None = None
        self._pending: AnomalyScorer | None = None
        self.rebaselines: list[Any] = []          # RebaselineResult of each switch
        self._rebaseline_note = ''

        qos = qos_profile(p['qos_reliability'], p['qos_depth'])
        if p['qos_history'] == 'keep_all':
            qos.history = HistoryPolicy.KEEP_ALL
        out_qos = QoSProfile(depth=p['output_depth'], reliability=ReliabilityPolicy.RELIABLE)
        self.pub_flag = self.create_publisher(Bool, '~/anomaly', out_qos)
        self.pub_score = self.create_publisher(Float32, '~/score', out_qos)
        self.pub_latent = None
        if p['publish_latent']:
            size = self.scorer.code_size
            if not size:
                raise ConfigError(f'parameter publish_latent is true but model {p["model_dir"]} '
                                  'has no code output (it was trained before models exported '
                                  'their codes); re-train it, or set publish_latent to false')
            self.pub_latent = self.create_publisher(Float32MultiArray, '~/latent', out_qos)
            self._latent_layout = MultiArrayLayout(
                dim=[MultiArrayDimension(label='latent', size=size, stride=size)])
        self._subs = []
        self.monitor = InputMonitor(
            self, [(self.resolve_topic_name(relative_topic(t.name)), t.type)
                   for t in spec.topics], silent_after_s=p['input_timeout'])
        for index, topic in enumerate(spec.topics):
            cls = message_class(topic.type)
            fns = [compile_path(f.path) for f in topic.fields]
            callback = self._make_callback(index, fns, topic.stamp == 'header')
            self._subs.append(self.create_subscription(
                cls, relative_topic(topic.name), callback, qos,
                event_callbacks=self.monitor.event_callbacks(index)))
        self.topic_names: list[str] = [sub.topic_name for sub in self._subs]
        """The input topics as subscribed: the spec's, in the node's namespace, remapped."""
        self.create_service(Trigger, '~/rebaseline', self._on_rebaseline)
        for item, name in zip(self.monitor.inputs, self.topic_names):
            item.name = name
        self.diagnostics = DiagnosticsReporter(
            self, 'anomaly', ', '.join(self.topic_names), p['diagnostics_period'],
            stale_after_s=p['stale_after'], source=self._status)
        self.diagnostics.report_engine(self.scorer.engine)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f'model {model_dir} on {self.scorer.provider}: {len(self.scorer.channels)} '
            f'channels from {", ".join(self.topic_names)} at {spec.rate_hz:g} Hz, window '
            f'{spec.window}, a decision every {self.stride} tick(s), threshold '
            f'{self.scorer.threshold_:.4g} ({self.scorer.error_kind})')

    # ------------------------------------------------------------------ callbacks

    def _make_callback(self, index: int, fns: list[Callable[[Any], Any]],
                       header: bool) -> Callable[[Any], None]:
        monitor, aligner, ring = self.monitor, self._aligner, self._ring
        names = self._topic_channels[index]
        isfinite = math.isfinite

        def callback(msg: Any) -> None:
            t0 = time.perf_counter()
            monitor.arrived(index)
            self.diagnostics.mark_input()        # the topic is alive: ERROR, not STALE
            try:
                values: list[float] = []
                for fn in fns:
                    values.extend(fn(msg))
            except ShortMessageError:
                self.counts['short'] += 1
                monitor.add(index, 'short')
                return
            if header:
                st = msg.header.stamp
                stamp = st.sec * 1_000_000_000 + st.nanosec
                if stamp == 0:
                    self.counts['unstamped'] += 1
                    monitor.add(index, 'unstamped')
                    return
            else:
                stamp = self.get_clock().now().nanoseconds
            if not all(map(isfinite, values)):
                monitor.nonfinite(index, [n for n, v in zip(names, values) if not isfinite(v)])
            monitor.stamp(index, stamp)
            self.counts['messages'] += 1
            ticks, rows, starts = aligner.push(index, stamp, values)
            clock = aligner.clocks[index]
            if clock.events or clock.dropped != self._dropped_seen[index]:
                self._log_time(index)
            decided = 0
            for tick, row, start in zip(ticks.tolist(), rows, starts):
                if start:
                    ring.reset()
                ring.push(row)
                self._recent.append((tick, row))
                self.counts['ticks'] += 1
                if ring.full and (tick // self._period) % self.stride == 0:
                    self._decide(tick)
                    decided += 1
            done = time.perf_counter() - t0
            self.handling.add(done)
            if decided:
                self.latency.add(done)
                if decided > self.counts['burst']:
                    self.counts['burst'] = decided
        return callback

    def _log_time(self, index: int) -> None:
        """Log what the time model did with a topic's stamps: once per kind, then at most
        every LOG_EVERY_S seconds (the counts are on /diagnostics)."""
        topic = self.topic_names[index]
        clock = self._aligner.clocks[index]
        lines = []
        if clock.dropped != self._dropped_seen[index]:
            self._dropped_seen[index] = clock.dropped
            lines.append(('dropped', f'{topic}: dropped a message whose stamp jumps away from '
                          f'the ones around it ({clock.dropped} so far)'))
        for kind, a, b in clock.take_events():
            dt = abs(b - a) * 1e-9
            if kind == 'back':
                text = (f'{topic}: stamps jumped {dt:.3f} s back in time (a bag loop, a '
                        'simulator reset?): the time line starts again once every input has '
                        'jumped; no window spans the jump')
            elif kind == 'jump':
                text = (f'{topic}: stamps jumped {dt:.1f} s forward: no tick is made up for '
                        'the jump; the window starts again after it')
            else:
                text = (f'{topic}: no message stamped for {dt:.3f} s (longer than the '
                        f'{clock.hold_ns * 1e-9:.3f} s it may be held): no decision across the '
                        'gap; the window starts again after it')
            lines.append((kind, text))
        now = time.monotonic()
        for kind, text in lines:
            if now - self._logged.get((index, kind), -math.inf) >= LOG_EVERY_S:
                self._logged[(index, kind)] = now
                self.get_logger().warning(text)

    def _decide(self, tick_ns: int) -> None:
        if self._pending is not None:
            self._switch()
        window = self._ring.view()
        try:
            decision = self.scorer.step(window)
        except EncdecError as err:
            if str(err) != self._error:
                self.get_logger().error(str(err))
            self._error = str(err)
            return
        self._error = ''
        self.pub_flag.publish(Bool(data=decision.flag))
        # a window that cannot be scored is flagged, and its score is +inf, so that a
        # consumer testing score >= 1 sees the fault too
        score = float(decision.score) if decision.valid else math.inf
        self.pub_score.publish(Float32(data=score))
        if self.pub_latent is not None and decision.code is not None:
            self.pub_latent.publish(Float32MultiArray(layout=self._latent_layout,
                                                      data=decision.code.tolist()))
        c = self.counts
        c['decisions'] += 1
        c['flagged'] += decision.flag
        c['raised'] += decision.raised
        self._last = decision
        if self.record:
            self.decisions.append((tick_ns, decision.score, decision.flag))
        if not decision.valid:
            c['invalid'] += 1
            bad = np.flatnonzero(~np.isfinite(window).all(axis=0))
            self._bad = [self.scorer.channels[i] for i in bad]
            if decision.raised or not self._logged_bad:
                self._logged_bad = True
                self.get_logger().error(f'fault: NaN or infinite values in {self._bad_text()} '
                                        '(a dead sensor?): flagged')
        elif decision.flag and decision.raised:
            top = ', '.join(n for n, _ in self.scorer.top_channels(decision.channel_z, 2))
            self.get_logger().warning(f'anomaly: score {decision.score:.2f}, most unusual: '
                                      f'{top}')

    def _bad_text(self) -> str:
        return ', '.join(self._bad[:4]) + (' ...' if len(self._bad) > 4 else '')

    def _status(self) -> tuple[int, str, dict[str, Any]]:
        """(level, message, values) for /diagnostics, built when they are published."""
        monitor = self.monitor
        for index, clock in enumerate(self._aligner.clocks):
            monitor.set(index, 'used', clock.accepted)
            monitor.set(index, 'dropped (stamps)', clock.dropped)
            monitor.set(index, 'pending', clock.pending is not None)
            monitor.set(index, 'missing (stamp gaps)', clock.missing)
            monitor.set(index, 'gaps', clock.gaps)
            monitor.set(index, 'jumps back', clock.jumps_back)
            monitor.set(index, 'jumps forward', clock.jumps_forward)
            ref = clock.cadence.ref_ns
            monitor.expect_period(index, ref * 1e-9 if ref else None)
        level, problems, inputs = monitor.report()
        monitor.log_started(self.get_logger(), skip=('dropped', 'back', 'forward'))
        cross = self._time_problems()
        if cross:
            level = max(level, LEVELS['ERROR'])
            problems = cross + problems
        values = self._values()
        values.update(inputs)
        d = self._last
        if self._error:
            level, own = LEVELS['ERROR'], f'cannot score: {self._error}'
        elif d is None:
            own = 'waiting for a full window'
        elif not d.valid:
            level = LEVELS['ERROR']
            own = f'fault: NaN or infinite values in {self._bad_text()} (a dead sensor?): flagged'
        elif d.flag:
            level = max(level, LEVELS[self._flag_level])
            top = ', '.join(n for n, _ in self.scorer.top_channels(d.channel_z, 2))
            own = f'anomaly (score {d.score:.2f}): {top}'
        else:
            own = 'normal'
        message = '; '.join(problems + [own]) if problems else own
        return level, message, values

    def _time_problems(self) -> list[str]:
        """Inputs whose stamps cannot be aligned with the others' (a clock of its own)."""
        clocks = self._aligner.clocks
        names = self.topic_names
        if any(c.last is None for c in clocks):
            return []
        top = max(c.segment for c in clocks)
        behind = [n for n, c in zip(names, clocks) if c.segment < top]
        if behind:
            jumped = [n for n, c in zip(names, clocks) if c.segment == top]
            return [f'the stamps of {", ".join(jumped)} jumped back in time and '
                    f'{", ".join(behind)} did not follow: no decision until they agree']
        lasts = np.array([c.last for c in clocks], dtype=np.float64)
        mid = float(np.median(lasts))
        bound = max(TIME_DISAGREE_S * 1e9, 10 * max(c.hold_ns for c in clocks))
        out = []
        for name, last in zip(names, lasts):
            if abs(last - mid) > bound:
                others = [n for n in names if n != name]
                out.append(f'the stamps of {name} run {(last - mid) * 1e-9:+.1f} s from '
                           f'those of {", ".join(others)}: no decision until they agree')
        return out

    def _values(self) -> dict[str, Any]:
        d = self._last
        s = self.scorer
        lat = self.latency.summary()
        values: dict[str, Any] = {
            'score': (d.score if d.valid else math.inf) if d is not None else math.nan,
            'threshold': s.threshold_,
            'flag': bool(d.flag) if d is not None else False,
            'provider': s.provider,
            'latency p50 (ms)': lat['p50'],
            'latency p99 (ms)': lat['p99'],
            'decisions': self.counts['decisions'],
            'flagged decisions': self.counts['flagged'],
            'unscored decisions (NaN / inf)': self.counts['invalid'],
            'ticks': self.counts['ticks'],
            'ticks left out (gaps)': self._aligner.skipped,
            'most decisions from one message': self.counts['burst'],
            'samples kept': sum(self._aligner.kept()),
            'model': self.model_dir,
        }
        if self._rebaseline_note:
            values['rebaseline'] = self._rebaseline_note
        if d is not None and d.valid:
            values['top channels'] = ', '.join(
                f'{n} (z {z:.1f})' for n, z in s.top_channels(d.channel_z, self._top))
        return values

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Let debounce_k / debounce_n / release / threshold_scale / top_channels change live."""
        deb = self.scorer.debouncer
        k, n, release = deb.k, deb.n, deb.release
        scale = self.scorer.threshold_ / self.scorer.calibrated_threshold
        top, level = self._top, self._flag_level
        for param in params:
            if param.name == 'debounce_k' and param.value:
                k = int(param.value)
            elif param.name == 'debounce_n' and param.value:
                n = int(param.value)
            elif param.name == 'release' and param.value:
                release = float(param.value)
            elif param.name == 'threshold_scale':
                scale = float(param.value)
            elif param.name == 'top_channels':
                top = int(param.value)
            elif param.name == 'flag_level':
                level = str(param.value)
                if level not in ('WARN', 'ERROR'):
                    return SetParametersResult(successful=False,
                                               reason='flag_level must be WARN or ERROR')
        try:
            check_debounce(k, n, release)
        except ConfigError as err:
            return SetParametersResult(successful=False, reason=str(err))
        if (k, n, release) != (deb.k, deb.n, deb.release):
            self.scorer.debouncer = Debouncer(k, n, release)
        self.scorer.threshold_ = self.scorer.calibrated_threshold * scale
        self._top, self._flag_level = top, level
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ re-baselining

    def _on_rebaseline(self, _request: Any, response: Any) -> Any:
        """``~/rebaseline``: re-baseline on the recent input in a worker thread, then switch."""
        if self._rebaselining is not None and self._rebaselining.is_alive():
            response.success = False
            response.message = 'a re-baseline is already running; wait for it to finish'
            return response
        if not self._recent:
            response.success = False
            response.message = 'no input received yet; re-baseline once the robot has run ' \
                               'normally for a few minutes'
            return response
        ticks = np.fromiter((t for t, _ in self._recent), dtype=np.int64,
                            count=len(self._recent))
        rows = np.stack([r for _, r in self._recent])
        out = self._rebaseline_target()
        seconds = (ticks[-1] - ticks[0]) * 1e-9
        try:
            from encdec_ros.anomaly.rebaseline import check_recent
            check_recent(self.scorer, ticks, rows)
            from encdec_ros.modeldir import check_output_dir
            check_output_dir(out, what='re-baselined model directory')
        except EncdecError as err:
            response.success = False
            response.message = str(err)
            return response
        self._rebaseline_note = f'running on {seconds:.0f} s of input into {out}'
        self._rebaselining = threading.Thread(target=self._rebaseline_worker,
                                              args=(ticks, rows, out), daemon=True)
        self._rebaselining.start()
        response.success = True
        response.message = (f're-baselining {self.model_dir} on the last {seconds:.0f} s of '
                            f'input into {out}; the node switches to it when done '
                            '(/diagnostics shows the model in use)')
        self.get_logger().info(response.message)
        return response

    def _rebaseline_target(self) -> Path:
        root = self._rebaseline_dir or os.path.join(
            os.environ.get('ROS_HOME') or os.path.join(os.path.expanduser('~'), '.ros'),
            'encdec_ros', 'models')
        stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
        name = Path(self.model_dir).name.split('.rebaselined-')[0]
        out = Path(root) / f'{name}.rebaselined-{stamp}'
        n = 1
        while out.exists():
            n += 1
            out = Path(root) / f'{name}.rebaselined-{stamp}-{n}'
        return out

    def _rebaseline_worker(self, ticks: np.ndarray, rows: np.ndarray, out: Path) -> None:
        from encdec_ros.anomaly.rebaseline import rebaseline

        try:
            result = rebaseline(self.model_dir, ticks, rows, out,
                                source=f'live input of {self.get_fully_qualified_name()}')
            scorer = AnomalyScorer(out, threshold_scale=self.scorer.threshold_ /
                                   self.scorer.calibrated_threshold, **self._scorer_options)
            deb = self.scorer.debouncer
            scorer.debouncer = Debouncer(deb.k, deb.n, deb.release)
        except EncdecError as err:
            self._rebaseline_note = f'failed: {err}'
            self.get_logger().error(f're-baseline failed: {err}')
            return
        self.rebaselines.append(result)
        self._pending = scorer

    def _switch(self) -> None:
        """Take the re-baselined scorer (on the executor thread, between decisions)."""
        scorer, self._pending = self._pending, None
        if scorer is None:
            return
        self.scorer = scorer
        self.model_dir = str(scorer.model.path)
        result = self.rebaselines[-1]
        self._rebaseline_note = f'switched to {self.model_dir}'
        self.get_logger().info(result.summary())

    def reset(self) -> None:
        """Start afresh: forget the aligned samples, the window, the flag state, the counts
        and the latencies (e.g. before replaying a bag whose stamps start earlier than what was
        received)."""
        self._aligner.reset()
        self._ring.reset()
        self._recent.clear()
        self.scorer.reset()
        self._last = None
        self._bad = []
        self._dropped_seen = [0] * len(self.spec.topics)
        self.decisions.clear()
        self.monitor.reset()
        self.latency, self.handling = _Latency(), _Latency()

    # ------------------------------------------------------------------ figures

    def latency_ms(self) -> dict[str, dict[str, float]]:
        """Latencies in ms: ``decision`` (message received -> decision published, for the
        messages that completed a decision) and ``message`` (every message's handling)."""
        return {'decision': self.latency.summary(), 'message': self.handling.summary()}


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run encdec_ros anomaly_detector``."""
    sys.exit(run_node(AnomalyDetectorNode, args))


if __name__ == '__main__':
    main()
