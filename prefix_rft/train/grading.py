"""From generated rollouts to learning signal: rewards of decoded answers, the failure check,
Dr. GRPO advantages per group and the step's rollout metrics."""

from __future__ import annotations

from collections.abc import Sequence

from prefix_rft.core import loss as L
from prefix_rft.train import distributed as D
from prefix_rft.train.planner import Trajectory, group_order


def grade(trajs: Sequence[Trajectory], tokenizer, answers: Sequence[str], grader,
          truncated: str) -> None:
    """Reward and status of each trajectory against its gold answer (`answers[k]` for
    `trajs[k]`). `truncated="zero"`: a correct answer in a response cut at L_max before its stop
    token earns 0, status 'truncated'."""
    texts = [tokenizer.decode(t.response_ids, skip_special_tokens=True) for t in trajs]
    zero_cut = truncated == "zero"
    for t, res in zip(trajs, grader.grade(texts, list(answers))):
        t.reward, t.status = res.reward, res.status
        if zero_cut and t.finish_reason == "length" and t.reward > 0:
            t.reward, t.status = 0.0, "truncated"


def reward_metrics(trajs: Sequence[Trajectory], max_failure_rate: float, step: int) -> dict:
    """Reward metrics of graded trajectories; fails the step when more than `max_failure_rate`
    of them timed out or errored in the grader."""
    from prefix_rft.rollout.reward import reward_metrics as metrics_of

    failures = sum(t.status in ("timeout", "error") for t in trajs)
    if trajs and failures / len(trajs) > max_failure_rate:
        raise RuntimeError(
            f"reward grading failed for {failures}/{len(trajs)} items (timeouts/errors) at "
            f"step {step}; see reward.max_failure_rate"
        )
    return metrics_of(trajs)


def gather_trajectories(trajs: list[Trajectory]) -> list[Trajectory]:
    """Every rank's graded rollouts, in group order (identity on one process)."""
    if D.world()[1] == 1:
        return trajs
    out = D.gather_rows(trajs)
    out.sort(key=group_order)
    return out


def assign_advantages(trajs: Sequence[Trajectory], advantage: str) -> None:
    """Each in-group member's advantage from its group's rewards (`loss.advantage`)."""
    groups: dict[int, list[Trajectory]] = {}
    for t in trajs:
        if t.in_group:
            groups.setdefault(t.group, []).append(t)
    for members in groups.values():
        advs = L.group_advantages([t.reward for t in members], advantage)
        for t, a in zip(members, advs):
            t.advantage = a


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def rollout_metrics(trajs: Sequence[Trajectory]) -> dict:
    """Rewards by member kind, completion lengths, and the share of all-correct / all-wrong
    groups of a graded step."""
    in_group = [t for t in trajs if t.in_group]
    pol = [t.reward for t in trajs if t.kind == "policy"]
    pre = [t.reward for t in trajs if t.kind == "prefix"]
    m = {
        "reward/mean": _mean(t.reward for t in in_group),
        "reward/policy_mean": _mean(pol),
        "completions/mean_length": _mean(len(t.response_ids) for t in trajs if t.kind != "demo"),
        "completions/clipped_ratio": _mean(t.finish_reason == "length" for t in trajs
                                           if t.kind != "demo"),
    }
    if pre:
        m["reward/prefix_mean"] = _mean(pre)
        m["prefix/advantage"] = m["reward/prefix_mean"] - m["reward/policy_mean"]
    groups: dict[int, list[float]] = {}
    for t in in_group:
        groups.setdefault(t.group, []).append(t.reward)
    m["groups/all_correct"] = _mean(all(r > 0 for r in g) for g in groups.values())
    m["groups/all_wrong"] = _mean(all(r <= 0 for r in g) for g in groups.values())
    return m
