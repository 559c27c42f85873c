"""The Prefix-RFT training pipeline (Metaflow).

    start -> filter_data -> train_epoch (loops to itself, one task per epoch) -> plan_eval
          -> eval_task (foreach epoch x benchmark or epoch, @catch) -> join_eval -> end

Only wiring, decorators and resources live here; each step's work is a plain function in
`steps/` (runnable and testable without Metaflow). Everything a run does is logged to one MLflow
parent run per training lineage.

Code package: `@package_sources` adds the checkout's `prefix_rft/` (with its benchmark data and
chat templates), `steps/` and `configs/` beside this file, so a remote task (`--with
kubernetes`, `argo-workflows create`) imports exactly the code it was launched from, ahead of the
copy installed in the image; the image supplies only the dependencies. The config's values
themselves travel in the package as Metaflow's Config (`python flows/prefix_rft_flow.py package
list` shows every file).

One node trains (`pipeline.train.nodes: 1`); more nodes run flows/prefix_rft_multinode_flow.py,
this flow with the training loop replaced by a Metaflow @parallel gang (each flow refuses the
other's node counts when it is loaded, naming the key).

Resources: the CPU-only steps (start, filter_data, plan_eval, join_eval, end) request
`pipeline.data`, train_epoch `pipeline.train`, eval_task `pipeline.eval`. `pipeline.project`
(and `pipeline.branch` or `--branch`) puts the flow under Metaflow's @project.

    python flows/prefix_rft_flow.py run                                   # embedded demo config
    python flows/prefix_rft_flow.py --config config configs/paper/qwen2.5-math-1.5b.yaml run
    python flows/prefix_rft_flow.py run --max-problems 64 --epochs 1      # smoke run
    python flows/prefix_rft_flow.py run --set "pipeline.checkpoint_root=s3://bucket/ckpt"
    python flows/prefix_rft_flow.py resume --origin-run-id R              # continue a failed run
    python flows/prefix_rft_flow.py resume plan_eval --origin-run-id R    # re-run evaluation only
    python flows/prefix_rft_flow.py run --warm-start s3://.../step-000200 # new lineage from a checkpoint
"""

from __future__ import annotations

import os

from steps.common import ensure_metaflow_user

ensure_metaflow_user()  # as root or without USER: Metaflow would refuse to start

