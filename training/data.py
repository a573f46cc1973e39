"""Training data that does not have to fit in memory: cached shards, streamed windows.

A fleet's bags are read once into **shards**: one bag's signals aligned onto the spec's
clock (``encdec_ros.io.bag.read_bag``: tick times, float32 data, labelled intervals), saved
as one ``.npz`` file in a cache folder (by default ``.encdec_shards`` beside the model
directory, ``--cache`` elsewhere). A shard's file name is a hash of

- the bag's content identity: the absolute path, size and modification time of each of its
  files (storage files, metadata.yaml, labels.csv; :func:`encdec_ros.io.bagset.bag_identity`):
  a bag that is re-recorded, re-indexed, relabelled or touched is read again, and nothing
  is hashed byte by byte (that would read a fleet's terabytes on every run);
- the resolved spec without its window and stride (topics, fields, types, rate): models
  with other windows share the shards;
- :data:`CACHE_VERSION`, raised whenever alignment changes what a shard holds.

Shards are written to a temporary name and renamed, so processes that build the same
shard at once (ranks of one run, or two runs) never see half a file. Delete the folder at
any time: it is rebuilt on the next run.

:class:`ShardedWindows` streams an anomaly model's windows from the shards:

- every bag is split by time into train / validation / calibration blocks exactly as
  before (``training.anomaly.split_blocks``, per bag), and the normalisation statistics are
  merged over bags in one streaming pass (:class:`Moments`, Chan et al.'s parallel update
  of count, mean and sum of squared deviations: exact, equal to the in-memory result to
  float rounding);
- each epoch, the bags are permuted and taken in groups of ``shuffle_shards``; the
  training windows of a group are shuffled together (one ``torch.randperm`` over them), so
  every batch mixes bags, and memory holds a group's shards whatever the total. With as
  many bags as fit in one group (a small run) the batches are exactly those of an
  in-memory run: windows in bag order, one permutation per epoch from the same generator;
- under torchrun the bags of a group are divided among the ranks (position in the group
  modulo the number of processes); every rank draws the same global permutation and trains
  on its own part of each global batch, weighted so that the averaged gradient is that of
  the whole batch: N processes make the same steps as one process would, to float rounding;
- validation loss and calibration errors stream over held-out blocks, each rank over its
  own bags (bag index modulo the number of processes), and are summed or gathered;
- shards are read through a ``torch.utils.data.DataLoader``; with workers (``workers``)
  several bags are read, aligned and cached in parallel.

Memory per process: ``ceil(shuffle_shards / processes)`` prepared shards (normalised float32
rows of one bag each), plus one being read per DataLoader worker, plus the held-out windows'
per-channel errors kept for calibration (2 floats per channel per held-out decision, on rank
0). Reading one bag needs memory in proportion to that bag, not to the fleet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from encdec_ros.errors import ConfigError, EncdecError
from encdec_ros.io.align import Stream
from encdec_ros.io.bag import Recording, read_bag
from encdec_ros.io.bagset import bag_identity
from encdec_ros.io.labels import Interval, label_mask
from encdec_ros.io.spec import SignalSpec
from encdec_ros.io.window import window_ends

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Raised whenever the aligned array a bag gives changes (so old shards are not reused)."""
CACHE_DIRNAME = '.encdec_shards'
SHUFFLE_SHARDS = 8
"""Bags whose training windows are shuffled together (and held in memory, all ranks)."""
SPLITS = ('train', 'val', 'calib')
PREFETCH_BYTES = 32 << 20
"""Shards at least this large on average are loaded by DataLoader workers while training
(smaller ones load faster than workers start)."""


# --------------------------------------------------------------------------- statistics


