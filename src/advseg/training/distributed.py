"""Multi-process training on PyTorch's own distributed engine: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node=N -m advseg train ...`` starts N processes ("ranks") and tells each its
place through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_from_env` joins them into one process group: ``gloo`` on CPU, ``nccl``
for CUDA tensors (``cpu:gloo,cuda:nccl`` when CUDA is present, so a CPU run on a GPU machine still
works), one rank per device (``cuda:LOCAL_RANK``). Without those variables (a plain ``advseg train``)
everything here is a no-op on a world of one process, so the single-process path is unchanged.

What the trainers take from here (the plumbing lives in this one module; the trainers only call it):

* :func:`rank`, :func:`world_size`, :func:`is_main` - only rank 0 writes (run folder, checkpoints,
  logs, figures); the other ranks never write to disk;
* :func:`stream_seed` / :func:`reseed_streams` - every rank draws its own labeled and unlabeled
  patches from its own seeded generator (numpy ``SeedSequence([seed, rank])`` streams, statistically
  independent; rank 0's stream is the single-process one);
* :func:`wrap` - a network in ``DistributedDataParallel`` (gradients averaged over the ranks in the
  backward pass, parameters broadcast from rank 0 when wrapped);
* :func:`all_gather_object` / :func:`broadcast_object` - picklable state (sampler and RNG states of
  every rank gathered into rank 0's checkpoint; a resumed checkpoint or rank 0's validation results
  sent to every rank);
* :func:`any_rank` - an all-reduced "did any rank fail" flag, so a NaN on one rank stops all ranks
  together; :func:`agree` does the same for an exception raised before training (bad input), with one
  message from the lowest failing rank and a silent exit of the others.

An exception that only one rank sees during training (out of memory, a bug) ends that process; torchrun
then stops the other ranks of the group (its elastic agent watches the workers) and reports the failed
rank. Collectives time out after ``ADVSEG_DIST_TIMEOUT_MIN`` minutes (default 60): rank 0's validation
must finish within that while the others wait.
"""

from __future__ import annotations

import datetime
import gc
import os
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

#: global-RNG seed offset between ranks: rank r seeds torch / numpy / random with seed + STRIDE * r
RANK_SEED_STRIDE = 1000

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return _env_int("WORLD_SIZE", 1)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0 (the only one that writes)."""
    return rank() == 0


def backend_for(cuda: bool) -> str:
    """``gloo`` for CPU tensors; NCCL for CUDA tensors when CUDA is present (gloo stays for CPU ones)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_from_env() -> int:
    """Join the process group torchrun described in the environment; returns the world size.

    A no-op (returns 1) without torchrun's variables or with ``WORLD_SIZE=1``; idempotent. With CUDA the
    current device becomes ``cuda:LOCAL_RANK`` (one rank per GPU).
    """
    n = launched_world_size()
    if n <= 1 or is_initialized():
        return world_size()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    timeout = datetime.timedelta(minutes=float(os.environ.get("ADVSEG_DIST_TIMEOUT_MIN", "60")))
    dist.init_process_group(backend=backend_for(cuda), timeout=timeout)
    return world_size()


def shutdown() -> None:
    """Leave the process group once every rank is done (end of a command). Call it after the trainers
    (their DDP wrappers hold the group) are gone: a process that exits with the group alive, or with
    wrappers still holding it, can abort in C++ teardown ("terminate called without an active
    exception") after its work is done."""
    if is_initialized():
        gc.collect()  # DDP wrappers in reference cycles release the group's backend now
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()


