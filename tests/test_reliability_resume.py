"""Resume reliability (issue 19, items 1 and 5): a larger budget continues a finished run; any
other config difference is refused with the keys, or allowed by a flag and recorded; the steps
after the checkpoint never appear twice (metrics.jsonl, MLflow); staging directories of
interrupted saves are removed. `prefix-rft train` runs in this process (`cli.main`, the same
code path as the command) on a random 2-layer model with SmolLM2's tokenizer."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefix_rft import cli
from prefix_rft.io.store import CheckpointRef, verify_local_checkpoint
from prefix_rft.train.resume import CHANGES_FILE
from tests.test_trainer import _cfg, _trainer

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = ("time/", "tokens/per_second")  # wall-clock measurements differ between runs


def _config(tmp_path: Path, model_dir: Path, steps: int, **extra: str) -> Path:
    cfg = tmp_path / f"tiny-{steps}.yaml"
    cfg.write_text(
        "method: prefix_rft\n"
        f"model: {{name_or_path: '{model_dir}', device: cpu,\n"
        "        random_init: {hidden_size: 32, num_layers: 2, num_heads: 2}}\n"
        "data: {train: 'synthetic:tiny', test: 'synthetic:tiny', synthetic_train_size: 8,\n"
        "       synthetic_test_size: 4}\n"
        "rollout: {num_prompts: 2, group_size: 2, max_response_len: 12}\n"
        f"rl: {{steps: {steps}, num_minibatches: 1, micro_batch_size: 4, demo_nll_prompts: 2}}\n"
        "reward: {num_workers: 0}\n"
        "eval: {num_problems: 0}\n"
        + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return cfg


def _train(cfg: Path, out: Path, *args: str) -> int:
    return cli.main(["train", "--config", str(cfg), "--output", str(out), "--quiet", *args])


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in _rows(out)]


# ============================================================ budget: a finished run continues
def test_a_larger_budget_continues_a_finished_run_as_a_longer_run_would(tmp_path, smollm2_dir,
                                                                        capsys):
    short, longer = _config(tmp_path, smollm2_dir, 1), _config(tmp_path, smollm2_dir, 2)
    out, straight = tmp_path / "run", tmp_path / "straight"
    assert _train(short, out) == 0
    # the same budget again: nothing to train, said so, exit 0 (and no checkpoint rewritten)
    assert _train(short, out, "--resume", "latest") == 0
    assert "nothing to train" in capsys.readouterr().out
    assert _steps(out) == [1]
    # rl.steps 1 -> 2 needs no flag: step 2 runs from the step-1 checkpoint
    assert _train(short, out, "--resume", "latest", "--set", "rl.steps=2") == 0
    assert _train(longer, straight) == 0
    assert _steps(out) == _steps(straight) == [1, 2]
    # constant LR (the default): the extended run is the straight 2-step run, number for number
    assert [_stable(r) for r in _rows(out)] == [_stable(r) for r in _rows(straight)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"] == {"phase": "done", "global_step": 2, "sft_step": 0}
    change = json.loads((out / CHANGES_FILE).read_text())
    assert change["keys"] == ["rl.steps"] and change["step"] == 1
    assert (change["old"], change["new"], change["kind"]) == (
        {"rl.steps": 1}, {"rl.steps": 2}, {"rl.steps": "budget"})


@pytest.mark.slow
def test_a_larger_budget_gets_the_lr_schedule_of_the_new_total(smol_tokenizer, tmp_path):
    """Cosine decay: the step after the resume takes the 2-step schedule's rate (half the peak),
    not the 1-step one's (which ended at 0), from the first optimizer step after the
    checkpoint on."""
    small = {"relift": {"enabled": False},
             "rollout": {"num_prompts": 2, "group_size": 2, "max_response_len": 8}}
    cosine = {"optim": {"lr": 1e-3, "lr_schedule": "cosine"}, "num_minibatches": 1,
              "demo_nll_prompts": 0}
    first = _trainer(_cfg(**small, rl={"steps": 1, **cosine}), smol_tokenizer)
    first.fit()
    assert first.opt.param_groups[0]["lr"] == 0.0  # the 1-step schedule has ended
    ck = first.save(tmp_path / "done")
    longer = _cfg(**small, rl={"steps": 2, **cosine})
    straight = _trainer(longer, smol_tokenizer)
    straight.fit()
    resumed = _trainer(longer, smol_tokenizer)
    resumed.load(ck)
    assert resumed.state.phase == "rl"
    assert resumed.opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)  # before its first step
    resumed.fit()
    assert resumed.state.global_step == 2
    assert [m["lr"] for m in resumed.history] == pytest.approx([m["lr"] for m in straight.history[1:]])
    assert float(resumed.opt.state_dict()["state"][0]["step"]) == 2.0  # Adam's moments went on


@pytest.mark.slow
def test_a_finished_sft_run_continues_with_more_epochs_or_an_rl_phase(smol_tokenizer, tmp_path):
    sft = {"batch_size": 4, "micro_batch_size": 4}  # 6 problems / 4 -> 2 steps per epoch
    one = _trainer(_cfg("sft", sft={"epochs": 1, **sft}, rl={"steps": 0}), smol_tokenizer)
    one.fit()
    assert (one.state.phase, one.state.sft_step) == ("done", 2)
    ck = one.save(tmp_path / "sft-done")
    more = _trainer(_cfg("sft", sft={"epochs": 2, **sft}, rl={"steps": 0}), smol_tokenizer)
    more.load(ck)
    assert more.state.phase == "sft"
    more.fit()
    assert (more.state.phase, more.state.sft_step) == ("done", 4)
    assert float(more.opt.state_dict()["state"][0]["step"]) == 4.0  # the SFT optimizer went on
    # rl.steps 0 -> 1 after a finished SFT-only run: the RL phase starts with its own optimizer
    rl = _trainer(_cfg("sft", sft={"epochs": 1, **sft}, rl={"steps": 1, "num_minibatches": 1}),
                  smol_tokenizer)
    rl.load(ck)
    assert rl.state.phase == "rl" and not rl.opt.state_dict()["state"]
    rl.fit()
    assert (rl.state.global_step, rl.state.sft_step) == (1, 2)


# ============================================================ other config differences
def test_a_changed_config_is_refused_with_its_keys_or_allowed_by_the_flag_and_recorded(
        tmp_path, smollm2_dir, capsys):
    cfg, out = _config(tmp_path, smollm2_dir, 2), tmp_path / "run"
    assert _train(cfg, out) == 0
    before = (out / "metrics.jsonl").read_text()
    changed = ["--set", "rl.optim.lr=0.01", "--set", "seed=7", "--set", "rl.steps=3",
               "--set", "log_every=5"]
    capsys.readouterr()
    assert _train(cfg, out, "--resume", "latest", *changed) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, err
    assert "2 key(s): rl.optim.lr: 1e-06 -> 0.01; seed: 42 -> 7." in errors[0]
    assert "--allow-config-change" in errors[0]
    assert (out / "metrics.jsonl").read_text() == before and not (out / CHANGES_FILE).exists()

    assert _train(cfg, out, "--resume", "latest", "--allow-config-change", *changed) == 0
    entry = json.loads((out / CHANGES_FILE).read_text())
    assert entry["kind"] == {"log_every": "free", "rl.optim.lr": "allowed", "rl.steps": "budget",
                             "seed": "allowed"}
    assert entry["old"]["rl.optim.lr"] == 1e-6 and entry["new"]["rl.optim.lr"] == 0.01
    assert _steps(out) == [1, 2, 3]
    assert cli.main(["train", "--config", str(cfg), "--output", str(tmp_path / "other"),
                     "--allow-config-change"]) == 2  # the flag without --resume


def test_sft_epochs_cannot_change_once_rl_has_started(tmp_path, smollm2_dir, capsys):
    cfg, out = _config(tmp_path, smollm2_dir, 1), tmp_path / "run"
    assert _train(cfg, out) == 0
    capsys.readouterr()
    assert _train(cfg, out, "--resume", "latest", "--set", "sft.epochs=1") == 2
    err = capsys.readouterr().err
    assert "sft.epochs: 0.0 -> 1.0" in err and "past the SFT phase, at RL step 1" in err


def test_the_flow_refuses_an_epoch_checkpoint_of_another_config(tmp_path):
    from steps.flow_config import resolve_flow
    from steps.train import check_same_config

    base = {"method": "rft", "model": {"name_or_path": "m"}, "data": {"train": "synthetic:tiny"}}
    old = resolve_flow(base, ["rl.optim.lr=1e-5", "pipeline.epochs=3"])
    (tmp_path / "config.yaml").write_text(old.to_yaml())
    ref = CheckpointRef(uri=str(tmp_path), step=3, epoch=1, config_hash=old.config_hash(),
                        manifest_sha256="0" * 64)
    same = resolve_flow(base, ["rl.optim.lr=1e-5", "pipeline.epochs=5"])  # not a training key
    check_same_config(same, ref, tmp_path)
    with pytest.raises(Exception, match=r"another config .*: rl\.optim\.lr: 1e-05 -> 1e-06$"):
        check_same_config(resolve_flow(base), ref, tmp_path)


# ============================================================ idempotent metrics, staging
def test_resume_never_repeats_a_step_and_removes_stale_staging(tmp_path, smollm2_dir, caplog):
    cfg = _config(tmp_path, smollm2_dir, 3, save_every=1, keep_last=0)
    out = tmp_path / "run"
    assert _train(cfg, out) == 0
    first = _rows(out)
    ckpts = out / "checkpoints"
    # what a save killed before its rename leaves: the files, no manifest, a hidden name
    stale = ckpts / ".step-000004.tmp-k1ll3d"
    shutil.copytree(ckpts / "step-000002", stale)
    (stale / "MANIFEST.json").unlink()
    # back to step 2 (its step-3 row is in metrics.jsonl): step 3 runs again, logged once
    with caplog.at_level(logging.INFO):
        assert _train(cfg, out, "--resume", str(ckpts / "step-000002")) == 0
    assert _steps(out) == [1, 2, 3]
    assert [_stable(r) for r in _rows(out)] == [_stable(r) for r in first]
    assert "dropped 1 row(s)" in caplog.text
    assert not stale.exists() and f"removed {stale}" in caplog.text
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    for p in ckpts.iterdir():
        verify_local_checkpoint(p)


@pytest.mark.slow
def test_kill_9_during_training_then_resume_logs_every_step_once(tmp_path, smollm2_dir):
    """A real `prefix-rft train` process killed with SIGKILL while it trains and saves every
    step (wherever it is: inside a step, between a step's row and its checkpoint, inside a
    save); `--resume latest` then reaches the total with each step in metrics.jsonl once and
    no staging directory left."""
    cfg, out = _config(tmp_path, smollm2_dir, 5, save_every=1, keep_last=3), tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "prefix_rft.cli", "train", "--config", str(cfg), "--output",
           str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and (not (out / "metrics.jsonl").exists()
                                       or len(_rows(out)) < 2):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "finished before the kill: raise rl.steps"
    resumed = subprocess.run([*cmd, "--resume", "latest"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _steps(out) == list(range(1, 6))
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_mlflow_gets_each_step_once_across_a_resume(local_servers):
    """The flow's metrics listener against the real MLflow server: the first attempt logged
    steps 1-3 (and an evaluation at step 2) and died after its step-1 checkpoint; the retry
    trains steps 2-4 again from it. Each step is one point."""
    from prefix_rft.io.tracking import Tracker
    from steps.train import step_logger

    tracker = Tracker(local_servers.mlflow_uri)
    run_id = tracker.create_run("reliability-resume", "resume-once", {})
    at = {"step": 0}

    def attempt(steps, eval_at):
        listener = step_logger(tracker, run_id, lambda: at["step"])
        for s in steps:
            at["step"] = s
            listener({"phase": "rl", "step": s, "loss": 0.1 * s, "time/step": 1.0})
            if s == eval_at:
                listener({"phase": "eval", "step": s, "eval/accuracy": 0.5})

    attempt([1, 2, 3], eval_at=2)
    attempt([2, 3, 4], eval_at=2)  # same values: a resumed run repeats a straight one
    for key, steps in (("loss", [1, 2, 3, 4]), ("time/step", [1, 2, 3, 4]),
                       ("eval/accuracy", [2])):
        assert sorted(s for s, _ in tracker.metric_history(run_id, key)) == steps, key


def test_a_store_commit_removes_the_staging_left_by_an_interrupted_commit(tmp_path, caplog):
    """The pipeline's checkpoint store (local): a commit killed before its rename leaves
    `.<name>.tmp-*` in the run's directory; the run's next commit removes it, never a committed
    checkpoint."""
    from prefix_rft.io.store import open_store

    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "w.bin").write_bytes(b"weights")
    store = open_store(tmp_path / "root")
    first = store.commit(src, "run-1/step-000001", step=1, epoch=1, config_hash="h")
    stale = tmp_path / "root" / "run-1" / ".step-000002.tmp-k1ll3d"
    shutil.copytree(src, stale)  # the files landed, the manifest and the rename did not
    with caplog.at_level(logging.WARNING):
        store.commit(src, "run-1/step-000003", step=3, epoch=1, config_hash="h")
    assert not stale.exists() and f"removed {stale}" in caplog.text
    assert [r.step for r in store.list()] == [1, 3]
    store.fetch(first)  # the committed one is intact (verified)
