"""A whole RL step of every preset on a fixed workload, the time split by phase, next to TRL's
GRPOTrainer on the identical workload (`--trl`: plain HF generate, same process; `--trl-vllm`:
vLLM colocated) and to standalone vLLM generating the same requests (`--vllm-ceiling`).

    # CPU smoke (tiny random model with SmolLM2's tokenizer, seconds per step)
    python perf/rl_step.py --model tiny --presets rft,prefix_rft --prompts 2 \
        --max-new-tokens 16 --warmup 1 --steps 2 --trl --out runs/bench/rl_step_tiny.json
    # GPU: SmolLM2-135M-Instruct (HF dir, or the GGUF file, converted on first use), bf16
    python perf/rl_step.py --model /tmp/m/smol.gguf --presets rft --trl --steps 3 \
        --out $OUT/rl_step.json
    # GPU, 1.5B on MATH-500, one row per process, then one table: perf/gpu/rl_step_15b.sh
    python perf/rl_step.py --merge a.json b.json --out merged.json

Rows and processes. A preset row is our trainer (`rollout.engine` from `--engine hf|vllm|auto`,
default: the config's own; the row reports the engine class it got, `engine`). vLLM keeps its GPU
memory until the process exits, so `--vllm-ceiling` and `--trl-vllm` each run alone in their
process (the script refuses mixtures); `--merge` joins the JSON files of several processes into
one table, after checking that they share the workload fingerprint (model as given, workload,
problems, prompts, group, max_new_tokens, temperature), and names preset rows `preset [engine]`.
  vllm_generate   `VLLMEngine(model dir).generate(requests, 1, sampling)` on exactly the requests
      of each `--presets` preset's first timed step (global step `--warmup`): the trainer's data
      order and `planner.plan_rollouts` for that step, replayed without a model (same prompt
      and prefix ids, per-request max_new_tokens and seeds, T, top_p, stop ids). One untimed
      warm-up call, then `--steps` timed calls (prefix cache reset before each); time/generation
      and generation_tokens_per_s = tokens generated / time/generation. `first_timed_requests`
      (a hash of the requests) equals the preset rows' when both timed the same work. Several
      presets: rows `vllm_generate:<preset>`. `--vllm-mem`: gpu_memory_utilization (0.85).
  trl_grpo_vllm   TRL's GRPOTrainer with use_vllm, vllm_mode colocate, `--trl-vllm-mem` (0.3)
      and `--trl-vllm-sleep` (1); otherwise as the `--trl` row. TRL itself sets RANK, LOCAL_RANK,
      WORLD_SIZE (0, 0, 1 in one process), MASTER_ADDR (localhost) and a free MASTER_PORT before
      it builds its LLM, and vLLM turns its engine multiprocessing off for that launcher: a
      plain `python3` process needs nothing more. Its generation timer is `vLLM.generate`, its
      weight push `sync_weights` (time/weight_sync); with vLLM it computes the old log-probs
      (for its importance-sampling correction, on by default) and logs
      sampling/sampling_logp_difference/{mean,max} (|trainer - vLLM log-prob| over completion
      tokens) and sampling/importance_sampling_ratio/{min,mean,max}, copied into the row
      (median over timed steps; max of the max, min of the min).
Engine metrics of a preset row, when the trainer reports them (vLLM rollouts; `--set` passes
their settings, e.g. rollout.logprob_gap=on, rollout.vllm.gpu_memory_utilization=0.3,
rollout.vllm.sleep_level=1): time/weight_sync, rollout/logprob_gap_mean and
rollout/logprob_gap_frac_gt_0.5 (median over timed steps), rollout/logprob_gap_max (max).

Workload (identical for every row): `--prompts` prompts x `--group` samples of problems from the
`--workload` pool: arith (default), "What is a + b?" (a, b in 10..99, 512 problems from a fixed
seed, one worked demo each); math500, the first `--problems` (default all 500) problems of the
vendored MATH-500 file as the benchmark loader reads them, the file's solution as the one
demonstration, graded by Math-Verify only (`--reward regex` is refused). Each is sent as prefix-rft sends every
problem (one user turn: the problem + the paper's "Please reason step by step ... \\boxed{}"
suffix, the model's chat template with its generation prompt; the script checks that TRL's
tokenisation gives the same ids), at most `--max-new-tokens` new tokens, temperature 1.0,
top_p 1.0, top_k off, stop at the template's end-of-turn. Reward: 1 if the completion's boxed
answer is correct (`--reward math_verify`: prefix-rft's Math-Verify grader on both sides;
`--reward regex`: TRL anchor script's regex on the last \\boxed{} on both sides). Loss: Dr.
GRPO (advantage r - mean, no std, sum / (N x L_max)), one optimizer step per rollout batch
(rl.num_minibatches=1, ppo_epochs=1; TRL: per_device_train_batch_size = prompts x group,
gradient_accumulation_steps 1, num_iterations 1; with `--micro-batch-size` m below prompts x
group: per_device_train_batch_size m and prompts x group / m accumulation steps, still one
optimizer step per generation batch), beta 0, lr 1e-6, AdamW, grad clip 1.0. Every problem has
one worked demonstration (for the presets that use them; `rft` and TRL never see it). `rl.demo_nll_prompts` is 0 (a monitoring pass outside the step's phases).

Per step and preset (median over the timed steps, after `--warmup` untimed steps):
  time/generation, time/reward, time/old_logprobs, time/update: the trainer's own metrics;
  time/step: its total; wall_s: the same step timed here with CUDA synchronised at both ends.
  completion_tokens_per_s = response tokens of generated members (a prefixed member's demo
      prefix included, full-demo members excluded; what TRL calls completions) / wall_s
  generation_tokens_per_s = tokens the engine generated / time/generation
  training_tokens_per_s   = prompt + response tokens of the update / time/update
  mfu_update = 6 N x training tokens / time/update / peak;  mfu_step = (2 N (prompt + generated
      tokens) + 2 N train tokens if an old-log-prob pass ran + 6 N train tokens) / wall_s / peak
      (N = all parameters, embeddings included, as in the anchor script; attention FLOPs left out)
  peak_mem_gb: torch.cuda.max_memory_allocated over the timed steps (CPU: peak RSS of the process)
TRL: the same numbers from a step callback (CUDA synchronised) and TRL's own profiling timers
(transformers.generate, _calculate_rewards, _get_per_token_logps_and_entropies inside
_prepare_inputs = old log-probs; update = step - _prepare_inputs). TRL keeps its 1.16 defaults
otherwise (gradient_checkpointing=True, as in the anchor run; `--trl-gradient-checkpointing 0`).
The `sft` preset has no RL step: its SFT step (64 demos, token-mean NLL) is reported instead;
`sft_then_rft` is timed in its RL phase. ReLIFT's SFT step fires only when its 128-prompt buffer
fills, which a short run never reaches.

JSON (`--out`) is rewritten after every step of a preset (its summary then marked `partial`)
and after every other row, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

H100_BF16_DENSE_TFLOPS = 989.0
WORKLOADS = ("arith", "math500")
PHASES = ("time/generation", "time/reward", "time/old_logprobs", "time/update", "time/step")


# ---------------------------------------------------------------------------- workload
def problems(n: int = 512, seed: int = 0):
    """The fixed problem pool: "What is a + b?" with a, b in 10..99 and one worked demo each."""
    from prefix_rft.data.problem import Problem

    rng = random.Random(seed)
    out = []
    for k in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        s = a + b
        demo = f"We add {a} and {b}.\n{a} + {b} = {s}.\nThe answer is \\boxed{{{s}}}."
        out.append(Problem(f"bench-{k}", f"What is {a} + {b}?", str(s), (demo,), "bench"))
    return out


def math500_problems(n: int):
    """The first `n` problems of the vendored MATH-500 file, in file order: the statement and gold
    answer as the project's benchmark loader reads them (its answer repairs applied) and the
    file's worked solution as the one demonstration (prefix-rft's presets cut their prefixes from
    it)."""
    from prefix_rft.data.problem import Problem
    from prefix_rft.data.readers import iter_file
    from prefix_rft.eval.benchmarks import default_path, load_benchmark

    bench = load_benchmark("math500")[:n]
    out = []
    for b, row in zip(bench, iter_file(default_path("math500"))):
        solution = row.fields.get("solution")
        if row.fields.get("unique_id") != b.id or not isinstance(solution, str) or not solution.strip():
            raise RuntimeError(f"math500 row {row.number}: no solution for {b.id!r}")
        out.append(Problem(b.id, b.problem, b.answers[0], (solution,), "math500"))
    return out


def load_pool(args):
    """The problem pool of `--workload`: arith (512 fixed sums) or math500 (the first --problems)."""
    return math500_problems(args.problems) if args.workload == "math500" else problems(args.problems)


def fingerprint(args) -> dict:
    """What makes two results' rows comparable (`--merge` refuses files that differ in it)."""
    return {"model": model_key(args.model), "workload": args.workload, "problems": args.problems,
            "prompts": args.prompts, "group": args.group, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature}


