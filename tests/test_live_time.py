"""The anomaly detector against messy live input, over real DDS (issue 11, cases 1-7).

Each test takes a simulated flight on the topics of the shipped ``models/anomaly_sim_lstm``,
injects one fault into the messages (their stamps, arrays, values, types or pace), plays them
to the node over DDS and checks what the node publishes and says on /diagnostics. Where the
fault can be written to a bag, the node's decisions are those of ``encdec eval`` on that bag,
bit for bit: the live node and the evaluation share one time model (encdec_ros/io/align.py).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Bool, Float32  # noqa: E402

from encdec_ros.anomaly.evaluate import evaluate_bag  # noqa: E402
from encdec_ros.errors import ConfigError  # noqa: E402
from encdec_ros.io.bag import BagSource  # noqa: E402
from encdec_ros.io.bagwrite import BagWriter  # noqa: E402
from encdec_ros.io.player import BagPlayer, message_class  # noqa: E402
from encdec_ros.nodes.anomaly_detector import AnomalyDetectorNode  # noqa: E402
from encdec_ros.nodes.common import make_executor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'models' / 'anomaly_sim_lstm'
TOPICS = {'/imu': 'sensor_msgs/msg/Imu', '/motors': 'sensor_msgs/msg/JointState',
          '/wrench_cmd': 'geometry_msgs/msg/WrenchStamped'}
HOUR = 3600 * 10**9
SEC = 10**9
RELIABLE = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                      history=HistoryPolicy.KEEP_ALL)
LEVEL = {b'\x00': 'OK', b'\x01': 'WARN', b'\x02': 'ERROR', b'\x03': 'STALE'}


class Event:
    """One message of the flight: its topic, log time and rclpy message."""

    __slots__ = ('topic', 'log_ns', 'msg')

    def __init__(self, topic: str, log_ns: int, msg: Any) -> None:
        self.topic, self.log_ns, self.msg = topic, log_ns, msg

    @property
    def stamp(self) -> int:
        st = self.msg.header.stamp
        return st.sec * SEC + st.nanosec

    def restamp(self, ns: int) -> None:
        self.msg.header.stamp.sec, self.msg.header.stamp.nanosec = divmod(int(ns), SEC)


@pytest.fixture(scope='module')
def flight(tmp_path_factory) -> list[Event]:
    """50 s of normal flight (a seed the model never saw), as rclpy messages."""
    from training.sim import SimConfig, simulate, write_bag

    path = write_bag(simulate(SimConfig(duration_s=50, seed=17)),
                     tmp_path_factory.mktemp('live_time') / 'flight')
    with BagSource(path) as bag:
        return [Event(t, log, deserialize_message(bytes(raw), message_class(TOPICS[t])))
                for t, log, raw in bag.raw_messages(list(TOPICS))]


def take(flight: list[Event], seconds: float) -> tuple[list[Event], int]:
    """A deep copy of the flight's first ``seconds``, and the first stamp."""
    t0 = flight[0].stamp
    return [copy.deepcopy(e) for e in flight if e.stamp < t0 + seconds * SEC], t0


def at(events: list[Event], t0: int, lo: float, hi: float = 1e9,
       topic: str | None = None) -> list[Event]:
    """The events stamped between ``lo`` and ``hi`` seconds from ``t0`` (on one topic)."""
    return [e for e in events if t0 + lo * SEC <= e.stamp < t0 + hi * SEC
            and (topic is None or e.topic == topic)]


def write(events: list[Event], path: Path) -> Path:
    """The messages as a rosbag2 bag, in the order given (the order the node gets them)."""
    with BagWriter(path) as bag:
        for topic, msgtype in TOPICS.items():
            bag.add_topic(topic, msgtype)
        for e in events:
            bag.write_raw(e.topic, e.log_ns, serialize_message(e.msg))
    return path


