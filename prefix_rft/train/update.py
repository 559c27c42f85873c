"""The optimisation side of a step: scoring passes (old log-probs, entropies), entropy
selection of candidate tokens, exact aggregation norms, micro-batch backward and the optimizer
step, for RL, SFT and ReLIFT updates alike.

The old-log-prob pass is skipped when the update is on-policy (one optimizer step per rollout
batch): pi_old is then the detached log-prob of the backward pass itself, the same loss and
gradient (`Updater.update` says why). Entropies that rank tokens come from a no-grad pass over
only the rows that hold such tokens (Prefix-RFT's prefixed members). Scoring and backward passes
run per micro-batch of trajectories, padded or packed into one padding-free row
(`prefix_rft/train/logprobs.py`); both give the same per-token log-probs, so the loss code is one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from prefix_rft.core import loss as L
from prefix_rft.core.config import OptimConfig
from prefix_rft.train import distributed as D
from prefix_rft.train import logprobs as lp
from prefix_rft.train.planner import (
    Trajectory,
    on_policy,
    owned_groups,
    seeded_rng,
    split_minibatches,
)


def candidates(t: Trajectory, entropy_scope: str) -> torch.Tensor:
    """Tokens ranked by entropy (demo tokens, or generated tokens with `entropy_scope` other
    than "demo") that are trained at all."""
    demo = t.demo_mask
    scope = demo if entropy_scope == "demo" else ~demo
    return scope & (t.rule != L.RULE_NONE)


def prepare_minibatch(trajs: Sequence[Trajectory], generator: torch.Generator, aggregation: str,
                      loss_cfg, max_response_len: int, select: bool = True) -> dict:
    """Entropy selection over the whole mini-batch (`select`: RL updates only; SFT trains
    every demo token) and the exact aggregation norms; sets each trajectory's `keep` and
    `norm` and returns the selection and token metrics."""
    lc = loss_cfg
    cands = [candidates(t, lc.entropy_scope) if select
             else torch.zeros(len(t.response_ids), dtype=torch.bool) for t in trajs]
    n_cand = sum(int(c.sum()) for c in cands)
    metrics: dict = {}
    for t in trajs:
        t.keep = torch.ones(len(t.response_ids), dtype=torch.bool)
    if n_cand and lc.entropy_selection != "all":
        ents = torch.cat([t.entropy[c] for t, c in zip(trajs, cands)])
        keep = L.select_by_entropy(ents, lc.entropy_fraction, lc.entropy_selection, generator)
        off = 0
        for t, c in zip(trajs, cands):
            k = int(c.sum())
            t.keep[c] = keep[off : off + k]
            off += k
        metrics["entropy/kept_fraction"] = float(keep.float().mean())
        if keep.any():
            metrics["entropy/kept_mean"] = float(ents[keep].mean())
        if (~keep).any():
            metrics["entropy/dropped_mean"] = float(ents[~keep].mean())
    elif n_cand:
        metrics["entropy/kept_fraction"] = 1.0
    norms = L.token_norms(
        [t.rule for t in trajs], [t.keep for t in trajs], [t.in_group for t in trajs],
        aggregation=aggregation, max_response_len=max_response_len,
    )
    for t, n in zip(trajs, norms):
        t.norm = n
    trained = [(t.rule != L.RULE_NONE) & t.keep for t in trajs]
    n_trained = sum(int(x.sum()) for x in trained)
    n_demo = sum(int((x & t.demo_mask).sum()) for x, t in zip(trained, trajs))
    metrics["tokens/trained"] = n_trained
    metrics["tokens/demo_share"] = n_demo / n_trained if n_trained else 0.0
    return metrics


def _rollout_rows(ps, chunk: Sequence[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of tokens the rollout engine sampled with a log-prob, those log-probs, 0 elsewhere)
    in the layout of the pass `ps`."""
    rows = [t.rollout_logp if t.rollout_logp is not None
            else torch.full((len(t.response_ids),), float("nan")) for t in chunk]
    sampled = ps.put([~torch.isnan(r) for r in rows], False, torch.bool)
    values = ps.put([torch.nan_to_num(r, nan=0.0) for r in rows], 0.0, torch.float32)
    return sampled, values


