"""The trainer's two fast paths give the update of the plain path (tiny random model, float32, CPU):

* `model.packing: on` (padding-free packed rows) against `off` (padded micro-batches): one
  Prefix-RFT step (a prefixed member and the full demo per group, top-20% entropy selection of
  demo tokens, Dr. GRPO norms, 2 mini-batches of 3 micro-batches) and one SFT step (token-mean
  NLL, 2 micro-batches) agree in loss, gradient norm, every metric and every parameter after
  the optimizer steps (measured: 5e-7 relative; tolerance 1e-5); one backward with perturbed
  old log-probs (both clips active) agrees in gradients and clip counts.
  Every micro-batch mixes trajectories of different lengths, advantages and rules, so a dropped
  or shifted response token, or an advantage, rule or old log-prob given to the wrong sequence,
  changes the loss by far more than the tolerances.
* the on-policy update (one optimizer step per rollout batch) skips the old-log-prob pass and
  equals the update with that pass forced; with entropy selection a no-grad pass runs over the
  rows that hold ranked tokens only; with several optimizer steps per batch every row is scored.
"""

from __future__ import annotations

import copy

import pytest
import torch

from prefix_rft.core.config import OptimConfig
from prefix_rft.train import optim, precision
from prefix_rft.train import update as update_mod
from prefix_rft.train.update import prepare_minibatch
from tests.test_trainer import _cfg, _prepared, _rollouts, _trainer

TOL = 1e-5
# 2 policy samples + 1 prefixed member + the full demo (in the group: the random policy's groups
# then have a correct member, so advantages are non-zero); 2 mini-batches of 2 prompts = 8
# trajectories, micro-batches of 3 (3 + 3 + 2: groups split across micro-batches).
RL = {"rollout": {"n_prefixed": 1, "n_full_demo": 1, "demo_in_group": True, "max_response_len": 24},
      "rl": {"steps": 1, "num_minibatches": 2, "micro_batch_size": 3, "optim": {"lr": 1e-3}}}
SFT = {"sft": {"epochs": 1, "batch_size": 6, "micro_batch_size": 4, "max_len": 24,
               "optim": {"lr": 1e-3, "warmup_ratio": 0.0}}, "rl": {"steps": 0}}
SKIP = ("time/", "tokens/per_second")


def _params(model) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def _assert_same_update(start, a, b, tol=TOL):
    """Every parameter tensor agrees to `tol` relative, and the step moved it measurably."""
    assert a.keys() == b.keys() == start.keys()
    moved = 0
    for k in a:
        assert float((a[k] - b[k]).norm()) <= tol * float(b[k].norm()), k
        moved += int(((b[k] - start[k]).abs() > 1e-4).sum())
    assert moved > 0.5 * sum(v.numel() for v in b.values())  # Adam's first step: ~lr each


def _assert_same_metrics(a: dict, b: dict, tol=TOL):
    keys = {k for k in a if not k.startswith(SKIP)}
    assert keys == {k for k in b if not k.startswith(SKIP)}
    for k in keys:
        if isinstance(b[k], str):  # phase
            assert a[k] == b[k], k
        else:
            assert a[k] == pytest.approx(b[k], rel=tol, abs=1e-9), k


def _pair(tok, method, over):
    """The same trainer (seed, weights) with packing on and off."""
    on = _trainer(_cfg(method, model={"packing": "on"}, **over), tok)
    off = _trainer(_cfg(method, model={"packing": "off"}, **over), tok)
    assert on.packed and not off.packed
    return on, off


def test_packing_auto_is_padded_on_cpu(smol_tokenizer):
    tr = _trainer(_cfg(), smol_tokenizer)
    assert tr.cfg.model.packing == "auto" and tr.device.type == "cpu" and not tr.packed


def test_prefix_rft_step_packed_equals_padded(smol_tokenizer):
    on, off = _pair(smol_tokenizer, "prefix_rft", RL)
    start = _params(off.model)
    m_on, m_off = on.rl_step(), off.rl_step()
    # the step did what it is meant to test: demo tokens selected by entropy, clipped ratios
    # possible in the second mini-batch, real gradients, two optimizer steps
    assert 0 < m_off["entropy/kept_fraction"] < 1 and m_off["tokens/demo_share"] > 0
    assert m_off["grad_norm"] > 0 and m_off["loss"] != 0 and off.state.optimizer_steps == 2
    assert m_off["time/old_logprobs"] > 0  # entropy ranks demo tokens: the pass runs
    _assert_same_metrics(m_on, m_off)
    _assert_same_update(start, _params(on.model), _params(off.model))


