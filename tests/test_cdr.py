"""The batch decoder agrees bit for bit with the per-message path (rosbags or rclpy objects
read with compile_path), on every standard message type, both byte orders and ROS 1."""

from __future__ import annotations

import logging
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from data_paths import shared

from encdec_ros.errors import ConfigError, SpecError
from encdec_ros.io.bag import standard_typestore
from encdec_ros.io.cdr import MessageDecoder, RawBatch
from encdec_ros.io.fields import ShortMessageError, compile_path, parse_path
from encdec_ros.io.spec import SignalSpec

ROOT = Path(__file__).resolve().parents[1]
_INTS = {'byte': np.int8, 'int8': np.int8, 'char': np.uint8, 'uint8': np.uint8,
         'int16': np.int16, 'uint16': np.uint16, 'int32': np.int32, 'uint32': np.uint32,
         'int64': np.int64, 'uint64': np.uint64, 'octet': np.uint8}
# NaNs with payloads (quiet and signalling), infinities, -0, a subnormal
F64_SPECIAL = np.array([0x7FF8000000000001, 0x7FF4000000000abc, 0xFFF0000000000001,
                        0x7FF0000000000000, 0x8000000000000000, 0x0000000000000001],
                       dtype=np.uint64).view(np.float64)
F32_SPECIAL = np.array([0x7FC00001, 0x7FA00123, 0xFF800001, 0x7F800000, 0x80000000, 1],
                       dtype=np.uint32).view(np.float32)


# ---------------------------------------------------------------------- random messages
def random_array(base: str, count: int, rng: np.random.Generator) -> np.ndarray:
    if base in ('float32', 'float64'):
        special = F32_SPECIAL if base == 'float32' else F64_SPECIAL
        out = rng.normal(size=count).astype(base) * 10.0 ** int(rng.integers(-3, 4))
        pick = rng.random(count) < 0.3
        out[pick] = rng.choice(special, size=int(pick.sum()))
        return out
    if base == 'bool':
        return rng.random(count) < 0.5
    info = np.iinfo(_INTS[base])
    out = rng.integers(info.min, info.max, size=count, dtype=_INTS[base], endpoint=True)
    if count:
        out[0] = info.max if rng.random() < 0.5 else info.min
    return out


def random_scalar(base: str):
    """One value as a message object holds it (Python numbers), drawn from a pool of random
    ones and specials (a numpy call per scalar would make these tests slow)."""
    pool = _POOLS.get(base)
    if pool is None:
        values = random_array(base, 4096, np.random.default_rng(len(_POOLS)))
        pool = _POOLS[base] = [bool(v) if base == 'bool' else v.item() for v in values]
    return pool[_PICK.randrange(len(pool))]


_POOLS: dict[str, list] = {}
_PICK = random.Random(0)


def random_value(store, desc, rng: np.random.Generator, depth: int = 0):
    kind, detail = int(desc[0]), desc[1]
    if kind == 1:
        base, bound = detail
        if base == 'string':
            size = int(rng.integers(0, (bound or 9) + 1))
            return ''.join(chr(97 + int(c)) for c in rng.integers(0, 26, size))
        return random_scalar(base)
    if kind == 2:
        return random_message(store, detail, rng, depth + 1)
    sub, size = detail
    count = size if kind == 3 else int(rng.integers(0, min(size, 4) + 1 if size else 4))
    if int(sub[0]) == 1:
        if sub[1][0] == 'string':
            return [random_value(store, sub, rng) for _ in range(count)]
        return random_array(sub[1][0], count, rng)
    return [random_message(store, sub[1], rng, depth + 1) for _ in range(count)]


def random_message(store, msgtype: str, rng: np.random.Generator, depth: int = 0):
    fields = store.fielddefs[msgtype][1]
    return store.types[msgtype](**{name: random_value(store, desc, rng, depth)
                                   for name, desc in fields})


