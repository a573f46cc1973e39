"""A starter signal spec from a bag: every numeric field of its topics, and a clock and window
suggested from their measured rates (``encdec spec init``, and ``encdec train anomaly`` without
``--spec``).

For each chosen topic (default: every topic with a numeric field, except the label topic and
ROS's own housekeeping topics such as /rosout and /parameter_events) the message definition is
walked and every numeric leaf considered:

- kept: numbers, booleans and numeric arrays; fixed arrays are written with their size
  (``data[0:4]``), variable-length ones as ``name[*]`` sized from the bag (or ``name[0:n]``
  with n their most common length when it varies);
- left out, with a YAML comment saying why (the line is written commented out, so
  uncommenting it puts the field back):

  - builtin time and duration fields (headers and array layouts are skipped silently);
  - covariances (a driver's estimate of its own uncertainty, most often constant);
  - fields (or array elements) that never change in the bag, or that are never finite;
  - absolute positions (``pose.position`` of a pose, a fix's latitude / longitude /
    altitude): they grow without bound as the robot moves, so a model trained on one part
    of a map flags every other part;
  - lists of messages (``poses[]``, ``transforms[]``), which need hand-picked paths.

The clock and the window (:func:`suggest_geometry`):

- ``rate_hz``: the fastest chosen topic's median message rate, rounded down to a nice value
  (:data:`NICE_RATES`) and capped at :data:`MAX_RATE_HZ`; slower topics are held onto it;
- ``window``: :data:`WINDOW_S` seconds, or two periods of the slowest topic when that is
  longer, in samples, at least :data:`WINDOW_MIN` and at most :data:`WINDOW_MAX`;
- ``stride``: a tenth of the window (:data:`DECISIONS_PER_WINDOW`), at least 1.

``stamp`` is ``header`` where the type has a header whose stamps are set, else ``receive``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from encdec_ros.errors import SpecError
from encdec_ros.io.align import stalled
from encdec_ros.io.fields import NUMERIC_TYPES, ShortMessageError, compile_path, parse_path
from encdec_ros.io.labels import LABEL_TOPIC
from encdec_ros.io.spec import SignalSpec

NICE_RATES = (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 100, 120, 150, 200, 250, 400, 500, 1000)
MAX_RATE_HZ = 100.0
"""Highest suggested clock; faster topics are sampled at it (the last message each tick)."""
WINDOW_S = 0.5
WINDOW_MIN = 16
WINDOW_MAX = 100
DECISIONS_PER_WINDOW = 10
SAMPLE_MESSAGES = 20_000
"""Messages decoded per topic to find constant fields (spread over the whole bag)."""
MIN_MESSAGES = 10
SKIP_TYPES_PREFIX = ('rcl_interfaces/', 'rosgraph_msgs/', 'diagnostic_msgs/', 'tf2_msgs/',
                     'lifecycle_msgs/', 'action_msgs/')
SKIP_TOPICS = ('/rosout', '/rosout_agg', '/parameter_events', '/diagnostics', '/tf',
               '/tf_static', '/clock', LABEL_TOPIC)
_METADATA = ('std_msgs/msg/Header', 'std_msgs/msg/MultiArrayLayout')
"""Nested types that describe the message, not the signal: skipped without a comment."""
_TIME_TYPES = ('builtin_interfaces/msg/Time', 'builtin_interfaces/msg/Duration')
_NAME, _BASE, _ARRAY, _SEQUENCE = 2, 1, 3, 4
MAX_ELEMENTS = 64
"""Longest array written with one channel per element; longer ones are left out."""
_MAX_EXPAND = 8       # fixed arrays of messages up to this size are expanded element by element

WHY = {
    'covariance': "a covariance (the driver's estimate of its own uncertainty, not a signal)",
    'constant': 'constant in the bag',
    'nan': 'never a finite number in the bag',
    'position': 'absolute position (it grows as the robot moves: a model trained in one place '
                'flags every other)',
    'time': 'a time stamp',
    'messages': 'a list of messages (pick paths such as {path}[0].x by hand)',
    'empty': 'empty in every message of the bag',
    'large': '{n} elements (an image, a scan or a blob): pick a few by hand, e.g. '
             '{path}[0:8]',
}


@dataclass
class FieldChoice:
    """One field path of a topic, kept or left out with the reason."""

    path: str
    kept: bool
    reason: str = ''
    channels: int = 1


@dataclass
class TopicSurvey:
    """What a bag's topic offers: its type, count, rate and field choices."""

    name: str
    type: str
    count: int
    rate_hz: float | None
    stamp: str = 'header'
    fields: list[FieldChoice] = field(default_factory=list)
    note: str = ''                     # why the whole topic is left out, or a remark

    @property
    def kept(self) -> list[FieldChoice]:
        """The kept fields."""
        return [f for f in self.fields if f.kept]

    @property
    def channels(self) -> int:
        """Channels the kept fields give."""
        return sum(f.channels for f in self.kept)


