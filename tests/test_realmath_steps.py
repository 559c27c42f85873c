"""studies/realmath_steps.py (a run's per-step record as committed text, from the returned MLflow
file and flow log) and the training-curves figure drawn from those files by
studies/realmath_table.py.

The MLflow file is written by the flow's own writers: the parent run's tags by
`steps.common.RunContext` and `mark_resumed` (a run stopped before its eval task and resumed),
the trainer's per-step rows by `steps.train.step_logger`, the flow's evaluation cells by
`steps.evaluate._log_cell`, plus `data/*` at step 0 and a `system/*` metric. The flow log is a
short one in Metaflow's format (`[run/step/task (pid N)]` after a millisecond timestamp) with the
lines the phases are read from: vLLM's, the trainer's progress lines (`Trainer.progress_line`'s
format, checked below) and the eval task's per-benchmark line. Every expected number is worked
out in the comments."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from prefix_rft.errors import UserError
from prefix_rft.eval import report
from prefix_rft.eval.protocol import PROTOCOLS
from prefix_rft.io import run_layout
from prefix_rft.io.tracking import Tracker
from prefix_rft.train.trainer import Trainer
from steps.common import RunContext, mark_resumed
from steps.train import step_logger
from tests.scripts import ROOT, load_script
from tests.test_realmath_table import log_flow_cell, log_flow_heldout, study_row

RS = load_script("studies/realmath_steps.py")
RT = load_script("studies/realmath_table.py")

EXP = "prefix-rft-realmath"
S1 = ROOT / "docs" / "results" / "realmath_s1_steps.json"

# run A (prefix_rft seed 1), 3 RL steps; its in-training held-out eval at steps 2 and 3
A_TRAIN = [  # (step, reward/mean, reward/policy_mean or None, loss, time/step)
    (1, 0.25, None, 0.5, 20.0),
    (2, 0.375, 0.125, 0.25, 22.0),
    (3, 0.5, 0.25, 0.125, 24.0),
]
A_EVAL = {2: 0.5, 3: 0.75}  # eval/accuracy (2 and 3 of 4 problems)
# run B (sft_then_rft seed 1): 2 steps
B_TRAIN = [(1, 0.125, 0.125, 1.0, 10.0), (2, 0.25, 0.25, 0.75, 11.0)]


def _log_steps(tracker, run_id: str, train, evals) -> None:
    """The trainer's rows as the flow logs them (step_logger at the trainer's train_steps)."""
    at = {"step": 0}
    listener = step_logger(tracker, run_id, lambda: at["step"])
    for step, reward, policy, loss, secs in train:
        at["step"] = step
        row = {"phase": "rl", "reward/mean": reward, "loss": loss, "time/step": secs}
        if policy is not None:  # not logged at step 1: its steps go to metric_steps
            row["reward/policy_mean"] = policy
        listener(row)
        if step in evals:
            listener({"phase": "eval", "eval/accuracy": evals[step], "eval/num_problems": 4,
                      "eval/no_answer_frac": 0.25})


def _flow_line(ts: str, path: str, msg: str) -> str:
    return f"2026-12-07 {ts} [{path} (pid 11)] {msg}"


def flow_log(run_id: str) -> str:
    """Run 100 stopped at the start of its eval task, then resumed as run 101 (study.sh appends
    both to one log). Times (s after 09:59:00): see the expected values in the tests."""
    a, b = "100", "101"
    lines = [
        "Workflow starting (run-id 100):",
        _flow_line("09:59:00.000", f"{a}/start/1", "Task is starting."),
        _flow_line("09:59:05.000", f"{a}/start/1", f"MLflow run {run_id} at sqlite:///x/mlflow.db"),
        _flow_line("09:59:14.500", f"{a}/start/1", "Task finished successfully."),   # 14.5
        _flow_line("09:59:15.000", f"{a}/filter_data/2", "Task is starting."),
        _flow_line("09:59:39.500", f"{a}/filter_data/2", "Task finished successfully."),  # 24.5
        _flow_line("10:00:00.000", f"{a}/train_epoch/3", "Task is starting."),
        _flow_line("10:00:30.000", f"{a}/train_epoch/3",   # 30.0 to the engine's arguments
                   "INFO 12-07 10:00:30 [utils.py:253] non-default args: {'seed': 1}"),
        _flow_line("10:00:55.000", f"{a}/train_epoch/3",
                   "(EngineCore pid=4314) INFO 12-07 10:00:55 [monitor.py:53] "
                   "torch.compile took 23.32 s in total"),
        _flow_line("10:01:20.500", f"{a}/train_epoch/3",   # 50.5 to the engine ready
                   "(EngineCore pid=4314) INFO 12-07 10:01:20 [core.py:337] init engine (profile, "
                   "create kv cache, warmup model) took 48.11 s (compilation: 23.32 s)"),
        _flow_line("10:01:40.000", f"{a}/train_epoch/3", "INFO prefix_rft.train.trainer: "
                   "step 1/3 rl | reward 0.250 | loss 0.5 | 20.0 s/step, ETA 40s"),
        _flow_line("10:02:00.000", f"{a}/train_epoch/3", "INFO prefix_rft.train.trainer: "
                   "step 2/3 rl | reward 0.375 (policy 0.125) | loss 0.25 | 21.0 s/step, ETA 21s"),
        _flow_line("10:02:05.000", f"{a}/train_epoch/3", "INFO prefix_rft.train.trainer: "
                   "step 2/3 eval | held-out accuracy 0.500 over 4 problems"),
        # 10:01:20.5 -> 10:02:25.3: 64.8 s, 3 steps and the step-2 eval
        _flow_line("10:02:25.300", f"{a}/train_epoch/3", "INFO prefix_rft.train.trainer: "
                   "step 3/3 rl | reward 0.500 (policy 0.250) | loss 0.125 | 22.0 s/step, ETA 0s"),
        _flow_line("10:02:30.000", f"{a}/train_epoch/3", "INFO prefix_rft.train.trainer: "
                   "step 3/3 eval | held-out accuracy 0.750 over 4 problems"),
        _flow_line("10:02:45.000", f"{a}/train_epoch/3",   # 15.0 after the last eval
                   "INFO steps.train: epoch 1: checkpoint /tmp/ck/100/step-000003"),
        _flow_line("10:02:50.000", f"{a}/train_epoch/3", "Task finished successfully."),  # 170.0
        _flow_line("10:02:51.000", f"{a}/plan_eval/4", "Task is starting."),
        _flow_line("10:02:59.000", f"{a}/plan_eval/4", "Task finished successfully."),  # 8.0
        _flow_line("10:03:00.000", f"{a}/eval_task/5", "Task is starting."),  # stopped: not counted
        "=== flow stopped at the start of eval_task, which needs 400 s, with 39 s left; its "
        "finished tasks are kept for Metaflow's resume",
        "=== prefix_rft-seed1: resuming Metaflow run 100",
        "Workflow starting (run-id 101):",
        _flow_line("11:00:00.000", f"{b}/eval_task/7", "Task is starting."),
        _flow_line("11:00:40.000", f"{b}/eval_task/7",   # 40.0
                   "INFO 12-07 11:00:40 [utils.py:253] non-default args: {'seed': 1}"),
        _flow_line("11:01:20.000", f"{b}/eval_task/7",
                   "(EngineCore pid=4816) INFO 12-07 11:01:20 [monitor.py:53] "
                   "torch.compile took 28.08 s in total"),
        _flow_line("11:01:50.000", f"{b}/eval_task/7",   # 70.0
                   "(EngineCore pid=4816) INFO 12-07 11:01:50 [core.py:337] init engine (profile, "
                   "create kv cache, warmup model) took 60.00 s (compilation: 28.08 s)"),
        _flow_line("11:02:02.700", f"{b}/eval_task/7",   # 12.7 after the engine ready
                   "INFO prefix_rft.pipeline: epoch 1 heldout: eval/heldout/avg_at_1 = 0.7500 "
                   "[0.2500, 1.0000] over 4 problems (vllm engine); 0% cut at 1024 tokens"),
        _flow_line("11:02:54.200", f"{b}/eval_task/7",   # 51.5 after heldout
                   "INFO prefix_rft.pipeline: epoch 1 aime24: eval/aime24/avg_at_2 = 0.5000 "
                   "[0.0000, 1.0000] over 3 problems (vllm engine); 10% cut at 1024 tokens"),
        _flow_line("11:03:10.000", f"{b}/eval_task/7", "Task finished successfully."),  # 190.0
        _flow_line("11:03:11.000", f"{b}/join_eval/8", "Task is starting."),
        _flow_line("11:03:20.000", f"{b}/join_eval/8", "Task finished successfully."),  # 9.0
        _flow_line("11:03:21.000", f"{b}/end/9", "Task is starting."),
        _flow_line("11:03:25.000", f"{b}/end/9", "Task finished successfully."),  # 4.0
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The session's returned files: mlflow.db (runs A and B FINISHED, C RUNNING, plus A's
    evaluation child runs), logs/ (A's flow log and another run's) and summary.json."""
    d = tmp_path_factory.mktemp("realmath_steps")
    tracker = Tracker(f"sqlite:///{d / 'mlflow.db'}", check=False)
    runs = {}
    for name, method, train, evals in (("A", "prefix_rft", A_TRAIN, A_EVAL),
                                       ("B", "sft_then_rft", B_TRAIN, {}),
                                       ("C", "rft", B_TRAIN, {})):
        ctx = RunContext(run_id=f"{name}100", user="t")
        run_id = tracker.create_run(EXP, f"{method}-{ctx.run_id}", ctx.tags() | {"method": method})
        tracker.log_params(run_id, {"method": method, "seed": 1, "rl.steps": len(train)})
        tracker.log_metrics(run_id, {"data/num_train": 697, "data/kept": 697}, step=0)
        tracker.log_metrics(run_id, {"system/cpu_utilization_percentage": 50.0}, step=1)
        _log_steps(tracker, run_id, train, evals)
        runs[name] = run_id
    a = runs["A"]
    monkey = pytest.MonkeyPatch()
    monkey.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d / 'mlflow.db'}")
    # A: stopped before its eval task (Metaflow run A100 = "100" in the log), resumed as 101
    mark_resumed(tracker, {"run_id": a}, RunContext(run_id="101", origin_run_id="A100"))
    tracking = {"run_id": a, "experiment": EXP}
    log_flow_heldout(tracker, tracking, 1, "1101")   # the flow's cells: not per-step curves
    log_flow_cell(tracker, tracking, "aime24", 1, {"p0": [1, 1], "p1": [1, 0], "p2": [0, 0]},
                      dataclasses.replace(PROTOCOLS["paper"], max_new_tokens=1024,
                                          n_per_benchmark={"aime24": 2}))
    tracker.log_metrics(a, {"eval/best_macro": 0.6}, step=1)
    monkey.undo()
    for name in ("A", "B"):
        tracker.terminate(runs[name], "FINISHED")
    logs = d / "logs"
    logs.mkdir()
    (logs / "prefix_rft-seed1.log").write_text(flow_log(a))
    # B's log (a longer train_epoch): not A's, so not read for A
    (logs / "sft_then_rft-seed1.log").write_text(
        flow_log(runs["B"]).replace("10:02:50.000", "10:03:50.000"))
    (logs / "gpu_mem_1.csv").write_text("0,100\n")
    (d / "summary.json").write_text(json.dumps([
        study_row("prefix_rft", 1, a) | {"card": "NVIDIA H200"},
        study_row("sft_then_rft", 1, runs["B"])]))
    return d, runs


