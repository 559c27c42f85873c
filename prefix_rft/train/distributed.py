"""Data-parallel training on one node: torchrun (one process per GPU) + FSDP2 sharding.

The algorithm must not change with the number of GPUs (docs/ALGORITHM.md). How the trainer keeps it:

* rollouts: each rank generates, and grades, only the groups it owns; every rollout has its own
  sampling seed (engines/base.py), so a group samples the same tokens whichever rank runs it.
  The finished trajectories (token ids, rewards) are then gathered, so every rank holds the whole
  step: advantages, metrics and the ReLIFT buffer are computed identically everywhere.
* update: a mini-batch's groups are split over ranks in contiguous ranges (`owned`), so the
  ranks' rows concatenated in rank order are the single-process rows. Entropies of the owned rows
  are gathered (`gather_rows`) and the entropy top-k and the loss normalisers are computed over
  the WHOLE mini-batch on every rank; each rank's loss is divided by the global normaliser, so
  the single-process gradient is the SUM of the ranks' gradients: FSDP2 reduce-scatters with a
  divide factor of 1 (`shard`).
* FSDP2 collectives need every rank to run the same number of forwards: the mini-batch split is
  even (config validation asks for divisible sizes), and generation runs on unsharded weights
  (`unsharded`) so ranks may decode different numbers of steps.
* checkpoints: full (unsharded) model and optimizer state dicts keyed by parameter name
  (`full_model_state` / `full_optimizer_state`), written by rank 0 in the Hugging Face layout: a
  checkpoint made on N GPUs resumes on M GPUs and loads in any HF tool.

Without a process group every function is the single-process identity, so the trainer calls
them unconditionally.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(timeout_minutes: int = 30) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment): NCCL with
    one GPU per LOCAL_RANK when CUDA is there, gloo on CPU. Returns whether one is active."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def device_for(name: str) -> torch.device:
    """The trainer's device: "auto" = this rank's GPU (cuda:LOCAL_RANK) or the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def owned(items: Sequence, rank: int | None = None, size: int | None = None) -> list:
    """This rank's contiguous share of `items` (len(items) must divide evenly by the world)."""
    r, s = world()
    rank, size = (r if rank is None else rank), (s if size is None else size)
    if len(items) % size:
        raise ValueError(f"{len(items)} items do not split evenly over {size} ranks")
    k = len(items) // size
    return list(items[rank * k : (rank + 1) * k])


def gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order."""
    _, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out


def gather_rows(rows: list) -> list:
    """Every rank's list of rows concatenated in rank order (rank 0's first)."""
    return [x for part in gather_objects(rows) for x in part]


def all_reduce_sum(x: float | int | torch.Tensor):
    """The sum over ranks (a Python number or a tensor, returned in the same kind)."""
    _, size = world()
    if size == 1:
        return x
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    if isinstance(x, torch.Tensor):
        t = x.detach().clone().to(dev or x.device)
    else:
        t = torch.tensor(float(x), dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if isinstance(x, torch.Tensor):
        return t.to(x.device)
    return int(round(t.item())) if isinstance(x, int) else t.item()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 (`fully_shard`) over the world: each transformer block its own unit (the classes in
    the model's `_no_split_modules`), the root holds embeddings, final norm and head (tied
    embeddings stay one parameter). Gradients are reduce-scattered as a SUM (divide factor 1):
    each rank's loss already carries the global normaliser. Identity on one process."""
    if world()[1] == 1:
        return model
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in blocks]
    if not units:
        raise ValueError(f"{type(model).__name__}: no transformer blocks to shard "
                         "(expected `_no_split_modules` classes in the model)")
    for m in units:
        fully_shard(m)
    fully_shard(model)
    for m in _fsdp_modules(model):  # per unit: these setters do not recurse
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM/AVG
    return model


@contextlib.contextmanager
def unsharded(model) -> Iterator[None]:
    """Full weights on every rank for the duration (generation): one all-gather up front, no
    collective per decode step, so ranks may run different numbers of forwards."""
    mods = _fsdp_modules(model)
    if not mods:
        yield
        return
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def full_model_state(model) -> dict[str, torch.Tensor]:
    """The unsharded model state dict on CPU (collective; rank 0 holds it, others get {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer state keyed by parameter name (collective; complete on rank 0)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_full_model_state(model, state: dict):
    """Load a full state dict (read by every rank) into a possibly sharded model; returns
    (missing keys, unexpected keys)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    return set_model_state_dict(model, state, options=_options(strict=False))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def total_norm(value) -> float:
    """A gradient norm as a float (FSDP2's clip_grad_norm_ returns a DTensor)."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)
