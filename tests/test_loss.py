"""The hybrid token-level loss (docs/ALGORITHM.md sections 1, 3, 4) and the per-token rules.

Every expected number is computed by hand in the comment next to it; nothing here calls the
function under test (or a re-implementation of it) to obtain an expectation.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefix_rft.core import loss as L
from prefix_rft.core.config import LossConfig, resolve
from prefix_rft.core.loss import (
    RULE_NLL,
    RULE_NONE,
    RULE_PPO,
    RULE_PPO_NOCLIP,
    RULE_SHAPED,
    dr_grpo_advantages,
    group_advantages,
    grpo_advantages,
    luffy_shaped_loss,
    nll_token_loss,
    ppo_token_loss,
    select_by_entropy,
    token_losses,
    token_norms,
)
from prefix_rft.train.planner import Trajectory, rule_for_tokens
from prefix_rft.train.update import prepare_minibatch

T = torch.tensor


def _as_list(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.detach()]


# ============================================================================ advantages
def test_dr_grpo_advantages_mean_baseline_no_std():
    a = dr_grpo_advantages(T([1.0, 0, 0, 1, 0, 0, 0, 0]))
    # mean = 2/8 = 0.25 -> 1 - 0.25 = 0.75, 0 - 0.25 = -0.25
    assert _as_list(a) == pytest.approx([0.75, -0.25, -0.25, 0.75, -0.25, -0.25, -0.25, -0.25])
    assert a.dtype == torch.float32


def test_dr_grpo_advantages_hybrid_member_only_correct():
    # prefix sample correct, 7 on-policy wrong: mean 1/8 = 0.125 -> [0.875, -0.125 x 7]
    a = dr_grpo_advantages(T([0.0, 0, 0, 0, 0, 0, 0, 1]))
    assert _as_list(a) == pytest.approx([-0.125] * 7 + [0.875])


@pytest.mark.parametrize("rewards", [[1.0] * 8, [0.0] * 8, [0.5], [1.0, 1.0]])
def test_advantages_all_equal_rewards_are_zero(rewards):
    assert _as_list(dr_grpo_advantages(T(rewards))) == [0.0] * len(rewards)
    assert _as_list(grpo_advantages(T(rewards))) == [0.0] * len(rewards)


def test_grpo_advantages_unbiased_std():
    a = grpo_advantages(T([1.0, 0, 0, 0]))
    # mean 0.25; deviations .75, -.25 x3; var = (0.5625 + 3*0.0625)/3 = 0.75/3 = 0.25; std 0.5
    # -> 0.75/0.5 = 1.5, -0.25/0.5 = -0.5 (eps 1e-6 changes the 6th digit at most)
    assert _as_list(a) == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)


def test_grpo_advantages_eight_members():
    a = grpo_advantages(T([1.0, 0, 0, 1, 0, 0, 0, 0]))
    # mean .25; sum sq dev = 2*0.5625 + 6*0.0625 = 1.5; var = 1.5/7 = 0.2142857; std = 0.4629100
    # 0.75/0.4629100 = 1.6201852; -0.25/0.4629100 = -0.5400617
    hi, lo = 1.6201852, -0.5400617
    assert _as_list(a) == pytest.approx([hi, lo, lo, hi, lo, lo, lo, lo], abs=1e-5)


def test_group_advantages_dispatch():
    # dr_grpo: [1, 0] mean .5 -> [.5, -.5]
    assert group_advantages([1.0, 0.0], "dr_grpo") == pytest.approx([0.5, -0.5])
    # grpo: mean .5, unbiased var (.25+.25)/1 = .5, std 0.7071068 -> .5/.7071068 = 0.7071068
    assert group_advantages([1.0, 0.0], "grpo") == pytest.approx([0.7071068, -0.7071068], abs=1e-5)
    assert isinstance(group_advantages([1.0, 0.0], "dr_grpo"), list)


# ============================================================================ PPO token loss
def _ppo(ratios, advs, eps_low=0.2, eps_high=0.2, clip=True):
    r = T(ratios, dtype=torch.float64)
    logp = torch.log(r).requires_grad_(True)
    old = torch.zeros_like(r)
    loss, low, high = ppo_token_loss(logp, old, T(advs, dtype=torch.float64), eps_low, eps_high, clip)
    loss.sum().backward()
    return loss.detach(), low, high, logp.grad


def test_ppo_token_loss_positive_advantage():
    loss, low, high, grad = _ppo([1.0, 1.1, 1.5, 0.5, 0.8], [1.0] * 5)
    # r=1.0: -min(1.0, 1.0) = -1.0            (inside)
    # r=1.1: -min(1.1, 1.1) = -1.1            (inside)
    # r=1.5: -min(1.5, clip 1.2) = -1.2       (clipped high: no gradient)
    # r=0.5: -min(0.5, clip 0.8) = -0.5       (below the range but A>0: unclipped branch)
    # r=0.8: -min(0.8, 0.8) = -0.8            (on the edge)
    assert _as_list(loss) == pytest.approx([-1.0, -1.1, -1.2, -0.5, -0.8])
    assert low.tolist() == [False] * 5
    assert high.tolist() == [False, False, True, False, False]
    # d(-r A)/dlogp = -r A where unclipped; 0 where the clip is active
    assert _as_list(grad) == pytest.approx([-1.0, -1.1, 0.0, -0.5, -0.8])


def test_ppo_token_loss_negative_advantage():
    loss, low, high, grad = _ppo([1.0, 0.9, 0.5, 1.5, 1.2], [-1.0] * 5)
    # r=1.0: -min(-1.0, -1.0) = 1.0
    # r=0.9: -min(-0.9, -0.9) = 0.9
    # r=0.5: -min(-0.5, clip 0.8 * -1 = -0.8) = 0.8   (clipped low: no gradient)
    # r=1.5: -min(-1.5, clip 1.2 * -1 = -1.2) = 1.5   (above range but A<0: unclipped)
    # r=1.2: -min(-1.2, -1.2) = 1.2
    assert _as_list(loss) == pytest.approx([1.0, 0.9, 0.8, 1.5, 1.2])
    assert low.tolist() == [False, False, True, False, False]
    assert high.tolist() == [False] * 5
    # d(-r A)/dlogp = -r A = r where unclipped
    assert _as_list(grad) == pytest.approx([1.0, 0.9, 0.0, 1.5, 1.2])


def test_ppo_token_loss_scales_with_advantage():
    loss, _, high, _ = _ppo([1.5, 1.1, 0.5], [2.0, 0.75, -0.25])
    # r=1.5, A=2: -min(3.0, 1.2*2 = 2.4) = -2.4 (clipped high)
    # r=1.1, A=.75: -min(0.825, 0.825) = -0.825
    # r=0.5, A=-.25: -min(-0.125, 0.8*-.25 = -0.2) = 0.2 (clipped low)
    assert _as_list(loss) == pytest.approx([-2.4, -0.825, 0.2])
    assert high.tolist() == [True, False, False]


def test_ppo_token_loss_zero_advantage_is_zero():
    loss, low, high, grad = _ppo([0.5, 1.0, 1.5], [0.0, 0.0, 0.0])
    assert _as_list(loss) == pytest.approx([0.0, 0.0, 0.0])
    assert not low.any() and not high.any()
    assert _as_list(grad) == pytest.approx([0.0, 0.0, 0.0])


def test_ppo_token_loss_asymmetric_eps():
    loss, _, high, _ = _ppo([1.25, 1.3, 0.75], [1.0, 1.0, -1.0], eps_low=0.2, eps_high=0.28)
    # r=1.25 < 1.28: -1.25 (inside); r=1.3 > 1.28: -1.28 (clipped high)
    # r=0.75 < 0.8, A=-1: -min(-0.75, -0.8) = 0.8 (clipped low)
    assert _as_list(loss) == pytest.approx([-1.25, -1.28, 0.8])
    assert high.tolist() == [False, True, False]


def test_ppo_token_loss_clip_false_branch():
    loss, low, high, grad = _ppo([1.5, 0.5, 1.0], [1.0, -1.0, 0.5], clip=False)
    # no clip: l = -r A -> -1.5, 0.5, -0.5
    assert _as_list(loss) == pytest.approx([-1.5, 0.5, -0.5])
    assert not low.any() and not high.any()
    # gradient flows everywhere: -r A
    assert _as_list(grad) == pytest.approx([-1.5, 0.5, -0.5])


def test_ppo_token_loss_per_token_clip_mask():
    r = T([1.5, 1.5], dtype=torch.float64)
    loss, low, high = ppo_token_loss(
        torch.log(r), torch.zeros(2, dtype=torch.float64), T([1.0, 1.0], dtype=torch.float64),
        0.2, 0.2, clip=T([True, False]),
    )
    # clipped token: -1.2; unclipped token: -1.5
    assert _as_list(loss) == pytest.approx([-1.2, -1.5])
    assert high.tolist() == [True, False]


def test_ppo_token_loss_ratio_uses_old_logp():
    # logp = log .6, old = log .4 -> r = 1.5, A = -1 -> 1.5
    loss, _, _ = ppo_token_loss(
        T([math.log(0.6)]), T([math.log(0.4)]), T([-1.0]), 0.2, 0.2
    )
    assert float(loss[0]) == pytest.approx(1.5, rel=1e-5)


# ============================================================================ LUFFY shaping
@pytest.mark.parametrize(
    "pi, adv, loss_expected, grad_expected",
    [
        # pi=.4, A=1: -0.4/0.5 = -0.8 ; grad -A g pi/(pi+g)^2 = -0.1*0.4/0.25 = -0.16
        (0.4, 1.0, -0.8, -0.16),
        # pi=.9, A=-.5: 0.5*0.9/1.0 = 0.45 ; grad 0.5*0.1*0.9/1.0 = 0.045
        (0.9, -0.5, 0.45, 0.045),
        # pi=1, A=1: -1/1.1 = -0.9090909 ; grad -0.1/1.21 = -0.0826446
        (1.0, 1.0, -0.9090909090909091, -0.08264462809917356),
        # pi=.1, A=2: -2*0.1/0.2 = -1.0 ; grad -2*0.1*0.1/0.04 = -0.5
        (0.1, 2.0, -1.0, -0.5),
    ],
)
def test_luffy_shaped_loss_value_and_gradient(pi, adv, loss_expected, grad_expected):
    logp = T([math.log(pi)], dtype=torch.float64, requires_grad=True)
    loss = luffy_shaped_loss(logp, T([adv], dtype=torch.float64), 0.1)
    loss.sum().backward()
    assert float(loss.detach()[0]) == pytest.approx(loss_expected, rel=1e-9)
    assert float(logp.grad[0]) == pytest.approx(grad_expected, rel=1e-9)


def test_luffy_shaped_loss_gamma():
    # pi = .5, gamma = .5: -1 * .5/1.0 = -0.5
    assert float(luffy_shaped_loss(T([math.log(0.5)]), T([1.0]), 0.5)[0]) == pytest.approx(-0.5)


# ============================================================================ NLL
def test_nll_token_loss_value_and_gradient():
    logp = T([-0.5, -2.0, 0.0], requires_grad=True)
    loss = nll_token_loss(logp, 0.1)
    # -0.1 * logp = [0.05, 0.2, 0]
    assert _as_list(loss) == pytest.approx([0.05, 0.2, 0.0])
    loss.sum().backward()
    assert _as_list(logp.grad) == pytest.approx([-0.1, -0.1, -0.1])
    # default coef 1
    assert _as_list(nll_token_loss(T([-0.5, -2.0]))) == pytest.approx([0.5, 2.0])


# ============================================================================ rule dispatch
def test_token_losses_rule_dispatch():
    rules = T([RULE_NONE, RULE_PPO, RULE_PPO_NOCLIP, RULE_SHAPED, RULE_NLL], dtype=torch.int8)
    logp = torch.full((5,), math.log(0.6), dtype=torch.float64, requires_grad=True)
    old = torch.full((5,), math.log(0.4), dtype=torch.float64)  # r = .6/.4 = 1.5
    adv = torch.ones(5, dtype=torch.float64)
    out, low, high = token_losses(
        logp, old, adv, rules, eps_low=0.2, eps_high=0.2, gamma=0.1, nll_coef=0.1
    )
    expected = [
        0.0,  # RULE_NONE
        -1.2,  # PPO: -min(1.5, 1.2)
        -1.5,  # PPO_NOCLIP: -r A
        -0.8571428571428572,  # SHAPED: -0.6/(0.6+0.1) = -0.6/0.7
        0.05108256237659907,  # NLL: -0.1 * ln 0.6 = 0.1 * 0.5108256
    ]
    assert _as_list(out) == pytest.approx(expected, rel=1e-9)
    assert low.tolist() == [False] * 5
    assert high.tolist() == [False, True, False, False, False]  # only RULE_PPO reports a clip
    out.sum().backward()
    # grads: none 0; clipped PPO 0; no-clip -r A = -1.5; shaped -g pi/(pi+g)^2 = -.06/.49;
    # NLL -0.1
    assert _as_list(logp.grad) == pytest.approx([0.0, 0.0, -1.5, -0.12244897959183673, -0.1])


def test_token_losses_low_clip_only_for_ppo_rule():
    rules = T([RULE_PPO, RULE_PPO_NOCLIP], dtype=torch.int8)
    logp = torch.log(T([0.5, 0.5]))  # old 0 -> r = 0.5
    out, low, high = token_losses(
        logp, torch.zeros(2), T([-1.0, -1.0]), rules,
        eps_low=0.2, eps_high=0.2, gamma=0.1, nll_coef=1.0,
    )
    # PPO: -min(-0.5, -0.8) = 0.8; NOCLIP: -(0.5*-1) = 0.5
    assert _as_list(out) == pytest.approx([0.8, 0.5])
    assert low.tolist() == [True, False]
    assert high.tolist() == [False, False]


def test_token_losses_shaped_ignores_old_logp_and_nll_ignores_advantage():
    rules = T([RULE_SHAPED, RULE_NLL], dtype=torch.int8)
    logp = torch.log(T([0.4, 0.4]))
    out1, _, _ = token_losses(logp, torch.zeros(2), T([1.0, 1.0]), rules,
                              eps_low=0.2, eps_high=0.2, gamma=0.1, nll_coef=1.0)
    out2, _, _ = token_losses(logp, T([-3.0, -3.0]), T([1.0, -7.0]), rules,
                              eps_low=0.2, eps_high=0.2, gamma=0.1, nll_coef=1.0)
    # shaped: -0.4/0.5 = -0.8 whatever old_logp; NLL: -ln .4 = 0.9162907 whatever A
    assert _as_list(out1) == pytest.approx([-0.8, 0.9162907318741551], rel=1e-6)
    assert _as_list(out2) == pytest.approx([-0.8, 0.9162907318741551], rel=1e-6)


# ============================================================================ entropy selection
ENT10 = [0.1, 0.9, 0.3, 0.8, 0.2, 0.05, 0.7, 0.4, 0.6, 0.5]


def test_select_top_20_percent_of_ten():
    keep = select_by_entropy(T(ENT10), 0.2, "top")
    # k = ceil(0.2*10) = 2: the two highest are 0.9 (index 1) and 0.8 (index 3)
    assert keep.tolist() == [i in (1, 3) for i in range(10)]
    assert keep.dtype == torch.bool


def test_select_top_ties_broken_by_earlier_position():
    ent = [0.5, 0.9, 0.5, 0.9, 0.9, 0.1, 0.2, 0.3, 0.4, 0.0]
    keep = select_by_entropy(T(ent), 0.2, "top")
    # k = 2; three tokens tie at 0.9 (indices 1, 3, 4): the earlier two win
    assert keep.nonzero().flatten().tolist() == [1, 3]
    # k = ceil(0.4*10) = 4: the three 0.9s then the first 0.5 (index 0 before index 2)
    keep = select_by_entropy(T(ent), 0.4, "top")
    assert keep.nonzero().flatten().tolist() == [0, 1, 3, 4]


def test_select_ties_are_deterministic_for_many_tokens():
    # 100 tokens, entropy 1.0 at every 7th position (0, 7, ..., 98: 15 tokens), 0 elsewhere.
    # top 20%: k = 20 -> the 15 high ones, then the 5 earliest zeros (1, 2, 3, 4, 5)
    ent = torch.zeros(100)
    ent[::7] = 1.0
    keep = select_by_entropy(ent, 0.2, "top")
    assert keep.nonzero().flatten().tolist() == sorted(list(range(0, 100, 7)) + [1, 2, 3, 4, 5])
    # bottom 20%: the 20 earliest zeros: 1..6, 8..13, 15..20, 22, 23
    keep = select_by_entropy(ent, 0.2, "bottom")
    assert keep.nonzero().flatten().tolist() == [
        1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 22, 23
    ]


def test_select_k_is_ceil_of_fraction_times_n():
    ent = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0]
    keep = select_by_entropy(T(ent), 0.2, "top")
    # 7 tokens: k = ceil(1.4) = 2 -> 9.0 (index 5) and 5.0 (index 4)
    assert keep.nonzero().flatten().tolist() == [4, 5]
    # one token, fraction .2: k = ceil(0.2) = 1
    assert select_by_entropy(T([0.3]), 0.2, "top").tolist() == [True]
    # 10 tokens, fraction .5: k = 5 -> 0.9, 0.8, 0.7, 0.6, 0.5 (indices 1, 3, 6, 8, 9)
    assert select_by_entropy(T(ENT10), 0.5, "top").nonzero().flatten().tolist() == [1, 3, 6, 8, 9]
    # fraction 1.0 keeps all
    assert select_by_entropy(T(ENT10), 1.0, "top").all()


def test_select_k_robust_to_float_product():
    # 0.07 * 100 = 7.000000000000001 in floating point; the intended k is 7, not 8
    ent = torch.arange(100, dtype=torch.float32)
    keep = select_by_entropy(ent, 0.07, "top")
    assert int(keep.sum()) == 7
    assert keep.nonzero().flatten().tolist() == list(range(93, 100))


def test_select_bottom():
    keep = select_by_entropy(T(ENT10), 0.2, "bottom")
    # the two lowest: 0.05 (index 5), 0.1 (index 0)
    assert keep.nonzero().flatten().tolist() == [0, 5]
    # ties at the bottom: earlier first
    keep = select_by_entropy(T([0.2, 0.1, 0.1, 0.1, 0.9]), 0.4, "bottom")
    # k = ceil(2.0) = 2 -> indices 1, 2
    assert keep.nonzero().flatten().tolist() == [1, 2]


def test_select_random_reproducible_and_keeps_k():
    ent = torch.arange(50, dtype=torch.float32)
    k1 = select_by_entropy(ent, 0.2, "random", torch.Generator().manual_seed(123))
    k2 = select_by_entropy(ent, 0.2, "random", torch.Generator().manual_seed(123))
    assert torch.equal(k1, k2)
    assert int(k1.sum()) == 10  # ceil(0.2*50) = 10
    masks = {
        tuple(select_by_entropy(ent, 0.2, "random", torch.Generator().manual_seed(s)).tolist())
        for s in range(5)
    }
    assert len(masks) > 1  # different seeds pick different tokens
    # not simply the top-k
    top = select_by_entropy(ent, 0.2, "top")
    assert any(not torch.equal(torch.tensor(m), top) for m in masks)


def test_select_all_keeps_everything():
    keep = select_by_entropy(T(ENT10), 0.2, "all")
    assert keep.tolist() == [True] * 10


@pytest.mark.parametrize("mode", ["top", "bottom", "random", "all"])
def test_select_empty_input(mode):
    keep = select_by_entropy(torch.zeros(0), 0.2, mode, torch.Generator().manual_seed(0))
    assert keep.shape == (0,)
    assert keep.dtype == torch.bool


def test_select_unknown_mode_raises():
    with pytest.raises(ValueError, match="middle"):
        select_by_entropy(T(ENT10), 0.2, "middle")


# ============================================================================ aggregation norms
def _b(xs):
    return T(xs, dtype=torch.bool)


def _r(xs):
    return T(xs, dtype=torch.int8)


P, N, D = RULE_PPO, RULE_NONE, RULE_NLL

# One optimizer mini-batch:
#   A: in-group policy sample, 3 PPO tokens, all kept
#   B: in-group prefix sample, 4 PPO tokens (2 demo), the 2nd demo token dropped by entropy
#   C: a full demo NOT in the group (RL + SFT loss), 4 NLL tokens, 3 kept
#   D: in-group policy sample, 1 token
#   E: in-group frozen-prefix sample: 2 RULE_NONE demo tokens + 2 PPO tokens
MB_RULES = [_r([P, P, P]), _r([P, P, P, P]), _r([D, D, D, D]), _r([P]), _r([N, N, P, P])]
MB_KEEPS = [_b([1, 1, 1]), _b([1, 0, 1, 1]), _b([1, 1, 0, 1]), _b([1]), _b([1, 1, 1, 1])]
MB_IN_GROUP = [True, True, False, True, True]
L_MAX = 10
# token losses (arbitrary hand values) for the invariance checks
MB_LOSS = [T([1.0, 2, 3]), T([4.0, 5, 6, 7]), T([0.3, 0.6, 0.9, 1.2]), T([8.0]), T([9.0, 9, 10, 11])]


def _norms(aggregation, idx=range(5)):
    idx = list(idx)
    return token_norms(
        [MB_RULES[i] for i in idx], [MB_KEEPS[i] for i in idx], [MB_IN_GROUP[i] for i in idx],
        aggregation=aggregation, max_response_len=L_MAX,
    )


def test_token_norms_dr_grpo():
    a, b, c, d, e = (_as_list(x) for x in _norms("dr_grpo"))
    # N_traj = in-group trajectories = 4 (A, B, D, E; not C); 1/(4*10) = 0.025
    q = 0.025
    assert a == pytest.approx([q, q, q])
    assert b == pytest.approx([q, 0.0, q, q])  # dropped token -> 0
    # NLL tokens: 1 / kept NLL tokens of the mini-batch = 1/3; the dropped one 0
    assert c == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])
    assert d == pytest.approx([q])
    assert e == pytest.approx([0.0, 0.0, q, q])  # RULE_NONE -> 0


def test_token_norms_token_mean():
    a, b, c, d, e = (_as_list(x) for x in _norms("token_mean"))
    # kept PG tokens: A 3 + B 3 + D 1 + E 2 = 9 -> 1/9
    q = 1 / 9
    assert a == pytest.approx([q, q, q])
    assert b == pytest.approx([q, 0.0, q, q])
    assert c == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])
    assert d == pytest.approx([q])
    assert e == pytest.approx([0.0, 0.0, q, q])


def test_token_norms_seq_mean_token_mean():
    a, b, c, d, e = (_as_list(x) for x in _norms("seq_mean_token_mean"))
    # 1 / (N_traj=4 * kept PG tokens of the trajectory)
    assert a == pytest.approx([1 / 12] * 3)  # 4*3
    assert b == pytest.approx([1 / 12, 0.0, 1 / 12, 1 / 12])  # 4*3
    assert c == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])
    assert d == pytest.approx([1 / 4])  # 4*1
    assert e == pytest.approx([0.0, 0.0, 1 / 8, 1 / 8])  # 4*2


def test_token_norms_shaped_and_noclip_are_policy_gradient_tokens():
    norms = token_norms(
        [_r([RULE_SHAPED, RULE_SHAPED]), _r([RULE_PPO_NOCLIP, RULE_PPO])],
        [_b([1, 1]), _b([1, 1])], [True, True], aggregation="token_mean", max_response_len=8,
    )
    # 4 kept PG tokens -> 1/4 each
    assert [_as_list(n) for n in norms] == [pytest.approx([0.25, 0.25])] * 2
    norms = token_norms(
        [_r([RULE_SHAPED, RULE_SHAPED]), _r([RULE_PPO_NOCLIP, RULE_PPO])],
        [_b([1, 1]), _b([1, 1])], [True, True], aggregation="dr_grpo", max_response_len=8,
    )
    # 1/(2*8) = 0.0625
    assert [_as_list(n) for n in norms] == [pytest.approx([0.0625, 0.0625])] * 2


def test_token_norms_unknown_aggregation():
    with pytest.raises(ValueError, match="sum"):
        token_norms([_r([P])], [_b([1])], [True], aggregation="sum", max_response_len=4)


def _total(norms, idx):
    return sum(float((MB_LOSS[i] * n).sum()) for i, n in zip(idx, norms))


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        # PG: (1+2+3) + (4+6+7) + 8 + (10+11) = 6 + 17 + 8 + 21 = 52 -> 52/(4*10) = 1.3
        # NLL: (0.3 + 0.6 + 1.2)/3 = 0.7 -> total 2.0
        ("dr_grpo", 2.0),
        # PG: 52/9 = 5.7777...; + 0.7 = 6.4777...
        ("token_mean", 52 / 9 + 0.7),
        # A 6/12 = .5; B 17/12 = 1.41667; D 8/4 = 2; E 21/8 = 2.625 -> 6.541667; + 0.7
        ("seq_mean_token_mean", 0.5 + 17 / 12 + 2.0 + 2.625 + 0.7),
    ],
)
def test_micro_batch_split_sums_to_the_mini_batch_loss(aggregation, expected):
    norms = _norms(aggregation)  # computed ONCE over the whole mini-batch
    splits = [
        [[0, 1, 2, 3, 4]],
        [[0], [1], [2], [3], [4]],
        [[0, 1], [2], [3, 4]],
        [[4, 0], [3, 2, 1]],
        [[2, 3], [0, 1, 4]],
    ]
    for split in splits:
        total = 0.0
        for micro in split:
            total += sum(float((MB_LOSS[i] * norms[i]).sum()) for i in micro)
        assert total == pytest.approx(expected, rel=1e-6), split


def test_norms_per_micro_batch_would_be_wrong():
    # The invariance only holds because norms are computed over the mini-batch: normalising each
    # micro-batch on its own ([A, B] and [C, D, E]) gives N_traj = 2 in both:
    # (6+17)/(2*10) + (8+21)/(2*10) + 0.7 = 1.15 + 1.45 + 0.7 = 3.3 != 2.0
    wrong = _total(_norms("dr_grpo", [0, 1]), [0, 1]) + _total(_norms("dr_grpo", [2, 3, 4]), [2, 3, 4])
    assert wrong == pytest.approx(3.3)
    assert wrong != pytest.approx(2.0)


def test_padded_micro_batch_layout_matches():
    # The trainer pads rows with norm 0 / keep False: padding contributes nothing.
    norms = _norms("dr_grpo")
    width = 4
    loss = torch.zeros(5, width)
    norm = torch.zeros(5, width)
    keep = torch.zeros(5, width, dtype=torch.bool)
    for i in range(5):
        n = len(MB_LOSS[i])
        loss[i, :n] = MB_LOSS[i]
        norm[i, :n] = norms[i]
        keep[i, :n] = MB_KEEPS[i]
        loss[i, n:] = 100.0  # garbage in padding must not count (norm 0, keep False)
    assert float((loss * norm * keep).sum()) == pytest.approx(2.0, rel=1e-6)


# ============================================================================ rule_for_tokens
def _traj(response_len, demo_len, in_group, kind="prefix"):
    return Trajectory(
        group=0, problem=0, kind=kind, prompt_ids=[1, 2, 3],
        response_ids=list(range(10, 10 + response_len)), demo_len=demo_len, in_group=in_group,
    )


@pytest.mark.parametrize(
    "loss_kw, expected",
    [
        # Prefix-RFT: demo prefix gets the same (clipped) PPO rule as generated tokens
        ({"demo_rule": "ppo", "clip_demo_tokens": True}, [P, P, P, P, P]),
        # clip_demo_tokens = False: demo tokens unclipped
        ({"demo_rule": "ppo", "clip_demo_tokens": False}, [2, 2, 2, P, P]),
        ({"demo_rule": "shaped"}, [3, 3, 3, P, P]),
        ({"demo_rule": "nll"}, [4, 4, 4, P, P]),
        # freeze_prefix / DR-PO: prefix not trained
        ({"demo_rule": "none"}, [0, 0, 0, P, P]),
    ],
)
def test_rule_for_tokens_in_group_prefix(loss_kw, expected):
    rule = rule_for_tokens(_traj(5, 3, True), LossConfig(**loss_kw))
    assert rule.tolist() == expected
    assert rule.dtype == torch.int8


@pytest.mark.parametrize("demo_rule", ["ppo", "shaped", "nll", "none"])
def test_rule_for_tokens_policy_sample_all_ppo(demo_rule):
    rule = rule_for_tokens(_traj(4, 0, True, "policy"), LossConfig(demo_rule=demo_rule))
    assert rule.tolist() == [P] * 4


def test_rule_for_tokens_luffy_full_demo_in_group():
    rule = rule_for_tokens(_traj(4, 4, True, "demo"), LossConfig(demo_rule="shaped"))
    assert rule.tolist() == [RULE_SHAPED] * 4


def test_rule_for_tokens_rl_sft_loss_demo_outside_group():
    # RL + SFT loss: the demo (not in the group) gets NLL on every token (0.1 x NLL on the demo)
    rule = rule_for_tokens(_traj(6, 6, False, "demo"), LossConfig(demo_rule="nll"))
    assert rule.tolist() == [RULE_NLL] * 6


def test_rule_for_tokens_not_in_group_generated_tokens_untrained():
    # a trajectory outside the group has no advantage: its generated tokens are not trained
    rule = rule_for_tokens(_traj(5, 2, False), LossConfig(demo_rule="nll"))
    assert rule.tolist() == [RULE_NLL, RULE_NLL, N, N, N]
    rule = rule_for_tokens(_traj(3, 0, False, "policy"), LossConfig(demo_rule="ppo"))
    assert rule.tolist() == [N, N, N]


def _preset_loss(name):
    return resolve({"method": name, "model": {"name_or_path": "m"}, "data": {"train": "x"}}).loss


@pytest.mark.parametrize(
    "preset, traj_args, expected",
    [
        ("prefix_rft", (5, 2, True, "prefix"), [P] * 5),
        ("prefix_rft", (3, 0, True, "policy"), [P] * 3),
        ("freeze_prefix", (5, 2, True, "prefix"), [N, N, P, P, P]),
        ("dr_po", (5, 2, True, "prefix"), [N, N, P, P, P]),
        ("update_all_prefix", (5, 2, True, "prefix"), [P] * 5),
        ("static_prefix_weight", (5, 2, True, "prefix"), [D, D, P, P, P]),
        ("uft", (5, 2, True, "prefix"), [D, D, P, P, P]),
        ("luffy", (4, 4, True, "demo"), [RULE_SHAPED] * 4),
        ("luffy", (3, 0, True, "policy"), [P] * 3),
        ("rl_sft_loss", (4, 4, False, "demo"), [D] * 4),
        ("rl_sft_loss", (3, 0, True, "policy"), [P] * 3),
        ("rft", (3, 0, True, "policy"), [P] * 3),
    ],
)
def test_rule_for_tokens_presets(preset, traj_args, expected):
    assert rule_for_tokens(_traj(*traj_args), _preset_loss(preset)).tolist() == expected


# ============================================================================ mini-batch selection
def _preset_cfg(preset):
    return resolve({"method": preset, "model": {"name_or_path": "m"}, "data": {"train": "x"}})


def _with(traj, loss_cfg, entropy):
    traj.rule = rule_for_tokens(traj, loss_cfg)
    traj.entropy = T(entropy)
    return traj


def test_prepare_minibatch_prefix_rft_ranks_demo_tokens_of_whole_minibatch():
    cfg = _preset_cfg("prefix_rft")
    lc = cfg.loss
    trajs = [
        _with(_traj(3, 0, True, "policy"), lc, [9.0, 9.0, 9.0]),
        # demo entropies [.1 .9 .2 .3 .05 .4] + 2 generated
        _with(_traj(8, 6, True), lc, [0.1, 0.9, 0.2, 0.3, 0.05, 0.4, 7.0, 7.0]),
        # demo entropies [.8 .35 .15 .25] + 1 generated
        _with(_traj(5, 4, True), lc, [0.8, 0.35, 0.15, 0.25, 0.0]),
    ]
    prepare_minibatch(trajs, torch.Generator().manual_seed(0), "dr_grpo", lc,
                      cfg.rollout.max_response_len)
    # 10 demo tokens in the mini-batch -> k = ceil(0.2*10) = 2: 0.9 (traj 1) and 0.8 (traj 2);
    # generated tokens are never masked
    assert trajs[0].keep.tolist() == [True] * 3
    assert trajs[1].keep.tolist() == [False, True, False, False, False, False, True, True]
    assert trajs[2].keep.tolist() == [True, False, False, False, True]
    # norms: 1/(3 trajectories * 8192)
    q = 1 / (3 * 8192)
    assert _as_list(trajs[1].norm) == pytest.approx([0, q, 0, 0, 0, 0, q, q])


def test_prepare_minibatch_rl_sft_loss_trains_the_whole_demo():
    # RL + SFT loss: 0.1 x NLL on the WHOLE demo (docs/ALGORITHM.md section 5): no entropy clip
    # may drop demo tokens (regression: the preset once kept the default top-20% selection)
    cfg = _preset_cfg("rl_sft_loss")
    lc = cfg.loss
    trajs = [
        _with(_traj(3, 0, True, "policy"), lc, [1.0, 1.0, 1.0]),
        _with(_traj(10, 10, False, "demo"), lc, ENT10),
    ]
    prepare_minibatch(trajs, torch.Generator().manual_seed(0), "dr_grpo", lc,
                      cfg.rollout.max_response_len)
    assert trajs[1].keep.tolist() == [True] * 10
    # NLL norm = 1/(10 kept demo tokens)
    assert _as_list(trajs[1].norm) == pytest.approx([0.1] * 10)


def test_rule_constants_are_distinct():
    rules = [L.RULE_NONE, L.RULE_PPO, L.RULE_PPO_NOCLIP, L.RULE_SHAPED, L.RULE_NLL]
    assert len(set(rules)) == 5
    assert set(L.PG_RULES) == {L.RULE_PPO, L.RULE_PPO_NOCLIP, L.RULE_SHAPED}


# ---------------------------------------------------------------------------- rollout engine vs trainer
def test_rollout_is_weights_hand_values():
    # pi_old / pi_rollout = 0.5/0.25 = 2 -> capped at 1.5; 0.3/0.6 = 0.5; 0.2/0.2 = 1; masked -> 1
    old = torch.log(torch.tensor([0.5, 0.3, 0.2, 0.9]))
    rollout = torch.log(torch.tensor([0.25, 0.6, 0.2, 0.1]))
    mask = torch.tensor([True, True, True, False])
    w = L.rollout_is_weights(old, rollout, mask, cap=1.5)
    assert torch.allclose(w, torch.tensor([1.5, 0.5, 1.0, 1.0]), atol=1e-6)
    old.requires_grad_(True)
    assert not L.rollout_is_weights(old, rollout, mask, cap=2.0).requires_grad  # a weight, not a path


def test_logprob_gap_hand_values():
    trainer = torch.tensor([[-0.1, -2.0, -0.7], [-1.0, -0.2, 0.0]])
    rollout = torch.tensor([[-0.3, -1.2, -0.7], [-1.6, -0.2, -9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # |d| over the mask: 0.2, 0.8, 0.0, 0.6 -> sum 1.6, max 0.8, two above 0.5, four tokens
    g = L.logprob_gap(trainer, rollout, mask)
    assert g["count"] == 4 and g["over"] == 2
    assert g["sum"] == pytest.approx(1.6) and g["max"] == pytest.approx(0.8)
    assert L.logprob_gap(trainer, rollout, torch.zeros_like(mask)) == {
        "sum": 0.0, "max": 0.0, "over": 0, "count": 0}