def test_progress_lines_match_what_the_phases_look_for():
    """The trainer's own progress line (and the format the log above copies) is what
    realmath_steps.py reads the last step from."""
    fake = SimpleNamespace(train_steps=3, total_steps=3,
                           history=[{"phase": "rl", "time/step": 20.0}])
    line = Trainer.progress_line(fake, {"phase": "rl", "reward/mean": 0.5, "loss": 0.125})
    assert line.startswith("step 3/3 rl | reward 0.500")
    assert RS.TRAIN_STEP.search(line).groups() == ("3", "3")


def test_eval_cell_lines_match_what_the_phases_look_for():
    """The flow's eval task logs each cell with steps/evaluate.py's format (the metric key, not
    a bare avg_at_N); realmath_steps.py reads the per-benchmark phases from those lines. The
    format is taken from the source, so a change there fails here."""
    import re

    src = (ROOT / "steps" / "evaluate.py").read_text()
    fmt = re.search(r'log\.info\("(epoch %d %s: %s = [^"]+)"', src).group(1)
    line = fmt % (1, "aime24", run_layout.metric_key("aime24", 32), 0.0094, 0.001, 0.0208, 30,
                  "vllm", "35% cut at 1024 tokens")
    assert line.startswith("epoch 1 aime24: eval/aime24/avg_at_32 = 0.0094 [0.0010, 0.0208] over 30")
    assert RS.EVAL_CELL.search(line).groups() == ("1", "aime24", "32", "30")


