"""A whole RL step of every preset on a fixed workload, the time split by phase, next to TRL's
GRPOTrainer on the identical workload in the same run (`--trl`).

    # CPU smoke (tiny random model with SmolLM2's tokenizer, seconds per step)
    python perf/rl_step.py --model tiny --presets rft,prefix_rft --prompts 2 \
        --max-new-tokens 16 --warmup 1 --steps 2 --trl --out runs/bench/rl_step_tiny.json
    # GPU: SmolLM2-135M-Instruct (HF dir, or the GGUF file, converted on first use), bf16
    python perf/rl_step.py --model /tmp/m/smol.gguf --presets rft --trl --steps 3 \
        --out $OUT/rl_step.json

Workload (identical for every preset and for TRL): `--prompts` prompts x `--group` samples of
"What is a + b?" (a, b in 10..99, 512 problems from a fixed seed) sent as prefix-rft sends every
problem (one user turn: the problem + the paper's "Please reason step by step ... \\boxed{}"
suffix, the model's chat template with its generation prompt; the script checks that TRL's
tokenisation gives the same ids), at most `--max-new-tokens` new tokens, temperature 1.0,
top_p 1.0, top_k off, stop at the template's end-of-turn. Reward: 1 if the completion's boxed
answer is correct (`--reward math_verify`: prefix-rft's Math-Verify grader on both sides;
`--reward regex`: TRL anchor script's regex on the last \\boxed{} on both sides). Loss: Dr.
GRPO (advantage r - mean, no std, sum / (N x L_max)), one optimizer step per rollout batch
(rl.num_minibatches=1, ppo_epochs=1; TRL: per_device_train_batch_size = prompts x group,
gradient_accumulation_steps 1, num_iterations 1), beta 0, lr 1e-6, AdamW, grad clip 1.0.
Every problem has one worked demonstration (for the presets that use them; `rft` and TRL
never see it). `rl.demo_nll_prompts` is 0 (a monitoring pass outside the step's phases).

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

JSON (`--out`) is rewritten after every preset, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
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


def run_preset(preset: str, args, model_path: str, tok, pool, device) -> dict:
    from prefix_rft.train.trainer import Trainer

    cfg = build_config(preset, args, model_path)
    grader = make_grader(args.reward, args.reward_workers)
    trainer = Trainer(cfg, tokenizer=tok, train=pool, test=[], progress=False, grader=grader)
    rl = cfg.rl.steps > 0
    if rl and trainer.state.phase == "sft":  # sft_then_rft: time the RL phase
        trainer.state.phase = "rl"
        trainer._make_phase_optimizer()
    captured: list = []
    orig_update = trainer.update

    profiling: dict = {}

    def update(*a, **kw):
        captured.append(a[0] if a else kw["trajs"])
        if profiling.get("on"):  # the update phase alone, in its own table
            with profiler() as prof:
                out = orig_update(*a, **kw)
            profiling["update"] = prof
            return out
        return orig_update(*a, **kw)

    trainer.update = update
    n_params = param_count(trainer.model)
    micro = cfg.rl.micro_batch_size if rl else cfg.sft.micro_batch_size
    rows = []
    for k in range(args.warmup + args.steps):
        if k == args.warmup:
            reset_peak()
        captured.clear()
        sync()
        t0 = time.perf_counter()
        m = trainer.rl_step() if rl else trainer.sft_step()
        sync()
        wall = time.perf_counter() - t0
        row = {"step": k, "timed": k >= args.warmup, "wall_s": wall}
        row.update({key: m[key] for key in PHASES if key in m})
        if not rl:
            row.update({"time/update": m["time/step"] - m.get("time/old_logprobs", 0.0)})
        for key in ("reward/mean", "completions/mean_length", "completions/clipped_ratio",
                    "tokens/trained", "loss", "grad_norm"):
            if key in m:
                row[key] = m[key]
        row.update(token_counts(captured[0], micro) if captured else {})
        row["time/unaccounted"] = wall - sum(row.get(p, 0.0) for p in PHASES[:4])
        row.update(derived(row, n_params, args.peak_tflops))
        rows.append(row)
        print(f"  {preset} step {k}{'' if row['timed'] else ' (warm-up)'}: wall {wall:.2f} s, "
              + ", ".join(f"{p.split('/')[1]} {row[p]:.2f}" for p in PHASES[:4] if p in row)
              + f", completions {row.get('completion_tokens', 0)} tok", flush=True)
    mem = peak_mem_gb()
    if args.profile:  # one more step, after the timed ones: the whole step, then its update
        with profiler() as prof:
            trainer.rl_step() if rl else trainer.sft_step()
            sync()
        profiling["on"] = True
        trainer.rl_step() if rl else trainer.sft_step()
        sync()
        write_profile(Path(args.profile) / f"profile_{preset}.txt",
                      {"whole step": prof, "update phase": profiling["update"]})
    errors = trainer.engine.graph_errors
    fast = trainer.engine.fast
    trainer.close()
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    timed = [r for r in rows if r["timed"]]
    keys = [k for k in rows[0] if k not in ("step", "timed")]
    summary = {k: _median(timed, k) for k in keys}
    summary.update(mem)
    summary.update({"kind": "rl_step" if rl else "sft_step", "n_params": n_params,
                    "micro_batch_size": micro, "timed_steps": len(timed),
                    "fast_decoding": fast,
                    "graph_errors": errors})
    return {"summary": summary, "steps": rows}


# ---------------------------------------------------------------------------- TRL baseline
TRL_MISSING = (
    "TRL baseline: `import trl, datasets` failed ({err}). It needs trl==1.16.0, datasets==4.7.0, "
    "dill==0.4.0 and multiprocess==0.70.18. On the GPU machine: run "
    "`bash perf/gpu/fetch_trl_wheels.sh` here, carry `.whl-trl`, and start the command with "
    "`python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
    ".whl-trl/c*/*.whl && export PYTHONPATH=/tmp/site:$PWD`."
)


def run_trl(args, model_path: str, tok, pool, device) -> dict:
    try:
        import datasets  # noqa: F401
        import trl
        from trl import GRPOConfig, GRPOTrainer
        from trl.extras import profiling
    except ImportError as e:
        msg = TRL_MISSING.format(err=e)
        print(msg, file=sys.stderr, flush=True)
        return {"error": msg}
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from prefix_rft import models
    from prefix_rft.core.config import OptimConfig
    from prefix_rft.rollout.prompting import build_messages

    opt = OptimConfig()
    rows = [{"prompt": build_messages(p.prompt), "answer": p.answer} for p in pool]
    ds = Dataset.from_list(rows)
    grader = make_grader(args.reward, args.reward_workers)

    def boxed_answer(completions, answer, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [r.reward for r in grader.grade(texts, list(answer))]

    dtype = models._torch_dtype(args.dtype)
    if model_path == "tiny":
        model = models.tiny_random_model(len(tok), **tiny_init(args)).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                     attn_implementation=args.attn)
    n_params = param_count(model)

    events: list[tuple[str, float, float]] = []  # (name, duration, end time)
    orig_log = profiling.ProfilingContext._log_metrics

    def log_metrics(self, duration):
        events.append((self.name, duration, time.perf_counter()))
        return orig_log(self, duration)

    profiling.ProfilingContext._log_metrics = log_metrics

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.spans: list[tuple[float, float]] = []

        def on_step_begin(self, *a, **k):
            sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync()
            self.spans.append((self.t0, time.perf_counter()))

    timer = StepTimer()
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    cfg = GRPOConfig(
        output_dir=out_dir, loss_type="dr_grpo", scale_rewards="none", beta=0.0,
        num_generations=args.group, per_device_train_batch_size=args.prompts * args.group,
        gradient_accumulation_steps=1, num_iterations=1, max_completion_length=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, top_k=0, learning_rate=opt.lr,
        weight_decay=opt.weight_decay, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1],
        adam_epsilon=opt.eps, max_grad_norm=opt.grad_clip, lr_scheduler_type="constant",
        bf16=(dtype == torch.bfloat16 and device.type == "cuda"), max_steps=args.warmup + args.steps,
        logging_steps=1, report_to="none", use_vllm=False, save_strategy="no", seed=args.seed,
        use_cpu=(device.type == "cpu"), dataloader_num_workers=0, disable_tqdm=True,
        gradient_checkpointing=args.trl_gradient_checkpointing,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=boxed_answer, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[timer])
    # the prompts must tokenise exactly as ours
    from prefix_rft.rollout.prompting import encode_prompt

    text = tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
    same_ids = tok(text, add_special_tokens=False)["input_ids"] == encode_prompt(tok, pool[0].prompt)
    reset_peak()
    try:
        trainer.train()
    finally:
        profiling.ProfilingContext._log_metrics = orig_log
    mem = peak_mem_gb()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    n = args.prompts * args.group
    steps = []
    prev_tokens = 0.0
    for k, ((t0, t1), h) in enumerate(zip(timer.spans, logs)):
        ev = [(name, d, end) for name, d, end in events if t0 <= end <= t1]

        def total(suffix, ev=ev):
            return sum(d for name, d, _ in ev if name.endswith(suffix))

        prep_end = max((end for name, _, end in ev if name.endswith("._prepare_inputs")), default=t1)
        prep = total("._prepare_inputs")
        gen = total(".transformers.generate") + total(".transformers.generate_batch")
        old = sum(d for name, d, end in ev
                  if name.endswith("._get_per_token_logps_and_entropies") and end <= prep_end)
        wall = t1 - t0
        completion = h["completions/mean_length"] * n
        tokens = h.get("num_tokens", 0.0) - prev_tokens  # prompt + completion tokens this step
        prev_tokens = h.get("num_tokens", prev_tokens)
        row = {"step": k, "timed": k >= args.warmup, "wall_s": wall, "time/generation": gen,
               "time/reward": total("._calculate_rewards"), "time/old_logprobs": old,
               "time/update": wall - prep, "time/step": wall,
               "time/other_prepare": prep - gen - total("._calculate_rewards") - old,
               "reward/mean": h.get("reward"), "completions/mean_length": h["completions/mean_length"],
               "completions/clipped_ratio": h.get("completions/clipped_ratio"),
               "completion_tokens": completion, "train_tokens": tokens,
               "completion_tokens_per_s": completion / wall,
               "generation_tokens_per_s": completion / gen if gen else None,
               "training_tokens_per_s": tokens / (wall - prep) if wall > prep else None}
        if args.peak_tflops:
            flops_upd = 6 * n_params * tokens
            row["mfu_update"] = flops_upd / (wall - prep) / (args.peak_tflops * 1e12) if wall > prep else None
            row["mfu_step"] = (flops_upd + 2 * n_params * tokens) / wall / (args.peak_tflops * 1e12)
        steps.append(row)
    timed = [r for r in steps if r["timed"]]
    keys = [k for k in steps[0] if k not in ("step", "timed")] if steps else []
    summary = {k: _median(timed, k) for k in keys}
    summary.update(mem)
    summary.update({"kind": "trl_grpo_step", "n_params": n_params, "timed_steps": len(timed),
                    "gradient_checkpointing": bool(args.trl_gradient_checkpointing),
                    "trl": trl.__version__, "datasets": datasets.__version__,
                    "prompt_ids_identical": same_ids})
    if hasattr(grader, "close"):
        grader.close()
    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"summary": summary, "steps": steps}


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


def parse_args(argv=None):
    from prefix_rft.core.presets import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="'tiny' (random weights, --tiny-*), 'smollm2-135m-instruct', an HF directory "
                        "or a .gguf file (converted once to <dir>/<stem>-hf)")
    p.add_argument("--tokenizer", default="smollm2-135m-instruct", help="tokenizer of --model tiny")
    p.add_argument("--tiny-hidden", type=int, default=64)
    p.add_argument("--tiny-layers", type=int, default=2)
    p.add_argument("--tiny-heads", type=int, default=4)
    p.add_argument("--presets", default="all", help=f"comma list, 'all' or 'none'; of: {', '.join(PRESETS)}")
    p.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer on the same workload")
    p.add_argument("--trl-gradient-checkpointing", type=int, choices=[0, 1], default=1,
                   help="TRL's gradient_checkpointing (1 = TRL 1.16's default, as in the anchor run)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="trajectories per forward/backward (default: prompts x group on CUDA, 16 on CPU)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--device", default="auto")
    p.add_argument("--reward", choices=["math_verify", "regex"], default="math_verify")
    p.add_argument("--reward-workers", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"peak for MFU (default {H100_BF16_DENSE_TFLOPS:g} = H100 SXM dense bf16 on "
                        "CUDA; none on CPU)")
    p.add_argument("--problems", type=int, default=512)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after the timed steps, profile one more step of each preset (and, in a "
                        "second step, its update phase alone) with torch.profiler; the operator "
                        "tables go to DIR/profile_<preset>.txt")
    a = p.parse_args(argv)
    a.device = "cuda" if a.device == "auto" and torch.cuda.is_available() else (
        "cpu" if a.device == "auto" else a.device)
    cuda = a.device.startswith("cuda")
    a.dtype = a.dtype or ("bfloat16" if cuda else "float32")
    a.micro_batch_size = a.micro_batch_size or (a.prompts * a.group if cuda else 16)
    if a.peak_tflops is None and cuda:
        a.peak_tflops = H100_BF16_DENSE_TFLOPS
    names = {"all": list(PRESETS), "none": []}.get(a.presets, [s for s in a.presets.split(",") if s])
    for s in names:
        if s not in PRESETS:
            p.error(f"unknown preset {s!r}")
    a.preset_list = names
    return a


def write(out: str | None, result: dict) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, out)


def table(result: dict) -> str:
    cols = [("wall_s", "step s"), ("time/generation", "gen s"), ("time/reward", "reward s"),
            ("time/old_logprobs", "old-lp s"), ("time/update", "update s"),
            ("completion_tokens", "compl tok"), ("completion_tokens_per_s", "compl tok/s"),
            ("generation_tokens_per_s", "gen tok/s"), ("training_tokens_per_s", "train tok/s"),
            ("mfu_update", "MFU upd"), ("mfu_step", "MFU step"), ("peak_gb", "peak GB")]
    lines = ["| run | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    runs = [(k, v) for k, v in result["presets"].items()]
    if "trl" in result and "summary" in result["trl"]:
        runs.append(("TRL GRPOTrainer", result["trl"]))
    for name, r in runs:
        s = dict(r["summary"])
        s["peak_gb"] = s.get("peak_mem_gb", s.get("peak_rss_gb"))  # GPU allocated / CPU RSS

        def f(key, s=s):
            v = s.get(key)
            if v is None:
                return "-"
            if key.startswith("mfu"):
                return f"{100 * v:.1f}%"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"

        lines.append(f"| {name} | " + " | ".join(f(c[0]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    a = parse_args(argv)
    from prefix_rft.models import load_tokenizer

    device = torch.device(a.device)
    model_path = resolve_model(a.model)
    tok = load_tokenizer(a.tokenizer if model_path == "tiny" else model_path)
    pool = problems(a.problems)
    result = {
        "benchmark": "rl_step", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "env": environment(device),
        "workload": {"model": a.model, "dtype": a.dtype, "prompts": a.prompts, "group": a.group,
                     "max_new_tokens": a.max_new_tokens, "temperature": a.temperature,
                     "reward": a.reward, "warmup": a.warmup, "steps": a.steps,
                     "micro_batch_size": a.micro_batch_size, "attn": a.attn,
                     "peak_tflops": a.peak_tflops, "overrides": a.set or []},
        "presets": {},
    }
    for preset in a.preset_list:
        print(f"== {preset}", flush=True)
        result["presets"][preset] = run_preset(preset, a, model_path, tok, pool, device)
        write(a.out, result)
    if a.trl:
        print("== TRL GRPOTrainer", flush=True)
        result["trl"] = run_trl(a, model_path, tok, pool, device)
        base = result["presets"].get("rft", {}).get("summary", {}).get("completion_tokens_per_s")
        other = result["trl"].get("summary", {}).get("completion_tokens_per_s")
        if base and other:
            result["rft_vs_trl_completion_tokens_per_s"] = base / other
        write(a.out, result)
    print(table(result))
    if "rft_vs_trl_completion_tokens_per_s" in result:
        print(f"rft / TRL completion tokens/s: {result['rft_vs_trl_completion_tokens_per_s']:.2f}x")
    return result


if __name__ == "__main__":
    main()
