"""Generation throughput: transformers' `model.generate` vs the HF engine's plain and fast paths.

    python benchmarks/generation_speed.py --model smollm2-135m-instruct --dtype bfloat16 \
        --shapes 64x256,256x256 --out gen_speed.json                      # GPU: the reference run
    python benchmarks/generation_speed.py --model tiny --shapes 4x16 --prompt-len 16 \
        --out /tmp/gen_speed.json                                         # CPU smoke run

Modes (--modes, all by default):
  generate         model.generate(do_sample=True), dynamic KV cache: transformers out of the box
  generate-static  the same with cache_implementation="static" (+ compiled decoding on CUDA): the
                   most transformers itself gives, the bar for the engine's fast path
  engine           HFEngine(fast=False): per-row seeded Gumbel-max sampling, dynamic cache
  engine-fast      HFEngine(fast=True): the same with static cache + compiled decoding

Every row runs the full number of new tokens, so all modes do the same work: `model.generate` gets
min_new_tokens = max_new_tokens, the engine an out-of-vocabulary stop id (which never comes).
Prompts are random token ids of --prompt-len (seeded, the same for every mode). Per shape and mode:
one untimed warm-up call (compilation happens there; its time is reported as first_call_s), then
--repeats timed calls; the JSON (--out) holds every time, the median and tokens/s of the median.
`--model tiny` is a random 2-layer model for a CPU smoke run; numbers from it mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace


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


def _engine_call(model, prompts, new: int, fast: bool, a: argparse.Namespace,
                 pad_id: int) -> Callable[[], None]:
    """One `HFEngine.generate` call on `prompts` (one chunk) that always runs `new` tokens: the
    only stop id is outside the vocabulary."""
    from prefix_rft.engines import GenerationRequest, HFEngine, SamplingParams

    engine = HFEngine(model, SimpleNamespace(pad_token_id=pad_id), [model.config.vocab_size],
                      max_batch_size=len(prompts), fast=fast)
    reqs = [GenerationRequest(p.tolist(), new, seed=a.seed * 1_000_003 + r)
            for r, p in enumerate(prompts)]
    sampling = SamplingParams(temperature=a.temperature, top_p=a.top_p, seed=a.seed)

    def call() -> None:
        outs = engine.generate(reqs, 1, sampling)
        assert all(len(o[0].token_ids) == new for o in outs)

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model name/dir (see prefix_rft.models), or 'tiny' (random, CPU-sized)")
    p.add_argument("--dtype", default="bfloat16",
                   help="float32 | bfloat16 | float16 (tiny: always float32)")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cuda | cpu")
    p.add_argument("--shapes", default="64x256,256x256", help="comma-separated ROWSxNEW_TOKENS")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row")
    p.add_argument("--modes", default="generate,generate-static,engine,engine-fast")
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
    unknown = set(modes) - {"generate", "generate-static", "engine", "engine-fast"}
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
    results = []
    for rows, new in _parse_shapes(a.shapes):
        prompts = torch.randint(1, vocab, (rows, a.prompt_len), generator=gen)
        for mode in modes:
            if mode.startswith("generate"):
                call = _generate_call(model, prompts, new, mode == "generate-static", a, pad_id)
            else:
                call = _engine_call(model, prompts, new, mode == "engine-fast", a, pad_id)
            first = timed(call)
            times = [timed(call) for _ in range(a.repeats)]
            median = statistics.median(times)
            line = {"mode": mode, "rows": rows, "new_tokens": new, "prompt_len": a.prompt_len,
                    "first_call_s": round(first, 3), "times_s": [round(t, 3) for t in times],
                    "median_s": round(median, 3), "tokens_per_s": round(rows * new / median, 1)}
            print(json.dumps(line), flush=True)
            results.append(line)

    report = {
        "model": a.model, "dtype": str(model.dtype).replace("torch.", ""), "device": device,
        "device_name": (torch.cuda.get_device_name(0) if device == "cuda"
                        else platform.processor() or "cpu"),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "temperature": a.temperature, "top_p": a.top_p,
        "repeats": a.repeats, "date": time.strftime("%Y-%m-%d"), "results": results,
    }
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