def _add_gap(into: dict, part: dict) -> None:
    for k, v in part.items():
        into[k] = max(into.get(k, v), v) if k == "max" else into.get(k, 0) + v


def gap_metrics(gap: dict) -> dict:
    """The step's log-prob gap metrics from this rank's sums (collective under torchrun)."""
    count = D.all_reduce_sum(gap.get("count", 0))
    if not count:
        return {}
    return {"rollout/logprob_gap_mean": D.all_reduce_sum(gap["sum"]) / count,
            "rollout/logprob_gap_max": max(D.gather_objects(gap["max"])),
            "rollout/logprob_gap_frac_gt_0.5": D.all_reduce_sum(gap["over"]) / count,
            "rollout/logprob_gap_tokens": count}


def _summarise(agg: dict[str, list]) -> dict:
    """One update's metrics from its mini-batches': means, clip ratios over PPO tokens, the
    summed loss."""
    out = {k: sum(v) / len(v) for k, v in agg.items() if k not in ("clip_low", "clip_high", "n_ppo")}
    n_ppo = sum(agg.get("n_ppo", [0]))
    out["clip_ratio/low_mean"] = sum(agg.get("clip_low", [0])) / n_ppo if n_ppo else 0.0
    out["clip_ratio/high_mean"] = sum(agg.get("clip_high", [0])) / n_ppo if n_ppo else 0.0
    out["loss"] = sum(agg.get("loss", [0.0]))
    return out


