"""Reliability of evaluation and its inputs/outputs (issue 19, items 3 and 5c).

* `eval` / `train` refuse an output they cannot write before any model is loaded;
* `eval` writes its results after every benchmark, so a late death keeps the finished ones;
* a prompt too long for the model's context is refused before generation, naming file and row;
* grading failures (timeouts, errors) are counted in the evaluation's summary, never folded
  silently into "wrong", and the grader's CPU-time deadline grades the same under load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefix_rft.cli import main
from prefix_rft.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`prefix-rft ARGS` in a real subprocess (this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "prefix_rft.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _eval_args(model, out, benchmarks="amc", *more):
    return ["eval", "--model", str(model), "--benchmarks", benchmarks, "--n", "1",
            "--max-problems", "2", "--max-new-tokens", "4", "--engine", "hf", "--dtype",
            "float32", "--workers", "0", "--output", str(out), *more]


# ------------------------------------------------------------------------------ outputs
def test_eval_output_that_is_a_file_fails_before_the_model_loads(smollm2_dir, tmp_path):
    out = tmp_path / "results"
    out.write_text("not a directory")
    r = _cli(*_eval_args(smollm2_dir, out))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"error: --output {out}: exists and is not a directory"
    assert "loading" not in r.stderr.lower() and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["parent_is_file", "summary_is_dir", "s3"])
def test_eval_unwritable_outputs_are_one_clear_error(case, tmp_path, capsys):
    if case == "parent_is_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "results"
        expect = f"cannot create the directory ({tmp_path / 'f'} is not a directory)"
    elif case == "summary_is_dir":
        out = tmp_path / "results"
        (out / "summary.json").mkdir(parents=True)
        expect = "summary.json is a directory, but the file summary.json is written there"
    else:
        out, expect = "s3://bucket/results", "only a local directory can be written"
    # the model does not even exist: the output is checked first
    assert main(_eval_args(tmp_path / "no-model", out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {out}") and expect in err, err


def test_train_output_checked_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("a file")
    rc = main(["train", "--config", str(ROOT / "configs/demo.yaml"), "--output",
               str(tmp_path / "out"), "--set", "model.name_or_path=/nonexistent/model"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "checkpoints is a file, but the directory checkpoints is written there" in err


@pytest.mark.slow
def test_eval_keeps_finished_benchmarks_when_killed_later(smollm2_dir, tmp_path):
    """A SIGKILL during the second benchmark leaves the first one's results on disk, marked
    incomplete with the benchmark still pending."""
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                           + "\n" for i in range(40)))
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"problem": "What is 2 + 2?", "answer": "4"}) + "\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = _eval_args(smollm2_dir, out, f"{small},{big}")
    args[args.index("--max-problems") + 1] = "40"
    args[args.index("--max-new-tokens") + 1] = "24"
    args[args.index("--n") + 1] = "4"
    proc = subprocess.Popen([sys.executable, "-m", "prefix_rft.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(3000):
            if (out / "summary.json").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (out / "summary.json").exists(), proc.communicate()[0][-3000:]
        first = json.loads((out / "summary.json").read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(first["benchmarks"]) == ["small"] and first["complete"] is False
    assert first["pending"] == ["big"]
    kept = json.loads((out / "summary.json").read_text())
    assert "small" in kept["benchmarks"]  # whatever happened after, its results survive
    import pyarrow.parquet as pq

    assert {r["benchmark"] for r in pq.read_table(out / "samples.parquet").to_pylist()} >= {"small"}


# ------------------------------------------------------------------------------ prompt lengths
def test_eval_ten_megabyte_problem_refused_before_generation(smollm2_dir, tmp_path):
    f = tmp_path / "mine.jsonl"
    huge = "1 + " * (10 * 2**20 // 4) + "1 = ?"
    f.write_text(json.dumps({"problem": "What is 2 + 2?", "answer": "4"}) + "\n"
                 + json.dumps({"problem": huge, "answer": "1"}) + "\n")
    r = _cli(*_eval_args(smollm2_dir, tmp_path / "out", str(f)))
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {f} row 2: prompt too long (") and "characters" in last
    assert "max_position_embeddings" in last and "--max-new-tokens" in last
    assert not (tmp_path / "out" / "samples.parquet").exists()


def _config(**rollout):
    from prefix_rft.core.config import resolve

    return resolve({"method": "rft", "model": {"name_or_path": "m"}, "data": {"train": "x"},
                    "rollout": rollout,
                    "eval": {"num_problems": 4, "max_new_tokens": 16}})


def test_training_prompt_limit_exact_boundary(smol_tokenizer, tmp_path):
    """The rule is exact: a prompt of exactly context - max_response_len tokens passes, one token
    more is refused with the file and row; a huge one is refused without tokenizing."""
    from prefix_rft.data import read_problems
    from prefix_rft.data.lengths import check_training_prompts
    from prefix_rft.rollout.prompting import encode_prompt

    problem = "Compute " + " + ".join(["7"] * 40) + "."
    n = len(encode_prompt(smol_tokenizer, problem))
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n"
                 + json.dumps({"problem": problem, "answer": "280"}) + "\n")
    problems = read_problems(f, require_demos=False)

    class ModelConfig:
        max_position_embeddings = 1000

    check_training_prompts(_config(max_response_len=1000 - n), smol_tokenizer, ModelConfig,
                           problems, [])
    with pytest.raises(UserError) as e:
        check_training_prompts(_config(max_response_len=1001 - n), smol_tokenizer, ModelConfig,
                               problems, [])
    assert str(e.value) == (
        f"{f} row 2: prompt too long ({n} tokens; data.train allows at most {n - 1} prompt "
        f"tokens: context 1000 (the model's max_position_embeddings) minus {1001 - n} response "
        f"tokens (rollout.max_response_len)); shorten or drop it")
    # a configured rollout limit takes the model's place
    with pytest.raises(UserError, match="rollout.vllm.max_model_len"):
        check_training_prompts(_config(max_response_len=100, vllm={"max_model_len": 100 + n - 1}),
                               smol_tokenizer, ModelConfig, problems, [])


def test_training_ten_megabyte_problem_names_file_and_row(smol_tokenizer, tmp_path):
    from prefix_rft.data import read_problems
    from prefix_rft.data.lengths import check_training_prompts

    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"problem": "x" * (10 * 2**20), "answer": "1"}) + "\n"
                 + json.dumps({"problem": "y" * (10 * 2**20), "answer": "1"}) + "\n")

    class ModelConfig:
        max_position_embeddings = 8192

    with pytest.raises(UserError, match=rf"^{f} row 1: prompt too long \(10485760 characters, at "
                       r"least \d+ tokens; .*\(2 of 2 problems are too long\)"):
        check_training_prompts(_config(max_response_len=40), smol_tokenizer, ModelConfig,
                               read_problems(f, require_demos=False), [])


# ------------------------------------------------------------------------------ grading failures
def _hang_on_marker(items, think_tags, timeout_s):
    from prefix_rft.rollout.reward import _grade_chunk

    if any(golds == ("4",) for _, golds in items):  # stands in for a worker stuck in a C call
        time.sleep(3600)
    return _grade_chunk(items, think_tags, timeout_s)


def test_eval_summary_counts_grading_timeouts(smollm2_dir, smol_tokenizer):
    """Samples whose grading timed out score 0 and are counted in `grading_timeouts`; the others
    are graded as usual."""
    from prefix_rft.eval.benchmarks import BenchmarkProblem
    from prefix_rft.eval.protocol import evaluate_benchmark, get_protocol
    from prefix_rft.rollout.engines.factory import EngineSpec, make_engine
    from prefix_rft.rollout.reward import RewardGrader

    class Stuck(RewardGrader):
        grace_s = 0.2
        wall_slack = 1.0
        _chunk_fn = staticmethod(_hang_on_marker)

    problems = [BenchmarkProblem("mine", "a", "What is 2 + 2?", ("4",)),
                BenchmarkProblem("mine", "b", "What is 3 + 3?", ("6",))]
    engine, _ = make_engine("hf", EngineSpec(smol_tokenizer, model_dir=str(smollm2_dir),
                                              dtype="float32", device="cpu"))
    with Stuck(num_workers=1, timeout_s=0.1) as grader:
        res = evaluate_benchmark(engine, smol_tokenizer, "mine", problems,
                                 get_protocol("default").replace(n=2, max_new_tokens=4), grader,
                                 n_boot=20)
    engine.close()
    s = res.summary
    assert s["grading_timeouts"] == 2 and s["grading_errors"] == 0
    assert [r["status"] for r in res.records if r["problem_id"] == "a"] == ["timeout", "timeout"]
    assert all(not r["correct"] for r in res.records if r["problem_id"] == "a")


def test_grader_limit_is_cpu_time_not_wall_time():
    """Waiting (descheduled, sleeping) does not use up the limit; computing does."""
    from prefix_rft.rollout.reward import _ItemTimeout, _time_limit

    with _time_limit(0.2):
        time.sleep(0.4)  # no CPU time spent: no timeout
    with pytest.raises(_ItemTimeout):
        with _time_limit(0.2):
            while True:
                pass


def test_known_correct_answer_grades_correct_while_the_cores_are_busy():
    from prefix_rft.rollout.reward import RewardGrader

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    try:
        with RewardGrader(num_workers=1, timeout_s=2.0) as g:
            r = g.grade([r"so \boxed{\frac{\sqrt{3}}{2}}", r"\boxed{x^2+2x+1}"],
                        [r"\frac{\sqrt{3}}{2}", "(x+1)^2"])
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert [x.status for x in r] == ["correct", "correct"], r
    assert g.counts["timeout"] == 0 and g.counts["error"] == 0
