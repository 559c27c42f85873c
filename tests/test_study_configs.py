"""configs/study/: the small-scale study's files resolve, are what make_configs.py writes, name their
method, and have the equal budgets configs/study/README.md claims. No model is loaded."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import yaml

from prefix_rft.core.config import NON_TRAINING_SECTIONS, read_yaml
from prefix_rft.core.dicts import flatten
from prefix_rft.core.presets import PRESETS, preset_values
from steps.data import epoch_plan
from steps.flow_config import load_flow_config

STUDY = Path(__file__).resolve().parents[1] / "configs" / "study"
METHODS = ["sft", "rft", "sft_then_rft", "luffy", "relift", "prefix_rft", "freeze_prefix",
           "update_all_prefix"]
RL_METHODS = ["rft", "luffy", "relift", "prefix_rft", "freeze_prefix", "update_all_prefix"]
P, G, S = 32, 8, 24  # README.md: prompts per step, group size, steps
LEVELS = ["synthetic:add", "synthetic:mul", "synthetic:word"]


def _make_configs():
    spec = importlib.util.spec_from_file_location("make_configs", STUDY / "make_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cfg(name: str):
    return load_flow_config(STUDY / f"{name}.yaml")


def test_the_study_has_one_file_per_method_and_the_base():
    assert sorted(p.stem for p in STUDY.glob("*.yaml")) == sorted(METHODS + ["base"])
    assert sorted(_make_configs().METHODS) == sorted(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_method_files_are_generated_from_the_base(name):
    """A hand edit (or a base.yaml change without re-running make_configs.py) fails here."""
    assert (STUDY / f"{name}.yaml").read_text() == _make_configs().method_text(name), (
        "run: python configs/study/make_configs.py")


@pytest.mark.parametrize("name", METHODS + ["base"])
def test_every_file_resolves_and_names_its_method(name):
    c = cfg(name)
    assert c.method == (name if name != "base" else "prefix_rft")
    assert c.model.name_or_path == "smollm2-135m-instruct"  # the alias configs/demo.yaml uses
    assert c.data.train == "synthetic:add,mul,word"
    assert c.pipeline.benchmarks == LEVELS
    assert c.eval.n_samples >= 4 and c.eval.temperature > 0  # avg@4 with a CI
    assert c.eval.max_new_tokens <= 128
    assert c.needs_demos() == (name != "rft")


@pytest.mark.parametrize("name", METHODS)
def test_method_files_differ_from_the_base_only_in_method_and_budget_keys(name):
    base = flatten(read_yaml(STUDY / "base.yaml"))
    mine = flatten(read_yaml(STUDY / f"{name}.yaml"))
    changed = {k for k in base.keys() | mine.keys() if base.get(k) != mine.get(k)}
    assert changed <= {"method", "rl.steps", "sft.epochs", "sft.batch_size", "relift.buffer_size"}
    # and no file writes a key that a study method's preset sets (it would override the preset)
    preset_keys = set().union(*(flatten(preset_values(m)) for m in METHODS)) - {"method"}
    written = set(base) & preset_keys
    assert written == {"rl.steps"}, written  # base's S; sft / sft_then_rft write their own


def test_methods_differ_only_in_their_presets():
    """Resolved, two study configs differ only in keys that some preset sets (and the budget)."""
    ref = flatten(cfg("prefix_rft").to_dict())
    preset_keys = set().union(*(flatten(preset_values(m)) for m in METHODS))
    for name in METHODS:
        mine = flatten(cfg(name).to_dict())
        diff = {k for k in ref if ref[k] != mine[k]}
        assert diff <= preset_keys | {"rl.steps", "sft.epochs", "sft.batch_size"}, (name, diff)
    assert cfg("relift").relift.buffer_size == P and cfg("relift").relift.enabled


def test_ablations_are_prefix_rft_with_one_change():
    base = flatten(cfg("prefix_rft").to_dict())
    for name, change in [("freeze_prefix", {"loss.demo_rule": "none"}),
                         ("update_all_prefix", {"loss.entropy_selection": "all"})]:
        mine = flatten(cfg(name).to_dict())
        assert {k: mine[k] for k in base if base[k] != mine[k]} == {"method": name, **change}
        assert PRESETS[name].paper_score is not None  # one of the paper's ablations


def test_budgets_are_equal():
    """Every method: P x S training problems, each once; RL steps of P prompts x G; S steps."""
    n_train = P * S
    for name in METHODS:
        c = cfg(name)
        assert (c.rollout.num_prompts, c.rollout.group_size, c.rl.num_minibatches) == (P, G, 1)
        assert c.data.synthetic_train_size == n_train == 768
        sft = c.sft.steps(n_train)
        plan = epoch_plan(c, n_train)
        assert plan["total_steps"] == S, name
        demos_sft = sft * c.sft.batch_size if sft else 0
        prompts_rl = c.rl.steps * c.rollout.num_prompts
        # the problems a run consumes (SFT demos + RL prompts) = one pass over the data
        assert demos_sft + prompts_rl == n_train, name
        if name in RL_METHODS:
            assert (sft, c.rl.steps, c.rl.steps * P * G) == (0, S, 6144)
            assert c.rollout.prefix_schedule.total_steps == S
    # sft: S SFT steps of P demos (one epoch); sft_then_rft: S/2 + S/2
    assert (cfg("sft").sft.steps(n_train), cfg("sft").rl.steps) == (S, 0)
    c = cfg("sft_then_rft")
    assert (c.sft.steps(n_train), c.rl.steps) == (S // 2, S // 2)
    assert math.ceil(n_train / P) == S  # sft.batch_size P -> one epoch is S steps


def test_everything_but_the_method_is_shared():
    """Seed, model, data, evaluation and pipeline sections are the base's in every file."""
    base = read_yaml(STUDY / "base.yaml")
    for name in METHODS:
        mine = read_yaml(STUDY / f"{name}.yaml")
        for section in ("seed", "model", "data", "eval", "reward", "rollout", *NON_TRAINING_SECTIONS):
            assert mine[section] == base[section], (name, section)


