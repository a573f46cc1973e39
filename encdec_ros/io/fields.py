"""Numeric field paths into ROS messages: parsing, checking against a type, and extraction.

A field path names numbers inside a message, for example ``linear_acceleration.x``,
``position[2]``, ``effort[*]`` (every element), ``data[0:4]`` (a slice) or
``poses[0].position.z``. At most one selector per path may pick several elements.

Extraction works alike on rclpy messages and on messages deserialised by rosbags: both
expose fields as attributes and numeric arrays as indexable sequences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from encdec_ros.errors import SpecError

NUMERIC_TYPES = frozenset({
    'bool', 'byte', 'char', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32',
    'int64', 'uint64', 'float32', 'float64', 'octet',
})

_SEGMENT = re.compile(
    r'^(?P<name>[A-Za-z_][A-Za-z0-9_]*)'
    r'(?:\[(?P<sel>\*|\d+|\d*:\d*)\])?$')

# rosbags' Nodetype values (kept as ints so this module does not depend on its enum).
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4


@dataclass(frozen=True)
class Segment:
    """One step of a path: a field name and an optional element selector."""

    name: str
    index: int | None = None      # a single element, ``[3]``
    start: int | None = None      # a slice ``[start:stop]`` (also ``[*]``: start 0, stop None)
    stop: int | None = None
    every: bool = False           # True for ``[*]``

    @property
    def multi(self) -> bool:
        """Whether the selector picks several elements."""
        return self.every or self.start is not None

    def text(self) -> str:
        """The segment written back as in a spec."""
        if self.index is not None:
            return f'{self.name}[{self.index}]'
        if self.every:
            return f'{self.name}[*]'
        if self.start is not None:
            return f'{self.name}[{self.start}:{"" if self.stop is None else self.stop}]'
        return self.name


@dataclass(frozen=True)
class FieldPath:
    """A parsed field path such as ``effort[0:4]``."""

    text: str
    segments: tuple[Segment, ...]

    @property
    def multi(self) -> bool:
        """Whether the path yields several numbers."""
        return any(s.multi for s in self.segments)

    def with_size(self, size: int) -> 'FieldPath':
        """Replace an open selector (``[*]`` or ``[a:]``) by an explicit ``[a:b]``."""
        segs = []
        for seg in self.segments:
            if seg.multi and seg.stop is None:
                seg = Segment(seg.name, start=seg.start or 0, stop=size)
            segs.append(seg)
        return FieldPath('.'.join(s.text() for s in segs), tuple(segs))

    def element_texts(self) -> list[str]:
        """Names of the single numbers a fully sized path yields, e.g. ``effort[0]``."""
        for pos, seg in enumerate(self.segments):
            if seg.multi:
                if seg.stop is None:
                    msg = f'field {self.text!r} has no known size yet'
                    raise SpecError(msg)
                head = '.'.join(s.text() for s in self.segments[:pos])
                tail = '.'.join(s.text() for s in self.segments[pos + 1:])
                return [
                    '.'.join(p for p in (head, f'{seg.name}[{i}]', tail) if p)
                    for i in range(seg.start or 0, seg.stop)
                ]
        return [self.text]


def parse_path(text: str) -> FieldPath:
    """Parse a field path; raise SpecError with the reason when it is malformed."""
    if not isinstance(text, str) or not text.strip():
        msg = f'a field path must be a non-empty string like linear_acceleration.x, got {text!r}'
        raise SpecError(msg)
    segments = []
    for part in text.strip().split('.'):
        match = _SEGMENT.match(part)
        if not match:
            msg = (f'field path {text!r} is malformed at {part!r}; write names joined by dots, '
                   'each optionally followed by [i], [*] or [a:b]')
            raise SpecError(msg)
        sel = match['sel']
        name = match['name']
        if sel is None:
            segments.append(Segment(name))
        elif sel == '*':
            segments.append(Segment(name, start=0, every=True))
        elif ':' in sel:
            lo, hi = sel.split(':')
            start, stop = int(lo or 0), (int(hi) if hi else None)
            if stop is not None and stop <= start:
                msg = f'field path {text!r} has an empty slice [{sel}]; use [a:b] with b > a'
                raise SpecError(msg)
            segments.append(Segment(name, start=start, stop=stop))
        else:
            segments.append(Segment(name, index=int(sel)))
    if sum(s.multi for s in segments) > 1:
        msg = f'field path {text!r} has more than one [*] or slice; list the paths separately'
        raise SpecError(msg)
    return FieldPath(text.strip(), tuple(segments))


FieldDefs = Mapping[str, Any]


def check_path(path: FieldPath, msgtype: str, fielddefs: FieldDefs) -> FieldPath:
    """Check a path against a message type's definition; return it with static sizes filled.

    ``fielddefs`` is a rosbags typestore's ``fielddefs`` mapping. Raises SpecError naming the
    path, what is wrong, and the fields that do exist.
    """
    current = msgtype
    segs: list[Segment] = []
    last = len(path.segments) - 1
    for pos, seg in enumerate(path.segments):
        if current not in fielddefs:
            msg = f'message type {current} is unknown, so field {path.text!r} cannot be checked'
            raise SpecError(msg)
        fields = dict(fielddefs[current][1])
        if seg.name not in fields:
            msg = (f'{current} has no field {seg.name!r} (in {path.text!r}); '
                   f'its fields are: {", ".join(fields) or "none"}')
            raise SpecError(msg)
        nodetype, detail = fields[seg.name]
        nodetype = int(nodetype)
        size: int | None = None
        if nodetype in (_ARRAY, _SEQUENCE):
            (elem_nodetype, elem_detail), count = detail
            size = int(count) if nodetype == _ARRAY else None
            if seg.index is None and not seg.multi:
                kind = f'an array of {size}' if size else 'a variable-length array'
                msg = (f'{current}.{seg.name} is {kind} (in {path.text!r}); pick elements with '
                       f'{seg.name}[0], {seg.name}[0:{size or 4}] or {seg.name}[*]')
                raise SpecError(msg)
            bound = size
            if seg.index is not None and bound is not None and seg.index >= bound:
                msg = (f'{path.text!r} indexes element {seg.index} but {current}.{seg.name} '
                       f'has {bound} elements; use an index below {bound}')
                raise SpecError(msg)
            if seg.multi and bound is not None and seg.stop is not None and seg.stop > bound:
                msg = (f'{path.text!r} slices up to {seg.stop} but {current}.{seg.name} has '
                       f'{bound} elements; end the slice at {bound} or less')
                raise SpecError(msg)
            if seg.multi and seg.stop is None and bound is not None:
                seg = Segment(seg.name, start=seg.start or 0, stop=bound)
            nodetype, detail = int(elem_nodetype), elem_detail
        elif seg.index is not None or seg.multi:
            msg = (f'{current}.{seg.name} is not an array, so {path.text!r} cannot index it; '
                   f'drop the [..]')
            raise SpecError(msg)
        segs.append(seg)
        if nodetype == _NAME:
            current = detail
            if pos == last:
                sub = ', '.join(name for name, _ in fielddefs.get(current, ([], []))[1])
                msg = (f'{path.text!r} is a message ({current}), not a number; '
                       f'name one of its fields: {sub}')
                raise SpecError(msg)
        else:
            basetype = detail[0] if isinstance(detail, tuple) else detail
            if basetype not in NUMERIC_TYPES:
                msg = (f'{path.text!r} is of type {basetype}, not a number; '
                       'choose a numeric field (int, float or bool)')
                raise SpecError(msg)
            if pos != last:
                msg = (f'{path.text!r} continues past {seg.name!r}, which is a {basetype}; '
                       'end the path there')
                raise SpecError(msg)
    return FieldPath('.'.join(s.text() for s in segs), tuple(segs))


class ShortMessageError(ValueError):
    """A message holds fewer array elements than the spec asks for."""


def compile_path(path: FieldPath) -> Callable[[Any], Sequence[float]]:
    """Build a fast extractor that returns the path's numbers from one message."""
    steps = path.segments

    def pick(obj: Any, seg: Segment) -> Any:
        obj = getattr(obj, seg.name)
        if seg.index is not None:
            try:
                return obj[seg.index]
            except IndexError:
                msg = f'{path.text}: message has {len(obj)} elements, needs {seg.index + 1}'
                raise ShortMessageError(msg) from None
        if seg.multi:
            out = obj[seg.start:seg.stop]
            if seg.stop is not None and len(out) != seg.stop - seg.start:
                msg = f'{path.text}: message has {len(obj)} elements, needs {seg.stop}'
                raise ShortMessageError(msg)
            return out
        return obj

    multi_pos = next((i for i, s in enumerate(steps) if s.multi), None)
    if multi_pos is None:
        if all(s.index is None for s in steps):
            names = [s.name for s in steps]
            if len(names) == 1:
                name = names[0]
                return lambda msg: (getattr(msg, name),)

            def plain(msg: Any) -> Sequence[float]:
                obj = msg
                for name in names:
                    obj = getattr(obj, name)
                return (obj,)
            return plain

        def single(msg: Any) -> Sequence[float]:
            obj = msg
            for seg in steps:
                obj = pick(obj, seg)
            return (obj,)
        return single

    head, mid, tail = steps[:multi_pos], steps[multi_pos], steps[multi_pos + 1:]

    def several(msg: Any) -> Sequence[float]:
        obj = msg
        for seg in head:
            obj = pick(obj, seg)
        items = pick(obj, mid)
        if not tail:
            return items
        out = []
        for item in items:
            for seg in tail:
                item = pick(item, seg)
            out.append(item)
        return out
    return several


