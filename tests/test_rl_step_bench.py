"""perf/rl_step.py's multi-process pieces on CPU: `--merge` refuses files of another workload
and names the rows it merges; the vLLM ceiling plans exactly the requests the trainer generated
in its first timed step (vLLM itself cannot run here: only the plan is checked)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "perf"))
    spec = importlib.util.spec_from_file_location("rl_step", ROOT / "perf" / "rl_step.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rl_step"] = mod  # perf/rl_step_rows.py imports it by this name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("rl_step", None)
    sys.path.remove(str(ROOT / "perf"))


FP = {"model": "/m/qwen", "workload": "math500", "problems": 64, "prompts": 64, "group": 8,
      "max_new_tokens": 1024, "temperature": 1.0}


def _file(tmp_path, name, fingerprint, presets=None, rows=None):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"benchmark": "rl_step", "fingerprint": fingerprint,
                                "presets": presets or {}, "rows": rows or {}}))
    return str(path)


def _row(engine, **summary):
    return {"summary": {"engine": engine, "wall_s": 1.0, **summary}, "steps": []}


def test_merge_names_rows_and_refuses_another_workload(bench, tmp_path, capsys):
    a = _file(tmp_path, "vllm_rft", FP, presets={"rft": _row("VLLMEngine", **{"time/weight_sync": 0.4})})
    b = _file(tmp_path, "hf_rft", FP, presets={"rft": _row("HFEngine")})
    c = _file(tmp_path, "ceiling", FP, rows={"vllm_generate": _row("VLLMEngine")})
    out = tmp_path / "merged.json"
    merged = bench.main(["--merge", a, b, c, "--out", str(out)])
    assert list(merged["rows"]) == ["rft [VLLMEngine]", "rft [HFEngine]", "vllm_generate"]
    assert json.loads(out.read_text())["fingerprint"] == FP
    assert "w-sync s" in capsys.readouterr().out  # the optional column appears when a row has it
    other = _file(tmp_path, "other", {**FP, "max_new_tokens": 512})
    with pytest.raises(SystemExit, match="max_new_tokens: 1024 vs 512"):
        bench.main(["--merge", a, other])


def test_ceiling_plans_the_first_timed_step_of_the_preset(bench):
    args = bench.parse_args(["--model", "tiny", "--presets", "prefix_rft", "--prompts", "2",
                             "--group", "4", "--max-new-tokens", "8", "--warmup", "1", "--steps",
                             "1", "--reward", "regex", "--problems", "16"])
    from prefix_rft.models import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    pool = bench.load_pool(args)
    row = bench.run_preset("prefix_rft", args, "tiny", tok, pool, "cpu")
    requests, _ = bench.rows_mod().ceiling_requests("prefix_rft", args, "tiny", tok, pool)
    assert any(r.prefix_ids for r in requests)
    assert row["summary"]["first_timed_requests"] == {"digest": bench.requests_digest(requests),
                                                      "count": len(requests)}


def test_math500_workload_keeps_answers_and_solutions(bench):
    pool = bench.math500_problems(3)
    assert [len(p.demonstrations) for p in pool] == [1, 1, 1]
    assert all(p.answer and "\\boxed" in p.demonstrations[0] for p in pool)
