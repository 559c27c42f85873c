"""The names of a pipeline run in MLflow, in one place for the steps that write it and the code
that reads it back (`prefix_rft.io.tracking`, `prefix_rft.eval.report`, notebooks/compare_runs.py).

Plain strings and string builders only: this module imports nothing (MLflow included), so any
layer can use it.

One pipeline run is one training lineage and has one MLflow *parent run*, opened by the flow's
`start` step and continued by every later step and by resumed Metaflow runs:

    params     the flattened resolved config (`method`, `rl.optim.lr`, ...)
    tags       `method`, `config_hash`, `warm_start.*`; where checkpoints live
               (`checkpoint.prefix`, `checkpoint.epoch_<e>`, `checkpoint.latest`,
               `epoch_<e>.resumed_from`); the data commit (`data.uri`); after evaluation
               `best_epoch`, `best_checkpoint`, `eval.tasks`, `eval.failed_tasks`; plus the
               Metaflow/git tags of `steps.common.RunContext`; a run rebuilt from a committed
               record instead of logged by the flow: `original_run_id`, `rebuilt_from`
    metrics    the trainer's per-step metrics (`reward/mean`, `loss`, ...) at step = training
               step; `data/*` at step 0; per evaluated (epoch, benchmark) cell
               `eval/<benchmark>/avg_at_<n>`, `.../ci_low`, `.../ci_high`, `.../no_answer_frac`,
               `.../grading_timeouts`, `.../grading_errors`
               at step = epoch (0 = the starting model); `eval/best_macro` at step = best epoch
    artifacts  `config.yaml`, `data/train_sample.json`, `eval/summary.md` (the score table),
               `learning_curves.png`

Each evaluation task (one per epoch x benchmark x shard) opens a *child run* under the parent
(MLflow's `mlflow.parentRunId` tag), named `eval-<benchmark>-epoch<e>` (`-shard<k>of<n>` added
when the cell is split into n shards):

    tags       `epoch`, `benchmark`, `shard` ("k/n"), `checkpoint` (the evaluated URI), `engine`
    params     `protocol.<field>` for every field of the evaluation protocol, and `epoch`,
               `benchmark`, `engine`
    metrics    the cell's summary (`avg_at_n`, `ci_low`, `pass_at_<k>`, ...) and its
               `eval/<benchmark>/avg_at_<n>` key, at step = epoch
    artifacts  `samples_preview.json` (a table of a few completions) and the two result files
               of `benchmark_eval.write_results` (`SAMPLES_FILE`, `SUMMARY_FILE`: the same
               format as a `prefix-rft eval` output directory, so their names live there)

Lineage (MLflow 3): every committed checkpoint is a *LoggedModel* of the experiment, named
`<metaflow run>-<checkpoint leaf>` (e.g. `1234-step-000004`), that points at the checkpoint's
URI without copying weights: its tags and params hold the URI, step, epoch, config hash and
manifest digest, its artifacts only an `MLmodel` (a pyfunc loader of this library) and the
pointer file. The parent run's per-cell evaluation metrics are logged against the evaluated
checkpoint's model, and each evaluation child run takes the model as an input. The training and
held-out sets are dataset inputs of the parent run (`train`: context `training`, `heldout`:
context `evaluation`; digest = the parquet file's sha256). The best epoch's model is registered
under the alias `best` (the version tagged with that epoch, its macro score and the benchmarks
averaged), the last epoch's under `last` (MLflow reserves `latest` for the newest version).
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- parent and child
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag linking a child run to its parent

# ----------------------------------------------------------------------------- parent run: tags
METHOD_TAG = "method"
CONFIG_HASH_TAG = "config_hash"
WARM_START_URI_TAG = "warm_start.uri"
WARM_START_STEP_TAG = "warm_start.step"
CHECKPOINT_PREFIX_TAG = "checkpoint.prefix"
CHECKPOINT_LATEST_TAG = "checkpoint.latest"
DATA_URI_TAG = "data.uri"
BEST_EPOCH_TAG = "best_epoch"
BEST_CHECKPOINT_TAG = "best_checkpoint"
EVAL_TASKS_TAG = "eval.tasks"
EVAL_FAILED_TASKS_TAG = "eval.failed_tasks"


def checkpoint_tag(epoch: int) -> str:
    """The tag holding the URI of epoch `epoch`'s final checkpoint."""
    return f"checkpoint.epoch_{epoch}"


def resumed_from_tag(epoch: int) -> str:
    """The tag holding the checkpoint a retried or resumed epoch continued from."""
    return f"epoch_{epoch}.resumed_from"


# A run written again from a committed record rather than logged by the flow (the real-math
# study's runs from docs/results/: studies/realmath_mlflow.py), in this same layout. MLflow gives
# the copy a new run id; these tags say which run it is and where it came from.
ORIGINAL_RUN_ID_TAG = "original_run_id"  # the MLflow run id the flow gave the run
REBUILT_FROM_TAG = "rebuilt_from"  # the record it was rebuilt from (files, commit)

# ----------------------------------------------------------------------------- parent run: params
METHOD_PARAM = "method"  # the flattened config's top-level key

# ----------------------------------------------------------------------------- parent run: metrics
BEST_MACRO_METRIC = "eval/best_macro"