def test_steps_file_from_mlflow_and_the_flow_log(study, tmp_path, capsys):
    d, runs = study
    a = runs["A"]
    out = tmp_path / "realmath_s9_steps.json"
    assert RS.main(["--db", str(d / "mlflow.db"), "--logs", str(d / "logs"),
                    "--summary", str(d / "summary.json"), "--call", "prefix_rft:1=512.4",
                    "--call", "continue=443.9", "--source", "test session", "--out", str(out),
                    a]) == 0
    assert capsys.readouterr().out == f"{out}: run {a}, 5 metrics over 3 steps, 7 tasks, 8 phases\n"
    got = json.loads(out.read_text())
    assert list(got) == [*RS.KEYS, "metric_steps"]  # s1's keys, in s1's order, + metric_steps
    assert got == {
        "mlflow_run_id": a,
        "metaflow_run_id": "101",    # metaflow.latest_run_id of the resumed run
        "resumed_from": "A100",      # metaflow.resume.101 = origin=A100
        "source": "test session",
        "card": "NVIDIA H200",  # A's row of summary.json
        # the longest successful task of each step; eval_task/5 of run 100 never finished
        "task_s": {"start": 14.5, "filter_data": 24.5, "train_epoch": 170.0, "plan_eval": 8.0,
                   "eval_task": 190.0, "join_eval": 9.0, "end": 4.0},
        "call_s": {"prefix_rft:1": 512.4, "continue": 443.9},
        "eval_accuracy_steps": [2, 3],
        # sorted names; data/*, system/*, the flow's cells, eval/best_macro and the in-training
        # eval's other keys left out
        "steps": {"eval/accuracy": [0.5, 0.75], "loss": [0.5, 0.25, 0.125],
                  "reward/mean": [0.25, 0.375, 0.5], "reward/policy_mean": [0.125, 0.25],
                  "time/step": [20.0, 22.0, 24.0]},
        "phases_s": {
            "train_epoch: task start to the vLLM engine's arguments": 30.0,
            "train_epoch: colocated vLLM start (arguments to engine ready)": 50.5,
            "train_epoch: 3 steps and the step-2 held-out eval (engine ready to step 3 logged)": 64.8,
            "train_epoch: last held-out eval to the committed checkpoint": 15.0,
            "eval_task: task start to the vLLM engine's arguments": 40.0,
            "eval_task: vLLM start (arguments to engine ready)": 70.0,
            "eval_task: heldout (greedy, 4)": 12.7,   # the child run's protocol: temperature 0
            "eval_task: aime24 (avg@2)": 51.5,
        },
        "vllm_compile_s": {"train_epoch": 23.32, "eval_task": 28.08},
        "metric_steps": {"reward/policy_mean": [2, 3]},  # not logged at step 1
    }
    # read back: the same curves as MLflow holds
    hist = RS.histories(RS.read_steps(out))
    assert hist["reward/policy_mean"] == [(2, 0.125), (3, 0.25)]
    assert hist["eval/accuracy"] == [(2, 0.5), (3, 0.75)]
    assert hist["loss"] == [(1, 0.5), (2, 0.25), (3, 0.125)]


