"""The rows of perf/rl_step.py that are not prefix-rft's trainer, on the same workload:

  run_trl          TRL's GRPOTrainer with plain HF generate (`--trl`, row "TRL GRPOTrainer") or
                   with vLLM colocated in the process (`--trl-vllm`, row `trl_grpo_vllm`)
  run_vllm_ceiling standalone vLLM `LLM.generate` on exactly the requests of a preset's first timed
                   step (`--vllm-ceiling`, row `vllm_generate`)

rl_step.py's docstring defines every number. vLLM keeps its GPU memory until the process ends,
so a process runs one vLLM row and nothing else (rl_step.py refuses the mixtures).
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import tempfile
import time

import rl_step as rs  # perf/ is on sys.path when rl_step.py runs (it imports this module)
import torch

TRL_MISSING = (
    "TRL baseline: `import trl, datasets` failed ({err}). It needs trl==1.16.0, datasets==4.7.0, "
    "dill==0.4.0 and multiprocess==0.70.18. On the GPU machine: run "
    "`bash perf/gpu/fetch_trl_wheels.sh` here, carry `.whl-trl`, and start the command with "
    "`python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "
    ".whl-trl/c*/*.whl && export PYTHONPATH=/tmp/site:$PWD`."
)

# what TRL 1.16 logs about the vLLM / trainer mismatch when use_vllm and its importance-sampling
# correction (default on) are set: |old log-prob - vLLM log-prob| over completion tokens and the
# importance-sampling ratio exp(old - vLLM) (per sequence in its default mode, sequence_mask)
TRL_VLLM_METRICS = ("sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
                    "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
                    "sampling/importance_sampling_ratio/max")


def require_vllm(flag: str) -> None:
    """Exit with one line when vLLM cannot be imported (the CPU machine, a GPU one without it)."""
    if importlib.util.find_spec("vllm") is None:
        raise SystemExit(f"rl_step.py {flag}: vLLM is not installed (pip install 'prefix-rft[gpu]', "
                         "or the wheels of perf/gpu/fetch_vllm_wheels.sh on the GPU machine)")


def _vllm_env() -> None:
    """The settings prefix-rft's vLLM engine also applies: the PyTorch sampler when FlashInfer
    is missing, and no usage report."""
    if importlib.util.find_spec("flashinfer") is None:
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def _cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- vLLM ceiling
def ceiling_requests(preset: str, args, model_path: str, tok, pool):
    """The requests and sampling parameters of `preset`'s first timed step (global step
    `--warmup`), planned as its trainer plans them: the same data order (`next_indices` from the
    start of the RL phase), `plan_rollouts` for that step, the trainer's sampling seed. Nothing
    is loaded or trained: the plan depends only on the config, the step and the token ids."""
    from prefix_rft.rollout.engines.base import SamplingParams
    from prefix_rft.train import planner

    cfg = rs.build_config(preset, args, model_path)
    if cfg.rl.steps <= 0:
        raise SystemExit(f"rl_step.py --vllm-ceiling: preset {preset!r} has no RL step")
    epoch = cursor = 0
    for _ in range(args.warmup + 1):
        idx, epoch, cursor = planner.next_indices(cfg.seed, "rl", epoch, cursor,
                                                  cfg.rollout.num_prompts, len(pool))
    ids = planner.TokenIds(tok, list(pool), cfg.model.think_tags)
    plan = planner.plan_rollouts(cfg, args.warmup, idx, ids, lambda i: len(pool[i].demonstrations))
    sampling = SamplingParams(cfg.rollout.temperature, cfg.rollout.top_p,
                              seed=cfg.seed * 7919 + args.warmup,
                              return_logprobs=bool(getattr(args, "ceiling_logprobs", False)))
    return plan.requests, sampling


def run_vllm_ceiling(args, model_path: str, tok, pool, on_row=None) -> dict:
    """`VLLMEngine.generate(requests, 1, sampling)` on each preset's first-timed-step requests:
    one untimed warm-up call, then `--steps` timed calls (the prefix cache reset before each).
    `on_row(rows so far)` after each preset's row."""
    require_vllm("--vllm-ceiling")
    if model_path == "tiny":
        raise SystemExit("rl_step.py --vllm-ceiling: vLLM loads its own weights; give --model a directory")
    _vllm_env()
    import vllm

    from prefix_rft.rollout.engines.vllm import VLLMEngine
    from prefix_rft.rollout.prompting import stop_token_ids

    plans = {p: ceiling_requests(p, args, model_path, tok, pool) for p in args.preset_list}
    t0 = time.perf_counter()
    engine = VLLMEngine(model_path, stop_token_ids(tok), dtype=args.dtype, seed=args.seed,
                        gpu_memory_utilization=args.vllm_mem)
    load_s = time.perf_counter() - t0
    rows = {}
    try:
        for preset, (requests, sampling) in plans.items():
            name = "vllm_generate" if len(plans) == 1 else f"vllm_generate:{preset}"
            print(f"== {name} ({len(requests)} requests of {preset}'s step {args.warmup})", flush=True)
            row = _time_generate(engine, requests, sampling, args)
            row["summary"].update({"requests_of": preset, "engine_load_s": load_s,
                                   "logprobs": sampling.return_logprobs,
                                   "in_process": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0",
                                   "gpu_memory_utilization": args.vllm_mem, "vllm": vllm.__version__})
            rows[name] = row
            if on_row is not None:
                on_row(rows)
    finally:
        engine.close()
    return rows


