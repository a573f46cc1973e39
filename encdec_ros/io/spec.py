"""The signal spec: the one contract shared by training, evaluation and the live nodes.

A spec names the topics and numeric fields to use, the common sample rate they are aligned to,
and the window length and stride the models see::

    rate_hz: 100          # common clock; every topic is held (zero-order) onto it
    window: 64            # samples per window
    stride: 8             # samples between consecutive window ends
    topics:
      /imu:
        type: sensor_msgs/msg/Imu     # optional when a bag tells the type
        stamp: header                 # header (default when the type has one) | receive
        fields: [angular_velocity.x, angular_velocity.y, linear_acceleration.z]
        max_hold_s: 0.05              # optional: hold a sample at most this long (default:
                                      # 4 of the topic's measured periods, see io/align.py)
      /motors:
        type: sensor_msgs/msg/JointState
        fields: ['velocity[*]', {path: 'effort[0]', name: current_0}]

:meth:`SignalSpec.load` checks the file's shape; :meth:`SignalSpec.bind` checks it against
message types (from a bag or the standard definitions) and returns a *resolved* spec whose
types are known and whose ``[*]`` selectors carry their sizes, ready to store with a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from encdec_ros.errors import SpecError
from encdec_ros.io.align import MAX_HOLD_S
from encdec_ros.io.fields import FieldPath, check_path, parse_path

STAMP_CHOICES = ('header', 'receive')
_TOP_KEYS = ('rate_hz', 'window', 'stride', 'topics', 'name', 'description')
_TOPIC_KEYS = ('type', 'stamp', 'fields', 'max_hold_s')


def normalize_type(name: str) -> str:
    """Write a message type as ``pkg/msg/Name`` (accepts ``pkg/Name`` and ``pkg.msg.Name``)."""
    parts = name.replace('.', '/').replace('::', '/').split('/')
    if len(parts) == 2:
        parts = [parts[0], 'msg', parts[1]]
    return '/'.join(parts)


@dataclass(frozen=True)
class FieldSpec:
    """One field entry of a topic: a path and optional channel names."""

    path: FieldPath
    names: tuple[str, ...] = ()

    def to_yaml(self) -> Any:
        """The entry as written in a spec file."""
        if not self.names:
            return self.path.text
        if len(self.names) == 1 and not self.path.multi:
            return {'path': self.path.text, 'name': self.names[0]}
        return {'path': self.path.text, 'names': list(self.names)}


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the spec."""

    name: str
    fields: tuple[FieldSpec, ...]
    type: str | None = None
    stamp: str | None = None      # None until bound: header when the type has one
    max_hold_s: float | None = None   # None: measured from the topic's period (io/align.py)

    @property
    def max_hold_ns(self) -> int | None:
        """The fixed hold in nanoseconds, or None when it is measured."""
        return None if self.max_hold_s is None else int(round(self.max_hold_s * 1e9))

    def channel_names(self) -> list[str]:
        """Channel names of a resolved topic, e.g. ``/imu/linear_acceleration.x``."""
        out = []
        for entry in self.fields:
            elements = entry.path.element_texts()
            if entry.names:
                out.extend(f'{self.name}/{n}' for n in entry.names)
            else:
                out.extend(f'{self.name}/{e}' for e in elements)
        return out


