"""configs/realmath/: every file loads with the flow's config loader, is what make_configs.py
writes, and all methods have the same budget (prompts per step, rollouts per step, optimizer
steps). No model is loaded and the data set is not built (its size is pinned in make_configs.py
and checked against the built set in tests/test_realmath_data.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from prefix_rft.core.config import NON_TRAINING_SECTIONS, read_yaml
from prefix_rft.core.dicts import flatten
from prefix_rft.core.presets import preset_values
from steps.data import epoch_plan
from steps.evaluate import eval_dtype
from steps.flow_config import load_flow_config

HERE = Path(__file__).resolve().parents[1] / "configs" / "realmath"
METHODS = ["sft", "rft", "sft_then_rft", "luffy", "prefix_rft"]
RL_METHODS = ["rft", "luffy", "prefix_rft"]
P, G, S = 32, 8, 10  # README.md: prompts per step, trajectories per prompt, optimizer steps


def _make_configs():
    spec = importlib.util.spec_from_file_location("realmath_make_configs", HERE / "make_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cfg(name: str):
    return load_flow_config(HERE / f"{name}.yaml")


def test_one_file_per_method_and_the_base():
    assert sorted(p.stem for p in HERE.glob("*.yaml")) == sorted(METHODS + ["base"])
    assert sorted(_make_configs().METHODS) == sorted(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_method_files_are_generated_from_the_base(name):
    assert (HERE / f"{name}.yaml").read_text() == _make_configs().method_text(name), (
        "run: python configs/realmath/make_configs.py")


@pytest.mark.parametrize("name", METHODS + ["base"])
def test_every_file_resolves_for_the_flow(name):
    c = cfg(name)
    assert c.method == (name if name != "base" else "prefix_rft")
    assert c.model.name_or_path == "qwen2.5-coder-1.5b-instruct"
    assert (c.model.dtype, c.model.autocast) == ("float32", "bfloat16")  # float32 master weights
    assert c.rollout.engine == "vllm" and c.pipeline.eval_engine == "vllm"
    assert eval_dtype(c) == "bfloat16"  # the eval cells decode in bf16 like the rollouts
    assert (c.data.train, c.data.test) == ("realmath:train", "realmath:heldout")
    assert c.pipeline.eval_protocol == "paper"
    assert c.pipeline.eval_max_new_tokens == c.rollout.max_response_len == c.eval.max_new_tokens
    assert c.pipeline.benchmarks == ["heldout", "aime24", "aime25", "amc", "math500"]
    assert c.pipeline.eval_task_per == "checkpoint"  # one vLLM start for all five
    assert (c.eval.num_problems, c.eval.n_samples, c.eval.temperature) == (123, 1, 0.0)
    assert c.needs_demos() == (name != "rft")


def test_no_file_writes_a_key_a_preset_owns():
    base = flatten(read_yaml(HERE / "base.yaml"))
    preset_keys = set().union(*(flatten(preset_values(m)) for m in METHODS)) - {"method"}
    assert set(base) & preset_keys == {"rl.steps"}
    for name in METHODS:
        mine = flatten(read_yaml(HERE / f"{name}.yaml"))
        changed = {k for k in base.keys() | mine.keys() if base.get(k) != mine.get(k)}
        assert changed <= {"method", "rl.steps", "sft.epochs", "sft.batch_size"}, (name, changed)


def test_budgets_are_equal():
    """Same prompts per step, same rollouts per step, same optimizer steps for every method."""
    n_train = _make_configs().NUM_TRAIN
    for name in METHODS:
        c = cfg(name)
        assert (c.rollout.num_prompts, c.rollout.group_size, c.rl.num_minibatches) == (P, G, 1)
        sft = c.sft.steps(n_train) if c.sft.epochs > 0 else 0
        plan = epoch_plan(c, n_train)
        assert plan["total_steps"] == sft + c.rl.steps == S, (name, plan)
        if sft:
            assert c.sft.batch_size == P  # an SFT step sees P demonstrations
        # problems consumed: P per optimizer step, whatever the step
        assert sft * P + c.rl.steps * P == S * P == 320, name
        if name in RL_METHODS:
            assert (sft, c.rl.steps) == (0, S)
            assert c.rl.steps * P * G == 2560
            assert c.rollout.prefix_schedule.total_steps == S
    assert (cfg("sft").sft.steps(n_train), cfg("sft").rl.steps) == (S, 0)
    c = cfg("sft_then_rft")
    assert (c.sft.steps(n_train), c.rl.steps) == (S // 2, S // 2)


def test_everything_but_the_method_is_shared():
    base = read_yaml(HERE / "base.yaml")
    for name in METHODS:
        mine = read_yaml(HERE / f"{name}.yaml")
        for section in ("seed", "model", "data", "eval", "reward", "rollout", *NON_TRAINING_SECTIONS):
            assert mine[section] == base[section], (name, section)


def test_readme_states_the_budget_and_every_method():
    text = (HERE / "README.md").read_text()
    for name in METHODS:
        assert f"`{name}.yaml`" in text
    assert "P = 32" in text and "G = 8" in text and "S = 10" in text


def test_docs_quote_the_committed_greedy_math500_of_the_base_model():
    """docs/MODELS.md and configs/realmath/README.md quote the base model's greedy MATH-500 score
    through `prefix-rft eval` (issue 20: it must agree with the standalone conversion check);
    the numbers must be those of the summary.json the GPU call returned, and the standalone
    37.8% must lie inside its CI."""
    import json

    root = HERE.parents[1]
    s = json.loads((root / "docs/results/realmath_base/greedy_math500/summary.json").read_text())
    assert s["complete"] and s["protocol"]["temperature"] == 0.0
    assert s["protocol"]["max_new_tokens"] == 4096 and s["protocol"]["n"] == 1
    b = s["benchmarks"]["math500"]
    assert b["num_problems"] == 500
    pct = f"**{100 * b['avg_at_n']:.1f}%** greedy, 95% bootstrap CI [{100 * b['ci_low']:.1f}%, " \
          f"{100 * b['ci_high']:.1f}%], {100 * b['truncated_frac']:.1f}% of"
    assert pct == "**39.6%** greedy, 95% bootstrap CI [35.4%, 44.0%], 7.8% of"
    models = " ".join((root / "docs/MODELS.md").read_text().split())
    assert pct in models
    assert "**37.8%** greedy" in models and b["ci_low"] <= 0.378 <= b["ci_high"]
    readme = " ".join((HERE / "README.md").read_text().split())
    assert f"{b['avg_at_n']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]" in readme


def test_docs_quote_the_committed_sizing_probe():
    """The sizing probe's numbers in configs/realmath/README.md and docs/PERFORMANCE.md are those
    of its committed summary row and per-step metrics (docs/results/realmath_probe/)."""
    import json
    import statistics

    root = HERE.parents[1]
    d = root / "docs" / "results" / "realmath_probe"
    row = json.loads((d / "summary.json").read_text())[0]
    probe = json.loads((d / "steps.json").read_text())
    steps, final = probe["steps"], probe["final"]
    readme = " ".join((HERE / "README.md").read_text().split())
    perf = " ".join((root / "docs" / "PERFORMANCE.md").read_text().split())
    assert row["mlflow_run_id"] == probe["mlflow_run_id"] == "59c9d33d56a64f97a542749cb52e2af3"
    assert (row["rc"], row["wall_s"], row["card"]) == (0, 472, "NVIDIA H100 80GB HBM3")
    assert row["mlflow_run_id"] in readme
    t = row["task_s"]
    rest = t["start"] + t["filter_data"] + t["plan_eval"] + t["join_eval"] + t["end"]
    for doc in (readme, perf):
        assert f"| {round(t['train_epoch'])} |" in doc              # 333
        assert f"| {round(t['eval_task'])} |" in doc                # 90
        assert f"| {round(rest)} |" in doc                          # 48
        assert f"median {row['time_step_median']:.1f} s" in doc     # 17.7
    med = {k: statistics.median(steps[f"time/{k}"]) for k in ("generation", "update", "reward",
                                                               "weight_sync")}
    assert (f"generation {med['generation']:.1f}, update {med['update']:.1f}, reward "
            f"{med['reward']:.1f} ({min(steps['time/reward']):.1f}-{max(steps['time/reward']):.1f}), "
            f"weight sync {med['weight_sync']:.2f}") in readme
    assert f"generation {med['generation']:.1f}, update {med['update']:.1f}, weight sync" in perf
    tps = statistics.median(steps["tokens/trained"]) / med["update"]
    assert f"about {round(tps, -2):,.0f} trained tokens/s" in perf
    assert "policy reward " + ", ".join(f"{v:.3f}" for v in steps["reward/policy_mean"]) in readme
    pm, ratio = steps["reward/prefix_mean"], steps["prefix/ratio_mean"]
    assert (f"{pm[0]:.2f} at ratio {ratio[0]:.2f} to {pm[-1]:.2f} at {ratio[-1]:.2f}") in readme
    aw = steps["groups/all_wrong"]
    assert f"rose from {aw[0]:.0%} to {aw[-1]:.0%}" in readme and max(steps["groups/all_correct"]) == 0
    assert f"{steps['entropy/kept_fraction'][0]:.1%} of demo tokens kept" in readme
    ln, cut = steps["completions/mean_length"], steps["completions/clipped_ratio"]
    assert f"mean response {min(ln):.0f}-{max(ln):.0f} tokens, {min(cut) * 100:.0f}-{max(cut):.0%} cut" \
        in readme
    gap = steps["rollout/logprob_gap_mean"]
    assert (f"gap mean {min(gap):.3f}-{max(gap):.3f}, max "
            f"{max(steps['rollout/logprob_gap_max']):.2f}") in readme
    ent, na = steps["entropy/kept_mean"], steps["reward/no_answer_frac"]
    assert f"rose from {ent[0]:.2f} to {ent[-1]:.2f}" in readme
    assert f"from {na[0]:.0%} to {na[-1] * 100:.0f}-{max(na):.0%}" in readme
    assert (f"**{final['eval/heldout/avg_at_1']:.3f}** [{final['eval/heldout/ci_low']:.3f}, "
            f"{final['eval/heldout/ci_high']:.3f}] ({final['eval/heldout/no_answer_frac']:.0%} "
            "without an answer)") in readme
    assert row["scores"]["heldout"]["1"]["value"] == final["eval/heldout/avg_at_1"]
    assert set(steps["lr"]) == {5e-6}  # the configs' constant RL lr


def test_docs_quote_the_second_run_and_epoch_0():
    """The second GPU run's numbers (docs/results/realmath_probe2/steps.json, from the MLflow file
    and flow log a second call fetched) and the untrained model's b3 scores
    (docs/results/realmath_base/b3_*/summary.json), as configs/realmath/README.md and
    docs/PERFORMANCE.md quote them, and the reading that keeps the RL lr: the curve's last
    point is not below epoch 0's greedy held-out score."""
    import json
    import statistics

    root = HERE.parents[1]
    d = json.loads((root / "docs/results/realmath_probe2/steps.json").read_text())
    steps, ph, tasks = d["steps"], d["phases_s"], d["task_s"]
    readme = " ".join((HERE / "README.md").read_text().split())
    perf = " ".join((root / "docs" / "PERFORMANCE.md").read_text().split())
    assert d["mlflow_run_id"] in readme and d["card"] == "NVIDIA H100 80GB HBM3"
    assert steps["eval/accuracy"] == [17 / 123, 18 / 123] and d["eval_accuracy_steps"] == [5, 10]
    assert "0.138 at step 5 and 0.146 at step 10" in readme
    med_step = statistics.median(steps["time/step"])
    med_gen = statistics.median(steps["time/generation"])
    assert f"train_epoch {tasks['train_epoch']:.0f} s (333), median step {med_step:.1f} s (17.7) " \
           f"with generation {med_gen:.1f} s" in readme
    vllm = ph["train_epoch: colocated vLLM start (arguments to engine ready)"]
    ckpt = ph["train_epoch: last held-out eval to the committed checkpoint"]
    to_args = ph["eval_task: task start to the vLLM engine's arguments"]
    assert f"vLLM start {vllm:.1f} s (57), the checkpoint {ckpt:.1f} s (67)" in readme
    assert f"eval task {to_args:.1f} s from its start" in readme
    assert f"| train_epoch task | 333 | {tasks['train_epoch']:.0f} |" in perf
    assert f"| - RL step, median (generation) | 17.7 (7.4) | {med_step:.1f} ({med_gen:.1f}) |" in perf
    assert f"| - last held-out eval to the committed checkpoint | 67 | {ckpt:.1f} |" in perf
    assert f"| eval_task: vLLM start | ~45 | {ph['eval_task: vLLM start (arguments to engine ready)']:.1f} |" in perf
    assert "policy reward " + ", ".join(f"{v:.3f}" for v in steps["reward/policy_mean"]) in readme
    ent, na = steps["entropy/kept_mean"], steps["reward/no_answer_frac"]
    assert f"entropy {ent[0]:.2f} to {ent[-1]:.2f}; rollouts without an answer {na[0]:.0%} to " \
           f"{na[-1]:.0%}" in readme
    assert set(steps["lr"]) == {5e-6}

    base = root / "docs/results/realmath_base"
    greedy = json.loads((base / "b3_greedy1024/summary.json").read_text())
    h = greedy["benchmarks"]["realmath_heldout"]
    assert greedy["protocol"]["temperature"] == 0 and greedy["protocol"]["max_new_tokens"] == 1024
    assert (h["num_problems"], h["avg_at_n"]) == (123, 17 / 123)
    assert f"held-out greedy **{h['avg_at_n']:.3f}** [{h['ci_low']:.3f}, {h['ci_high']:.3f}]" in readme
    assert f"against {h['avg_at_n']:.3f} for the untrained model" in readme
    assert steps["eval/accuracy"][-1] >= h["avg_at_n"]  # the lr reading
    paper = json.loads((base / "b3_paper1024/summary.json").read_text())
    assert paper["complete"] is False and paper["pending"] == ["amc", "math500"]
    a24, a25 = paper["benchmarks"]["aime24"], paper["benchmarks"]["aime25"]
    assert (a24["n"], a25["n"], paper["protocol"]["max_new_tokens"]) == (32, 32, 1024)
    assert f"AIME24 **{a24['avg_at_n']:.3f}** [{a24['ci_low']:.3f}, {a24['ci_high']:.3f}] and " \
           f"AIME25 **{a25['avg_at_n']:.3f}** [{a25['ci_low']:.3f}, {a25['ci_high']:.3f}] " \
           f"(avg@32, {a24['truncated_frac']:.0%} of the samples cut" in readme
    minerva = json.loads((base / "b3_default/summary.json").read_text())["benchmarks"]["minerva"]
    assert (minerva["n"], minerva["num_problems"], minerva["protocol"]["max_new_tokens"]) == (32, 272, 4096)
    assert f"avg@32 **{minerva['avg_at_n']:.3f}** [{minerva['ci_low']:.3f}, {minerva['ci_high']:.3f}] " \
           f"in 510 s, {minerva['generation_seconds']:.0f} s of them generation at " \
           f"{minerva['tokens_per_second'] / 1000:.0f}k tokens/s" in readme
    assert f"with {minerva['grading_timeouts']} grading timeouts (scored 0)" in readme


