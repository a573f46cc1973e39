"""Batch decoding of serialised messages: many CDR (or ROS 1) messages into one array at a time.

A :class:`MessageDecoder` is compiled once from a message definition (rosbags' ``fielddefs``:
the standard types, or the definitions a bag stores) and the spec's field paths. Compiling
walks the message layout and records where each wanted number lies: at a fixed offset while
everything before it has a fixed size, else relative to a per-message position that is
computed from the bytes (after a string such as ``header.frame_id``, after a sequence such as
JointState's ``name``). Decoding then runs that short program on a whole batch of messages
with numpy: one gather per group of fields, not one Python object per message. A few messages
(a node's tick) are decoded one by one with ``struct`` by the same program, where numpy's
per-call cost would dominate; both give the same bits.

Layout rules (what rosbags and ROS 2's Fast-CDR write):

- CDR (XCDR1, as ROS 2 uses): a 4-byte encapsulation header (``00 01`` little endian,
  ``00 00`` big endian), then the payload, padded at the end by at most 7 bytes; every
  primitive is aligned to its size (8 at most) relative to the payload start; strings are a
  uint32 length that counts a terminating NUL, then the bytes; sequences are a uint32 count,
  then the elements, aligned to the element only when there is at least one; fixed arrays
  have no count.
- ROS 1: no header, no alignment, little endian, strings without the NUL.

The whole message is walked, so a message whose size does not match its definition is caught
(as rosbags catches it), not read as garbage. Such messages, and any field the decoder cannot
lay out (a nested type without a definition, a base type it does not know), go through the
per-message path: the ``deserialize`` function given (rosbags or rclpy) and
:func:`~encdec_ros.io.fields.compile_path`, so both paths give the same numbers. The fields
that take the per-message path are said once in the log.

The live nodes use the same decoder (:meth:`MessageDecoder.for_class`, laid out from the rclpy
message class): they subscribe with ``raw=True``, keep each message's bytes, and decode what
arrived per tick; :attr:`MessageDecoder.stamp_offset` lets them read a message's header stamp
without decoding it, and :meth:`MessageDecoder.locate` tells where each value lies in one
message (the denoiser writes its cleaned values back there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from encdec_ros.errors import SpecError
from encdec_ros.io.fields import FieldPath, ShortMessageError, check_path, compile_path, parse_path

log = logging.getLogger(__name__)

_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4     # rosbags' Nodetype values
_PRIMS = {                                       # base type -> (numpy kind, size in bytes)
    'bool': ('b1', 1), 'byte': ('i1', 1), 'char': ('u1', 1), 'octet': ('u1', 1),
    'int8': ('i1', 1), 'uint8': ('u1', 1), 'int16': ('i2', 2), 'uint16': ('u2', 2),
    'int32': ('i4', 4), 'uint32': ('u4', 4), 'int64': ('i8', 8), 'uint64': ('u8', 8),
    'float32': ('f4', 4), 'float64': ('f8', 8),
}
_UNROLL = 64              # fixed arrays of variable-size elements up to this length are unrolled
SMALL_BATCH = 24
"""Up to this many messages are decoded one by one (``struct``), more as one numpy batch:
the crossover of the two paths' costs per message (see docs/speed.md)."""
SAME_LAYOUT_MIN = 4
"""From this many messages on, a batch is first tried as messages of one layout (see
:meth:`MessageDecoder.decode`)."""
_EMPTY_FIELD = 'structure_needs_at_least_one_member'   # rosbags' member of empty messages
_STAMP_PATHS = ('header.stamp.sec', 'header.stamp.nanosec')
_SAID: set[tuple[str, str, str]] = set()        # (message type, field, reason) already logged


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class RawBatch:
    """Serialised messages side by side in one buffer: message ``i`` is
    ``buf[starts[i]:starts[i] + sizes[i]]``. Messages may sit anywhere in ``buf`` (an MCAP
    chunk holds them between other records), in any order."""

    buf: np.ndarray       # uint8
    starts: np.ndarray    # int64 [n]
    sizes: np.ndarray     # int64 [n]

    @classmethod
    def from_messages(cls, messages: Sequence[bytes | bytearray | memoryview]) -> 'RawBatch':
        """Join serialised messages (as a bag or an rclpy raw subscription gives them)."""
        sizes = np.fromiter(map(len, messages), dtype=np.int64, count=len(messages))
        starts = np.zeros(sizes.size, np.int64)
        if sizes.size > 1:
            np.cumsum(sizes[:-1], out=starts[1:])
        return cls(_padded(b''.join(messages)), starts, sizes)

    def __len__(self) -> int:
        return int(self.sizes.size)

    def message(self, index: int) -> bytes:
        """The bytes of one message."""
        start = int(self.starts[index])
        return self.buf[start:start + int(self.sizes[index])].tobytes()


def _padded(data: bytes) -> np.ndarray:
    """A uint8 view of ``data``, at least 8 bytes long (reads fenced to offset 0 stay inside)."""
    if len(data) < 8:
        data = data + bytes(8 - len(data))
    return np.frombuffer(data, dtype=np.uint8)


@dataclass
class Decoded:
    """The result of decoding a batch: one row per message, in the batch's order."""

    values: np.ndarray              # [n, C] float64, the spec's columns (NaN where not ok)
    header_ns: np.ndarray | None    # [n] int64 header stamps, when asked for
    short: np.ndarray               # [n] bool: arrays shorter than the spec asks for
    failed: np.ndarray              # [n] bool: the message cannot be decoded at all
    error: str = ''                 # why the first failed message failed
    per_message: int = 0            # messages that took the per-message path

    @property
    def ok(self) -> np.ndarray:
        """Messages with every field decoded."""
        return ~(self.short | self.failed)


# --------------------------------------------------------------------------- the decoder