class Live:
    """The node under test, spun on a thread, with a client that plays to it and records
    what it publishes (flags, scores, diagnostics with the wall time they came)."""

    def __init__(self, context: Any, name: str, **params: Any) -> None:
        values = {'model_dir': str(MODEL), 'device': 'cpu', 'qos_reliability': 'reliable',
                  'qos_history': 'keep_all', 'output_depth': 100_000,
                  'diagnostics_period': 0.1, 'stale_after': 5.0}
        values.update(params)
        self.name = name
        self.node = AnomalyDetectorNode(name, context=context, record=True, parameter_overrides=[
            Parameter(k, value=v) for k, v in values.items()])
        self.client = rclpy.create_node(f'{name}_client', context=context)
        self.flags: list[bool] = []
        self.scores: list[float] = []
        self.diag: list[tuple[float, Any]] = []
        out = QoSProfile(depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
        self.client.create_subscription(Bool, f'/{name}/anomaly',
                                        lambda m: self.flags.append(m.data), out)
        self.client.create_subscription(Float32, f'/{name}/score',
                                        lambda m: self.scores.append(m.data), out)
        self.client.create_subscription(
            DiagnosticArray, '/diagnostics', lambda m: self.diag.extend(
                (time.monotonic(), s) for s in m.status if s.name.startswith(f'/{name}:')), 100)
        self.executor = make_executor(context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def received(self) -> int:
        return sum(i.counts['received'] for i in self.node.monitor.inputs)

    def arrived(self) -> int:
        """Messages out of the DDS queue: taken in, or still held in the node's buffers until
        their decision slot is complete (or its flush timer takes them)."""
        return self.received() + sum(len(b) for s in self.node.streams for b in s.bufs)

    def play(self, events: list[Event], *, rate: float = 8.0, chunk: int = 40) -> int:
        """Publish the messages in order, paced by their log times at ``rate`` x real time,
        at most ``chunk`` ahead of what the node's callbacks have had (so that a loaded machine
        loses nothing); wait for the node's outputs; return how many were published."""
        pubs = self.publishers(TOPICS)
        start = time.monotonic()
        first = events[0].log_ns
        base, had = self.received(), self.arrived()
        for k, e in enumerate(events):
            if k % chunk == 0:
                assert wait_for(lambda k=k: self.arrived() - had >= k, timeout_s=60), \
                    f'the node had {self.arrived() - had} of {k} messages'
            delay = start + (e.log_ns - first) * 1e-9 / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pubs[e.topic].publish(e.msg)
        assert wait_for(lambda: self.received() - base >= len(events), timeout_s=60)
        assert wait_for(lambda: len(self.flags) >= self.node.counts['decisions'], timeout_s=30)
        return len(events)

    def publishers(self, topics: Any, qos: Any = RELIABLE) -> dict[str, Any]:
        """Publishers from the client, once the node's subscriptions match them."""
        pubs = {t: self.client.create_publisher(message_class(TOPICS[t]), t, qos)
                for t in topics}
        assert wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()),
                        timeout_s=20)
        return pubs

    def status(self) -> tuple[str, str, dict[str, str]]:
        """The last diagnostics: level, message, values."""
        wait_for(lambda: bool(self.diag), timeout_s=10)
        s = self.diag[-1][1]
        return LEVEL[bytes(s.level)], s.message, {kv.key: kv.value for kv in s.values}

    def saw(self, level: str, *words: str) -> bool:
        """Whether a diagnostics message at ``level`` held all the words."""
        return any(LEVEL[bytes(s.level)] == level and all(w in s.message for w in words)
                   for _, s in list(self.diag))

    def blamed(self, topic: str) -> int:
        """How many diagnostics said the topic is silent."""
        return sum(f'no message on {topic} ' in s.message for _, s in list(self.diag))

    def decisions(self) -> tuple[np.ndarray, np.ndarray]:
        ticks = np.array([d[0] for d in self.node.decisions], np.int64)
        flags = np.array([d[2] for d in self.node.decisions], bool)
        return ticks, flags

    def accounted(self) -> None:
        """Every message the node received is counted once: used, dropped, held back, short
        or unstamped."""
        for item, clock in zip(self.node.monitor.inputs, self.node._aligner.clocks):
            c = item.counts
            assert c['received'] == clock.accepted + clock.dropped + \
                (clock.pending is not None) + c['short'] + c['unstamped'], (item.name, c)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.client.destroy_node()
        self.node.destroy_node()