@dataclass
class Moments:
    """Per-channel count, mean and sum of squared deviations of finite values.

    :meth:`merge` is the parallel update of Chan, Golub and LeVeque, so statistics built
    bag by bag (or rank by rank) and merged equal those of all rows at once, to rounding.
    """

    count: np.ndarray       # [C] float64
    mean: np.ndarray        # [C]
    m2: np.ndarray          # [C]

    @classmethod
    def empty(cls, channels: int) -> 'Moments':
        """No rows yet."""
        return cls(np.zeros(channels), np.zeros(channels), np.zeros(channels))

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> 'Moments':
        """Two-pass statistics of rows [N, C]; non-finite values are left out per channel."""
        rows = np.asarray(rows, dtype=np.float64)
        finite = np.isfinite(rows)
        count = finite.sum(axis=0).astype(np.float64)
        safe = np.maximum(count, 1.0)
        mean = np.where(finite, rows, 0.0).sum(axis=0) / safe
        m2 = (np.where(finite, rows - mean, 0.0) ** 2).sum(axis=0)
        return cls(count, np.where(count > 0, mean, 0.0), m2)

    def merge(self, other: 'Moments') -> 'Moments':
        """The statistics of both sets of rows."""
        n = self.count + other.count
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * (other.count / safe), 0.0)
        m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / safe)
        return Moments(n, mean, m2)

    @staticmethod
    def combine(parts: Iterable['Moments']) -> 'Moments':
        """Merge in order (the same order gives the same rounding on every rank)."""
        out: Moments | None = None
        for part in parts:
            out = part if out is None else out.merge(part)
        if out is None:
            raise ValueError('no statistics to combine')
        return out

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1.0))


def rechunk(parts: Iterable[Any], size: int) -> Iterator[Any]:
    """Regroup a stream of arrays (concatenated along axis 0) into pieces of ``size`` rows;
    the last piece may be shorter. The pieces are those of the concatenation."""
    pending: list[Any] = []
    count = 0
    for part in parts:
        while len(part):
            take = min(size - count, len(part))
            pending.append(part[:take])
            count += take
            part = part[take:]
            if count == size:
                yield _concat(pending)
                pending, count = [], 0
    if count:
        yield _concat(pending)


def _concat(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch
    return torch.cat(parts)


# --------------------------------------------------------------------------- the cache


@dataclass
class Shard:
    """One bag's aligned signals, as cached."""

    source: str
    spec: SignalSpec                # resolved
    times_ns: np.ndarray            # [T] int64
    data: np.ndarray                # [T, C] float32
    first_stamps_ns: np.ndarray     # stamps of the spec's first topic (spans in rows)
    labels: list[Interval]
    warnings: list[str]

    def label_mask(self) -> np.ndarray:
        """True at ticks inside a labelled interval."""
        return label_mask(self.labels, self.times_ns)

    def recording(self) -> Recording:
        """As a :class:`~encdec_ros.io.bag.Recording` (of the raw streams only the first
        topic's stamps, which spans in rows count)."""
        first = Stream(self.first_stamps_ns, np.zeros((self.first_stamps_ns.size, 0)))
        return Recording(self.source, self.spec, self.times_ns, self.data,
                         {self.spec.topic_names[0]: first}, self.labels, self.warnings)


def spec_key(spec: SignalSpec) -> dict[str, Any]:
    """What of a resolved spec decides a shard's content (no window, stride or names)."""
    data = spec.to_dict()
    for key in ('name', 'description', 'window', 'stride'):
        data.pop(key, None)
    return data


def default_cache_dir(out: str | Path) -> Path:
    """The shard folder used when none is given: beside the model directory."""
    return Path(out).resolve().parent / CACHE_DIRNAME


class ShardCache:
    """Shards of bags under one resolved spec, in a folder; see the module docstring."""

    def __init__(self, root: str | Path, spec: SignalSpec) -> None:
        spec.require_resolved()
        self.root = Path(root)
        self.spec = spec
        self._spec_text = json.dumps(spec_key(spec), sort_keys=True)

    def key(self, bag: str | Path) -> str:
        """The shard's hash for ``bag`` under this spec."""
        ident = {'version': CACHE_VERSION, 'bag': bag_identity(bag), 'spec': self._spec_text}
        text = json.dumps(ident, sort_keys=True)
        return hashlib.sha256(text.encode('utf-8')).hexdigest()[:32]

    def path(self, bag: str | Path) -> Path:
        """Where ``bag``'s shard lives."""
        return self.root / f'{self.key(bag)}.npz'

    def ensure(self, bag: str | Path) -> tuple[Path, bool]:
        """Build ``bag``'s shard unless it is cached; returns (its path, whether built)."""
        path = self.path(bag)
        if path.is_file():
            return path, False
        rec = read_bag(bag, self.spec, show_progress=False)
        meta = {'version': CACHE_VERSION, 'source': str(bag), 'channels': rec.channels,
                'labels': [[iv.start_ns, iv.end_ns, iv.kind, iv.detail] for iv in rec.labels],
                'warnings': list(rec.warnings), 'spec': spec_key(self.spec)}
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'{path.stem}.tmp-{os.getpid()}')
        try:
            first = rec.streams[self.spec.topic_names[0]].stamps_ns
            with open(tmp, 'wb') as f:
                np.savez(f, times_ns=rec.times_ns.astype(np.int64),
                         data=np.asarray(rec.data, dtype=np.float32),
                         first_stamps_ns=np.asarray(first, dtype=np.int64),
                         meta=np.frombuffer(json.dumps(meta).encode('utf-8'), dtype=np.uint8))
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f'cannot write the shard cache {self.root} '
                              f'({err.strerror or err}); pass --cache DIR on a writable disk '
                              'with room for the aligned data') from None
        return path, True

    def load(self, bag: str | Path, *, announce: bool = False) -> tuple[Shard, bool]:
        """``bag``'s shard (built when missing), and whether it was built now. With
        ``announce`` the warnings of reading the bag are logged again for a cached shard."""
        path, built = self.ensure(bag)
        try:
            with np.load(path) as npz:
                times = np.array(npz['times_ns'])
                data = np.array(npz['data'])
                first = np.array(npz['first_stamps_ns'])
                meta = json.loads(bytes(npz['meta']).decode('utf-8'))
        except (OSError, ValueError, KeyError) as err:
            # a damaged file (a disk that filled up): build it again once
            log.warning('shard %s of %s is unreadable (%s); reading the bag again', path, bag,
                        err)
            path.unlink(missing_ok=True)
            return self.load(bag, announce=announce) if not built else _raise_cache(path)
        if announce and not built:
            for text in meta['warnings']:
                log.warning('%s', text)
        labels = [Interval(int(a), int(b), str(k), str(d)) for a, b, k, d in meta['labels']]
        return Shard(str(bag), self.spec, times, data, first, labels,
                     list(meta['warnings'])), built