def _reset_prefix_cache(engine) -> None:
    reset = getattr(getattr(engine, "llm", None), "reset_prefix_cache", None)
    if callable(reset):
        reset()


def _time_generate(engine, requests, sampling, args) -> dict:
    engine.generate(requests, 1, sampling)  # warm-up: CUDA graphs, allocator, sampler
    steps = []
    clock = rs.PhaseClock(engine)
    for k in range(args.steps):
        _reset_prefix_cache(engine)  # a training step sends its prompts to a fresh cache too
        clock.take()
        rs.sync()
        t0 = time.perf_counter()
        outs = engine.generate(requests, 1, sampling)
        rs.sync()
        gen = time.perf_counter() - t0
        new = sum(len(o[0].token_ids) for o in outs)
        completion = new + sum(len(r.prefix_ids) for r in requests)
        steps.append({"step": k, "timed": True, "time/generation": gen, "generated_tokens": new,
                      "completion_tokens": completion,
                      "completions/mean_length": completion / max(1, len(requests)),
                      "completions/clipped_ratio":
                          sum(o[0].finish_reason == "length" for o in outs) / max(1, len(requests)),
                      "generation_tokens_per_s": new / gen, **clock.take()})
        print(f"  generate {k}: {gen:.2f} s, {new} tokens, {new / gen:,.0f} tok/s", flush=True)
    clock.close()
    summary = rs.summarize(steps)
    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    summary.update({"kind": "vllm_generate", "engine": type(engine).__name__,
                    "first_timed_requests": {"digest": rs.requests_digest(requests),
                                             "count": len(requests)},
                    "max_new_tokens_total": sum(r.max_new_tokens for r in requests),
                    "gpu_used_gb": (total - free) / 1e9})
    return {"summary": summary, "steps": steps}


# ---------------------------------------------------------------------------- TRL
def _trl_config(args, device, dtype, use_vllm: bool, out_dir: str):
    """GRPOConfig of the TRL rows: Dr. GRPO, beta 0, one optimizer step per generation batch
    (micro-batches of `--micro-batch-size` accumulated), prefix-rft's optimizer defaults."""
    from trl import GRPOConfig

    from prefix_rft.core.config import OptimConfig

    opt = OptimConfig()
    n = args.prompts * args.group
    micro = min(args.micro_batch_size, n)
    if n % micro:
        raise SystemExit(f"rl_step.py TRL rows: --micro-batch-size {micro} must divide prompts x group = {n}")
    extra = {}
    if use_vllm:
        extra = {"vllm_mode": "colocate", "vllm_gpu_memory_utilization": args.trl_vllm_mem,
                 "vllm_enable_sleep_mode": bool(args.trl_vllm_sleep)}
    return GRPOConfig(
        output_dir=out_dir, loss_type="dr_grpo", scale_rewards="none", beta=0.0,
        num_generations=args.group, per_device_train_batch_size=micro,
        gradient_accumulation_steps=n // micro, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
        learning_rate=opt.lr, weight_decay=opt.weight_decay, adam_beta1=opt.betas[0],
        adam_beta2=opt.betas[1], adam_epsilon=opt.eps, max_grad_norm=opt.grad_clip,
        lr_scheduler_type="constant", bf16=(dtype == torch.bfloat16 and device.type == "cuda"),
        max_steps=args.warmup + args.steps, logging_steps=1, report_to="none", use_vllm=use_vllm,
        save_strategy="no", seed=args.seed, use_cpu=(device.type == "cpu"), dataloader_num_workers=0,
        disable_tqdm=True, gradient_checkpointing=args.trl_gradient_checkpointing, **extra,
    )