def wait_for(predicate: Callable[[], bool], *, timeout_s: float,
             steady: Callable[[], Any] | None = None) -> bool:
    """Wait until ``predicate`` holds; with ``steady``, also give up once its value has not
    changed for 2 s (nothing more is coming)."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        if predicate():
            return True
        if steady is not None:
            value = steady()
            if value != last:
                last, since = value, time.monotonic()
            elif time.monotonic() - since > 2.0:
                return False
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def live(rclpy_context, request):
    nodes: list[Live] = []

    def start(**params: Any) -> Live:
        node = Live(rclpy_context, f'lt_{request.node.name[5:25]}_{len(nodes)}'.replace(
            '[', '_').replace(']', ''), **params)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.close()


def same_as_eval(node: Live, bag: Path) -> Any:
    """The node's decisions are the evaluation's on the same bag; return the evaluation."""
    offline = evaluate_bag(MODEL, bag, device='cpu')
    ticks, flags = node.decisions()
    np.testing.assert_array_equal(ticks, offline.decision_times_ns)
    np.testing.assert_array_equal(flags, offline.flags)
    np.testing.assert_array_equal(np.array(node.flags), offline.flags)
    scores = np.array(node.scores, np.float64)
    want = np.where(np.isfinite(offline.scores), offline.scores, np.inf)  # +inf: unscored
    np.testing.assert_allclose(scores, want, rtol=1e-4)
    return offline


def replay(live: Callable[..., Live], events: list[Event], bag: Path, *, rate: float = 8.0
           ) -> tuple[Live, np.ndarray, np.ndarray, Any]:
    """Play the messages to a fresh node and write them to a bag; check the node's decisions
    against the evaluation of that bag; return the node, its decision ticks and flags, and the
    evaluation."""
    write(events, bag)
    node = live()
    node.play(events, rate=rate)
    offline = same_as_eval(node, bag)
    return (node, *node.decisions(), offline)


# --------------------------------------------------------------------------- 1: ahead


def test_one_message_an_hour_ahead_is_dropped_and_nothing_else_is_lost(flight, live, tmp_path):
    events, t0 = take(flight, 12)
    odd = at(events, t0, 5, topic='/imu')[0]
    odd.restamp(odd.stamp + HOUR)
    node, ticks, _, _ = replay(live, events, tmp_path / 'ahead_one')
    assert ticks.size > 150 and ticks[-1] > t0 + 11 * SEC        # decisions go on to the end
    clocks = dict(zip(TOPICS, node.node._aligner.clocks))
    assert clocks['/imu'].dropped == 1 and clocks['/imu'].gaps == 0
    assert node.saw('WARN', '/imu', 'dropped')
    node.accounted()


def test_every_input_an_hour_ahead_is_skipped_in_one_step(flight, live, tmp_path):
    events, t0 = take(flight, 12)
    for e in at(events, t0, 6):
        e.restamp(e.stamp + HOUR)
    node, ticks, _, _ = replay(live, events, tmp_path / 'ahead_all')
    after = ticks[ticks > t0 + HOUR]
    assert after.size > 60 and after[0] < t0 + HOUR + 7 * SEC     # back within a second
    assert node.node.counts['burst'] <= 2                          # never a burst
    assert node.node._aligner.skipped > 359_000
    assert [c.jumps_forward for c in node.node._aligner.clocks] == [1, 1, 1]
    assert max(node.node._aligner.kept()) < 100
    assert node.saw('WARN', 'jumped forward')
    node.accounted()


# --------------------------------------------------------------------------- 2: back


def test_stamps_ten_seconds_back_start_again_at_once(flight, live, tmp_path):
    events, t0 = take(flight, 16)
    for e in at(events, t0, 12):
        e.restamp(e.stamp - 10 * SEC)                  # a bag loop: 12 s -> 2 s
    node, ticks, _, _ = replay(live, events, tmp_path / 'back')
    loop = int(np.flatnonzero(np.diff(ticks) < 0)[0]) + 1
    assert ticks[loop - 1] > t0 + 11 * SEC                          # up to the loop
    assert ticks[loop] < t0 + 3 * SEC                               # then 0.6 s after 2 s
    assert [c.jumps_back for c in node.node._aligner.clocks] == [1, 1, 1]
    _, _, values = node.status()
    assert values['/imu: jumps back'] == '1' and node.saw('WARN', 'jumped back', '/motors')
    node.accounted()


def test_a_bag_with_a_gap_and_jumps_gives_the_evaluations_decisions(flight, live, tmp_path):
    """One bag with a silent input, an hour's jump ahead and a loop back, played to the node:
    its decisions are the evaluation's, and it decides again after each."""
    events, t0 = take(flight, 14)
    events = [e for e in events if not (e.topic == '/wrench_cmd' and
                                        t0 + 3 * SEC <= e.stamp < t0 + 4 * SEC)]
    for e in at(events, t0, 6):
        e.restamp(e.stamp + HOUR)
    for e in at(events, t0 + HOUR, 10):
        e.restamp(e.stamp - 3 * SEC)                   # 10 s -> 7 s (of the new hour)
    node, ticks, _, _ = replay(live, events, tmp_path / 'gap_and_jumps')
    back = int(np.flatnonzero(np.diff(ticks) < 0)[0]) + 1
    assert np.any((ticks > t0 + 4 * SEC) & (ticks < t0 + 6 * SEC))          # after the gap
    assert np.any(ticks[:back] > t0 + HOUR + 6 * SEC)                         # after the jump
    assert ticks[back:].size > 40 and ticks[back] < t0 + HOUR + 8 * SEC       # after the loop
    assert node.node.counts['burst'] <= 2
    node.accounted()