def leaf_paths(fielddefs, msgtype: str, prefix: str = '', multi: bool = False,
               depth: int = 0) -> list[str]:
    """Numeric paths of a type: scalars, slices and indices into arrays and sequences, and
    fields of array elements (one selector picking several elements per path at most)."""
    out: list[str] = []
    if msgtype not in fielddefs:
        return out
    for name, desc in fielddefs[msgtype][1]:
        kind, detail = int(desc[0]), desc[1]
        here = prefix + name
        if name == 'structure_needs_at_least_one_member':
            continue       # the placeholder of an empty message (not written in ROS 1)
        if kind == 1:
            if detail[0] != 'string':
                out.append(here)
        elif kind == 2:
            if depth < 4:
                out += leaf_paths(fielddefs, detail, here + '.', multi, depth + 1)
        else:
            sub, size = detail
            top = min(size, 3) if kind == 3 else 2
            if int(sub[0]) == 1:
                if sub[1][0] == 'string':
                    continue
                out.append(f'{here}[0:{top}]' if not multi and top > 1 else f'{here}[{top - 1}]')
            elif depth < 4:
                out += leaf_paths(fielddefs, sub[1], f'{here}[{top - 1}].', multi, depth + 1)
                if not multi and top > 1:
                    out += leaf_paths(fielddefs, sub[1], f'{here}[0:{top}].', True, depth + 1)
    return out


def per_message(msgs, paths):
    """What read_streams does per message: compile_path, ShortMessageError for short ones."""
    fns = [compile_path(p) for p in paths]
    rows, short = [], []
    for msg in msgs:
        try:
            rows.append([float(v) for fn in fns for v in fn(msg)])
            short.append(False)
        except ShortMessageError:
            rows.append(None)
            short.append(True)
    return rows, np.array(short)


def assert_same(decoded, rows, short, stamps=None):
    np.testing.assert_array_equal(decoded.short, short)
    assert not decoded.failed.any(), decoded.error
    for i, row in enumerate(rows):
        if row is not None:
            want = np.asarray(row, dtype=np.float64)
            assert want.view(np.uint64).tolist() == decoded.values[i].view(np.uint64).tolist(), \
                (i, want, decoded.values[i])
    if stamps is not None:
        np.testing.assert_array_equal(decoded.header_ns, stamps)


def decode_both(dec: MessageDecoder, raw: list[bytes]) -> list:
    """The message list through every path: one by one (struct), as a numpy batch, and
    first tried as messages of one layout (where they are not, the batch goes on as before)."""
    from encdec_ros.io import cdr

    outs = []
    for small, same in ((10**9, 10**9), (0, 10**9), (0, 0)):
        saved = cdr.SMALL_BATCH, cdr.SAME_LAYOUT_MIN
        cdr.SMALL_BATCH, cdr.SAME_LAYOUT_MIN = small, same
        try:
            outs.append(dec.decode_messages(raw))
        finally:
            cdr.SMALL_BATCH, cdr.SAME_LAYOUT_MIN = saved
    return outs


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


# ---------------------------------------------------------------------- every standard type
def all_types(store) -> list[str]:
    return sorted(t for t in store.fielddefs if leaf_paths(store.fielddefs, t))


STORE = standard_typestore()


def test_every_standard_type_decodes_in_batches_bit_for_bit():
    """All the Kilted typestore's types with numbers in them, 24 random messages each, in
    both byte orders within one batch (NaN payloads, extremes, strings and sequences of
    random lengths, short messages)."""
    rng = np.random.default_rng(7)
    checked = 0
    for msgtype in all_types(STORE):
        paths = [parse_path(p) for p in leaf_paths(STORE.fielddefs, msgtype)]
        has_header = any(n == 'header' for n, _ in STORE.fielddefs[msgtype][1])
        msgs = [random_message(STORE, msgtype, rng) for _ in range(24)]
        raw = [bytes(STORE.serialize_cdr(m, msgtype, little_endian=bool(k % 3)))
               for k, m in enumerate(msgs)]
        back = [STORE.deserialize_cdr(r, msgtype) for r in raw]   # what the bag path sees
        rows, short = per_message(back, paths)
        # no per-message path given: the batch decoder must read every message itself
        dec = MessageDecoder(msgtype, paths, STORE.fielddefs, header_stamp=has_header)
        assert not dec.fallback, (msgtype, dec.fallback)
        for out in decode_both(dec, raw):
            assert out.per_message == 0, (msgtype, out.error)
            assert_same(out, rows, short, [stamp_of(m) for m in back] if has_header else None)
        checked += 1
    assert checked > 100