def sequence_sizes(path: FieldPath, message: Any) -> FieldPath:
    """Fill an open ``[*]`` / ``[a:]`` selector from the element count of one message."""
    if not path.multi or all(s.stop is not None for s in path.segments if s.multi):
        return path
    obj = message
    for seg in path.segments:
        obj = getattr(obj, seg.name)
        if seg.multi:
            return path.with_size(len(obj))
        if seg.index is not None:
            obj = obj[seg.index]
    return path


def _converter(sample: Any) -> Callable[[Any], Any]:
    """How to turn a float into the type that a field (or an array element) holds now."""
    if isinstance(sample, bool):
        return lambda v: bool(v >= 0.5)
    if isinstance(sample, int):
        return lambda v: int(round(float(v)))
    return float


def _store(parent: Any, name: str, start: int, values: Sequence[float]) -> None:
    """Write ``values`` into ``parent.name[start:start + len(values)]``.

    Handles numpy arrays (fixed-size arrays of rclpy messages, every array of rosbags'
    messages, whose read-only buffers are replaced by a written copy), ``array.array``
    (rclpy's numeric sequences) and lists, converting to the element type they hold.
    """
    container = getattr(parent, name)
    stop = start + len(values)
    if hasattr(container, 'dtype'):                       # numpy
        if container.dtype.kind in 'iub':
            values = [round(float(v)) for v in values]
        if not container.flags.writeable:
            container = container.copy()
            container[start:stop] = values
            setattr(parent, name, container)
        else:
            container[start:stop] = values
        return
    typecode = getattr(container, 'typecode', None)
    if typecode is not None:                              # array.array
        import array
        if typecode in 'fd':
            container[start:stop] = array.array(typecode, [float(v) for v in values])
        else:
            container[start:stop] = array.array(typecode, [round(float(v)) for v in values])
        return
    if stop > start:                                      # a list (or any mutable sequence)
        conv = _converter(container[start])
        for i, v in enumerate(values, start):
            container[i] = conv(v)