def test_docs_quote_b6_and_the_part_of_b1():
    """Epoch 0's AMC and MATH-500 at paper @1,024 (b6) and the default protocol's AIME24/25 at
    4,096 (the finished part of b1), as configs/realmath/README.md quotes them, from the
    summary.json files the GPU calls returned."""
    import json

    base = HERE.parents[1] / "docs/results/realmath_base"
    readme = " ".join((HERE / "README.md").read_text().split())
    b6 = json.loads((base / "b6_paper1024/summary.json").read_text())
    assert b6["complete"] and b6["protocol"]["name"] == "paper"
    assert b6["protocol"]["max_new_tokens"] == 1024
    amc, m500 = b6["benchmarks"]["amc"], b6["benchmarks"]["math500"]
    assert (amc["n"], amc["num_problems"], m500["n"], m500["num_problems"]) == (32, 83, 1, 500)
    assert m500["avg_at_n"] == 174 / 500

    def ci(b):
        return f"**{b['avg_at_n']:.3f}** [{b['ci_low']:.3f}, {b['ci_high']:.3f}]"

    assert f"AMC {ci(amc)} (avg@32, {amc['truncated_frac']:.0%} cut) and MATH-500 {ci(m500)} " \
           f"(avg@1, {m500['truncated_frac']:.0%} cut)" in readme
    assert f"AMC paper @1,024 avg@32 {ci(amc)} ({amc['generation_seconds']:.0f} s of generation " \
           f"at {amc['tokens_per_second'] / 1000:.0f}k tokens/s) and MATH-500 avg@1 {ci(m500)} " \
           f"({m500['generation_seconds']:.0f} s at {m500['tokens_per_second'] / 1000:.0f}k" in readme
    b1 = json.loads((base / "b1_default/summary.json").read_text())
    assert b1["protocol"]["name"] == "default" and b1["protocol"]["max_new_tokens"] == 4096
    a24, a25 = b1["benchmarks"]["aime24"], b1["benchmarks"]["aime25"]
    assert (a24["n"], a25["n"], a24["num_problems"], a25["num_problems"]) == (32, 32, 30, 30)
    assert a24["avg_at_n"] == 12 / 960 and a24["grading_timeouts"] == 1
    assert f"AIME24 avg@32 **{a24['avg_at_n']:.3f}** [{a24['ci_low']:.3f}, " \
           f"{a24['ci_high']:.3f}] (one grading timeout, scored 0) and AIME25 " \
           f"**{a25['avg_at_n']:.3f}** [{a25['ci_low']:.3f}, {a25['ci_high']:.3f}]" in readme