def test_every_ros1_type_decodes_in_batches_bit_for_bit():
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC)
    rng = np.random.default_rng(9)
    checked = 0
    for msgtype in all_types(store)[::2]:     # the layout rules are few: half the types
        paths = [parse_path(p) for p in leaf_paths(store.fielddefs, msgtype)]
        msgs = [random_message(store, msgtype, rng) for _ in range(12)]
        raw = [bytes(store.serialize_ros1(m, msgtype)) for m in msgs]
        rows, short = per_message([store.deserialize_ros1(r, msgtype) for r in raw], paths)
        for out in decode_both(MessageDecoder(msgtype, paths, store.fielddefs, ros1=True), raw):
            assert out.per_message == 0, (msgtype, out.error)
            assert_same(out, rows, short)
        checked += 1
    assert checked > 50


# ---------------------------------------------------------------------- shipped specs
def shipped_topics() -> list[tuple[str, str, list[str]]]:
    """(file, type, fields) of every topic in config/*.yaml specs and models/*/model.yaml."""
    import yaml

    found = []
    for path in sorted([*ROOT.glob('config/*.yaml'), *ROOT.glob('models/*/model.yaml')]):
        data = yaml.safe_load(path.read_text())
        spec = data.get('spec', data) if isinstance(data, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get('topics'), dict):
            continue
        for topic in SignalSpec.from_dict(spec).topics:
            found.append((path.name, topic.type, [f.path.text for f in topic.fields]))
    return found


def test_shipped_specs_and_their_types_are_covered():
    kinds = {t for _, t, _ in shipped_topics()}
    assert {'sensor_msgs/msg/Imu', 'sensor_msgs/msg/JointState',
            'geometry_msgs/msg/WrenchStamped'} <= kinds


@pytest.mark.parametrize('msgtype', ['sensor_msgs/msg/Imu', 'sensor_msgs/msg/JointState',
                                     'geometry_msgs/msg/WrenchStamped', 'geometry_msgs/msg/Wrench',
                                     'geometry_msgs/msg/Twist', 'nav_msgs/msg/Odometry',
                                     'std_msgs/msg/Float64MultiArray'])
def test_rclpy_serialised_messages_decode_like_rclpy_objects(msgtype):
    """The live path: bytes from rclpy's own typesupport, compared with compile_path on the
    rclpy message objects a typed subscription would hand over."""
    pytest.importorskip('rclpy')
    from rclpy.serialization import deserialize_message, serialize_message

    from encdec_ros.io.player import message_class

    try:
        cls = message_class(msgtype)
    except ConfigError as err:
        pytest.skip(str(err))
    rng = np.random.default_rng(3)
    specs = [f for _, t, f in shipped_topics() if t == msgtype]
    fields = specs[0] if specs else leaf_paths(STORE.fielddefs, msgtype)
    if msgtype == 'sensor_msgs/msg/JointState':
        fields = ['velocity[0:6]', 'effort[0:6]', 'position[2]']
    paths = [parse_path(p) for p in fields]
    objs, raw = [], []
    for _ in range(30):
        ref = random_message(STORE, msgtype, rng)
        data = serialize_message(_to_rclpy(ref, cls))
        raw.append(data)
        objs.append(deserialize_message(data, cls))
    if msgtype == 'sensor_msgs/msg/JointState':   # 6 joints, but a few messages with fewer
        objs, raw = [], []
        for k in range(30):
            n = 6 if k % 7 else int(rng.integers(0, 6))
            msg = cls(name=[f'm{i}' for i in range(n)], position=rng.normal(size=3).tolist(),
                      velocity=rng.normal(size=n).tolist(), effort=rng.normal(size=n).tolist())
            msg.header.frame_id = 'base' * k
            msg.header.stamp.sec, msg.header.stamp.nanosec = k, 999_999_999 - k
            raw.append(serialize_message(msg))
            objs.append(msg)
    rows, short = per_message(objs, paths)
    has_header = hasattr(objs[0], 'header')
    dec = MessageDecoder(msgtype, paths, STORE.fielddefs, header_stamp=has_header)
    for out in decode_both(dec, raw):
        assert out.per_message == 0, out.error
        assert_same(out, rows, short, [stamp_of(m) for m in objs] if has_header else None)
    if msgtype == 'sensor_msgs/msg/JointState':
        assert 0 < short.sum() < 30