_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


class RegexGrader:
    """The TRL anchor script's reward: 1 if the last \\boxed{...} (no nested braces) == gold."""

    def grade(self, texts, golds):
        from prefix_rft.rollout.reward import GradeResult

        out = []
        for text, gold in zip(texts, golds):
            found = _BOXED.findall(text)
            if not found:
                out.append(GradeResult(0.0, "no_answer", None))
            else:
                ok = found[-1].strip() == str(gold)
                out.append(GradeResult(1.0 if ok else 0.0, "correct" if ok else "wrong", found[-1]))
        return out

    def close(self) -> None:
        pass


def make_grader(kind: str, workers: int):
    if kind == "regex":
        return RegexGrader()
    from prefix_rft.rollout.reward import RewardGrader

    return RewardGrader(num_workers=workers, timeout_s=5.0)


# ---------------------------------------------------------------------------- model and config
def resolve_model(model: str) -> str:
    """`tiny` stays; a .gguf file is converted once to `<its dir>/<stem>-hf`; else as given."""
    if model == "tiny" or not model.endswith(".gguf"):
        return model
    from prefix_rft import builtin_models

    gguf = Path(model).expanduser().absolute()  # not resolve(): a symlink keeps its own dir
    out = gguf.parent / f"{gguf.stem}-hf"
    if not (out / "config.json").is_file():
        t = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=gguf.parent))
        builtin_models._convert_gguf_to_hf(gguf, tmp)
        os.replace(tmp, out)  # a killed conversion never leaves a half-written `out`
        print(f"converted {gguf} -> {out} in {time.perf_counter() - t:.1f} s", flush=True)
    return str(out)