@dataclass(frozen=True)
class SignalSpec:
    """Topics, fields, the common rate and the window geometry. Immutable."""

    topics: tuple[TopicSpec, ...]
    rate_hz: float
    window: int
    stride: int
    source: str = field(default='<spec>', compare=False)
    name: str = ''
    description: str = ''
    resolved: bool = field(default=False, compare=False)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> 'SignalSpec':
        """Read and check a spec YAML file."""
        path = Path(path)
        if path.is_dir():
            if (path / 'metadata.yaml').is_file():
                msg = (f'spec file {path} is a bag directory, not a spec; pass the signal spec '
                       'YAML file (topics, fields, rate_hz, window)')
            else:
                yamls = sorted(p.name for p in path.glob('*.y*ml') if p.is_file())
                hint = f' such as {path / yamls[0]}' if yamls else ''
                msg = (f'spec file {path} is a directory; pass a signal spec YAML file{hint} '
                       'instead')
            raise SpecError(msg)
        if not path.is_file():
            msg = f'spec file {path} does not exist; pass the path of a signal spec YAML'
            raise SpecError(msg)
        try:
            data = yaml.safe_load(path.read_text(encoding='utf-8'))
        except (UnicodeDecodeError, yaml.reader.ReaderError):
            msg = (f'spec file {path} is not a text YAML file (did you pass a bag?); pass the '
                   'signal spec YAML that lists topics, fields, rate_hz and window')
            raise SpecError(msg) from None
        except OSError as err:
            msg = (f'spec file {path} cannot be read ({err.strerror or type(err).__name__}); '
                   'check its permissions or pass another signal spec YAML')
            raise SpecError(msg) from None
        except yaml.YAMLError as err:
            mark = getattr(err, 'problem_mark', None)
            where = f' at line {mark.line + 1}' if mark else ''
            msg = f'{path}: not valid YAML{where}; fix the syntax ({getattr(err, "problem", err)})'
            raise SpecError(msg) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = '<spec>') -> 'SignalSpec':
        """Build a spec from its dict form, checking every entry."""
        if not isinstance(data, Mapping):
            msg = f'{source}: a spec must be a mapping with rate_hz, window, stride and topics'
            raise SpecError(msg)
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            msg = (f'{source}: unknown key {unknown[0]!r}; the keys of a spec are '
                   f'{", ".join(_TOP_KEYS)}')
            raise SpecError(msg)
        rate = data.get('rate_hz')
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
                math.isfinite(rate) and 0 < rate <= 100_000):
            msg = (f'{source}: rate_hz must be a number of samples per second between 0 and '
                   f'100000, got {rate!r}; for example rate_hz: 100')
            raise SpecError(msg)
        window = _positive_int(data.get('window'), 'window', source, example=64)
        stride = _positive_int(data.get('stride', 1), 'stride', source, example=8)
        if stride > window:
            msg = (f'{source}: stride ({stride}) is larger than window ({window}), which would '
                   'skip samples; use a stride of at most the window')
            raise SpecError(msg)
        topics_raw = data.get('topics')
        if not isinstance(topics_raw, Mapping) or not topics_raw:
            msg = (f'{source}: topics must map each topic name to its fields, e.g. '
                   "topics: {/imu: {fields: [linear_acceleration.x]}}")
            raise SpecError(msg)
        topics = tuple(_topic_from_dict(name, entry, source) for name, entry in topics_raw.items())
        resolved = all(t.type and t.stamp and _sized(t) for t in topics)
        spec = cls(topics=topics, rate_hz=float(rate), window=window, stride=stride,
                   source=source, name=str(data.get('name', '')),
                   description=str(data.get('description', '')), resolved=resolved)
        spec._check_channel_names()
        return spec

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what a spec file or model.yaml holds)."""
        out: dict[str, Any] = {}
        if self.name:
            out['name'] = self.name
        if self.description:
            out['description'] = self.description
        out.update(rate_hz=self.rate_hz, window=self.window, stride=self.stride, topics={})
        for topic in self.topics:
            entry: dict[str, Any] = {}
            if topic.type:
                entry['type'] = topic.type
            if topic.stamp:
                entry['stamp'] = topic.stamp
            if topic.max_hold_s is not None:
                entry['max_hold_s'] = topic.max_hold_s
            entry['fields'] = [f.to_yaml() for f in topic.fields]
            out['topics'][topic.name] = entry
        return out

    def save(self, path: str | Path) -> Path:
        """Write the spec as YAML."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    # ------------------------------------------------------------------ derived
    @property
    def period_ns(self) -> int:
        """Sample period of the common clock, in nanoseconds."""
        return int(round(1e9 / self.rate_hz))

    @property
    def max_holds_ns(self) -> list[int | None]:
        """Per topic, the fixed hold of the spec in nanoseconds (None: measured)."""
        return [t.max_hold_ns for t in self.topics]

    @property
    def topic_names(self) -> list[str]:
        """Names of the topics, in spec order."""
        return [t.name for t in self.topics]

    def topic(self, name: str) -> TopicSpec:
        """The entry of one topic."""
        for topic in self.topics:
            if topic.name == name:
                return topic
        msg = f'{self.source}: no topic {name!r}; the spec has {", ".join(self.topic_names)}'
        raise SpecError(msg)

    @property
    def channels(self) -> list[str]:
        """Channel names in column order (a resolved spec only)."""
        self.require_resolved()
        return [c for t in self.topics for c in t.channel_names()]

    @property
    def channel_counts(self) -> list[int]:
        """Number of channels per topic, in spec order (a resolved spec only)."""
        self.require_resolved()
        return [len(t.channel_names()) for t in self.topics]

    def require_resolved(self) -> None:
        """Raise unless types and sizes are all known."""
        if not self.resolved:
            missing = [t.name for t in self.topics if not (t.type and t.stamp and _sized(t))]
            msg = (f'{self.source}: the type or array size of {", ".join(missing)} is not known '
                   'yet; give type: and explicit slices, or bind the spec to a bag first')
            raise SpecError(msg)

    def with_window(self, *, window: int | None = None, stride: int | None = None,
                    rate_hz: float | None = None) -> 'SignalSpec':
        """A copy with another window, stride or rate, checked like a loaded spec."""
        data = self.to_dict()
        if window is not None:
            data['window'] = window
        if stride is not None:
            data['stride'] = stride
        if rate_hz is not None:
            data['rate_hz'] = rate_hz
        return SignalSpec.from_dict(data, source=self.source)

    # ------------------------------------------------------------------ binding
    def bind(self, topic_types: Mapping[str, str], fielddefs: Mapping[str, Any], *,
             where: str = 'the bag', first_messages: Mapping[str, Any] | None = None
             ) -> 'SignalSpec':
        """Check the spec against known topics and types; return the resolved spec.

        ``topic_types`` maps the topics that exist (in a bag, or on a robot) to their types,
        ``fielddefs`` is a rosbags typestore's definitions, and ``first_messages`` gives one
        message per topic to size ``[*]`` selectors on variable-length arrays.
        """
        from encdec_ros.io.fields import sequence_sizes

        topics = []
        for topic in self.topics:
            if topic.name not in topic_types:
                close = _closest(topic.name, topic_types)
                hint = f' (did you mean {close}?)' if close else ''
                msg = (f'{self.source}: topic {topic.name} is not in {where}{hint}; '
                       f'the topics there are: {", ".join(sorted(topic_types)) or "none"}')
                raise SpecError(msg)
            actual = normalize_type(topic_types[topic.name])
            if topic.type and topic.type != actual:
                msg = (f'{self.source}: topic {topic.name} is declared as {topic.type} but is '
                       f'{actual} in {where}; correct its type: entry')
                raise SpecError(msg)
            if actual not in fielddefs:
                msg = (f'{self.source}: the definition of {actual} (topic {topic.name}) is '
                       f'unknown in {where}; record the bag with message definitions (mcap or '
                       'a recent rosbag2) or use a standard message type')
                raise SpecError(msg)
            has_header = any(n == 'header' for n, _ in fielddefs[actual][1])
            stamp = topic.stamp or ('header' if has_header else 'receive')
            if stamp == 'header' and not has_header:
                msg = (f'{self.source}: topic {topic.name} ({actual}) has no header, so '
                       'stamp: header is impossible; use stamp: receive')
                raise SpecError(msg)
            entries = []
            first = (first_messages or {}).get(topic.name)
            for entry in topic.fields:
                try:
                    path = check_path(entry.path, actual, fielddefs)
                except SpecError as err:
                    msg = f'{self.source}: topic {topic.name}: {err}'
                    raise SpecError(msg) from None
                if first is not None:
                    path = sequence_sizes(path, first)
                if path.multi and any(s.multi and s.stop is None for s in path.segments):
                    if first is not None:
                        msg = (f'{self.source}: topic {topic.name}: {path.text!r} selects from '
                               'an empty array in the first message; give an explicit slice')
                    else:
                        msg = (f'{self.source}: topic {topic.name}: the size of {path.text!r} is '
                               'only known from data; give an explicit slice such as [0:4]')
                    raise SpecError(msg)
                entries.append(replace(entry, path=path))
            topics.append(TopicSpec(topic.name, tuple(entries), actual, stamp,
                                    topic.max_hold_s))
        spec = replace(self, topics=tuple(topics), resolved=True)
        spec._check_channel_names()
        return spec

    def _check_channel_names(self) -> None:
        for topic in self.topics:
            for entry in topic.fields:
                if entry.names and _sized_entry(entry):
                    count = len(entry.path.element_texts())
                    if count != len(entry.names):
                        msg = (f'{self.source}: topic {topic.name}: {entry.path.text!r} yields '
                               f'{count} numbers but {len(entry.names)} names are given')
                        raise SpecError(msg)
        if not self.resolved:
            return
        names = self.channels
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f'{self.source}: channel {dupes[0]} appears twice; list each field once'
            raise SpecError(msg)

    def mismatch(self, other: 'SignalSpec') -> str | None:
        """The first difference from another spec, as a phrase, or None when they agree."""
        if abs(self.rate_hz - other.rate_hz) > 1e-9:
            return f'rate_hz {self.rate_hz} vs {other.rate_hz}'
        for key in ('window', 'stride'):
            if getattr(self, key) != getattr(other, key):
                return f'{key} {getattr(self, key)} vs {getattr(other, key)}'
        if self.topic_names != other.topic_names:
            return f'topics {self.topic_names} vs {other.topic_names}'
        for mine, theirs in zip(self.topics, other.topics):
            if mine.type and theirs.type and mine.type != theirs.type:
                return f'type of {mine.name}: {mine.type} vs {theirs.type}'
            if mine.stamp and theirs.stamp and mine.stamp != theirs.stamp:
                return f'stamp of {mine.name}: {mine.stamp} vs {theirs.stamp}'
            if [f.path.text for f in mine.fields] != [f.path.text for f in theirs.fields]:
                if self.resolved and other.resolved and \
                        mine.channel_names() == theirs.channel_names():
                    continue
                return (f'fields of {mine.name}: {[f.path.text for f in mine.fields]} vs '
                        f'{[f.path.text for f in theirs.fields]}')
        return None


