"""`prefix-rft eval` / `prefix-rft compare`, protocols, model resolution, the vLLM engine gate."""

from __future__ import annotations

import argparse
import json
import logging

import pyarrow.parquet as pq
import pytest

from prefix_rft.cli import main
from prefix_rft.errors import UserError
from prefix_rft.eval import protocol as BE
from prefix_rft.rollout.engines import vllm as vllm_engine
from prefix_rft.rollout.engines.factory import EngineSpec, make_engine


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


SIX = ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")


# ------------------------------------------------------------------------------ protocols
def test_protocols():
    d = BE.get_protocol("default")
    assert (d.n, d.temperature, d.top_p, d.max_new_tokens) == (32, 0.6, 0.95, 8192)
    assert all(d.n_for(b) == 32 for b in SIX)
    p = BE.get_protocol("paper")
    assert [p.n_for(b) for b in SIX] == [32, 32, 32, 1, 1, 1]
    # an explicit n applies to every benchmark, also the paper's per-benchmark ones
    p2 = p.replace(n=4, max_new_tokens=64)
    assert [p2.n_for(b) for b in SIX] == [4] * 6 and p2.max_new_tokens == 64
    assert p.replace(n=None).n_per_benchmark == p.n_per_benchmark  # None = keep
    with pytest.raises(UserError, match="unknown protocol 'fast'; expected one of default, paper"):
        BE.get_protocol("fast")