def tiny_init(args) -> dict:
    return {"hidden_size": args.tiny_hidden, "num_layers": args.tiny_layers,
            "num_heads": args.tiny_heads, "seed": args.seed}


def build_config(preset: str, args, model_path: str):
    from prefix_rft.core.config import resolve
    from prefix_rft.core.presets import preset_values

    pv = preset_values(preset)
    roll = {"num_prompts": args.prompts, "group_size": args.group,
            "max_response_len": args.max_new_tokens, "temperature": args.temperature,
            "top_p": 1.0, "max_batch_size": max(256, args.prompts * args.group)}
    if getattr(args, "engine", None):
        roll["engine"] = args.engine  # before --set, so an explicit override still wins
    n_full = pv.get("rollout", {}).get("n_full_demo", 0)
    n_pre = pv.get("rollout", {}).get("n_prefixed", 1)
    if n_pre + n_full > args.group:  # uft / dr_po prefix all 8 members: keep that on smaller groups
        roll["n_prefixed"] = args.group - n_full
    data = {
        "method": preset,
        "seed": args.seed,
        "model": {"name_or_path": args.tokenizer if model_path == "tiny" else model_path,
                  "dtype": args.dtype, "device": args.device, "attn_implementation": args.attn},
        "data": {"train": "synthetic:add"},  # required key; the problems are passed in
        "rollout": roll,
        "rl": {"num_minibatches": 1, "ppo_epochs": 1, "micro_batch_size": args.micro_batch_size,
               "demo_nll_prompts": 0},
        "sft": {"micro_batch_size": args.micro_batch_size},
        "reward": {"num_workers": args.reward_workers},
        "eval": {"num_problems": 0},
    }
    if model_path == "tiny":
        data["model"]["random_init"] = tiny_init(args)
    return resolve(data, list(args.set or []), source="rl_step.py")


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- measurement
def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mem_gb() -> dict:
    if torch.cuda.is_available():
        return {"peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9,
                "peak_reserved_gb": torch.cuda.max_memory_reserved() / 1e9}
    return {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def _median(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def token_counts(trajs, micro: int) -> dict:
    """Token counts of one update's trajectories (all members of the step)."""
    gen_kinds = [t for t in trajs if t.kind != "demo"]
    prompt = sum(len(t.prompt_ids) for t in trajs)
    response = sum(len(t.response_ids) for t in trajs)
    padded = 0  # what the padded micro-batches of logprobs.collate compute, in trajectory order
    for s in range(0, len(trajs), micro):
        chunk = trajs[s : s + micro]
        padded += len(chunk) * (max(len(t.prompt_ids) for t in chunk)
                                + max(max(1, len(t.response_ids)) for t in chunk) - 1)
    return {
        "trajectories": len(trajs),
        "prompt_tokens": prompt,
        "response_tokens": response,
        "completion_tokens": sum(len(t.response_ids) for t in gen_kinds),
        "generated_tokens": sum(len(t.response_ids) - t.demo_len for t in gen_kinds),
        "demo_tokens": sum(t.demo_len for t in trajs),
        "train_tokens": prompt + response,
        "padded_tokens": padded,
        "mean_completion_len": (sum(len(t.response_ids) for t in gen_kinds) / len(gen_kinds))
        if gen_kinds else 0.0,
    }


def derived(row: dict, n_params: int, peak_tflops: float | None) -> dict:
    out = {}
    wall, gen, upd = row["wall_s"], row.get("time/generation"), row.get("time/update")
    out["completion_tokens_per_s"] = row["completion_tokens"] / wall if wall else None
    out["generation_tokens_per_s"] = row["generated_tokens"] / gen if gen else None
    out["training_tokens_per_s"] = row["train_tokens"] / upd if upd else None
    flops_upd = 6 * n_params * row["train_tokens"]
    flops_step = flops_upd + 2 * n_params * (row["prompt_tokens"] + row["generated_tokens"])
    if row.get("time/old_logprobs"):
        flops_step += 2 * n_params * row["train_tokens"]
    if peak_tflops:
        out["mfu_update"] = flops_upd / upd / (peak_tflops * 1e12) if upd else None
        out["mfu_step"] = flops_step / wall / (peak_tflops * 1e12) if wall else None
    return out


# metrics of the rollout engine copied into a row when the trainer reports them (vLLM rollouts)
ENGINE_METRICS = ("time/weight_sync", "rollout/logprob_gap_mean", "rollout/logprob_gap_max",
                  "rollout/logprob_gap_frac_gt_0.5")


def requests_digest(requests) -> str:
    """A short hash of generation requests (prompt ids, prefix ids, max_new_tokens, seed, in
    order): the vLLM ceiling row and the preset rows carry it to show they timed the same work."""
    h = hashlib.sha256()
    for r in requests:
        h.update(json.dumps([list(r.prompt_ids), list(r.prefix_ids), r.max_new_tokens, r.seed]).encode())
    return h.hexdigest()[:16]


def _preset_trainer(preset: str, args, model_path: str, tok, pool):
    """The trainer of `preset` on the workload (in its RL phase when it has one)."""
    from prefix_rft.train.trainer import Trainer

    cfg = build_config(preset, args, model_path)
    grader = make_grader(args.reward, args.reward_workers)
    trainer = Trainer(cfg, tokenizer=tok, train=pool, test=[], progress=False, grader=grader)
    rl = cfg.rl.steps > 0
    if rl and trainer.state.phase == "sft":  # sft_then_rft: time the RL phase
        trainer.state.phase = "rl"
        trainer._make_phase_optimizer()
    return trainer, rl


def _step_row(k: int, args, wall: float, m: dict, rl: bool, trajs, micro: int, n_params: int) -> dict:
    row = {"step": k, "timed": k >= args.warmup, "wall_s": wall}
    row.update({key: m[key] for key in PHASES if key in m})
    if not rl:
        row.update({"time/update": m["time/step"] - m.get("time/old_logprobs", 0.0)})
    for key in ("reward/mean", "completions/mean_length", "completions/clipped_ratio",
                "tokens/trained", "loss", "grad_norm") + ENGINE_METRICS:
        if key in m:
            row[key] = m[key]
    row.update(token_counts(trajs, micro) if trajs else {})
    row["time/unaccounted"] = wall - sum(row.get(p, 0.0) for p in PHASES[:4])
    row.update(derived(row, n_params, args.peak_tflops))
    return row


def summarize(rows: list[dict]) -> dict:
    """Medians over the timed steps (the largest `rollout/logprob_gap_max`)."""
    timed = [r for r in rows if r["timed"]]
    keys = [k for r in rows for k in r if k not in ("step", "timed")]
    summary = {k: _median(timed, k) for k in dict.fromkeys(keys)}
    gaps = [r["rollout/logprob_gap_max"] for r in timed if r.get("rollout/logprob_gap_max") is not None]
    if gaps:
        summary["rollout/logprob_gap_max"] = max(gaps)
    summary["timed_steps"] = len(timed)
    return summary


class PhaseClock:
    """Seconds spent, per step, inside the rollout engine's wake-up, vLLM's own `generate` and the
    release after it (for engines that have them), and in Python's garbage collector: the parts of
    `time/generation` that are not decoding. `take()` returns and resets them."""

    WRAPPED = (("_wake", "time/engine_wake"), ("release", "time/engine_release"))

    def __init__(self, engine):
        self.acc: dict[str, float] = {}
        self._gc_t0 = None
        for attr, key in self.WRAPPED:
            if callable(getattr(engine, attr, None)):
                setattr(engine, attr, self._timed(getattr(engine, attr), key))
        llm = getattr(engine, "llm", None)
        if llm is not None and callable(getattr(llm, "generate", None)):
            llm.generate = self._timed(llm.generate, "time/engine_generate")
        gc.callbacks.append(self._gc)

    def _timed(self, fn, key):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.acc[key] = self.acc.get(key, 0.0) + time.perf_counter() - t0
        return wrapper

    def _gc(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            self.acc["time/gc"] = self.acc.get("time/gc", 0.0) + time.perf_counter() - self._gc_t0
            self.acc["gc/full_collections"] = self.acc.get("gc/full_collections", 0) + (
                info.get("generation") == 2)
            self._gc_t0 = None

    def take(self) -> dict:
        out, self.acc = {"time/gc": 0.0, **self.acc}, {}
        return out

    def close(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)


def run_preset(preset: str, args, model_path: str, tok, pool, device, on_step=None) -> dict:
    """Warm-up and timed steps of one preset; `on_step(partial result)` after every step (the
    caller writes it, so a run killed mid-preset keeps its finished steps)."""
    from prefix_rft.train import planner

    trainer, rl = _preset_trainer(preset, args, model_path, tok, pool)
    captured: list = []
    plans: list = []
    orig_update, orig_plan = trainer.update, planner.plan_rollouts
    profiling: dict = {}

    def update(*a, **kw):
        captured.append(a[0] if a else kw["trajs"])
        if profiling.get("on"):  # the update phase alone, in its own table
            with profiler() as prof:
                out = orig_update(*a, **kw)
            profiling["update"] = prof
            return out
        return orig_update(*a, **kw)

    def plan_rollouts(*a, **kw):  # the trainer calls planner.plan_rollouts by module attribute
        plans.append(orig_plan(*a, **kw))
        return plans[-1]

    trainer.update, planner.plan_rollouts = update, plan_rollouts
    clock = PhaseClock(trainer.engine)
    n_params = param_count(trainer.model)
    micro = trainer.cfg.rl.micro_batch_size if rl else trainer.cfg.sft.micro_batch_size
    engine = type(trainer.engine).__name__
    info = {"kind": "rl_step" if rl else "sft_step", "engine": engine, "n_params": n_params,
            "micro_batch_size": micro}
    rows = []
    try:
        for k in range(args.warmup + args.steps):
            if k == args.warmup:
                reset_peak()
            captured.clear()
            plans.clear()
            clock.take()
            sync()
            t0 = time.perf_counter()
            m = trainer.rl_step() if rl else trainer.sft_step()
            sync()
            row = _step_row(k, args, time.perf_counter() - t0, m, rl,
                            captured[0] if captured else None, micro, n_params)
            row.update(clock.take())
            if k == args.warmup and plans:
                info["first_timed_requests"] = {"digest": requests_digest(plans[0].requests),
                                                "count": len(plans[0].requests)}
            rows.append(row)
            print(f"  {preset} [{engine}] step {k}{'' if row['timed'] else ' (warm-up)'}: "
                  f"wall {row['wall_s']:.2f} s, "
                  + ", ".join(f"{p.split('/')[1]} {row[p]:.2f}" for p in PHASES[:4] if p in row)
                  + f", completions {row.get('completion_tokens', 0)} tok", flush=True)
            if on_step is not None:
                on_step({"summary": {**summarize(rows), **info, "partial": True}, "steps": rows})
    finally:
        planner.plan_rollouts = orig_plan
        clock.close()
    mem = peak_mem_gb()
    if args.profile:
        _profile_steps(trainer, rl, preset, args, profiling)
    info.update({"fast_decoding": getattr(trainer.engine, "fast", None),
                 "graph_errors": getattr(trainer.engine, "graph_errors", None)})
    trainer.close()
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"summary": {**summarize(rows), **mem, **info}, "steps": rows}


def _profile_steps(trainer, rl: bool, preset: str, args, profiling: dict) -> None:
    """One more step, after the timed ones, profiled whole (unless --profile-update-only); then
    one with its update alone."""
    tables = {}
    if not args.profile_update_only:
        with profiler() as prof:
            trainer.rl_step() if rl else trainer.sft_step()
            sync()
        tables["whole step"] = prof
    profiling["on"] = True
    trainer.rl_step() if rl else trainer.sft_step()
    sync()
    tables["update phase"] = profiling["update"]
    write_profile(Path(args.profile) / f"profile_{preset}.txt", tables)


# ---------------------------------------------------------------------------- profile
def profiler():
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=acts)


def write_profile(path: Path, profiles: dict, rows: int = 40) -> None:
    """torch.profiler tables of each profile: operators by device time, then by host time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for name, prof in profiles.items():
        avg = prof.key_averages()
        keys = (["self_device_time_total"] if torch.cuda.is_available() else []) + [
            "self_cpu_time_total"]
        for key in keys:
            parts.append(f"== {name}, by {key}\n" + avg.table(sort_by=key, row_limit=rows))
    path.write_text("\n\n".join(parts))
    print(f"  profile -> {path}", flush=True)


# ---------------------------------------------------------------------------- main
def environment(device: torch.device) -> dict:
    import transformers

    env = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "hostname_cpus": os.cpu_count()}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
    else:
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        env["device"] = "cpu"
    try:
        import trl

        env["trl"] = trl.__version__
    except ImportError:
        pass
    return env


def _parser():
    from prefix_rft.core.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="'tiny' (random weights, --tiny-*), 'smollm2-135m-instruct', an HF directory "
                        "or a .gguf file (converted once to <dir>/<stem>-hf)")
    p.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer of --model tiny")
    p.add_argument("--tiny-hidden", type=int, default=64)
    p.add_argument("--tiny-layers", type=int, default=2)
    p.add_argument("--tiny-heads", type=int, default=4)
    p.add_argument("--presets", default=None,
                   help=f"comma list, 'all' or 'none'; of: {', '.join(PRESETS)} (default: all; rft "
                        "with --vllm-ceiling, whose requests are those of these presets; none with "
                        "--trl-vllm)")
    p.add_argument("--workload", choices=WORKLOADS, default="arith",
                   help="arith: 'What is a + b?'; math500: the first --problems MATH-500 problems")
    p.add_argument("--engine", choices=["hf", "vllm", "auto"], default=None,
                   help="rollout.engine of the presets (default: the config's own)")
    p.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer on the same workload")
    p.add_argument("--trl-gradient-checkpointing", type=int, choices=[0, 1], default=1,
                   help="TRL's gradient_checkpointing (1 = TRL 1.16's default, as in the anchor run)")
    p.add_argument("--trl-vllm", action="store_true",
                   help="only TRL's GRPOTrainer with vLLM colocated (row trl_grpo_vllm)")
    p.add_argument("--trl-vllm-mem", type=float, default=0.3, help="its vllm_gpu_memory_utilization")
    p.add_argument("--trl-vllm-sleep", type=int, choices=[0, 1], default=1,
                   help="its vllm_enable_sleep_mode")
    p.add_argument("--vllm-ceiling", action="store_true",
                   help="only standalone vLLM generate on the presets' first timed step (vllm_generate)")
    p.add_argument("--vllm-mem", type=float, default=0.85, help="gpu_memory_utilization of --vllm-ceiling")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="print one table over the rows of these result files; --out gets the merge")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="trajectories per forward/backward, ours and TRL's (default: prompts x "
                        "group on CUDA, 16 on CPU)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--device", default="auto")
    p.add_argument("--reward", choices=["math_verify", "regex"], default="math_verify")
    p.add_argument("--reward-workers", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"peak for MFU (default {H100_BF16_DENSE_TFLOPS:g} = H100 SXM dense bf16 on "
                        "CUDA; none on CPU)")
    p.add_argument("--problems", type=int, default=None,
                   help="problem pool size (default: 512 sums for arith, all 500 for math500)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after the timed steps, profile one more step of each preset (and, in a "
                        "second step, its update phase alone) with torch.profiler; the operator "
                        "tables go to DIR/profile_<preset>.txt")
    p.add_argument("--profile-update-only", action="store_true",
                   help="with --profile: only the update phase (a whole step under the profiler "
                        "records every vLLM decode kernel)")
    p.add_argument("--ceiling-logprobs", action="store_true",
                   help="--vllm-ceiling also returns the sampled tokens' log-probs, as the "
                        "trainer's rollouts do with rollout.logprob_gap on")
    return p


def _check_modes(a, p) -> None:
    """One row type per process for the vLLM rows (vLLM keeps its GPU memory until exit)."""
    if a.workload == "math500" and a.reward == "regex":
        p.error("--workload math500 needs --reward math_verify (MATH answers are LaTeX "
                "expressions, not the integers the regex compares)")
    if a.vllm_ceiling and (a.trl or a.trl_vllm):
        p.error("--vllm-ceiling runs alone: vLLM keeps its GPU memory, run other rows in their own process")
    if a.trl_vllm and a.trl:
        p.error("--trl-vllm runs alone: run --trl in its own process")
    if a.trl_vllm and a.presets not in (None, "none"):
        p.error("--trl-vllm runs alone: leave out --presets (or give 'none')")
    if a.engine and (a.vllm_ceiling or a.trl_vllm):
        p.error("--engine applies to preset rows only")
    if a.workload == "math500" and a.problems is not None and not 1 <= a.problems <= 500:
        p.error("--problems: MATH-500 has 500 problems")


def parse_args(argv=None):
    from prefix_rft.core.presets import PRESETS

    p = _parser()
    a = p.parse_args(argv)
    if a.merge:
        return a
    _check_modes(a, p)
    a.problems = a.problems or (500 if a.workload == "math500" else 512)
    a.device = "cuda" if a.device == "auto" and torch.cuda.is_available() else (
        "cpu" if a.device == "auto" else a.device)
    cuda = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.micro_batch_size = a.micro_batch_size or (a.prompts * a.group if cuda else 16)
    if a.peak_tflops is None and cuda:
        a.peak_tflops = H100_BF16_DENSE_TFLOPS
    presets = a.presets or ("none" if a.trl_vllm else "rft" if a.vllm_ceiling else "all")
    names = {"all": list(PRESETS), "none": []}.get(presets, [s for s in presets.split(",") if s])
    for s in names:
        if s not in PRESETS:
            p.error(f"unknown preset {s!r}")
    if a.vllm_ceiling and not names:
        p.error("--vllm-ceiling times the requests of --presets: give at least one")
    a.preset_list = names
    return a


def write(out: str | None, result: dict) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, out)


# ---------------------------------------------------------------------------- table and merge
def named_rows(result: dict) -> list[tuple[str, dict]]:
    """(row name, row) of one result file: its presets, the --trl row, then the other rows
    (vllm_generate, trl_grpo_vllm; a merged file keeps all its rows there)."""
    runs = list(result.get("presets", {}).items())
    if "trl" in result and "summary" in result["trl"]:
        runs.append(("TRL GRPOTrainer", result["trl"]))
    runs += [(k, v) for k, v in result.get("rows", {}).items() if "summary" in v]
    return runs


TABLE_COLS = [("wall_s", "step s"), ("time/generation", "gen s"), ("time/reward", "reward s"),
              ("time/old_logprobs", "old-lp s"), ("time/update", "update s"),
              ("completion_tokens", "compl tok"), ("completion_tokens_per_s", "compl tok/s"),
              ("generation_tokens_per_s", "gen tok/s"), ("training_tokens_per_s", "train tok/s"),
              ("mfu_update", "MFU upd"), ("mfu_step", "MFU step"), ("peak_gb", "peak GB")]
# shown only when some row has them (vLLM rollouts): ours, then TRL's names for the same things
OPTIONAL_COLS = [("time/weight_sync", "w-sync s"), ("rollout/logprob_gap_mean", "lp gap"),
                 ("rollout/logprob_gap_max", "lp gap max"),
                 ("rollout/logprob_gap_frac_gt_0.5", "gap>0.5"),
                 ("sampling/sampling_logp_difference/mean", "TRL lp diff"),
                 ("sampling/sampling_logp_difference/max", "TRL lp diff max")]


def _cell(s: dict, key: str) -> str:
    v = s.get(key)
    if v is None:
        return "-"
    if key.startswith("mfu"):
        return f"{100 * v:.1f}%"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def table(result: dict) -> str:
    runs = named_rows(result)
    cols = TABLE_COLS + [c for c in OPTIONAL_COLS
                         if any(r["summary"].get(c[0]) is not None for _, r in runs)]
    lines = ["| run | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in runs:
        s = dict(r["summary"])
        s["peak_gb"] = s.get("peak_mem_gb", s.get("peak_rss_gb"))  # GPU allocated / CPU RSS
        lines.append(f"| {name} | " + " | ".join(_cell(s, c[0]) for c in cols) + " |")
    return "\n".join(lines)


def model_key(model: str | None) -> str | None:
    """A model as the fingerprint names it: a .gguf file and the directory it is converted to
    (`<dir>/<stem>-hf`, see `resolve_model`) are the same weights."""
    if model and model.endswith(".gguf"):
        return model[: -len(".gguf")] + "-hf"
    return model


def file_fingerprint(result: dict) -> dict:
    """The workload fingerprint of a result file (files written before it was stored: arith)."""
    if "fingerprint" in result:
        return {**result["fingerprint"], "model": model_key(result["fingerprint"].get("model"))}
    w = result.get("workload", {})
    return {"model": w.get("model"), "workload": "arith", "problems": 512,
            "prompts": w.get("prompts"), "group": w.get("group"),
            "max_new_tokens": w.get("max_new_tokens"), "temperature": w.get("temperature")}


def merge(files: list[str]) -> dict:
    """One result over the rows of several files with the same workload fingerprint; a preset
    row is named `preset [engine]`, a name seen twice gets its file's stem appended."""
    results = [(f, json.loads(Path(f).read_text())) for f in files]
    base = file_fingerprint(results[0][1])
    for f, r in results[1:]:
        fp = file_fingerprint(r)
        if fp != base:
            diff = ", ".join(f"{k}: {base.get(k)!r} vs {fp.get(k)!r}"
                             for k in sorted(set(base) | set(fp)) if base.get(k) != fp.get(k))
            raise SystemExit(f"rl_step.py --merge: {f} has another workload than {files[0]} ({diff}); "
                             "its rows are not comparable")
    rows: dict = {}
    for f, r in results:
        for name, row in named_rows(r):
            if name in r.get("presets", {}) and row["summary"].get("engine"):
                name = f"{name} [{row['summary']['engine']}]"
            if name in rows:
                name = f"{name} ({Path(f).stem})"
            rows[name] = {**row, "source": f}
    return {"benchmark": "rl_step", "merged": True, "fingerprint": base, "rows": rows,
            "sources": [{"file": f, "command": r.get("command"), "env": r.get("env"),
                         "workload": r.get("workload")} for f, r in results]}


# ---------------------------------------------------------------------------- main
def _new_result(a, device) -> dict:
    return {
        "benchmark": "rl_step", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "env": environment(device), "fingerprint": fingerprint(a),
        "workload": {"model": a.model, "workload": a.workload, "problems": a.problems,
                     "dtype": a.dtype, "prompts": a.prompts, "group": a.group,
                     "max_new_tokens": a.max_new_tokens, "temperature": a.temperature,
                     "reward": a.reward, "warmup": a.warmup, "steps": a.steps,
                     "micro_batch_size": a.micro_batch_size, "attn": a.attn, "engine": a.engine,
                     "peak_tflops": a.peak_tflops, "overrides": a.set or []},
        "presets": {},
    }


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.merge:
        result = merge(a.merge)
        write(a.out, result)
        print(table(result))
        return result
    if a.vllm_ceiling or a.trl_vllm:  # before loading anything: one line where vLLM is missing
        rows_mod().require_vllm("--vllm-ceiling" if a.vllm_ceiling else "--trl-vllm")
    from prefix_rft.models import load_tokenizer

    device = torch.device(a.device)
    model_path = resolve_model(a.model)
    tok = load_tokenizer(a.tokenizer if model_path == "tiny" else model_path)
    pool = load_pool(a)
    result = _new_result(a, device)
    if a.vllm_ceiling:
        def done(rows):
            result["rows"] = dict(rows)
            write(a.out, result)

        result["rows"] = rows_mod().run_vllm_ceiling(a, model_path, tok, pool, on_row=done)
        write(a.out, result)
        print(table(result))
        return result
    for preset in a.preset_list:
        print(f"== {preset}", flush=True)

        def partial(row, preset=preset):
            result["presets"][preset] = row
            write(a.out, result)

        result["presets"][preset] = run_preset(preset, a, model_path, tok, pool, device, on_step=partial)
        write(a.out, result)
    if a.trl_vllm:
        print("== trl_grpo_vllm", flush=True)
        result["rows"] = {"trl_grpo_vllm": rows_mod().run_trl(a, model_path, tok, pool, device, use_vllm=True)}
        write(a.out, result)
    if a.trl:
        print("== TRL GRPOTrainer", flush=True)
        result["trl"] = rows_mod().run_trl(a, model_path, tok, pool, device)
        base = result["presets"].get("rft", {}).get("summary", {}).get("completion_tokens_per_s")
        other = result["trl"].get("summary", {}).get("completion_tokens_per_s")
        if base and other:
            result["rft_vs_trl_completion_tokens_per_s"] = base / other
        write(a.out, result)
    print(table(result))
    if "rft_vs_trl_completion_tokens_per_s" in result:
        print(f"rft / TRL completion tokens/s: {result['rft_vs_trl_completion_tokens_per_s']:.2f}x")
    return result


def rows_mod():
    """perf/rl_step_rows.py (TRL and vLLM rows), imported when a run asks for one."""
    if str(Path(__file__).parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).parent))
    import rl_step_rows

    return rl_step_rows


if __name__ == "__main__":
    main()