class _Timers:
    """TRL's profiling timers (name, seconds, end time) and a CUDA-synchronised span per
    optimizer step (a `TrainerCallback` built lazily, so this module imports without TRL)."""

    def __init__(self):
        from transformers import TrainerCallback
        from trl.extras import profiling

        self.events: list[tuple[str, float, float]] = []
        self.spans: list[tuple[float, float]] = []
        self._ctx = profiling.ProfilingContext
        self._orig = self._ctx._log_metrics
        events, orig = self.events, self._orig

        def log_metrics(ctx, duration):
            events.append((ctx.name, duration, time.perf_counter()))
            return orig(ctx, duration)

        self._ctx._log_metrics = log_metrics
        spans = self.spans

        class StepTimer(TrainerCallback):
            def on_step_begin(self, *a, **k):
                rs.sync()
                self.t0 = time.perf_counter()

            def on_step_end(self, *a, **k):
                rs.sync()
                spans.append((self.t0, time.perf_counter()))

        self.callback = StepTimer()

    def restore(self) -> None:
        self._ctx._log_metrics = self._orig


def _trl_step_row(k: int, args, span, h: dict, events, n: int, n_params: int, prev_tokens: float) -> dict:
    """One optimizer step of TRL from its timers and its log entry `h`."""
    t0, t1 = span
    ev = [(name, d, end) for name, d, end in events if t0 <= end <= t1]

    def total(suffix):
        return sum(d for name, d, _ in ev if name.endswith(suffix))

    prep_end = max((end for name, _, end in ev if name.endswith("._prepare_inputs")), default=t1)
    prep = total("._prepare_inputs")
    # generation timer: transformers.generate(_batch) with HF generate, vLLM.generate with vLLM
    gen = total(".transformers.generate") + total(".transformers.generate_batch") + total(".vLLM.generate")
    sync_w = total(".sync_weights")
    old = sum(d for name, d, end in ev
              if name.endswith("._get_per_token_logps_and_entropies") and end <= prep_end)
    wall = t1 - t0
    completion = h["completions/mean_length"] * n
    tokens = h.get("num_tokens", 0.0) - prev_tokens  # prompt + completion tokens this step
    row = {"step": k, "timed": k >= args.warmup, "wall_s": wall, "time/generation": gen,
           "time/reward": total("._calculate_rewards"), "time/old_logprobs": old,
           "time/update": wall - prep, "time/step": wall,
           "time/other_prepare": prep - gen - sync_w - total("._calculate_rewards") - old,
           "reward/mean": h.get("reward"), "completions/mean_length": h["completions/mean_length"],
           "completions/clipped_ratio": h.get("completions/clipped_ratio"),
           "completion_tokens": completion, "train_tokens": tokens,
           "completion_tokens_per_s": completion / wall,
           "generation_tokens_per_s": completion / gen if gen else None,
           "training_tokens_per_s": tokens / (wall - prep) if wall > prep else None}
    if any(name.endswith(".sync_weights") for name, _, _ in ev):
        row["time/weight_sync"] = sync_w
    row.update({key: h[key] for key in TRL_VLLM_METRICS if key in h})
    if args.peak_tflops:
        flops_upd = 6 * n_params * tokens
        row["mfu_update"] = flops_upd / (wall - prep) / (args.peak_tflops * 1e12) if wall > prep else None
        row["mfu_step"] = (flops_upd + 2 * n_params * tokens) / wall / (args.peak_tflops * 1e12)
    return row