def test_without_logs_and_every_finished_run(study, tmp_path, capsys):
    """No RUN_ID: the FINISHED parent runs (A, B; not the RUNNING C nor A's child runs); no
    --logs: the log's keys are empty; --card wins over the summary; a fixed --out for two runs
    is refused before anything is written."""
    d, runs = study
    db = str(d / "mlflow.db")
    assert RS.main(["--db", db, "--out", str(tmp_path / "one.json")]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "one.json").exists()
    out = str(tmp_path / "{method}-seed{seed}.json")
    assert RS.main(["--db", db, "--card", "X", "--out", out]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefix_rft-seed1.json",
                                                          "sft_then_rft-seed1.json"]
    b = json.loads((tmp_path / "sft_then_rft-seed1.json").read_text())
    assert (b["mlflow_run_id"], b["metaflow_run_id"], b["resumed_from"]) == (runs["B"], "B100", None)
    assert (b["card"], b["task_s"], b["call_s"], b["phases_s"], b["vllm_compile_s"]) == ("X", {}, {}, {}, {})
    assert b["eval_accuracy_steps"] == [] and "metric_steps" not in b
    assert b["steps"] == {"loss": [1.0, 0.75], "reward/mean": [0.125, 0.25],
                          "reward/policy_mean": [0.125, 0.25], "time/step": [10.0, 11.0]}
    assert b["source"].startswith(f"MLflow run {runs['B']} (sft_then_rft seed 1) in {db}")
    # a log folder that does not name the run: said, and the log's keys stay empty
    (tmp_path / "logs").mkdir()
    assert RS.main(["--db", db, "--logs", str(tmp_path / "logs"), "--phase", "x=1.5",
                    "--out", str(tmp_path / "c.json"), runs["C"]]) == 0
    assert "no flow log under" in capsys.readouterr().err
    c = json.loads((tmp_path / "c.json").read_text())
    assert (c["task_s"], c["phases_s"]) == ({}, {"x": 1.5})
    # errors: a child run, an unknown run, a missing file, a bad --call
    child = Tracker(f"sqlite:///{d / 'mlflow.db'}", check=False).eval_runs(runs["A"])[0]["run_id"]
    assert RS.main(["--db", db, child]) == 2
    assert "is an evaluation child run of" in capsys.readouterr().err
    assert RS.main(["--db", db, "0" * 32]) == 2
    assert f"MLflow run {'0' * 32} is not in" in capsys.readouterr().err
    assert RS.main(["--db", str(tmp_path / "none.db")]) == 2
    with pytest.raises(SystemExit):
        RS.main(["--db", db, "--call", "continue"])
    assert "expected NAME=SECONDS" in capsys.readouterr().err