def _raise_cache(path: Path) -> Any:
    raise ConfigError(f'the shard {path} just written cannot be read back; check the disk of '
                      'the cache folder or pass --cache DIR elsewhere')


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPlan:
    """How a bag's rows become windows.

    Attributes:
        window: Samples per window.
        period_ns: The spec's sample period.
        strides: Samples between windows per split ('train', 'val', 'calib').
        exclude_labelled: Leave out windows that touch a labelled interval.
        blocks: ``blocks(shard)`` -> [(split, first row, end row)] in time order (a
            module-level function or ``functools.partial``, so workers can receive it).
    """

    window: int
    period_ns: int
    strides: dict[str, int]
    exclude_labelled: bool
    blocks: Callable[[Shard], list[tuple[str, int, int]]]


@dataclass
class BagSummary:
    """What planning one bag found (small: gathered from every rank).

    Attributes:
        index: The bag's position in the set.
        source: The bag.
        rows: Aligned rows per split.
        windows: Usable windows per split.
        dropped: Windows left out (NaN or labelled).
        moments: Statistics of the rows of its training blocks.
        built: Whether its shard was built now (else it came from the cache).
        error: A user error met while reading it.
    """

    index: int
    source: str
    rows: dict[str, int] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    moments: Moments | None = None
    built: bool = False
    error: EncdecError | None = None


