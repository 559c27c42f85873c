"""Cross-rank pieces of the loss for data-parallel training (torchrun, one process per GPU).

The algorithm must not change with the number of GPUs (ALGORITHM.md). With a mini-batch split
over ranks in contiguous trajectory ranges (rank 0 the first ones, and so on):

* entropy selection: the top-k (k = ceil(f * n)) is taken over the WHOLE mini-batch's candidate
  tokens, not per rank: `select_by_entropy_global` gathers every rank's candidate entropies in
  rank order (which is the single-process order), selects with `loss.select_by_entropy` and
  returns this rank's slice. Random selection needs the same generator state on every rank.
* normalisers (trajectory and token counts of the Dr. GRPO / token-mean aggregations) are sums
  over ranks: `all_reduce_sum`.
* gradients: each rank divides its loss by the global normaliser, so the single-process gradient
  is the SUM of the ranks' gradients (`sum_gradients`), not their mean.

Without an initialised process group every function is the single-process identity, so the
trainer calls them unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from prefix_rft.loss import select_by_entropy


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_variable(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's 1-D tensor (lengths may differ), in rank order."""
    rank, size = world()
    if size == 1:
        return [t]
    n = torch.tensor([t.numel()], dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros(width, dtype=t.dtype)
    padded[: t.numel()] = t.detach().cpu()
    out = [torch.zeros(width, dtype=t.dtype) for _ in range(size)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())] for o, s in zip(out, sizes)]


def select_by_entropy_global(entropy: torch.Tensor, fraction: float, mode: str = "top",
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """This rank's keep mask of a selection made over all ranks' candidate tokens together."""
    rank, size = world()
    if size == 1:
        return select_by_entropy(entropy, fraction, mode, generator)
    parts = all_gather_variable(entropy.detach().float().cpu())
    keep = select_by_entropy(torch.cat(parts), fraction, mode, generator)
    start = sum(p.numel() for p in parts[:rank])
    return keep[start : start + entropy.numel()]


def all_reduce_sum(x: float | int | torch.Tensor):
    """The sum over ranks (a Python number or a tensor, returned in the same kind)."""
    _, size = world()
    if size == 1:
        return x
    t = x.detach().clone() if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if isinstance(x, torch.Tensor):
        return t
    return type(x)(t.item()) if isinstance(x, int) else t.item()


def sum_gradients(model: torch.nn.Module) -> None:
    """Replace each parameter's gradient by its sum over ranks (plain data parallel; FSDP2 does
    this in its reduce-scatter when its divide factor is set to 1)."""
    _, size = world()
    if size == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
