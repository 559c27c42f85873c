"""The `prefix-rft` command line: listings, resolved configs, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefix_rft.core.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "prefix_rft.cli", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=300)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def test_presets_lists_every_preset_one_line_each():
    proc = run_cli("presets")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(PRESETS)


def test_config_show_resolves_a_preset():
    import yaml

    proc = run_cli("config", "show", "--preset", "luffy", "--set", "rl.steps=7")
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["method"] == "luffy"
    assert cfg["rollout"]["n_full_demo"] == 1 and cfg["loss"]["demo_rule"] == "shaped"
    assert cfg["rl"]["steps"] == 7


def test_help_explains_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for word in ("presets", "config", "train", "filter-data", "examples:"):
        assert word in proc.stdout
    proc = run_cli("train", "--help")
    assert "--resume" in proc.stdout and "--set" in proc.stdout


def test_unknown_preset_names_it(tmp_path):
    proc = run_cli("config", "show", "--preset", "prefix_rtf")
    assert_user_error(proc, "unknown preset 'prefix_rtf'", "did you mean 'prefix_rft'")


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: prefix_rft\nmodel:\n  name_or_path: [unclosed\n")
    proc = run_cli("train", "--config", str(bad), "--output", str(tmp_path / "out"))
    assert_user_error(proc, str(bad), "line", "malformed YAML")


def test_unknown_key_names_it(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: rft\nmodel: {name_or_path: x}\ndata: {train: x}\nrollout: {grup_size: 4}\n")
    proc = run_cli("train", "--config", str(cfg), "--output", str(tmp_path / "out"))
    assert_user_error(proc, str(cfg), "unknown key 'rollout.grup_size'", "rollout.group_size")


def _write_cfg(tmp_path, train_path, method="prefix_rft"):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"method: {method}\nmodel: {{name_or_path: smollm2-135m-instruct}}\n"
        f"data: {{train: '{train_path}'}}\n"
    )
    return cfg


@pytest.fixture
def smol_env(smollm2_cache_root, smollm2_dir):
    return {"PREFIX_RFT_CACHE": str(smollm2_cache_root)}


def test_missing_data_file_names_it(tmp_path, smol_env):
    missing = tmp_path / "nope.jsonl"
    proc = run_cli("train", "--config", str(_write_cfg(tmp_path, missing)), "--output",
                   str(tmp_path / "out"), env_extra=smol_env)
    assert_user_error(proc, str(missing))


def test_row_without_answer_names_file_row_field(tmp_path, smol_env):
    data = tmp_path / "train.jsonl"
    rows = [{"problem": "What is 1 + 1?", "answer": "2", "solution": "1 + 1 = \\boxed{2}"},
            {"problem": "What is 2 + 2?", "solution": "2 + 2 = \\boxed{4}"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("train", "--config", str(_write_cfg(tmp_path, data)), "--output",
                   str(tmp_path / "out"), env_extra=smol_env)
    assert_user_error(proc, str(data), "row 2", "answer")


def test_row_without_demo_names_file_row_field(tmp_path, smol_env):
    data = tmp_path / "train.jsonl"
    rows = [{"problem": "What is 1 + 1?", "answer": "2", "solution": "1 + 1 = \\boxed{2}"},
            {"problem": "What is 2 + 2?", "answer": "4"},
            {"problem": "What is 3 + 3?", "answer": "6", "solution": "\\boxed{6}"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_cli("train", "--config", str(_write_cfg(tmp_path, data)), "--output",
                   str(tmp_path / "out"), env_extra=smol_env)
    assert_user_error(proc, str(data), "row 2")


def test_filter_data_writes_problems_and_counts(tmp_path, smol_env, smol_tokenizer, smollm2_dir):
    from prefix_rft.data import filter_openr1, read_problems
    from prefix_rft.data.readers import iter_rows
    from prefix_rft.rollout.reward import gold_is_parseable

    raw = ROOT / "tests" / "data" / "openr1_raw.jsonl"
    out = tmp_path / "filtered.jsonl"
    proc = run_cli("filter-data", "--input", str(raw), "--output", str(out), "--tokenizer",
                   str(smollm2_dir), "--max-tokens", "30", env_extra=smol_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])

    def n_tokens(text):
        return len(smol_tokenizer(text, add_special_tokens=False)["input_ids"])

    expected, stats = filter_openr1((r.fields for r in iter_rows(raw)), count_tokens=n_tokens,
                                    gold_ok=gold_is_parseable, max_trace_tokens=30)
    assert counts == stats.as_dict() and counts["input_rows"] == 12
    assert counts["kept"] + sum(v for k, v in counts.items() if k not in ("input_rows", "kept")) == 12
    written = read_problems(out, schema="problems")
    assert [p.id for p in written] == [p.id for p in expected] and len(written) == counts["kept"]


def test_filter_data_refuses_a_zero_worker_count(tmp_path):
    proc = run_cli("filter-data", "--input", "x.jsonl", "--output", str(tmp_path / "o.jsonl"),
                   "--tokenizer", "t", "--num-proc", "0")
    assert proc.returncode == 2
    assert "argument --num-proc: 0 is out of range: must be >= 1" in proc.stderr


def test_train_stops_and_resumes_from_latest(tmp_path, smol_env, smollm2_dir):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "method: prefix_rft\n"
        f"model: {{name_or_path: '{smollm2_dir}', device: cpu,\n"
        "        random_init: {hidden_size: 32, num_layers: 2, num_heads: 2}}\n"
        "data: {train: 'synthetic:tiny', test: 'synthetic:tiny', synthetic_train_size: 8,\n"
        "       synthetic_test_size: 4}\n"
        "rollout: {num_prompts: 2, group_size: 2, max_response_len: 16}\n"
        "rl: {steps: 3, num_minibatches: 1, micro_batch_size: 4, demo_nll_prompts: 2}\n"
        "reward: {num_workers: 0}\n"
        "eval: {num_problems: 4, max_new_tokens: 8}\n"
        "save_every: 1\nkeep_last: 2\n"
    )
    out = tmp_path / "run"
    first = run_cli("train", "--config", str(cfg), "--output", str(out), "--max-steps", "2",
                    "--quiet", env_extra=smol_env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"]["global_step"] == 2 and "eval_after" not in summary
    again = run_cli("train", "--config", str(cfg), "--output", str(out), env_extra=smol_env)
    assert_user_error(again, str(out), "--resume latest")  # never overwrites an earlier run
    # a weight file of the latest checkpoint changed after its save: refused, naming the file
    weights = sorted((out / "checkpoints" / "step-000002" / "model").glob("*.safetensors"))[0]
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    bad = run_cli("train", "--config", str(cfg), "--output", str(out), "--resume", "latest",
                  "--quiet", env_extra=smol_env)
    assert_user_error(bad, f"model/{weights.name} sha256 mismatch")
    assert json.loads((out / "summary.json").read_text())["state"]["global_step"] == 2
    weights.write_bytes(original)
    second = run_cli("train", "--config", str(cfg), "--output", str(out), "--resume", "latest",
                     "--final-model-only", "--quiet", env_extra=smol_env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stderr and "step 2" in second.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == {"phase": "done", "global_step": 3, "sft_step": 0}
    assert "eval_before" in summary and "eval_after" in summary
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # keep_last: 2 -> the oldest checkpoint was pruned
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    # --final-model-only: the run's last checkpoint has no optimizer state, the one before has;
    # a larger budget cannot continue it (refused by name, nothing trained)
    ck = out / "checkpoints"
    assert [json.loads((ck / n / "state.json").read_text())["model_only"]
            for n in ("step-000002", "step-000003")] == [False, True]
    more = run_cli("train", "--config", str(cfg), "--output", str(out), "--resume", "latest",
                   "--set", "rl.steps=4", "--quiet", env_extra=smol_env)
    assert_user_error(more, f"{ck / 'step-000003'} holds the model only", "cannot continue the rl phase")
    assert json.loads((out / "summary.json").read_text())["state"]["global_step"] == 3