from metaflow import (  # noqa: E402
    Config,
    FlowSpec,
    Parameter,
    catch,
    config_expr,
    current,
    exit_hook,
    package_sources,
    project,
    resources,
    retry,
    schedule,
    step,
    timeout,
)
from pipeline_mutators import (  # noqa: E402  (this directory: in the package)
    nodes_from_config,
    project_from_config,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(HERE, "..", "configs", "demo.yaml")
# What the code package carries besides this directory's *.py: the library with its package data
# (benchmark files, chat templates: the suffixes of pyproject's package-data), the step functions
# and the configs. Model weights (.safetensors, .bin, .pt) and caches never match.
PACKAGE_SOURCES = ["../prefix_rft", "../steps", "../configs"]
PACKAGE_SUFFIXES = [".py", ".yaml", ".jinja", ".json", ".jsonl", ".parquet", ".md"]


def _ctx():
    from steps.common import RunContext

    return RunContext(
        flow_name=current.flow_name, run_id=current.run_id, user=current.username,
        origin_run_id=current.origin_run_id, task_id=current.task_id,
        retry_count=current.retry_count, project=getattr(current, "project_name", None),
        branch=getattr(current, "branch_name", None), flow_file=os.path.abspath(__file__),
    )


# Deployed runs (argo-workflows create) start on pipeline.schedule; no schedule when it is null.
# @project(pipeline.project): namespaces deployments and MLflow experiments per project and
# branch (--branch/--production); project_from_config drops it when pipeline.project is null.
@nodes_from_config
@project_from_config
@project(name=config_expr("config.pipeline.project"))
@package_sources(PACKAGE_SOURCES, suffixes=PACKAGE_SUFFIXES)
@schedule(cron=config_expr("config.pipeline.schedule"), daily=False)
@exit_hook(on_error=["steps.finish.exit_hook_mark_failed"])
class PrefixRFTFlow(FlowSpec):
    """Train a policy with a method preset (Prefix-RFT by default), checkpoint every epoch,
    evaluate every checkpoint, and log it all to MLflow."""

    config = Config("config", default=DEFAULT_CONFIG, parser="steps.flow_config.flow_config_parser",
                    help="YAML config (see `python -m steps.flow_config keys`); default: the "
                    "embedded demo (SmolLM2-135M, synthetic arithmetic, CPU).")
    seed = Parameter("seed", type=int, default=None, help="Override the config's seed.")
    epochs = Parameter("epochs", type=int, default=None, help="Override pipeline.epochs.")
    max_problems = Parameter("max-problems", type=int, default=None,
                             help="Train on at most this many problems (smoke runs).")
    overrides = Parameter("set", type=str, default="",
                          help="Override config keys: 'key=value key=value' (YAML values), e.g. "
                          "--set 'pipeline.checkpoint_root=s3://bucket/ckpt rl.optim.lr=1e-6'.")
    warm_start = Parameter("warm-start", type=str, default="",
                           help="Start from this checkpoint's weights (URI: a local directory or "
                           "s3://...; fresh optimizer, new lineage).")

    def _user_errors_not_retried(self):
        """Around a retried step's work: a UserError fails every later attempt of this task at
        once, without running the work again (steps.common.user_errors_not_retried)."""
        from steps.common import user_error_marker, user_errors_not_retried

        marker = user_error_marker(self.lineage_prefix, current.run_id, current.step_name,
                                   current.task_id)
        return user_errors_not_retried(marker, current.retry_count)

    def _open(self):
        """The resolved config and a tracker on the lineage's MLflow run (reopened on resume)."""
        from steps.common import config_from_dict, mark_resumed, setup_logging, tracker_for

        setup_logging()
        tracker = tracker_for(self.tracking)
        mark_resumed(tracker, self.tracking, _ctx())
        return config_from_dict(self.cfg), tracker

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def start(self):
        """Validate the config, Parameters and warm start; open the MLflow parent run."""
        from steps.common import setup_logging
        from steps.start import start

        setup_logging()
        m = start(self.config.to_dict(), _ctx(), seed=self.seed, epochs=self.epochs,
                  max_problems=self.max_problems, warm_start=self.warm_start or None,
                  overrides=self.overrides or None, source="flow config")
        self.cfg = m["config"]
        self.tracking = m["tracking"]
        self.lineage = m["lineage"]
        self.lineage_prefix = m["lineage_prefix"]
        self.warm_start_ref = m["warm_start"]
        print(f"MLflow run {self.tracking['run_id']} at {self.tracking['uri']}")
        self.next(self.filter_data)

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def filter_data(self):
        """Filter the raw data into this lineage's training/held-out sets; plan the epochs."""
        self._filter_data()
        self.next(self.train_epoch)

    def _filter_data(self):
        """filter_data's work (the multi-node flow routes the step elsewhere)."""
        from steps.data import filter_data

        cfg, tracker = self._open()
        m = filter_data(cfg, lineage_prefix=self.lineage_prefix, tracker=tracker,
                        tracking=self.tracking)
        self.data_ref, self.data_stats, self.plan = m["data"], m["stats"], m["plan"]
        self.epoch = 1
        self.epochs_done = []
        self.checkpoint = None  # the latest epoch's checkpoint: where the next epoch starts

    @retry(times=config_expr("config.pipeline.train_retries"))
    @timeout(minutes=config_expr("config.pipeline.train.timeout_minutes"))
    @resources(cpu=config_expr("config.pipeline.train.cpus"),
               gpu=config_expr("config.pipeline.train.gpus"),
               memory=config_expr("config.pipeline.train.memory_mb"),
               shared_memory=config_expr("config.pipeline.shared_memory_mb"))
    @step
    def train_epoch(self):
        """One epoch of training; loops to itself until pipeline.epochs are done."""
        from steps.common import interactive
        from steps.train import train_epoch

        with self._user_errors_not_retried():
            cfg, tracker = self._open()
            m = train_epoch(cfg, epoch=self.epoch, plan=self.plan, data_ref=self.data_ref,
                            start_ref=self.checkpoint, warm_start=self.warm_start_ref,
                            lineage_prefix=self.lineage_prefix, ctx=_ctx(), tracker=tracker,
                            tracking=self.tracking, progress=interactive())
        self.epoch_result = m
        self.trained_epoch = m["epoch"]
        self.checkpoint = m["checkpoint"]  # the small reference; the weights live in the store
        self.epochs_done = self.epochs_done + [m]
        self.route = "again" if self.epoch < self.plan["epochs"] else "done"
        self.epoch += 1
        self.next({"again": self.train_epoch, "done": self.plan_eval}, condition="route")

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def plan_eval(self):
        """One evaluation task per (epoch, benchmark), or per epoch (pipeline.eval_task_per)."""
        from steps.evaluate import plan_eval

        cfg, _ = self._open()
        self.eval_items = plan_eval(cfg, self.epochs_done, self.warm_start_ref)
        self.next(self.eval_task, foreach="eval_items")

    @catch(var="eval_error", print_exception=True)
    @retry(times=config_expr("config.pipeline.eval_retries"))
    @timeout(minutes=config_expr("config.pipeline.eval.timeout_minutes"))
    @resources(cpu=config_expr("config.pipeline.eval.cpus"),
               gpu=config_expr("config.pipeline.eval.gpus"),
               memory=config_expr("config.pipeline.eval.memory_mb"),
               shared_memory=config_expr("config.pipeline.shared_memory_mb"))
    @step
    def eval_task(self):
        """Evaluate one checkpoint on one benchmark, or on all of them with one engine (a failure
        loses only this task's cells)."""
        from steps.evaluate import eval_item

        self.item = self.input
        self.eval_result = None
        with self._user_errors_not_retried():
            cfg, tracker = self._open()
            self.eval_result = eval_item(cfg, self.item, data_ref=self.data_ref,
                                         tracker=tracker, tracking=self.tracking)
        self.next(self.join_eval)

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def join_eval(self, inputs):
        """Score table, best epoch, learning curves, model registry."""
        from steps.evaluate import error_line, item_failures, join_eval

        results, failures = [], []
        for inp in inputs:
            err = getattr(inp, "eval_error", None)
            if err is None and inp.eval_result is not None:
                results += inp.eval_result[0]
                failures += inp.eval_result[1]
            else:
                failures += item_failures(inp.item, error_line(err) if err else "no result")
        self.merge_artifacts(inputs, exclude=["item", "eval_result", "eval_error"])
        cfg, tracker = self._open()
        self.eval_summary = join_eval(cfg, results, failures, self.epochs_done,
                                      lineage_prefix=self.lineage_prefix, tracker=tracker,
                                      tracking=self.tracking)
        self.next(self.end)

    @resources(cpu=config_expr("config.pipeline.data.cpus"),
               memory=config_expr("config.pipeline.data.memory_mb"))
    @step
    def end(self):
        """Mark the MLflow run FINISHED and say where to look."""
        from steps.finish import end

        self._open()
        print(end(self.tracking, self.eval_summary))


if __name__ == "__main__":
    PrefixRFTFlow()
