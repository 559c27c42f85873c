"""The pipeline's configuration: the training `Config` plus how the flow runs and logs it.

`FlowConfig` extends the library's `Config` with two sections that a training run by itself
(`prefix-rft train`) skips: `pipeline` (epochs, checkpoints, evaluation cells, retries, task
resources, the deployment's schedule) and `tracking` (MLflow). One YAML file serves both: the
library ignores these sections, the flow reads and validates them here. The config hash is the
library's, so it is the same for a file whatever its pipeline and tracking sections say.

`flow_config_parser` is the Metaflow `Config` parser of `flows/prefix_rft_flow.py`: it fills in
the pipeline defaults the decorators read at deploy time; `start` then validates the whole file.

    python -m steps.flow_config keys                       every key, pipeline and tracking included
    python -m steps.flow_config show --config FILE [--set k=v ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from dataclasses import dataclass
from typing import Literal

import yaml

from prefix_rft.cli import add_config_commands, config_command
from prefix_rft.core.config import (
    Config,
    check_world,
    load_config,
    option,
    resolve,
    section,
)
from prefix_rft.core.dicts import deep_merge
from prefix_rft.errors import UserError

MAX_NODES = 64  # pipeline.train.nodes
MULTINODE_FLOW = "flows/prefix_rft_multinode_flow.py"
SINGLE_NODE_FLOW = "flows/prefix_rft_flow.py"
MAX_RETRIES = 4  # Metaflow allows at most 6 attempts: @retry(times) + 2
BAD_PIPELINE = "__bad_pipeline__"  # marker flow_config_parser leaves for a non-mapping `pipeline`
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_PROJECT_NAME = re.compile(r"^[a-z0-9_]{1,128}$")  # what Metaflow's @project accepts


@dataclass
class ResourcesConfig:
    cpus: int = option(2, "CPU cores requested for the task (@resources).", ge=1)
    gpus: int = option(0, "GPUs requested for the task (@resources; ignored by local runs).", ge=0)
    memory_mb: int = option(8000, "Memory requested for the task, in MB (@resources).", ge=1000)
    timeout_minutes: int = option(240, "Kill the task after this long (@timeout).", ge=1)


@dataclass
class TrainResourcesConfig(ResourcesConfig):
    nodes: int = option(
        1, "Nodes (machines) of each training task, 1 to 64. 1 = flows/prefix_rft_flow.py: one "
        "train_epoch task per epoch on one node. More = flows/prefix_rft_multinode_flow.py: one "
        "Metaflow @parallel gang of this many tasks trains every epoch (torchrun across the "
        "nodes, `pipeline.train_processes` each); it needs a Metaflow backend that runs @parallel "
        "(Kubernetes with the JobSet controller, AWS Batch multi-node, or local processes) and, on "
        "several machines, an s3:// checkpoint_root and data every node can read. The other "
        "keys of this section are per node.", ge=1, le=MAX_NODES)


@dataclass
class CpuResourcesConfig:
    cpus: int = option(2, "CPU cores requested for each task (@resources), 1 to 64.", ge=1, le=64)
    memory_mb: int = option(8000, "Memory requested for each task, in MB (@resources), 1000 to "
                            "256000 (Kubernetes raises a request below 4096 MB to 4096).",
                            ge=1000, le=256_000)


@dataclass
class PipelineConfig:
    epochs: int = option(
        2,
        "Training epochs of the pipeline: one `train_epoch` task each, a checkpoint at its end. "
        "An epoch is `steps_per_epoch` training steps (SFT and RL steps both count).", ge=1)
    steps_per_epoch: int | None = option(
        None, "Training steps per epoch (null = the method's total steps split evenly over epochs).",
        ge=1
    )
    checkpoint_root: str = option(
        "runs/pipeline/checkpoints",
        "Where checkpoints go: a local directory or s3://bucket/prefix. Each training lineage "
        "writes under ROOT/<flow>/<lineage run id>/<run id>/step-NNNNNN.",
    )
    keep_epochs: Literal["all", "best_and_last"] = option(
        "all", "Epoch-end checkpoints kept after evaluation (in-epoch ones follow `keep_last`)."
    )
    final_checkpoint: Literal["full", "model"] = option(
        "full",
        "What the checkpoint that ends training holds. full: the weights and the optimizer, scheduler "
        "and RNG states, so that a larger budget can continue it. model: the weights, tokenizer "
        "and step counters only (as HF Trainer's save_only_model): two thirds less to write, "
        "hash and store for a float32 model trained with AdamW; training goes on from it only "
        "as a new lineage (--warm-start). Every other checkpoint keeps its full state.")
    benchmarks: list = option(
        ["heldout"],
        "Evaluated after training, each checkpoint x benchmark in its own task (see "
        "eval_task_per): 'heldout' "
        "(data.test, with the `eval` section's settings), 'synthetic:LEVEL' (the built-in "
        "task's held-out split of one level: tiny, add, mul, word; filed as synthetic_LEVEL; "
        "also with the `eval` section's settings), a benchmark name (aime24, aime25, amc, "
        "math500, minerva, olympiadbench, arc_c, gpqa_diamond) or a problems file.",
    )
    eval_base: bool = option(True, "Also evaluate the starting model (reported as epoch 0).")
    eval_protocol: Literal["default", "paper"] = option(
        "default",
        "Protocol of the named benchmarks: default = avg@32 everywhere (temperature 0.6, top_p "
        "0.95, 8192 new tokens); paper = avg@32 on AIME24/25/AMC, avg@1 on the rest. 'heldout' "
        "and 'synthetic:LEVEL' use the `eval` section instead.",
    )
    eval_n: int | None = option(None, "Override the protocol's samples per problem (all benchmarks).",
                                ge=1)
    eval_max_new_tokens: int | None = option(None, "Override the protocol's generation limit.",
                                             ge=1)
    eval_max_problems: int | None = option(
        None, "Only the first K problems of each named benchmark or file (smoke); 'heldout' and "
        "'synthetic:LEVEL' take eval.num_problems.", ge=1)
    eval_source: Literal["default", "luffy"] = option(
        "default", "Benchmark copies: ours (default) or LUFFY's valid.all.parquet problem set."
    )
    eval_engine: str = option(
        "auto",
        "Generation engine of eval tasks, by its name in prefix_rft.rollout.engines.factory: hf, "
        "vllm, or auto = vLLM when installed with a GPU, else HF.",
    )
    eval_vllm_eager: bool = option(
        False,
        "vLLM eval tasks without torch.compile and CUDA graphs (vLLM's enforce_eager): every task "
        "starts its own engine, and eager skips the compile and the graph capture (tens of seconds "
        "a task, longer on a machine whose compile cache is empty) but decodes slower. For short "
        "evaluations (smoke runs, small held-out sets); no effect on the HF engine.")
    eval_shards: int = option(
        1,
        "Data parallelism of evaluation: each (epoch, benchmark) is split into this many tasks "
        "(every K-th problem each, one GPU each); join_eval merges them per problem.", ge=1)
    eval_epochs: Literal["all", "last"] = option("all", "Which epoch-end checkpoints are evaluated.")
    eval_task_per: Literal["benchmark", "checkpoint"] = option(
        "benchmark",
        "What one eval_task evaluates: benchmark = one checkpoint on one benchmark (each cell its "
        "own task and GPU: parallel on a cluster, a failure loses one cell); checkpoint = one "
        "checkpoint on every benchmark with one engine (one vLLM start instead of one per "
        "benchmark, 30-60 s each: the faster choice on one GPU; a benchmark's user error, e.g. "
        "prompts too long, fails only that benchmark). eval_shards splits either kind of task.")
    train_retries: int = option(
        1, "@retry of train_epoch: a retried task resumes from its latest in-epoch checkpoint.",
        ge=0, le=MAX_RETRIES
    )
    eval_retries: int = option(
        0, "@retry of eval_task before @catch records the failure (e.g. 1 in production, for "
        "preempted GPU nodes; every retry waits 2 minutes).", ge=0, le=MAX_RETRIES
    )
    shared_memory_mb: int | None = option(
        None,
        "Size of /dev/shm, in MB, for the GPU steps (train_epoch, eval_task) on Kubernetes/AWS "
        "Batch (@resources shared_memory). null = the platform default (the container's 64 MB "
        "unless METAFLOW_KUBERNETES_SHARED_MEMORY is set); NCCL across several GPUs and vLLM "
        "want more, e.g. 16000. Ignored by local runs.", ge=1)
    schedule: str | None = option(
        None,
        "Cron schedule of the production deployment (`argo-workflows create` turns it into a "
        "CronWorkflow): 5 fields in the Argo controller's time zone (UTC by default), e.g. "
        "'0 3 * * 1' = Mondays 03:00, or @daily/@weekly; "
        "null = no schedule (trigger runs by hand). Read from the --config file at deploy time "
        "by @schedule, so `--set` cannot change it.",
    )
    train_processes: int | None = option(
        None,
        "Data-parallel processes of each training task, launched with torchrun on the task's "
        "node (one per GPU, FSDP2-sharded policy, NCCL; gloo on CPU): null = one per GPU of "
        "`pipeline.train.gpus` (one process without GPUs). Batch sizes must split evenly over "
        "all processes of all nodes (rollout.num_prompts over processes x nodes x "
        "rl.num_minibatches, sft.batch_size, relift.buffer_size over processes x nodes). "
        "Several nodes: `pipeline.train.nodes`.", ge=1)
    project: str | None = option(
        None,
        "Metaflow @project of the flow (lowercase letters, digits, underscores): deployments "
        "(`argo-workflows create`) and MLflow experiments are namespaced by project and branch, "
        "so two configs or branches never overwrite each other; the MLflow experiment becomes "
        "<tracking.experiment>/<project>/<branch>. null = no @project (one deployment per flow "
        "name, `tracking.experiment` as is; --branch/--production then do nothing). Argo names "
        "the deployment <project>.<branch>.prefixrftflow without underscores, shortened with a "
        "hash beyond 45 characters, so keep it short. Read from the --config file when the flow "
        "is loaded, so `--set` cannot change it.",
    )
    branch: str | None = option(
        None,
        "Branch of `project` (lowercase letters, digits, underscores): Metaflow names it "
        "test.<branch> (prod.<branch> with --production). null = Metaflow's default: --branch "
        "on the command line, else user.<name> (prod with --production). Give it here or with "
        "--branch, not both.",
    )
    data: CpuResourcesConfig = section(
        CpuResourcesConfig, "Resources of the CPU-only steps: start, filter_data, plan_eval, "
        "join_eval and end (no GPU).")
    train: TrainResourcesConfig = section(TrainResourcesConfig, "Resources of each training "
                                          "task (per node).")
    eval: ResourcesConfig = section(ResourcesConfig, "Resources of each eval_task.")

    def processes(self) -> int:
        """Training processes per node (`train_processes`, else one per GPU)."""
        return self.train_processes or max(1, self.train.gpus)

    def world_size(self) -> int:
        """Training processes of all nodes together: the data-parallel world."""
        return self.processes() * self.train.nodes


@dataclass
class TrackingConfig:
    uri: str | None = option(
        None,
        "MLflow tracking URI. null = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working "
        "directory (no server needed; open it with `mlflow ui --backend-store-uri sqlite:///mlflow.db`).",
    )
    experiment: str = option("prefix-rft", "MLflow experiment of the pipeline's runs.")
    run_name: str | None = option(None, "MLflow run name (null = <method>-<metaflow run id>).")
    registered_model: str | None = option(
        "prefix-rft-{method}",
        "Model-registry name for the best checkpoint (alias 'best'); {method} is filled in, and "
        "under a Metaflow @project .<project>.<branch> is appended; "
        "null = do not register.",
    )
    system_metrics: bool = option(True, "Log CPU/GPU/memory as system/* metrics during training.")
    log_samples: int = option(16, "Sample completions per evaluation logged as an MLflow table.",
                              ge=0)
    timeout_s: int = option(10, "Seconds a tracking-server request may take before it fails "
                            "(artifact uploads and downloads get at least 600 s).", ge=1)


@dataclass
class FlowConfig(Config):
    """What the pipeline runs: the training `Config` (its hash included, which ignores the two
    sections below) plus how the flow executes (`pipeline`) and logs (`tracking`) it."""

    pipeline: PipelineConfig = section(PipelineConfig, "The Metaflow pipeline (flows/): epochs, "
                                       "checkpoints, evaluation, resources.")
    tracking: TrackingConfig = section(TrackingConfig, "MLflow tracking of pipeline runs.")

    def validate(self, where: str = "") -> None:
        """The training checks, then the pipeline's and tracking's; a UserError naming the key."""
        super().validate(where)
        validate_pipeline(self.pipeline, where)
        check_world(self, self.pipeline.world_size())


def resolve_flow(data: dict | None = None, overrides: list[str] | dict | None = None, *,
                 source: str = "") -> FlowConfig:
    """Defaults + preset + `data` + overrides -> a validated `FlowConfig` (see `resolve`)."""
    return resolve(data, overrides, source=source, cls=FlowConfig)


def load_flow_config(path, overrides: list[str] | None = None) -> FlowConfig:
    """The YAML file at `path` with `overrides` as a validated `FlowConfig`."""
    return load_config(path, overrides, cls=FlowConfig)


def validate_pipeline(pl: PipelineConfig, where: str = "") -> None:
    """Checks of the `pipeline` section beyond the numeric ranges its fields declare (which
    `resolve` has checked already); a UserError naming the key."""
    from prefix_rft.eval.benchmarks import synthetic_level
    from prefix_rft.rollout.engines.factory import engine_names

    def bad(key, msg):
        raise UserError(f"{where}key 'pipeline.{key}': {msg}")

    if pl.eval_engine not in engine_names():
        bad("eval_engine", f"{pl.eval_engine!r} is not a registered engine; expected one of "
                           f"{', '.join(engine_names())}")
    if not pl.benchmarks:
        bad("benchmarks", "give at least one benchmark")
    for spec in pl.benchmarks:
        if isinstance(spec, str) and spec.startswith("synthetic:"):
            try:
                synthetic_level(spec)
            except UserError as e:
                bad("benchmarks", str(e))
    if pl.schedule is not None and not valid_cron(pl.schedule):
        bad("schedule", f"{pl.schedule!r} is not a 5-field cron expression (minute "
            "hour day-of-month month day-of-week, e.g. '0 3 * * 1') or @hourly/@daily/"
            "@weekly/@monthly/@yearly")
    problem = _project_problem(pl.project, pl.branch)
    if problem:
        bad(*problem)


def valid_project_name(name) -> bool:
    """A name Metaflow's @project takes for a project or a branch."""
    return isinstance(name, str) and bool(_PROJECT_NAME.match(name))


