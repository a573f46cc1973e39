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
from encdec_ros.io.fields import ShortMessageError, compile_path
from encdec_ros.io.labels import (
    LABEL_TOPIC,
    SIDECAR_NAME,
    Interval,
    intervals_from_label_messages,
    read_labels_csv,
)
from encdec_ros.io.spec import SignalSpec, normalize_type
from encdec_ros.progress import progress

log = logging.getLogger(__name__)

BAG_SUFFIXES = ('.db3', '.mcap', '.bag')


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
    bag's own warnings first, such as reading one part of a split bag)."""
    spec.require_resolved()
    extractors: dict[str, tuple[list[Callable[[Any], Any]], int, bool]] = {}
    for topic in spec.topics:
        fns = [compile_path(f.path) for f in topic.fields]
        extractors[topic.name] = (fns, len(topic.channel_names()), topic.stamp == 'header')
    stamps: dict[str, list[int]] = {t: [] for t in extractors}
    rows: dict[str, list[list[float]]] = {t: [] for t in extractors}
    short: dict[str, int] = {t: 0 for t in extractors}
    unstamped: dict[str, int] = {t: 0 for t in extractors}
    total = sum(bag.topics[t].count for t in extractors)
    for topic, log_ns, msg in progress(bag.messages(list(extractors)), total=total,
                                       desc=f'reading {bag.path.name}', unit='msg',
                                       enable=show_progress):
        fns, _, use_header = extractors[topic]
        try:
            row: list[float] = []
            for fn in fns:
                row.extend(fn(msg))
        except ShortMessageError:
            short[topic] += 1
            continue
        if use_header:
            st = msg.header.stamp
            stamp = st.sec * 1_000_000_000 + st.nanosec
            if stamp == 0:          # never filled in: cannot be timed (the node skips them too)
                unstamped[topic] += 1
                continue
            stamps[topic].append(stamp)
        else:
            stamps[topic].append(log_ns)
        rows[topic].append(row)
    warnings = []
    streams = {}
    for topic, (_, width, use_header) in extractors.items():
        info = bag.topics[topic]
        got = len(stamps[topic]) + short[topic]
        if info.meta_count is not None and got < info.meta_count:
            warnings.append(f'{topic}: read {got} of the {info.meta_count} messages that '
                            f'metadata.yaml lists; the bag may be truncated or its metadata '
                            'out of date')
        if short[topic]:
            warnings.append(f'{topic}: skipped {short[topic]} messages with fewer array '
                            'elements than the spec asks for')
        values = np.asarray(rows[topic], dtype=np.float64).reshape(-1, width)
        raw = np.asarray(stamps[topic], dtype=np.int64)
        if unstamped[topic] and unstamped[topic] >= raw.size:
            raise BagError(stalled_message(bag.path, topic,
                                           np.zeros(unstamped[topic] + raw.size, np.int64),
                                           use_header))
        if unstamped[topic]:
            warnings.append(f'{topic}: skipped {unstamped[topic]} messages whose header stamp '
                            'is zero (never filled in)')
        if stalled(raw):
            raise BagError(stalled_message(bag.path, topic, raw, use_header))
        stream = clean(raw, values, spec.period_ns, max_hold_ns=spec.topic(topic).max_hold_ns)
        warnings.extend(time_warnings(topic, stream, use_header))
        bad = int((~np.isfinite(stream.values)).any(axis=1).sum())
        if bad:
            warnings.append(f'{topic}: {bad} messages hold NaN or infinite values')
        streams[topic] = stream
    return streams, list(bag.warnings) + warnings


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