def test_results_md_real_math_tables_are_the_committed_files():
    """docs/RESULTS.md's real-math tables are studies/realmath_table.py's output for the files
    the GPU calls returned (docs/results/realmath_s*_summary.json, the slim sample directories,
    the base directories): a number edited by hand, or a run committed without its table, fails
    here. Also the reading's counts, from the committed samples."""
    import json
    import subprocess
    import sys

    root = HERE.parents[1]
    res = root / "docs" / "results"
    summaries = sorted(res.glob("realmath_s*_summary.json"))
    rows = [r for f in summaries for r in json.loads(f.read_text())]
    assert {(r["method"], r["seed"], r["rc"]) for r in rows} == {("prefix_rft", 1, 0)}
    args = [str(f) for f in summaries]
    for d in sorted(res.glob("realmath_samples*")):
        args += ["--samples", str(d)]
    for d in sorted(p for p in (res / "realmath_base").iterdir() if p.is_dir()):
        args += ["--base", str(d)]
    out = subprocess.run([sys.executable, str(root / "studies" / "realmath_table.py"), *args],
                         capture_output=True, text=True, check=True).stdout
    results = (root / "docs" / "RESULTS.md").read_text()
    missing = [line for line in out.splitlines() if line and line not in results]
    assert not missing, "docs/RESULTS.md lacks realmath_table.py output lines:\n" + "\n".join(missing[:5])
    run = rows[0]["mlflow_run_id"]
    assert "| prefix_rft | 1 | 0.163 [0.106, 0.228] |" in out and run in out
    # the reading's counts: 20 of 123 held-out problems against the untrained model's 17
    assert rows[0]["scores"]["heldout"]["1"]["value"] == 20 / 123
    base = json.loads((res / "realmath_base/b3_greedy1024/summary.json").read_text())
    assert base["benchmarks"]["realmath_heldout"]["avg_at_n"] == 17 / 123
    text = " ".join(results.split())
    assert "held-out 0.163 against 0.138 (20 against 17 of 123 problems; 10 better, 7 worse)" in text
    assert "| heldout | prefix_rft | 1 vs 1 | 0.163 | 0.138 | +0.024 " in out and "| 10 / 7 / 106 |" in out
    assert "| math500 | prefix_rft | 1 vs 1 | 0.350 | 0.348 | +0.002 " in out and "| 55 / 54 / 391 |" in out
    assert "MATH-500 +0.002 (55 problems better, 54 worse)" in text and "AMC +0.005" in text
    assert rows[0]["scores"]["aime25"]["1"]["value"] == 1 / 960
    # b7: the untrained policy's own success rate on the training problems (81 of 697) and the
    # held-out part (13 of 123), one sample each under the paper protocol at 4,096 tokens
    import pandas as pd

    b7 = pd.read_parquet(res / "realmath_base/b7_paper/samples.parquet")
    solved = b7.groupby("benchmark")["correct"].agg(["sum", "count"])
    assert solved.loc["realmath_train"].tolist() == [81, 697]
    assert solved.loc["realmath_heldout"].tolist() == [13, 123]
    assert "| real-math train part (the policy's own success rate) | paper@4096 | 0.116 " in out
    assert "solves 81 of the 697 training problems (0.116 [0.093, 0.141]" in text
    assert "13 of the 123 held-out ones under the same protocol (0.106)" in text
    # the 1,024-token cost quoted in the reading: AMC 0.108 vs 0.122, MATH-500 0.348 vs 0.362
    assert "| amc | default@4096 | 0.122 [0.082, 0.165] | 32 | 83 | b7_default |" in out
    assert "| math500 | paper@4096 | 0.362 [0.320, 0.404] | 1 | 500 | b7_paper |" in out
    assert "about 0.014 on AMC (0.108 against 0.122) and MATH-500 (0.348 against 0.362)" in text