class MessageDecoder:
    """Decode given numeric fields (and the header stamp) of many messages of one type.

    Args:
        msgtype: The message type, ``pkg/msg/Name``.
        paths: Field paths with known sizes (a resolved spec's paths: ``effort[0:6]``, not
            ``effort[*]``).
        fielddefs: Type definitions (a rosbags typestore's ``fielddefs``).
        header_stamp: Also decode ``header.stamp`` into :attr:`Decoded.header_ns`.
        ros1: The messages are in ROS 1 serialisation, not CDR.
        deserialize: The per-message path: bytes to a message object (rosbags'
            ``deserialize_cdr`` / ``deserialize_ros1`` or rclpy's ``deserialize_message``),
            for fields the decoder cannot lay out and messages it cannot read. Without it,
            such messages count as failed.
        where: Where the messages come from, for the log (a bag, a node).

    Raises:
        SpecError: A path does not name a number of ``msgtype`` or has an open size.
    """

    def __init__(self, msgtype: str, paths: Sequence[FieldPath], fielddefs: Mapping[str, Any],
                 *, header_stamp: bool = False, ros1: bool = False,
                 deserialize: Callable[[bytes], Any] | None = None, where: str = '') -> None:
        self.msgtype = msgtype
        self.ros1 = ros1
        self.header_stamp = header_stamp
        self._deserialize = deserialize
        checked = [check_path(p, msgtype, fielddefs) for p in paths]
        for path in checked:
            if any(s.multi and s.stop is None for s in path.segments):
                msg = f'field {path.text!r} of {msgtype} has no known size; bind the spec to ' \
                      'a bag or give an explicit slice such as [0:4]'
                raise SpecError(msg)
        self.paths = checked
        self._spans: list[tuple[int, int]] = []
        col = 0
        for path in checked:
            width = len(path.element_texts())
            self._spans.append((col, col + width))
            col += width
        self.width = col
        stamps = [check_path(parse_path(t), msgtype, fielddefs) for t in _STAMP_PATHS] \
            if header_stamp else []

        wants: list[tuple[tuple[Any, ...], tuple[str, int]]] = []
        for path, (lo, _) in zip(checked, self._spans):
            wants.append((path.segments, ('f', lo)))
        for k, path in enumerate(stamps):
            wants.append((path.segments, ('i', k)))
        compiler = _Compiler(fielddefs, cdr=not ros1)
        program = _Program(0)
        self.complete = True
        reason = ''
        try:
            end = compiler.struct(program, msgtype, wants, _Pos(-1, 0, 8), None)
            program.code.append(_End(end.reg, end.off, cdr=not ros1))
        except _Unsupported as err:
            self.complete = False    # the walk stopped there: what follows is per message
            reason = str(err)
        program.merge()
        self._program = program
        covered = program.targets()
        # per path: batch or per message
        self.fallback: dict[str, str] = {}
        for path, (lo, hi) in zip(checked, self._spans):
            if not all(('f', c) in covered for c in range(lo, hi)):
                self.fallback[path.text] = reason
        self._stamp_fallback = bool(stamps) and not all(
            ('i', k) in covered for k in range(len(stamps)))
        self._extract = [compile_path(p) for p in checked]
        for text, why in self.fallback.items():
            key = (msgtype, text, why)
            if key not in _SAID:
                _SAID.add(key)
                log.info('%s%s field %s is decoded message by message (%s)',
                         f'{where}: ' if where else '', msgtype, text, why)

    @classmethod
    def for_class(cls, msg_class: Any, paths: Sequence[FieldPath], *, header_stamp: bool,
                  where: str = '') -> 'MessageDecoder':
        """A decoder for an rclpy message class (what a ``raw=True`` subscription delivers):
        its layout from the class itself (:func:`rclpy_fielddefs`, custom messages too), rclpy's
        own ``deserialize_message`` as the per-message path."""
        from rclpy.serialization import deserialize_message

        defs = rclpy_fielddefs(msg_class)
        return cls(next(iter(defs)), paths, defs, header_stamp=header_stamp,
                   deserialize=lambda data: deserialize_message(data, msg_class), where=where)

    @property
    def stamp_offset(self) -> int | None:
        """Where ``header.stamp`` lies in every serialised message, when its place is fixed:
        the byte offset (from the message's first byte, the CDR encapsulation header included)
        of ``sec`` (int32), ``nanosec`` (uint32) right after it, little endian as ROS 2 writes
        them. None for ROS 1 bytes, without ``header_stamp``, or where a string or a sequence
        comes before the header."""
        if self.ros1 or not self.header_stamp or self._stamp_fallback:
            return None
        where: dict[int, tuple[str, int]] = {}
        for ins in self._program.code:
            if isinstance(ins, _Gather) and ins.ints and ins.reg < 0 and ins.count < 0:
                for off, col in zip(ins.offs.tolist(), ins.cols.tolist()):
                    where[col] = (ins.dtype, off)
        sec, nsec = where.get(0), where.get(1)
        if sec is None or nsec is None or sec[0] != 'i4' or nsec != ('u4', sec[1] + 4):
            return None
        return 4 + sec[1]

    def layout(self, data: bytes | bytearray) -> 'Layout | None':
        """The :class:`Layout` of one CDR message: where its numbers lie, to read (or write)
        them in other messages of the same layout; None when the decoder cannot tell (ROS 1
        bytes, a field read per message, a short or broken message, numbers inside a sequence
        of structs)."""
        if self.ros1 or self.fallback or self._stamp_fallback or not self.complete:
            return None
        return Layout.of(self, bytes(data))

    def locate(self, data: bytes | bytearray) -> list[tuple[int, str]] | None:
        """Where each column's number lies in one serialised CDR message: (byte offset from
        the message's first byte, numpy type with byte order, e.g. ``'<f8'``) per column; None
        when the message cannot be read here or a column is not at a known place (read per
        message, or inside a sequence of structs)."""
        if self.ros1 or self.fallback or not self.complete:
            return None
        layout = self.layout(data)
        if layout is None:
            return None
        spots: list[tuple[int, str]] = [(0, '')] * self.width
        for dtype, is_int, offs, cols in layout.gathers:
            if not is_int:
                for off, col in zip(offs.tolist(), cols.tolist()):
                    spots[col] = (off, layout.order + dtype)
        return spots

    @property
    def batched(self) -> list[str]:
        """The paths decoded in batches (the others take the per-message path)."""
        return [p.text for p in self.paths if p.text not in self.fallback]

    def decode(self, batch: RawBatch) -> Decoded:
        """Decode every message of ``batch``.

        Messages of one publisher mostly share their layout (the same frame_id, the same joint
        names: every string and sequence of the same length), so every number lies at the same
        offset in each. The batch is first tried that way: the layout of one message (where each
        number lies, and the lengths that put it there) is checked against all of them at once
        and, where it holds for every message, each column is one gather. Otherwise the full
        program runs (one by one up to :data:`SMALL_BATCH` messages, as a numpy batch above).
        """
        n = len(batch)
        if n >= SAME_LAYOUT_MIN:
            same = self._same_layout(batch)
            if same is not None:
                return same
        if n <= SMALL_BATCH:
            return self._one_by_one([batch.message(i) for i in range(n)])
        out = _Out(np.empty((n, self.width), dtype=np.float64), np.zeros((n, 2), dtype=np.int64),
                   np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
        if n:
            self._run(batch, out)
        return self._finish(out, batch.message)

    def decode_messages(self, messages: Sequence[bytes | bytearray | memoryview]) -> Decoded:
        """Decode a list of serialised messages (as a raw subscription collects them): a few
        one by one with ``struct`` (numpy's per-call cost would dominate), more as a batch
        (:meth:`decode`)."""
        if len(messages) >= SAME_LAYOUT_MIN:
            return self.decode(RawBatch.from_messages(messages))
        return self._one_by_one(messages)

    def _one_by_one(self, messages: Sequence[bytes | bytearray | memoryview]) -> Decoded:
        n = len(messages)
        width = self.width
        rows: list[list[float]] = []
        stamps: list[list[int]] = []
        short = np.zeros(n, dtype=bool)
        bad = np.zeros(n, dtype=bool)
        run_one = self._program.run_one
        for i, data in enumerate(messages):
            if self.ros1:
                one = _One(data, 0, '<', width)
            elif len(data) >= 4 and data[0] == 0 and data[1] <= 1:
                one = _One(data, 4, '<' if data[1] else '>', width)
            else:
                one = None
            if one is not None:
                try:
                    run_one(one, [])
                except _Bad:
                    one = None
            if one is None:
                bad[i] = True
                rows.append([0.0] * width)
                stamps.append([0, 0])
                continue
            rows.append(one.values)
            stamps.append(one.ints)
            short[i] = one.short
        out = _Out(np.array(rows, dtype=np.float64).reshape(n, width),
                   np.array(stamps, dtype=np.int64).reshape(n, 2), short, bad)
        return self._finish(out, lambda i: bytes(messages[i]))

    def _finish(self, out: '_Out', message: Callable[[int], bytes]) -> Decoded:
        """The per-message path where needed, then the result."""
        n = out.values.shape[0]
        failed = np.zeros(n, dtype=bool)
        error = ''
        per_message = np.flatnonzero(out.bad) if not (self.fallback or self._stamp_fallback) \
            else np.arange(n)
        if per_message.size:
            error = self._per_message(message, per_message, out, failed)
        header = None
        if self.header_stamp:
            header = out.ints[:, 0] * 1_000_000_000 + out.ints[:, 1]
        if failed.any():
            out.values[failed] = np.nan
        return Decoded(out.values, header, out.short & ~failed, failed, error,
                       int(per_message.size))

    # ------------------------------------------------------------------ internals

    def _same_layout(self, batch: RawBatch) -> Decoded | None:
        """The batch decoded as messages of one layout (see :meth:`decode`); None when some
        message differs from it (or the decoder cannot tell where its numbers lie)."""
        if self.ros1 or self.fallback or self._stamp_fallback or not self.complete:
            return None
        layout = self.__dict__.get('_layout')
        out = layout.read(batch, self.width) if layout is not None else None
        if out is None:
            layout = Layout.of(self, batch.message(0))
            self._layout = layout
            out = layout.read(batch, self.width) if layout is not None else None
            if out is None:
                return None
        values, ints = out
        n = len(batch)
        header = ints[:, 0] * 1_000_000_000 + ints[:, 1] if self.header_stamp else None
        none = np.zeros(n, dtype=bool)
        return Decoded(values, header, none, none.copy())

    def _run(self, batch: RawBatch, out: '_Out') -> None:
        starts, sizes, buf = batch.starts, batch.sizes, batch.buf
        if self.ros1:
            groups: list[tuple[np.ndarray | None, str]] = [(None, '<')]
            base, psize = starts, sizes
        else:
            usable = sizes >= 4
            at = np.where(usable, starts, 0)
            little = usable & (buf[at] == 0) & (buf[at + 1] == 1)
            if little.all():
                groups = [(None, '<')]
            else:
                big = usable & (buf[at] == 0) & (buf[at + 1] == 0)
                out.bad |= ~(little | big)            # unknown encapsulation: per message
                groups = [(np.flatnonzero(little), '<'), (np.flatnonzero(big), '>')]
            base, psize = starts + 4, sizes - 4
        for rows, order in groups:
            if rows is None:
                frame = _Frame(buf, base, psize, None, order, out)
            elif rows.size:
                frame = _Frame(buf, base[rows], psize[rows], rows, order, out)
            else:
                continue
            self._program.run(frame)

    def _per_message(self, message: Callable[[int], bytes], rows: np.ndarray, out: '_Out',
                     failed: np.ndarray) -> str:
        """Decode ``rows`` one message at a time: messages the batch path could not read
        (all fields) and, for the others, the fields it cannot lay out."""
        if self._deserialize is None:
            failed[rows] = True
            return f'{self.msgtype}: the message does not match its definition' \
                if out.bad.any() else f'{self.msgtype}: no per-message decoder for ' \
                f'{", ".join(self.fallback)}'
        error = ''
        spans = self._spans
        fallback = [k for k, p in enumerate(self.paths) if p.text in self.fallback]
        for i in rows.tolist():
            try:
                msg = self._deserialize(message(i))
            except Exception as err:  # noqa: BLE001 - any failure means it cannot be decoded
                failed[i] = True
                error = error or f'{type(err).__name__}: {err}'
                continue
            whole = bool(out.bad[i])
            if whole:
                out.short[i] = False
            try:
                for k in (range(len(spans)) if whole else fallback):
                    lo, hi = spans[k]
                    out.values[i, lo:hi] = self._extract[k](msg)
            except ShortMessageError:
                out.short[i] = True
            if self.header_stamp and (whole or self._stamp_fallback):
                st = msg.header.stamp
                out.ints[i, 0], out.ints[i, 1] = st.sec, st.nanosec
        return error


class Layout:
    """Where the numbers of one message lie, and the lengths (strings, sequence counts) that
    put them there: a message of the same size, encapsulation and lengths has its numbers at
    the same offsets. Made by :meth:`MessageDecoder.layout`."""

    def __init__(self, size: int, head: bytes, order: str, checks: list[tuple[int, int]],
                 gathers: list[tuple[str, bool, np.ndarray, np.ndarray]]) -> None:
        self.size, self.head, self.order = size, head, order
        self.checks = (np.asarray([o for o, _ in checks], dtype=np.int64),
                       np.asarray([v for _, v in checks], dtype=np.int64))
        self.gathers = gathers

    @classmethod
    def of(cls, decoder: 'MessageDecoder', data: bytes) -> 'Layout | None':
        """The layout of one CDR message (None: it cannot be read, it is short, or some
        number lies where only a loop over a sequence of structs finds it)."""
        if len(data) < 4 or data[0] != 0 or data[1] > 1:
            return None
        order = '<' if data[1] else '>'
        one = _One(data, 4, order, decoder.width)
        one.reads = []
        try:
            regs = decoder._program.run_one(one, [])
        except _Bad:
            return None
        if one.short:
            return None
        gathers, covered = [], 0
        for ins in decoder._program.code:
            if isinstance(ins, _Gather):
                offs = 4 + _at(regs, ins.reg, 0) + ins.offs
                gathers.append((ins.dtype, ins.ints, offs, ins.cols))
                covered += ins.cols.size
        wanted = decoder.width + (2 if decoder.header_stamp else 0)
        if covered != wanted:       # some number is read inside a loop
            return None
        return cls(len(data), bytes(data[:2]), order, one.reads, gathers)

    def cells(self) -> list[tuple[int, Any, bool, int]]:
        """(offset, struct, is_int, column) of every number, for one message at a time."""
        found = self.__dict__.get('_cells')
        if found is None:
            found = []
            for dtype, is_int, offs, cols in self.gathers:
                unpack = _unpacker(self.order + _STRUCT_CODES[dtype])
                found += [(off, unpack, is_int, col)
                          for off, col in zip(offs.tolist(), cols.tolist())]
            self._cells = found
        return found

    def read_one(self, data: bytes, width: int) -> tuple[list[float], list[int]] | None:
        """(values, [sec, nanosec]) of one message of this layout, or None when it is not."""
        if len(data) != self.size or data[:2] != self.head:
            return None
        u32 = _unpacker(self.order + 'I')
        for off, want in zip(*self.checks):
            if u32(data, off)[0] != want:
                return None
        values, ints = [0.0] * width, [0, 0]
        for off, unpack, is_int, col in self.cells():
            value = unpack(data, off)[0]
            if is_int:
                ints[col] = int(value)
            else:
                values[col] = float(value)
        return values, ints

    def write(self, buf: bytearray, values: Sequence[float]) -> bool:
        """Write ``values`` (one per column) where this layout holds them, in their own types;
        False (``buf`` partly written) when a column is not a float or a value does not fit."""
        pack = self.__dict__.get('_packers')
        if pack is None:
            import struct
            pack = self._packers = [
                (off, struct.Struct(self.order + _STRUCT_CODES[dtype]).pack_into
                 if dtype in ('f4', 'f8') else None, col)
                for dtype, is_int, offs, cols in self.gathers if not is_int
                for off, col in zip(offs.tolist(), cols.tolist())]
        try:
            for off, put, col in pack:
                if put is None:
                    return False
                put(buf, off, values[col])
        except (OverflowError, TypeError):
            return False
        return True

    def read(self, batch: RawBatch, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(values [n, width] float64, ints [n, 2] int64) of every message, or None when one
        does not have this layout."""
        buf, starts = batch.buf, batch.starts
        if not (batch.sizes == self.size).all() or \
                not ((buf[starts] == self.head[0]) & (buf[starts + 1] == self.head[1])).all():
            return None
        offs, want = self.checks
        if offs.size:
            got = _typed(buf, self.order, 'u4')[starts[:, None] + offs]
            if not (got == want).all():
                return None
        n = starts.size
        values = np.empty((n, width), dtype=np.float64)
        ints = np.zeros((n, 2), dtype=np.int64)
        for dtype, is_int, offs, cols in self.gathers:
            raw = _typed(buf, self.order, dtype)[starts[:, None] + offs]
            if dtype == 'b1':
                raw = raw != 0
            if is_int:
                ints[:, cols] = raw
            else:
                with np.errstate(invalid='ignore'):
                    values[:, cols] = raw
        return values, ints


def _typed(buf: np.ndarray, order: str, dtype: str) -> np.ndarray:
    """``buf`` read as ``dtype`` at every byte offset (an overlapping, unaligned view)."""
    if dtype in ('b1', 'u1', 'i1'):
        return buf.view('i1' if dtype == 'i1' else 'u1')
    size = int(dtype[1:])
    return np.ndarray(shape=(buf.size - size + 1,), dtype=np.dtype(order + dtype), buffer=buf,
                      strides=(1,))


# --------------------------------------------------------------------------- compiling


class _Unsupported(Exception):
    """A layout the batch decoder does not handle; the text says what."""


@dataclass(frozen=True)
class _Pos:
    """A position in the payload: register ``reg`` (-1: the payload start) plus ``off``
    bytes; the register's value is known to be a multiple of ``align``."""

    reg: int
    off: int
    align: int


Want = tuple[tuple[Any, ...], tuple[str, int]]           # (segments left, (kind, column))


class _Program:
    """Instructions run on a frame of messages; registers are per-message positions."""

    def __init__(self, nin: int) -> None:
        self.code: list[Any] = []
        self.nregs = nin
        self.result: tuple[int, int] = (-1, 0)       # a loop body's end position

    def reg(self) -> int:
        self.nregs += 1
        return self.nregs - 1

    def merge(self) -> None:
        """Fold gathers of the same register, type and guard into one (at the last one's
        place: registers are only defined before they are read)."""
        keyed: dict[tuple[Any, ...], list[_Gather]] = {}
        for ins in self.code:
            if isinstance(ins, _Gather):
                keyed.setdefault(ins.key, []).append(ins)
            elif isinstance(ins, _Loop):
                for body in [ins.default, *ins.bodies.values()]:
                    body.merge()
        for group in keyed.values():
            if len(group) > 1:
                last = group[-1]
                last.absorb(group[:-1])
                self.code = [i for i in self.code if not any(i is g for g in group[:-1])]

    def targets(self) -> set[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        for ins in self.code:
            if isinstance(ins, _Gather):
                found.update(zip(['i' if ins.ints else 'f'] * len(ins.cols), ins.cols.tolist()))
            elif isinstance(ins, _Loop):
                for body in ins.bodies.values():
                    found |= body.targets()
        return found

    def run(self, frame: '_Frame') -> None:
        frame.regs = [None] * self.nregs if not frame.regs else \
            frame.regs + [None] * (self.nregs - len(frame.regs))
        for ins in self.code:
            ins.run(frame)

    def run_one(self, one: '_One', regs: list[Any]) -> list[Any]:
        """Run on one message (the small-batch path); returns the registers."""
        regs += [0] * (self.nregs - len(regs))
        ops = self.__dict__.get('_ops')
        if ops is None:
            ops = self._ops = _scalar_ops(self.code)
        for op in ops:
            op(one, regs)
        return regs


class _Compiler:
    """Walks a message definition and emits the program that finds the wanted fields."""

    def __init__(self, fielddefs: Mapping[str, Any], *, cdr: bool) -> None:
        self.fielddefs = fielddefs
        self.cdr = cdr
        self._static: dict[str, tuple[int, int] | None] = {}

    # ---------------------------------------------------------------- layout facts
    def fields(self, typename: str) -> list[tuple[str, Any]]:
        if typename not in self.fielddefs:
            raise _Unsupported(f'the definition of {typename} is unknown')
        return list(self.fielddefs[typename][1])

    def align_of(self, desc: Any) -> int:
        """Alignment of a field, as the first primitive in it needs (rosbags' rule)."""
        if not self.cdr:
            return 1
        kind, detail = int(desc[0]), desc[1]
        if kind == _BASE:
            if detail[0] == 'string':
                return 4
            return self.prim(detail[0])[1]
        if kind == _NAME:
            fields = self.fields(detail)
            return self.align_of(fields[0][1]) if fields else 1
        if kind == _ARRAY:
            return self.align_of(detail[0])
        return 4

    @staticmethod
    def prim(name: str) -> tuple[str, int]:
        if name not in _PRIMS:
            raise _Unsupported(f'{name} fields are not laid out by the batch decoder')
        return _PRIMS[name]

    def static_struct(self, typename: str) -> tuple[int, int] | None:
        """(alignment, size) of a struct whose layout is fixed once its start is aligned,
        or None when it holds strings or sequences."""
        if typename not in self._static:
            align = self.align_of((_NAME, typename))
            scratch = _Program(1)
            end = self.struct(scratch, typename, [], _Pos(0, 0, align), None)
            fixed = not scratch.code and end.reg == 0
            self._static[typename] = (align, end.off) if fixed else None
        return self._static[typename]

    def element(self, desc: Any) -> tuple[int, int, int] | None:
        """(alignment, stride, size) of array elements with a fixed layout, else None."""
        kind, detail = int(desc[0]), desc[1]
        if kind == _BASE and detail[0] != 'string':
            size = self.prim(detail[0])[1]
            return (size if self.cdr else 1), size, size
        if kind == _NAME:
            fixed = self.static_struct(detail)
            if fixed is not None:
                align, size = fixed
                stride = -(-size // align) * align if self.cdr else size
                return align, stride, size
        return None

    def align(self, prog: _Program, pos: _Pos, a: int) -> _Pos:
        if not self.cdr or a <= 1:
            return pos
        if a <= pos.align:
            return _Pos(pos.reg, -(-pos.off // a) * a, pos.align)
        reg = prog.reg()
        prog.code.append(_Align(pos.reg, pos.off, a, reg))
        return _Pos(reg, 0, a)

    # ---------------------------------------------------------------- the walk
    def struct(self, prog: _Program, typename: str, wants: list[Want], pos: _Pos,
               guard: tuple[int, int] | None) -> _Pos:
        for name, desc in self.fields(typename):
            if not self.cdr and name == _EMPTY_FIELD:
                continue                  # ROS 1 writes nothing for an empty message
            mine = [(segs[0], segs[1:], tgt) for segs, tgt in wants if segs[0].name == name]
            pos = self.field(prog, desc, mine, pos, guard)
        return pos

    def field(self, prog: _Program, desc: Any, wants: list[tuple[Any, tuple, tuple]],
              pos: _Pos, guard: tuple[int, int] | None) -> _Pos:
        kind, detail = int(desc[0]), desc[1]
        if kind in (_BASE, _NAME):
            return self.value(prog, desc, [(rest, tgt) for _, rest, tgt in wants], pos, guard)
        elem_desc, count = detail
        elems: dict[int, list[Want]] = {}
        for seg, rest, (tkind, col) in wants:
            if seg.index is not None:
                elems.setdefault(seg.index, []).append((rest, (tkind, col)))
            else:
                start = seg.start or 0
                for k in range(start, seg.stop):
                    elems.setdefault(k, []).append((rest, (tkind, col + k - start)))
        if kind == _ARRAY:
            return self.array(prog, elem_desc, int(count), elems, pos, guard)
        return self.sequence(prog, elem_desc, elems, pos)

    def value(self, prog: _Program, desc: Any, wants: list[Want], pos: _Pos,
              guard: tuple[int, int] | None) -> _Pos:
        kind, detail = int(desc[0]), desc[1]
        if kind == _NAME:
            return self.struct(prog, detail, wants, pos, guard)
        if detail[0] == 'string':
            pos = self.align(prog, pos, 4)
            reg = prog.reg()
            prog.code.append(_String(pos.reg, pos.off, reg, cdr=self.cdr))
            return _Pos(reg, 0, 1)
        dtype, size = self.prim(detail[0])
        pos = self.align(prog, pos, size)
        if wants:
            prog.code.extend(_Gather.make(pos, dtype, size, [(pos.off, t) for _, t in wants],
                                          guard))
        return _Pos(pos.reg, pos.off + size, pos.align)

    def array(self, prog: _Program, desc: Any, count: int, elems: dict[int, list[Want]],
              pos: _Pos, guard: tuple[int, int] | None) -> _Pos:
        fixed = self.element(desc)
        if fixed is not None:
            align, stride, size = fixed
            if count == 0:
                return pos
            pos = self.align(prog, pos, align)
            for k, wants in sorted(elems.items()):
                self.value(prog, desc, wants, _Pos(pos.reg, pos.off + k * stride, pos.align),
                           guard)
            return _Pos(pos.reg, pos.off + (count - 1) * stride + size, pos.align)
        if count <= _UNROLL:
            for k in range(count):
                pos = self.value(prog, desc, elems.get(k, []), pos, guard)
            return pos
        return self.loop(prog, -1, count, desc, elems, pos)

    def sequence(self, prog: _Program, desc: Any, elems: dict[int, list[Want]],
                 pos: _Pos) -> _Pos:
        pos = self.align(prog, pos, 4)
        count = prog.reg()
        kind, detail = int(desc[0]), desc[1]
        if kind == _BASE:
            minimum = (5 if self.cdr else 4) if detail[0] == 'string' else \
                self.prim(detail[0])[1]
        else:
            minimum = 1
        prog.code.append(_Count(pos.reg, pos.off, count, minimum))
        pos = _Pos(pos.reg, pos.off + 4, pos.align)
        if elems:
            prog.code.append(_Short(count, max(elems)))
        fixed = self.element(desc)
        if fixed is None:
            return self.loop(prog, count, 0, desc, elems, pos)
        align, stride, size = fixed
        if elems:
            data = self.align(prog, pos, align)   # only read where count > k, so aligned
            for k, wants in sorted(elems.items()):
                self.value(prog, desc, wants, _Pos(data.reg, data.off + k * stride, data.align),
                           (count, k))
        reg = prog.reg()
        aligned = align <= 1 or (align <= pos.align and pos.off % align == 0)
        prog.code.append(_SeqEnd(pos.reg, pos.off, count, 1 if aligned else align, stride,
                                 size, reg))
        if not self.cdr:
            return _Pos(reg, 0, 1)
        low = min(4, align, size & -size) if size else min(4, align)
        return _Pos(reg, 0, max(1, low))

    def loop(self, prog: _Program, count: int, const: int, desc: Any,
             elems: dict[int, list[Want]], pos: _Pos) -> _Pos:
        def body(wants: list[Want]) -> _Program:
            sub = _Program(1)
            end = self.value(sub, desc, wants, _Pos(0, 0, 1), None)
            sub.result = (end.reg, end.off)
            return sub
        bodies = {k: body(w) for k, w in elems.items()}
        reg = prog.reg()
        strings = self.cdr if int(desc[0]) == _BASE and desc[1][0] == 'string' else None
        prog.code.append(_Loop(count, const, pos.reg, pos.off, bodies, body([]), reg, strings))
        return _Pos(reg, 0, 1)


# --------------------------------------------------------------------------- running


@dataclass
class _Out:
    values: np.ndarray     # [n, C] float64
    ints: np.ndarray       # [n, 2] int64 (header stamp seconds and nanoseconds)
    short: np.ndarray      # [n] bool
    bad: np.ndarray        # [n] bool: the batch path cannot read the message
    views: dict[str, np.ndarray] = field(default_factory=dict)   # typed views, one order


class _Frame:
    """Messages being decoded together: their payload starts and sizes, registers."""

    __slots__ = ('buf', 'base', 'psize', 'rows', 'order', 'out', 'regs')

    def __init__(self, buf: np.ndarray, base: np.ndarray, psize: np.ndarray,
                 rows: np.ndarray | None, order: str, out: _Out) -> None:
        self.buf, self.base, self.psize, self.rows = buf, base, psize, rows
        self.order, self.out = order, out
        self.regs: list[Any] = []

    def pos(self, reg: int, off: int) -> Any:
        """Positions (relative to the payload) of a register plus an offset."""
        if reg < 0:
            return off
        value = self.regs[reg]
        return value + off if off else value

    def mark_bad(self, mask: np.ndarray) -> None:
        self.out.bad[mask if self.rows is None else self.rows[mask]] = True

    def mark_short(self, mask: np.ndarray) -> None:
        self.out.short[mask if self.rows is None else self.rows[mask]] = True

    def typed(self, dtype: str) -> np.ndarray:
        """The buffer read as ``dtype`` at every byte offset (an overlapping, unaligned view:
        one fancy index gathers numbers at any offsets)."""
        views = self.out.views
        key = self.order + dtype
        view = views.get(key)
        if view is None:
            view = views[key] = _typed(self.buf, self.order, dtype)
        return view

    def read_u32(self, pos: Any) -> tuple[np.ndarray, np.ndarray]:
        """The uint32 at ``pos`` of every message, and which messages have it in range."""
        at = self.base + pos
        inside = pos + 4 <= self.psize
        if not inside.all():
            at = np.where(inside, at, 0)
        return self.typed('u4')[at].astype(np.int64), inside


class _Bad(Exception):
    """The small-batch path cannot read this message (it takes the per-message path)."""


class _One:
    """One message being decoded on the small-batch path."""

    __slots__ = ('data', 'base', 'psize', 'order', 'values', 'ints', 'short', 'reads')

    def __init__(self, data: bytes, base: int, order: str, width: int) -> None:
        self.data, self.base, self.psize, self.order = data, base, len(data) - base, order
        self.values = [0.0] * width
        self.ints = [0, 0]
        self.short = False
        self.reads: list[tuple[int, int]] | None = None   # (offset, uint32) of lengths read


def _at(regs: list[Any], reg: int, off: int) -> int:
    return off if reg < 0 else regs[reg] + off


_STRUCTS: dict[str, Any] = {}


def _unpacker(fmt: str) -> Any:
    found = _STRUCTS.get(fmt)
    if found is None:
        import struct
        found = _STRUCTS[fmt] = struct.Struct(fmt).unpack_from
    return found


_STRUCT_CODES = {'b1': '?', 'i1': 'b', 'u1': 'B', 'i2': 'h', 'u2': 'H', 'i4': 'i', 'u4': 'I',
                 'i8': 'q', 'u8': 'Q', 'f4': 'f', 'f8': 'd'}


class _Gather:
    """Read numbers at fixed offsets from a register into output columns; with a guard
    ``(count register, element index per column)``, only where the sequence has the element
    (elsewhere the message is short, see :class:`_Short`)."""

    def __init__(self, reg: int, offs: list[int], dtype: str, size: int, cols: list[int],
                 ints: bool, guard: tuple[int, int] | None) -> None:
        self.reg, self.dtype, self.size, self.ints = reg, dtype, size, ints
        self.offs = np.asarray(offs, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.count = guard[0] if guard is not None else -1
        self.ks = np.full(self.offs.size, guard[1] if guard is not None else 0, dtype=np.int64)
        self.key = (reg, dtype, ints, self.count)

    @classmethod
    def make(cls, pos: _Pos, dtype: str, size: int, items: list[tuple[int, tuple[str, int]]],
             guard: tuple[int, int] | None) -> list['_Gather']:
        out = []
        for ints in (False, True):
            sel = [(off, col) for off, (kind, col) in items if (kind == 'i') == ints]
            if sel:
                out.append(cls(pos.reg, [o for o, _ in sel], dtype, size, [c for _, c in sel],
                               ints, guard))
        return out

    def absorb(self, others: list['_Gather']) -> None:
        self.offs = np.concatenate([g.offs for g in others] + [self.offs])
        self.cols = np.concatenate([g.cols for g in others] + [self.cols])
        self.ks = np.concatenate([g.ks for g in others] + [self.ks])
        self.__dict__.pop('_run_cache', None)

    def run(self, frame: _Frame) -> None:
        pos = frame.pos(self.reg, 0)
        idx = (frame.base + pos)[:, None] + self.offs
        fits = pos + (int(self.offs.max()) + self.size) <= frame.psize
        if self.count >= 0:
            count = frame.regs[self.count]
            if not (fits & (count > int(self.ks.max()))).all():   # some element is absent
                present = count[:, None] > self.ks
                fits = (np.asarray(pos)[..., None] + (self.offs + self.size)) <= \
                    frame.psize[:, None]
                bad = (present & ~fits).any(axis=1)
                if bad.any():
                    frame.mark_bad(bad)
                idx[~(present & fits)] = 0
        elif not fits.all():
            frame.mark_bad(~fits)
            idx[~fits] = 0
        raw = frame.typed(self.dtype)[idx]
        if self.dtype == 'b1':
            vals = (raw != 0).astype(np.float64)
        else:
            with np.errstate(invalid='ignore'):
                vals = raw.astype(np.int64 if self.ints else np.float64)
        target = frame.out.ints if self.ints else frame.out.values
        if frame.rows is None:
            target[:, self.cols] = vals
        else:
            target[frame.rows[:, None], self.cols] = vals

    def run_one(self, one: _One, regs: list[Any]) -> None:
        pos = one.base + _at(regs, self.reg, 0)
        limit = one.base + one.psize
        count = regs[self.count] if self.count >= 0 else None
        target = one.ints if self.ints else one.values
        data = one.data
        for unpack, off, end, cols, kmax, convert in self._runs(one.order):
            if count is not None and count <= kmax:
                self._some(one, regs, pos, count, target)    # some elements are absent
                return
            if pos + end > limit:
                raise _Bad
            values = unpack(data, pos + off)
            if convert is None:
                for col, value in zip(cols, values):
                    target[col] = value
            else:
                for col, value in zip(cols, values):
                    target[col] = convert(value)

    def _some(self, one: _One, regs: list[Any], pos: int, count: int, target: list) -> None:
        """Element by element, where a sequence lacks some of them (a short message)."""
        unpack = _unpacker(one.order + _STRUCT_CODES[self.dtype])
        convert = int if self.ints else float
        for off, col, k in zip(self.offs.tolist(), self.cols.tolist(), self.ks.tolist()):
            if k < count:
                if pos + off + self.size > one.base + one.psize:
                    raise _Bad
                target[col] = convert(unpack(one.data, pos + off)[0])

    def _runs(self, order: str) -> list[tuple[Any, int, int, list[int], int, Any]]:
        """The gather as runs of adjacent numbers, one ``struct`` call per run:
        (unpack, first offset, end offset, columns, largest element index, conversion)."""
        cache = self.__dict__.setdefault('_run_cache', {})
        runs = cache.get(order)
        if runs is None:
            code = _STRUCT_CODES[self.dtype]
            # bool, ints and float32 need a conversion to the output's Python type
            convert = None if code == 'd' and not self.ints else (int if self.ints else float)
            items = sorted(zip(self.offs.tolist(), self.cols.tolist(), self.ks.tolist()))
            groups: list[list[tuple[int, int, int]]] = []
            for item in items:
                if groups and item[0] == groups[-1][-1][0] + self.size:
                    groups[-1].append(item)
                else:
                    groups.append([item])
            runs = [(_unpacker(f'{order}{len(g)}{code}'), g[0][0], g[-1][0] + self.size,
                     [c for _, c, _ in g], max(k for _, _, k in g), convert) for g in groups]
            cache[order] = runs
        return runs


class _Align:
    def __init__(self, reg: int, off: int, a: int, out: int) -> None:
        self.reg, self.off, self.a, self.out = reg, off, a, out

    def run(self, frame: _Frame) -> None:
        frame.regs[self.out] = (frame.pos(self.reg, self.off) + (self.a - 1)) & -self.a

    def run_one(self, one: _One, regs: list[Any]) -> None:
        regs[self.out] = (_at(regs, self.reg, self.off) + (self.a - 1)) & -self.a


class _String:
    """Skip a string: its uint32 length (counting the NUL in CDR), then the bytes."""

    def __init__(self, reg: int, off: int, out: int, *, cdr: bool) -> None:
        self.reg, self.off, self.out, self.cdr = reg, off, out, cdr

    def run(self, frame: _Frame) -> None:
        pos = frame.pos(self.reg, self.off)
        length, inside = frame.read_u32(pos)
        end = pos + 4 + length
        good = inside & (end <= frame.psize)
        if self.cdr:
            good &= length >= 1
            last = np.where(good, frame.base + end - 1, 0)
            good &= frame.buf[last] == 0
        if not good.all():
            frame.mark_bad(~good)
            end = np.where(good, end, pos + 4)
        frame.regs[self.out] = end

    def run_one(self, one: _One, regs: list[Any]) -> None:
        pos = _at(regs, self.reg, self.off)
        if pos + 4 > one.psize:
            raise _Bad
        length = _unpacker(one.order + 'I')(one.data, one.base + pos)[0]
        end = pos + 4 + length
        if end > one.psize or (self.cdr and (length < 1 or one.data[one.base + end - 1])):
            raise _Bad
        if one.reads is not None:
            one.reads.append((one.base + pos, length))
        regs[self.out] = end


class _Count:
    """Read a sequence's element count (0 where it cannot be right)."""

    def __init__(self, reg: int, off: int, out: int, minimum: int) -> None:
        self.reg, self.off, self.out, self.minimum = reg, off, out, minimum

    def run(self, frame: _Frame) -> None:
        pos = frame.pos(self.reg, self.off)
        count, inside = frame.read_u32(pos)
        good = inside & (count * self.minimum <= frame.psize - pos - 4)
        if not good.all():
            frame.mark_bad(~good)
            count = np.where(good, count, 0)
        frame.regs[self.out] = count

    def run_one(self, one: _One, regs: list[Any]) -> None:
        pos = _at(regs, self.reg, self.off)
        if pos + 4 > one.psize:
            raise _Bad
        count = _unpacker(one.order + 'I')(one.data, one.base + pos)[0]
        if count * self.minimum > one.psize - pos - 4:
            raise _Bad
        if one.reads is not None:
            one.reads.append((one.base + pos, count))
        regs[self.out] = count


class _Short:
    """Messages whose sequence holds element ``kmax`` or fewer are short."""

    def __init__(self, count: int, kmax: int) -> None:
        self.count, self.kmax = count, kmax

    def run(self, frame: _Frame) -> None:
        short = frame.regs[self.count] <= self.kmax
        if short.any():
            frame.mark_short(short)

    def run_one(self, one: _One, regs: list[Any]) -> None:
        if regs[self.count] <= self.kmax:
            one.short = True


class _SeqEnd:
    """The position after a sequence of fixed-layout elements."""

    def __init__(self, reg: int, off: int, count: int, align: int, stride: int, size: int,
                 out: int) -> None:
        self.reg, self.off, self.count, self.out = reg, off, count, out
        self.align, self.stride, self.size = align, stride, size

    def run(self, frame: _Frame) -> None:
        pos = frame.pos(self.reg, self.off)
        count = frame.regs[self.count]
        if self.align <= 1 and self.stride == self.size:
            frame.regs[self.out] = pos + count * self.size
            return
        data = (pos + (self.align - 1)) & -self.align
        frame.regs[self.out] = np.where(count > 0, data + (count - 1) * self.stride + self.size,
                                        pos)

    def run_one(self, one: _One, regs: list[Any]) -> None:
        pos = _at(regs, self.reg, self.off)
        count = regs[self.count]
        if count == 0:
            regs[self.out] = pos
        else:
            data = (pos + (self.align - 1)) & -self.align
            regs[self.out] = data + (count - 1) * self.stride + self.size


class _Loop:
    """Walk the elements of a sequence (or long array) of strings or variable-size structs,
    element ``k`` for the messages that have it."""

    def __init__(self, count: int, const: int, reg: int, off: int,
                 bodies: dict[int, _Program], default: _Program, out: int,
                 strings: bool | None = None) -> None:
        self.count, self.const, self.reg, self.off = count, const, reg, off
        self.bodies, self.default, self.out = bodies, default, out
        self.strings = strings      # a loop over strings: skipped inline (cdr: True/False)

    def run(self, frame: _Frame) -> None:
        pos = frame.pos(self.reg, self.off)
        m = frame.base.size
        cur = np.broadcast_to(np.asarray(pos, dtype=np.int64), (m,)).copy()
        count = frame.regs[self.count] if self.count >= 0 else np.full(m, self.const)
        top = int(count.max()) if m else 0
        for k in range(top):
            body = self.bodies.get(k, self.default)
            active = count > k
            if active.all():
                sub = _Frame(frame.buf, frame.base, frame.psize, frame.rows, frame.order,
                             frame.out)
                sub.regs = [cur]
                body.run(sub)
                cur = sub.pos(*body.result)
                if not isinstance(cur, np.ndarray) or cur.shape != (m,):
                    cur = np.broadcast_to(cur, (m,)).copy()
                continue
            sel = np.flatnonzero(active)
            rows = sel if frame.rows is None else frame.rows[sel]
            sub = _Frame(frame.buf, frame.base[sel], frame.psize[sel], rows, frame.order,
                         frame.out)
            sub.regs = [cur[sel]]
            body.run(sub)
            cur[sel] = sub.pos(*body.result)
        frame.regs[self.out] = cur

    def run_one(self, one: _One, regs: list[Any]) -> None:
        cur = _at(regs, self.reg, self.off)
        count = regs[self.count] if self.count >= 0 else self.const
        if self.strings is not None and not self.bodies:      # skip strings, inline
            regs[self.out] = _skip_strings(one, cur, count, cdr=self.strings)
            return
        for k in range(count):
            body = self.bodies.get(k, self.default)
            inner = body.run_one(one, [cur])
            cur = _at(inner, *body.result)
        regs[self.out] = cur


def _scalar_ops(code: list[Any]) -> list[Callable[[_One, list[Any]], None]]:
    """The small-batch path's steps: every instruction's ``run_one``, except that the
    unguarded gathers from one register become one ``struct`` call (padding between the
    numbers), at the place of the last of them."""
    fused: dict[int, list[_Gather]] = {}
    for ins in code:
        if isinstance(ins, _Gather) and ins.count < 0:
            fused.setdefault(ins.reg, []).append(ins)
    last = {id(group[-1]): group for group in fused.values()}
    ops: list[Callable[[_One, list[Any]], None]] = []
    for ins in code:
        if isinstance(ins, _Gather) and ins.count < 0:
            if id(ins) in last:
                ops.append(_fused_gather(last[id(ins)]))
        else:
            ops.append(ins.run_one)
    return ops


def _fused_gather(gathers: list[_Gather]) -> Callable[[_One, list[Any]], None]:
    """One struct call per byte order reads every number the gathers want from a register."""
    items = sorted((int(off), g.size, _STRUCT_CODES[g.dtype], g.ints, int(col))
                   for g in gathers for off, col in zip(g.offs.tolist(), g.cols.tolist()))
    parts: list[list[tuple[int, int, str, bool, int]]] = [[]]
    for item in items:                    # a number overlapping the one before: a new part
        if parts[-1] and item[0] < parts[-1][-1][0] + parts[-1][-1][1]:
            parts.append([])
        parts[-1].append(item)
    reg = gathers[0].reg
    plans = {}
    for order in '<>':
        steps = []
        for part in parts:
            fmt, cur = order, part[0][0]
            for off, size, code, _, _ in part:
                fmt += (f'{off - cur}x' if off > cur else '') + code
                cur = off + size
            targets = [(ints, col, None if code == 'd' or (ints and code != '?') else
                        (int if ints else float)) for _, _, code, ints, col in part]
            cols = [col for _, _, _, _, col in part]
            plain = all(not t[0] and t[2] is None for t in targets) and \
                cols == list(range(cols[0], cols[0] + len(cols)))
            steps.append((_unpacker(fmt), part[0][0], cur, targets,
                          slice(cols[0], cols[0] + len(cols)) if plain else None))
        plans[order] = steps

    def gather(one: _One, regs: list[Any]) -> None:
        pos = one.base + (regs[reg] if reg >= 0 else 0)
        limit = one.base + one.psize
        for unpack, start, end, targets, block in plans[one.order]:
            if pos + end > limit:
                raise _Bad
            values = unpack(one.data, pos + start)
            if block is not None:
                one.values[block] = values
                continue
            for (ints, col, convert), value in zip(targets, values):
                (one.ints if ints else one.values)[col] = \
                    value if convert is None else convert(value)
    return gather


def _skip_strings(one: _One, pos: int, count: int, *, cdr: bool) -> int:
    """The position after ``count`` strings starting at ``pos`` (CDR: each 4-aligned)."""
    unpack = _unpacker(one.order + 'I')
    data, base, psize = one.data, one.base, one.psize
    for _ in range(count):
        if cdr:
            pos = (pos + 3) & -4
        if pos + 4 > psize:
            raise _Bad
        length = unpack(data, base + pos)[0]
        end = pos + 4 + length
        if end > psize or (cdr and (length < 1 or data[base + end - 1])):
            raise _Bad
        if one.reads is not None:
            one.reads.append((base + pos, length))
        pos = end
    return pos


class _End:
    """Check that the walk ends where the message does. A CDR sample may carry up to 7
    bytes of final padding (rclpy pads to a multiple of 8 after an empty sequence of
    float64, for example; rosbags allows only 3 and refuses those messages)."""

    def __init__(self, reg: int, off: int, *, cdr: bool) -> None:
        self.reg, self.off, self.cdr = reg, off, cdr

    def run(self, frame: _Frame) -> None:
        end = frame.pos(self.reg, self.off)
        spare = frame.psize - end
        good = (spare >= 0) & (spare <= 7) if self.cdr else spare == 0
        if not np.all(good):
            frame.mark_bad(~good)

    def run_one(self, one: _One, regs: list[Any]) -> None:
        spare = one.psize - _at(regs, self.reg, self.off)
        if not (0 <= spare <= 7 if self.cdr else spare == 0):
            raise _Bad


# --------------------------------------------------------------------------- live

_RCLPY_BASIC = {'boolean': 'bool', 'octet': 'octet', 'char': 'char', 'float': 'float32',
                'double': 'float64', 'long double': 'float128', 'wchar': 'wchar'}


def rclpy_fielddefs(cls: Any) -> dict[str, Any]:
    """Definitions (rosbags' ``fielddefs`` form) of an rclpy message class and every type in
    it, read from the class itself (``SLOT_TYPES``): the layout rclpy puts on the wire, also
    for custom messages that no typestore knows."""
    import importlib

    out: dict[str, Any] = {}

    def name_of(typ: Any) -> str:
        return '/'.join([*typ.namespaces, typ.name])

    def desc(typ: Any) -> tuple[int, Any]:
        kind = type(typ).__name__
        if kind == 'BasicType':
            return _BASE, (_RCLPY_BASIC.get(typ.typename, typ.typename), 0)
        if kind in ('UnboundedString', 'BoundedString'):
            return _BASE, ('string', getattr(typ, 'maximum_size', 0))
        if kind in ('UnboundedWString', 'BoundedWString'):
            return _BASE, ('wstring', getattr(typ, 'maximum_size', 0))
        if kind == 'NamespacedType':
            walk(getattr(importlib.import_module('.'.join(typ.namespaces)), typ.name))
            return _NAME, name_of(typ)
        if kind == 'Array':
            return _ARRAY, (desc(typ.value_type), typ.size)
        return _SEQUENCE, (desc(typ.value_type), getattr(typ, 'maximum_size', 0))

    def walk(klass: Any) -> str:
        module = klass.__module__.split('.')
        typename = f'{module[0]}/{module[1]}/{klass.__name__}'
        if typename not in out:
            out[typename] = ([], [])
            names = list(klass.get_fields_and_field_types())
            fields = [(n, desc(t)) for n, t in zip(names, klass.SLOT_TYPES)]
            # an empty message still carries one byte on the wire (hidden by rclpy)
            out[typename] = ([], fields or [(_EMPTY_FIELD, (_BASE, ('uint8', 0)))])
        return typename

    walk(cls)
    return out
