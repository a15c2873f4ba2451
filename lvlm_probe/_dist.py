"""Data-parallel helpers on ``torch.distributed``, shared by capture and diagnose.

Every rank calls the same function with the same inputs. Work is cut into the batches a single process would run
(:func:`batches`); rank ``r`` of ``N`` takes the ``r``-th contiguous block (:func:`rank_share`), so each batch is
padded exactly as in one process and the gathered results equal a one-process run. A failure on any rank is
raised on every rank (:func:`gather`, :func:`on_rank0`), so no rank waits forever for a peer that has died
of an exception.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from lvlm_probe.errors import InputError, LvlmProbeError

T = TypeVar("T")


class PeerError(LvlmProbeError, RuntimeError):
    """A step failed on another rank of the process group (the message names the rank and its error)."""


def process_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` of an initialised torch.distributed group of more than one process, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def batches(items: Sequence[T], batch_size: int) -> list[list[T]]:
    """Batches cut from the full item list, so a resumed or distributed run pads and batches exactly as an
    uninterrupted single-process one (identical tensors)."""
    items = list(items)
    return [items[k : k + batch_size] for k in range(0, len(items), batch_size)]


def rank_share(chunks: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s contiguous block of ``chunks`` (deterministic; the blocks cover every chunk once)."""
    n = len(chunks)
    return list(chunks[rank * n // world : (rank + 1) * n // world])


def _raise_failures(results: list[tuple[bool, Any]], what: str, ranks: Sequence[int]) -> None:
    bad = [(r, v) for r, (ok, v) in zip(ranks, results) if not ok]
    if bad:
        rank, (kind, msg) = bad[0]
        raise PeerError(f"{what} failed on rank {rank}: {kind}: {msg}")


def gather(fn: Callable[[], T], what: str) -> list[T]:
    """Run ``fn()`` on every rank and return every rank's result, in rank order, on every rank.

    Outside a process group: ``[fn()]``. Inside one, an exception on any rank is raised on every rank (the
    failing rank re-raises its own exception; the others raise :class:`PeerError` naming it).
    """
    group = process_group()
    if group is None:
        return [fn()]
    import torch.distributed as dist

    own: BaseException | None = None
    try:
        mine: tuple[bool, Any] = (True, fn())
    except Exception as exc:  # noqa: BLE001 - reported to every rank below
        own, mine = exc, (False, (type(exc).__name__, " ".join(str(exc).split())))
    results: list[Any] = [None] * group[1]
    dist.all_gather_object(results, mine)
    if own is not None:
        raise own
    _raise_failures(results, what, range(group[1]))
    return [v for _, v in results]


def on_rank0(fn: Callable[[], T], what: str) -> T:
    """Run ``fn()`` on rank 0 only and give its result (or its exception) to every rank; ``fn()`` outside a group."""
    group = process_group()
    if group is None:
        return fn()
    import torch.distributed as dist

    own: BaseException | None = None
    box: list[Any] = [None]
    if group[0] == 0:
        try:
            box = [(True, fn())]
        except Exception as exc:  # noqa: BLE001 - reported to every rank below
            own, box = exc, [(False, (type(exc).__name__, " ".join(str(exc).split())))]
    dist.broadcast_object_list(box, src=0)
    if own is not None:
        raise own
    _raise_failures([box[0]], what, [0])
    return box[0][1]


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if process_group() is not None:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def shared_tempdir(path: str | os.PathLike | None = None, *, keep: bool = False) -> Iterator[str]:
    """A directory every rank writes into: ``path`` when given (kept if ``keep``), else a temporary directory
    that rank 0 creates (under ``TMPDIR``) and removes when every rank is done with it.

    Raises
    ------
    InputError
        When a rank cannot see rank 0's directory (several nodes without a shared ``TMPDIR``).
    """
    import shutil
    import tempfile

    group = process_group()
    if path is not None:
        where = str(path)
    elif group is None:
        where = tempfile.mkdtemp(prefix="lvlm_probe_")
    else:
        where = on_rank0(lambda: tempfile.mkdtemp(prefix="lvlm_probe_"), "creating the shared temporary directory")
    visible = gather(lambda: Path(where).is_dir() or path is not None, "checking the shared directory")
    if not all(visible):
        rank = visible.index(False)
        barrier()
        if group is None or group[0] == 0:
            shutil.rmtree(where, ignore_errors=True)
        raise InputError(f"rank {rank} cannot see rank 0's temporary directory {where!r}; on several nodes set "
                         "TMPDIR to a directory on a shared file system on every node")
    try:
        yield where
    finally:
        barrier()
        if not keep and (group is None or group[0] == 0):
            shutil.rmtree(where, ignore_errors=True)


def rank_gpus(local_rank: int, local_world: int) -> list[int]:
    """The CUDA devices of local rank ``local_rank`` when ``local_world`` ranks share a node's GPUs in equal
    contiguous blocks (each rank splits its model over its block with a device map)."""
    import torch

    n = torch.cuda.device_count()
    if local_world > n:
        raise InputError(f"{local_world} ranks on this node but {n} GPU(s): a device map needs at least one GPU per "
                         "rank; launch fewer ranks per node (--nproc-per-node)")
    k = n // local_world
    return list(range(local_rank * k, (local_rank + 1) * k))


def rank_max_memory(local_rank: int, local_world: int) -> dict[int, int] | None:
    """``max_memory`` for ``from_pretrained``: the free memory of this rank's GPUs only (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {g: int(torch.cuda.mem_get_info(g)[0]) for g in rank_gpus(local_rank, local_world)}
