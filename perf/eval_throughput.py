"""Evaluation throughput: (problems x samples) per second and generated tokens per second of an
engine on a benchmark slice, through the same code path as `prefix-rft eval`.

    python perf/eval_throughput.py --model smollm2-135m-instruct --engine hf \
        --benchmark math500 --problems 16 --n 4 --max-new-tokens 256 --dtype float32
    python perf/eval_throughput.py --model /path/to/hf_dir --engine vllm --problems 128 \
        --n 8 --max-new-tokens 1024 --dtype bfloat16 --out results.jsonl

One untimed warm-up generation (2 problems, n=1) runs first (CUDA kernels, vLLM graphs), then the
timed run. Prints one JSON line (and appends it to --out): engine, device, problems, samples,
tokens, generation seconds, samples/s, tokens/s, grading seconds, avg@n. Numbers go to
docs/PERFORMANCE.md with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import platform
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    p.add_argument("--benchmark", default="math500")
    p.add_argument("--problems", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--batch-size", type=int, default=64, help="HF engine rows per generate call")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    a = p.parse_args()

    import torch

    from prefix_rft.eval import protocol as BE
    from prefix_rft.eval.benchmarks import load_benchmark
    from prefix_rft.models import load_tokenizer, resolve_model_path
    from prefix_rft.rollout.engines.factory import EngineSpec, make_engine
    from prefix_rft.rollout.reward import RewardGrader

    model_dir = resolve_model_path(a.model)
    tok = load_tokenizer(model_dir)
    problems = load_benchmark(a.benchmark)[: a.problems]
    t0 = time.perf_counter()
    engine, kind = make_engine(a.engine, EngineSpec(
        tok, model_dir=model_dir, dtype=a.dtype, max_batch_size=a.batch_size, seed=a.seed,
        gpu_memory_utilization=a.gpu_memory_utilization), key="--engine")
    load_s = time.perf_counter() - t0
    protocol = BE.Protocol("throughput", n=a.n, temperature=a.temperature, top_p=0.95,
                           max_new_tokens=a.max_new_tokens, seed=a.seed)
    with RewardGrader(num_workers=a.workers) as grader:
        BE.evaluate_benchmark(engine, tok, a.benchmark, problems[:2], protocol.replace(n=1), grader,
                              n_boot=10)  # warm-up
        t1 = time.perf_counter()
        res = BE.evaluate_benchmark(engine, tok, a.benchmark, problems, protocol, grader, n_boot=100)
        total_s = time.perf_counter() - t1
    s = res.summary
    tokens = sum(r["num_tokens"] for r in res.records)
    line = {
        "engine": kind, "model": a.model, "dtype": a.dtype, "benchmark": a.benchmark,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(), "problems": len(problems), "n": a.n,
        "samples": len(res.records), "generated_tokens": tokens,
        "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size,
        "load_seconds": round(load_s, 2), "generation_seconds": round(s["generation_seconds"], 3),
        "grading_seconds": round(total_s - s["generation_seconds"], 3),
        "samples_per_second": round(s["samples_per_second"], 3),
        "tokens_per_second": round(s["tokens_per_second"], 1),
        "avg_at_n": s["avg_at_n"], "truncated_frac": s["truncated_frac"],
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(line), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    engine.close()


if __name__ == "__main__":
    main()
