"""Issue 19, item 2: bad numbers and bad paths fail at load time (or in the flow's `start`) with
one line naming the key or option, the value and the valid range; a user error in a retried
step runs once.

Config: every numeric key declares its range (`option(..., ge=/gt=/le=/lt=)`), checked when any
section is built. CLI: every numeric option parses through `prefix_rft.cli.ranged`. Start:
`steps.start.check_inputs_and_outputs`. Retries: `steps.common.user_errors_not_retried`.
"""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from prefix_rft.cli import _parser
from prefix_rft.core.config import Config, describe_keys, field_range, keys_text
from prefix_rft.core.dicts import deep_merge, dotted_to_nested
from prefix_rft.errors import UnavailableError, UserError
from steps import start as sstart
from steps.common import RunContext, user_error_marker, user_errors_not_retried
from steps.flow_config import FlowConfig, resolve_flow

BASE = {"method": "rft", "model": {"name_or_path": "some-model"}, "data": {"train": "synthetic:tiny"}}


def resolve_with(key: str, value):
    return resolve_flow(deep_merge(BASE, dotted_to_nested({key: value})), source="c.yaml")


# (key, bad value, expected words): the examples first, then the rest of the table
BAD_VALUES = [
    ("rl.optim.lr", -1e-6, "-1e-06 is out of range: must be > 0"),
    ("sft.optim.lr", 0, "0.0 is out of range: must be > 0"),
    ("rollout.max_response_len", 0, "0 is out of range: must be >= 1"),
    ("sft.max_len", 0, "0 is out of range: must be >= 1"),
    ("rollout.num_prompts", 0, "0 is out of range: must be >= 1"),
    ("rl.micro_batch_size", 0, "0 is out of range: must be >= 1"),
    ("sft.batch_size", 0, "0 is out of range: must be >= 1"),
    ("reward.num_workers", -1, "-1 is out of range: must be >= 0"),
    ("eval.n_samples", 0, "0 is out of range: must be >= 1"),
    ("pipeline.eval_n", 0, "0 is out of range: must be >= 1 (or null)"),
    ("rollout.temperature", -0.5, "-0.5 is out of range: must be > 0"),
    ("rollout.temperature", 0, "0.0 is out of range: must be > 0"),
    ("eval.temperature", -0.1, "-0.1 is out of range: must be >= 0"),
    ("rollout.top_p", 0, "0.0 is out of range: must be > 0 and <= 1"),
    ("eval.top_p", 1.5, "1.5 is out of range: must be > 0 and <= 1"),
    ("rl.optim.grad_clip", -1, "-1.0 is out of range: must be >= 0"),
    ("data.max_problems", 0, "0 is out of range: must be >= 1 (or null)"),
    ("pipeline.eval_max_problems", 0, "0 is out of range: must be >= 1 (or null)"),
    ("rl.optim.betas", [0.9, 1.0], "1.0 is out of range: every element must be >= 0 and < 1"),
    ("rl.optim.eps", 0, "must be > 0"),
    ("rl.optim.weight_decay", -0.01, "must be >= 0"),
    ("rl.optim.warmup_ratio", 1.5, "must be >= 0 and <= 1"),
    ("rl.steps", -1, "-1 is out of range: must be >= 0"),
    ("rl.ppo_epochs", 0, "must be >= 1"),
    ("rl.num_minibatches", 0, "must be >= 1"),
    ("sft.epochs", -1, "must be >= 0"),
    ("relift.buffer_size", 0, "must be >= 1"),
    ("rollout.group_size", 0, "must be >= 1"),
    ("rollout.n_prefixed", -1, "must be >= 0"),
    ("rollout.max_batch_size", 0, "must be >= 1"),
    ("rollout.prefix_schedule.start", 1.5, "1.5 is out of range: must be >= 0 and <= 1"),
    ("rollout.prefix_schedule.total_steps", 0, "must be >= 1"),
    ("rollout.prefix_schedule.beta_a", 0, "must be > 0"),
    ("rollout.vllm.gpu_memory_utilization", 1.0, "must be > 0 and < 1"),
    ("rollout.vllm.sleep_level", 3, "3 is out of range: must be >= 0 and <= 2"),
    ("loss.entropy_fraction", 0, "must be > 0 and <= 1"),
    ("loss.clip_eps_high", -0.2, "must be >= 0"),
    ("loss.shaping_gamma", 0, "must be > 0"),
    ("loss.entropy_chunk_size", 0, "must be >= 1"),
    ("reward.timeout_s", 0, "must be > 0"),
    ("reward.max_failure_rate", 2, "must be >= 0 and <= 1"),
    ("eval.max_new_tokens", 0, "must be >= 1"),
    ("eval.num_problems", -1, "must be >= 0"),
    ("data.fraction", 0, "must be > 0 and <= 1"),
    ("data.synthetic_train_size", 0, "must be >= 1"),
    ("seed", -1, "-1 is out of range: must be >= 0"),
    ("log_every", 0, "must be >= 1"),
    ("keep_last", -1, "must be >= 0"),
    ("pipeline.epochs", 0, "0 is out of range: must be >= 1"),
    ("pipeline.steps_per_epoch", 0, "must be >= 1 (or null)"),
    ("pipeline.eval_shards", 0, "must be >= 1"),
    ("pipeline.train_retries", 5, "5 is out of range: must be >= 0 and <= 4"),
    ("pipeline.train_processes", 0, "must be >= 1 (or null)"),
    ("pipeline.train.nodes", 65, "65 is out of range: must be >= 1 and <= 64"),
    ("pipeline.train.cpus", 0, "must be >= 1"),
    ("pipeline.eval.memory_mb", 10, "10 is out of range: must be >= 1000"),
    ("tracking.timeout_s", 0, "0 is out of range: must be >= 1"),
    ("tracking.log_samples", -1, "must be >= 0"),
]


