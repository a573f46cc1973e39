"""``anomaly_detector``: flag faults on live topics with an exported autoencoder.

Usage::

    ros2 run encdec_ros anomaly_detector --ros-args -p model_dir:=/path/to/model
    ros2 launch encdec_ros anomaly_detector.launch.py model_dir:=/path/to/model
    ros2 run encdec_ros anomaly_detector --ros-args -p model_dir:=/path/to/model \\
        -p "streams:=[r1, r2, r3]"          # one node for three robots

The node subscribes to the topics of the model's signal spec, taken relative (``/imu`` is
``imu``, so in namespace ``robot1`` it reads ``/robot1/imu``; remap with ``-r imu:=/imu`` to
read a topic outside the namespace), stamps each sample with its header stamp (or its
receive time, as the spec says), aligns the topics onto the spec's clock
(:class:`~encdec_ros.io.align.StreamingAligner`), keeps the last window
(:class:`~encdec_ros.io.window.RingWindow`) and, at every tick index ``k`` with
``k % stride == 0`` once the window is full, asks :class:`~encdec_ros.anomaly.scorer.AnomalyScorer`
for a decision: the same scorer ``encdec eval anomaly`` uses offline.

The message path: the subscriptions are ``raw=True`` (no Python message object per message);
a callback keeps the bytes (and the receive time where the spec stamps by it) and reads the
header stamp where it lies at a fixed place. Once every input of a stream has a message past
the next decision tick, the callback decodes what the stream has gathered in one batch
(:class:`~encdec_ros.io.cdr.MessageDecoder`) and pushes it, topic by topic, into the stream's
aligner (``push_many``): the decisions are those of the message-by-message path, bit for bit.
A timer (every :data:`FLUSH_S`) takes in what is left when the input pauses.

With ``streams`` (a list of namespaces) one node serves several robots: stream ``r1`` reads
the spec's topics under ``r1/`` and publishes on ``r1/<node name>/anomaly`` and ``.../score``
(what a node of the same name in namespace ``r1`` would publish), with a status of its own on
/diagnostics named ``<namespace>/r1/<node name>: anomaly``. The windows of all streams that
are due together are scored in one inference call (see ``batch_wait``).

Publishes, once per decision: ``~/anomaly`` (std_msgs/Bool, the debounced flag) and
``~/score`` (std_msgs/Float32, error / threshold; +inf for a window with non-finite inputs);
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
model in use. With ``streams`` each stream has its own service (``r1/<node name>/rebaseline``)
and is re-baselined on its own input: it then scores with a model of its own (the windows of
the streams that share a model still go to one inference call each).
"""

from __future__ import annotations

import math
import os
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Bool, Float32, Float32MultiArray, MultiArrayDimension, MultiArrayLayout
from std_srvs.srv import Trigger

from encdec_ros.anomaly.scorer import AnomalyScorer, Debouncer, Decision, StreamState, \
    check_debounce
from encdec_ros.engine import DEVICES
from encdec_ros.errors import ConfigError, EncdecError
from encdec_ros.io.align import StreamingAligner
from encdec_ros.io.cdr import MessageDecoder
from encdec_ros.io.player import message_class
from encdec_ros.io.window import RingWindow
from encdec_ros.nodes.common import (
    LEVELS,
    DiagnosticsReporter,
    InputMonitor,
    Param,
    declare_parameters,
    device_param,
    publish_statuses,
    qos_profile,
    relative_topic,
    resolve_share_path,
    run_node,
)

LATENCY_WINDOW = 4096   # recent samples kept per latency kind (a power of two)
LOG_EVERY_S = 10.0      # the same kind of time event on one topic is logged at most this often
TIME_DISAGREE_S = 5.0   # stamps of one input this far from the others' cannot be aligned
FLUSH_S = 0.1
"""What arrived but completed no decision (input that pauses, stamps that never advance) is
taken in at most this long after the stream's last take: the counters and /diagnostics stay
current."""
MAX_BUFFERED = 1024
"""Messages one input of a stream gathers at most before they are taken in regardless."""
EXPECT_DECISIONS = 2.5
"""A stream is waited for in a batch while its last decision is at most this many decision
periods (of wall time) old."""
_STAMP = struct.Struct('<iI')
_NO_SLOT = 1 << 62      # the decision slot of an input whose stamps are not read on arrival

