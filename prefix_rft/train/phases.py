"""What the supervised parts of a run train on: the SFT phase (`sft.epochs` passes over the
demonstrations, before RL) and ReLIFT (SFT steps inside the RL phase on demonstrations of the
problems the policy failed). Both train every demo token under the NLL rule (token mean); the
trainer runs their updates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from prefix_rft.core import loss as L
from prefix_rft.train.planner import Trajectory, seeded_rng


def sft_pairs(indices: Sequence[int], problems: Sequence, seed: int,
              sft_step: int) -> list[tuple[int, int]]:
    """(problem, demonstration) of each problem of SFT step `sft_step`: one demonstration drawn
    per problem."""
    rng = seeded_rng(seed, "sft-demo", sft_step)
    return [(i, rng.randrange(len(problems[i].demonstrations))) for i in indices]


def sft_trajectories(pairs: Sequence[tuple[int, int]], max_len: int,
                     prompt_ids: Callable[[int], list[int]],
                     demo_ids: Callable[[int, int], list[int]]) -> list[Trajectory]:
    """One demo trajectory per (problem, demonstration), cut to `max_len` tokens, every token
    under the NLL rule."""
    trajs = []
    for g, (i, d) in enumerate(pairs):
        demo = demo_ids(i, d)[:max_len]
        t = Trajectory(g, i, "demo", prompt_ids(i), demo, len(demo), False)
        t.rule = torch.full((len(demo),), L.RULE_NLL, dtype=torch.int8)
        trajs.append(t)
    return trajs


def relift_failures(trajs: Sequence[Trajectory], problems: Sequence, seed: int,
                    step: int) -> list[tuple[int, int]]:
    """ReLIFT's new buffer entries of RL step `step`: (problem, demonstration drawn) of every
    group whose policy samples all failed."""
    groups: dict[int, list[Trajectory]] = {}
    for t in trajs:
        if t.kind == "policy":
            groups.setdefault(t.group, []).append(t)
    rng = seeded_rng(seed, "relift", step)
    found = []
    for members in groups.values():
        if members and all(t.reward <= 0 for t in members):
            i = members[0].problem
            if problems[i].demonstrations:
                found.append((i, rng.randrange(len(problems[i].demonstrations))))
    return found