@pytest.mark.parametrize("key,value,words", BAD_VALUES)
def test_out_of_range_config_values_fail_at_load_naming_key_value_and_range(key, value, words):
    with pytest.raises(UserError) as e:
        resolve_with(key, value)
    message = str(e.value)
    assert message.startswith(f"c.yaml: key '{key}': "), message
    assert words in message and "\n" not in message


@pytest.mark.parametrize("key,value", [("rollout.temperature", 1e-3), ("eval.temperature", 0),
                                       ("rl.optim.grad_clip", 0), ("keep_last", 0),
                                       ("reward.num_workers", 0), ("rollout.top_p", 1),
                                       ("pipeline.eval_max_problems", None)])
def test_boundary_values_that_mean_something_are_accepted(key, value):
    """eval temperature 0 = greedy, grad_clip 0 = off, keep_last 0 = all, 0 workers = grade
    in-process, null caps = no cap."""
    resolve_with(key, value)


def _ranged_fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _ranged_fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, tp, field_range(f)


def test_every_numeric_key_declares_a_range_and_config_keys_shows_it():
    numeric = (int, float, int | None, float | None)
    rows = {k: h for k, _, h in describe_keys(FlowConfig)}
    for key, tp, rng in _ranged_fields(FlowConfig):
        if tp in numeric or key.endswith("optim.betas"):
            assert rng is not None, f"{key} has no valid range"
            assert f"[valid: {rng.text()}" in rows[key], key
    assert "rl.optim.lr = 1e-06\n    Learning rate" in keys_text(Config)
    assert "[valid: > 0]" in keys_text(Config).split("rl.optim.lr = ")[1].split("\n")[1]


def test_defaults_and_presets_are_in_range():
    from prefix_rft.core.presets import PRESETS

    for name in PRESETS:
        resolve_flow(BASE | {"method": name})  # raises if a preset value is out of range