@dataclass
class StarterSpec:
    """A starter spec and how it was chosen; :meth:`yaml_text` writes it with comments."""

    spec: SignalSpec
    topics: list[TopicSurvey]
    skipped: list[TopicSurvey]
    rule: list[str]
    source: str

    def yaml_text(self) -> str:
        """The spec as YAML with a comment on every choice (loads back to :attr:`spec`)."""
        spec = self.spec
        out = [f'# Starter signal spec written by `encdec spec init` from {self.source}.',
               '# Every numeric field of the chosen topics; fields left out are written '
               'commented out,',
               '# with the reason: uncomment a line to put the field back.',
               *(f'# {line}' for line in self.rule)]
        for topic in self.skipped:
            out.append(f'# topic {topic.name} ({topic.type}) {topic.note}')
        out += [f'name: {_scalar(spec.name)}', f'rate_hz: {spec.rate_hz:g}',
                f'window: {spec.window}', f'stride: {spec.stride}', 'topics:']
        for topic in self.topics:
            rate = f', {topic.rate_hz:.3g} Hz' if topic.rate_hz else ''
            out.append(f'  {topic.name}:{"":<2}# {topic.count} messages{rate}, '
                       f'{topic.channels} channels')
            out.append(f'    type: {topic.type}')
            stamp_note = f'  # {topic.note}' if topic.note else ''
            out.append(f'    stamp: {topic.stamp}{stamp_note}')
            out.append('    fields:')
            for choice in topic.fields:
                if choice.kept:
                    note = f'  # {choice.reason}' if choice.reason else ''
                    out.append(f'      - {_scalar(choice.path)}{note}')
                else:
                    out.append(f'      # - {_scalar(choice.path)}  # left out: {choice.reason}')
        return '\n'.join(out) + '\n'

    def summary(self) -> list[str]:
        """Lines for a terminal: what was chosen and what was left out."""
        spec = self.spec
        lines = [f'{len(self.topics)} topic(s), {sum(t.channels for t in self.topics)} channels '
                 f'at {spec.rate_hz:g} Hz, window {spec.window} '
                 f'({spec.window / spec.rate_hz:.2f} s), stride {spec.stride}']
        for topic in self.topics:
            out = [f for f in topic.fields if not f.kept]
            lines.append(f'  {topic.name} ({topic.type}): {topic.channels} channels'
                         + (f'; left out {len(out)}: ' + ', '.join(
                             f'{f.path} ({f.reason.split(" (")[0]})' for f in out[:4])
                            + (' ...' if len(out) > 4 else '') if out else ''))
        for topic in self.skipped:
            lines.append(f'  {topic.name} ({topic.type}) {topic.note}')
        return lines


def _scalar(text: str) -> str:
    """A YAML scalar: quoted when it holds characters YAML would read otherwise."""
    if not text or any(c in text for c in '[]{}:#*&!|>%@`,\'"') or text.strip() != text:
        return "'" + text.replace("'", "''") + "'"
    return text


# --------------------------------------------------------------------------- the survey