# --------------------------------------------------------------------------- 3, 5: gaps


def test_a_silent_input_is_a_gap_not_a_burst_and_is_named(flight, live, tmp_path):
    events, t0 = take(flight, 10)
    events = [e for e in events if not (e.topic == '/motors' and
                                        t0 + 5 * SEC <= e.stamp < t0 + 7 * SEC)]
    # 1 s of silence on the wire
    node, ticks, _, _ = replay(live, events, tmp_path / 'silent', rate=2.0)
    window = node.node.spec.window * node.node.spec.period_ns
    # /motors is held 40 ms (four of its periods) past its last message, then nothing until
    # a full window after it is back
    assert not np.any((ticks > t0 + 5.1 * SEC) & (ticks < t0 + 7 * SEC + window - 10**7))
    assert ticks[-1] > t0 + 9 * SEC
    assert node.node.counts['burst'] <= 2
    assert node.saw('ERROR', 'no message on /motors')
    # only /motors is blamed: the others at most for a moment (a starved executor, at 10 Hz)
    assert node.blamed('/motors') >= 3
    assert node.blamed('/imu') <= 2 and node.blamed('/wrench_cmd') <= 2
    node.accounted()


def test_short_arrays_and_zero_stamps_are_counted_named_and_never_filled(flight, live, tmp_path,
                                                                          capfd):
    events, t0 = take(flight, 10)
    for e in at(events, t0, 4, 6, topic='/motors'):
        e.msg.velocity = list(e.msg.velocity)[:3]          # the spec reads velocity[0:6]
    for e in at(events, t0, 7, 9, topic='/wrench_cmd'):
        e.restamp(0)                                        # a driver that forgets stamps
    # 1 s of each on the wire
    node, ticks, _, offline = replay(live, events, tmp_path / 'short', rate=2.0)
    window = node.node.spec.window * node.node.spec.period_ns
    for lo in (4, 7):
        assert not np.any((ticks > t0 + lo * SEC) & (ticks < t0 + (lo + 2) * SEC + window))
    _, _, values = node.status()
    assert values['/motors: short'] == '200' and values['/wrench_cmd: unstamped'] == '200'
    assert node.saw('ERROR', '/motors', 'fewer array elements', 'none is usable now')
    assert node.saw('ERROR', '/wrench_cmd arrives with zero header stamps')
    assert offline.metrics['decisions']['windows'] == ticks.size
    logged = capfd.readouterr().err.splitlines()                  # logged once each
    assert len([x for x in logged if '/motors:' in x and 'fewer array elements' in x]) == 1
    assert len([x for x in logged if 'zero header stamps' in x]) == 1
    node.accounted()