def compile_setter(path: FieldPath) -> Callable[[Any, Sequence[float]], None]:
    """Build a function ``set(msg, values)`` that writes the path's numbers into a message.

    The counterpart of :func:`compile_path`: ``values`` holds as many numbers as the path
    yields (one for a single field; ``stop - start`` for a sized ``[a:b]``; the message's
    element count for an open ``[*]``). Numbers are converted to the type the field holds
    (float, int or bool), and arrays are written in place, so everything else in the message
    stays as it was. Works on rclpy messages and on rosbags' messages.

    Raises:
        ShortMessageError: The message's array is shorter than the path needs.
    """
    steps = path.segments

    def walk(obj: Any, segs: Sequence[Segment]) -> Any:
        for seg in segs:
            obj = getattr(obj, seg.name)
            if seg.index is not None:
                try:
                    obj = obj[seg.index]
                except IndexError:
                    msg = f'{path.text}: message has {len(obj)} elements, needs {seg.index + 1}'
                    raise ShortMessageError(msg) from None
        return obj

    def check_len(container: Any, stop: int) -> None:
        if len(container) < stop:
            msg = f'{path.text}: message has {len(container)} elements, needs {stop}'
            raise ShortMessageError(msg)

    multi_pos = next((i for i, s in enumerate(steps) if s.multi), None)
    if multi_pos is None:
        *head, last = steps
        if last.index is None:
            conv: list[Callable[[Any], Any]] = []

            def set_field(msg: Any, values: Sequence[float]) -> None:
                obj = walk(msg, head)
                if not conv:
                    conv.append(_converter(getattr(obj, last.name)))
                setattr(obj, last.name, conv[0](values[0]))
            return set_field

        def set_element(msg: Any, values: Sequence[float]) -> None:
            parent = walk(msg, head)
            check_len(getattr(parent, last.name), last.index + 1)
            _store(parent, last.name, last.index, values[:1])
        return set_element

    head, mid, tail = steps[:multi_pos], steps[multi_pos], steps[multi_pos + 1:]
    start = mid.start or 0

    if not tail:
        def set_slice(msg: Any, values: Sequence[float]) -> None:
            parent = walk(msg, head)
            container = getattr(parent, mid.name)
            stop = start + len(values)
            if mid.stop is not None and stop != mid.stop:
                msg_ = f'{path.text}: got {len(values)} numbers, the path holds ' \
                       f'{mid.stop - start}'
                raise ValueError(msg_)
            check_len(container, stop)
            _store(parent, mid.name, start, values)
        return set_slice

    *inner, leaf = tail

    def set_each(msg: Any, values: Sequence[float]) -> None:
        container = getattr(walk(msg, head), mid.name)
        check_len(container, start + len(values))
        for item, value in zip(container[start:start + len(values)], values):
            obj = walk(item, inner)
            if leaf.index is not None:
                check_len(getattr(obj, leaf.name), leaf.index + 1)
                _store(obj, leaf.name, leaf.index, [value])
            else:
                setattr(obj, leaf.name, _converter(getattr(obj, leaf.name))(value))
    return set_each