def test_curves_from_steps_files_match_the_mlflow_ones(study, tmp_path, monkeypatch, capsys):
    """realmath_table.py --steps draws the figure from the committed files: the figure function
    gets each run's curves from them, the same as --db reads from MLflow."""
    d, runs = study
    steps_dir = tmp_path / "results"
    assert RS.main(["--db", str(d / "mlflow.db"), "--out",
                    str(steps_dir / "realmath_{method}_steps.json")]) == 0
    got = []
    real = report.training_curves_figure

    def spy(hist, keys, **kw):
        got.append((hist, tuple(keys), kw))
        return real(hist, keys, **kw)

    monkeypatch.setattr(report, "training_curves_figure", spy)
    fig = tmp_path / "fig" / "curves.png"
    summary = str(d / "summary.json")
    assert RT.main([summary, "--steps", str(steps_dir / "realmath_*_steps.json"),
                    "--curves", str(fig)]) == 0
    assert fig.stat().st_size > 0
    hist, keys, kw = got[0]
    assert keys == RT.CURVES and kw["groups"] == {"sft_then_rft s1": "sft_then_rft",
                                                  "prefix_rft s1": "prefix_rft"}
    assert list(hist) == ["sft_then_rft s1", "prefix_rft s1"]  # study_table's method order
    assert hist["prefix_rft s1"] == {
        "reward/mean": [(1, 0.25), (2, 0.375), (3, 0.5)],
        "reward/policy_mean": [(2, 0.125), (3, 0.25)],
        "loss": [(1, 0.5), (2, 0.25), (3, 0.125)],
        "eval/accuracy": [(2, 0.5), (3, 0.75)]}  # demo/nll and prefix/advantage not logged
    assert hist["sft_then_rft s1"]["loss"] == [(1, 1.0), (2, 0.75)]
    # --db still draws it, from the same values
    assert RT.main([summary, "--db", str(d / "mlflow.db"), "--curves", str(fig)]) == 0
    assert got[1][0] == hist
    # a run that no steps file (and no --db) has: an error naming it
    (steps_dir / "realmath_sft_then_rft_steps.json").unlink()
    capsys.readouterr()
    assert RT.main([summary, "--steps", str(steps_dir / "realmath_*_steps.json"),
                    "--curves", str(fig)]) == 2
    assert capsys.readouterr().err == (f"error: MLflow run {runs['B']} is in none of "
                                       f"{steps_dir / 'realmath_prefix_rft_steps.json'}\n")
    # ... which --db fills in
    assert RT.main([summary, "--steps", str(steps_dir / "realmath_*_steps.json"),
                    "--db", str(d / "mlflow.db"), "--curves", str(fig)]) == 0
    assert got[-1][0] == hist


