"""Trainer behaviour on a tiny random model with SmolLM2's real tokenizer: exact gradient
accumulation, the prefix round trip in token-id space, and bit-exact resume."""

from __future__ import annotations

import json
import random

import pytest
import torch

from prefix_rft.core import loss as L
from prefix_rft.core.config import resolve
from prefix_rft.data import Problem
from prefix_rft.errors import UserError
from prefix_rft.rollout.engines.hf import HFEngine
from prefix_rft.train import planner as P
from prefix_rft.train.grading import assign_advantages
from prefix_rft.train.planner import Trajectory, rule_for_tokens
from prefix_rft.train.trainer import Trainer
from prefix_rft.train.update import prepare_minibatch

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "seed": 0}


def _problems(n=6):
    out = []
    for k in range(n):
        a, b = k % 3, k // 3
        out.append(Problem(f"p{k}", f"What is {a} + {b}?", str(a + b),
                           (f"We add {a} and {b}.\n{a} + {b} = {a + b}.\nThe answer is \\boxed{{{a + b}}}.",
                            f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}.")))
    return out


def _cfg(method="prefix_rft", **over):
    data = {
        "method": method,
        "model": {"name_or_path": "unused", "random_init": dict(TINY), "device": "cpu"},
        "data": {"train": "unused"},
        "rollout": {"num_prompts": 4, "group_size": 4, "max_response_len": 24,
                    "prefix_schedule": {"total_steps": 10}},
        "rl": {"steps": 4, "num_minibatches": 2, "micro_batch_size": 3, "demo_nll_prompts": 2,
               "optim": {"lr": 1e-3}},
        "reward": {"num_workers": 0},
        "eval": {"num_problems": 0},
    }
    from prefix_rft.core.dicts import deep_merge

    return resolve(deep_merge(data, over))


def _trainer(cfg, tok, **kw):
    return Trainer(cfg, tokenizer=tok, train=_problems(), test=[], progress=False, **kw)


class RecordingEngine(HFEngine):
    """The real HF engine, keeping every request it was given."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.requests = []

    def generate(self, requests, n, sampling):
        self.requests.extend(requests)
        return super().generate(requests, n, sampling)


def test_prefix_round_trip_token_ids(smol_tokenizer):
    cfg = _cfg(rollout={"n_prefixed": 2, "prefix_schedule": {"kind": "uniform"}})
    tr = _trainer(cfg, smol_tokenizer)
    tr.engine = RecordingEngine(tr.model, smol_tokenizer, tr.stop_ids)
    trajs, _ = tr.plan_and_generate([0, 1, 2, 3])
    prefixed = [t for t in trajs if t.kind == "prefix"]
    assert len(prefixed) == 8 and len([t for t in trajs if t.kind == "policy"]) == 8
    prefix_requests = [r for r in tr.engine.requests if len(r.prefix_ids) > 0]
    assert len(prefix_requests) == 8
    for t in prefixed:
        m = t.demo_len
        demos = [tr.ids.demo(t.problem, d) for d in range(2)]
        demo = next(d for d in demos if t.response_ids[:m] == d[:m])
        assert 1 <= m <= len(demo) - 1
        # the trained response starts with exactly the m demo ids
        assert t.response_ids[:m] == demo[:m]
        # ... and the engine saw prompt_ids + demo_ids[:m], exactly, with L_max - m new tokens
        match = [r for r in prefix_requests if r.input_ids == tr.ids.prompt(t.problem) + demo[:m]]
        assert match and match[0].max_new_tokens == cfg.rollout.max_response_len - m
        assert len(t.response_ids) <= cfg.rollout.max_response_len
        assert bool(t.demo_mask[:m].all()) and not bool(t.demo_mask[m:].any())


def _rollouts(tr, seed=0):
    """A rollout batch with hand-set rewards (the random policy earns none by itself) and rules."""
    trajs, _ = tr.plan_and_generate([0, 1, 2, 3])
    rng = random.Random(seed)
    for t in trajs:
        t.reward = float(rng.random() < 0.5)
    assign_advantages(trajs, tr.cfg.loss.advantage)
    for t in trajs:
        t.rule = rule_for_tokens(t, tr.cfg.loss)
    return trajs


def _prepared(tr, seed=0):
    """`_rollouts` with perturbed old log-probs (ratios != 1) and entropies."""
    trajs = _rollouts(tr, seed)
    old, ents = tr.updater.score(trajs, True, 4, tr.cfg.rollout.temperature)
    gen = torch.Generator().manual_seed(seed)
    for t, o, e in zip(trajs, old, ents):
        t.old_logp = o + 0.3 * torch.randn(o.shape, generator=gen)  # ratios on both sides of the clip
        t.entropy = e
    return trajs


@pytest.mark.parametrize("method", ["prefix_rft", "luffy", "rl_sft_loss"])
def test_gradient_identical_for_micro_batch_sizes(smol_tokenizer, method):
    over = {"rollout": {"n_prefixed": 1}} if method == "prefix_rft" else {}
    tr = _trainer(_cfg(method, **over), smol_tokenizer)
    trajs = _prepared(tr)
    assert any(t.demo_len for t in trajs)
    grads = {}
    for micro in (1, 2, len(trajs)):
        tr.model.zero_grad(set_to_none=True)
        prepare_minibatch(trajs, torch.Generator().manual_seed(1), tr.cfg.loss.aggregation,
                          tr.cfg.loss, tr.cfg.rollout.max_response_len)
        out = tr.updater.backward_minibatch(trajs, micro, tr.cfg.loss.demo_nll_coef, 1.0)
        grads[micro] = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
        assert out["loss"] != 0.0
    full = grads[len(trajs)]
    assert full.norm() > 0
    for micro in (1, 2):
        rel = (grads[micro] - full).norm() / full.norm()
        assert rel < 1e-6, (micro, float(rel))


def test_clip_metrics_and_loss_sign(smol_tokenizer):
    tr = _trainer(_cfg(), smol_tokenizer)
    trajs = _prepared(tr)
    prepare_minibatch(trajs, torch.Generator().manual_seed(1), "dr_grpo", tr.cfg.loss,
                      tr.cfg.rollout.max_response_len)
    out = tr.updater.backward_minibatch(trajs, 4, 0.1, 1.0)
    # perturbed old log-probs put some ratios outside [0.8, 1.2]
    assert out["n_ppo"] > 0 and out["clip_low"] + out["clip_high"] > 0
    # dr_grpo norms: each kept pg token weighs 1 / (N_traj * L_max) = 1 / (16 * 24)
    pg = [t.norm[(t.rule == L.RULE_PPO) & t.keep] for t in trajs]
    assert torch.allclose(torch.cat(pg), torch.full((sum(len(x) for x in pg),), 1 / (16 * 24)))


def _params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.slow
def test_resume_matches_straight_run(smol_tokenizer, tmp_path):
    cfg = _cfg(relift={"enabled": False})
    straight = _trainer(cfg, smol_tokenizer)
    straight.fit()
    assert straight.state.global_step == 4

    first = _trainer(cfg, smol_tokenizer)
    first.fit(max_steps=2)
    ck = first.save(tmp_path / "step-000002")
    resumed = _trainer(cfg, smol_tokenizer)
    resumed.load(ck)
    assert resumed.state.global_step == 2
    resumed.fit()

    a, b = _params(straight.model), _params(resumed.model)
    assert float((a - b).norm() / a.norm()) < 1e-6
    assert (straight.state.rl_epoch, straight.state.rl_cursor) == (resumed.state.rl_epoch, resumed.state.rl_cursor)
    for key in ("prefix/low", "reward/mean", "loss", "completions/mean_length"):
        assert [m.get(key) for m in straight.history[2:]] == [m.get(key) for m in resumed.history], key
    # the optimizer state came back too (Adam's step counter and moments)
    sa, sb = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert float(sa[0]["step"]) == float(sb[0]["step"]) == 8.0
    assert torch.allclose(sa[0]["exp_avg_sq"], sb[0]["exp_avg_sq"], rtol=1e-6, atol=0)


@pytest.mark.slow
def test_relift_buffer_and_optimizer_survive_resume(smol_tokenizer, tmp_path):
    cfg = _cfg("relift", relift={"buffer_size": 6, "micro_batch_size": 4})
    tr = _trainer(cfg, smol_tokenizer)
    tr.fit(max_steps=2)  # random policy: every group fails -> 4 prompts per step into the buffer
    assert tr.state.relift_steps == 1 and len(tr.state.relift_buffer) == 2
    assert tr.history[1]["relift/steps"] == 1
    ck = tr.save(tmp_path / "ck")
    back = _trainer(cfg, smol_tokenizer)
    back.load(ck)
    assert back.state.relift_buffer == tr.state.relift_buffer
    assert back.relift_opt.state_dict()["state"].keys() == tr.relift_opt.state_dict()["state"].keys()
    assert float(back.relift_opt.state_dict()["state"][0]["step"]) == 1.0


def test_fit_writes_checkpoints_by_one_save_policy(smol_tokenizer, tmp_path):
    """`save_every` counts SFT and RL steps together; a checkpoint due on the call's last step is
    the final one only; the SFT -> RL switch happens before a checkpoint is taken."""
    cfg = _cfg(sft={"epochs": 1, "batch_size": 4, "micro_batch_size": 4}, rl={"steps": 2},
               save_every=3)
    tr = _trainer(cfg, smol_tokenizer, output_dir=tmp_path / "run")
    seen = []

    def hook(path, final):
        state = json.loads((path / "state.json").read_text())
        seen.append((path.relative_to(tmp_path).as_posix(), final, state["phase"]))

    tr.fit(max_steps=2, on_checkpoint=hook)  # the 2 SFT steps (6 problems, batches of 4)
    assert seen == [("run/checkpoints/step-000000", True, "rl")]
    tr.fit(on_checkpoint=hook)  # train_steps 3 (a multiple of 3, more to come) and the end at 4
    assert seen[1:] == [("run/checkpoints/step-000001", False, "rl"),
                        ("run/checkpoints/step-000002", True, "done")]
    with pytest.raises(ValueError, match="output_dir"):
        _trainer(cfg, smol_tokenizer).fit(on_checkpoint=hook)


def _demo_nll_by_hand(tr, problems) -> float:
    """Token-mean NLL of each problem's first demonstration after its prompt: one plain forward
    pass per problem, summed over all their demo tokens (independent of the trainer's scorer)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in problems:
            prompt, demo = tr.ids.prompt(i), tr.ids.demo(i, 0)
            logits = tr.model(torch.tensor([prompt + demo])).logits[0].float()
            logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            total -= float(logp.gather(1, torch.tensor(demo)[:, None]).sum())
            count += len(demo)
    return total / count


def test_sft_and_rl_steps_both_log_demo_nll_after_their_update(smol_tokenizer):
    """`demo/nll` means one thing in every phase (the SFT and RL curves share it): the NLL of the
    first `rl.demo_nll_prompts` problems' first demonstration, under the policy after the step."""
    cfg = _cfg("sft_then_rft", sft={"epochs": 1, "batch_size": 4, "micro_batch_size": 4,
                                    "optim": {"lr": 1e-2}}, rl={"steps": 1})
    tr = _trainer(cfg, smol_tokenizer)
    batch = P.next_indices(cfg.seed, "sft", 0, 0, 4, 6)[0]  # the first SFT step's problems
    before = _demo_nll_by_hand(tr, batch[:2])
    m = tr.sft_step()
    after = _demo_nll_by_hand(tr, batch[:2])
    assert m["phase"] == "sft" and after < before - 0.1  # the step moved the policy
    assert m["demo/nll"] == pytest.approx(after, rel=1e-4)
    tr.fit()  # the rest of the data (6 problems in batches of 4), then the RL step
    rl = tr.history[-1]
    assert [h["phase"] for h in tr.history] == ["sft", "sft", "rl"]
    assert rl["demo/nll"] == pytest.approx(_demo_nll_by_hand(tr, P.next_indices(
        cfg.seed, "rl", 0, 0, 4, 6)[0][:2]), rel=1e-4)
    off = _trainer(_cfg("sft", sft={"epochs": 1, "batch_size": 4}, rl={"steps": 0,
                                                                       "demo_nll_prompts": 0}),
                   smol_tokenizer)
    assert "demo/nll" not in off.sft_step()


def test_final_model_only_checkpoint(smol_tokenizer, tmp_path):
    """fit(final_model_only=True): only the checkpoint of the finished run leaves out the
    optimizer and scheduler; it loads as a finished run, and a larger budget is refused by name
    instead of continuing with a fresh optimizer."""
    cfg = _cfg(rl={"steps": 2}, relift={"enabled": False})
    tr = _trainer(cfg, smol_tokenizer, output_dir=tmp_path / "run")
    seen = []
    tr.fit(max_steps=1, on_checkpoint=lambda p, final: seen.append(p), final_model_only=True)
    tr.fit(on_checkpoint=lambda p, final: seen.append(p), final_model_only=True)
    first, last = (torch.load(p / "trainer_state.pt", weights_only=False) for p in seen)
    assert [p.name for p in seen] == ["step-000001", "step-000002"]
    assert first["model_only"] is False and first["optimizer"] is not None  # phase rl: full
    assert last["model_only"] is True and last["state"]["phase"] == "done"
    assert last["optimizer"] is None and last["scheduler"] is None
    assert json.loads((seen[1] / "state.json").read_text())["model_only"] is True

    back = _trainer(cfg, smol_tokenizer)
    back.load(seen[1])  # the finished run: nothing to continue, the weights are the run's
    assert back.state.phase == "done" and back.state.global_step == 2
    assert torch.equal(_params(back.model), _params(tr.model))
    more = _trainer(_cfg(rl={"steps": 3}, relift={"enabled": False}), smol_tokenizer)
    with pytest.raises(UserError, match=rf"^{seen[1]} holds the model only .* cannot continue "
                       "the rl phase"):
        more.load(seen[1])
    more.load(seen[0])  # the full checkpoint of step 1 continues as before
    assert more.state.global_step == 1 and more.opt.state_dict()["state"]


def test_checkpoint_format_imports_nothing_from_the_trainer():
    from tests.test_architecture import ROOT, import_graph

    imported = set(import_graph(ROOT, ("prefix_rft",)).successors("prefix_rft.train.checkpoint"))
    assert imported and not any(m.startswith("prefix_rft.train.trainer") for m in imported), imported


def test_luffy_full_demo_member_is_not_generated(smol_tokenizer):
    tr = _trainer(_cfg("luffy", rollout={"max_response_len": 48}), smol_tokenizer)
    tr.engine = RecordingEngine(tr.model, smol_tokenizer, tr.stop_ids)
    trajs, _ = tr.plan_and_generate([0, 1, 2, 3])
    # 3 on-policy samples per prompt are generated; the 4th member is the whole demo, not generated
    assert len(tr.engine.requests) == 12
    assert all(len(r.prefix_ids) == 0 for r in tr.engine.requests)
    demos = [t for t in trajs if t.kind == "demo"]
    assert len(demos) == 4
    for t in demos:
        assert t.in_group and t.demo_len == len(t.response_ids)
        assert t.response_ids in [tr.ids.demo(t.problem, d) for d in range(2)]
        assert bool((rule_for_tokens(t, tr.cfg.loss) == L.RULE_SHAPED).all())
    # pi_old = 1 for the off-policy tokens: their old log-prob is 0 after the scoring pass (which
    # runs with 2 optimizer steps; a 1-step update takes pi_old from the backward pass itself)
    for t in trajs:
        t.reward = 1.0 if t.kind == "demo" else 0.0
        t.rule = rule_for_tokens(t, tr.cfg.loss)
    assign_advantages(trajs, tr.cfg.loss.advantage)
    assert [t.advantage for t in trajs if t.group == 0] == [-0.25, -0.25, -0.25, 0.75]
    tr.update(trajs, micro=4, minibatches=2, epochs=1, opt=tr.opt, sched=tr.sched,
              optim_cfg=tr.cfg.rl.optim, nll_coef=0.1, aggregation="dr_grpo", temperature=1.0,
              seed_key=("t",))
    for t in trajs:
        assert (torch.count_nonzero(t.old_logp) == 0) == (t.kind == "demo")


def test_periodic_evaluation_is_recorded(smol_tokenizer):
    cfg = _cfg(rl={"steps": 2}, eval={"num_problems": 2, "every_steps": 1, "max_new_tokens": 4})
    tr = Trainer(cfg, tokenizer=smol_tokenizer, train=_problems(), test=_problems()[:2], progress=False)
    tr.fit()
    evals = [m for m in tr.history if m["phase"] == "eval"]
    assert [m["step"] for m in evals] == [1, 2]
    assert all(m["eval/num_problems"] == 2 and 0.0 <= m["eval/accuracy"] <= 1.0 for m in evals)


def test_progress_line_has_step_reward_loss_and_eta(smol_tokenizer, caplog):
    """One log line per step (what a Metaflow task log shows instead of a progress bar): the
    run's step out of its total (SFT + RL), reward, loss, demo NLL, the mean step time of this
    process so far and the time left at that pace."""
    tr = _trainer(_cfg("sft_then_rft", sft={"epochs": 1, "batch_size": 4}, rl={"steps": 10}),
                  smol_tokenizer)
    assert tr.total_steps == 2 + 10  # 8 problems in 2 SFT batches, then 10 RL steps
    tr.state.sft_step, tr.state.global_step = 2, 3  # 5 of 12 done
    tr.history = [{"phase": "sft", "time/step": 20.0}, {"phase": "eval", "time/step": 99.0},
                  {"phase": "rl", "time/step": 22.0}]
    line = tr.progress_line({"phase": "rl", "reward/mean": 0.34375, "reward/policy_mean": 0.25,
                             "loss": 0.0123456, "demo/nll": 0.2104})
    # pace (20 + 22) / 2 = 21 s; 7 steps left: 147 s
    assert line == ("step 5/12 rl | reward 0.344 (policy 0.250) | loss 0.01235 | demo nll 0.210 "
                    "| 21.0 s/step, ETA 2m 27s")
    tr.history = []
    assert tr.progress_line({"phase": "sft", "loss": 1.5}) == "step 5/12 sft | loss 1.5"
    with caplog.at_level("INFO", logger="prefix_rft.train.trainer"):
        m = tr.rl_step()
    assert [r.getMessage() for r in caplog.records] == [tr.progress_line(m)]
    assert caplog.records[0].getMessage().startswith("step 6/12 rl | reward ")


@pytest.mark.parametrize("seconds,text", [(0.4, "0s"), (59.6, "1m 00s"), (185, "3m 05s"),
                                          (7440, "2h 04m")])
def test_duration_text(seconds, text):
    from prefix_rft.train.trainer import _duration

    assert _duration(seconds) == text


@pytest.mark.parametrize("truncated", ["grade", "zero"])
def test_reward_of_a_response_cut_before_its_stop_token(smol_tokenizer, truncated):
    """`reward.truncated`: with 'zero' a correct answer in a rollout cut at L_max (finish
    reason 'length') earns 0 and is counted; a finished correct answer and a cut wrong one are
    graded as always. Real Math-Verify grading of real token ids."""
    tr = _trainer(_cfg(reward={"num_workers": 0, "truncated": truncated}), smol_tokenizer)
    p = tr.train_set[4]  # What is 1 + 1?
    ids = lambda text: smol_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    trajs = [Trajectory(0, 4, "policy", tr.ids.prompt(4), ids(text), 0, True, finish)
             for text, finish in [(f"So \\boxed{{{p.answer}}}.", "stop"),
                                  (f"So \\boxed{{{p.answer}}}.\nSo \\boxed{{{p.answer}}}.\nSo",
                                   "length"),
                                  ("So \\boxed{7}.\nSo", "length")]]
    tr.grade(trajs)
    cut = (0.0, "truncated") if truncated == "zero" else (1.0, "correct")
    assert [(t.reward, t.status) for t in trajs] == [(1.0, "correct"), cut, (0.0, "wrong")]
    m = tr.reward_metrics(trajs)
    assert m["reward/truncated"] == (1.0 if truncated == "zero" else 0.0)
    assert m["reward/mean"] == pytest.approx((1.0 + cut[0]) / 3)