def _positive_int(value: Any, key: str, source: str, *, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f'{source}: {key} must be a whole number of samples ≥ 1, got {value!r}; ' \
              f'for example {key}: {example}'
        raise SpecError(msg)
    return int(value)


def _topic_from_dict(name: Any, entry: Any, source: str) -> TopicSpec:
    if not isinstance(name, str) or not name or ' ' in name or name.endswith('/'):
        msg = f'{source}: topic name {name!r} must be a ROS topic name such as /imu'
        raise SpecError(msg)
    if isinstance(entry, list):
        entry = {'fields': entry}
    if not isinstance(entry, Mapping):
        msg = f'{source}: topic {name} must map to its fields, e.g. {name}: {{fields: [data]}}'
        raise SpecError(msg)
    unknown = [k for k in entry if k not in _TOPIC_KEYS]
    if unknown:
        msg = (f'{source}: topic {name} has an unknown key {unknown[0]!r}; a topic takes '
               f'{", ".join(_TOPIC_KEYS)}')
        raise SpecError(msg)
    msgtype = entry.get('type')
    if msgtype is not None:
        if not isinstance(msgtype, str) or msgtype.count('/') not in (1, 2):
            msg = (f'{source}: topic {name} has type {msgtype!r}; write it as '
                   'package/msg/Name, e.g. sensor_msgs/msg/Imu')
            raise SpecError(msg)
        msgtype = normalize_type(msgtype)
    stamp = entry.get('stamp')
    if stamp is not None and stamp not in STAMP_CHOICES:
        msg = (f'{source}: topic {name} has stamp {stamp!r}; use header (the message\'s '
               'header.stamp) or receive (the time it was received or recorded)')
        raise SpecError(msg)
    hold = entry.get('max_hold_s')
    if hold is not None and (isinstance(hold, bool) or not isinstance(hold, (int, float)) or
                             not (math.isfinite(hold) and 0 < hold <= MAX_HOLD_S)):
        msg = (f'{source}: topic {name} has max_hold_s {hold!r}; give the longest time in '
               f'seconds a sample may stand for later ticks, above 0 and at most {MAX_HOLD_S:g} '
               '(e.g. max_hold_s: 0.05), or leave it out to use four of its measured periods')
        raise SpecError(msg)
    raw_fields = entry.get('fields')
    if isinstance(raw_fields, (str, Mapping)):
        raw_fields = [raw_fields]
    if not isinstance(raw_fields, list) or not raw_fields:
        msg = (f'{source}: topic {name} needs a non-empty fields: list, '
               'e.g. fields: [linear_acceleration.x]')
        raise SpecError(msg)
    fields = []
    for item in raw_fields:
        try:
            fields.append(_field_from_yaml(item))
        except SpecError as err:
            msg = f'{source}: topic {name}: {err}'
            raise SpecError(msg) from None
    return TopicSpec(name=name, fields=tuple(fields), type=msgtype, stamp=stamp,
                     max_hold_s=None if hold is None else float(hold))


def _field_from_yaml(item: Any) -> FieldSpec:
    if isinstance(item, str):
        return FieldSpec(parse_path(item))
    if isinstance(item, Mapping):
        unknown = [k for k in item if k not in ('path', 'name', 'names')]
        if unknown or 'path' not in item:
            msg = f'a field entry must be a path or {{path: ..., name: ...}}, got {dict(item)!r}'
            raise SpecError(msg)
        path = parse_path(item['path'])
        names = item.get('names', [item['name']] if 'name' in item else [])
        if not isinstance(names, Sequence) or isinstance(names, str) or \
                not all(isinstance(n, str) and n for n in names):
            msg = f'names of {path.text!r} must be a list of non-empty strings'
            raise SpecError(msg)
        return FieldSpec(path, tuple(names))
    msg = f'a field entry must be a string path such as linear_acceleration.x, got {item!r}'
    raise SpecError(msg)


def _sized_entry(entry: FieldSpec) -> bool:
    return all(s.stop is not None for s in entry.path.segments if s.multi)


def _sized(topic: TopicSpec) -> bool:
    return all(_sized_entry(f) for f in topic.fields)


def _closest(name: str, choices: Mapping[str, Any]) -> str | None:
    import difflib
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None
