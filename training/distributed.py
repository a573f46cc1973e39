"""Process groups for training under ``torchrun`` (DistributedDataParallel).

``torchrun --standalone --nproc_per_node=N -m encdec_ros train anomaly ...`` starts N
processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their
environment. :func:`from_env` joins them into one process group: NCCL when every process has
a GPU of its own (``LOCAL_RANK`` < the number of visible GPUs), gloo on CPUs; the environment
variable ``ENCDEC_DDP_BACKEND=gloo`` or ``nccl`` overrides the choice. Without torchrun (no
``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is started and every helper is a no-op, so a single
process trains exactly as it would without this module.

The helpers move plain Python and numpy values between ranks: sums and maxima (all-reduce),
lists of objects gathered in rank order, a value broadcast from rank 0, and errors agreed
across ranks (a user mistake found on one rank is raised on every rank, so none waits forever
for the others). Only rank 0 writes files and prints.

Several machines: run the same command on each with ``--nnodes``, ``--node-rank`` and a
rendezvous endpoint, e.g. ``torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d
--rdzv-endpoint HOST:29400 --rdzv-id fleet1 -m encdec_ros train anomaly ...`` (docs/fleet.md).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from encdec_ros.cli import process_rank
from encdec_ros.errors import ConfigError, EncdecError

T = TypeVar('T')
BACKENDS = ('gloo', 'nccl')
TIMEOUT_S = 4 * 3600
"""How long a rank waits for the others at a collective (a huge bag read on one rank)."""


@dataclass
class Dist:
    """This process's place in the process group (rank 0 of 1 without torchrun).

    Attributes:
        rank: This process's rank.
        world: Number of processes.
        local_rank: Rank on this machine (which GPU it uses).
        backend: 'gloo', 'nccl', or '' for a single process.
        device: The torch device the model trains on ('cpu' or 'cuda:<local_rank>').
        owns_group: Whether :func:`from_env` started the process group (and :meth:`close`
            ends it).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ''
    device: Any = 'cpu'
    owns_group: bool = False
    _torch: Any = field(default=None, repr=False)
    _owed: bool = field(default=False, repr=False)

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which prints and writes."""
        return self.rank == 0

    def say(self, sink: Callable[[str], None]) -> Callable[[str], None]:
        """``sink`` on rank 0, a function that drops the line elsewhere."""
        return sink if self.is_main else (lambda _line: None)

    # ------------------------------------------------------------------ collectives
    def all_sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over ranks of a number or array (float64)."""
        return self._reduce(values, 'SUM')

    def all_max(self, values: Any) -> np.ndarray:
        """Element-wise maximum over ranks of a number or array (float64)."""
        return self._reduce(values, 'MAX')

    def _reduce(self, values: Any, op: str) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if not self.active:
            return arr.copy()
        torch = self._torch
        t = torch.as_tensor(arr.reshape(-1), dtype=torch.float64).to(self.device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t.cpu().numpy().reshape(arr.shape)

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        self._torch.distributed.all_gather_object(out, obj)
        return out

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` in rank order on rank 0; None elsewhere."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world if self.is_main else None
        self._torch.distributed.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        self._torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.active:
            self._torch.distributed.barrier()

    def agree(self, error: EncdecError | None) -> None:
        """Raise on every rank the first (by rank) user error any rank met; else nothing.

        The raised error carries ``all_ranks = True`` so that only rank 0 prints it.
        """
        errors = self.all_gather(error) if self.active else [error]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            first.all_ranks = True      # type: ignore[attr-defined]
            raise first

    def run_agreed(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; a user error on any rank is raised on all of them."""
        try:
            result, error = fn(), None
        except EncdecError as err:
            result, error = None, err
        self.agree(error)
        return result  # type: ignore[return-value]

    # ------------------------------------------------------------------ rank 0's result
    def owe(self) -> None:
        """Rank 0 starts work whose outcome the others wait for (:meth:`receive`); a user
        error before :meth:`settle` must reach them through :meth:`fail`."""
        self._owed = self.active and self.is_main

    def settle(self, payload: Any) -> None:
        """Rank 0 sends the outcome the others wait for."""
        self._owed = False
        self.broadcast(payload)

    def fail(self, error: EncdecError) -> None:
        """Rank 0 met a user error while the others wait: send it to them."""
        if self._owed:
            self._owed = False
            self.broadcast(error)

    def receive(self) -> Any:
        """On ranks > 0: rank 0's outcome, or its user error raised here."""
        payload = self.broadcast(None)
        if isinstance(payload, EncdecError):
            payload.all_ranks = True        # type: ignore[attr-defined]
            raise payload
        return payload

    # ------------------------------------------------------------------ work split
    def mine(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """(index, item) of the items this rank handles: index % world == rank."""
        return [(i, x) for i, x in enumerate(items) if i % self.world == self.rank]

    def map_ordered(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        """``fn`` over ``items``, divided among ranks (:meth:`mine`), results in item order on
        every rank; a user error on any rank is raised on all."""
        def work() -> list[tuple[int, Any]]:
            return [(i, fn(x)) for i, x in self.mine(items)]

        parts = self.all_gather(self.run_agreed(work))
        out: list[Any] = [None] * len(items)
        for part in parts:
            for i, value in part:
                out[i] = value
        return out

    # ------------------------------------------------------------------ the model
    def wrap(self, model: Any) -> Any:
        """The model for training: DistributedDataParallel over the group, or the model."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        if self.backend == 'nccl':
            return DistributedDataParallel(model, device_ids=[self.local_rank],
                                           output_device=self.local_rank)
        return DistributedDataParallel(model)

    def close(self) -> None:
        """End the process group if :func:`from_env` started it."""
        if self.owns_group and self._torch is not None:
            dist = self._torch.distributed
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def from_env(*, backend: str | None = None) -> Dist:
    """Join torchrun's process group, or describe a single process.

    Args:
        backend: 'gloo' or 'nccl'; default: ``ENCDEC_DDP_BACKEND``, else NCCL when this
            process has a GPU of its own, else gloo.
    """
    if process_rank()[1] <= 1:
        return Dist()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if dist.is_initialized():           # the caller started it
        name = str(dist.get_backend())
        device = _device(torch, name, local_rank)
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, name, device,
                    owns_group=False, _torch=torch)
    name = (backend or os.environ.get('ENCDEC_DDP_BACKEND') or '').strip().lower()
    if not name:
        has_gpu = torch.cuda.is_available() and torch.cuda.device_count() > local_rank
        name = 'nccl' if has_gpu and dist.is_nccl_available() else 'gloo'
    if name not in BACKENDS:
        raise ConfigError(f'ENCDEC_DDP_BACKEND is {name!r}; use gloo (CPUs) or nccl (GPUs)')
    if name == 'nccl':
        if not (torch.cuda.is_available() and torch.cuda.device_count() > local_rank):
            raise ConfigError(f'the nccl backend needs a GPU per process, but process '
                              f'{local_rank} on this machine has none; set '
                              'ENCDEC_DDP_BACKEND=gloo or start fewer processes per machine')
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=name, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, name,
                _device(torch, name, local_rank), owns_group=True, _torch=torch)


def _device(torch: Any, backend: str, local_rank: int) -> Any:
    return torch.device(f'cuda:{local_rank}') if backend == 'nccl' else torch.device('cpu')