def _to_rclpy(ref, cls):
    """An rclpy message with the values of a rosbags message (same field names)."""
    msg = cls()
    for name in msg.get_fields_and_field_types():
        value = getattr(ref, name)
        current = getattr(msg, name)
        if hasattr(current, 'get_fields_and_field_types'):
            value = _to_rclpy(value, type(current))
        elif isinstance(value, list) and value and hasattr(value[0], '__dataclass_fields__'):
            slot = msg.SLOT_TYPES[list(msg.get_fields_and_field_types()).index(name)]
            sub = _rclpy_class(slot)
            value = [_to_rclpy(v, sub) for v in value]
        elif isinstance(value, np.ndarray):
            value = value.tolist() if not hasattr(current, 'dtype') else value
        setattr(msg, name, value)
    return msg


def _rclpy_class(slot):
    import importlib
    typ = slot.value_type
    return getattr(importlib.import_module('.'.join(typ.namespaces)), typ.name)


# ---------------------------------------------------------------------- odd messages
def imu_batch(n: int = 5, little: bool = True) -> tuple[list[bytes], list]:
    rng = np.random.default_rng(1)
    msgs = [random_message(STORE, 'sensor_msgs/msg/Imu', rng) for _ in range(n)]
    return [bytes(STORE.serialize_cdr(m, 'sensor_msgs/msg/Imu', little_endian=little))
            for m in msgs], msgs


IMU = [parse_path('angular_velocity.z'), parse_path('linear_acceleration.x')]


def imu_decoder(**kw) -> MessageDecoder:
    return MessageDecoder('sensor_msgs/msg/Imu', IMU, STORE.fielddefs, header_stamp=True,
                          deserialize=lambda b: STORE.deserialize_cdr(b, 'sensor_msgs/msg/Imu'),
                          **kw)


def test_messages_that_do_not_match_the_definition_fail_as_rosbags_fails():
    raw, msgs = imu_batch(6)
    raw[1] = raw[1][:-10]                       # cut short
    raw[2] = raw[2] + bytes(8)                  # 8 bytes too many
    raw[3] = b'\x00\x03' + raw[3][2:]           # an unknown encapsulation
    raw[4] = raw[4] + bytes(3)                  # final padding is fine
    for out in decode_both(imu_decoder(), raw):
        np.testing.assert_array_equal(out.failed, [False, True, True, True, False, False])
        assert 'SerdeError' in out.error
        assert np.isnan(out.values[1:4]).all()
        for i in (0, 4, 5):
            assert out.values[i, 0] == msgs[i].angular_velocity.z
    # without a per-message path, they fail too (no garbage)
    bare = MessageDecoder('sensor_msgs/msg/Imu', IMU, STORE.fielddefs)
    for out in decode_both(bare, raw):
        np.testing.assert_array_equal(out.failed, [False, True, True, True, False, False])


def test_a_frame_id_that_changes_length_moves_the_fields_behind_it():
    rng = np.random.default_rng(2)
    msgs = []
    for k in range(20):
        msg = random_message(STORE, 'sensor_msgs/msg/Imu', rng)
        msg.header.frame_id = 'x' * (k % 11)
        msgs.append(msg)
    raw = [bytes(STORE.serialize_cdr(m, 'sensor_msgs/msg/Imu')) for m in msgs]
    rows, short = per_message(msgs, IMU)
    for out in decode_both(imu_decoder(), raw):
        assert out.per_message == 0
        assert_same(out, rows, short, [stamp_of(m) for m in msgs])


