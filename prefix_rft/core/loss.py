"""The one hybrid token-level loss (docs/ALGORITHM.md sections 1, 3 and 4).

grad L = -(1/Z) [ sum_{t generated} a_it grad log pi(y_it) + sum_{t demo} b_it grad log pi(y*_it) ]

Every response token carries a *rule* (how its weight is built) and, after entropy selection, a
*keep* flag; a per-token *norm* holds the exact aggregation constant of its term, computed over
the whole optimizer mini-batch before it is split into micro-batches, so gradient accumulation
gives the same gradient as one big batch. Methods differ only in which rule each token gets.
"""

from __future__ import annotations

import math

import torch

# Per-token weight rules.
RULE_NONE = 0  # not trained (frozen prefix, DR-PO prefix, padding)
RULE_PPO = 1  # -min(r A, clip(r) A)                      (paper Eq. 3)
RULE_PPO_NOCLIP = 2  # -r A                                  (demo tokens, clip_demo_tokens=false)
RULE_SHAPED = 3  # -A f(pi), f(pi) = pi / (pi + gamma), pi_old = 1    (LUFFY policy shaping)
RULE_NLL = 4  # -coef log pi                                (SFT, RL+SFT loss, UFT hint)
PG_RULES = (RULE_PPO, RULE_PPO_NOCLIP, RULE_SHAPED)


# ---------------------------------------------------------------------------- advantages
def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_i = R_i - mean_j R_j over one group (Dr. GRPO: no std division)."""
    rewards = rewards.double()
    return (rewards - rewards.mean()).float()


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i - mean) / (std + eps), std unbiased as in TRL's GRPOTrainer."""
    rewards = rewards.double()
    std = rewards.std(unbiased=True) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    return ((rewards - rewards.mean()) / (std + eps)).float()


def group_advantages(rewards: list[float], kind: str) -> list[float]:
    """Advantages of one group of rewards (`kind` = 'dr_grpo' or 'grpo')."""
    r = torch.tensor(rewards, dtype=torch.float64)
    a = dr_grpo_advantages(r) if kind == "dr_grpo" else grpo_advantages(r)
    return a.tolist()


# ---------------------------------------------------------------------------- token losses
def ppo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    eps_low: float,
    eps_high: float,
    clip: torch.Tensor | bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token PPO loss l = -min(r A, clip(r, 1-eps_low, 1+eps_high) A), r = exp(logp - old).

    `clip` (bool or bool tensor) switches the clip off per token (then l = -r A). Returns
    (loss, clipped_low, clipped_high): the clip masks where the clipped branch was active.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    clip_t = torch.as_tensor(clip, device=logp.device, dtype=torch.bool)
    loss = torch.where(clip_t, -torch.minimum(unclipped, clipped), -unclipped)
    low = clip_t & (ratio < 1.0 - eps_low) & (adv < 0)
    high = clip_t & (ratio > 1.0 + eps_high) & (adv > 0)
    return loss, low, high


def luffy_shaped_loss(logp: torch.Tensor, adv: torch.Tensor, gamma: float) -> torch.Tensor:
    """LUFFY off-policy token loss: -A * f(pi), f(pi) = pi / (pi + gamma), pi_old = 1, no clip."""
    p = torch.exp(logp)
    return -adv * p / (p + gamma)


def nll_token_loss(logp: torch.Tensor, coef: float | torch.Tensor = 1.0) -> torch.Tensor:
    """SFT negative log-likelihood per token, times `coef`."""
    return -coef * logp


