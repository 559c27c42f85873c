"""Generation throughput: transformers' `model.generate` vs the HF engine's plain and fast paths.

    python perf/generation_speed.py --model smollm2-135m-instruct --dtype bfloat16 \
        --shapes 64x256,256x256 --out gen_speed.json                      # GPU: the reference run
    python perf/generation_speed.py --model tiny --shapes 4x16 --prompt-len 16 \
        --out /tmp/gen_speed.json                                         # CPU smoke run

Modes (--modes, all by default):
  generate         model.generate(do_sample=True), dynamic KV cache: transformers out of the box
  generate-static  the same with cache_implementation="static" (+ compiled decoding on CUDA): the
                   most transformers itself gives
  engine           HFEngine(fast=False): per-row seeded Gumbel-max sampling through generate
  engine-graph     HFEngine(fast=True, compile=False): prefix_rft.rollout.engines.graph_decode, the whole
                   decode step (forward, sampling, bookkeeping) one CUDA graph of eager kernels
  engine-fast      HFEngine(fast=True): the same step compiled by inductor, then captured (the
                   engine's default on CUDA); its forward is graph_decode.FusedDecodeForward
                   (q/k/v and gate/up one GEMM each, GQA packed into the query axis)
  engine-fast-hf   the same with the model's own forward in the step (fused=False): what the
                   fused forward gains

Check (--check, on by default when engine and a fast mode run): for the first shape, the fast
modes' tokens and log-probs against the plain engine's, greedy and sampled, on the same prompts:
rows with identical tokens, the mean fraction of a row decoded identically before the first
difference, and the largest log-prob difference on the identical part (bf16: expect rows to
part after a near-tie of two tokens, which a different kernel order can flip).

Every row runs the full number of new tokens, so all modes do the same work: `model.generate` gets
min_new_tokens = max_new_tokens, the engine an out-of-vocabulary stop id (which never comes).
Prompts are random token ids of --prompt-len (seeded, the same for every mode). Per shape and mode:
one untimed warm-up call (compilation happens there; its time is reported as first_call_s), then
--repeats timed calls; the JSON (--out) holds every time, the median and tokens/s of the median.
`--model tiny` is a random 2-layer model for a CPU smoke run; numbers from it mean nothing.
`--model smollm2-random` is SmolLM2-135M-Instruct's architecture (its config.json, written out)
with random weights: the same work per token as the real model, for machines without the weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace


def smollm2_random(dtype):
    """SmolLM2-135M-Instruct's architecture (config.json of the converted GGUF) with random weights."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
        eos_token_id=2, pad_token_id=2, attention_bias=False, mlp_bias=False)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")


def _parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        rows, _, new = part.strip().partition("x")
        shapes.append((int(rows), int(new)))
    return shapes


def _generate_call(model, prompts, new: int, static: bool, a: argparse.Namespace,
                   pad_id: int) -> Callable[[], None]:
    """One `model.generate` call on `prompts` that always runs `new` tokens."""
    import torch

    kwargs = dict(do_sample=True, temperature=a.temperature, top_p=a.top_p, top_k=0,
                  max_new_tokens=new, min_new_tokens=new, pad_token_id=pad_id)
    if static:
        kwargs["cache_implementation"] = "static"
    device = next(model.parameters()).device
    ids = prompts.to(device)
    mask = torch.ones_like(ids)

    def call() -> None:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        assert out.shape[1] == ids.shape[1] + new

    return call


ENGINE_MODES = {"engine": dict(fast=False), "engine-graph": dict(fast=True, compile=False),
                "engine-fast": dict(fast=True), "engine-fast-hf": dict(fast=True, fused=False)}


def _engine(model, rows: int, mode: str, pad_id: int):
    from prefix_rft.rollout.engines.hf import HFEngine

    # the only stop id is outside the vocabulary: every row runs the full length
    return HFEngine(model, SimpleNamespace(pad_token_id=pad_id), [model.config.vocab_size],
                    max_batch_size=rows, **ENGINE_MODES[mode])


def _requests(prompts, new: int, seed: int):
    from prefix_rft.rollout.engines import GenerationRequest

    return [GenerationRequest(p.tolist(), new, seed=seed * 1_000_003 + r)
            for r, p in enumerate(prompts)]


def _engine_call(engine, prompts, new: int, a: argparse.Namespace) -> Callable[[], None]:
    """One `HFEngine.generate` call on `prompts` (one chunk) that always runs `new` tokens."""
    from prefix_rft.rollout.engines import SamplingParams

    reqs = _requests(prompts, new, a.seed)
    sampling = SamplingParams(temperature=a.temperature, top_p=a.top_p, seed=a.seed)

    def call() -> None:
        outs = engine.generate(reqs, 1, sampling)
        assert all(len(o[0].token_ids) == new for o in outs)

    return call