def device_for(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device``."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable; tensors should be on the CPU), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the others pass anything, e.g. None)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (all-reduce MAX of one number)."""
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])  # CPU tensors go through gloo, also on a CUDA machine
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The element-wise sums over the ranks of equally shaped ``tensors`` (one all-reduce, no grad)."""
    if world_size() == 1:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    dist.all_reduce(flat)  # on the tensors' device: gloo for CPU, NCCL for CUDA tensors
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        i += t.numel()
    return tuple(out)


def mean_scalars(values: dict[str, Any]) -> dict[str, Any]:
    """The mean over the ranks of the numbers of a training log record (other values: rank 0's).

    Every rank must pass the same keys (they follow the same control flow)."""
    if world_size() == 1:
        return values
    keys = sorted(k for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool))
    if not keys:
        return values
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    (summed,) = all_reduce_sum(t)
    out = dict(values)
    for k, v in zip(keys, (summed / world_size()).tolist(), strict=True):
        out[k] = int(round(v)) if isinstance(values[k], int) and float(v).is_integer() else v
    return out


class PeerFailed(SystemExit):
    """Raised on a rank whose peer failed first: exits with status 2, silently (the peer reports)."""

    def __init__(self) -> None:
        super().__init__(2)


def agree(exc: BaseException | None) -> None:
    """Collective: if any rank passes an exception, every rank stops. The lowest failing rank re-raises
    its own exception (its message is the one shown); the others raise :class:`PeerFailed`."""
    if world_size() == 1:
        if exc is not None:
            raise exc
        return
    failed = [r for r, bad in enumerate(all_gather_object(exc is not None)) if bad]
    if not failed:
        return
    if exc is not None and rank() == failed[0]:
        raise exc
    raise PeerFailed()


def collective(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; if it raises on any rank, every rank stops (:func:`agree`)."""
    result, err = None, None
    try:
        result = fn()
    except Exception as exc:
        err = exc
    agree(err)
    return result  # type: ignore[return-value]


def run_on_main_first(first: Callable[[], T], then: Callable[[Any], T], share: Callable[[T], Any]) -> T:
    """``first()`` on rank 0, then ``then(share(rank 0's result))`` on the other ranks once rank 0 is done
    (e.g. rank 0 fills a cache the others then only read, and settles the config); an error on any rank
    stops every rank, reported once (:func:`agree`)."""
    result, err, shared = None, None, None
    if is_main():
        try:
            result = first()
            shared = share(result)
        except Exception as exc:
            err = exc
    agree(err)
    shared = broadcast_object(shared)
    if not is_main():
        try:
            result = then(shared)
        except Exception as exc:
            err = exc
    agree(err)
    return result  # type: ignore[return-value]


def prepare_on_ranks(prepare: Callable[..., Any], cfg: Any, data: Any, out: Any, unlabeled: Any,
                     resume: bool, progress: bool) -> Any:
    """:func:`advseg.training.api.prepare_training` on every rank: rank 0 first (it checks the run folder,
    settles the config, e.g. the one saved in a run being resumed, and fills the preprocessing cache),
    then the other ranks with rank 0's config, without looking at the run folder and without a progress
    bar; finally each rank's own sampler streams (:func:`reseed_streams`)."""
    if world_size() == 1:
        return prepare(cfg, data, out, unlabeled, resume, progress)
    result = run_on_main_first(
        lambda: prepare(cfg, data, out, unlabeled, resume, progress),
        lambda settled: prepare(settled, data, out, unlabeled, resume, False, check_out=False),
        share=lambda r: r[0],
    )
    tdata = result[1]
    reseed_streams([tdata.labeled.sampler, tdata.unlabeled.sampler if tdata.unlabeled else None])
    return result


def stream_seed(seed: int, r: int | None = None) -> int | list[int]:
    """Seed of rank ``r``'s sampler generator: ``seed`` itself on rank 0 (the single-process stream),
    the ``SeedSequence`` entropy ``[seed, r]`` on rank r > 0 (independent PCG64 streams)."""
    r = rank() if r is None else r
    return int(seed) if r == 0 else [int(seed), int(r)]


def reseed_streams(samplers: Sequence[Any], r: int | None = None) -> None:
    """Give this rank its own stream in every sampler (each keeps its own base seed)."""
    r = rank() if r is None else r
    if r == 0:
        return
    for s in samplers:
        if s is not None and hasattr(s, "reseed"):
            s.reseed(stream_seed(s.base_seed, r))


def seed_rank_rngs(seed: int, r: int | None = None) -> None:
    """Seed the global RNGs (torch, numpy, random) of rank r > 0 with ``seed + RANK_SEED_STRIDE * r``
    (instance noise, dropout, input noise differ between ranks); rank 0 keeps the single-process state."""
    r = rank() if r is None else r
    if r == 0:
        return
    s = int(seed) + RANK_SEED_STRIDE * r
    torch.manual_seed(s)
    np.random.seed(s % 2**32)  # noqa: NPY002 - the legacy global state some libraries use
    random.seed(s)


def wrap(module: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> Any:
    """``module`` in DistributedDataParallel on ``device`` (a no-op on one process).

    Only the forward passes whose gradients are to be averaged may go through the wrapper; forward
    passes of a frozen net (D inside S's step) or without gradient (validation on rank 0) use the
    module itself, so the wrapper's reducer never waits for gradients that do not come.
    """
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics and the like) on every rank. DDP sends them at
    the start of each wrapped forward pass; after the last pass each rank holds its own update, and
    nets without a wrapper (a Mean Teacher's teacher) never get them: this makes every rank's nets equal
    to what rank 0 checkpoints."""
    if world_size() == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def to_cpu(obj: Any) -> Any:
    """Tensors of a (nested) state moved to the CPU, for the object collectives."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