# ------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv,words", [
    (["train", "--config", "c", "--output", "o", "--max-steps", "0"],
     "argument --max-steps: 0 is out of range: must be >= 1"),
    (["filter-data", "--input", "i", "--output", "o", "--tokenizer", "t", "--max-tokens", "-5"],
     "argument --max-tokens: -5 is out of range: must be >= 1"),
    (["filter-data", "--input", "i", "--output", "o", "--tokenizer", "t", "--limit", "0"],
     "argument --limit: 0 is out of range"),
    (["eval", "--model", "m", "--output", "o", "--n", "0"], "argument --n: 0 is out of range"),
    (["eval", "--model", "m", "--output", "o", "--temperature", "-1"],
     "argument --temperature: -1.0 is out of range: must be >= 0"),
    (["eval", "--model", "m", "--output", "o", "--top-p", "0"],
     "argument --top-p: 0.0 is out of range: must be > 0 and <= 1"),
    (["eval", "--model", "m", "--output", "o", "--max-new-tokens", "0"],
     "argument --max-new-tokens: 0 is out of range"),
    (["eval", "--model", "m", "--output", "o", "--seed", "-3"], "argument --seed: -3 is out"),
    (["eval", "--model", "m", "--output", "o", "--max-problems", "0"], "argument --max-problems"),
    (["eval", "--model", "m", "--output", "o", "--batch-size", "0"], "argument --batch-size"),
    (["eval", "--model", "m", "--output", "o", "--workers", "-1"],
     "argument --workers: -1 is out of range: must be >= 0"),
    (["eval", "--model", "m", "--output", "o", "--n", "many"],
     "argument --n: expected an integer >= 1, got 'many'"),
    (["compare", "a", "b", "--epoch", "-1"], "argument --epoch: -1 is out of range"),
])
def test_numeric_cli_options_are_range_checked(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_in_range_cli_options_parse():
    args = _parser().parse_args(["eval", "--model", "m", "--output", "o", "--temperature", "0",
                                 "--top-p", "1", "--workers", "0"])
    assert (args.temperature, args.top_p, args.workers) == (0.0, 1.0, 0)


# ----------------------------------------------------------------------------------- start
def test_start_checks_data_files(tmp_path):
    with pytest.raises(UserError, match=f"key 'data.train': {tmp_path}/nope.jsonl: no such file"):
        sstart.check_data_spec(str(tmp_path / "nope.jsonl"), "data.train", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="key 'data.test': .*empty: directory has no .jsonl"):
        sstart.check_data_spec(str(tmp_path / "empty"), "data.test", "test")
    with pytest.raises(UserError, match="key 'data.train': 'synthetic:add,cube': synthetic level "
                                        "'cube' is unknown"):
        sstart.check_data_spec("synthetic:add,cube", "data.train", "train")
    ok = tmp_path / "p.jsonl"
    ok.write_text('{"problem": "1+1", "answer": "2"}\n')
    sstart.check_data_spec(str(ok), "data.train", "train")


def test_start_checks_s3_data(s3_env):
    bucket = s3_env.bucket
    with pytest.raises(UserError, match=f"key 'data.train': s3://{bucket}/no/such.parquet: not "
                                        "found"):
        sstart.check_data_spec(f"s3://{bucket}/no/such.parquet", "data.train", "train")


def test_start_checks_the_model_path(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"key 'model.name_or_path': .*/missing: no such directory"):
        sstart.check_model(str(tmp_path / "missing"))
    (tmp_path / "weights").mkdir()
    with pytest.raises(UserError, match="a directory without config.json"):
        sstart.check_model(str(tmp_path / "weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 so it cannot be fetched"):
        sstart.check_model("nobody/no-such-model-r19")
    sstart.check_model("smollm2-135m-instruct")  # a built-in alias


def test_start_checks_benchmarks_and_the_checkpoint_location(tmp_path, s3_env):
    cfg = resolve_flow(BASE | {"pipeline": {"benchmarks": ["heldout"]}})
    with pytest.raises(UserError, match="'heldout' evaluates data.test, which the config does not"):
        sstart.check_benchmarks(cfg)
    cfg = resolve_flow(BASE | {"pipeline": {"benchmarks": ["aime42"]}})
    with pytest.raises(UserError, match="'aime42' is not a benchmark"):
        sstart.check_benchmarks(cfg)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"key 'pipeline.checkpoint_root': {blocker}/sub: cannot "
                                        "write there"):
        sstart.check_writable(str(blocker / "sub"), "pipeline.checkpoint_root")
    with pytest.raises(UserError, match="key 'pipeline.checkpoint_root': cannot write there: "
                                        ".*NoSuchBucket"):
        sstart.check_writable("s3://no-such-bucket-r19/ckpt", "pipeline.checkpoint_root")
    sstart.check_writable(f"s3://{s3_env.bucket}/ckpt/r19", "pipeline.checkpoint_root")
    sstart.check_writable(str(tmp_path / "new" / "dir"), "pipeline.checkpoint_root")
    assert list((tmp_path / "new" / "dir").iterdir()) == []  # the probe is gone


def test_start_fails_on_a_missing_data_file_before_the_run_is_created(tmp_path):
    db = tmp_path / "m.db"
    data = deep_merge(BASE, {"data": {"train": str(tmp_path / "gone.jsonl")},
                             "tracking": {"uri": f"sqlite:///{db}"},
                             "pipeline": {"checkpoint_root": str(tmp_path / "ck")}})
    with pytest.raises(UserError, match="key 'data.train': .*gone.jsonl: no such file"):
        sstart.start(data, RunContext(run_id="r19"))
    assert not db.exists()


# ------------------------------------------------------------------------- retried steps
def _attempts(marker, attempts, body):
    """Run `body` under the wrapper as Metaflow would: attempt 0, 1, ... until one passes."""
    errors = []
    for retry_count in range(attempts):
        try:
            with user_errors_not_retried(marker, retry_count):
                body()
            return errors
        except Exception as e:  # noqa: BLE001 - what the task would report
            errors.append(e)
    return errors


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_user_error_in_a_retried_step_runs_the_step_once(where, tmp_path, request):
    if where == "s3":
        prefix = f"s3://{request.getfixturevalue('s3_env').bucket}/r19/lineage"
    else:
        prefix = str(tmp_path / "lineage")
    marker = user_error_marker(prefix, "7", "train_epoch", "12")
    calls = []

    def work():
        calls.append(1)
        raise UserError("key 'model.name_or_path': /gone: no such directory")

    errors = _attempts(marker, 3, work)  # @retry(times=2)
    assert len(calls) == 1  # the work ran on the first attempt only
    assert len(errors) == 3 and all(isinstance(e, UserError) for e in errors)
    assert re.fullmatch(r"key 'model.name_or_path': /gone: no such directory \(a user error: "
                        r"attempt 3 does not run the step again\)", str(errors[-1]))


def test_unavailable_and_other_errors_are_still_retried(tmp_path):
    marker = user_error_marker(str(tmp_path), "7", "eval_task", "3")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise UnavailableError("MLflow tracking server http://x is unreachable")
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access")

    assert len(_attempts(marker, 3, flaky)) == 2 and len(calls) == 3
    assert not (tmp_path / "user-errors").exists()
