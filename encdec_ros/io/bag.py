"""Reading bags: rosbag2 (sqlite3, mcap; directories or bare files) and ROS 1 ``.bag``.

Messages are decoded with the definitions the bag carries where it has them (so custom
messages work), else with the standard definitions of the bag's ROS distribution.

Each storage file is read through its own connection table. Matching a file's connections
against ``metadata.yaml`` (as rosbags' high-level readers do, QoS profiles included) yields no
messages at all for bags whose metadata lists other QoS than the file; reading per storage file
avoids that, and a topic that still yields fewer messages than the metadata promises is
reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from encdec_ros.errors import BagError, SpecError
from encdec_ros.io.align import Stream, align, clean, repeats, stalled
from encdec_ros.io.cdr import MessageDecoder, RawBatch
from encdec_ros.io.labels import (
    LABEL_TOPIC,
    SIDECAR_NAME,
    Interval,
    intervals_from_label_messages,
    read_labels_csv,
)
from encdec_ros.io.spec import SignalSpec, TopicSpec, normalize_type
from encdec_ros.progress import Counter

log = logging.getLogger(__name__)

BAG_SUFFIXES = ('.db3', '.mcap', '.bag')
BATCH_MESSAGES = 65536
"""Messages of one topic read and decoded together (bounds the memory of raw bytes held)."""


@dataclass
class RawChunk:
    """Serialised messages of one topic from one storage file, decoded together."""

    log_ns: np.ndarray      # [n] int64 log (receive) times
    order: np.ndarray       # [n] int64: ties of log_ns are read in this order
    batch: RawBatch


@dataclass
class TopicInfo:
    """What a bag says about one topic."""

    name: str
    type: str
    count: int                      # messages in the storage files
    meta_count: int | None = None   # messages listed in metadata.yaml, where there is one
    has_definition: bool = False    # whether the bag carries the type's definition


def standard_typestore(distro: str | None = None) -> Any:
    """The rosbags typestore of a ROS distribution (Kilted when unknown)."""
    from rosbags.typesys import Stores, get_typestore

    key = f'ROS2_{(distro or "").upper()}'
    store = getattr(Stores, key, None) if distro else None
    return get_typestore(store or Stores.ROS2_KILTED)


class BagSource:
    """An open bag: its topics, types and raw or decoded messages in storage order.

    Use as a context manager. ``path`` may be a rosbag2 directory (with or without
    metadata.yaml), a single ``.db3`` / ``.mcap`` file, or a ROS 1 ``.bag`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._readers: list[Any] = []
        self._storages: list[tuple[Any, bool]] = []   # (storage, zstd-compressed messages)
        self.kind = ''
        self.storage_id = ''
        self.distro: str | None = None
        self.topics: dict[str, TopicInfo] = {}
        self.warnings: list[str] = []
        self._defs: dict[str, tuple[str, Any]] = {}   # msgtype -> (format, text)
        self._stores: dict[str, Any] = {}
        self._base_store: Any = None
        self._decompress: Callable[[bytes], bytes] | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.rosbag1 import Reader as Reader1
        from rosbags.rosbag1 import ReaderError as ReaderError1
        from rosbags.rosbag2 import Reader as Reader2
        from rosbags.rosbag2 import ReaderError as ReaderError2

        path = self.path
        if not path.exists():
            msg = f'bag {path} does not exist; give a rosbag2 directory, a .db3/.mcap file or ' \
                  'a ROS 1 .bag file'
            raise BagError(msg)
        if path.is_dir() and not (path / 'metadata.yaml').exists():
            files = sorted(p for p in path.iterdir() if p.suffix in ('.db3', '.mcap'))
            if not files:
                msg = f'{path} is a directory without metadata.yaml or .db3/.mcap files, so ' \
                      'it is not a rosbag2 bag; point at the bag directory itself'
                raise BagError(msg)
            self.warnings.append(f'{path} has no metadata.yaml; read its {len(files)} storage '
                                 'file(s) directly (ros2 bag reindex would restore it)')
            parts = [(f, Reader2) for f in files]
        elif path.is_dir() or path.suffix in ('.db3', '.mcap'):
            parts = [(path, Reader2)]
            if path.is_file():
                self._warn_if_split_part(path)
        elif path.suffix == '.bag':
            parts = [(path, Reader1)]
        else:
            msg = f'{path} is not a bag: expected a rosbag2 directory or a file ending in ' \
                  f'{", ".join(BAG_SUFFIXES)}'
            raise BagError(msg)

        meta_counts: dict[str, int] = {}
        for part, reader_cls in parts:
            reader = reader_cls(part)
            try:
                reader.open()
            except (ReaderError1, ReaderError2, OSError, KeyError, ValueError) as err:
                raise BagError(_open_error(part, err)) from None
            self._readers.append(reader)
            if reader_cls is Reader1:
                self.kind, self.storage_id = 'ros1', 'rosbag1'
                self._storages.append((reader, False))
                conns = reader.connections
            else:
                self.kind = 'rosbag2'
                storage = reader.storage
                if hasattr(storage, 'storages'):          # a directory with metadata.yaml
                    subs = list(storage.storages)
                    for conn in storage.connections:
                        meta_counts[conn.topic] = meta_counts.get(conn.topic, 0) + conn.msgcount
                    distro = storage.metadata.ros_distro or ''
                    from rosbags.typesys import Stores
                    self.distro = distro if hasattr(Stores, f'ROS2_{distro.upper()}') else None
                    compressed = storage.metadata.compression_mode == 'message'
                    if compressed:
                        self._decompress = _zstd_decompress(part)
                else:
                    subs, compressed = [storage], False
                self._storages.extend((s, compressed) for s in subs)
                conns = [c for s in subs for c in s.connections]
                self.storage_id = 'mcap' if any(
                    type(s).__name__.startswith('Mcap') for s in subs) else 'sqlite3'
            for conn in conns:
                msgtype = normalize_type(conn.msgtype)
                info = self.topics.get(conn.topic)
                if info is None:
                    info = self.topics[conn.topic] = TopicInfo(conn.topic, msgtype, 0)
                elif info.type != msgtype:
                    self.warnings.append(f'topic {conn.topic} appears with two types, '
                                         f'{info.type} and {msgtype}; only {info.type} is read')
                    continue
                info.count += conn.msgcount
                if conn.msgdef.format != MessageDefinitionFormat.NONE and conn.msgdef.data:
                    info.has_definition = True
                    self._defs.setdefault(msgtype, (conn.msgdef.format.name, conn.msgdef.data))
        for topic, count in meta_counts.items():
            if topic in self.topics:
                self.topics[topic].meta_count = count
        self._base_store = standard_typestore(self.distro)

    def _warn_if_split_part(self, path: Path) -> None:
        """Warn when ``path`` is one storage file of a split bag whose directory lists more."""
        meta = path.parent / 'metadata.yaml'
        if not meta.is_file():
            return
        try:
            import yaml
            info = yaml.safe_load(meta.read_text())['rosbag2_bagfile_information']
            names = [Path(str(p)).name for p in info['relative_file_paths']]
        except Exception:  # noqa: BLE001 - a damaged metadata.yaml only loses the hint
            return
        if len(names) > 1 and path.name in names:
            self.warnings.append(
                f'{path} is only one of the {len(names)} storage files of the split bag '
                f'{path.parent}, so only that part is read; pass the directory {path.parent} '
                'to read the whole bag')

    def time_range(self) -> tuple[int, int] | None:
        """(first, last) log time in ns from the bag's metadata and indexes, without reading
        its messages; None for a bag without messages."""
        starts, ends = [], []
        for reader in self._readers:
            try:
                start, end = int(reader.start_time), int(reader.end_time)
            except Exception:  # noqa: BLE001 - a storage without an index: no range
                continue
            if reader.message_count if hasattr(reader, 'message_count') else end > start:
                starts.append(start)
                ends.append(max(start, end - 1))     # rosbags' end is one past the last
        return (min(starts), max(ends)) if starts else None

    # ------------------------------------------------------------------ types
    def definition_source(self, topic: str) -> str:
        """Where the definition of ``topic``'s type comes from: ``in bag``, ``standard`` (the
        distribution's standard types), or ``none`` (the bag cannot be decoded there)."""
        info = self.topics[topic]
        if info.has_definition:
            return 'in bag'
        return 'standard' if info.type in self._base_store.fielddefs else 'none'

    def typestore(self, topic: str) -> Any:
        """The typestore that decodes ``topic``: the bag's own definition where it carries one
        that decodes the topic's first message, else the standard definition."""
        store = self._stores.get(topic)
        if store is not None:
            return store
        msgtype = self.topics[topic].type
        base = self._base_store
        store = None
        if msgtype in self._defs:
            typs = _parse_definition(msgtype, *self._defs[msgtype])
            if typs is not None and msgtype in typs:
                from rosbags.typesys import Stores, get_typestore
                store = base
                if _conflicts(base, typs):
                    store = get_typestore(Stores.EMPTY)
                    store.register(typs)
                else:
                    store.register({k: v for k, v in typs.items() if k not in base.fielddefs})
                if msgtype in base.fielddefs and store is not base and \
                        not self._decodes(topic, store) and self._decodes(topic, base):
                    self.warnings.append(
                        f'the definition of {msgtype} stored in {self.path} does not match the '
                        f'messages of {topic}; they were decoded with the standard definition')
                    store = base
        if store is None:
            store = base
        if msgtype not in store.fielddefs:
            msg = f'{self.path} carries no usable definition of {msgtype} (topic {topic}) and ' \
                  'it is not a standard type; record with mcap storage or a recent rosbag2, ' \
                  'which store definitions'
            raise BagError(msg)
        self._stores[topic] = store
        return store

    def _decodes(self, topic: str, store: Any) -> bool:
        """Whether ``store`` decodes the first message of ``topic`` (True for no messages)."""
        msgtype = self.topics[topic].type
        for _, _, raw in self.raw_messages([topic]):
            try:
                if self.kind == 'ros1':
                    store.deserialize_ros1(raw, msgtype)
                else:
                    store.deserialize_cdr(raw, msgtype)
            except Exception:  # noqa: BLE001 - any failure means the definition is wrong
                return False
            return True
        return True

    def fielddefs(self, topics: Sequence[str]) -> dict[str, Any]:
        """Type definitions covering the given topics (for checking a spec)."""
        out: dict[str, Any] = {}
        for topic in topics:
            if topic in self.topics:
                try:
                    out.update(self.typestore(topic).fielddefs)
                except BagError:
                    pass
        return out

    # ------------------------------------------------------------------ messages
    def raw_messages(self, topics: Sequence[str] | None = None
                     ) -> Iterator[tuple[str, int, bytes]]:
        """Yield (topic, log time in ns, serialised bytes), storage file by storage file."""
        wanted = set(topics) if topics is not None else None
        for storage, compressed in self._storages:
            conns = [c for c in storage.connections if wanted is None or c.topic in wanted]
            conns = [c for c in conns if normalize_type(c.msgtype) == self.topics[c.topic].type]
            if not conns:
                continue
            if compressed:
                decompress = self._decompress or _zstd_decompress(self.path)
                for conn, stamp, data in storage.messages(conns):
                    yield conn.topic, stamp, decompress(data)
            else:
                for conn, stamp, data in storage.messages(conns):
                    yield conn.topic, stamp, data

    def decoder(self, topic: str) -> Callable[[bytes], Any]:
        """A function turning the topic's serialised bytes into a message object."""
        store = self.typestore(topic)
        msgtype = self.topics[topic].type
        if self.kind == 'ros1':
            return lambda raw: store.deserialize_ros1(raw, msgtype)
        return lambda raw: store.deserialize_cdr(raw, msgtype)

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
        """Yield (topic, log time in ns, decoded message)."""
        decoders = {t: self.decoder(t) for t in topics if t in self.topics}
        for topic, stamp, raw in self.raw_messages(list(decoders)):
            yield topic, stamp, decoders[topic](raw)

    def batch_decoder(self, topic: TopicSpec) -> MessageDecoder:
        """The batch decoder of a resolved spec topic, with this bag's definitions (and its
        per-message decoder for what the batch decoder cannot lay out)."""
        return MessageDecoder(topic.type or self.topics[topic.name].type,
                              [f.path for f in topic.fields],
                              self.typestore(topic.name).fielddefs,
                              header_stamp=topic.stamp == 'header', ros1=self.kind == 'ros1',
                              deserialize=self.decoder(topic.name), where=str(self.path))

    def raw_chunks(self, topics: Sequence[str], *, max_messages: int = BATCH_MESSAGES
                   ) -> Iterator[tuple[int, str, RawChunk]]:
        """Yield (storage file index, topic, chunk of the topic's serialised messages).

        The bytes are read straight from the storage (SQL rows, MCAP chunks through their
        message indexes, ROS 1 chunks through the bag's index), every storage chunk once for
        all the topics, so no Python object is made per message where the storage allows it.
        A storage file gives each topic's messages in chunks of at most about
        ``max_messages``, not necessarily in order: sorted by (log time,
        :attr:`RawChunk.order`) they come in the order of :meth:`raw_messages`.
        """
        wanted = {t: self.topics[t].type for t in topics if t in self.topics}
        for index, (storage, compressed) in enumerate(self._storages):
            conns = [c for c in storage.connections
                     if wanted.get(c.topic) == normalize_type(c.msgtype)]
            if not conns:
                continue
            decompress = (self._decompress or _zstd_decompress(self.path)) if compressed \
                else None
            kind = type(storage).__name__
            if kind.startswith('Sqlite3') and getattr(storage, 'dbconn', None) is not None:
                chunks = _sqlite_chunks(storage, conns, decompress, max_messages)
            elif kind.startswith('Mcap') and getattr(storage, 'chunks', None) and \
                    getattr(storage, 'bio', None) is not None:
                chunks = _mcap_chunks(storage, conns, decompress)
            elif self.kind == 'ros1' and hasattr(storage, 'indexes') and \
                    hasattr(storage, 'chunks') and getattr(storage, 'bio', None) is not None:
                chunks = _ros1_chunks(storage, conns)
            else:
                chunks = _generic_chunks(storage, conns, decompress, max_messages)
            for topic, chunk in chunks:
                yield index, topic, chunk

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Close every storage file."""
        for reader in self._readers:
            try:
                reader.close()
            except Exception:   # noqa: BLE001 - closing must not mask the real error
                pass
        self._readers.clear()

    def __enter__(self) -> 'BagSource':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse_definition(msgtype: str, fmt: str, text: str) -> dict[str, Any] | None:
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    try:
        if fmt == 'MSG':
            return dict(get_types_from_msg(text, msgtype))
        sep = '=' * 80 + '\n'
        typs: dict[str, Any] = {}
        if text.startswith(f'{sep}IDL: '):
            for chunk in text.split(sep)[1:]:
                typs.update(get_types_from_idl(chunk.split('\n', 1)[1]))
        else:
            typs.update(get_types_from_idl(text))
        return typs
    except Exception:  # noqa: BLE001 - rosbags raises several kinds on odd definitions
        log.debug('cannot parse the stored definition of %s', msgtype, exc_info=True)
        return None


def _conflicts(store: Any, typs: Mapping[str, Any]) -> bool:
    for name, (_, fields) in typs.items():
        have = store.fielddefs.get(name)
        if have is not None:
            mine = [(f[0].lower(), f[1]) for f in have[1]]
            theirs = [(f[0].lower(), f[1]) for f in fields]
            if mine != theirs:
                return True
    return False


# ---------------------------------------------------------------------- raw chunks
def _split(conns: Sequence[Any], ids: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Positions of each topic's messages, given the connection id of every message."""
    topics: dict[str, list[int]] = {}
    for conn in conns:
        topics.setdefault(conn.topic, []).append(int(conn.id))
    if len(topics) == 1:
        return [(next(iter(topics)), np.arange(ids.size))]
    return [(topic, np.flatnonzero(np.isin(ids, cids))) for topic, cids in topics.items()]


def _batches(conns: Sequence[Any], ids: np.ndarray, datas: Sequence[Any],
             decompress: Callable[[bytes], bytes] | None
             ) -> Iterator[tuple[str, np.ndarray, RawBatch]]:
    """Per topic: the positions of its messages among ``datas`` and a batch of them (views
    into one buffer holding every message)."""
    if decompress is not None:
        datas = [decompress(d) for d in datas]
    everything = RawBatch.from_messages(datas)
    for topic, sel in _split(conns, ids):
        if sel.size == ids.size:
            yield topic, sel, everything
        elif sel.size:
            yield topic, sel, RawBatch(everything.buf, everything.starts[sel],
                                       everything.sizes[sel])


def _sqlite_chunks(storage: Any, conns: Sequence[Any],
                   decompress: Callable[[bytes], bytes] | None, max_messages: int
                   ) -> Iterator[tuple[str, RawChunk]]:
    """Rows of a rosbag2 sqlite3 file in one scan of the table, in insertion order (which
    breaks ties of log time, as the bag's timestamp index does)."""
    import itertools

    ids = sorted({int(c.id) for c in conns})
    marks = ','.join('?' for _ in ids)
    cursor = storage.dbconn.execute(
        f'SELECT topic_id, timestamp, data FROM messages WHERE topic_id IN ({marks}) '
        'ORDER BY id', ids)
    done = 0
    while True:
        rows = list(itertools.islice(cursor, max_messages * len(ids)))
        if not rows:
            return
        tids, stamps, datas = zip(*rows)
        stamps_a = np.array(stamps, dtype=np.int64)
        order = np.arange(done, done + len(rows), dtype=np.int64)
        for topic, sel, batch in _batches(conns, np.array(tids, dtype=np.int64), datas,
                                          decompress):
            yield topic, RawChunk(stamps_a[sel], order[sel], batch)
        done += len(rows)


_MCAP_MESSAGE, _MCAP_INDEX, _MCAP_HEAD = 0x05, 0x07, 31   # op codes; message record header


def _mcap_chunks(storage: Any, conns: Sequence[Any],
                 decompress: Callable[[bytes], bytes] | None
                 ) -> Iterator[tuple[str, RawChunk]]:
    """Messages of an indexed MCAP file, chunk by chunk: the chunk's message indexes give
    every record's offset, so the records are found without walking the chunk.

    The order (log time, chunk offset, record offset) is rosbags': a merge of the chunks by
    log time, each chunk sorted by log time.
    """
    import struct

    from rosbags.rosbag2.storage_mcap import decompress as decompress_chunk

    topic_of = {int(c.id): c.topic for c in conns}
    bio = storage.bio
    ranked = sorted(storage.chunks, key=lambda c: c.chunk_start_offset)
    for rank, chunk in enumerate(ranked):
        wanted = [cid for cid in sorted(topic_of) if chunk.channel_count.get(cid, 0)]
        if not wanted:
            continue
        indexes = {}
        for cid in wanted:
            bio.seek(chunk.message_index_offsets[cid])
            op, _, channel, size = struct.unpack('<BQHI', bio.read(15))
            pairs = np.frombuffer(bio.read(size), dtype='<u8').reshape(-1, 2)
            indexes[cid] = pairs.astype(np.int64) if op == _MCAP_INDEX and channel == cid \
                else None
        bio.seek(chunk.chunk_start_offset + 9 + 24)
        crc = struct.unpack('<I', bio.read(4))[0]
        bio.seek(chunk.chunk_start_offset + 9 + 40 + len(chunk.compression))
        data = decompress_chunk(bio.read(chunk.compressed_size), chunk.compression,
                                chunk.uncompressed_size, crc)
        buf = np.frombuffer(data, dtype=np.uint8)
        walked = None
        for cid in wanted:
            pairs = indexes[cid]
            found = _mcap_records(buf, pairs, cid) if pairs is not None else None
            if found is None:                       # the index does not fit: walk the records
                if walked is None:
                    walked = _walk_mcap(data, set(wanted))
                found = walked[cid]
            log, off, starts, sizes = found
            batch = RawBatch(buf, starts, sizes)
            if decompress is not None:
                batch = RawBatch.from_messages([decompress(batch.message(i))
                                                for i in range(len(batch))])
            yield topic_of[cid], RawChunk(log, (rank << 32) + off, batch)


def _mcap_records(buf: np.ndarray, pairs: np.ndarray, channel: int
                  ) -> tuple[np.ndarray, ...] | None:
    """(log times, record offsets, data starts, data sizes) of the message records that a
    message index lists, or None when a record there is not the message it says."""
    log, off = pairs[:, 0], pairs[:, 1]
    if off.size == 0 or off.min() < 0 or off.max() + _MCAP_HEAD > buf.size:
        return None
    head = buf[off[:, None] + np.arange(_MCAP_HEAD)]
    length = head[:, 1:9].copy().view('<u8')[:, 0].astype(np.int64)
    fits = (head[:, 0] == _MCAP_MESSAGE) & (length >= 22) & (off + 9 + length <= buf.size) & \
        (head[:, 9:11].copy().view('<u2')[:, 0] == channel) & \
        (head[:, 15:23].copy().view('<u8')[:, 0].astype(np.int64) == log)
    if not fits.all():
        return None
    return log, off, off + _MCAP_HEAD, length - 22


def _walk_mcap(data: bytes, ids: set[int]) -> dict[int, tuple[np.ndarray, ...]]:
    """Per channel of ``ids``: log times, record offsets, data starts and sizes of its
    messages in a chunk, walking the records one by one."""
    import struct

    head = struct.Struct('<BQ').unpack_from
    body = struct.Struct('<HIQ').unpack_from
    found: dict[int, list[tuple[int, int, int, int]]] = {cid: [] for cid in ids}
    pos, end = 0, len(data)
    while pos + 9 <= end:
        op, length = head(data, pos)
        if op == _MCAP_MESSAGE and length >= 22:
            channel, _, log = body(data, pos + 9)
            if channel in found:
                found[channel].append((log, pos, pos + _MCAP_HEAD, length - 22))
        pos += 9 + length
    out = {}
    for cid, rows in found.items():
        cols = [np.array(c, dtype=np.int64) for c in zip(*rows)] if rows else \
            [np.zeros(0, np.int64)] * 4
        out[cid] = tuple(cols)
    return out


def _ros1_chunks(reader: Any, conns: Sequence[Any]) -> Iterator[tuple[str, RawChunk]]:
    """Messages of a ROS 1 bag, chunk by chunk through the bag's index; per topic the order
    of rosbags (a merge of the topic's connections' indexes by time)."""
    import heapq

    topics: dict[str, list[Any]] = {}
    for conn in conns:
        topics.setdefault(conn.topic, []).append(reader.indexes[conn.id])
    entries = {}
    for topic, lists in topics.items():
        merged = lists[0] if len(lists) == 1 else list(heapq.merge(*lists))
        n = len(merged)
        entries[topic] = (np.fromiter((e.time for e in merged), dtype=np.int64, count=n),
                          np.fromiter((e.chunk_pos for e in merged), dtype=np.int64, count=n),
                          np.fromiter((e.offset for e in merged), dtype=np.int64, count=n))
    for chunk_pos in np.unique(np.concatenate([w for _, w, _ in entries.values()])).tolist():
        header = reader.chunks[chunk_pos]
        reader.bio.seek(header.datapos)
        data = header.decompressor(reader.bio.read(header.datasize))
        buf = np.frombuffer(data, dtype=np.uint8)
        for topic, (times, where, offsets) in entries.items():
            sel = np.flatnonzero(where == chunk_pos)
            if sel.size:
                starts, sizes = _ros1_records(data, offsets[sel].tolist())
                yield topic, RawChunk(times[sel], sel.astype(np.int64),
                                      RawBatch(buf, starts, sizes))


def _ros1_records(data: bytes, offsets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Data starts and sizes of the ROS 1 message data records at ``offsets`` (skipping
    connection records in front of them, as rosbags does)."""
    import struct

    u32 = struct.Struct('<I').unpack_from
    starts, sizes = [], []
    for off in offsets:
        while True:
            hlen = u32(data, off)[0]
            hend = off + 4 + hlen
            op, pos = -1, off + 4
            while pos < hend:
                flen = u32(data, pos)[0]
                if data[pos + 4:pos + 7] == b'op=':
                    op = data[pos + 7]
                    break
                pos += 4 + flen
            dlen = u32(data, hend)[0]
            if op != 0x07:                            # not a connection record
                break
            off = hend + 4 + dlen
        if op != 0x02:
            msg = 'a ROS 1 bag index points at a record that is not message data; the bag ' \
                  'is damaged: rebuild its index with `rosbag reindex`'
            raise BagError(msg)
        starts.append(hend + 4)
        sizes.append(dlen)
    return np.array(starts, dtype=np.int64), np.array(sizes, dtype=np.int64)


def _generic_chunks(storage: Any, conns: Sequence[Any],
                    decompress: Callable[[bytes], bytes] | None, max_messages: int
                    ) -> Iterator[tuple[str, RawChunk]]:
    """Messages through the storage's own per-message reader, in its order."""
    import itertools

    messages = storage.messages(conns)
    done = 0
    while True:
        rows = list(itertools.islice(messages, max_messages))
        if not rows:
            return
        found, stamps, datas = zip(*rows)
        stamps_a = np.array(stamps, dtype=np.int64)
        order = np.arange(done, done + len(rows), dtype=np.int64)
        ids = np.fromiter((int(c.id) for c in found), dtype=np.int64, count=len(rows))
        for topic, sel, batch in _batches(conns, ids, datas, decompress):
            yield topic, RawChunk(stamps_a[sel], order[sel], batch)
        done += len(rows)


# ---------------------------------------------------------------------- signals
@dataclass
class Recording:
    """One bag's signals: raw streams per topic and their alignment onto the spec's clock."""

    source: str
    spec: SignalSpec                       # resolved: types and sizes known
    times_ns: np.ndarray                   # [T] tick times, ns since the epoch
    data: np.ndarray                       # [T, C] float32, columns = spec.channels
    streams: dict[str, Stream]             # per topic, raw samples (stamps and values)
    labels: list[Interval] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def channels(self) -> list[str]:
        """Channel names in column order."""
        return self.spec.channels

    @property
    def duration_s(self) -> float:
        """Length of the aligned signal in seconds."""
        return (self.times_ns[-1] - self.times_ns[0]) * 1e-9 if self.times_ns.size else 0.0

    def label_mask(self, kinds: Sequence[str] | None = None) -> np.ndarray:
        """True at ticks inside a labelled interval."""
        from encdec_ros.io.labels import label_mask
        return label_mask(self.labels, self.times_ns, kinds=kinds)


def bind_spec(spec: SignalSpec, bag: BagSource) -> SignalSpec:
    """Check the spec against a bag's topics and types; size ``[*]`` from first messages."""
    types = {name: info.type for name, info in bag.topics.items()}
    fielddefs = bag.fielddefs(spec.topic_names)
    first: dict[str, Any] = {}
    needs_first = {t.name for t in spec.topics
                   for f in t.fields if f.path.multi and any(
                       s.multi and s.stop is None for s in f.path.segments)}
    missing = [t for t in spec.topic_names if t not in types]
    if needs_first and not missing:
        for topic, _, msg in bag.messages(sorted(needs_first)):
            first.setdefault(topic, msg)
            if len(first) == len(needs_first):
                break
    return spec.bind(types, fielddefs, where=str(bag.path), first_messages=first)


def read_streams(bag: BagSource, spec: SignalSpec, *, show_progress: bool | None = None
                 ) -> tuple[dict[str, Stream], list[str]]:
    """Extract the spec's fields from every message; return raw streams and warnings (the
    bag's own warnings first, such as reading one part of a split bag).

    The messages are decoded in batches by :class:`~encdec_ros.io.cdr.MessageDecoder` (the
    decoder the live nodes use), straight from the storage's bytes.
    """
    spec.require_resolved()
    decoders = {t.name: bag.batch_decoder(t) for t in spec.topics}
    parts: dict[str, list[tuple[int, RawChunk, Any]]] = {t: [] for t in decoders}
    total = sum(bag.topics[t].count for t in decoders)
    with Counter(total=total, desc=f'reading {bag.path.name}', unit='msg',
                 enable=show_progress) as bar:
        for index, topic, chunk in bag.raw_chunks(list(decoders)):
            parts[topic].append((index, chunk, decoders[topic].decode(chunk.batch)))
            bar.update(len(chunk.batch))
    warnings = []
    streams = {}
    for topic in spec.topics:
        streams[topic.name], notes = _stream(bag, topic, decoders[topic.name].width,
                                             parts.pop(topic.name), spec.period_ns)
        warnings += notes
    return streams, list(bag.warnings) + warnings


def _stream(bag: BagSource, topic: TopicSpec, width: int,
            parts: list[tuple[int, RawChunk, Any]], period_ns: int) -> tuple[Stream, list[str]]:
    """One topic's decoded chunks put in storage order and cleaned as the live path cleans
    them (:func:`encdec_ros.io.align.clean`); with the warnings to give."""
    use_header = topic.stamp == 'header'
    if parts:
        file = np.concatenate([np.full(len(c.batch), i, dtype=np.int64) for i, c, _ in parts])
        log_ns = np.concatenate([c.log_ns for _, c, _ in parts])
        order = np.concatenate([c.order for _, c, _ in parts])
        data = np.concatenate([d.values for _, _, d in parts]).reshape(-1, width)
        keep = np.concatenate([d.ok for _, _, d in parts])
        stamps = np.concatenate([d.header_ns for _, _, d in parts]) if use_header else log_ns
        short = sum(int(d.short.sum()) for _, _, d in parts)
        failed = sum(int(d.failed.sum()) for _, _, d in parts)
        error = next((d.error for _, _, d in parts if d.error), '')
        if not _in_order(file, log_ns, order):
            sort = np.lexsort((order, log_ns, file))
            stamps, data, keep = stamps[sort], data[sort], keep[sort]
        stamps, data = stamps[keep], data[keep]
    else:
        log_ns = stamps = np.zeros(0, np.int64)
        data = np.zeros((0, width))
        short = failed = 0
        error = ''

    notes = []
    info = bag.topics[topic.name]
    got = int(log_ns.size)
    if info.meta_count is not None and got < info.meta_count:
        notes.append(f'{topic.name}: read {got} of the {info.meta_count} messages that '
                     f'metadata.yaml lists; the bag may be truncated or its metadata '
                     'out of date')
    if short:
        notes.append(f'{topic.name}: skipped {short} messages with fewer array '
                     'elements than the spec asks for')
    if failed:
        notes.append(f'{topic.name}: skipped {failed} messages that do not decode as '
                     f'{info.type} ({error}); the bag may be damaged or record another '
                     'definition of the type')
    unstamped = int((stamps == 0).sum()) if use_header else 0
    if unstamped:           # never filled in: cannot be timed (the node skips them too)
        if unstamped == stamps.size:
            raise BagError(stalled_message(bag.path, topic.name, stamps, use_header))
        notes.append(f'{topic.name}: skipped {unstamped} messages whose header stamp is zero '
                     '(never filled in)')
        stamps, data = stamps[stamps != 0], data[stamps != 0]
    if stalled(stamps):
        raise BagError(stalled_message(bag.path, topic.name, stamps, use_header))
    stream = clean(stamps, data, period_ns, max_hold_ns=topic.max_hold_ns)
    notes.extend(time_warnings(topic.name, stream, use_header))
    bad = int((~np.isfinite(stream.values)).any(axis=1).sum())
    if bad:
        notes.append(f'{topic.name}: {bad} messages hold NaN or infinite values')
    return stream, notes


def _in_order(*keys: np.ndarray) -> bool:
    """Whether rows are already sorted by the keys (most significant first)."""
    if keys[0].size < 2:
        return True
    equal = np.ones(keys[0].size - 1, dtype=bool)
    for key in keys:
        step = np.diff(key)
        if (step[equal] < 0).any():
            return False
        equal &= step == 0
    return True


def time_warnings(topic: str, stream: Stream, use_header: bool) -> list[str]:
    """What the time model (:mod:`encdec_ros.io.align`) made of a topic's stamps, in words."""
    kind = 'header' if use_header else 'receive'
    out = []
    if stream.dropped:
        out.append(f'{topic}: dropped {stream.dropped} messages whose {kind} stamps jump away '
                   'from the ones around them (the next stamp went on from the old ones)')
    if stream.gaps:
        jumps = f', {stream.jumps_forward} of them jumps of the clock' \
            if stream.jumps_forward else ''
        out.append(f'{topic}: {stream.gaps} gaps longer than the topic holds a sample{jumps}; '
                   'no tick (and no window) spans them')
    if stream.jumps_back:
        out.append(f'{topic}: its {kind} stamps jump back in time {stream.jumps_back} times; '
                   'the aligned signal starts again after each')
    return out


def stalled_message(path: str | Path, topic: str, stamps_ns: np.ndarray, use_header: bool
                    ) -> str:
    """The sentence for a topic whose stamps mostly repeat (see :func:`align.stalled`)."""
    n = int(np.asarray(stamps_ns).size)
    how = 'are all zero' if not np.asarray(stamps_ns).any() else \
        f'repeat the one before in {repeats(stamps_ns)} of {n} messages'
    if use_header:
        return f'{path}: the header stamps of {topic} {how}, so they cannot time its ' \
               f'samples; set stamp: receive under {topic} in the spec to use the times the ' \
               'bag logged instead'
    return f'{path}: the log (receive) times of {topic} {how}, so they cannot time its ' \
           f'samples; use stamp: header under {topic} in the spec if its type has a header, ' \
           'or record the bag again'


def read_labels(bag: BagSource, *, end_ns: int | None = None) -> list[Interval]:
    """Labelled intervals of a bag: its sidecar labels.csv, else its label topic."""
    sidecar = bag.path / SIDECAR_NAME if bag.path.is_dir() else \
        bag.path.with_name(f'{bag.path.stem}.{SIDECAR_NAME}')
    if sidecar.is_file():
        return read_labels_csv(sidecar)
    if LABEL_TOPIC in bag.topics:
        stamps, texts = [], []
        for _, log_ns, msg in bag.messages([LABEL_TOPIC]):
            stamps.append(log_ns)
            texts.append(str(getattr(msg, 'data', '')))
        return intervals_from_label_messages(stamps, texts, end_ns=end_ns)
    return []


def read_bag(path: str | Path, spec: SignalSpec, *, show_progress: bool | None = None
             ) -> Recording:
    """Read one bag and align the spec's fields onto its clock."""
    with BagSource(path) as bag:
        resolved = bind_spec(spec, bag)
        if spec.resolved:
            if resolved.channels != spec.channels:
                msg = (f'{path}: the spec resolves to {len(resolved.channels)} channels here but '
                       f'{len(spec.channels)} were expected; record the same fields')
                raise SpecError(msg)
            resolved = spec
        streams, warnings = read_streams(bag, resolved, show_progress=show_progress)
        ordered = [streams[t] for t in resolved.topic_names]
        empty = [t for t in resolved.topic_names if streams[t].stamps_ns.size == 0]
        if empty:
            msg = f'{path}: no usable messages on {", ".join(empty)}; check the topic ' \
                  'names with `encdec inspect`'
            raise BagError(msg)
        times, data = align(ordered, resolved.period_ns)
        if times.size == 0:
            overlap = min(int(s.stamps_ns[-1]) for s in ordered) - \
                max(int(s.stamps_ns[0]) for s in ordered)
            if overlap < 0:
                msg = f'{path}: the topics {", ".join(resolved.topic_names)} never overlap in ' \
                      'time, so nothing can be aligned; check their stamps (header vs receive)'
            else:
                msg = f'{path}: the topics cover only {overlap * 1e-9:.3f} s together, less ' \
                      f'than one sample at {resolved.rate_hz:g} Hz; use a longer bag or a ' \
                      'higher rate_hz'
            raise BagError(msg)
        labels = read_labels(bag, end_ns=int(times[-1]) if times.size else None)
    for text in warnings:
        log.warning('%s', text)
    return Recording(str(path), resolved, times, data, streams, labels, warnings)


def read_bags(paths: Sequence[str | Path], spec: SignalSpec, *,
              show_progress: bool | None = None) -> list[Recording]:
    """Read several bags with one spec; they must resolve to the same channels."""
    if not paths:
        msg = 'no bag given; pass at least one bag with --bag'
        raise BagError(msg)
    out: list[Recording] = []
    for path in paths:
        rec = read_bag(path, out[0].spec if out else spec, show_progress=show_progress)
        out.append(rec)
    return out


def _open_error(part: Path, err: Exception) -> str:
    """One sentence for a bag that rosbags cannot open: what is wrong and how to repair it."""
    text = str(err).rstrip('.')
    if 'Serialization format' in text:
        return f'{part} stores messages in an unsupported serialisation format ' \
               f'({_quoted(text)}); encdec_ros reads CDR bags, re-record with the default ' \
               'rmw serialisation'
    if text.startswith(('A metadata key is missing', 'Invalid bag metadata',
                        'Could not load YAML')):
        meta = part / 'metadata.yaml'
        return f'cannot open bag {part}: its metadata.yaml is incomplete or damaged; rename ' \
               f'{meta} (to metadata.yaml.broken, say) to read the storage files without it, ' \
               f'or regenerate it with `ros2 bag reindex {part}`'
    if text.startswith(('Bag index looks damaged', 'Bag is not indexed')) or \
            'Header could not be read' in text:
        return f'cannot open bag {part}: its index is damaged or missing, as when a ' \
               f'recording is cut short; rebuild it with `rosbag reindex {part}` (ROS 1 ' \
               'tools, which keep a backup) and read the result'
    if text in ('File end magic is invalid', 'File magic is invalid') or \
            text.startswith(('Footer', 'Summary')):
        files = [part] if part.is_file() else sorted(part.glob('*.mcap'))
        broken = [f for f in files if not _mcap_complete(f)] or files
        name = broken[0] if broken else part
        return f'cannot open bag {part}: {name.name} is not a complete MCAP file (it was ' \
               f'probably cut short while recording); recover its messages with ' \
               f'`mcap recover {name} -o {name.with_name(name.stem + "_recovered.mcap")}` ' \
               'and read the recovered file'
    if 'database disk image is malformed' in text or 'file is not a database' in text:
        files = [part] if part.is_file() else sorted(part.glob('*.db3'))
        name = files[0] if len(files) == 1 else part
        return f'cannot open bag {part}: its sqlite3 database is damaged (probably cut short ' \
               f'while recording); recover what it holds with `sqlite3 {name} .recover | ' \
               f'sqlite3 {Path(name).with_suffix("")}_recovered.db3`'
    return f'cannot open bag {part}: {text}; check that it is a complete rosbag2 or ROS 1 bag'


def _mcap_complete(path: Path) -> bool:
    """Whether an .mcap file ends with the MCAP magic (a cut-short file does not)."""
    try:
        with path.open('rb') as f:
            f.seek(-8, 2)
            return f.read(8) == b'\x89MCAP0\r\n'
    except OSError:
        return False


def _zstd_decompress(path: Path) -> Callable[[bytes], bytes]:
    """The zstd decompression of per-message compressed bags, from the module rosbags uses."""
    try:
        import compression.zstd  # Python 3.14 and later
        return compression.zstd.decompress
    except ImportError:
        pass
    try:
        import backports.zstd  # what rosbags uses before Python 3.14
        return backports.zstd.decompress
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        msg = f'{path} compresses each message with zstd but no zstd module is installed; ' \
              'install one with `pip install backports.zstd`'
        raise BagError(msg) from None
    return zstandard.ZstdDecompressor().decompress


def _quoted(text: str) -> str:
    """The first quoted word of an error text (the name rosbags puts in quotes)."""
    import re
    found = re.search(r"'([^']+)'", text)
    return found.group(1) if found else text
