"""Play a bag onto live ROS 2 topics (a small ``ros2 bag play`` that needs no ros2cli).

A rosbag2's stored CDR bytes are published as they are (no decode and re-encode), in log-time
order, at a chosen multiple of real time or as fast as possible. A ROS 1 bag's messages are
converted to CDR on the way (rosbags' converter: the ROS 1 header's ``seq`` dropped, types
whose layout changed migrated field by field). Used by the demo, the node tests and
``encdec play``.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from encdec_ros.errors import BagError, ConfigError
from encdec_ros.io.bag import BagSource, standard_typestore


def message_class(msgtype: str) -> Any:
    """The rclpy message class of ``pkg/msg/Name``; a clear error when it is not installed."""
    pkg, _, name = msgtype.partition('/msg/')
    try:
        return getattr(importlib.import_module(f'{pkg}.msg'), name)
    except (ImportError, AttributeError):
        msg = f'message type {msgtype} is not installed for Python here; install the package ' \
              f'{pkg} (on a robot: source its workspace)'
        raise ConfigError(msg) from None


@dataclass
class PlayStats:
    """What a play published."""

    messages: int
    wall_s: float
    bag_s: float
    per_topic: dict[str, int]

    @property
    def speedup(self) -> float:
        """Bag time played per second of wall time."""
        return self.bag_s / self.wall_s if self.wall_s > 0 else float('inf')


def _installed(msgtype: str) -> bool:
    try:
        message_class(msgtype)
    except ConfigError:
        return False
    return True


class BagPlayer:
    """Publish a bag's messages on their topics from an rclpy node.

    ``bag`` is a rosbag2 or a ROS 1 bag. ``rate`` is the playback speed (1 = real time, 10 =
    ten times faster, 0 = as fast as possible); ``topics`` the topics to play (default: every
    topic whose message type is installed here; the others are named in :attr:`warnings`);
    ``remap`` renames topics; ``qos`` is a QoS profile or depth for publishers.
    """

    def __init__(self, node: Any, bag: str | Path, *, topics: Sequence[str] | None = None,
                 rate: float = 1.0, remap: Mapping[str, str] | None = None,
                 qos: Any = 100) -> None:
        if rate < 0:
            msg = f'playback rate must be 0 (as fast as possible) or positive, got {rate}'
            raise ConfigError(msg)
        self.node = node
        self.path = Path(bag)
        self.rate = rate
        self._bag = BagSource(self.path)
        available = self._bag.topics
        wanted = list(topics) if topics is not None else list(available)
        missing = [t for t in wanted if t not in available]
        if missing:
            self._bag.close()
            msg = f'topic {missing[0]} is not in {self.path}; it has {", ".join(available)}'
            raise BagError(msg)
        self.warnings = list(self._bag.warnings)    # e.g. only one part of a split bag
        if topics is None:          # all topics: those this Python cannot publish are named
            absent = [t for t in wanted if not _installed(available[t].type)]
            self.warnings.extend(f'topic {t} is not played: its type {available[t].type} is '
                                 'not installed for Python here' for t in absent)
            wanted = [t for t in wanted if t not in absent]
        remap = dict(remap or {})
        self.topics = wanted
        try:
            self._convert = {t: self._converter(t) for t in wanted}
        except BaseException:
            self._bag.close()
            raise
        for text in self.warnings:
            node.get_logger().warning(text)
        self._pubs = {t: node.create_publisher(message_class(available[t].type),
                                               remap.get(t, t), qos)
                      for t in wanted}

    def _converter(self, topic: str) -> Callable[[Any], bytes]:
        """Stored bytes of ``topic`` -> CDR bytes of the installed ROS 2 type."""
        if self._bag.kind != 'ros1':
            return bytes
        from rosbags.convert.converter import is_same_wireformat, migrate_bytes

        msgtype = self._bag.topics[topic].type
        source, target = self._bag.typestore(topic), standard_typestore()
        if msgtype not in target.fielddefs:
            msg = f'{msgtype} of topic {topic} in the ROS 1 bag {self.path} has no ROS 2 ' \
                  'definition here; leave the topic out with --topics'
            raise BagError(msg)
        if is_same_wireformat(source, target, msgtype, msgtype):
            return lambda raw: bytes(target.ros1_to_cdr(raw, msgtype))
        cache: dict[str, object] = {}
        return lambda raw: bytes(migrate_bytes(source, target, msgtype, msgtype, cache,
                                               src_is2=False, dst_is2=True))

    def wait_for_subscribers(self, count: int = 1, *, timeout_s: float = 10.0,
                             spin: Callable[[], None] | None = None) -> bool:
        """Wait until every publisher has ``count`` matched subscriptions (True) or time out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() >= count for p in self._pubs.values()):
                return True
            if spin is not None:
                spin()
            time.sleep(0.02)
        return False

    def play(self, *, should_stop: Callable[[], bool] | None = None) -> PlayStats:
        """Publish every message, pacing by log time; return what was published."""
        per_topic = {t: 0 for t in self.topics}
        first_log = last_log = None
        start = time.monotonic()
        for topic, log_ns, raw in self._bag.raw_messages(self.topics):
            if first_log is None:
                first_log = log_ns
            last_log = log_ns
            if self.rate > 0:
                due = start + (log_ns - first_log) * 1e-9 / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                data = self._convert[topic](raw)
            except Exception as err:  # noqa: BLE001 - rosbags raises several kinds
                msg = f'a message on {topic} in {self.path} cannot be converted to ROS 2 ' \
                      f'({type(err).__name__}: {err}); leave the topic out with --topics'
                raise BagError(msg) from err
            self._pubs[topic].publish(data)
            per_topic[topic] += 1
            if should_stop is not None and should_stop():
                break
        wall = time.monotonic() - start
        bag_s = (last_log - first_log) * 1e-9 if first_log is not None else 0.0
        return PlayStats(sum(per_topic.values()), wall, bag_s, per_topic)

    def close(self) -> None:
        """Destroy the publishers and close the bag."""
        for pub in self._pubs.values():
            self.node.destroy_publisher(pub)
        self._pubs.clear()
        self._bag.close()

    def __enter__(self) -> 'BagPlayer':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