def test_readme_documents_every_method():
    text = (STUDY / "README.md").read_text()
    for name in METHODS:
        assert f"{name}.yaml" in text
    assert yaml.safe_load((STUDY / "base.yaml").read_text())["rl"]["steps"] == S


def test_study_table_from_summaries(tmp_path):
    """studies/study_table.py: one row per run, the mean over seeds per method."""
    spec = importlib.util.spec_from_file_location(
        "study_table", STUDY.parents[1] / "studies" / "study_table.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)

    def row(method, seed, run_id, add, rc=0):
        score = {lv: {"0": {"value": 0.0, "ci": [0.0, 0.0]},
                      "1": {"value": add, "ci": [add - 0.1, add + 0.1]}} for lv in st.LEVELS}
        return {"config": f"configs/study/{method}.yaml", "method": method, "seed": seed,
                "rc": rc, "card": "NVIDIA H100 80GB HBM3", "date": f"2026-12-01T10:0{seed}:00+00:00",
                "mlflow_run_id": run_id, "scores": score if rc == 0 else {}}

    (tmp_path / "a.json").write_text(json_dumps([row("rft", 1, "r1", 0.5), row("sft", 1, "s1", 0.25),
                                                 row("prefix_rft", 1, "p1", 0.25)]))
    (tmp_path / "b.json").write_text(json_dumps([row("rft", 2, "r2", 0.75), row("rft", 1, "r1", 0.5),
                                                 row("prefix_rft", 2, "p2", 0.5),
                                                 row("luffy", 1, "l1", 0.0, rc=1)]))
    text = st.tables(st.load([tmp_path / "a.json", tmp_path / "b.json"]))
    lines = text.splitlines()
    assert lines[2].startswith("| sft | 1 | 0.250 [0.150, 0.350] |")  # ORDER: sft before rft
    assert "`bash studies/study.sh configs/study/rft.yaml:2`" in lines[4]
    # rft over seeds: 0.5, 0.75 -> mean 0.625, SD 0.17678, SE 0.125; t_{0.975,1} = 12.706:
    # 0.625 -+ 1.588 = [-0.963, 2.213]
    assert ("| rft | 2 | 0.625 (0.500-0.750) | 0.625 (0.500-0.750) | 0.625 (0.500-0.750) "
            "| 0.500, 0.750 | 0.625 [-0.963, 2.213] | 0.177 |") in text
    assert "| sft | 1 | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 | - |" in text  # one seed: no CI
    # prefix_rft (0.25, 0.5) minus rft (0.5, 0.75): -0.25; SE^2 = 0.015625 * 2, df = 2,
    # t_{0.975,2} = 4.303: -0.25 -+ 4.303 * 0.176777 = [-1.011, +0.511]; sft (1 seed) is left out
    assert "| rft | 2 vs 2 | " + "-0.250 [-1.011, +0.511] | " * 4 + "no |" in text
    assert not any(line.startswith("| sft | 1 vs") for line in lines)
    assert "- configs/study/luffy.yaml seed 1: rc 1" in text
    assert sum(line.startswith("| rft |") for line in lines) == 4  # r1 once, r2, mean, difference



def test_results_md_tables_are_the_committed_summaries():
    """docs/RESULTS.md's tables are study_table.py's output for the summary.json files the GPU
    rounds returned (docs/results/): a number edited by hand, or a round added to one and not the
    other, fails here."""
    spec = importlib.util.spec_from_file_location(
        "study_table", STUDY.parents[1] / "studies" / "study_table.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    root = STUDY.parents[1]
    summaries = sorted((root / "docs" / "results").glob("round*_summary.json"))
    assert len(summaries) == 3
    rows = st.load(summaries)
    assert len(rows) == 24 and all(r["rc"] == 0 for r in rows)
    # every configuration with seeds 1, 2 and 3
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], set()).add(r["seed"])
    assert by_method == {m: {1, 2, 3} for m in st.ORDER[1:]}
    results = (root / "docs" / "RESULTS.md").read_text()
    missing = [line for line in st.tables(rows).splitlines() if line and line not in results]
    assert not missing, "docs/RESULTS.md lacks study_table.py output lines:\n" + "\n".join(missing[:5])

def json_dumps(x) -> str:
    import json

    return json.dumps(x)
