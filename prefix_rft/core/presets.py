"""Method presets: every method is data on top of one code path.

A preset says which tokens are trained and with what weight (`loss.*`), how each group of
rollouts is planned (`rollout.*`), and which phases run (`sft.epochs`, `rl.steps`,
`relift.enabled`). It is a nested dict merged over the `Config` defaults (which are the paper's
Prefix-RFT settings); a YAML file and `--set` overrides win over it.
Numbers in brackets are the paper's Qwen2.5-Math-7B math averages (docs/ALGORITHM.md section 5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from prefix_rft.core.dicts import deep_merge
from prefix_rft.errors import UserError

_NO_PREFIX = {"rollout": {"n_prefixed": 0, "n_full_demo": 0}}
_SFT_PHASE = {
    "sft": {
        "epochs": 3,
        "batch_size": 64,
        "optim": {"lr": 5e-5, "warmup_ratio": 0.1, "lr_schedule": "cosine", "weight_decay": 0.01},
    }
}


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    values: dict
    paper_score: float | None = None  # Qwen2.5-Math-7B math average in the paper


def _merge(*parts: dict) -> dict:
    out: dict = {}
    for p in parts:
        out = deep_merge(out, p)
    return out


_PRESETS = [
    Preset("sft", "SFT only: token-mean NLL on the demos, lr 5e-5, 3 epochs, warm-up 0.1, cosine.",
           _merge(_NO_PREFIX, _SFT_PHASE, {"rl": {"steps": 0}}), 44.1),
    Preset("rft", "RFT: Dr. GRPO on G on-policy samples, no demonstrations.", _NO_PREFIX, 45.5),
    Preset("sft_then_rft", "SFT (3 epochs) then RFT (Dr. GRPO) from the SFT weights.",
           _merge(_NO_PREFIX, _SFT_PHASE), 48.2),
    Preset("rl_sft_loss", "RFT on G-1 samples + 0.1 x NLL on the demo (outside the group).",
           {"rollout": {"n_prefixed": 0, "n_full_demo": 1, "demo_in_group": False},
            "loss": {"demo_rule": "nll", "demo_nll_coef": 0.1, "entropy_selection": "all"}}, 40.1),
    Preset("luffy", "LUFFY: G-1 samples + the whole demo as a group member (pi_old = 1, shaping "
           "pi/(pi+0.1), no clip on it).",
           {"rollout": {"n_prefixed": 0, "n_full_demo": 1, "demo_in_group": True},
            "loss": {"demo_rule": "shaped", "shaping_gamma": 0.1, "entropy_selection": "all"}},
           50.1),
    Preset("relift", "ReLIFT: RFT; prompts where all samples fail go to a buffer, one SFT step "
           "(own optimizer) when it holds 128.",
           _merge(_NO_PREFIX, {"relift": {"enabled": True, "buffer_size": 128,
                                          "optim": {"lr": 5e-6, "weight_decay": 0.01}}}), 47.8),
    Preset("uft", "UFT-style: all G members start from one shared demo hint; static 0.001 NLL "
           "weight on the hint, RL on the rest.",
           {"rollout": {"n_prefixed": 8, "n_full_demo": 0, "shared_prefix": True},
            "loss": {"demo_rule": "nll", "demo_nll_coef": 0.001, "entropy_selection": "all"}},
           44.2),
    Preset("prefix_rft", "Prefix-RFT: 1 of G starts from a cosine-scheduled demo prefix; top-20% "
           "entropy demo tokens trained with the group's PPO weight (Dr. GRPO).", {}, 51.8),
    # ---- ablations of the paper (docs/ALGORITHM.md section 5)
    Preset("freeze_prefix", "Ablation: Prefix-RFT without gradient on demo tokens.",
           {"loss": {"demo_rule": "none"}}, 45.4),
    Preset("update_all_prefix", "Ablation: Prefix-RFT training every demo token (no entropy clip).",
           {"loss": {"entropy_selection": "all"}}, 45.7),
    Preset("static_prefix_weight", "Ablation: Prefix-RFT with a static 0.001 NLL weight on the "
           "prefix (UFT-style).",
           {"loss": {"demo_rule": "nll", "demo_nll_coef": 0.001, "entropy_selection": "all"}},
           43.8),
    Preset("rft_entropy_clip", "Ablation: plain RFT training only its top-20% entropy tokens.",
           _merge(_NO_PREFIX, {"loss": {"entropy_scope": "generated", "entropy_selection": "top",
                                        "entropy_fraction": 0.2}}), 43.8),
    Preset("dr_po", "Ablation: all G members share one demo prefix, excluded from the loss.",
           {"rollout": {"n_prefixed": 8, "shared_prefix": True}, "loss": {"demo_rule": "none"}},
           33.8),
    Preset("prefix_rft_uniform", "Ablation: Prefix-RFT without the schedule (l ~ U[0.05, 0.95]).",
           {"rollout": {"prefix_schedule": {"kind": "uniform"}}}),
    Preset("entropy_top50", "Ablation: Prefix-RFT keeping the top-50% entropy demo tokens.",
           {"loss": {"entropy_fraction": 0.5}}),
    Preset("entropy_top80", "Ablation: Prefix-RFT keeping the top-80% entropy demo tokens.",
           {"loss": {"entropy_fraction": 0.8}}),
    Preset("entropy_random20", "Ablation: Prefix-RFT keeping a random 20% of demo tokens.",
           {"loss": {"entropy_selection": "random"}}),
    Preset("entropy_bottom20", "Ablation: Prefix-RFT keeping the lowest-entropy 20% of demo tokens.",
           {"loss": {"entropy_selection": "bottom"}}),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def preset_values(name: str) -> dict:
    """The nested config values of preset `name` (with `method` set), or a UserError."""
    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(
            f"unknown preset '{name}'{hint}; known presets: {', '.join(PRESETS)}"
        )
    return copy.deepcopy(_merge(PRESETS[name].values, {"method": name}))