def _trl_model(args, model_path: str, tok, dtype):
    from transformers import AutoModelForCausalLM

    from prefix_rft import models

    if model_path == "tiny":
        return models.tiny_random_model(len(tok), **rs.tiny_init(args)).to(dtype)
    return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=args.attn)


def run_trl(args, model_path: str, tok, pool, device, use_vllm: bool = False) -> dict:
    """TRL's GRPOTrainer for `--warmup` + `--steps` optimizer steps on the workload's prompts."""
    if use_vllm:
        require_vllm("--trl-vllm")
        if model_path == "tiny":
            raise SystemExit("rl_step.py --trl-vllm: vLLM loads the model by its path; give --model a directory")
        _vllm_env()
    try:
        import datasets
        import trl
        from trl import GRPOTrainer
    except ImportError as e:
        msg = TRL_MISSING.format(err=e)
        print(msg, file=sys.stderr, flush=True)
        return {"error": msg}
    from prefix_rft import models
    from prefix_rft.data.loading import in_memory_dataset
    from prefix_rft.rollout.prompting import build_messages, encode_prompt

    rows = [{"prompt": build_messages(p.prompt), "answer": p.answer} for p in pool]
    grader = rs.make_grader(args.reward, args.reward_workers)

    def boxed_answer(completions, answer, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [r.reward for r in grader.grade(texts, list(answer))]

    dtype = models._torch_dtype(args.dtype)
    model = _trl_model(args, model_path, tok, dtype)
    n_params = rs.param_count(model)
    timers = _Timers()
    cfg = _trl_config(args, device, dtype, use_vllm, tempfile.mkdtemp(prefix="trl-bench-"))
    try:
        trainer = GRPOTrainer(model=model, reward_funcs=boxed_answer, args=cfg,
                              train_dataset=in_memory_dataset(rows), processing_class=tok,
                              callbacks=[timers.callback])
        # the prompts must tokenise exactly as ours
        text = tok.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
        same_ids = tok(text, add_special_tokens=False)["input_ids"] == encode_prompt(tok, pool[0].prompt)
        rs.reset_peak()
        trainer.train()
    finally:
        timers.restore()
    mem = rs.peak_mem_gb()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    n = args.prompts * args.group
    steps, prev = [], 0.0
    for k, (span, h) in enumerate(zip(timers.spans, logs)):
        steps.append(_trl_step_row(k, args, span, h, timers.events, n, n_params, prev))
        prev = h.get("num_tokens", prev)
    summary = rs.summarize(steps) if steps else {}
    timed = [r for r in steps if r["timed"]]
    for key, pick in (("sampling/sampling_logp_difference/max", max),
                      ("sampling/importance_sampling_ratio/max", max),
                      ("sampling/importance_sampling_ratio/min", min)):
        vals = [r[key] for r in timed if r.get(key) is not None]
        if vals:
            summary[key] = pick(vals)
    summary.update(mem)
    summary.update({"kind": "trl_grpo_vllm_step" if use_vllm else "trl_grpo_step",
                    "engine": "vLLM colocate" if use_vllm else "transformers.generate",
                    "n_params": n_params, "micro_batch_size": cfg.per_device_train_batch_size,
                    "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                    "gradient_checkpointing": bool(args.trl_gradient_checkpointing),
                    "trl": trl.__version__, "datasets": datasets.__version__,
                    "prompt_ids_identical": same_ids})
    if use_vllm:
        import vllm

        summary.update({"vllm": vllm.__version__, "vllm_gpu_memory_utilization": args.trl_vllm_mem,
                        "vllm_enable_sleep_mode": bool(args.trl_vllm_sleep),
                        "vllm_importance_sampling_correction": cfg.vllm_importance_sampling_correction,
                        "vllm_importance_sampling_mode": cfg.vllm_importance_sampling_mode,
                        "dist_env": {k: os.environ.get(k) for k in
                                     ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}})
    if hasattr(grader, "close"):
        grader.close()
    del trainer, model
    _cleanup()
    return {"summary": summary, "steps": steps}
