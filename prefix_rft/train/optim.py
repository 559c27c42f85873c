"""The optimizer of a training phase: AdamW (fused where the parameters allow) and its
learning-rate schedule (linear warm-up, then constant, linear or cosine decay)."""

from __future__ import annotations

import math

import torch

from prefix_rft.core.config import OptimConfig


def _lr_lambda(opt_cfg: OptimConfig, total_steps: int):
    """The LR factor of optimizer step `step`: warm-up over `warmup_ratio` of the steps, then
    `lr_schedule`."""
    warm = int(round(opt_cfg.warmup_ratio * total_steps))

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if opt_cfg.lr_schedule == "constant" or total_steps <= warm:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if opt_cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def _fused_adamw(params: list) -> bool:
    """torch's fused AdamW (one kernel, or one pass over memory, for every parameter's update,
    where the default foreach path runs several per step and tensor group) for plain CUDA and CPU
    parameters: on a 2-core CPU it updates SmolLM2-135M in 0.05 s instead of 0.31 s. Sharded
    (DTensor) parameters keep the default implementation."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()
    return bool(params) and all(
        p.device.type in ("cuda", "cpu") and p.is_floating_point() and not isinstance(p, DTensor)
        for p in params
    )


def make_optimizer(params, opt_cfg: OptimConfig, total_steps: int):
    """AdamW over `params` and its LR schedule for a phase of `total_steps` optimizer steps."""
    params = list(params)
    opt = torch.optim.AdamW(
        params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay, **({"fused": True} if _fused_adamw(params) else {}),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(opt_cfg, total_steps))
    return opt, sched


def reapply_schedule(sched) -> None:
    """Set each parameter group's learning rate to what `sched`'s own LR function gives at its
    current step. A scheduler restored from a checkpoint keeps the rate of the run that saved it
    until its next step; when the phase's total changed (a larger budget on resume) the next
    optimizer step must already use the new schedule. Unchanged total: the same value."""
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