@dataclass
class PreparedBag:
    """A bag ready to give windows: normalised rows and the window ends of each block."""

    index: int
    data: Any                                   # float32 [T, C] normalised (torch or numpy)
    blocks: list[tuple[str, np.ndarray]]        # (split, window end rows) in time order

    def ends(self, split: str) -> np.ndarray:
        """Window ends of every block of ``split``, in time order."""
        parts = [e for name, e in self.blocks if name == split]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def plan_shard(shard: Shard, plan: WindowPlan) -> tuple[list[tuple[str, np.ndarray]],
                                                        dict[str, int], int, np.ndarray]:
    """Blocks of a shard with their window ends, rows per split, windows left out, and the
    training rows (labelled rows removed) for the normalisation statistics."""
    w = plan.window
    exclude = shard.label_mask() if plan.exclude_labelled and shard.labels else None
    bad_row = ~np.isfinite(shard.data).all(axis=1)
    if exclude is not None:
        bad_row |= exclude
    bad_sum = np.concatenate([[0], np.cumsum(bad_row, dtype=np.int64)])
    out: list[tuple[str, np.ndarray]] = []
    rows = {s: 0 for s in SPLITS}
    dropped = 0
    train_rows = []
    for name, lo, hi in plan.blocks(shard):
        rows[name] += hi - lo
        ends = np.zeros(0, np.int64)
        if hi - lo >= w:
            ends = window_ends(shard.times_ns[lo:hi], plan.period_ns, w,
                               plan.strides[name]) + lo
            # a window ending at row e covers rows e-w+1 .. e: any NaN or label leaves it out
            bad = (bad_sum[ends + 1] - bad_sum[ends + 1 - w]) > 0
            dropped += int(bad.sum())
            ends = ends[~bad]
        out.append((name, ends.astype(np.int64)))
        if name == 'train':
            part = shard.data[lo:hi]
            train_rows.append(part if exclude is None else part[~exclude[lo:hi]])
    data_rows = np.concatenate(train_rows) if train_rows else shard.data[:0]
    return out, rows, dropped, data_rows