# The trainer's per-step metrics that readers plot (prefix_rft/train/trainer.py and reward.py emit them).
REWARD_MEAN = "reward/mean"
DEMO_NLL = "demo/nll"
LOSS = "loss"
PREFIX_ADVANTAGE = "prefix/advantage"
TRAINING_CURVES = (REWARD_MEAN, DEMO_NLL, LOSS, PREFIX_ADVANTAGE)


def data_metric(name: str) -> str:
    """A statistic of the `filter_data` step (`num_train`, `kept`, ...), logged at step 0."""
    return f"data/{name}"


def eval_metric(benchmark: str, stat: str) -> str:
    """A parent-run metric of one evaluated benchmark, e.g. `eval/amc/ci_low`."""
    return f"eval/{benchmark}/{stat}"


def metric_key(benchmark: str, n: int) -> str:
    """The headline score of a benchmark evaluated with n samples per problem: avg@n, spelled
    `avg_at_<n>` because MLflow metric names cannot contain '@'."""
    return eval_metric(benchmark, f"avg_at_{n}")


def metric_stat(key: str) -> str:
    """The statistic an eval metric key names: `avg_at_32` of `eval/aime24/avg_at_32`."""
    return key.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------- parent run: artifacts
CONFIG_ARTIFACT = "config.yaml"
DATA_SAMPLE_ARTIFACT = "data/train_sample.json"
EVAL_TABLE_ARTIFACT = "eval/summary.md"
LEARNING_CURVES_ARTIFACT = "learning_curves.png"

# ----------------------------------------------------------------------------- model registry
BEST_ALIAS = "best"


def registered_version_tags(epoch: int, macro_score: float, benchmarks) -> dict[str, str]:
    """The tags of the registered model version of the best epoch: the epoch, its macro score
    and the benchmarks the score averages."""
    return {"epoch": str(epoch), "macro_score": f"{macro_score:.6f}",
            "benchmarks": ",".join(benchmarks)}

LAST_ALIAS = "last"  # the last trained epoch; MLflow reserves "latest"

# ----------------------------------------------------------------------------- LoggedModels, datasets
LOGGED_MODEL_TYPE = "prefix-rft-checkpoint"
MODEL_CHECKPOINT_URI_TAG = "checkpoint.uri"
MODEL_MANIFEST_TAG = "checkpoint.manifest_sha256"  # what a checkpoint's model is looked up by
MODEL_WEIGHTS_TAG = "weights"  # "checkpoint" (at the URI) or "copied" (in the model's artifacts)
MODEL_DELETED_TAG = "checkpoint.deleted"  # "true" once the checkpoint was pruned
TRAIN_DATASET = "train"
HELDOUT_DATASET = "heldout"
TRAIN_CONTEXT = "training"
HELDOUT_CONTEXT = "evaluation"


def logged_model_name(checkpoint_uri: str) -> str:
    """A checkpoint's LoggedModel name: its last two path parts joined by '-' (the store names
    checkpoints `<metaflow run>/<leaf>`, so `.../1234/step-000004` -> `1234-step-000004`)."""
    parts = [p for p in str(checkpoint_uri).rstrip("/").split("/") if p]
    return "-".join(parts[-2:])


def logged_model_params(ref: dict) -> dict[str, str]:
    """The params of a checkpoint's LoggedModel (`ref`: a `CheckpointRef.to_dict()`)."""
    meta = ref.get("meta") or {}
    out = {"step": ref["step"], "epoch": ref.get("epoch"), "config_hash": ref["config_hash"],
           "manifest_sha256": ref["manifest_sha256"]}
    out |= {k: meta[k] for k in ("method", "phase", "global_step", "end_of_epoch") if k in meta}
    return {k: "null" if v is None else str(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- evaluation child runs
# Tags of a child run; `epoch`, `benchmark` and `engine` are also its params.
EPOCH = "epoch"
BENCHMARK = "benchmark"
SHARD = "shard"
CHECKPOINT = "checkpoint"
ENGINE = "engine"
UNSHARDED = "0/1"  # the `shard` value of a cell evaluated in one task
PROTOCOL_PARAM_PREFIX = "protocol."
SAMPLES_PREVIEW_ARTIFACT = "samples_preview.json"


def eval_run_name(benchmark: str, epoch: int, shard: int = 0, shards: int = 1) -> str:
    """`eval-<benchmark>-epoch<e>`, with `-shard<k>of<n>` for a cell split into n > 1 shards."""
    return f"eval-{benchmark}-epoch{epoch}" + (f"-shard{shard}of{shards}" if shards > 1 else "")


def shard_value(shard: int, shards: int) -> str:
    """The `shard` tag: "k/n" (k counts from 0)."""
    return f"{shard}/{shards}"


def shard_count(value: str) -> int:
    """n of a `shard` tag "k/n"."""
    return int(str(value).split("/")[-1])


def protocol_param(field: str) -> str:
    """The child-run param holding one field of the evaluation protocol (`protocol.n`, ...)."""
    return PROTOCOL_PARAM_PREFIX + field


def protocol_params(protocol: dict) -> dict:
    """A protocol (`Protocol.to_dict()`) as child-run params."""
    return {protocol_param(k): v for k, v in protocol.items()}