def test_a_publisher_of_the_wrong_type_is_named(flight, live):
    from geometry_msgs.msg import Twist

    node = live()
    other = rclpy.Context()                     # its own participant, as another process
    rclpy.init(context=other)
    wrong = rclpy.create_node('wrong_type_pub', context=other)
    pubs = node.publishers(('/imu', '/wrench_cmd'))
    twist = wrong.create_publisher(Twist, '/motors', 10)
    try:
        events, _ = take(flight, 4)
        for e in events:
            if e.topic in pubs:
                pubs[e.topic].publish(e.msg)
                twist.publish(Twist())
                time.sleep(0.002)
        assert wait_for(lambda: node.saw('ERROR', '/motors is published as '
                                         'geometry_msgs/msg/Twist by /wrong_type_pub'),
                        timeout_s=20), [s.message for _, s in node.diag[-3:]]
        _, _, values = node.status()
        assert values['/motors: publishers of another type'] == '1'
        assert node.node.counts['decisions'] == 0
    finally:
        wrong.destroy_node()
        rclpy.try_shutdown(context=other)


# --------------------------------------------------------------------------- 4: memory


def test_memory_stays_bounded_while_one_input_is_silent(flight, live):
    from encdec_ros.io.align import MAX_ENTRIES

    node = live()
    events = [e for e in flight if e.topic != '/motors']      # 50 s without /motors
    node.play(events, rate=1000.0)
    kept = node.node._aligner.kept()
    assert max(kept) <= MAX_ENTRIES, kept
    assert sum(node.node._aligner.evicted) > 0
    assert wait_for(lambda: node.saw('ERROR', 'no message on /motors yet'), timeout_s=10)
    node.accounted()


# --------------------------------------------------------------------------- 6: NaN


def test_nan_in_an_input_is_a_fault_flagged_and_named(flight, live, tmp_path):
    events, t0 = take(flight, 12)
    for e in at(events, t0, 5, 6, topic='/imu'):
        e.msg.angular_velocity.x = float('nan')
    node, ticks, flags, offline = replay(live, events, tmp_path / 'nan')
    window = node.node.spec.window * node.node.spec.period_ns
    holding = (ticks >= t0 + 5 * SEC) & (ticks < t0 + 6 * SEC + window)
    assert holding.sum() > 20 and flags[holding].all()
    assert np.isinf(np.array(node.scores)[holding]).all()
    assert not flags[ticks < t0 + 5 * SEC].any()
    assert node.saw('ERROR', '/imu/angular_velocity.x')
    assert offline.metrics['decisions']['invalid'] == holding.sum()
    node.accounted()


# --------------------------------------------------------------------------- 7: bursts