def token_losses(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    rule: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    gamma: float,
    nll_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of every token under its rule (0 for RULE_NONE); also the PPO clip masks."""
    ppo, low, high = ppo_token_loss(
        logp, old_logp, adv, eps_low, eps_high, clip=(rule == RULE_PPO)
    )
    shaped = luffy_shaped_loss(logp, adv, gamma)
    nll = nll_token_loss(logp, nll_coef)
    zero = torch.zeros_like(logp)
    out = torch.where((rule == RULE_PPO) | (rule == RULE_PPO_NOCLIP), ppo, zero)
    out = torch.where(rule == RULE_SHAPED, shaped, out)
    out = torch.where(rule == RULE_NLL, nll, out)
    is_ppo = rule == RULE_PPO
    return out, low & is_ppo, high & is_ppo


# ---------------------------------------------------------------------------- rollout engine vs trainer
def rollout_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                       cap: float) -> torch.Tensor:
    """Truncated importance weights of tokens sampled by a rollout engine whose distribution
    differs from the trainer's: w = min(pi_old / pi_rollout, cap) = min(exp(old - rollout), cap)
    where `mask` is set (tokens the engine sampled, with a log-prob), 1 elsewhere. Detached: the
    weight rescales a token's PPO term, it is not differentiated.

    With it the PPO term of a generated token is  w * -min(r A, clip(r) A),  r = pi / pi_old:
    the policy gradient the trainer's pi_old would have given, estimated from samples of the
    engine's pi_rollout, with the weight capped so that a token the engine found far likelier
    than the trainer cannot dominate the batch (truncated importance sampling)."""
    ratio = torch.exp((old_logp - rollout_logp).detach().float()).clamp(max=cap)
    return torch.where(mask, ratio, torch.ones_like(ratio))


def logprob_gap(trainer_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                threshold: float = 0.5) -> dict:
    """|trainer log-prob - rollout log-prob| over the `mask`ed tokens as sums that add up over
    micro-batches and ranks: {"sum", "max", "over" (tokens above `threshold`), "count"}."""
    d = (trainer_logp.detach().float() - rollout_logp.float()).abs()[mask]
    return {"sum": float(d.sum()), "max": float(d.max()) if d.numel() else 0.0,
            "over": int((d > threshold).sum()), "count": int(d.numel())}


# ---------------------------------------------------------------------------- entropy selection
def select_by_entropy(
    entropy: torch.Tensor,
    fraction: float,
    mode: str = "top",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Keep mask over candidate tokens (one flat tensor for the whole mini-batch).

    top: the k = ceil(fraction * n) highest-entropy tokens (paper: top 20%); bottom: the lowest;
    random: k uniformly chosen; all: every token. Ties are broken by position (earlier first),
    so the result is deterministic and independent of micro-batching.
    """
    n = entropy.numel()
    keep = torch.zeros(n, dtype=torch.bool)
    if n == 0:
        return keep
    if mode == "all":
        return torch.ones(n, dtype=torch.bool)
    k = min(n, math.ceil(fraction * n - 1e-9))
    ent = entropy.detach().float().cpu()
    if mode == "top":
        order = torch.sort(-ent, stable=True).indices
    elif mode == "bottom":
        order = torch.sort(ent, stable=True).indices
    elif mode == "random":
        order = torch.randperm(n, generator=generator)
    else:
        raise ValueError(f"unknown entropy selection mode {mode!r}")
    keep[order[:k]] = True
    return keep


# ---------------------------------------------------------------------------- aggregation
def token_norms(
    rules: list[torch.Tensor],
    keeps: list[torch.Tensor],
    in_group: list[bool],
    *,
    aggregation: str,
    max_response_len: int,
) -> list[torch.Tensor]:
    """Per-token aggregation constants over one optimizer mini-batch of trajectories.

    Policy-gradient tokens: dr_grpo -> 1 / (N_traj * L_max) with N_traj = in-group trajectories
    of the mini-batch (Dr. GRPO, exact); token_mean -> 1 / (kept pg tokens of the mini-batch);
    seq_mean_token_mean -> 1 / (N_traj * kept pg tokens of the trajectory).
    NLL tokens: 1 / (kept NLL tokens of the mini-batch) (token-mean SFT loss).
    Summing loss * norm over micro-batches equals the mini-batch loss exactly.
    """
    n_traj = max(1, sum(1 for g in in_group if g))
    pg_tokens = sum(int((_is_pg(r) & k).sum()) for r, k in zip(rules, keeps))
    nll_tokens = sum(int(((r == RULE_NLL) & k).sum()) for r, k in zip(rules, keeps))
    norms = []
    for r, k in zip(rules, keeps):
        norm = torch.zeros(r.shape, dtype=torch.float64)
        pg = _is_pg(r) & k
        if aggregation == "dr_grpo":
            norm[pg] = 1.0 / (n_traj * max_response_len)
        elif aggregation == "token_mean":
            norm[pg] = 1.0 / max(1, pg_tokens)
        elif aggregation == "seq_mean_token_mean":
            norm[pg] = 1.0 / (n_traj * max(1, int(pg.sum())))
        else:
            raise ValueError(f"unknown aggregation {aggregation!r}")
        norm[(r == RULE_NLL) & k] = 1.0 / max(1, nll_tokens)
        norms.append(norm.float())
    return norms


def _is_pg(rule: torch.Tensor) -> torch.Tensor:
    return (rule == RULE_PPO) | (rule == RULE_PPO_NOCLIP) | (rule == RULE_SHAPED)