# ------------------------------------------------------------------------------ model resolution
def test_resolve_model_dir(tmp_path, smollm2_dir):
    assert BE.resolve_model_dir(str(smollm2_dir), tmp_path) == str(smollm2_dir)
    assert BE.resolve_model_dir("smollm2-135m-instruct", tmp_path) == "smollm2-135m-instruct"
    assert BE.resolve_model_dir("Qwen/Qwen2.5-Math-7B", tmp_path) == "Qwen/Qwen2.5-Math-7B"
    with pytest.raises(UserError, match="no such checkpoint or model directory"):
        BE.resolve_model_dir(str(tmp_path / "nope" / "step-000010"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a checkpoint"):
        BE.resolve_model_dir(str(tmp_path / "empty"), tmp_path)
    # a checkpoint without a manifest (older layout): its model/ dir
    ck = tmp_path / "ck"
    (ck / "model").mkdir(parents=True)
    (ck / "model" / "config.json").write_text("{}")
    assert BE.resolve_model_dir(str(ck), tmp_path) == str(ck / "model")


def test_checkpoint_uri_that_does_not_exist_fails_before_generation(tmp_path, capsys):
    rc = main(["eval", "--model", str(tmp_path / "missing" / "step-000010"), "--benchmarks", "amc",
               "--output", str(tmp_path / "out")])
    assert rc == 2
    assert "no such checkpoint or model directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_s3_checkpoint_that_does_not_exist(s3_env, tmp_path, capsys):
    uri = f"s3://{s3_env.bucket}/nothing-here/step-000001"
    rc = main(["eval", "--model", uri, "--benchmarks", "amc", "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert uri in err and "not a committed checkpoint" in err


def test_unknown_benchmark_lists_the_known_ones(smollm2_dir, tmp_path, capsys):
    rc = main(["eval", "--model", str(smollm2_dir), "--benchmarks", "aime26", "--output",
               str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'aime26'" in err
    for name in SIX:
        assert name in err


def test_missing_answer_field_names_file_and_row(smollm2_dir, tmp_path, capsys):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    rc = main(["eval", "--model", str(smollm2_dir), "--benchmarks", str(f), "--output",
               str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(f) in err and "row 2" in err and "answer" in err


def test_engine_names(smollm2_dir):
    with pytest.raises(UserError, match="--engine 'tpu': expected auto, hf or vllm"):
        make_engine("tpu", EngineSpec(None, model_dir=str(smollm2_dir)), key="--engine")


def test_token_logprobs_reads_vllms_flat_and_per_position_layouts():
    """The sampled tokens' log-probs from both shapes vLLM returns: flat lists (the sampled token
    first at each position, or after top-k entries) and one {id: Logprob} per position; a token
    without an entry is an error."""
    from types import SimpleNamespace as NS

    flat = NS(start_indices=[0, 1, 3], end_indices=[1, 3, 4], token_ids=[5, 9, 7, 2],
              logprobs=[-0.5, -1.0, -0.25, -3.0])
    assert vllm_engine.token_logprobs(flat, [5, 7, 2]) == [-0.5, -0.25, -3.0]
    assert vllm_engine.token_logprobs(flat, [5, 7]) == [-0.5, -0.25]
    per_position = [{5: NS(logprob=-0.5)}, {9: NS(logprob=-1.0), 7: NS(logprob=-0.25)}]
    assert vllm_engine.token_logprobs(per_position, [5, 7]) == [-0.5, -0.25]
    with pytest.raises(RuntimeError, match="no log-prob for sampled token 8 at position 1"):
        vllm_engine.token_logprobs(flat, [5, 8])


@pytest.mark.skipif(_vllm_importable(), reason="vLLM is installed here")
def test_vllm_engine_reports_missing_install():
    with pytest.raises(UserError, match="vLLM is not installed"):
        vllm_engine.VLLMEngine("/nonexistent", [0])


@pytest.mark.skipif(not vllm_engine.available(), reason="needs vLLM and a CUDA GPU")
def test_vllm_engine_generates(smollm2_dir, smol_tokenizer):
    from prefix_rft.rollout.engines.base import GenerationRequest, SamplingParams
    from prefix_rft.rollout.engines.vllm import VLLMEngine
    from prefix_rft.rollout.prompting import encode_prompt, stop_token_ids

    eng = VLLMEngine(str(smollm2_dir), stop_token_ids(smol_tokenizer), dtype="bfloat16",
                     gpu_memory_utilization=0.3)
    reqs = [GenerationRequest(encode_prompt(smol_tokenizer, "What is 2+3?"), 16)]
    a = eng.generate(reqs, 3, SamplingParams(0.6, 0.95, seed=1))
    b = eng.generate(reqs, 3, SamplingParams(0.6, 0.95, seed=1))
    assert len(a) == 1 and len(a[0]) == 3
    assert [o.token_ids for o in a[0]] == [o.token_ids for o in b[0]]
    assert all(0 < len(o.token_ids) <= 16 for o in a[0])
    eng.close()


# ------------------------------------------------------------------------------ the real thing
@pytest.mark.slow
def test_eval_cli_on_cpu_three_problems_each_n2_is_deterministic(smollm2_dir, tmp_path):
    def run(out, benchmarks):
        return main(["eval", "--model", str(smollm2_dir), "--benchmarks", ",".join(benchmarks),
                     "--n", "2", "--max-problems", "3", "--max-new-tokens", "12", "--seed", "3",
                     "--engine", "hf", "--dtype", "float32", "--workers", "1", "--output", str(out)])

    assert run(tmp_path / "a", SIX) == 0
    rows = pq.read_table(tmp_path / "a" / "samples.parquet").to_pylist()
    assert len(rows) == 6 * 3 * 2  # benchmarks x problems x samples
    assert {r["benchmark"] for r in rows} == set(SIX)
    assert set(rows[0]) >= {"problem_id", "sample", "completion", "extracted", "correct"}
    assert sorted({r["sample"] for r in rows}) == [0, 1]
    assert all(0 < r["num_tokens"] <= 12 for r in rows)
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert set(s["benchmarks"]) == set(SIX)
    for b, v in s["benchmarks"].items():
        per = {}
        for r in rows:
            if r["benchmark"] == b:
                per.setdefault(r["problem_id"], []).append(r["correct"])
        expect = sum(sum(c) / len(c) for c in per.values()) / len(per)  # avg@2 by hand
        assert v["avg_at_n"] == pytest.approx(expect)
        assert v["n"] == 2 and v["num_problems"] == 3
        assert v["protocol"]["max_new_tokens"] == 12 and v["protocol"]["seed"] == 3
        assert v["model"] == str(smollm2_dir)
    assert s["macro_avg"] == pytest.approx(sum(v["avg_at_n"] for v in s["benchmarks"].values()) / 6)
    # the same seed gives the same completions and grades (re-run on the two short sets)
    assert run(tmp_path / "b", ("aime24", "amc")) == 0
    again = pq.read_table(tmp_path / "b" / "samples.parquet").to_pylist()
    assert again == [r for r in rows if r["benchmark"] in ("aime24", "amc")]


# ------------------------------------------------------------------------------ compare
def _write_run(out, table: dict[str, dict[str, list[bool]]]):
    results = []
    for bench, problems in table.items():
        records = [{"benchmark": bench, "problem_id": pid, "sample": k, "completion": "",
                    "extracted": None, "correct": c, "status": "x", "finish_reason": "stop",
                    "num_tokens": 1}
                   for pid, cs in problems.items() for k, c in enumerate(cs)]
        results.append(BE.BenchmarkResult(bench, records, {"avg_at_n": 0.0, "n": 2}))
    BE.write_results(out, results)


def test_compare_two_result_dirs(tmp_path, capsys):
    # run A: amc p1 1/2, p2 0/2, p3 1/2 -> 1/3 ; run B: p1 2/2, p2 1/2, p3 1/2 -> 2/3
    _write_run(tmp_path / "A", {"amc": {"p1": [True, False], "p2": [False, False], "p3": [True, False]}})
    _write_run(tmp_path / "B", {"amc": {"p1": [True, True], "p2": [True, False], "p3": [False, True]}})
    rc = main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--names", "base,new",
               "--output", str(tmp_path / "r.md"), "--figure", str(tmp_path / "r.png")])
    assert rc == 0
    md = (tmp_path / "r.md").read_text()
    assert "| benchmark | base (95% CI) | new (95% CI) | new - base (95% CI, p) |" in md
    # means 33.3 and 66.7; per-problem differences +0.5, +0.5, 0 -> mean +33.3
    assert "| amc | 33.3 [" in md and "| 66.7 [" in md and "+33.3 [" in md
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_compare_needs_two_runs(tmp_path, capsys):
    _write_run(tmp_path / "A", {"amc": {"p1": [True]}})
    assert main(["compare", str(tmp_path / "A")]) == 2
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "nope")]) == 2
    assert "no samples.parquet" in capsys.readouterr().err


# ------------------------------------------------------------------------------ pipeline eval_task
def test_pipeline_eval_task_on_a_named_benchmark(smollm2_dir, tmp_path):
    """The pipeline's eval_task runs the same code as `prefix-rft eval`: a registry benchmark with
    the pipeline's protocol overrides, the parent metric at step=epoch, a child run with the
    per-sample parquet."""
    from prefix_rft.io.tracking import Tracker
    from steps.evaluate import eval_task, protocol_for
    from steps.flow_config import resolve_flow

    cfg = resolve_flow({
        "method": "rft", "seed": 5,
        "model": {"name_or_path": str(smollm2_dir),
                  "random_init": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "seed": 0}},
        "data": {"train": "synthetic:tiny"},
        "reward": {"num_workers": 0},
        "pipeline": {"benchmarks": ["amc"], "eval_protocol": "paper", "eval_n": 2,
                     "eval_max_new_tokens": 6, "eval_max_problems": 3, "eval_engine": "hf"},
    })
    p = protocol_for(cfg, "amc")
    assert (p.n_for("amc"), p.max_new_tokens, p.temperature, p.seed) == (2, 6, 0.6, 5)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    parent = tracker.create_run("t", "parent", {})
    tracking = {"run_id": parent, "experiment": "t", "uri": tracker.uri}
    item = {"epoch": 0, "checkpoint": None, "benchmark": "amc", "spec": "amc"}
    out = eval_task(cfg, item, data_ref={}, tracker=tracker, tracking=tracking, n_boot=50)
    assert out["metric"] == "eval/amc/avg_at_2" and out["num_problems"] == 3 and out["engine"] == "hf"
    assert tracker.metric_history(parent, "eval/amc/avg_at_2") == [(0, out["value"])]
    child = out["child_run_id"]
    assert tracker.run_info(child).data.tags["mlflow.parentRunId"] == parent
    arts = {a.path for a in tracker.client.list_artifacts(child)}
    assert {"samples.parquet", "summary.json", "samples_preview.json"} <= arts
    local = tracker.client.download_artifacts(child, "samples.parquet", str(tmp_path))
    rows = pq.read_table(local).to_pylist()
    assert len(rows) == 3 * 2 and {r["benchmark"] for r in rows} == {"amc"}


def test_sharded_evaluation_plan_and_merge():
    from steps.evaluate import merge_shards, plan_eval
    from steps.flow_config import resolve_flow

    cfg = resolve_flow({"method": "rft", "model": {"name_or_path": "m"}, "data": {"train": "synthetic:tiny"},
                   "pipeline": {"benchmarks": ["amc", "heldout"], "eval_shards": 3, "eval_base": False}})
    epochs = [{"epoch": 1, "checkpoint": {"uri": "u1"}}, {"epoch": 2, "checkpoint": {"uri": "u2"}}]
    items = plan_eval(cfg, epochs, None)
    assert len(items) == 2 * 2 * 3  # epochs x benchmarks x shards
    assert [(i["epoch"], i["benchmark"], i["shard"]) for i in items[:4]] == [
        (1, "amc", 0), (1, "amc", 1), (1, "amc", 2), (1, "heldout", 0)]

    def part(epoch, shard, per, no_answer):
        return {"epoch": epoch, "benchmark": "amc", "metric": "eval/amc/avg_at_2", "shard": shard,
                "shards": 3, "per_problem": per, "num_problems": len(per), "value": None,
                "no_answer_frac": no_answer, "pass_at_k": {}, "child_run_id": f"c{shard}"}

    results = [part(1, 0, {"a": 1.0, "d": 0.5}, 0.5), part(1, 1, {"b": 0.0}, 1.0),
               part(1, 2, {"c": 0.5}, 0.0),
               part(2, 0, {"a": 1.0, "d": 1.0}, 0.0), part(2, 2, {"c": 1.0}, 0.0)]
    failures = [{"epoch": 2, "benchmark": "amc", "error": "boom (shard 1/3)"}]
    merged, fails, to_log = merge_shards(results, failures, n_boot=200)
    assert len(merged) == 1 and to_log == merged  # epoch 2 lost a shard: no merged cell
    m = merged[0]
    # (1.0 + 0.5 + 0.0 + 0.5) / 4 problems = 0.5; no-answer fraction weighted by problems:
    # (0.5*2 + 1.0*1 + 0.0*1) / 4 = 0.5
    assert m["value"] == 0.5 and m["num_problems"] == 4 and m["no_answer_frac"] == 0.5
    assert 0.0 <= m["ci"][0] <= 0.5 <= m["ci"][1] <= 1.0
    assert fails == failures
    # a shard missing without a reported failure is a failure too
    merged2, fails2, _ = merge_shards(results[:2], [], n_boot=10)
    assert merged2 == [] and fails2 == [{"epoch": 1, "benchmark": "amc", "error": "2 of 3 shards reported"}]


def _group_cfg(smollm2_dir, benchmarks, **pipeline):
    from steps.flow_config import resolve_flow

    return resolve_flow({
        "method": "rft", "seed": 3,
        "model": {"name_or_path": str(smollm2_dir),
                  "random_init": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "seed": 0}},
        "data": {"train": "synthetic:tiny"},
        "reward": {"num_workers": 0},
        "pipeline": {"benchmarks": benchmarks, "eval_protocol": "paper", "eval_n": 2,
                     "eval_max_new_tokens": 5, "eval_max_problems": 3, "eval_engine": "hf",
                     "eval_base": True, **pipeline},
    })


def test_budget_note_and_warning_say_how_samples_ended():
    """The eval log line says how many samples had no answer and how many the token budget cut;
    half or more cut gives a warning naming the option to raise (a 0.0 from a 256-token budget
    on reasoning benchmarks must not read as a broken model)."""
    from steps.evaluate import budget_note, budget_warning

    s = {"no_answer_frac": 0.25, "truncated_frac": 0.375}
    assert budget_note(s, 256) == "no answer in 25% of samples, 38% cut at 256 new tokens"
    assert budget_warning(s, 256) is None
    w = budget_warning({"no_answer_frac": 1.0, "truncated_frac": 0.5}, 256)
    assert w.startswith("50% of the samples reached the 256-token budget")
    assert "pipeline.eval_max_new_tokens" in w


def test_one_task_per_checkpoint_scores_every_benchmark_as_separate_tasks_do(smollm2_dir, caplog):
    """pipeline.eval_task_per checkpoint: one item per epoch holding every benchmark, evaluated
    with one engine; each benchmark's summary equals the one its own task gives (the same seeded
    sampling per benchmark), in the configured order."""
    from steps.evaluate import eval_item, plan_eval

    caplog.set_level(logging.INFO, logger="prefix_rft.pipeline")
    benches = ["amc", "aime24"]
    per_bench = plan_eval(_group_cfg(smollm2_dir, benches), [], None)
    grouped_cfg = _group_cfg(smollm2_dir, benches, eval_task_per="checkpoint")
    grouped = plan_eval(grouped_cfg, [], None)
    assert [i["benchmark"] for i in per_bench] == ["amc", "aime24"]
    assert grouped == [{"epoch": 0, "checkpoint": None, "benchmark": "amc+aime24",
                        "benchmarks": [["amc", "amc"], ["aime24", "aime24"]],
                        "shard": 0, "shards": 1}]
    separate = [r for it in per_bench for r in eval_item(grouped_cfg, it, data_ref={}, n_boot=50)[0]]
    together, failures = eval_item(grouped_cfg, grouped[0], data_ref={}, n_boot=50)
    assert failures == []
    assert [r["benchmark"] for r in together] == ["amc", "aime24"]
    assert [r["num_problems"] for r in together] == [3, 3]
    for a, b in zip(separate, together):
        assert (a["metric"], a["value"], a["per_problem"], a["ci"]) == (
            b["metric"], b["value"], b["per_problem"], b["ci"])
    lines = [r.getMessage() for r in caplog.records if r.name == "prefix_rft.pipeline"]
    for bench in benches:  # each scored benchmark's line names the 5-token budget
        assert any(f" {bench}: " in m and "cut at 5 new tokens" in m for m in lines), lines


def test_one_task_per_checkpoint_fails_only_the_benchmark_with_a_user_error(smollm2_dir, tmp_path):
    """In a checkpoint item a missing problems file and prompts longer than the context are
    failure rows naming the benchmark, found before the engine starts; the other benchmark is
    scored. When every benchmark fails, the first user error is raised (the flow does not retry
    it)."""
    from steps.evaluate import eval_item, plan_eval

    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"problem": "word " * 9000, "answer": "1"}) + "\n")
    missing = tmp_path / "missing.jsonl"
    cfg = _group_cfg(smollm2_dir, ["amc", str(missing), str(long)], eval_task_per="checkpoint")
    item = plan_eval(cfg, [], None)[0]
    results, failures = eval_item(cfg, item, data_ref={}, n_boot=50)
    assert [r["benchmark"] for r in results] == ["amc"]
    assert [(f["epoch"], f["benchmark"]) for f in failures] == [(0, "missing"), (0, "long")]
    assert "missing.jsonl" in failures[0]["error"]
    assert "long" in failures[1]["error"] and "max_new_tokens" in failures[1]["error"]
    bad = _group_cfg(smollm2_dir, [str(missing), str(long)], eval_task_per="checkpoint")
    with pytest.raises(UserError, match="missing.jsonl"):
        eval_item(bad, plan_eval(bad, [], None)[0], data_ref={}, n_boot=50)


def test_item_failures_name_every_benchmark_of_a_failed_task():
    from steps.evaluate import item_failures

    one = {"epoch": 2, "benchmark": "amc", "spec": "amc", "shard": 1, "shards": 3}
    group = {"epoch": 1, "benchmark": "amc+heldout", "benchmarks": [["amc", "amc"], ["heldout", "heldout"]],
             "shard": 0, "shards": 1}
    assert item_failures(one, "boom") == [{"epoch": 2, "benchmark": "amc", "error": "boom (shard 1/3)"}]
    assert item_failures(group, "oom") == [{"epoch": 1, "benchmark": "amc", "error": "oom"},
                                           {"epoch": 1, "benchmark": "heldout", "error": "oom"}]


def test_eval_help_names_every_builtin_alias():
    """`prefix-rft eval --help` lists the built-in models `--model` takes (the list is written
    out there so that --help does not import torch; it must follow the registry)."""
    from prefix_rft.builtin_models import BUILTIN_MODELS
    from prefix_rft.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = " ".join(sub.choices["eval"].format_help().split())
    for alias in BUILTIN_MODELS:
        assert alias in help_text