class _Loader:
    """Map-style source for the DataLoader: item ``g`` is bag ``g`` summarised or prepared.

    Picklable (for workers); errors the user can fix come back as values, not as the
    DataLoader's wrapped traceback.
    """

    def __init__(self, bags: Sequence[str], cache: ShardCache, plan: WindowPlan, *,
                 tensors: bool = True) -> None:
        self.bags = list(bags)
        self.cache = cache
        self.plan = plan
        self.tensors = tensors
        self.mode = 'summary'
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, g: int) -> Any:
        try:
            shard, built = self.cache.load(self.bags[g], announce=self.mode == 'summary')
            blocks, rows, dropped, train_rows = plan_shard(shard, self.plan)
        except EncdecError as err:
            return BagSummary(g, self.bags[g], error=err)
        if self.mode == 'summary':
            return BagSummary(g, self.bags[g], rows, {s: int(sum(len(e) for n, e in blocks
                                                                 if n == s)) for s in SPLITS},
                              dropped, Moments.of_rows(train_rows), built)
        assert self.mean is not None and self.std is not None
        norm = (shard.data - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        norm = norm.astype(np.float32, copy=False)
        if not self.tensors:
            return PreparedBag(g, norm, blocks)
        import torch

        return PreparedBag(g, torch.from_numpy(norm), blocks)


def _identity(item: Any) -> Any:
    return item


class ShardedWindows:
    """An anomaly model's windows streamed from cached shards; see the module docstring.

    Args:
        bags: The bags (already expanded), in a fixed order (the same on every rank).
        spec: The resolved spec.
        cache: The shard cache.
        plan: How rows become windows.
        dist: The process group (``training.distributed.Dist``).
        seed: Seed of the order in which bags are grouped each epoch.
        shuffle_shards: Bags per group (rounded up to a multiple of the number of ranks).
        workers: DataLoader workers (None: as many as this rank's CPUs when reading bags into
            shards; while training, two when shards are large (PREFETCH_BYTES), else none).
        tensors: Give windows as torch tensors (False: numpy arrays, read in this process,
            without importing torch: the classical baselines fit so).
    """

    def __init__(self, bags: Sequence[str | Path], spec: SignalSpec, cache: ShardCache,
                 plan: WindowPlan, *, dist: Any, seed: int = 0,
                 shuffle_shards: int = SHUFFLE_SHARDS, workers: int | None = None,
                 tensors: bool = True) -> None:
        if shuffle_shards < 1:
            raise ConfigError(f'shuffle_shards must be >= 1, got {shuffle_shards}')
        if workers is not None and workers < 0:
            raise ConfigError(f'workers must be >= 0, got {workers}')
        self.bags = [str(b) for b in bags]
        self.spec = spec
        self.plan = plan
        self.dist = dist
        self.seed = seed
        world = dist.world
        self.group = int(math.ceil(shuffle_shards / world) * world)
        self.workers = workers if tensors else 0       # DataLoader workers need torch
        self.tensors = tensors
        self.loader = _Loader(self.bags, cache, plan, tensors=tensors)
        self.summaries: list[BagSummary] = []
        self._lru: OrderedDict[int, PreparedBag] = OrderedDict()
        self._capacity = max(1, self.group // world)
        self.window = plan.window
        self.channels = len(spec.channels)

    # ------------------------------------------------------------------ reading
    def _cpus(self) -> int:
        per_node = int(os.environ.get('LOCAL_WORLD_SIZE', str(self.dist.world)))
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 1
        return max(1, cpus // max(1, per_node))

    def _read(self, indices: Sequence[int], *, heavy: bool) -> Iterator[Any]:
        """Items of ``indices`` in order, through a DataLoader (workers in parallel)."""
        if not indices:
            return iter(())
        workers = self.workers
        if workers is None and heavy:       # reading bags: as many at once as CPUs
            workers = min(self._cpus(), len(indices)) if len(indices) > 1 else 0
        elif workers is None:               # loading shards: worth workers when they are big
            big = self._shard_bytes() >= PREFETCH_BYTES
            workers = min(2, self._cpus()) if big and len(indices) > 1 else 0
        if workers == 0:
            return (self.loader[g] for g in indices)
        from torch.utils.data import DataLoader

        return iter(DataLoader(self.loader, batch_size=None, sampler=list(indices),
                               num_workers=workers, collate_fn=_identity, prefetch_factor=1,
                               multiprocessing_context='fork' if os.name == 'posix' else None))

    def _shard_bytes(self) -> float:
        """Mean size of a prepared shard in bytes (after :meth:`summarise`)."""
        rows = [sum(s.rows.values()) for s in self.summaries]
        return 4.0 * self.channels * (sum(rows) / len(rows)) if rows else 0.0

    def summarise(self) -> list[BagSummary]:
        """Read (or find cached) this rank's shards, plan every bag; every rank gets all the
        summaries in bag order. A user error on any bag is raised on every rank."""
        self.loader.mode = 'summary'
        mine = [g for g, _ in self.dist.mine(self.bags)]
        found = list(self._read(mine, heavy=True))
        error = next((s.error for s in found if s.error is not None), None)
        self.dist.agree(error)
        merged: dict[int, BagSummary] = {}
        for part in self.dist.all_gather(found):
            for s in part:
                merged[s.index] = s
        self.summaries = [merged[g] for g in range(len(self.bags))]
        return self.summaries

    def count(self, split: str) -> int:
        """Windows of a split over all bags."""
        return int(sum(s.windows[split] for s in self.summaries))

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Normalise rows with these before any window is given."""
        self.loader.mean, self.loader.std = np.asarray(mean), np.asarray(std)
        self.loader.mode = 'prepared'
        self._lru.clear()

    def _prepared(self, indices: Sequence[int]) -> Iterator[PreparedBag]:
        """Prepared bags of ``indices`` in order, from memory or read (kept in an LRU)."""
        held = {g: self._lru[g] for g in indices if g in self._lru}
        fresh = self._read([g for g in indices if g not in held], heavy=False)
        for g in indices:
            item = held[g] if g in held else next(fresh)
            if isinstance(item, BagSummary):       # an error while reading it again
                assert item.error is not None
                raise item.error
            self._lru[g] = item
            self._lru.move_to_end(g)
            while len(self._lru) > self._capacity:
                self._lru.popitem(last=False)
            yield item

    # ------------------------------------------------------------------ training windows
    def groups(self, epoch: int) -> list[list[int]]:
        """The bag groups of an epoch, each sorted by bag index (one group for a small run)."""
        n = len(self.bags)
        if n <= self.group:
            return [list(range(n))]
        order = np.random.default_rng([self.seed, epoch, 0xF1EE7]).permutation(n)
        return [sorted(int(g) for g in order[i:i + self.group])
                for i in range(0, n, self.group)]

    def batches_per_epoch(self, epoch: int, batch_size: int) -> int:
        """Optimiser steps in an epoch."""
        return sum(-(-sum(self.summaries[g].windows['train'] for g in grp) // batch_size)
                   for grp in self.groups(epoch))

    def train_batches(self, epoch: int, batch_size: int, gen: Any
                      ) -> Iterator[tuple[Any, int]]:
        """This rank's part of each global batch of an epoch: (windows [b, W, C], global
        batch size). Every rank yields the same number of batches (some may be empty)."""
        import torch

        rank, world = self.dist.rank, self.dist.world
        offsets = torch.arange(-self.window + 1, 1)
        for grp in self.groups(epoch):
            counts = np.array([self.summaries[g].windows['train'] for g in grp], np.int64)
            cum = np.concatenate([[0], np.cumsum(counts)])
            total = int(cum[-1])
            if total == 0:
                continue
            own = [p for p in range(len(grp)) if p % world == rank]
            prepared = dict(zip(own, self._prepared([grp[p] for p in own])))
            ends = {p: torch.from_numpy(prepared[p].ends('train')) for p in own}
            perm = torch.randperm(total, generator=gen).numpy()
            for lo in range(0, total, batch_size):
                idx = perm[lo:lo + batch_size]
                pos = np.searchsorted(cum, idx, side='right') - 1
                if world == 1 and len(own) == 1:
                    yield prepared[0].data[ends[0][idx][:, None] + offsets], len(idx)
                    continue
                sel = np.flatnonzero(pos % world == rank)
                x = torch.empty((len(sel), self.window, self.channels), dtype=torch.float32)
                for p in np.unique(pos[sel]):
                    at = sel[pos[sel] == p]
                    e = ends[int(p)][torch.from_numpy(idx[at] - cum[p])]
                    x[torch.from_numpy(np.searchsorted(sel, at))] = \
                        prepared[int(p)].data[e[:, None] + offsets]
                yield x, len(idx)

    # ------------------------------------------------------------------ held-out windows
    def own_bags(self) -> list[int]:
        """Bags whose held-out windows this rank scores: index % world == rank."""
        return [g for g, _ in self.dist.mine(self.bags)]

    def held_out(self, split: str, *, bags: Sequence[int] | None = None,
                 piece: int = 4096) -> Iterator[tuple[int, int, Any]]:
        """(bag, block number, windows [n, W, C]) over the blocks of ``split`` of this rank's
        bags (or ``bags``), in bag then time order, at most ``piece`` windows at a time;
        torch tensors, or numpy arrays when the windows were asked without tensors."""
        if self.tensors:
            import torch

            offsets, as_index = torch.arange(-self.window + 1, 1), torch.from_numpy
        else:
            offsets, as_index = np.arange(-self.window + 1, 1), np.asarray
        for bag in self._prepared(self.own_bags() if bags is None else bags):
            number = 0
            for name, ends in bag.blocks:
                if name != split:
                    continue
                for lo in range(0, len(ends), piece):
                    e = as_index(ends[lo:lo + piece])
                    yield bag.index, number, bag.data[e[:, None] + offsets]
                if not len(ends):
                    shape = (0, self.window, self.channels)
                    yield bag.index, number, (bag.data.new_zeros(shape) if self.tensors
                                              else np.zeros(shape, np.float32))
                number += 1

    def first_windows(self, split: str, k: int) -> np.ndarray:
        """The first ``k`` windows of a split in bag order (export examples), as numpy."""
        out, got = [], 0
        for g, s in enumerate(self.summaries):
            if got >= k:
                break
            if not s.windows[split]:
                continue
            for _, _, w in self.held_out(split, bags=[g], piece=k):
                out.append(np.asarray(w[:k - got]))
                got += len(out[-1])
                if got >= k:
                    break
        return np.concatenate(out) if out else np.zeros((0, self.window, self.channels),
                                                        np.float32)