def test_a_burst_that_overflows_the_queue_is_reported_and_decides_nothing_from_it(
        flight, live, tmp_path):
    events = [copy.deepcopy(e) for e in flight[:20_000]]
    bag = write(events, tmp_path / 'burst')
    node = live(qos_reliability='best_effort', qos_history='keep_last', qos_depth=50)
    other = rclpy.Context()                 # another participant, as another process would be
    rclpy.init(context=other)
    try:
        player_node = rclpy.create_node('burst_player', context=other)
        with BagPlayer(player_node, bag, topics=list(TOPICS), rate=0, qos=50) as player:
            assert player.wait_for_subscribers(1, timeout_s=20)
            sent = player.play().messages
        player_node.destroy_node()
    finally:
        rclpy.try_shutdown(context=other)
    wait_for(lambda: False, timeout_s=30, steady=node.received)
    got = node.received()
    assert sent == 20_000 and got < sent                        # the queue overflowed
    _, _, values = node.status()
    missing = {t: int(values[f'{t}: missing (stamp gaps)']) for t in TOPICS}
    assert sum(missing.values()) > 0.5 * (sent - got), (missing, sent - got)
    assert node.saw('WARN', 'messages missing')
    # every decision comes from a window without a gap: the full bag's decision there
    offline = evaluate_bag(MODEL, bag, device='cpu')
    ticks, flags = node.decisions()
    assert np.isin(ticks, offline.decision_times_ns).all()
    assert ticks.size == 0 or flags.mean() <= max(0.2, 2 * offline.flags.mean()), flags.mean()
    node.accounted()


# --------------------------------------------------------------------------- soak


def test_soak_at_1khz_with_jumps_gaps_and_bursts_keeps_memory_flat_and_counts_everything(
        flight, live):
    """16 s at 1000 messages/s (40 s of flight at 2.5x), best-effort QoS as on a robot: a
    stretch of inf, a silent input, an hour jump, a flat-out burst and a loop back."""
    events, t0 = take(flight, 40)
    for e in at(events, t0, 6, 9, topic='/imu'):
        e.msg.angular_velocity.y = float('inf')
    events = [e for e in events if not (e.topic == '/wrench_cmd' and
                                        t0 + 12 * SEC <= e.stamp < t0 + 16 * SEC)]
    for e in at(events, t0, 20):
        e.restamp(e.stamp + HOUR)
    for e in at(events, t0 + HOUR, 30):
        e.restamp(e.stamp - 12 * SEC)
    node = live(qos_reliability='best_effort', qos_history='keep_last', qos_depth=50)
    pubs = node.publishers(TOPICS, qos=50)
    rss = []
    start = time.monotonic()
    for k, e in enumerate(events):
        log = (e.log_ns - events[0].log_ns) * 1e-9
        burst = 24 <= log < 27                          # 3 s of flight flat out
        if not burst:
            delay = start + log / 2.5 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        pubs[e.topic].publish(e.msg)
        if k % 2000 == 0:
            node.diag.clear()                          # what the test records, not the node
            rss.append(_rss_mb())
    wait_for(lambda: False, timeout_s=30, steady=node.received)
    rss.append(_rss_mb())
    print(f'soak: {len(events)} messages sent, {node.received()} received, rss MB {rss}')
    node.accounted()
    aligner = node.node._aligner
    assert max(aligner.kept()) < 200 and not any(aligner.evicted)   # and small at the end
    assert max(rss[2:]) - rss[2] < 5, rss                        # memory stays flat
    assert node.node.counts['burst'] <= 3
    c = {i.name: i.counts for i in node.node.monitor.inputs}
    assert c['/imu']['non-finite'] > 0
    assert [cl.jumps_back for cl in aligner.clocks] == [1, 1, 1]
    assert [cl.jumps_forward for cl in aligner.clocks] == [1, 1, 1]
    assert aligner.clocks[2].gaps >= 2
    assert node.node.counts['decisions'] > 200