def test_results_md_papers_frame_quotes_the_papers_and_the_first_run():
    """The real-math part's frame for the reading: every paper number in its table is the one
    docs/PAPER_SETTINGS.md records, the gaps it states are those numbers' differences, and the
    resolution it states is half the width of the first run's paired 95% CIs against the
    untrained model (realmath_table.py's difference table, already checked above)."""
    import json
    import re

    root = HERE.parents[1]
    results = (root / "docs" / "RESULTS.md").read_text()
    part = results.split("### What the papers predict")[1].split("### Training curves")[0]
    settings = (root / "docs" / "PAPER_SETTINGS.md").read_text()
    table = [line for line in part.splitlines() if line.startswith("| ") and "---" not in line]
    header, rows = table[0], table[1:]
    assert header == "| source | model | SFT | RFT | SFT->RFT | LUFFY | Prefix-RFT |"
    quoted = {float(x) for line in rows for x in re.findall(r"\b\d\d\.\d\b", line)}
    assert quoted == {19.0, 44.1, 45.5, 48.2, 50.1, 51.8, 31.9, 30.0, 41.1, 52.2, 57.0}
    for x in quoted:
        assert f"{x:.1f}" in settings, x
    text = " ".join(part.split())
    assert f"{51.8 - 48.2:.1f} points above SFT->RFT and {51.8 - 44.1:.1f} above SFT" in text
    assert f"SFT->RFT first, {57.0 - 51.8:.1f} points above Prefix-RFT" in text
    assert f"SFT level with it (+{52.2 - 51.8:.1f})" in text
    diffs = results.split("Each method minus the untrained model")[1].split("Notes:")[0]
    half = {}
    for bench in ("heldout", "aime24", "amc", "math500"):
        line = next(x for x in diffs.splitlines() if x.startswith(f"| {bench} | prefix_rft |"))
        lo, hi = map(float, re.search(r"\[([-+]\d\.\d+), ([-+]\d\.\d+)\]", line).groups())
        half[bench] = (hi - lo) / 2
    assert (round(half["math500"], 2), round(half["amc"], 2), round(half["aime24"], 2),
            round(half["heldout"], 3)) == (0.04, 0.02, 0.01, 0.065)
    assert ("about +-0.04 on MATH-500, +-0.02 on AMC, +-0.01 on AIME24 and +-0.065 on the "
            "held-out part") in text
    row = json.loads((root / "docs/results/realmath_s1_summary.json").read_text())[0]
    assert f"at the measured ~{row['time_step_median']:.0f} s a step" in text