def test_sft_step_packed_equals_padded(smol_tokenizer):
    on, off = _pair(smol_tokenizer, "sft", SFT)
    start = _params(off.model)
    m_on, m_off = on.sft_step(), off.sft_step()
    assert m_off["grad_norm"] > 0 and m_off["loss"] > 0 and m_off["time/old_logprobs"] == 0.0
    _assert_same_metrics(m_on, m_off)
    _assert_same_update(start, _params(on.model), _params(off.model))


@pytest.mark.parametrize("method", ["prefix_rft", "luffy", "rl_sft_loss"])
def test_backward_packed_equals_padded_with_clipping(smol_tokenizer, method):
    """Perturbed old log-probs put ratios beyond both clips: gradients and clip counts agree
    (PPO, LUFFY's shaped and the NLL rule)."""
    on, off = _pair(smol_tokenizer, method, {})
    trajs = _prepared(off)
    out = {}
    for tr in (on, off):
        tr.model.zero_grad(set_to_none=True)
        prepare_minibatch(trajs, torch.Generator().manual_seed(1), tr.cfg.loss.aggregation,
                          tr.cfg.loss, tr.cfg.rollout.max_response_len)
        out[tr.packed] = tr.updater.backward_minibatch(trajs, 5, tr.cfg.loss.demo_nll_coef, 1.0)
    assert out[False]["clip_low"] > 0 and out[False]["clip_high"] > 0
    assert {k: out[True][k] for k in ("clip_low", "clip_high", "n_ppo")} == {
        k: out[False][k] for k in ("clip_low", "clip_high", "n_ppo")}
    assert out[True]["loss"] == pytest.approx(out[False]["loss"], rel=TOL)
    for (k, a), b in zip(on.model.named_parameters(), off.model.parameters()):
        assert float((a.grad - b.grad).norm()) <= TOL * float(b.grad.norm()), k


# ---------------------------------------------------------------------------- on-policy shortcut
def _update(tr, trajs):
    c = tr.cfg
    return tr.update(trajs, micro=c.rl.micro_batch_size, minibatches=c.rl.num_minibatches,
                     epochs=c.rl.ppo_epochs, opt=tr.opt, sched=tr.sched, optim_cfg=c.rl.optim,
                     nll_coef=c.loss.demo_nll_coef, aggregation=c.loss.aggregation,
                     temperature=c.rollout.temperature, seed_key=("t",))


def _count_scoring(monkeypatch, tr) -> list:
    calls = []
    score = tr.updater.score

    def counted(*a, **k):
        calls.append(a)
        return score(*a, **k)

    monkeypatch.setattr(tr.updater, "score", counted)
    return calls


@pytest.mark.parametrize("packing", ["off", "on"])
def test_on_policy_update_skips_the_old_logprob_pass(smol_tokenizer, monkeypatch, packing):
    over = {"model": {"packing": packing}, "rl": {"num_minibatches": 1, "ppo_epochs": 1}}
    fast, forced = (_trainer(_cfg("rft", **over), smol_tokenizer) for _ in range(2))
    trajs = _rollouts(fast)
    assert any(t.advantage != 0 for t in trajs)
    start = _params(fast.model)
    calls = _count_scoring(monkeypatch, fast)
    m_fast = _update(fast, copy.deepcopy(trajs))
    assert calls == [] and m_fast["time/old_logprobs"] == 0.0
    # the same update with pi_old from the scoring pass
    forced_calls = _count_scoring(monkeypatch, forced)
    monkeypatch.setattr(update_mod, "on_policy", lambda epochs, minibatches: False)
    m_forced = _update(forced, copy.deepcopy(trajs))
    assert len(forced_calls) == 1 and m_forced["time/old_logprobs"] > 0
    assert m_forced["grad_norm"] > 0
    _assert_same_metrics(m_fast, m_forced, tol=1e-6)
    _assert_same_update(start, _params(fast.model), _params(forced.model), tol=1e-6)


