"""Configuration: presets (docs/ALGORITHM.md section 5), resolution order, errors naming the key.

No model loading, no network. Expected values are written out by hand from docs/ALGORITHM.md.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from prefix_rft.core.config import (
    NON_TRAINING_SECTIONS,
    Config,
    describe_keys,
    load_config,
    parse_overrides,
    read_yaml,
    resolve,
)
from prefix_rft.core.dicts import flatten
from prefix_rft.core.presets import PRESETS, preset_values
from prefix_rft.errors import UserError

BASE = {"model": {"name_or_path": "some/model"}, "data": {"train": "synthetic:add"}}


def cfg_for(method: str, overrides=None, **extra):
    data = {"method": method, **BASE, **extra}
    return resolve(data, overrides)


def flat(cfg: Config) -> dict:
    return flatten(cfg.to_dict())


# ============================================================================ presets
# Values each preset must have, from docs/ALGORITHM.md sections 2-5 (the defaults are the paper's
# Prefix-RFT settings, so every preset is also checked against the unchanged keys it relies on).
PREFIX_RFT = {
    "rollout.n_prefixed": 1,
    "rollout.n_full_demo": 0,
    "rollout.group_size": 8,
    "rollout.num_prompts": 128,
    "rollout.shared_prefix": False,
    "rollout.temperature": 1.0,
    "rollout.prefix_schedule.kind": "cosine",
    "rollout.prefix_schedule.start": 0.95,
    "rollout.prefix_schedule.end": 0.05,
    "rollout.prefix_schedule.high": 0.95,
    "rollout.prefix_schedule.total_steps": 500,
    "rollout.prefix_schedule.sampler": "uniform",
    "loss.advantage": "dr_grpo",
    "loss.aggregation": "dr_grpo",
    "loss.clip_eps_low": 0.2,
    "loss.clip_eps_high": 0.2,
    "loss.demo_rule": "ppo",
    "loss.clip_demo_tokens": True,
    "loss.entropy_selection": "top",
    "loss.entropy_fraction": 0.2,
    "loss.entropy_scope": "demo",
    "rl.steps": 500,
    "rl.num_minibatches": 2,
    "rl.ppo_epochs": 1,
    "rl.optim.lr": 1e-6,
    "rl.optim.weight_decay": 0.01,
    "rl.optim.grad_clip": 1.0,
    "rl.optim.lr_schedule": "constant",
    "rl.optim.warmup_ratio": 0.0,
    "sft.epochs": 0,
    "relift.enabled": False,
}
NO_DEMO = {"rollout.n_prefixed": 0, "rollout.n_full_demo": 0}
SFT_PHASE = {
    "sft.epochs": 3,
    "sft.batch_size": 64,
    "sft.optim.lr": 5e-5,
    "sft.optim.warmup_ratio": 0.1,
    "sft.optim.lr_schedule": "cosine",
}

EXPECTED = {
    "prefix_rft": {},
    "sft": {**NO_DEMO, **SFT_PHASE, "rl.steps": 0},
    "rft": {**NO_DEMO, "rl.steps": 500, "sft.epochs": 0, "loss.advantage": "dr_grpo"},
    "sft_then_rft": {**NO_DEMO, **SFT_PHASE, "rl.steps": 500},
    # RFT on 7 samples + 0.1 x NLL on the whole demo (outside the group)
    "rl_sft_loss": {
        "rollout.n_prefixed": 0, "rollout.n_full_demo": 1, "rollout.demo_in_group": False,
        "loss.demo_rule": "nll", "loss.demo_nll_coef": 0.1, "loss.entropy_selection": "all",
    },
    # 7 samples + whole demo as 8th member, pi_old = 1, shaping pi/(pi+0.1), no clip
    "luffy": {
        "rollout.n_prefixed": 0, "rollout.n_full_demo": 1, "rollout.demo_in_group": True,
        "loss.demo_rule": "shaped", "loss.shaping_gamma": 0.1, "loss.entropy_selection": "all",
        "loss.advantage": "dr_grpo",
    },
    "relift": {**NO_DEMO, "relift.enabled": True, "relift.buffer_size": 128},
    # shared demo hint, static small NLL weight on it
    "uft": {
        "rollout.n_prefixed": 8, "rollout.shared_prefix": True, "loss.demo_rule": "nll",
        "loss.demo_nll_coef": 0.001, "loss.entropy_selection": "all",
    },
    "freeze_prefix": {"rollout.n_prefixed": 1, "loss.demo_rule": "none"},
    "update_all_prefix": {"rollout.n_prefixed": 1, "loss.entropy_selection": "all",
                          "loss.demo_rule": "ppo"},
    "static_prefix_weight": {"rollout.n_prefixed": 1, "loss.demo_rule": "nll",
                             "loss.demo_nll_coef": 0.001, "loss.entropy_selection": "all"},
    "rft_entropy_clip": {**NO_DEMO, "loss.entropy_scope": "generated",
                         "loss.entropy_selection": "top", "loss.entropy_fraction": 0.2},
    "dr_po": {"rollout.n_prefixed": 8, "rollout.shared_prefix": True, "loss.demo_rule": "none"},
    "prefix_rft_uniform": {"rollout.prefix_schedule.kind": "uniform"},
    "entropy_top50": {"loss.entropy_selection": "top", "loss.entropy_fraction": 0.5},
    "entropy_top80": {"loss.entropy_selection": "top", "loss.entropy_fraction": 0.8},
    "entropy_random20": {"loss.entropy_selection": "random", "loss.entropy_fraction": 0.2},
    "entropy_bottom20": {"loss.entropy_selection": "bottom", "loss.entropy_fraction": 0.2},
}

# The paper's Qwen2.5-Math-7B math averages (docs/ALGORITHM.md section 5).
PAPER_SCORES = {
    "sft": 44.1, "rft": 45.5, "sft_then_rft": 48.2, "rl_sft_loss": 40.1,
    "luffy": 50.1, "relift": 47.8, "uft": 44.2, "prefix_rft": 51.8, "freeze_prefix": 45.4,
    "update_all_prefix": 45.7, "static_prefix_weight": 43.8, "rft_entropy_clip": 43.8,
    "dr_po": 33.8,
}


def test_every_preset_has_an_expectation():
    assert set(PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_resolves_with_prescribed_values(name):
    cfg = cfg_for(name)
    f = flat(cfg)
    assert f["method"] == name
    want = {**PREFIX_RFT, **EXPECTED[name]}
    got = {k: f[k] for k in want}
    assert got == want


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_group_budget(name):
    # one sample is replaced, never added: policy samples = G - n_prefixed - n_full_demo >= 0
    r = cfg_for(name).rollout
    assert r.group_size == 8
    assert 0 <= r.n_prefixed + r.n_full_demo <= 8


def test_rl_sft_loss_trains_seven_samples_plus_demo():
    r = cfg_for("rl_sft_loss").rollout
    # 8 - 0 - 1 = 7 on-policy samples
    assert r.group_size - r.n_prefixed - r.n_full_demo == 7


@pytest.mark.parametrize("name", [n for n in PAPER_SCORES if n in PRESETS])
def test_preset_paper_scores(name):
    assert PRESETS[name].paper_score == pytest.approx(PAPER_SCORES[name])


def test_preset_values_sets_method():
    v = preset_values("luffy")
    assert v["method"] == "luffy"
    assert v["loss"]["demo_rule"] == "shaped"
    assert "method" not in PRESETS["luffy"].values


def test_preset_values_returns_an_independent_copy():
    v = preset_values("luffy")
    # checked by identity, without mutating the shared preset
    assert v["loss"] is not PRESETS["luffy"].values["loss"]
    assert v["rollout"] is not PRESETS["luffy"].values["rollout"]


def test_unknown_preset_is_named_and_presets_listed():
    with pytest.raises(UserError) as e:
        cfg_for("prefix_rtf")
    msg = str(e.value)
    assert "prefix_rtf" in msg
    assert "did you mean 'prefix_rft'" in msg
    for name in ("sft", "rft", "luffy", "relift", "dr_po", "prefix_rft"):
        assert name in msg


def test_missing_method():
    with pytest.raises(UserError, match="method"):
        resolve(dict(BASE))


# ============================================================================ errors name the key
def test_unknown_key_named_with_suggestion():
    with pytest.raises(UserError) as e:
        cfg_for("prefix_rft", loss={"demo_rul": "none"})
    msg = str(e.value)
    assert "unknown key 'loss.demo_rul'" in msg
    assert "did you mean 'loss.demo_rule'" in msg


def test_unknown_nested_key_named_with_suggestion():
    with pytest.raises(UserError) as e:
        cfg_for("prefix_rft", overrides=["rollout.prefix_schedule.totl_steps=3"])
    msg = str(e.value)
    assert "rollout.prefix_schedule.totl_steps" in msg
    assert "rollout.prefix_schedule.total_steps" in msg


def test_unknown_top_level_key():
    with pytest.raises(UserError, match="unknown key 'sed'.*did you mean 'seed'"):
        cfg_for("prefix_rft", sed=1)


def test_wrong_type_names_the_key():
    with pytest.raises(UserError) as e:
        cfg_for("prefix_rft", overrides=["rl.steps=ten"])
    assert "rl.steps" in str(e.value)
    assert "ten" in str(e.value)


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("method: rft\nmodel:\n  name_or_path: m\ndata:\n  train: x\nrl:\n  steps: ten\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(p) in str(e.value)
    assert "rl.steps" in str(e.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("rollout.shared_prefix=maybe", "rollout.shared_prefix"),  # bool
        ("loss.demo_rule=sometimes", "loss.demo_rule"),  # Literal
        ("model.packing=sometimes", "model.packing"),  # Literal with on/off
        ("loss.demo_rule=true", "loss.demo_rule"),  # a YAML boolean is not on/off there
        ("rl.optim.lr=fast", "rl.optim.lr"),  # float
        ("model.name_or_path=3", "model.name_or_path"),  # str
        ("rl.optim.betas=0.9", "rl.optim.betas"),  # list
        ("rl=5", "rl"),  # section
        ("rollout.n_prefixed=1.5", "rollout.n_prefixed"),  # int, non-integral float
    ],
)
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(UserError, match=f"key '{key}'"):
        cfg_for("prefix_rft", overrides=[override])


def test_missing_required_key_named():
    with pytest.raises(UserError) as e:
        resolve({"method": "rft", "model": {"dtype": "float32"}, "data": {"train": "x"}})
    assert "model.name_or_path" in str(e.value)
    with pytest.raises(UserError) as e:
        resolve({"method": "rft", "model": {"name_or_path": "m"}, "data": {"schema": "auto"}})
    assert "data.train" in str(e.value)


def test_missing_required_key_named_when_whole_section_absent():
    with pytest.raises(UserError, match="model.name_or_path"):
        resolve({"method": "rft", "data": {"train": "x"}})


def test_missing_data_section_named():
    with pytest.raises(UserError, match="data.train"):
        resolve({"method": "rft", "model": {"name_or_path": "m"}})


def test_cross_field_validation_names_key():
    with pytest.raises(UserError, match="rollout.n_prefixed"):
        cfg_for("prefix_rft", overrides=["rollout.n_prefixed=9"])  # 9 > group_size 8
    with pytest.raises(UserError, match="loss.entropy_fraction"):
        cfg_for("prefix_rft", overrides=["loss.entropy_fraction=0"])
    with pytest.raises(UserError, match="rollout.prefix_schedule.high"):
        cfg_for("prefix_rft", overrides=["rollout.prefix_schedule.high=1.5"])



def test_a_curve_over_zero_held_out_problems_is_refused():
    """eval.num_problems 0 turns the trainer's evaluation off; with eval.every_steps it would
    log an accuracy of nan over 0 problems every N steps (the GPU probe of 2026-12-07 did)."""
    with pytest.raises(UserError, match=r"key 'eval.every_steps': 5 .*eval.num_problems is 0"):
        cfg_for("prefix_rft", overrides=["eval.every_steps=5", "eval.num_problems=0"])
    c = cfg_for("prefix_rft", overrides=["eval.every_steps=5", "eval.num_problems=3"])
    assert (c.eval.every_steps, c.eval.num_problems) == (5, 3)
    assert cfg_for("prefix_rft", overrides=["eval.every_steps=0", "eval.num_problems=0"])

# ============================================================================ overrides / order
def test_parse_overrides_yaml_values():
    got = parse_overrides(
        ["rl.steps=10", "loss.demo_rule=none", "rollout.prefix_schedule.kind=linear",
         "rollout.shared_prefix=true", "rl.optim.betas=[0.8, 0.9]", "model.chat_template=null"]
    )
    assert got == {
        "rl": {"steps": 10, "optim": {"betas": [0.8, 0.9]}},
        "loss": {"demo_rule": "none"},  # the string 'none', not YAML null
        "rollout": {"prefix_schedule": {"kind": "linear"}, "shared_prefix": True},
        "model": {"chat_template": None},
    }


def test_parse_overrides_requires_key_value():
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["rl.steps"])


def test_overrides_win_over_file_and_preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "method: freeze_prefix\nmodel:\n  name_or_path: m\ndata:\n  train: x\n"
        "rl:\n  steps: 20\nloss:\n  demo_rule: ppo\nrollout:\n  prefix_schedule:\n    kind: delay\n"
    )
    cfg = load_config(p, ["rl.steps=10", "loss.demo_rule=none",
                          "rollout.prefix_schedule.kind=linear"])
    assert cfg.rl.steps == 10  # override beats file (20) and default (500)
    assert cfg.loss.demo_rule == "none"  # override beats file (ppo)
    assert cfg.rollout.prefix_schedule.kind == "linear"  # override beats file (delay)
    assert cfg.method == "freeze_prefix"


def test_resolution_order_defaults_preset_file_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(
        "method: rft\nmodel:\n  name_or_path: m\ndata:\n  train: x\n"
        "rollout:\n  n_prefixed: 2\n"
    )
    # default n_prefixed 1; preset rft sets 0; file sets 2; no override -> 2
    assert load_config(p).rollout.n_prefixed == 2
    # override -> 3
    assert load_config(p, ["rollout.n_prefixed=3"]).rollout.n_prefixed == 3
    # file without the key: the preset's 0 beats the default 1
    q = tmp_path / "d.yaml"
    q.write_text("method: rft\nmodel:\n  name_or_path: m\ndata:\n  train: x\n")
    assert load_config(q).rollout.n_prefixed == 0
    # a key neither preset nor file sets keeps its default (rl.steps 500)
    assert load_config(q).rl.steps == 500
    # the preset's nested values merge with (not replace) the section of the file
    r = tmp_path / "e.yaml"
    r.write_text("method: luffy\nmodel:\n  name_or_path: m\ndata:\n  train: x\n"
                 "loss:\n  clip_eps_high: 0.28\n")
    cfg = load_config(r)
    assert cfg.loss.clip_eps_high == 0.28 and cfg.loss.demo_rule == "shaped"


def test_method_override_selects_the_preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: rft\nmodel:\n  name_or_path: m\ndata:\n  train: x\n")
    cfg = load_config(p, ["method=luffy"])
    assert cfg.method == "luffy"
    assert cfg.loss.demo_rule == "shaped" and cfg.rollout.n_full_demo == 1


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("method: rft\nrl:\n  steps: [1, 2\n  x: 3\n")
    with pytest.raises(UserError) as e:
        read_yaml(p)
    msg = str(e.value)
    assert "broken.yaml" in msg
    assert "line 4" in msg  # the parser fails at 'x: 3' on line 4
    with pytest.raises(UserError, match="broken.yaml"):
        load_config(p)


def test_missing_file_and_non_mapping_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="list.yaml"):
        read_yaml(p)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_yaml_1e_minus_6_is_a_float(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("method: rft\nmodel:\n  name_or_path: m\ndata:\n  train: x\n"
                 "rl:\n  optim:\n    lr: 1e-6\n")
    assert read_yaml(p)["rl"]["optim"]["lr"] == "1e-6"  # PyYAML (YAML 1.1) gives a string
    cfg = load_config(p)
    assert isinstance(cfg.rl.optim.lr, float)
    assert cfg.rl.optim.lr == 1e-6
    cfg = load_config(p, ["sft.optim.lr=5e-5"])
    assert isinstance(cfg.sft.optim.lr, float) and cfg.sft.optim.lr == 5e-5


def test_packing_on_off_auto(tmp_path):
    assert cfg_for("prefix_rft").model.packing == "auto"
    # YAML 1.1 reads on/off (and yes/no) as booleans: they mean "on"/"off" here
    for raw, want in (("on", "on"), ("off", "off"), ("true", "on"), ("'off'", "off"), ("auto", "auto")):
        assert cfg_for("prefix_rft", overrides=[f"model.packing={raw}"]).model.packing == want
    p = tmp_path / "packed.yaml"
    p.write_text("method: rft\nmodel:\n  name_or_path: m\n  packing: off\ndata:\n  train: x\n")
    cfg = load_config(p)
    assert cfg.model.packing == "off"
    p.write_text(cfg.to_yaml())  # written back as a string, read back the same
    assert load_config(p) == cfg


def test_int_and_float_coercion():
    cfg = cfg_for("prefix_rft", overrides=["rl.steps=10.0", "sft.epochs=2"])
    assert cfg.rl.steps == 10 and isinstance(cfg.rl.steps, int)  # integral float -> int
    assert cfg.sft.epochs == 2.0 and isinstance(cfg.sft.epochs, float)  # int -> float
    with pytest.raises(UserError, match="rl.steps"):
        cfg_for("prefix_rft", overrides=["rl.steps=true"])  # bool is not an int


# ============================================================================ hash / flatten / keys
def test_config_hash_stable_and_sensitive():
    a, b = cfg_for("prefix_rft"), cfg_for("prefix_rft")
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 16
    int(a.config_hash(), 16)  # hex
    assert cfg_for("prefix_rft", overrides=["rl.steps=499"]).config_hash() != a.config_hash()
    assert cfg_for("prefix_rft", overrides=["loss.clip_eps_high=0.28"]).config_hash() != a.config_hash()
    assert cfg_for("luffy").config_hash() != a.config_hash()


def test_flatten_dotted_keys():
    d = {"a": {"b": 1, "c": {"d": 2}}, "e": 3, "random_init": {"hidden_size": 8}}
    assert flatten(d) == {"a.b": 1, "a.c.d": 2, "e": 3, "random_init": {"hidden_size": 8}}
    f = flat(cfg_for("prefix_rft"))
    assert f["rollout.prefix_schedule.kind"] == "cosine"
    assert f["rl.optim.lr"] == 1e-6
    assert f["model.name_or_path"] == "some/model"
    assert not any(isinstance(v, dict) for k, v in f.items() if k != "model.random_init")


def test_describe_keys_covers_every_leaf_with_help():
    rows = describe_keys()
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys))
    # every leaf of a resolved config is documented, and nothing else
    assert set(keys) == set(flat(cfg_for("prefix_rft")))
    for key, _default, help_text in rows:
        assert isinstance(help_text, str) and help_text.strip(), key
    d = {k: default for k, default, _ in rows}
    assert d["model.name_or_path"] == "(required)"
    assert d["data.train"] == "(required)"
    assert d["method"] == "(required)"
    assert d["rl.optim.lr"] == repr(1e-6)
    assert d["rollout.prefix_schedule.kind"] == repr("cosine")


def test_every_dataclass_field_has_help():
    def walk(cls):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name}"
            if dataclasses.is_dataclass(f.type) or (
                f.default_factory is not dataclasses.MISSING
                and dataclasses.is_dataclass(f.default_factory)
            ):
                walk(f.default_factory)

    walk(Config)


def test_to_yaml_round_trip(tmp_path):
    cfg = cfg_for("sft", overrides=["rl.steps=7"])  # sft sets sft.epochs = 3 explicitly
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


def test_config_hash_survives_yaml_round_trip_with_defaults(tmp_path):
    cfg = cfg_for("luffy")
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg  # dataclass equality holds (0 == 0.0) ...
    assert again.config_hash() == cfg.config_hash()  # ... the hash does not


# ============================================================================ one file, two readers
PIPELINE_SECTIONS = {"pipeline": {"epochs": 3, "benchmarks": ["synthetic:add"],
                                  "train": {"gpus": 2}},
                     "tracking": {"experiment": "x", "timeout_s": 5}}


def test_pipeline_and_tracking_sections_are_skipped_by_the_library(tmp_path):
    """A file written for the flow trains as is: `Config` has no pipeline or tracking section,
    and the config (and its hash) is the one of the same file without them."""
    bare = {"method": "prefix_rft", **BASE}
    with_flow = tmp_path / "flow.yaml"
    with_flow.write_text(yaml.safe_dump({**bare, **PIPELINE_SECTIONS}))
    cfg = load_config(with_flow, ["pipeline.epochs=4", "tracking.uri=http://x"])
    assert set(NON_TRAINING_SECTIONS) == {"pipeline", "tracking"}
    assert not set(NON_TRAINING_SECTIONS) & {f.name for f in dataclasses.fields(cfg)}
    assert cfg == resolve(bare) and cfg.config_hash() == resolve(bare).config_hash()
    assert "pipeline" not in cfg.to_yaml() and "tracking" not in cfg.to_yaml()


def test_unknown_keys_next_to_pipeline_sections_are_still_named(tmp_path):
    p = tmp_path / "flow.yaml"
    p.write_text(yaml.safe_dump({"method": "rft", **BASE, **PIPELINE_SECTIONS,
                                 "loss": {"demo_rul": "none"}}))
    with pytest.raises(UserError) as e:
        load_config(p)
    assert str(e.value) == (f"{p}: unknown key 'loss.demo_rul' (did you mean 'loss.demo_rule'?)")
    with pytest.raises(UserError, match="unknown key 'pipline' \\(did you mean 'pipeline'\\?\\)"):
        cfg_for("rft", pipline={"epochs": 2})


@pytest.mark.parametrize("key,value,message", [
    ("rollout.vllm.gpu_memory_utilization", 1.0, "1.0 is out of range: must be > 0 and < 1"),
    ("rollout.vllm.gpu_memory_utilization", 0.0, "0.0 is out of range: must be > 0 and < 1"),
    ("rollout.vllm.sleep_level", 3, "3 is out of range: must be >= 0 and <= 2"),
    ("rollout.vllm.max_model_len", 100, "must exceed rollout.max_response_len \\(8192\\)"),
    ("loss.rollout_correction_cap", 0.5, "0.5 is out of range: must be >= 1"),
])
def test_vllm_and_rollout_correction_ranges(key, value, message):
    from prefix_rft.core.config import resolve
    from prefix_rft.core.dicts import deep_merge, dotted_to_nested

    base = {"method": "prefix_rft", "model": {"name_or_path": "m"}, "data": {"train": "t"},
            "loss": {"rollout_correction": "tis"}}
    with pytest.raises(UserError, match=f"key '{key}': {message}"):
        resolve(deep_merge(base, dotted_to_nested({key: value})))


def test_rollout_correction_needs_the_engine_logprobs():
    from prefix_rft.core.config import resolve

    with pytest.raises(UserError, match="key 'loss.rollout_correction': tis needs the rollout "
                                        "engine's log-probs"):
        resolve({"method": "rft", "model": {"name_or_path": "m"}, "data": {"train": "t"},
                 "rollout": {"logprob_gap": "off"}, "loss": {"rollout_correction": "tis"}})