def test_steps_reader_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mlflow_run_id": "r", "eval_accuracy_steps": [5],
                               "steps": {"eval/accuracy": [0.1, 0.2]}}))
    with pytest.raises(UserError, match="eval/accuracy has 2 values for 1 steps"):
        RS.read_steps(bad)
    (tmp_path / "s.json").write_text("[]")
    assert RT.main([str(tmp_path / "s.json"), "--steps", str(bad), "--curves",
                    str(tmp_path / "f.png")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: not a steps file")
    assert RT.main([str(tmp_path / "s.json"), "--steps", str(tmp_path / "none_*.json"),
                    "--curves", str(tmp_path / "f.png")]) == 2
    with pytest.raises(UserError, match="two values at step 1"):
        RS.steps_block({"loss": [(1, 0.5), (1, 0.25)]})


def test_first_study_run_round_trips_through_the_table_reader():
    """docs/results/realmath_s1_steps.json (assembled by hand before this tool) reads back as
    curves and writes back to the same lists, under the writer's keys; realmath_table.py's
    steps source gives the figure those curves."""
    data = RS.read_steps(S1)
    hist = RS.histories(data, str(S1))
    assert RS.steps_block(hist) == {"eval_accuracy_steps": data["eval_accuracy_steps"],
                                    "steps": data["steps"]}
    assert list(data) == list(RS.KEYS)  # the writer's keys are s1's, in s1's order
    assert hist["eval/accuracy"] == [(5, 15 / 123), (10, 20 / 123)]
    assert [s for s, _ in hist["reward/mean"]] == list(range(1, 11))
    curves = RT.StepsCurves([S1]).histories(data["mlflow_run_id"], RT.CURVES)
    assert curves == {k: hist[k] for k in RT.CURVES}  # s1 logged every plotted key
    assert RT.StepsCurves([S1]).histories("another run", RT.CURVES) is None