def check_against_plain(engines: dict, prompts, new: int, a: argparse.Namespace) -> list[dict]:
    """Tokens and log-probs of every fast engine vs the plain engine, greedy and sampled."""
    from prefix_rft.rollout.engines import SamplingParams

    reqs = _requests(prompts, new, a.seed)
    out = []
    for label, sampling in (("greedy", SamplingParams(0.0, return_logprobs=True)),
                            ("sampled", SamplingParams(a.temperature, a.top_p, seed=a.seed,
                                                       return_logprobs=True))):
        ref = [o[0] for o in engines["engine"].generate(reqs, 1, sampling)]
        for mode, eng in engines.items():
            if mode == "engine":
                continue
            got = [o[0] for o in eng.generate(reqs, 1, sampling)]
            same, prefix, dlp = 0, [], 0.0
            for x, y in zip(ref, got):
                n = next((i for i, (u, v) in enumerate(zip(x.token_ids, y.token_ids)) if u != v),
                         len(x.token_ids))
                same += n == len(x.token_ids) == len(y.token_ids)
                prefix.append(n / max(1, len(x.token_ids)))
                if n:
                    diff = [abs(u - v) for u, v in zip(x.logprobs[:n], y.logprobs[:n])]
                    dlp = max(dlp, max(diff))
            line = {"check": mode, "sampling": label, "rows": len(ref),
                    "identical_rows": same, "mean_identical_fraction": round(
                        sum(prefix) / len(prefix), 4), "max_logprob_diff": dlp}
            print(json.dumps(line), flush=True)
            out.append(line)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model name/dir (see prefix_rft.models), 'tiny' (random, CPU-sized) or "
                        "'smollm2-random' (SmolLM2-135M's architecture, random weights)")
    p.add_argument("--dtype", default="bfloat16",
                   help="float32 | bfloat16 | float16 (tiny: always float32)")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cuda | cpu")
    p.add_argument("--shapes", default="64x256,256x256", help="comma-separated ROWSxNEW_TOKENS")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row")
    p.add_argument("--modes", default="generate,generate-static,engine,engine-graph,engine-fast")
    p.add_argument("--check", type=int, choices=[0, 1], default=1,
                   help="compare the fast modes' tokens with the plain engine's (first shape)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per shape and mode (>= 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", required=True, help="write the JSON results here")
    a = p.parse_args()
    if a.repeats < 3:
        p.error("--repeats must be >= 3 (the median of at least three)")
    modes = [m.strip() for m in a.modes.split(",")]
    unknown = set(modes) - {"generate", "generate-static", *ENGINE_MODES}
    if unknown:
        p.error(f"unknown --modes {sorted(unknown)}")

    import torch
    import transformers

    from prefix_rft.models import load_policy, tiny_random_model

    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if a.model == "tiny":
        model = tiny_random_model(1024, hidden_size=64, num_layers=2, num_heads=4).to(device)
    elif a.model == "smollm2-random":
        from prefix_rft.models import _torch_dtype

        model = smollm2_random(_torch_dtype(a.dtype)).to(device)
    else:
        model = load_policy(a.model, dtype=a.dtype, device=device)
    model.eval()
    vocab = model.config.vocab_size
    pad_id = 0

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    gen = torch.Generator().manual_seed(a.seed)
    results, checks = [], []
    for k, (rows, new) in enumerate(_parse_shapes(a.shapes)):
        prompts = torch.randint(1, vocab, (rows, a.prompt_len), generator=gen)
        engines = {}
        for mode in modes:
            if mode.startswith("generate"):
                call = _generate_call(model, prompts, new, mode == "generate-static", a, pad_id)
            else:
                engines[mode] = _engine(model, rows, mode, pad_id)
                call = _engine_call(engines[mode], prompts, new, a)
            first = timed(call)
            times = [timed(call) for _ in range(a.repeats)]
            median = statistics.median(times)
            line = {"mode": mode, "rows": rows, "new_tokens": new, "prompt_len": a.prompt_len,
                    "first_call_s": round(first, 3), "times_s": [round(t, 3) for t in times],
                    "median_s": round(median, 3), "tokens_per_s": round(rows * new / median, 1)}
            if mode in engines:
                line["graph_errors"] = engines[mode].graph_errors
            print(json.dumps(line), flush=True)
            results.append(line)
        if a.check and k == 0 and "engine" in engines and len(engines) > 1:
            checks = check_against_plain(engines, prompts, new, a)
        for eng in engines.values():
            eng.close()
        del engines
        if device == "cuda":
            torch.cuda.empty_cache()

    report = {
        "model": a.model, "dtype": str(model.dtype).replace("torch.", ""), "device": device,
        "device_name": (torch.cuda.get_device_name(0) if device == "cuda"
                        else platform.processor() or "cpu"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "temperature": a.temperature, "top_p": a.top_p,
        "repeats": a.repeats, "date": time.strftime("%Y-%m-%d"), "results": results,
        "checks": checks,
    }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
