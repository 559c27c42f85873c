"""Learning on CPU with a tiny random model where the initial policy never earns reward.

RFT gets no signal at all: every group is all-wrong, every advantage is 0 and the weights do not
move. Prefix-RFT's prefixed member starts from the demonstration and earns reward, so its groups
have non-zero advantages; one update raises the log-prob of the kept (top-20% entropy) demo tokens
and lowers that of the failed on-policy samples. SFT raises greedy accuracy above 0.

Scope, honestly: with a 2-layer, 64-wide random model and a test-sized budget, Prefix-RFT does not
yet make the policy's *own* samples correct (we tried up to 100 steps). The real-model run of
`make demo` (SmolLM2-135M-Instruct, docs/DEMO.md) shows that part: on-policy reward 0 -> 0.71
and held-out accuracy 0.000 -> 0.656 in 20 steps on the 2-core CPU.
"""

from __future__ import annotations

import pytest

from prefix_rft.config import deep_merge, resolve
from prefix_rft.data import Problem
from prefix_rft.trainer import Trainer

pytestmark = pytest.mark.slow

PROBLEMS = [Problem(f"p{a}{b}", f"What is {a} + {b}?", str(a + b), (f"\\boxed{{{a + b}}}",))
            for a in range(3) for b in range(3)]

BASE = {
    "model": {"name_or_path": "unused", "device": "cpu",
              "random_init": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "seed": 0}},
    "data": {"train": "unused"},
    # demos are 7 tokens ("\boxed{4}" + end of turn): the window starts at ratio 1.0 (prefix =
    # all but the last token) and decays to 0.8, so the prefixed member carries the answer
    "rollout": {"num_prompts": 9, "group_size": 8, "max_response_len": 7,
                "prefix_schedule": {"start": 1.0, "high": 1.0, "end": 0.8, "total_steps": 20}},
    "rl": {"steps": 20, "num_minibatches": 1, "micro_batch_size": 72, "demo_nll_prompts": 9,
           "optim": {"lr": 1e-3, "weight_decay": 0.0}},
    "eval": {"num_problems": 9, "max_new_tokens": 8},
    "reward": {"num_workers": 0},
}


def _fit(smol_tokenizer, over):
    tr = Trainer(resolve(deep_merge(BASE, over)), tokenizer=smol_tokenizer, train=PROBLEMS,
                 test=PROBLEMS, progress=False)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.fit()
    return tr, before


def test_rft_gets_no_signal(smol_tokenizer):
    tr, before = _fit(smol_tokenizer, {"method": "rft"})
    assert len(tr.history) == 20
    assert all(m["reward/mean"] == 0.0 and m["groups/all_wrong"] == 1.0 for m in tr.history)
    assert all(m["grad_norm"] == 0.0 for m in tr.history)
    assert all((a == b).all() for a, b in zip(before, tr.model.parameters()))
    assert tr.evaluate()["eval/accuracy"] == 0.0


def test_prefix_rft_earns_reward_where_rft_cannot(smol_tokenizer):
    tr, before = _fit(smol_tokenizer, {"method": "prefix_rft", "rl": {"steps": 8}})
    h = tr.history
    assert all(m["reward/policy_mean"] == 0.0 for m in h)  # its own samples start at 0 ...
    assert all(m["reward/prefix_mean"] == 1.0 for m in h)  # ... the prefixed member earns it
    assert all(m["reward/mean"] == 1 / 8 and m["prefix/advantage"] == 1.0 for m in h)
    assert all(m["grad_norm"] > 0 for m in h)
    assert all(0 < m["entropy/kept_fraction"] <= 0.25 for m in h)  # top-20% of demo tokens
    assert any((a != b).any() for a, b in zip(before, tr.model.parameters()))


def test_prefix_rft_update_pulls_policy_towards_kept_demo_tokens(smol_tokenizer):
    """One real Prefix-RFT update: kept demo tokens (positive advantage) gain log-prob, the
    failed on-policy samples (negative advantage) lose it, dropped demo tokens get no gradient."""
    from prefix_rft import logprobs as lp
    from prefix_rft.trainer import rule_for_tokens

    tr = Trainer(resolve(deep_merge(BASE, {"method": "prefix_rft", "rl": {"optim": {"lr": 1e-2}}})),
                 tokenizer=smol_tokenizer, train=PROBLEMS, test=[], progress=False)
    trajs, _ = tr.plan_and_generate(list(range(9)))
    tr.score_rewards(trajs)
    tr.assign_advantages(trajs)
    for t in trajs:
        t.rule = rule_for_tokens(t, tr.cfg.loss)

    def logps():
        out, _ = lp.score(tr.model, [t.prompt_ids for t in trajs], [t.response_ids for t in trajs],
                          pad_id=tr.pad_id, temperature=1.0, micro_batch_size=72, with_entropy=False)
        return out

    old = logps()
    tr.update(trajs, micro=72, minibatches=1, epochs=1, opt=tr.opt, sched=tr.sched,
              optim_cfg=tr.cfg.rl.optim, nll_coef=0.1, aggregation="dr_grpo", temperature=1.0,
              seed_key=("test",))
    new = logps()
    kept_gain = sum(float((n - o)[t.keep & t.demo_mask].sum())
                    for t, o, n in zip(trajs, old, new) if t.kind == "prefix")
    failed_gain = sum(float((n - o).sum()) for t, o, n in zip(trajs, old, new) if t.kind == "policy")
    assert kept_gain > 0 > failed_gain, (kept_gain, failed_gain)


def test_sft_raises_accuracy(smol_tokenizer):
    tr, _ = _fit(smol_tokenizer, {"method": "sft", "rl": {"steps": 0},
                                  "sft": {"epochs": 60, "batch_size": 9, "micro_batch_size": 9,
                                          "optim": {"lr": 1e-2}}})
    assert tr.history[-1]["loss"] < 1.0 < tr.history[0]["loss"]
    assert tr.evaluate()["eval/accuracy"] > 0.0
