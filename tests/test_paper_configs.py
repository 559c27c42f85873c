"""configs/paper/: the paper's settings resolve to the paper's numbers, for every method.

The files hold only method-independent keys; method-specific keys come from the presets
(prefix_rft/core/presets.py). These tests check that (1) each file resolves and carries the numbers of
docs/ALGORITHM.md sections 2-6 key by key, (2) no file writes a key that any preset sets (a file value
would silently override that preset under `--set method=NAME`), (3) every preset applied on top of
each file gets its own method-specific values, and (4) the data-fraction variants differ from the
1.5B file only in `data.fraction`. No network, no model loading.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from prefix_rft.core.config import load_config, read_yaml
from prefix_rft.core.dicts import flatten
from prefix_rft.core.prefix import prefix_window
from prefix_rft.core.presets import PRESETS
from prefix_rft.models import shipped_chat_templates
from steps.flow_config import load_flow_config

PAPER_DIR = Path(__file__).resolve().parents[1] / "configs" / "paper"

MODELS = {  # file -> (hub id of the BASE model, Instruct chat template of its family)
    "qwen2.5-math-7b.yaml": ("Qwen/Qwen2.5-Math-7B", "qwen2.5-instruct"),
    "qwen2.5-math-1.5b.yaml": ("Qwen/Qwen2.5-Math-1.5B", "qwen2.5-instruct"),
    "llama-3.1-8b.yaml": ("meta-llama/Llama-3.1-8B", "llama-3.1-instruct"),
}
FRACTIONS = {"qwen2.5-math-1.5b-frac1.yaml": 0.01, "qwen2.5-math-1.5b-frac10.yaml": 0.1}
ALL_FILES = sorted([*MODELS, *FRACTIONS])

# The paper's Prefix-RFT settings (docs/ALGORITHM.md sections 2-6) as resolved config values.
PAPER = {
    "method": "prefix_rft",
    # section 2: rollouts
    "rollout.num_prompts": 128,
    "rollout.group_size": 8,
    "rollout.n_prefixed": 1,
    "rollout.n_full_demo": 0,
    "rollout.shared_prefix": False,
    "rollout.max_response_len": 8192,
    "rollout.min_prefix_len": 1,
    "rollout.temperature": 1.0,
    "rollout.top_p": 1.0,
    "rollout.prefix_schedule.kind": "cosine",
    "rollout.prefix_schedule.start": 0.95,
    "rollout.prefix_schedule.end": 0.05,
    "rollout.prefix_schedule.high": 0.95,
    "rollout.prefix_schedule.total_steps": 500,
    "rollout.prefix_schedule.sampler": "uniform",
    # section 3: entropy-based clipping of demo tokens
    "loss.entropy_selection": "top",
    "loss.entropy_fraction": 0.2,
    "loss.entropy_scope": "demo",
    # section 4: advantage, ratio, aggregation, optimiser
    "loss.advantage": "dr_grpo",
    "loss.aggregation": "dr_grpo",
    "loss.clip_eps_low": 0.2,
    "loss.clip_eps_high": 0.2,
    "loss.demo_rule": "ppo",
    "loss.clip_demo_tokens": True,
    "rl.steps": 500,
    "rl.num_minibatches": 2,
    "rl.ppo_epochs": 1,
    "rl.optim.lr": 1e-6,
    "rl.optim.lr_schedule": "constant",
    "rl.optim.warmup_ratio": 0.0,
    "rl.optim.weight_decay": 0.01,
    "rl.optim.grad_clip": 1.0,
    # no SFT phase, no ReLIFT for Prefix-RFT itself
    "sft.epochs": 0,
    "sft.batch_size": 64,
    "sft.max_len": 8192,
    "relift.enabled": False,
    # section 6: data; models
    "data.train": "hub:Elliott/Openr1-Math-46k-8192",
    "data.schema": "luffy",
    "data.test": None,
    "data.max_problems": None,
    "model.dtype": "bfloat16",
    "model.device": "auto",
    # evaluation: off here, the paper's sampling protocol (section 7) written in
    "eval.num_problems": 0,
    "eval.temperature": 0.6,
    "eval.top_p": 0.95,
    "eval.max_new_tokens": 8192,
}

# The paper's SFT baseline (section 5): what method=sft / sft_then_rft must resolve to.
PAPER_SFT = {
    "sft.epochs": 3,
    "sft.batch_size": 64,
    "sft.optim.lr": 5e-5,
    "sft.optim.warmup_ratio": 0.1,
    "sft.optim.lr_schedule": "cosine",
}


def _resolved(name: str, method: str | None = None) -> dict:
    overrides = [f"method={method}"] if method else None
    return flatten(load_flow_config(PAPER_DIR / name, overrides).to_dict())


def _preset_keys() -> set[str]:
    return {k for p in PRESETS.values() for k in flatten(p.values)}


def test_the_paper_directory_holds_exactly_these_files():
    assert sorted(p.name for p in PAPER_DIR.glob("*.yaml")) == ALL_FILES


@pytest.mark.parametrize("name", ALL_FILES)
def test_file_resolves_to_the_papers_numbers(name):
    got = _resolved(name)
    for key, want in PAPER.items():
        assert got[key] == want, f"{name}: {key} = {got[key]!r}, paper: {want!r}"
    # 2 mini-batches of 64 prompts per rollout batch of 128
    assert got["rollout.num_prompts"] // got["rl.num_minibatches"] == 64


@pytest.mark.parametrize("name", ALL_FILES)
def test_file_names_the_base_model_and_the_instruct_template(name):
    main = name if name in MODELS else "qwen2.5-math-1.5b.yaml"
    hub_id, template = MODELS[main]
    got = _resolved(name)
    assert got["model.name_or_path"] == hub_id
    assert "instruct" not in hub_id.lower()
    assert got["model.chat_template"] == template
    assert template in shipped_chat_templates()


@pytest.mark.parametrize("name", ALL_FILES)
def test_file_writes_out_the_method_independent_numbers(name):
    """The numbers a reader looks for are written in the file, not only inherited."""
    written = flatten(read_yaml(PAPER_DIR / name))
    for key in (
        "method", "model.dtype", "model.device", "data.train", "data.schema", "data.test",
        "data.fraction", "data.fraction_seed",
        "rollout.num_prompts", "rollout.group_size", "rollout.max_response_len",
        "rollout.min_prefix_len", "rollout.temperature", "rollout.top_p",
        "rollout.prefix_schedule.start", "rollout.prefix_schedule.end",
        "rollout.prefix_schedule.high", "rollout.prefix_schedule.total_steps",
        "loss.advantage", "loss.aggregation", "loss.clip_eps_low", "loss.clip_eps_high",
        "loss.clip_demo_tokens", "rl.num_minibatches", "rl.ppo_epochs", "rl.micro_batch_size",
        "rl.optim.lr", "rl.optim.lr_schedule", "rl.optim.weight_decay", "rl.optim.grad_clip",
        "sft.micro_batch_size", "sft.max_len", "eval.num_problems",
    ):
        assert key in written, f"{name}: {key} is not written out"


@pytest.mark.parametrize("name", ALL_FILES)
def test_file_sets_no_key_that_a_preset_sets(name):
    """A file value would override the preset (defaults -> preset -> file -> --set)."""
    written = set(flatten(read_yaml(PAPER_DIR / name))) - {"method"}
    clash = sorted(written & _preset_keys())
    assert not clash, f"{name} writes method-specific keys {clash}; leave them to the presets"


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("method", sorted(PRESETS))
def test_every_preset_applies_on_top_of_the_file(name, method):
    got = _resolved(name, method)
    assert got["method"] == method
    for key, want in flatten(PRESETS[method].values).items():
        assert got[key] == want, f"{name} --set method={method}: {key} = {got[key]!r}, preset: {want!r}"
    # and the file's own (method-independent) values survive every preset
    for key, value in flatten(read_yaml(PAPER_DIR / name)).items():
        if key != "method":
            assert got[key] == value, f"{name} --set method={method}: {key} changed"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_baselines_get_the_papers_method_specific_values(name):
    sft = _resolved(name, "sft")
    for key, want in PAPER_SFT.items():
        assert sft[key] == want, f"sft: {key}"
    assert sft["rl.steps"] == 0
    assert sft["rollout.n_prefixed"] == 0

    sft_rft = _resolved(name, "sft_then_rft")
    for key, want in PAPER_SFT.items():
        assert sft_rft[key] == want, f"sft_then_rft: {key}"
    assert sft_rft["rl.steps"] == 500
    assert sft_rft["rollout.n_prefixed"] == 0 and sft_rft["rollout.n_full_demo"] == 0

    rft = _resolved(name, "rft")
    assert (rft["rollout.n_prefixed"], rft["rollout.n_full_demo"]) == (0, 0)
    assert (rft["sft.epochs"], rft["rl.steps"], rft["rl.optim.lr"]) == (0, 500, 1e-6)

    luffy = _resolved(name, "luffy")
    assert (luffy["rollout.n_prefixed"], luffy["rollout.n_full_demo"]) == (0, 1)
    assert luffy["rollout.demo_in_group"] is True
    assert luffy["loss.demo_rule"] == "shaped" and luffy["loss.shaping_gamma"] == 0.1
    assert luffy["loss.entropy_selection"] == "all"

    rl_sft = _resolved(name, "rl_sft_loss")
    assert (rl_sft["rollout.n_prefixed"], rl_sft["rollout.n_full_demo"]) == (0, 1)
    assert rl_sft["rollout.demo_in_group"] is False
    assert rl_sft["loss.demo_rule"] == "nll" and rl_sft["loss.demo_nll_coef"] == 0.1
    assert rl_sft["loss.entropy_selection"] == "all"  # NLL on the whole demo, not its top 20%

    relift = _resolved(name, "relift")
    assert relift["relift.enabled"] is True and relift["relift.buffer_size"] == 128
    assert relift["rollout.n_prefixed"] == 0

    uft = _resolved(name, "uft")
    assert uft["rollout.n_prefixed"] == 8 and uft["rollout.shared_prefix"] is True
    assert uft["loss.demo_rule"] == "nll" and uft["loss.demo_nll_coef"] == 0.001

    for method in sorted(PRESETS):  # every preset keeps the shared paper numbers
        got = _resolved(name, method)
        for key in ("rollout.num_prompts", "rollout.group_size", "rollout.max_response_len",
                    "loss.advantage", "loss.aggregation", "rl.optim.lr", "rl.num_minibatches"):
            assert got[key] == PAPER[key], f"method={method}: {key}"


def test_presets_carry_the_papers_scores():
    scores = {"sft": 44.1, "rft": 45.5, "sft_then_rft": 48.2, "rl_sft_loss": 40.1,
              "luffy": 50.1, "relift": 47.8, "uft": 44.2, "prefix_rft": 51.8,
              "freeze_prefix": 45.4, "update_all_prefix": 45.7, "static_prefix_weight": 43.8,
              "rft_entropy_clip": 43.8, "dr_po": 33.8}
    for method, score in scores.items():
        assert PRESETS[method].paper_score == score, method


def test_the_schedule_of_the_files_is_the_papers_cosine():
    cfg = load_config(PAPER_DIR / "qwen2.5-math-7b.yaml").rollout.prefix_schedule
    assert prefix_window(cfg, 0) == pytest.approx((0.95, 0.95))
    assert prefix_window(cfg, 250) == pytest.approx((0.50, 0.95))
    assert prefix_window(cfg, 500) == pytest.approx((0.05, 0.95))
    assert prefix_window(cfg, 900) == pytest.approx((0.05, 0.95))


@pytest.mark.parametrize("name, fraction", sorted(FRACTIONS.items()))
def test_fraction_files_differ_from_the_1_5b_file_only_in_the_fraction(name, fraction):
    main = _resolved("qwen2.5-math-1.5b.yaml")
    got = _resolved(name)
    assert got["data.fraction"] == fraction
    assert got["data.fraction_seed"] == main["data.fraction_seed"] == 42
    assert main["data.fraction"] == 1.0
    diff = {k for k in main if main[k] != got[k]}
    assert diff == {"data.fraction", "pipeline.project"}  # its own deployment and experiment
    # also under a baseline preset
    assert _resolved(name, "sft")["data.fraction"] == fraction