@pytest.mark.parametrize("packing", ["off", "on"])
def test_on_policy_entropy_pass_scores_only_ranked_rows(smol_tokenizer, monkeypatch, packing):
    """Prefix-RFT on-policy: entropies rank demo tokens, which only the prefixed members hold, so
    the no-grad pass runs over those rows alone; the update equals the one where every row is
    scored and pi_old comes from that pass (the previous behaviour)."""
    over = {"model": {"packing": packing}, "rollout": {"n_prefixed": 1, "max_response_len": 24},
            "rl": {"num_minibatches": 1, "ppo_epochs": 1}}
    fast, full = (_trainer(_cfg("prefix_rft", **over), smol_tokenizer) for _ in range(2))
    trajs = _rollouts(fast)
    prefixed = [t for t in trajs if t.demo_len > 0]
    assert 0 < len(prefixed) < len(trajs) and any(t.advantage != 0 for t in trajs)
    start = _params(fast.model)
    calls = _count_scoring(monkeypatch, fast)
    m_fast = _update(fast, copy.deepcopy(trajs))
    assert len(calls) == 1 and len(calls[0][0]) == len(prefixed)  # the prefixed rows only
    assert all(t.kind == "prefix" for t in calls[0][0]) and m_fast["time/old_logprobs"] > 0
    assert 0 < m_fast["entropy/kept_fraction"] < 1
    full_calls = _count_scoring(monkeypatch, full)
    monkeypatch.setattr(update_mod, "on_policy", lambda epochs, minibatches: False)
    m_full = _update(full, copy.deepcopy(trajs))
    assert len(full_calls) == 1 and len(full_calls[0][0]) == len(trajs)
    _assert_same_metrics(m_fast, m_full, tol=1e-6)
    _assert_same_update(start, _params(fast.model), _params(full.model), tol=1e-6)


@pytest.mark.parametrize("method,minibatches,epochs", [
    ("rft", 2, 1), ("rft", 1, 2),  # the later optimizer steps need the rollout policy's pi_old
    ("prefix_rft", 1, 1),  # entropy selection: a no-grad pass over the prefixed rows
])
def test_old_logprob_pass_runs_when_needed(smol_tokenizer, monkeypatch, method, minibatches, epochs):
    tr = _trainer(_cfg(method, rl={"num_minibatches": minibatches, "ppo_epochs": epochs}),
                  smol_tokenizer)
    trajs = _rollouts(tr)
    calls = _count_scoring(monkeypatch, tr)
    m = _update(tr, trajs)
    assert len(calls) == 1 and m["time/old_logprobs"] > 0
    assert tr.state.optimizer_steps == minibatches * epochs


@pytest.mark.parametrize("packing,device,dtype,attn,want", [
    ("auto", "cuda", "bfloat16", "sdpa", True),  # FlashAttention varlen: one kernel a layer
    ("auto", "cuda", "float16", "sdpa", True),
    ("auto", "cuda", "float32", "sdpa", False),  # one SDPA call per sequence: padded is faster
    ("auto", "cuda", "float32", "flash_attention_2", True),
    ("auto", "cpu", "bfloat16", "sdpa", False),
    ("on", "cpu", "float32", "sdpa", True),
    ("off", "cuda", "bfloat16", "sdpa", False),
])
def test_packing_auto_is_on_where_packed_attention_is_one_kernel(packing, device, dtype, attn,
                                                                 want):
    from prefix_rft.core.config import ModelConfig

    cfg = ModelConfig(name_or_path="m", packing=packing, dtype=dtype, attn_implementation=attn)
    assert precision.use_packing(cfg, torch.device(device)) is want


def test_fused_adamw_for_plain_parameters():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert optim._fused_adamw(cpu)
    assert not optim._fused_adamw([])
    assert not optim._fused_adamw([torch.nn.Parameter(torch.zeros(2, device="meta"))])
    opt, _ = optim.make_optimizer(cpu, OptimConfig(), 1)
    assert opt.param_groups[0].get("fused")


def test_fused_adamw_step_equals_the_default_one():
    """The fused CPU kernel computes AdamW's update (weight decay, bias correction) as the default
    implementation does, to float32 rounding, over several steps."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(1000, generator=gen)
    grads = [torch.randn(1000, generator=gen) for _ in range(3)]
    out = []
    for fused in (True, False):
        p = torch.nn.Parameter(start.clone())
        opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1, fused=fused)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out.append(p.detach())
    assert float((out[0] - start).abs().max()) > 1e-2  # three steps of ~lr each moved it
    assert torch.allclose(out[0], out[1], rtol=0, atol=1e-6)


def test_compile_layers_wraps_every_decoder_layer():
    from prefix_rft.errors import UserError
    from prefix_rft.models import tiny_random_model

    m = tiny_random_model(64, hidden_size=16, num_layers=3, num_heads=2)
    assert precision.compile_layers(m) == 3
    assert all(layer._compiled_call_impl is not None for layer in m.model.layers)
    with pytest.raises(UserError, match="model.compile_layers"):
        precision.compile_layers(torch.nn.Linear(2, 2))
