"""Rollout engines with their own copy of the weights (vLLM's situation), on CPU through a test
engine that decodes from a second model (`tests/copy_engine.py`): the trainer pushes the policy
into it before every rollout phase, the pushes are never stale, the rollout/trainer log-prob gap
is measured, and truncated importance sampling weights the generated tokens exactly.
The same stale-weight check runs against vLLM in tests/test_vllm_engine.py where a GPU is."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from prefix_rft.rollout.engines import GenerationRequest, SamplingParams
from prefix_rft.rollout.engines.weight_sync import hf_name, policy_weights
from prefix_rft.train import logprobs as lp
from prefix_rft.train.update import prepare_minibatch
from tests.copy_engine import COPY, copy_engine
from tests.test_trainer import _cfg, _prepared, _trainer


def test_hf_names_drop_wrapper_parts():
    assert hf_name("model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "model.layers.0.mlp.up_proj.weight"
    assert hf_name("_orig_mod.model.norm.weight") == "model.norm.weight"


def test_policy_weights_are_the_state_dict_in_the_engine_dtype(smol_tokenizer):
    tr = _trainer(_cfg(), smol_tokenizer)
    sd = tr.model.state_dict()
    got = dict(policy_weights(tr.model, torch.bfloat16))
    # tied input/output embeddings come once; every other tensor is there, cast
    assert set(got) == {n for n, _ in tr.model.named_parameters()}
    for name, t in got.items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, sd[name].to(torch.bfloat16))


def _sums(model) -> dict[str, float]:
    return {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}


def test_every_rollout_phase_gets_the_current_weights(smol_tokenizer):
    with copy_engine() as built:
        tr = _trainer(_cfg(rollout={"engine": COPY}), smol_tokenizer)
        (engine,) = built
        assert tr.engine is engine and tr.rollout_logprobs  # auto: on for a weight-synced engine
        seen = []
        for _ in range(2):
            before = _sums(tr.model)
            m = tr.rl_step()
            seen.append(before)
            assert m["time/weight_sync"] >= 0.0 and m["time/generation"] >= 0.0
            # same weights on both sides (float32 on CPU): the gap is rounding only
            assert m["rollout/logprob_gap_tokens"] > 0 and m["rollout/logprob_gap_mean"] < 1e-4
            assert m["rollout/logprob_gap_max"] < 1e-3 and m["rollout/logprob_gap_frac_gt_0.5"] == 0
        tr.evaluate(tr.train_set[:2])
    assert len(engine.pushes) == 3 and engine.released == 3
    # each push carried the weights the policy had when its rollout phase began
    for push, before in zip(engine.pushes, seen):
        assert push.keys() == before.keys()
        assert all(push[k] == pytest.approx(before[k], rel=1e-6, abs=1e-9) for k in push)
    assert engine.pushes[0] != engine.pushes[1]  # the optimizer step between them moved weights
    assert engine.pushes[2] == pytest.approx(_sums(tr.model), rel=1e-6)


def _engine_vs_trainer(tr, snapshot) -> tuple[float, float]:
    """Sample with the engine (after a push) and score the samples with the updated policy and
    with `snapshot`, the policy before the update: mean |engine - trainer| and |engine - old|."""
    prompts = [tr.ids.prompt(i) for i in range(3)]
    reqs = [GenerationRequest(p, 8, seed=11 + k) for k, p in enumerate(prompts)]
    sampling = SamplingParams(1.0, 1.0, seed=5, return_logprobs=True)
    with tr._rollout_phase():
        outs = tr.engine.generate(reqs, 1, sampling)
    engine, new, old = [], [], []
    for req, (out,) in zip(reqs, outs):
        for model, into in ((tr.model, new), (snapshot, old)):
            scored, _ = lp.score(model, [req.prompt_ids], [out.token_ids], pad_id=tr.pad_id,
                                 temperature=1.0, micro_batch_size=1, with_entropy=False)
            into.append(scored[0].float())
        engine.append(torch.tensor(out.logprobs))
    engine, new, old = torch.cat(engine), torch.cat(new), torch.cat(old)
    return float((engine - new).abs().mean()), float((engine - old).abs().mean())


def check_no_stale_weights(tr, tol: float) -> None:
    """One optimizer step with a large learning rate, then the engine's log-probs of what it
    samples must be the updated policy's (within `tol`) and far from the old policy's."""
    snapshot = copy.deepcopy(tr.model).eval()
    tr.rl_step()
    to_new, to_old = _engine_vs_trainer(tr, snapshot)
    assert to_new < tol, f"engine vs updated policy: mean |d logp| = {to_new:.4g}"
    assert to_old > 10 * max(to_new, tol / 10), \
        f"the update did not reach the engine: {to_old:.4g} from the old policy, {to_new:.4g} from the new"


def test_stale_weights_are_detected(smol_tokenizer):
    with copy_engine():
        cfg = _cfg("rl_sft_loss", rollout={"engine": COPY}, rl={"steps": 1, "num_minibatches": 1,
                                                 "optim": {"lr": 3e-2, "warmup_ratio": 0.0}})
        check_no_stale_weights(_trainer(cfg, smol_tokenizer), tol=1e-4)
        # the same check fails when the pushes stop after the first rollout phase
        stale = _trainer(cfg, smol_tokenizer)
        pushes = [0]

        def first_push_only():
            pushes[0] += 1
            return type(stale)._sync_engine(stale) if pushes[0] == 1 else 0.0

        stale._sync_engine = first_push_only
        with pytest.raises(AssertionError, match="engine vs updated policy"):
            check_no_stale_weights(stale, tol=1e-4)


@pytest.mark.parametrize("shift,cap,factor", [(math.log(1.5), 2.0, 1.5), (math.log(3.0), 2.0, 2.0),
                                              (-math.log(2.0), 2.0, 0.5)])
def test_tis_scales_generated_tokens_by_the_capped_ratio(smol_tokenizer, shift, cap, factor):
    """RFT: every trained token was sampled by the engine. With pi_rollout = pi_old / e^shift
    for every token the truncated weight is min(e^shift, cap) everywhere, so the TIS gradient is
    exactly that factor times the uncorrected one."""
    grads = {}
    for mode in ("off", "tis"):
        tr = _trainer(_cfg("rft", loss={"rollout_correction": mode,
                                        "rollout_correction_cap": cap}), smol_tokenizer)
        trajs = _prepared(tr)
        for t in trajs:
            t.rollout_logp = t.old_logp - shift
        prepare_minibatch(trajs, torch.Generator().manual_seed(1), "dr_grpo", tr.cfg.loss,
                          tr.cfg.rollout.max_response_len)
        gap: dict = {}
        tr.model.zero_grad(set_to_none=True)
        tr.updater.backward_minibatch(trajs, 4, 0.0, 1.0, gap=gap)
        grads[mode] = torch.cat([p.grad.flatten() for p in tr.model.parameters()
                                 if p.grad is not None])
        n = sum(len(t.response_ids) for t in trajs)
        assert gap["count"] == n and gap["sum"] == pytest.approx(abs(shift) * n, rel=1e-5)
    assert grads["off"].norm() > 0
    expected = factor * grads["off"]
    assert float((grads["tis"] - expected).norm() / expected.norm()) < 1e-5