def _rss_mb() -> float:
    with open(f'/proc/{os.getpid()}/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


# --------------------------------------------------------------------------- many streams


def test_one_node_serves_several_streams_each_as_a_node_of_its_own(flight, rclpy_context,
                                                                  tmp_path):
    """One node with streams [r1, r2, r3] beside a single-stream node in namespace r1, over
    DDS: r1's decisions are the single node's, r2 (a dead gyro for a second) and r3 (stamps
    offset by 3.7 ms) are their evaluations', each stream
    publishes under its own namespace and has its own status; windows due together are
    scored in one inference call."""
    base, t0 = take(flight, 6)
    second = copy.deepcopy(base)
    for e in at(second, t0, 4, 5, topic='/imu'):
        e.msg.angular_velocity.x = float('nan')
    third = copy.deepcopy(base)
    for e in third:
        e.restamp(e.stamp + 3_700_000)
    bags = {'r2': write(second, tmp_path / 'r2'), 'r3': write(third, tmp_path / 'r3')}
    values = {'model_dir': str(MODEL), 'device': 'cpu', 'qos_reliability': 'reliable',
              'qos_history': 'keep_all', 'output_depth': 100_000, 'diagnostics_period': 0.1,
              'stale_after': 5.0}
    multi = AnomalyDetectorNode('multi', context=rclpy_context, record=True,
                                parameter_overrides=[Parameter(k, value=v) for k, v in {
                                    **values, 'streams': ['r1', 'r2', '/r3']}.items()])
    solo = AnomalyDetectorNode('solo', context=rclpy_context, namespace='r1', record=True,
                               parameter_overrides=[Parameter(k, value=v)
                                                    for k, v in values.items()])
    client = rclpy.create_node('multi_client', context=rclpy_context)
    out_qos = QoSProfile(depth=100_000, reliability=ReliabilityPolicy.RELIABLE)
    flags: dict[str, list[bool]] = {'r1': [], 'r2': [], 'r3': []}
    for ns, got in flags.items():
        client.create_subscription(Bool, f'/{ns}/multi/anomaly',
                                   lambda m, got=got: got.append(m.data), out_qos)
    statuses: dict[str, Any] = {}
    client.create_subscription(DiagnosticArray, '/diagnostics', lambda m: statuses.update(
        (s.name, s) for s in m.status), 100)
    executor = make_executor(rclpy_context)
    for node in (multi, solo, client):
        executor.add_node(node)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.02)
                                              for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()
    try:
        assert multi.topic_names == [f'/{ns}{t}' for ns in ('r1', 'r2', 'r3') for t in TOPICS]
        pubs = {(ns, t): client.create_publisher(message_class(TOPICS[t]), f'/{ns}{t}',
                                                 RELIABLE) for ns in flags for t in TOPICS}
        assert wait_for(lambda: all(p.get_subscription_count() >= (2 if ns == 'r1' else 1)
                                    for (ns, _), p in pubs.items()), timeout_s=20)
        played = sorted([(e.log_ns, k, ns, e) for ns, events in
                         (('r1', base), ('r2', second), ('r3', third))
                         for k, e in enumerate(events)], key=lambda x: (x[0], x[1]))
        received = lambda: sum(i.counts['received'] for s in multi.streams  # noqa: E731
                               for i in s.monitor.inputs)
        start = time.monotonic()
        for k, (log_ns, _, ns, e) in enumerate(played):
            if k % 300 == 0:       # at most 300 ahead of what the node has taken in
                assert wait_for(lambda k=k: received() >= k - 300, timeout_s=60)
            delay = start + (log_ns - played[0][0]) * 1e-9 / 8.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pubs[(ns, e.topic)].publish(e.msg)
        assert wait_for(lambda: received() >= len(played), timeout_s=60)
        counts = [s.counts['decisions'] for s in multi.streams]
        assert wait_for(lambda: [len(f) for f in flags.values()] == counts, timeout_s=30)
        assert wait_for(lambda: {f'/{ns}/multi: anomaly' for ns in flags} <= set(statuses),
                        timeout_s=10)
    finally:
        stop.set()
        thread.join(timeout=5)
        executor.shutdown()
        client.destroy_node()
    try:
        # r1: the single-stream node's decisions, published under /r1/multi
        r1 = multi.streams[0]
        ticks = [d[0] for d in r1.decisions]
        assert len(ticks) > 80 and ticks == [d[0] for d in solo.decisions]
        assert [d[2] for d in r1.decisions] == [d[2] for d in solo.decisions] == flags['r1']
        np.testing.assert_allclose([d[1] for d in r1.decisions],
                                   [d[1] for d in solo.decisions], rtol=1e-5)
        # r2 and r3: their evaluations' decisions
        for index, ns in ((1, 'r2'), (2, 'r3')):
            offline = evaluate_bag(MODEL, bags[ns], device='cpu')
            got = multi.streams[index].decisions
            np.testing.assert_array_equal([d[0] for d in got], offline.decision_times_ns)
            np.testing.assert_array_equal([d[2] for d in got], offline.flags)
            assert flags[ns] == offline.flags.tolist()
            want = np.where(np.isfinite(offline.scores), offline.scores, np.nan)
            np.testing.assert_allclose([d[1] for d in got], want, rtol=1e-4)
        # a status per stream, named as a node in that namespace would be
        s2 = statuses['/r2/multi: anomaly']
        assert s2.hardware_id == '/r2/imu, /r2/motors, /r2/wrench_cmd'
        assert statuses['/r3/multi: anomaly'].hardware_id.startswith('/r3/imu')
        r2_values = {kv.key: kv.value for kv in s2.values}
        assert int(r2_values['/r2/imu: non-finite']) == len(at(second, t0, 4, 5, '/imu'))
        assert r2_values['streams in this node'] == '3'
        # windows of several streams scored together
        inference = multi.inference
        assert inference['windows'] == sum(s.counts['decisions'] for s in multi.streams)
        assert inference['largest'] >= 2 and inference['calls'] < inference['windows']
    finally:
        multi.destroy_node()
        solo.destroy_node()