class Updater:
    """Scores and updates `model` with the hybrid loss of `loss_cfg`. Holds what every pass
    shares (padding id, packing, autocast) and nothing of the run's progress: `update` returns
    how many optimizer steps it took."""

    def __init__(self, model, *, loss_cfg, max_response_len: int, seed: int, pad_id: int,
                 packed: bool, autocast: torch.dtype | None, world_size: int):
        self.model, self.loss_cfg, self.max_response_len = model, loss_cfg, max_response_len
        self.seed, self.pad_id, self.packed, self.autocast = seed, pad_id, packed, autocast
        self.world_size = world_size

    # ------------------------------------------------------------------ passes
    def _pass_options(self, micro: int, temperature: float, with_entropy: bool) -> dict:
        """Keyword arguments of `lp.passes` / `lp.score` for this model."""
        return {"pad_id": self.pad_id, "micro_batch_size": micro, "temperature": temperature,
                "with_entropy": with_entropy, "chunk": self.loss_cfg.entropy_chunk_size,
                "packed": self.packed, "autocast": self.autocast}

    def score_ids(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  micro: int, temperature: float, with_entropy: bool):
        """`lp.score` of the model (no grad: old log-probs, entropies, demo NLL)."""
        return lp.score(self.model, prompts, responses,
                        **self._pass_options(micro, temperature, with_entropy))

    def score(self, trajs: Sequence[Trajectory], with_entropy: bool, micro: int,
              temperature: float):
        """Log-probs (and entropies) of the trajectories' responses, no grad."""
        return self.score_ids([t.prompt_ids for t in trajs], [t.response_ids for t in trajs],
                              micro, temperature, with_entropy)

    def entropies(self, trajs: Sequence[Trajectory], micro: int,
                  temperature: float) -> list[torch.Tensor]:
        """Per-token entropies of the trajectories that hold entropy-ranked tokens (a no-grad
        pass over those rows alone); zeros, never read, for the others. Under torchrun every row
        is scored: FSDP2 needs the same number of forwards on every rank, and the ranks' counts
        of ranked rows may differ (a prefix cut to 0 tokens)."""
        scope = self.loss_cfg.entropy_scope
        ranked = [i for i, t in enumerate(trajs)
                  if self.world_size > 1 or bool(candidates(t, scope).any())]
        out = [torch.zeros(len(t.response_ids)) for t in trajs]
        if ranked:
            _, ents = self.score([trajs[i] for i in ranked], True, micro, temperature)
            for i, e in zip(ranked, ents):
                out[i] = e
        return out

    # ------------------------------------------------------------------ gradients
    def backward_minibatch(self, trajs: Sequence[Trajectory], micro: int, nll_coef: float,
                           temperature: float, old_is_current: bool = False,
                           gap: dict | None = None) -> dict:
        """Accumulate gradients of the mini-batch loss over micro-batches (exact).
        `old_is_current`: PPO-rule tokens take pi_old = the detached log-probs of this very pass
        (on-policy update, `update`), not `old_logp`. Tokens the rollout engine sampled with a
        log-prob (`rollout_logp`) are compared with pi_old into `gap` (sums, `L.logprob_gap`)
        when one is given, and weighted by `L.rollout_is_weights` under loss.rollout_correction
        tis."""
        lc = self.loss_cfg
        tis = lc.rollout_correction == "tis"
        total_loss, low, high, n_ppo = 0.0, 0, 0, 0
        prompts, responses = [t.prompt_ids for t in trajs], [t.response_ids for t in trajs]
        for s, ps in lp.passes(self.model, prompts, responses,
                               **self._pass_options(micro, temperature, False)):
            chunk = trajs[s : s + micro]
            logp = ps.logp
            rule = ps.put([t.rule for t in chunk], L.RULE_NONE, torch.int8)
            keep = ps.put([t.keep for t in chunk], False, torch.bool)
            norm = ps.put([t.norm for t in chunk], 0.0, torch.float32)
            old = ps.put([t.old_logp for t in chunk], 0.0, torch.float32)
            ppo_rule = (rule == L.RULE_PPO) | (rule == L.RULE_PPO_NOCLIP)
            if old_is_current:
                old = torch.where(ppo_rule, logp.detach(), old)
            adv = ps.put([torch.full((len(t.response_ids),), t.advantage) for t in chunk], 0.0,
                         torch.float32)
            tok, lo, hi = L.token_losses(
                logp, old, adv, rule, eps_low=lc.clip_eps_low, eps_high=lc.clip_eps_high,
                gamma=lc.shaping_gamma, nll_coef=nll_coef,
            )
            if gap is not None or tis:
                sampled, rollout = _rollout_rows(ps, chunk)
                sampled &= ppo_rule
                if gap is not None:
                    _add_gap(gap, L.logprob_gap(old, rollout, sampled))
                if tis:
                    tok = tok * L.rollout_is_weights(old, rollout, sampled,
                                                     lc.rollout_correction_cap)
            loss = (tok * (norm * keep)).sum()
            loss.backward()
            total_loss += float(loss.detach())
            low += int((lo & keep).sum())
            high += int((hi & keep).sum())
            n_ppo += int(((rule == L.RULE_PPO) & keep).sum())
            del ps, logp, tok, loss
        return {"loss": total_loss, "clip_low": low, "clip_high": high, "n_ppo": n_ppo}

    def optimizer_step(self, opt, sched, grad_clip: float) -> float:
        """Clip (grad_clip > 0) and step; returns the global gradient norm before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        gn = 0.0
        if params:  # an infinite max norm measures without clipping (scale clamped to 1)
            max_norm = grad_clip if grad_clip and grad_clip > 0 else float("inf")
            gn = D.total_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return gn

    # ------------------------------------------------------------------ the update
    def _old_logprobs(self, own: list[Trajectory], need_entropy: bool, stale_old: bool,
                      micro: int, temperature: float) -> float:
        """Set `old_logp` (zeros where the backward pass provides pi_old) and `entropy` of this
        rank's trajectories; returns the seconds of the no-grad pass (0 when none ran)."""
        t0 = time.perf_counter()
        if stale_old:
            old, ents = self.score(own, need_entropy, micro, temperature)
        else:
            old = [torch.zeros(len(t.response_ids)) for t in own]
            ents = self.entropies(own, micro, temperature) if need_entropy else None
        seconds = time.perf_counter() - t0 if stale_old or need_entropy else 0.0
        for t, o, e in zip(own, old, ents or [None] * len(own)):
            t.old_logp = torch.where(t.rule == L.RULE_SHAPED, torch.zeros_like(o), o)  # pi_old = 1
            t.entropy = e
        return seconds

    def update(self, trajs: list[Trajectory], *, micro: int, minibatches: int, epochs: int,
               opt, sched, optim_cfg: OptimConfig, nll_coef: float, aggregation: str,
               temperature: float, seed_key: tuple, select: bool = True,
               measure_gap: bool = False) -> tuple[dict, int]:
        """Old log-probs (and entropy where it ranks tokens), then `epochs` x `minibatches`
        optimizer steps over mini-batches of whole groups; returns the metrics and the number of
        optimizer steps. Every trajectory has its `rule`. `trajs` is the whole batch on every
        rank; a rank scores and back-propagates only its share of each mini-batch (all of it on
        one process). Entropies are gathered, so token selection and normalisers see the whole
        mini-batch, and gradients are summed.

        The old-log-prob pass is skipped when the update is on-policy (`epochs` = `minibatches`
        = 1: the one optimizer step runs on the policy that generated the batch): PPO-rule tokens
        then take pi_old = the detached log-probs of the backward pass itself, which gives the
        same loss and gradient (ratio = 1, clip inactive; TRL's GRPOTrainer does the same with
        num_iterations = 1). Where entropy ranks tokens, a no-grad pass still runs, but only over
        the trajectories that hold ranked tokens (Prefix-RFT: the prefixed member of each group,
        1 of 8 rows). With several optimizer steps the later ones need the stale pi_old of the
        rollout policy: then every row is scored (with its entropies, where they rank tokens).
        `time/old_logprobs` is the time of that no-grad pass (0 when none runs).
        `measure_gap`: the rollout/logprob_gap_* metrics over the tokens the engine sampled
        with log-probs (`gap_metrics`), measured in the first epoch, where every trajectory
        passes once against its rollout-time pi_old."""
        scope = self.loss_cfg.entropy_scope
        need_entropy = select and self.loss_cfg.entropy_selection != "all" and any(
            bool(candidates(t, scope).any()) for t in trajs
        )
        # pi_old is needed only by PPO-rule tokens (SFT/ReLIFT batches are all NLL: no pass)
        needs_old = any(
            bool(((t.rule == L.RULE_PPO) | (t.rule == L.RULE_PPO_NOCLIP)).any()) for t in trajs
        )
        old_is_current = on_policy(epochs, minibatches)
        groups = sorted({t.group for t in trajs})
        mine = set(owned_groups(groups, minibatches))
        own = [t for t in trajs if t.group in mine]
        old_seconds = self._old_logprobs(own, need_entropy, needs_old and not old_is_current,
                                         micro, temperature)
        agg: dict[str, list] = {}
        gap: dict = {}
        steps = 0
        for ep in range(epochs):
            for b, chunk in enumerate(split_minibatches(groups, minibatches)):
                batch = [t for t in trajs if t.group in set(chunk)]
                if not batch:
                    continue
                batch_own = [t for t in batch if t.group in mine]
                if need_entropy:
                    self._gather_entropies(batch, batch_own, steps == 0, micro, temperature)
                gen = torch.Generator().manual_seed(
                    seeded_rng(self.seed, "select", *seed_key, ep, b).getrandbits(62)
                )
                m = prepare_minibatch(batch, gen, aggregation, self.loss_cfg,
                                      self.max_response_len, select)
                bw = self.backward_minibatch(batch_own, micro, nll_coef, temperature,
                                             old_is_current, gap if measure_gap and ep == 0 else None)
                m.update({k: D.all_reduce_sum(v) for k, v in bw.items()})
                m["grad_norm"] = self.optimizer_step(opt, sched, optim_cfg.grad_clip)
                m["lr"] = sched.get_last_lr()[0]
                steps += 1
                for k, v in m.items():
                    agg.setdefault(k, []).append(v)
        out = _summarise(agg)
        out["time/old_logprobs"] = old_seconds
        if measure_gap:
            out.update(gap_metrics(gap))
        return out, steps

    def _gather_entropies(self, batch: list[Trajectory], batch_own: list[Trajectory],
                          first: bool, micro: int, temperature: float) -> None:
        """The mini-batch's entropies on every rank: after the first optimizer step those of
        the *current* policy (re-scored); every rank's rows in rank order = the mini-batch's."""
        if not first:
            for t, e in zip(batch_own, self.entropies(batch_own, micro, temperature)):
                t.entropy = e
        for t, e in zip(batch, D.gather_rows([t.entropy for t in batch_own])):
            t.entropy = e