def starter_spec(bag_path: str | Path, *, topics: Sequence[str] | None = None,
                 name: str | None = None, show_progress: bool | None = None) -> StarterSpec:
    """Survey a bag and return a starter spec for ``topics`` (default: every topic with a
    numeric field); raise :class:`SpecError` in one sentence when nothing is usable."""
    from encdec_ros.io.bag import BagSource

    bag_path = Path(bag_path)
    with BagSource(bag_path) as bag:
        if topics:
            missing = [t for t in topics if t not in bag.topics]
            if missing:
                import difflib
                close = difflib.get_close_matches(missing[0], list(bag.topics), n=1)
                hint = f' (did you mean {close[0]}?)' if close else ''
                msg = (f'topic {missing[0]} is not in {bag_path}{hint}; its topics are: '
                       f'{", ".join(sorted(bag.topics)) or "none"}')
                raise SpecError(msg)
            wanted = list(topics)
        else:
            wanted = sorted(t for t, info in bag.topics.items()
                            if t not in SKIP_TOPICS and info.count > 0 and
                            not info.type.startswith(SKIP_TYPES_PREFIX))
        surveys = _survey(bag, wanted, show_progress=show_progress)
    kept = [s for s in surveys if s.kept and not s.note.startswith('left out')]
    skipped = [s for s in surveys if s not in kept]
    if not kept:
        why = '; '.join(f'{s.name}: {s.note.removeprefix("left out: ")}' for s in skipped[:4])
        why = (why + ('; ...' if len(skipped) > 4 else '')) if skipped else \
            'it holds no messages'
        msg = (f'{bag_path} has no topic with a numeric field that changes ({why}); '
               'name topics with numeric fields with --topics, or write the spec by hand')
        raise SpecError(msg)
    rate, window, stride, rule = suggest_geometry(kept)
    data = {'name': name or bag_path.stem, 'rate_hz': rate, 'window': window,
            'stride': stride, 'topics': {
                s.name: {'type': s.type, 'stamp': s.stamp,
                         'fields': [f.path for f in s.kept]} for s in kept}}
    spec = SignalSpec.from_dict(data, source=f'spec inferred from {bag_path}')
    return StarterSpec(spec, kept, skipped, rule, str(bag_path))


