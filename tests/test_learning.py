"""Learning on CPU where the initial policy never earns reward: RFT stays at 0 while Prefix-RFT
and SFT raise it (the paper's central mechanism, on a tiny model).

The initial policy is a tiny random model first taught (with our own `sft` preset) the answer
format with a wrong habit: half of its answers are an empty box, half a box holding `x`
("The answer is \\boxed{}." / "The answer is \\boxed{x}.", what SmolLM2-135M-Instruct does with
an empty box). It never writes a number in the box, so every RFT group is all-wrong, every
advantage is 0, and RFT cannot move. Prefix-RFT's prefixed member starts from the demonstration
("The answer is \\boxed{3}."): it earns reward, and the box content, where the policy is unsure
(high entropy), is among the top-20% demo tokens that get the positive advantage; the policy
then starts to write numbers itself. Demos are 9 tokens, so the prefix window starts at ratio
1.0 (clamped to |y*| - 1 tokens) and decays to 0.8.
"""

from __future__ import annotations

import copy

import pytest

from prefix_rft.core.config import resolve
from prefix_rft.core.dicts import deep_merge
from prefix_rft.data import Problem
from prefix_rft.train import logprobs as lp
from prefix_rft.train.grading import assign_advantages
from prefix_rft.train.planner import rule_for_tokens
from prefix_rft.train.trainer import Trainer

pytestmark = pytest.mark.slow

ANSWER = "The answer is \\boxed{%s}."
PROBLEMS = [Problem(f"p{a}{b}", f"What is {a} + {b}?", str(a + b), (ANSWER % (a + b),))
            for a in range(3) for b in range(3)]
HABIT = [Problem(p.id, p.prompt, p.answer, (ANSWER % "", ANSWER % "x")) for p in PROBLEMS]

BASE = {
    "model": {"name_or_path": "unused", "device": "cpu",
              "random_init": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "seed": 0}},
    "data": {"train": "unused"},
    "rollout": {"num_prompts": 9, "group_size": 8, "max_response_len": 12,
                "prefix_schedule": {"start": 1.0, "high": 1.0, "end": 0.8, "total_steps": 40}},
    "rl": {"steps": 40, "num_minibatches": 1, "micro_batch_size": 72, "demo_nll_prompts": 9,
           "optim": {"lr": 3e-3, "weight_decay": 0.0}},
    "sft": {"batch_size": 9, "micro_batch_size": 9},
    "eval": {"num_problems": 9, "max_new_tokens": 12},
    "reward": {"num_workers": 0},
}


def _trainer(smol_tokenizer, over, train=PROBLEMS):
    return Trainer(resolve(deep_merge(BASE, over)), tokenizer=smol_tokenizer, train=train,
                   test=PROBLEMS, progress=False)


@pytest.fixture(scope="module")
def habit_policy(smol_tokenizer):
    """Weights of a policy that answers in the format but never puts a number in the box."""
    pre = _trainer(smol_tokenizer, {"method": "sft", "rl": {"steps": 0},
                                    "sft": {"epochs": 40, "optim": {"lr": 1e-2}}}, HABIT)
    pre.fit()
    ev = pre.evaluate()
    assert ev["eval/accuracy"] == 0.0
    assert all(s["completion"].startswith("The answer is \\boxed{") for s in ev["samples"])
    return copy.deepcopy(pre.model.state_dict())


def _run(smol_tokenizer, weights, over):
    tr = _trainer(smol_tokenizer, over)
    tr.model.load_state_dict(weights)
    tr.fit()
    return tr


def test_rft_stays_at_zero_reward(smol_tokenizer, habit_policy):
    tr = _run(smol_tokenizer, habit_policy, {"method": "rft", "rl": {"steps": 10}})
    assert len(tr.history) == 10
    assert all(m["reward/mean"] == 0.0 and m["groups/all_wrong"] == 1.0 for m in tr.history)
    assert all(m["grad_norm"] == 0.0 for m in tr.history)  # zero advantages: no signal at all
    assert all((p == habit_policy[k]).all() for k, p in tr.model.state_dict().items())
    assert tr.evaluate()["eval/accuracy"] == 0.0


def test_prefix_rft_raises_reward(smol_tokenizer, habit_policy):
    tr = _run(smol_tokenizer, habit_policy, {"method": "prefix_rft"})
    h = tr.history
    assert all(m["reward/policy_mean"] == 0.0 for m in h[:5])  # its own samples start at 0
    assert all(m["reward/prefix_mean"] == 1.0 for m in h[:5])  # the prefixed member earns it
    late = [m["reward/policy_mean"] for m in h[-10:]]
    assert sum(late) / len(late) > 0.03, late  # ... and then the policy's own samples do
    assert sum(m["demo/nll"] for m in h[-3:]) < sum(m["demo/nll"] for m in h[:3])
    assert tr.evaluate()["eval/accuracy"] > 0.0  # greedy answers with a number now


def test_sft_raises_accuracy(smol_tokenizer, habit_policy):
    tr = _run(smol_tokenizer, habit_policy, {"method": "sft", "rl": {"steps": 0},
                                             "sft": {"epochs": 30, "optim": {"lr": 3e-3}}})
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]
    assert tr.evaluate()["eval/accuracy"] > 0.0


def test_one_prefix_rft_update_pulls_towards_kept_demo_tokens(smol_tokenizer, habit_policy):
    """One real update: kept demo tokens (positive advantage) gain log-prob and the failed
    on-policy samples (negative advantage) lose it."""
    tr = _trainer(smol_tokenizer, {"method": "prefix_rft"})
    tr.model.load_state_dict(habit_policy)
    trajs, _ = tr.plan_and_generate(list(range(9)))
    tr.grade(trajs)
    tr.reward_metrics(trajs)
    assign_advantages(trajs, tr.cfg.loss.advantage)
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