def test_docs_quote_the_first_study_run():
    """The first study run's phases and curves (docs/results/realmath_s1_steps.json, from the
    returned MLflow file and flow log), as configs/realmath/README.md, docs/PERFORMANCE.md and
    docs/RESULTS.md quote them; and the reading that the reward's fall follows the batches: the
    three runs of prefix_rft seed 1 drew the same problems (demo NLL alike at every step), start
    and end at the same policy reward, and differ by at most 0.031 in mean reward at any step."""
    import json
    import statistics

    root = HERE.parents[1]
    res = root / "docs" / "results"
    d = json.loads((res / "realmath_s1_steps.json").read_text())
    row = json.loads((res / "realmath_s1_summary.json").read_text())[0]
    steps, ph = d["steps"], d["phases_s"]
    assert d["mlflow_run_id"] == row["mlflow_run_id"] and d["task_s"] == row["task_s"]
    readme = " ".join((HERE / "README.md").read_text().split())
    perf = " ".join((root / "docs" / "PERFORMANCE.md").read_text().split())
    results = " ".join((root / "docs" / "RESULTS.md").read_text().split())
    t = row["task_s"]
    assert (f"flow 479 s: start {t['start']}, filter_data {t['filter_data']}, train_epoch "
            f"{t['train_epoch']}, plan_eval {t['plan_eval']}") in readme
    assert f"eval_task {t['eval_task']} (the five benchmarks), join_eval {t['join_eval']}, end {t['end']}" in readme
    assert row["wall_s"] == 878 and "956 s of call time** (878 s of flow)" in readme
    for key, before in (("train_epoch: task start to the vLLM engine's arguments", 27.3),
                        ("train_epoch: last held-out eval to the committed checkpoint", 71.8),
                        ("eval_task: task start to the vLLM engine's arguments", 51.3)):
        assert f"| {key} | {ph[key]} | {before} |" in readme
    ckpt = ph["train_epoch: last held-out eval to the committed checkpoint"]
    assert f"the commit took {ckpt} s instead of 71.8 s ({71.8 - ckpt:.0f} s less" in readme
    assert f"| - last held-out eval to the committed checkpoint | 71.8 | {ckpt} |" in perf
    step, gen = statistics.median(steps["time/step"]), statistics.median(steps["time/generation"])
    assert f"| - RL step, median (generation) | 21.6 (9.4) | {step:.1f} ({gen:.1f}) |" in perf
    assert f"| eval_task (the five benchmarks) | - | {t['eval_task']} |" in perf
    evals = " / ".join(str(ph[f"eval_task: {b}"]) for b in (
        "heldout (greedy, 123)", "aime24 (avg@32)", "aime25 (avg@32)", "amc (avg@32)",
        "math500 (avg@1)"))
    assert f"| eval_task: heldout / AIME24 / AIME25 / AMC / MATH-500 | {evals} | - |" in readme
    # RESULTS.md's reading
    assert d["eval_accuracy_steps"] == [5, 10]
    assert steps["eval/accuracy"] == [15 / 123, 20 / 123]
    assert "held-out accuracy was 0.122 at step 5 and 0.163 at step 10" in results
    pol = steps["reward/policy_mean"]
    assert f"fell from {pol[0]:.3f} at step 1 to {pol[-1]:.3f} at step 10" in results
    others = [json.loads((res / f"realmath_probe{s}/steps.json").read_text())["steps"]
              for s in ("", "2")]
    for o in others:
        assert (round(o["reward/policy_mean"][0], 4), round(o["reward/policy_mean"][-1], 4)) == \
            (round(pol[0], 4), round(pol[-1], 4))
        assert max(abs(a - b) for a, b in zip(o["demo/nll"], steps["demo/nll"])) < 0.01
    spread = max(max(v) - min(v) for v in zip(steps["reward/mean"],
                                              *(o["reward/mean"] for o in others)))
    assert f"differ by at most {spread:.3f} at any step" in results