def suggest_geometry(topics: Sequence[TopicSurvey]) -> tuple[float, int, int, list[str]]:
    """rate_hz, window, stride and the rule as comment lines (see the module docstring)."""
    rated = [t for t in topics if t.rate_hz]
    if not rated:
        return 10.0, WINDOW_MIN, max(1, WINDOW_MIN // DECISIONS_PER_WINDOW), [
            'rate_hz: no topic has a measurable rate; 10 Hz assumed']
    fast = max(rated, key=lambda t: t.rate_hz or 0)
    slow = min(rated, key=lambda t: t.rate_hz or 0)
    top = min(float(fast.rate_hz or 1), MAX_RATE_HZ)
    nice = [r for r in NICE_RATES if r <= top * 1.02]
    rate = float(nice[-1]) if nice else round(top, 3)
    window_s = max(WINDOW_S, 2.0 / float(slow.rate_hz or 1))
    window = int(min(WINDOW_MAX, max(WINDOW_MIN, round(window_s * rate))))
    stride = max(1, window // DECISIONS_PER_WINDOW)
    rule = [f'rate_hz: the fastest topic ({fast.name}, {fast.rate_hz:.3g} Hz) rounded down to '
            f'a nice value, at most {MAX_RATE_HZ:g} Hz; slower topics are held onto it',
            f'window: {WINDOW_S:g} s or two periods of the slowest topic ({slow.name}, '
            f'{slow.rate_hz:.3g} Hz) if longer, in samples, {WINDOW_MIN}..{WINDOW_MAX}: '
            f'{window} samples = {window / rate:.2f} s',
            f'stride: a tenth of the window: a decision every {stride} samples '
            f'({stride / rate:.3g} s)']
    return rate, window, stride, rule


def _survey(bag: Any, topics: Sequence[str], *, show_progress: bool | None
            ) -> list[TopicSurvey]:
    from encdec_ros.errors import BagError
    from encdec_ros.progress import progress

    surveys: dict[str, TopicSurvey] = {}
    defs: dict[str, Any] = {}
    for topic in topics:
        info = bag.topics[topic]
        survey = surveys[topic] = TopicSurvey(topic, info.type, info.count, None)
        try:
            defs[topic] = bag.typestore(topic).fielddefs
        except BagError:
            survey.note = (f'left out: {info.type} is not a standard type and the bag carries '
                           'no definition of it')
    readable = [t for t in topics if t in defs]
    every = {t: max(1, math.ceil(bag.topics[t].count / SAMPLE_MESSAGES)) for t in readable}
    stamps: dict[str, list[int]] = {t: [] for t in readable}
    samples: dict[str, list[Any]] = {t: [] for t in readable}
    decoders = {t: bag.decoder(t) for t in readable}
    total = sum(bag.topics[t].count for t in readable)
    for topic, log_ns, raw in progress(bag.raw_messages(readable), total=total,
                                       desc=f'surveying {bag.path.name}', unit='msg',
                                       enable=show_progress):
        n = len(stamps[topic])
        stamps[topic].append(log_ns)
        if n % every[topic] == 0:
            try:
                samples[topic].append(decoders[topic](raw))
            except Exception:  # noqa: BLE001 - an undecodable message only loses a sample
                pass
    for topic in readable:
        survey = surveys[topic]
        times = np.sort(np.asarray(stamps[topic], dtype=np.int64))
        steps = np.diff(times)
        steps = steps[steps > 0]
        survey.rate_hz = 1e9 / float(np.median(steps)) if steps.size else None
        msgs = samples[topic]
        if len(times) < MIN_MESSAGES or not msgs:
            survey.note = f'left out: {len(times)} message(s), too few to be a signal'
            continue
        fielddefs = defs[topic]
        survey.stamp, survey.note = _stamp_choice(survey.type, fielddefs, msgs)
        survey.fields = _choose_fields(survey.type, fielddefs, msgs)
        if not survey.kept and not survey.note.startswith('left out'):
            reasons = sorted({f.reason.split(' (')[0] for f in survey.fields})
            survey.note = ('left out: every numeric field is left out (' + ', '.join(reasons)
                           + ')' if survey.fields else 'left out: no numeric field')
    return [surveys[t] for t in topics]


def _stamp_choice(msgtype: str, fielddefs: Any, msgs: list[Any]) -> tuple[str, str]:
    names = [n for n, _ in fielddefs[msgtype][1]]
    if 'header' not in names:
        return 'receive', ''
    ns = np.array([m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in msgs],
                  dtype=np.int64)
    if not ns.any():
        return 'receive', 'header stamps are all zero in the bag: the log times are used'
    if stalled(ns):
        return 'receive', 'header stamps mostly repeat in the bag: the log times are used'
    return 'header', ''


def _leaves(msgtype: str, fielddefs: Any, prefix: str = '', parent: str = ''
            ) -> list[tuple[str, str, int | None, str]]:
    """(path, kind, fixed size, reason) for every leaf: kind is 'scalar', 'array',
    'sequence' or 'skip' (reason given)."""
    out: list[tuple[str, str, int | None, str]] = []
    for name, (nodetype, detail) in fielddefs[msgtype][1]:
        nodetype = int(nodetype)
        path = f'{prefix}{name}'
        covariance = 'covariance' in name.lower()
        if nodetype == _NAME:
            if detail in _METADATA:
                continue
            if detail in _TIME_TYPES:
                out.append((path + '.sec', 'skip', None, WHY['time']))
                continue
            if detail in fielddefs:
                out.extend(_leaves(detail, fielddefs, f'{path}.', detail))
            continue
        if nodetype == _BASE:
            if detail[0] in NUMERIC_TYPES:
                out.append((path, 'skip' if covariance else 'scalar', None,
                            WHY['covariance'] if covariance else _position(path, parent)))
            continue
        (elem_type, elem_detail), count = detail
        elem_type = int(elem_type)
        if elem_type == _BASE:
            if elem_detail[0] not in NUMERIC_TYPES or elem_detail[0] in ('byte', 'octet') \
                    and nodetype == _SEQUENCE:
                continue          # strings, and raw byte blobs (images, point clouds)
            kind = 'array' if nodetype == _ARRAY else 'sequence'
            if covariance:
                path += f'[0:{int(count)}]' if nodetype == _ARRAY else '[*]'
            out.append((path, 'skip' if covariance else kind,
                        int(count) if nodetype == _ARRAY else None,
                        WHY['covariance'] if covariance else ''))
        elif elem_type == _NAME and nodetype == _ARRAY and int(count) <= _MAX_EXPAND \
                and elem_detail in fielddefs:
            for i in range(int(count)):
                out.extend(_leaves(elem_detail, fielddefs, f'{path}[{i}].', elem_detail))
        else:
            out.append((path + '[*]', 'skip', None, WHY['messages'].format(path=path)))
    return out


def _position(path: str, parent: str) -> str:
    """'position' reason for absolute positions, '' otherwise."""
    if parent == 'geometry_msgs/msg/Point' and (path.startswith('position.') or
                                                '.position.' in path):
        return 'position'
    if parent == 'sensor_msgs/msg/NavSatFix' and path in ('latitude', 'longitude', 'altitude'):
        return 'position'
    return ''


def _choose_fields(msgtype: str, fielddefs: Any, msgs: list[Any]) -> list[FieldChoice]:
    choices: list[FieldChoice] = []
    for path, kind, size, reason in _leaves(msgtype, fielddefs, parent=msgtype):
        if kind == 'skip':
            choices.append(FieldChoice(path, False, reason))
            continue
        if reason == 'position':
            choices.append(FieldChoice(path, False, WHY['position']))
            continue
        if kind == 'scalar':
            values = _extract(path, msgs)
            why = _unchanging(values[:, 0])
            choices.append(FieldChoice(path, not why, why))
            continue
        lengths = [len(_walk(m, path)) for m in msgs] if kind == 'sequence' else [size]
        common = max(set(lengths), key=lengths.count) if lengths else 0
        if not common:
            choices.append(FieldChoice(f'{path}[*]', False, WHY['empty']))
            continue
        if common > MAX_ELEMENTS:
            choices.append(FieldChoice(f'{path}[*]', False,
                                       WHY['large'].format(n=common, path=path)))
            continue
        varies = kind == 'sequence' and len(set(lengths)) > 1
        values = _extract(f'{path}[0:{common}]', msgs)
        whys = [_unchanging(values[:, i]) for i in range(common)]
        if all(whys):
            text = f'{path}[*]' if kind == 'sequence' and not varies else f'{path}[0:{common}]'
            reasons = sorted(set(whys))
            choices.append(FieldChoice(text, False, reasons[0] if len(reasons) == 1 else
                                       'each element constant or never finite'))
        elif not any(whys):
            if kind == 'sequence' and not varies:
                choices.append(FieldChoice(f'{path}[*]', True, '', common))
            else:
                note = (f'its length varies in the bag ({min(lengths)}..{max(lengths)}); '
                        f'messages with fewer than {common} are skipped') if varies else ''
                choices.append(FieldChoice(f'{path}[0:{common}]', True, note, common))
        else:
            for i, why in enumerate(whys):
                choices.append(FieldChoice(f'{path}[{i}]', not why, why))
    return choices


def _walk(msg: Any, path: str) -> Any:
    obj = msg
    for part in path.split('.'):
        if '[' in part:
            name, idx = part[:-1].split('[')
            obj = getattr(obj, name)[int(idx)]
        else:
            obj = getattr(obj, part)
    return obj


def _extract(path: str, msgs: list[Any]) -> np.ndarray:
    """[messages, elements] float64 values of a sized path (short messages skipped)."""
    fn = compile_path(parse_path(path))
    rows = []
    for msg in msgs:
        try:
            rows.append([float(v) for v in fn(msg)])
        except ShortMessageError:
            continue
    if not rows:
        return np.full((1, 1), np.nan)
    return np.asarray(rows, dtype=np.float64)


def _unchanging(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return WHY['nan']
    if finite.min() == finite.max():
        return f'{WHY["constant"]} ({finite[0]:g})'
    return ''