PARAMS = (
    Param('model_dir', '', 'Model directory written by `encdec train anomaly` (model.onnx and '
          'model.yaml); a relative path that does not exist is also looked up in the '
          'installed share directory', read_only=True),
    device_param('auto'),
    Param('threads', 1, 'ONNX Runtime intra-op threads on the CPU (0: one per core)',
          read_only=True, min=0, max=64),
    Param('streams', [], "Namespaces of the robots this node serves, e.g. [r1, r2]: each "
          "reads the spec's topics under its namespace (relative to the node's) and publishes "
          'on <stream>/<node name>/anomaly and .../score; empty: one stream, the node\'s own '
          'namespace, publishing on ~/anomaly and ~/score', read_only=True,
          type='string_array', constraints='distinct namespaces, e.g. [r1, r2] or [/fleet/r1]'),
    Param('batch_wait', 0.001, 'Seconds a due window may wait for the other streams, so that '
          'their windows are scored in one inference call (0: never wait; one stream never '
          'waits)', read_only=True, min=0.0, max=0.1),
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


def check_streams(streams: list[str]) -> list[str]:
    """The ``streams`` parameter as namespaces (``''``: the node's own), refused in one
    sentence when a name is not a namespace or comes twice."""
    from rclpy.exceptions import InvalidNamespaceException
    from rclpy.validate_namespace import validate_namespace

    if not streams:
        return ['']
    out = []
    for name in streams:
        text = str(name).strip().rstrip('/')
        try:
            if not text or '~' in text or '{' in text:
                raise InvalidNamespaceException(text, 'not a namespace', 0)
            validate_namespace(text if text.startswith('/') else f'/{text}')
        except InvalidNamespaceException:
            raise ConfigError(f'parameter streams holds {name!r}, which is not a namespace; '
                              'give names such as r1, robots/r1 or /fleet/r1 (letters, '
                              'digits and underscores between slashes)') from None
        if text in out:
            raise ConfigError(f'parameter streams names {text!r} twice; give each robot\'s '
                              'namespace once')
        out.append(text)
    return out


class _Recent:
    """The last ``keep`` aligned rows of a stream and their tick times, for ``rebaseline``
    (fixed arrays filled in turn: no object per row). The arrays are written through at once,
    so that the node's memory is taken at start, not over the first ``rebaseline_minutes``
    (a soak then sees it flat)."""

    def __init__(self, keep: int, channels: int) -> None:
        self.times = np.full(keep, 0, dtype=np.int64)
        self.rows = np.full((keep, channels), np.nan, dtype=np.float32)
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def push(self, times: np.ndarray, rows: np.ndarray) -> None:
        keep = self.times.size
        if times.size >= keep:
            times, rows = times[-keep:], rows[-keep:]
        n = times.size
        at = (self._next + np.arange(n)) % keep
        self.times[at] = times
        self.rows[at] = rows
        self._next = (self._next + n) % keep
        self.size = min(keep, self.size + n)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the kept times [T] and rows [T, C], oldest first."""
        order = (self._next - self.size + np.arange(self.size)) % self.times.size
        return self.times[order], self.rows[order]

    def clear(self) -> None:
        self.size = self._next = 0


class _Pending:
    """A window due for a decision, waiting for the batch."""

    __slots__ = ('stream', 'tick', 'window', 't0')

    def __init__(self, stream: '_Stream', tick: int, window: np.ndarray, t0: float) -> None:
        self.stream, self.tick, self.window, self.t0 = stream, tick, window, t0


class _Stream:
    """One robot's inputs, time line, window, flag and diagnostics inside the node."""

    def __init__(self, node: 'AnomalyDetectorNode', index: int, name: str,
                 state: StreamState) -> None:
        spec = node.spec
        self.index = index
        self.name = name
        self.prefix = f'{name}/' if name else ''
        self.scorer = node.scorer        # a stream re-baselined on its own input gets its own
        self.state = state
        self.model_dir = node.model_dir
        self.recent = _Recent(node._keep, len(node.scorer.channels))
        self.rebaselining: threading.Thread | None = None
        self.switch_to: AnomalyScorer | None = None    # re-baselined, taken between decisions
        self.rebaselines: list[Any] = []               # RebaselineResult of each switch
        self.rebaseline_note = ''
        self.aligner = StreamingAligner(spec.channel_counts, spec.period_ns,
                                        max_hold_ns=spec.max_holds_ns)
        self.ring = RingWindow(spec.window, len(node.scorer.channels))
        n = len(spec.topics)
        self.bufs: list[list[bytes]] = [[] for _ in range(n)]
        self.recv: list[list[int]] = [[] for _ in range(n)]
        self.slots = [0] * n           # per input: the decision slot of its newest stamp
        self.done = 0                  # the smallest of them when last taken in
        self.counts = {'messages': 0, 'short': 0, 'ticks': 0, 'decisions': 0, 'flagged': 0,
                       'invalid': 0, 'raised': 0, 'unstamped': 0, 'burst': 0,
                       'undecodable': 0}
        self.latency = _Latency()          # message received -> decision published
        self.handling = _Latency()         # each take: decode, align, queue
        self.decisions: list[tuple[int, float, bool]] = []
        self.last: Decision | None = None
        self.bad: list[str] = []           # channels with NaN / inf in the last window
        self.logged_bad = False
        self.error = ''
        self.logged: dict[tuple[int, str], float] = {}
        self.dropped_seen = [0] * n
        self.decided_at = -math.inf        # time.monotonic() of the last decision
        self.taken_at = -math.inf          # time.monotonic() of the last take
        self.topic_names: list[str] = []
        self.monitor: InputMonitor | None = None
        self.diagnostics: DiagnosticsReporter | None = None
        self.pub_flag: Any = None
        self.pub_score: Any = None
        self.pub_latent: Any = None        # with publish_latent: the window's code

    def reset(self) -> None:
        for buf in (*self.bufs, *self.recv):
            buf.clear()
        self.aligner.reset()
        self.ring.reset()
        self.recent.clear()
        self.state.reset()
        self.slots = [0] * len(self.slots)
        self.done = 0
        self.last = None
        self.bad = []
        self.dropped_seen = [0] * len(self.dropped_seen)
        self.decisions.clear()
        self.monitor.reset()
        self.latency, self.handling = _Latency(), _Latency()


class AnomalyDetectorNode(Node):
    """Subscribe to a model's topics and publish debounced anomaly flags and scores.

    Args:
        node_name: The node's name.
        record: Keep every decision as ``(tick_ns, score, flag)`` in each stream's
            ``decisions`` (for the demo and tests; it grows without bound).
        **kwargs: Passed to ``rclpy.node.Node`` (context, namespace, parameter_overrides...).

    Attributes:
        streams: One :class:`_Stream` per namespace of the ``streams`` parameter (one, the
            node's own namespace, without it). ``monitor``, ``counts``, ``decisions``,
            ``diagnostics``, ``latency`` and ``handling`` are the first stream's.
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
        names = check_streams(p['streams'])
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
        self._span = spec.period_ns * self.stride        # between decision ticks
        offsets = np.cumsum([0, *spec.channel_counts])
        self._topic_channels = [self.scorer.channels[a:b]
                                for a, b in zip(offsets[:-1], offsets[1:])]
        self._flag_level = p['flag_level']
        self._top = p['top_channels']
        self._batch_wait = float(p['batch_wait'])
        self.record = record
        self._pending: list[_Pending] = []
        self._pending_since: float | None = None
        self._clock = self.get_clock()
        self._sim = [False]            # whether the ROS clock runs on /clock (sim time)
        self.inference = {'calls': 0, 'windows': 0, 'largest': 0}   # batched scoring

        self._header = [t.stamp == 'header' for t in spec.topics]
        self._classes = [message_class(t.type) for t in spec.topics]
        self._decoders = [MessageDecoder.for_class(cls, [f.path for f in t.fields],
                                                   header_stamp=header, where=t.name)
                          for cls, t, header in zip(self._classes, spec.topics, self._header)]
        self._stamp_at = [d.stamp_offset if h else None
                          for d, h in zip(self._decoders, self._header)]
        self._keep = max(spec.window, int(p['rebaseline_minutes'] * 60 * spec.rate_hz))
        self._rebaseline_dir = p['rebaseline_dir']

        qos = qos_profile(p['qos_reliability'], p['qos_depth'])
        if p['qos_history'] == 'keep_all':
            qos.history = HistoryPolicy.KEEP_ALL
        out_qos = QoSProfile(depth=p['output_depth'], reliability=ReliabilityPolicy.RELIABLE)
        self._latent_layout = None
        if p['publish_latent']:
            size = self.scorer.code_size
            if not size:
                raise ConfigError(f'parameter publish_latent is true but model {p["model_dir"]} '
                                  'has no code output (it was trained before models exported '
                                  'their codes); re-train it, or set publish_latent to false')
            self._latent_layout = MultiArrayLayout(
                dim=[MultiArrayDimension(label='latent', size=size, stride=size)])
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_last = -math.inf
        self._subs = []
        self.streams: list[_Stream] = []
        for index, name in enumerate(names):
            stream = _Stream(self, index, name, self.scorer.state if index == 0
                             else self.scorer.new_state())
            self._wire(stream, qos, out_qos, p)
            self.streams.append(stream)
        self.topic_names: list[str] = [t for s in self.streams for t in s.topic_names]
        """The input topics as subscribed: the spec's, in the node's namespace (and each
        stream's), remapped."""
        self._diag_period = p['diagnostics_period']
        self._flush = self.create_timer(FLUSH_S, self._on_timer)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        where = ', '.join(self.streams[0].topic_names)
        if len(self.streams) > 1:
            where = f'{len(self.streams)} streams ({", ".join(names)}) of ' + \
                ', '.join(relative_topic(t.name) for t in spec.topics)
        self.get_logger().info(
            f'model {model_dir} on {self.scorer.provider}: {len(self.scorer.channels)} '
            f'channels from {where} at {spec.rate_hz:g} Hz, window '
            f'{spec.window}, a decision every {self.stride} tick(s), threshold '
            f'{self.scorer.threshold_:.4g} ({self.scorer.error_kind})')

    def _wire(self, stream: _Stream, qos: QoSProfile, out_qos: QoSProfile,
              p: dict[str, Any]) -> None:
        """A stream's subscriptions, publishers, input monitor and diagnostics."""
        spec = self.spec
        pre = stream.prefix
        private = f'{pre}{self.get_name()}/' if pre else '~/'
        stream.pub_flag = self.create_publisher(Bool, f'{private}anomaly', out_qos)
        stream.pub_score = self.create_publisher(Float32, f'{private}score', out_qos)
        if self._latent_layout is not None:
            stream.pub_latent = self.create_publisher(Float32MultiArray, f'{private}latent',
                                                      out_qos)
        self.create_service(Trigger, f'{private}rebaseline',
                            lambda req, resp, s=stream: self._on_rebaseline(s, req, resp))
        stream.monitor = InputMonitor(
            self, [(self.resolve_topic_name(pre + relative_topic(t.name)), t.type)
                   for t in spec.topics], silent_after_s=p['input_timeout'])
        for j, topic in enumerate(spec.topics):
            sub = self.create_subscription(
                self._classes[j], pre + relative_topic(topic.name),
                self._make_callback(stream, j), qos, raw=True,
                event_callbacks=stream.monitor.event_callbacks(j))
            self._subs.append(sub)
            stream.topic_names.append(sub.topic_name)
        for item, name in zip(stream.monitor.inputs, stream.topic_names):
            item.name = name
        for j, (at, header) in enumerate(zip(self._stamp_at, self._header)):
            if header and at is None:       # taken in per message, not waited for
                stream.slots[j] = _NO_SLOT
        prefix = self.resolve_topic_name(f'{pre}{self.get_name()}') if pre else None
        stream.diagnostics = DiagnosticsReporter(
            self, 'anomaly', ', '.join(stream.topic_names), p['diagnostics_period'],
            stale_after_s=p['stale_after'], source=lambda s=stream: self._status(s),
            prefix=prefix, timer=False)
        stream.diagnostics.report_engine(self.scorer.engine)

    # ------------------------------------------------------------------ the first stream

    @property
    def monitor(self) -> InputMonitor:
        """The first stream's input monitor."""
        return self.streams[0].monitor

    @property
    def diagnostics(self) -> DiagnosticsReporter:
        """The first stream's diagnostics."""
        return self.streams[0].diagnostics

    @property
    def counts(self) -> dict[str, int]:
        """The first stream's counters."""
        return self.streams[0].counts

    @property
    def decisions(self) -> list[tuple[int, float, bool]]:
        """The first stream's decisions, with ``record``."""
        return self.streams[0].decisions

    @property
    def _aligner(self) -> StreamingAligner:
        return self.streams[0].aligner

    # ------------------------------------------------------------------ arrival

    def _make_callback(self, stream: _Stream, j: int) -> Callable[[bytes], None]:
        """The raw subscription's callback: keep the bytes; take the stream's messages in once
        every input has one past the next decision tick (its decision slot)."""
        buf, slots = stream.bufs[j], stream.slots
        span, take, node = self._span, self._take, self
        cap = MAX_BUFFERED

        def arrived(slot: int) -> None:
            if slot != slots[j]:
                slots[j] = slot
                low = min(slots)
                if low != stream.done:
                    stream.done = low
                    take(stream)
                    return
            if len(buf) >= cap:
                take(stream)
            elif node._pending_since is not None:
                node._due_by_time()

        if not self._header[j]:                  # stamped with the receive time
            recv, clock, sim, wall = stream.recv[j], self._clock, self._sim, time.time_ns

            def by_receipt(data: bytes) -> None:
                now = clock.now().nanoseconds if sim[0] else wall()
                buf.append(data)
                recv.append(now)
                arrived(-(-now // span))
            return by_receipt
        at = self._stamp_at[j]
        if at is None:                           # the stamp is not at a fixed place
            def each(data: bytes) -> None:
                buf.append(data)
                take(stream)
            return each
        unpack = _STAMP.unpack_from

        def by_header(data: bytes) -> None:
            buf.append(data)
            try:
                sec, nsec = unpack(data, at)
            except struct.error:                 # too short to hold a stamp: take it in now
                take(stream)
                return
            arrived(-(-(sec * 1_000_000_000 + nsec) // span))
        return by_header

    def _take(self, stream: _Stream) -> None:
        """Decode what the stream gathered, input by input, and push it into its aligner;
        queue the windows due for a decision."""
        t0 = time.perf_counter()
        now = stream.taken_at = time.monotonic()
        monitor, counts = stream.monitor, stream.counts
        total = decided = 0
        for j, buf in enumerate(stream.bufs):
            if not buf:
                continue
            raw = buf[:]
            buf.clear()
            n = len(raw)
            total += n
            monitor.arrived(j, n, now)
            dec = self._decoders[j].decode_messages(raw)
            ok = dec.ok
            if self._header[j]:
                stamps = dec.header_ns
            else:
                recv = stream.recv[j]
                stamps = np.asarray(recv[:n], dtype=np.int64)
                del recv[:n]
            bad = int(dec.failed.sum())
            if bad:
                self._undecodable(stream, j, bad, dec.error)
            short = int(dec.short.sum())
            if short:
                counts['short'] += short
                monitor.add(j, 'short', short)
            if self._header[j]:
                zero = ok & (stamps == 0)       # a header stamp never filled in
                unstamped = int(zero.sum())
                if unstamped:
                    counts['unstamped'] += unstamped
                    monitor.add(j, 'unstamped', unstamped)
                    ok &= ~zero
            if ok.all():
                values = dec.values
            elif ok.any():
                values, stamps = dec.values[ok], stamps[ok]
            else:
                continue
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                rows = np.flatnonzero(~finite)
                names = self._topic_channels[j]
                monitor.nonfinite(j, [names[c] for c in
                                      np.flatnonzero(~np.isfinite(values[rows[-1]]))],
                                  int(rows.size))
            monitor.stamp(j, int(stamps[-1]))
            counts['messages'] += int(stamps.size)
            ticks = stream.aligner.push_many(j, stamps, values)
            clock = stream.aligner.clocks[j]
            if clock.events or clock.dropped != stream.dropped_seen[j]:
                self._log_time(stream, j)
            if ticks.times_ns.size:
                decided += self._rows(stream, ticks, t0)
        if total:
            stream.diagnostics.mark_input(total, now)
        stream.handling.add(time.perf_counter() - t0)
        if decided:
            counts['burst'] = max(counts['burst'], decided)
            self._due(now)
        if now - self._diag_last >= 0.9 * self._diag_period:
            self._publish_diagnostics(now)

    def _rows(self, stream: _Stream, ticks: Any, t0: float) -> int:
        """Push finished ticks into the stream's window; queue the due windows."""
        ring, counts = stream.ring, stream.counts
        period, stride = self._period, self.stride
        stream.recent.push(ticks.times_ns, ticks.rows)
        due = 0
        for tick, row, start in zip(ticks.times_ns.tolist(), ticks.rows, ticks.starts.tolist()):
            if start:
                ring.reset()
            ring.push(row)
            counts['ticks'] += 1
            if ring.full and (tick // period) % stride == 0:
                if self._pending_since is None:
                    self._pending_since = time.monotonic()
                self._pending.append(_Pending(stream, tick, ring.view().copy(), t0))
                due += 1
        return due

    def _on_timer(self) -> None:
        """Take in what waits (the input paused), score what is due, publish diagnostics."""
        self._sim[0] = bool(getattr(self._clock, 'ros_time_is_active', False))
        now = time.monotonic()
        for stream in self.streams:
            if now - stream.taken_at >= FLUSH_S * 0.9 and any(stream.bufs):
                self._take(stream)
        if self._pending:
            self._run_batch()
        now = time.monotonic()
        if now - self._diag_last >= 0.9 * self._diag_period:
            self._publish_diagnostics(now)

    def _publish_diagnostics(self, now: float) -> None:
        self._diag_last = now
        publish_statuses(self, self._diag_pub, [s.diagnostics for s in self.streams])

    def _undecodable(self, stream: _Stream, j: int, count: int, error: str) -> None:
        stream.counts['undecodable'] += count
        stream.monitor.add(j, 'undecodable', count)
        now = time.monotonic()
        if now - stream.logged.get((j, 'undecodable'), -math.inf) >= LOG_EVERY_S:
            stream.logged[(j, 'undecodable')] = now
            self.get_logger().error(f'{stream.topic_names[j]}: {count} message(s) that do not '
                                    f'match {self.spec.topics[j].type} were left out ({error})')

    # ------------------------------------------------------------------ decisions

    def _due(self, now: float) -> None:
        """Score the queued windows now, unless other streams are about to add theirs."""
        if not self._pending:
            return
        if len(self.streams) > 1 and self._batch_wait > 0 and \
                now - self._pending_since < self._batch_wait:
            waiting = {e.stream.index for e in self._pending}
            recent = now - EXPECT_DECISIONS * self._span * 1e-9
            if any(s.index not in waiting and s.decided_at >= recent for s in self.streams):
                return
        self._run_batch()

    def _due_by_time(self) -> None:
        if time.monotonic() - self._pending_since >= self._batch_wait:
            self._run_batch()

    def _run_batch(self) -> None:
        """Score every queued window in one inference call; publish each decision."""
        entries, self._pending, self._pending_since = self._pending, [], None
        if not entries:
            return
        for entry in entries:
            if entry.stream.switch_to is not None:
                self._switch(entry.stream)
        groups: dict[int, list[_Pending]] = {}      # one call per model (re-baselined ones)
        for entry in entries:
            groups.setdefault(id(entry.stream.scorer), []).append(entry)
        for group in groups.values():
            scorer = group[0].stream.scorer
            try:
                decisions = scorer.decide(np.stack([e.window for e in group]),
                                          [e.stream.state for e in group])
            except EncdecError as err:
                for stream in {id(e.stream): e.stream for e in group}.values():
                    if str(err) != stream.error:
                        self.get_logger().error(f'{self._who(stream)}{err}')
                    stream.error = str(err)
                continue
            inf = self.inference
            inf['calls'] += 1
            inf['windows'] += len(group)
            inf['largest'] = max(inf['largest'], len(group))
            now = time.monotonic()
            for entry, decision in zip(group, decisions):
                self._publish(entry, decision, now)

    def _who(self, stream: _Stream) -> str:
        return f'{stream.name}: ' if len(self.streams) > 1 else ''

    def _publish(self, entry: _Pending, decision: Decision, now: float) -> None:
        stream = entry.stream
        stream.error = ''
        stream.pub_flag.publish(Bool(data=decision.flag))
        # a window that cannot be scored is flagged, and its score is +inf, so that a
        # consumer testing score >= 1 sees the fault too
        score = float(decision.score) if decision.valid else math.inf
        stream.pub_score.publish(Float32(data=score))
        if stream.pub_latent is not None and decision.code is not None:
            stream.pub_latent.publish(Float32MultiArray(layout=self._latent_layout,
                                                        data=decision.code.tolist()))
        stream.latency.add(time.perf_counter() - entry.t0)
        stream.decided_at = now
        c = stream.counts
        c['decisions'] += 1
        c['flagged'] += decision.flag
        c['raised'] += decision.raised
        stream.last = decision
        if self.record:
            stream.decisions.append((entry.tick, decision.score, decision.flag))
        if not decision.valid:
            c['invalid'] += 1
            bad = np.flatnonzero(~np.isfinite(entry.window).all(axis=0))
            stream.bad = [self.scorer.channels[i] for i in bad]
            if decision.raised or not stream.logged_bad:
                stream.logged_bad = True
                self.get_logger().error(f'{self._who(stream)}fault: NaN or infinite values in '
                                        f'{self._bad_text(stream)} (a dead sensor?): flagged')
        elif decision.flag and decision.raised:
            top = ', '.join(n for n, _ in stream.scorer.top_channels(decision.channel_z, 2))
            self.get_logger().warning(f'{self._who(stream)}anomaly: score '
                                      f'{decision.score:.2f}, most unusual: {top}')

    # ------------------------------------------------------------------ reporting

    def _log_time(self, stream: _Stream, index: int) -> None:
        """Log what the time model did with a topic's stamps: once per kind, then at most
        every LOG_EVERY_S seconds (the counts are on /diagnostics)."""
        topic = stream.topic_names[index]
        clock = stream.aligner.clocks[index]
        lines = []
        if clock.dropped != stream.dropped_seen[index]:
            stream.dropped_seen[index] = clock.dropped
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
            if now - stream.logged.get((index, kind), -math.inf) >= LOG_EVERY_S:
                stream.logged[(index, kind)] = now
                self.get_logger().warning(text)

    def _bad_text(self, stream: _Stream) -> str:
        return ', '.join(stream.bad[:4]) + (' ...' if len(stream.bad) > 4 else '')

    def _status(self, stream: _Stream) -> tuple[int, str, dict[str, Any]]:
        """(level, message, values) of one stream for /diagnostics, built when published."""
        monitor = stream.monitor
        for index, clock in enumerate(stream.aligner.clocks):
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
        cross = self._time_problems(stream)
        if cross:
            level = max(level, LEVELS['ERROR'])
            problems = cross + problems
        values = self._values(stream)
        values.update(inputs)
        d = stream.last
        if stream.error:
            level, own = LEVELS['ERROR'], f'cannot score: {stream.error}'
        elif d is None:
            own = 'waiting for a full window'
        elif not d.valid:
            level = LEVELS['ERROR']
            own = f'fault: NaN or infinite values in {self._bad_text(stream)} (a dead ' \
                'sensor?): flagged'
        elif d.flag:
            level = max(level, LEVELS[self._flag_level])
            top = ', '.join(n for n, _ in stream.scorer.top_channels(d.channel_z, 2))
            own = f'anomaly (score {d.score:.2f}): {top}'
        else:
            own = 'normal'
        message = '; '.join(problems + [own]) if problems else own
        return level, message, values

    def _time_problems(self, stream: _Stream) -> list[str]:
        """Inputs whose stamps cannot be aligned with the others' (a clock of its own)."""
        clocks = stream.aligner.clocks
        names = stream.topic_names
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

    def _values(self, stream: _Stream) -> dict[str, Any]:
        d = stream.last
        s = stream.scorer
        lat = stream.latency.summary()
        values: dict[str, Any] = {
            'score': (d.score if d.valid else math.inf) if d is not None else math.nan,
            'threshold': s.threshold_,
            'flag': bool(d.flag) if d is not None else False,
            'provider': s.provider,
            'latency p50 (ms)': lat['p50'],
            'latency p99 (ms)': lat['p99'],
            'decisions': stream.counts['decisions'],
            'flagged decisions': stream.counts['flagged'],
            'unscored decisions (NaN / inf)': stream.counts['invalid'],
            'ticks': stream.counts['ticks'],
            'ticks left out (gaps)': stream.aligner.skipped,
            'most decisions from one message': stream.counts['burst'],
            'samples kept': sum(stream.aligner.kept()),
            'model': stream.model_dir,
        }
        if stream.rebaseline_note:
            values['rebaseline'] = stream.rebaseline_note
        if len(self.streams) > 1:
            values['streams in this node'] = len(self.streams)
            inf = self.inference
            values['windows per inference call'] = round(inf['windows'] / max(inf['calls'], 1),
                                                         2)
            values['most windows in one call'] = inf['largest']
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
        scorers = {id(s.scorer): s.scorer for s in self.streams}
        scorers.setdefault(id(self.scorer), self.scorer)
        if (k, n, release) != (deb.k, deb.n, deb.release):
            for scorer in scorers.values():     # its own state's and those made later
                scorer.debouncer = Debouncer(k, n, release)
            for stream in self.streams:
                if stream.state is not stream.scorer.state:
                    stream.state.debouncer = Debouncer(k, n, release)
        for scorer in scorers.values():
            scorer.threshold_ = scorer.calibrated_threshold * scale
        self._top, self._flag_level = top, level
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ re-baselining

    def _on_rebaseline(self, stream: _Stream, _request: Any, response: Any) -> Any:
        """``~/rebaseline`` (``<stream>/<node name>/rebaseline`` with ``streams``): re-baseline
        the stream's model on its recent input in a worker thread, then switch that stream."""
        if stream.rebaselining is not None and stream.rebaselining.is_alive():
            response.success = False
            response.message = 'a re-baseline is already running; wait for it to finish'
            return response
        if not stream.recent:
            response.success = False
            response.message = 'no input received yet; re-baseline once the robot has run ' \
                               'normally for a few minutes'
            return response
        ticks, rows = stream.recent.arrays()
        out = self._rebaseline_target(stream)
        seconds = (ticks[-1] - ticks[0]) * 1e-9
        try:
            from encdec_ros.anomaly.rebaseline import check_recent
            check_recent(stream.scorer, ticks, rows)
            from encdec_ros.modeldir import check_output_dir
            check_output_dir(out, what='re-baselined model directory')
        except EncdecError as err:
            response.success = False
            response.message = str(err)
            return response
        stream.rebaseline_note = f'running on {seconds:.0f} s of input into {out}'
        stream.rebaselining = threading.Thread(target=self._rebaseline_worker,
                                               args=(stream, ticks, rows, out), daemon=True)
        stream.rebaselining.start()
        response.success = True
        response.message = (f'{self._who(stream)}re-baselining {stream.model_dir} on the last '
                            f'{seconds:.0f} s of input into {out}; the node switches to it '
                            'when done (/diagnostics shows the model in use)')
        self.get_logger().info(response.message)
        return response

    def _rebaseline_target(self, stream: _Stream) -> Path:
        root = self._rebaseline_dir or os.path.join(
            os.environ.get('ROS_HOME') or os.path.join(os.path.expanduser('~'), '.ros'),
            'encdec_ros', 'models')
        stamp = time.strftime('%Y%m%d-%H%M%S', time.gmtime())
        name = Path(stream.model_dir).name.split('.rebaselined-')[0]
        if stream.name:
            name = f'{name}.{stream.name.strip("/").replace("/", "_")}'
        out = Path(root) / f'{name}.rebaselined-{stamp}'
        n = 1
        while out.exists():
            n += 1
            out = Path(root) / f'{name}.rebaselined-{stamp}-{n}'
        return out

    def _rebaseline_worker(self, stream: _Stream, ticks: np.ndarray, rows: np.ndarray,
                           out: Path) -> None:
        from encdec_ros.anomaly.rebaseline import rebaseline

        where = self.get_fully_qualified_name() + (f' ({stream.name})' if stream.name else '')
        old = stream.scorer
        try:
            result = rebaseline(stream.model_dir, ticks, rows, out,
                                source=f'live input of {where}')
            scorer = AnomalyScorer(out, threshold_scale=old.threshold_ /
                                   old.calibrated_threshold, **self._scorer_options)
            deb = old.debouncer
            scorer.debouncer = Debouncer(deb.k, deb.n, deb.release)
        except EncdecError as err:
            stream.rebaseline_note = f'failed: {err}'
            self.get_logger().error(f'{self._who(stream)}re-baseline failed: {err}')
            return
        stream.rebaselines.append(result)
        stream.switch_to = scorer

    def _switch(self, stream: _Stream) -> None:
        """Take the stream's re-baselined scorer (on the executor thread, between decisions):
        the stream starts afresh on it (flag, slow context and drift of the new model)."""
        scorer, stream.switch_to = stream.switch_to, None
        if scorer is None:
            return
        stream.scorer = scorer
        stream.state = scorer.state if stream.index == 0 else scorer.new_state()
        if stream.index == 0:
            self.scorer = scorer
            self.model_dir = str(scorer.model.path)
        stream.model_dir = str(scorer.model.path)
        stream.rebaseline_note = f'switched to {stream.model_dir}'
        self.get_logger().info(f'{self._who(stream)}{stream.rebaselines[-1].summary()}')

    @property
    def rebaselines(self) -> list[Any]:
        """The first stream's re-baselines (RebaselineResult of each switch)."""
        return self.streams[0].rebaselines

    @property
    def _rebaseline_note(self) -> str:
        return self.streams[0].rebaseline_note

    def reset(self) -> None:
        """Start afresh: forget the aligned samples, the windows, the flag states, the counts
        and the latencies of every stream (e.g. before replaying a bag whose stamps start
        earlier than what was received)."""
        self._pending, self._pending_since = [], None
        for stream in self.streams:
            stream.reset()

    # ------------------------------------------------------------------ figures

    def latency_ms(self, stream: int = 0) -> dict[str, dict[str, float]]:
        """Latencies in ms of one stream: ``decision`` (message received -> decision
        published, for the messages that completed a decision) and ``message`` (each take
        of the gathered messages: decode, align, queue)."""
        s = self.streams[stream]
        return {'decision': s.latency.summary(), 'message': s.handling.summary()}


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run encdec_ros anomaly_detector``."""
    sys.exit(run_node(AnomalyDetectorNode, args))


if __name__ == '__main__':
    main()