def test_stream_names_are_checked(rclpy_context):
    for bad, why in ((['r1', 'r1'], 'twice'), (['r 1'], 'not a namespace'),
                     (['~/x'], 'not a namespace')):
        with pytest.raises(ConfigError, match=why):
            AnomalyDetectorNode('bad_streams', context=rclpy_context, parameter_overrides=[
                Parameter('model_dir', value=str(MODEL)), Parameter('device', value='cpu'),
                Parameter('streams', value=bad)])


def test_diagnostics_keep_coming_under_a_flood_of_input(live, tmp_path):
    """A publisher in another process sends as fast as it can for 3 s: the node keeps taking
    messages in and its /diagnostics keep their period (the EventsExecutor starved a timer-only
    publication: none in 25 s; the node publishes them from its data path when due)."""
    import json
    import subprocess
    import sys

    node = live(qos_reliability='best_effort', qos_history='keep_last', diagnostics_period=0.2)
    cfg = {'role': 'publish', 'rate': 0, 'seconds': 3.0,
           'topics': [['/imu', TOPICS['/imu'], 1.0], ['/motors', TOPICS['/motors'], 0.5],
                      ['/wrench_cmd', TOPICS['/wrench_cmd'], 0.5]]}
    path = tmp_path / 'flood.json'
    path.write_text(json.dumps(cfg))
    published: list[float] = []                  # when the node published, by its own clock
    pub = node.node._diag_pub
    original = pub.publish

    def publish(msg: Any) -> None:
        original(msg)
        published.append(time.monotonic())
    pub.publish = publish
    proc = subprocess.run([sys.executable, '-m', 'encdec_ros.bench.worker', str(path)],
                          timeout=60, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(path.with_suffix('.result').read_text())
    assert proc.returncode == 0 and result.get('sent', 0) > 20_000, (proc.stderr[-500:], result)
    # the flood as the publisher timed it (time.monotonic() is one clock for the machine),
    # less its first half second (the queues fill)
    lo, hi = result['started'] + 0.5, result['stopped']
    assert node.received() > 5_000
    times = [lo, *[t for t in published if lo < t < hi], hi]
    gaps = np.diff(times)
    # the period is 0.2 s: a gap of 3 periods means a publication was missed twice running
    assert gaps.max() < 0.6, (np.round(gaps, 2), node.received())
    wait_for(lambda: bool(node.diag) and node.diag[-1][0] > hi, timeout_s=5)
    heard = [t for t, _ in list(node.diag) if lo < t < hi]
    assert len(heard) >= 0.5 * (hi - lo) / 0.2, (len(heard), np.round(gaps, 2))