def test_a_layout_it_cannot_lay_out_falls_back_per_field_and_says_so_once(caplog):
    """A nested type without a definition: the fields before it are decoded in batches, the
    ones after it message by message (here by rosbags, which knows the type), and the log
    names them once."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg('float64 a\nmy_msgs/Blob blob\nfloat64 b\n',
                                      'my_msgs/msg/Odd'))
    store.register(get_types_from_msg('string s\nfloat32 x\n', 'my_msgs/msg/Blob'))
    defs = {k: v for k, v in store.fielddefs.items() if k != 'my_msgs/msg/Blob'}
    msgs = [store.types['my_msgs/msg/Odd'](
        a=float(k), blob=store.types['my_msgs/msg/Blob'](s='q' * k, x=0.5), b=-float(k))
        for k in range(10)]
    raw = [bytes(store.serialize_cdr(m, 'my_msgs/msg/Odd')) for m in msgs]
    paths = [parse_path('a'), parse_path('b')]
    caplog.set_level(logging.INFO, logger='encdec_ros.io.cdr')
    for _ in range(2):
        dec = MessageDecoder('my_msgs/msg/Odd', paths, defs, where='test',
                             deserialize=lambda b: store.deserialize_cdr(b, 'my_msgs/msg/Odd'))
    assert dec.batched == ['a'] and list(dec.fallback) == ['b']
    said = [r.getMessage() for r in caplog.records if 'message by message' in r.getMessage()]
    assert said == ['test: my_msgs/msg/Odd field b is decoded message by message (the '
                    'definition of my_msgs/msg/Blob is unknown)']
    for out in decode_both(dec, raw):
        assert out.per_message == 10 and not out.failed.any()
        np.testing.assert_array_equal(out.values, [[k, -k] for k in range(10)])
    # without a per-message path the messages cannot be read: failed, with the reason
    for out in decode_both(MessageDecoder('my_msgs/msg/Odd', paths, defs), raw):
        assert out.failed.all() and 'no per-message decoder for b' in out.error


def test_open_sizes_and_wrong_paths_are_refused():
    with pytest.raises(SpecError, match='no known size'):
        MessageDecoder('sensor_msgs/msg/JointState', [parse_path('effort[*]')], STORE.fielddefs)
    with pytest.raises(SpecError, match="Vector3 has no field 'q'"):
        MessageDecoder('sensor_msgs/msg/Imu', [parse_path('angular_velocity.q')], STORE.fielddefs)


def test_messages_of_one_layout_are_read_at_fixed_offsets_and_others_are_not():
    """Every standard type: one random message, then copies with random numbers written where
    the decoder says its wanted numbers lie; rosbags must read those numbers there. A copy whose
    string is one byte longer sends the batch through the full program, with the same result."""
    from encdec_ros.io import cdr

    rng = np.random.default_rng(11)
    checked = 0
    for msgtype in all_types(STORE):
        paths = [parse_path(p) for p in leaf_paths(STORE.fielddefs, msgtype)]
        has_header = any(n == 'header' for n, _ in STORE.fielddefs[msgtype][1])
        dec = MessageDecoder(msgtype, paths, STORE.fielddefs, header_stamp=has_header)
        first = bytes(STORE.serialize_cdr(random_message(STORE, msgtype, rng), msgtype))
        layout = cdr.Layout.of(dec, first)
        if layout is None:           # short, or numbers inside a sequence of structs
            continue
        raw = []
        for _ in range(8):
            data = bytearray(first)
            for dtype, _, offs, _ in layout.gathers:
                size = 1 if dtype in ('b1', 'u1', 'i1') else int(dtype[1:])
                for off in offs.tolist():
                    data[off:off + size] = rng.integers(0, 2 if dtype == 'b1' else 256, size,
                                                        dtype=np.uint8).tobytes()
            raw.append(bytes(data))
        back = [STORE.deserialize_cdr(r, msgtype) for r in raw]
        rows, short = per_message(back, paths)
        stamps = [stamp_of(m) for m in back] if has_header else None
        batch = RawBatch.from_messages(raw)
        assert layout.read(batch, dec.width) is not None, msgtype     # one layout indeed
        got = dec.decode(batch)
        assert got.per_message == 0
        assert_same(got, rows, short, stamps)
        checked += 1
    assert checked > 80
    # one frame_id a byte longer: not the same layout, decoded by the program
    raw, msgs = imu_batch(6)
    msgs[4].header.frame_id += 'x'
    raw[4] = bytes(STORE.serialize_cdr(msgs[4], 'sensor_msgs/msg/Imu'))
    dec = imu_decoder()
    assert cdr.Layout.of(dec, raw[0]).read(RawBatch.from_messages(raw), dec.width) is None
    rows, short = per_message(msgs, IMU)
    for out in decode_both(dec, raw):
        assert_same(out, rows, short, [stamp_of(m) for m in msgs])


def test_the_header_stamp_is_found_where_it_lies():
    raw, msgs = imu_batch(3)
    at = imu_decoder().stamp_offset
    assert at == 4
    assert [struct.unpack_from('<iI', r, at) for r in raw] == \
        [(m.header.stamp.sec, m.header.stamp.nanosec) for m in msgs]
    assert MessageDecoder('sensor_msgs/msg/Imu', IMU, STORE.fielddefs).stamp_offset is None
    # a header after a string: not at a fixed place
    defs = {'x/msg/Late': ([], [('name', (1, ('string', 0))),
                                ('header', (2, 'std_msgs/msg/Header'))]),
            **{k: STORE.fielddefs[k] for k in ('std_msgs/msg/Header',
                                                'builtin_interfaces/msg/Time')}}
    late = MessageDecoder('x/msg/Late', [parse_path('header.stamp.sec')], defs,
                          header_stamp=True)
    assert late.stamp_offset is None


def test_big_endian_and_mixed_batches():
    le, msgs = imu_batch(6, little=True)
    be = [bytes(STORE.serialize_cdr(m, 'sensor_msgs/msg/Imu', little_endian=False))
          for m in msgs]
    mixed = [le[k] if k % 2 else be[k] for k in range(6)]
    rows, short = per_message(msgs, IMU)
    for out in decode_both(imu_decoder(), mixed):
        assert out.per_message == 0
        assert_same(out, rows, short, [stamp_of(m) for m in msgs])


# ---------------------------------------------------------------------- real bags
def _bag_cases(path: Path, limit: int = 2000) -> set[str]:
    """Every topic of a real bag whose type has numbers: batch vs per message; returns the
    types checked."""
    from encdec_ros.io.bag import BagSource

    checked = set()
    with BagSource(path) as bag:
        for topic, info in bag.topics.items():
            try:
                store = bag.typestore(topic)
            except Exception:   # noqa: BLE001 - a topic the bag cannot decode at all
                continue
            texts = leaf_paths(store.fielddefs, info.type)
            if not texts or info.count == 0:
                continue
            paths = [parse_path(p) for p in texts]
            raw = [bytes(r) for _, (_, _, r) in zip(range(limit), bag.raw_messages([topic]))]
            deser = bag.decoder(topic)
            msgs = [deser(r) for r in raw]
            rows, short = per_message(msgs, paths)
            has_header = any(n == 'header' for n, _ in store.fielddefs[info.type][1])
            dec = MessageDecoder(info.type, paths, store.fielddefs, header_stamp=has_header,
                                 ros1=bag.kind == 'ros1')
            for out in decode_both(dec, raw):
                assert out.per_message == 0, (path, topic, out.error)
                assert_same(out, rows, short,
                            [stamp_of(m) for m in msgs] if has_header else None)
            checked.add(info.type)
    return checked


def test_real_rosbag2_test_bags_decode_in_batches_as_rosbags_does():
    root = shared('bags/rosbag2-test-resources')
    checked: set[str] = set()
    for meta in sorted(root.rglob('metadata.yaml')):
        if 'wrong_rmw' in str(meta):
            continue
        checked |= _bag_cases(meta.parent)
    assert {'test_msgs/msg/Arrays', 'test_msgs/msg/BasicTypes',
            'rcl_interfaces/msg/Log'} <= checked


@pytest.mark.parametrize('name', ['test1.bag', 'test2.bag'])
def test_real_ros1_husky_bags_decode_in_batches_as_rosbags_does(name):
    assert {'sensor_msgs/msg/Imu', 'nav_msgs/msg/Odometry'} <= \
        _bag_cases(shared('bags/robot_localization', name))


def test_struct_formats_used_here_match_rosbags():
    """A guard on the test's own helper: NaN payloads survive serialisation."""
    raw = STORE.serialize_cdr(STORE.types['std_msgs/msg/Float64MultiArray'](
        layout=STORE.types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0),
        data=F64_SPECIAL), 'std_msgs/msg/Float64MultiArray')
    assert struct.unpack_from('<Q', bytes(raw), 20)[0] == 0x7FF8000000000001