def _project_problem(project, branch) -> tuple[str, str] | None:
    """(key, message) of what is wrong with `pipeline.project`/`pipeline.branch`, else None."""
    for key, value in (("project", project), ("branch", branch)):
        if value is not None and not valid_project_name(value):
            return key, (f"{value!r}: use 1 to 128 lowercase letters, digits or underscores "
                         "(Metaflow's @project names)")
    if branch is not None and project is None:
        return "branch", "needs pipeline.project (a branch belongs to a project)"
    return None


def project_attributes(pipeline: dict) -> dict | None:
    """The @project arguments the `pipeline` section of a parsed config asks for (None: no
    @project); a UserError naming the key for a name Metaflow would refuse."""
    project, branch = pipeline.get("project"), pipeline.get("branch")
    problem = _project_problem(project, branch)
    if problem:
        raise UserError(f"key 'pipeline.{problem[0]}': {problem[1]}")
    if project is None:
        return None
    return {"name": project} | ({"branch": branch} if branch is not None else {})


def nodes_problem(pipeline: dict, multi_node_flow: bool) -> str | None:
    """What is wrong with `pipeline.train.nodes` of a parsed config for the single-node flow
    (`multi_node_flow` False) or the multi-node one, else None: out of 1..MAX_NODES, or a node
    count the flow does not run (each flow's graph is fixed when it is loaded)."""
    nodes = (pipeline.get("train") or {}).get("nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        return f"{nodes!r} is out of range: must be an integer from 1 to {MAX_NODES}"
    if nodes > 1 and not multi_node_flow:
        return (f"{nodes} nodes: run the multi-node flow, python {MULTINODE_FLOW} --config "
                "config FILE run (this flow trains on one node)")
    if nodes == 1 and multi_node_flow:
        return (f"1 node: run python {SINGLE_NODE_FLOW} (this flow's @parallel gang needs at "
                "least 2 nodes; Kubernetes refuses one)")
    return None


def valid_cron(expr: str) -> bool:
    """A 5-field cron expression or a macro, as Argo's CronWorkflow takes them (a shape check:
    Argo itself rejects out-of-range values when the schedule is deployed)."""
    fields = expr.split()
    if len(fields) == 1:
        return fields[0] in _CRON_MACROS
    return len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields)