def _norm(desc):
    kind, detail = int(desc[0]), desc[1]
    if kind in (1, 2):
        if kind == 1 and detail[0] in ('byte', 'octet', 'char', 'int8', 'uint8'):   # 1 byte
            return 1, ('1 byte', detail[1])
        return kind, detail
    return kind, (_norm(detail[0]), detail[1])


def test_rclpy_classes_give_the_definitions_of_the_standard_typestore():
    """The live path can lay out a message from its rclpy class alone (custom types too)."""
    pytest.importorskip('rclpy')
    import importlib

    from encdec_ros.io.cdr import rclpy_fielddefs

    checked = 0
    for pkg in ('std_msgs', 'sensor_msgs', 'geometry_msgs', 'diagnostic_msgs',
                'builtin_interfaces'):
        module = importlib.import_module(f'{pkg}.msg')
        for name in dir(module):
            cls = getattr(module, name)
            if not hasattr(cls, 'SLOT_TYPES'):
                continue
            for typename, (_, fields) in rclpy_fielddefs(cls).items():
                want = STORE.fielddefs[typename][1]
                assert [(f, _norm(d)) for f, d in fields] == \
                    [(f, _norm(d)) for f, d in want], typename
                checked += 1
    assert checked > 100


def test_a_decoder_for_an_rclpy_class_decodes_what_rclpy_serialises():
    pytest.importorskip('rclpy')
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    paths = [parse_path('velocity[0:3]'), parse_path('effort[2]')]
    dec = MessageDecoder.for_class(JointState, paths, header_stamp=True, where='test')
    msgs, raw = [], []
    for k in range(12):
        n = 3 if k != 5 else 2
        msg = JointState(name=['a', 'bb', 'ccc'][:n], velocity=[k + 0.5, -1.0, 2.0][:n],
                         effort=[0.0, 1.0, float(k)][:n])
        msg.header.stamp.sec, msg.header.stamp.nanosec = 100 + k, 7
        msgs.append(msg)
        raw.append(serialize_message(msg))
    assert dec.batched == ['velocity[0:3]', 'effort[2]']
    for got in decode_both(dec, raw):
        assert got.short.tolist() == [k == 5 for k in range(12)] and not got.failed.any()
        keep = [k for k in range(12) if k != 5]
        np.testing.assert_array_equal(got.values[keep], [[*msgs[k].velocity, msgs[k].effort[2]]
                                                         for k in keep])
        np.testing.assert_array_equal(got.header_ns, [stamp_of(m) for m in msgs])
    spots = dec.locate(raw[0])
    assert [np.frombuffer(raw[0], dtype=t, count=1, offset=o)[0] for o, t in spots] == \
        [0.5, -1.0, 2.0, 0.0]
    assert dec.locate(raw[5]) is None                        # short