def flow_config_parser(text: str) -> dict:
    """Metaflow `Config` parser of the pipeline flow: the YAML mapping with the `pipeline`
    defaults filled in, so decorators (@resources, @timeout, @retry) can read them from any
    config. It never rejects a config: the flow's `start` step validates it fully and fails
    with a message naming the key (a parser error would surface as a Metaflow traceback)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        data = {"__invalid_yaml__": str(e)}
    if not isinstance(data, dict):
        data = {"__not_a_mapping__": repr(data)[:200]}
    defaults = {"pipeline": dataclasses.asdict(PipelineConfig())}
    if data.get("pipeline", {}) is None:  # `pipeline:` with every key commented out
        data["pipeline"] = {}
    if isinstance(data.get("pipeline"), dict):
        for sub in ("data", "train", "eval"):
            if sub in data["pipeline"] and data["pipeline"][sub] is None:
                data["pipeline"][sub] = {}
    user_pipeline = data.get("pipeline")
    if user_pipeline is not None and not isinstance(user_pipeline, dict):
        return {**data, "pipeline": defaults["pipeline"], BAD_PIPELINE: repr(user_pipeline)[:200]}
    return deep_merge(defaults, data)


def check_flow_config(data: dict, source: str) -> dict:
    """Turn the markers `flow_config_parser` leaves for a broken file into one-line errors."""
    if "__invalid_yaml__" in data:
        raise UserError(f"{source}: malformed YAML: {data['__invalid_yaml__']}")
    if "__not_a_mapping__" in data:
        raise UserError(f"{source}: expected a mapping of config keys at the top level, got "
                        f"{data['__not_a_mapping__']}")
    if BAD_PIPELINE in data:
        raise UserError(f"{source}: key 'pipeline': expected a mapping, got {data[BAD_PIPELINE]}")
    return data


def main(argv: list[str] | None = None) -> int:
    """`keys` / `show` of the whole flow config, like `prefix-rft config` does for training."""
    p = argparse.ArgumentParser(prog="python -m steps.flow_config",
                                description="The pipeline's config: training keys plus the "
                                "pipeline and tracking sections.")
    sub = p.add_subparsers(dest="command", required=True)
    add_config_commands(sub, example="pipeline.epochs=3",
                        keys_help="every flow config key with its default and what it does")
    args = p.parse_args(argv)
    try:
        return config_command(args.command, args, FlowConfig)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
