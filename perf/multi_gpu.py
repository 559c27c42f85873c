"""Data-parallel training (torchrun + FSDP2) against one process: same update, throughput scaling,
HF export. Run it once per process count, then compare:

    torchrun --standalone --nproc_per_node 1 perf/multi_gpu.py run --out $OUT/n1 ...
    torchrun --standalone --nproc_per_node 2 perf/multi_gpu.py run --out $OUT/n2 ...
    python perf/multi_gpu.py compare $OUT/n1 $OUT/n2          # -> compare.json + table
    python perf/multi_gpu.py load $OUT/n2/checkpoint           # the eval engine loads it

`run` trains `--steps` Prefix-RFT steps of a random-weight model (any width/depth; the tokenizer
is a real one) on the built-in synthetic task, through the real Trainer: rollouts sharded by
group, FSDP2-sharded policy, entropy selection and normalisers over all ranks, a checkpoint
gathered to an HF directory by rank 0. Each group holds one full demonstration (LUFFY-style, in
the group), so a random policy still gets non-zero advantages and a real gradient. It writes
`result.json` (per-step metrics, training tokens/s of the update phase per GPU, peak memory per
rank, devices) and `checkpoint/`.

`compare` reports, per parameter tensor, the norm-relative difference of the two checkpoints
(and of their updates from the common start), the global max element difference, and the
scaling efficiency (tokens/s with N GPUs / (N x tokens/s with 1 GPU)) of the update phase.
Works on CPU too (gloo) with a small model: `--device cpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _config(args, processes: int) -> dict:
    return {
        "method": "prefix_rft",
        "seed": args.seed,
        "model": {"name_or_path": args.tokenizer, "dtype": args.dtype, "device": args.device},
        "data": {"train": "synthetic:add", "test": "synthetic:add", "synthetic_train_size": 256,
                 "synthetic_test_size": 8},
        "rollout": {"num_prompts": args.prompts, "group_size": 8, "n_full_demo": 1,
                    "demo_in_group": True, "max_response_len": args.max_response_len,
                    "max_batch_size": 256},
        "rl": {"steps": args.steps, "num_minibatches": args.minibatches,
               "micro_batch_size": args.micro_batch_size, "demo_nll_prompts": 0,
               "optim": {"lr": args.lr, "warmup_ratio": 0.0}},
        "reward": {"num_workers": 0},
        "eval": {"num_problems": 0},
        "save_every": 0,
        "pipeline": {"train_processes": processes},
    }


def _model(args, vocab: int):
    from prefix_rft import models

    return models.tiny_random_model(
        vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
        architecture="qwen2", seed=0, dtype=getattr(torch, args.dtype))


def cmd_run(args) -> int:
    from prefix_rft import models
    from prefix_rft.core.config import resolve
    from prefix_rft.rollout.engines.factory import EngineSpec, make_engine
    from prefix_rft.train import distributed as D
    from prefix_rft.train.trainer import Trainer

    D.init_from_env()
    rank, world = D.world()
    out = Path(args.out)
    cfg = resolve(_config(args, world))
    tok = models.load_tokenizer(args.tokenizer)
    model = _model(args, len(tok))
    n_params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(cfg, model=model, tokenizer=tok, progress=rank == 0)
    # the plain decoding path on any process count, so 1 and N GPUs sample the same rollouts
    trainer.engine, _ = make_engine("hf", EngineSpec(
        tok, model=trainer.model, max_batch_size=cfg.rollout.max_batch_size, decoding="generate"))
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    t0 = time.perf_counter()
    history = trainer.fit()
    wall = time.perf_counter() - t0
    trainer.save(out / "checkpoint")
    peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30 if trainer.device.type == "cuda" else None
    peaks = D.gather_objects(peak)
    devices = D.gather_objects(torch.cuda.get_device_name(trainer.device)
                               if trainer.device.type == "cuda" else "cpu")
    trainer.close()
    if rank == 0:
        steps = []
        for m in history:
            # the update phase (old log-probs pass + backward) runs over tokens/total sequence
            # tokens (prompt + response of every trajectory), split evenly over the ranks
            upd = m["time/update"] + m["time/old_logprobs"]
            steps.append({**{k: v for k, v in m.items() if isinstance(v, (int, float))},
                          "update_seconds": upd})
        result = {"world_size": world, "devices": devices, "peak_memory_gib": peaks,
                  "parameters": n_params, "config": _config(args, world), "wall_seconds": wall,
                  "steps": steps, "torch": torch.__version__}
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=1))
        print(json.dumps({k: result[k] for k in ("world_size", "devices", "peak_memory_gib",
                                                 "parameters", "wall_seconds")}))
    D.barrier()
    return 0


def _weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    w = {}
    for f in sorted((ckpt / "model").glob("*.safetensors")):
        w.update(load_file(str(f)))
    return w


def cmd_compare(args) -> int:
    from prefix_rft import models

    a, b = Path(args.a), Path(args.b)
    ra, rb = (json.loads((p / "result.json").read_text()) for p in (a, b))
    wa, wb = _weights(a / "checkpoint"), _weights(b / "checkpoint")
    cfg = ra["config"]
    tok = models.load_tokenizer(cfg["model"]["name_or_path"])
    ns = argparse.Namespace(hidden=args.hidden, layers=args.layers, heads=args.heads,
                            dtype=cfg["model"]["dtype"])
    start = {k: v.float() for k, v in _model(ns, len(tok)).state_dict().items()}
    rows, worst_w, worst_u, max_abs = [], 0.0, 0.0, 0.0
    for k in sorted(wa):
        x, y = wa[k].float(), wb[k].float()
        rel_w = float((y - x).norm() / x.norm().clamp_min(1e-30))
        du_a, du_b = x - start[k], y - start[k]
        rel_u = float((du_b - du_a).norm() / du_a.norm().clamp_min(1e-30))
        max_abs = max(max_abs, float((y - x).abs().max()))
        worst_w, worst_u = max(worst_w, rel_w), max(worst_u, rel_u)
        rows.append({"tensor": k, "rel_weights": rel_w, "rel_update": rel_u})

    def tput(r):  # training tokens/s of the update phase, all GPUs, median over timed steps
        steps = r["steps"][args.skip:] or r["steps"]
        vals = sorted(s["tokens/total"] / s["update_seconds"] for s in steps)
        return vals[len(vals) // 2] if vals else None

    ta, tb = tput(ra), tput(rb)
    summary = {
        "world_sizes": [ra["world_size"], rb["world_size"]], "devices": [ra["devices"], rb["devices"]],
        "dtype": cfg["model"]["dtype"], "parameters": ra["parameters"],
        "max_rel_weights": worst_w, "max_rel_update": worst_u, "max_abs_diff": max_abs,
        "tokens_per_s": [ta, tb],
        "tokens_per_s_per_gpu": [ta / ra["world_size"] if ta else None,
                                 tb / rb["world_size"] if tb else None],
        "scaling_efficiency": (tb / (rb["world_size"] / ra["world_size"] * ta)) if ta and tb else None,
        "peak_memory_gib": [ra["peak_memory_gib"], rb["peak_memory_gib"]],
        "metrics_first_step": {k: [ra["steps"][0].get(k), rb["steps"][0].get(k)]
                               for k in ("loss", "grad_norm", "reward/mean", "entropy/kept_fraction")},
    }
    out = Path(args.out) if args.out else b.parent / "compare.json"
    out.write_text(json.dumps({"summary": summary, "tensors": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def cmd_load(args) -> int:
    """The exported directory through the evaluation engine: load and greedy-decode."""
    import tempfile

    from prefix_rft import models
    from prefix_rft.eval.protocol import resolve_model_dir
    from prefix_rft.rollout.engines.base import GenerationRequest, SamplingParams
    from prefix_rft.rollout.engines.factory import EngineSpec, make_engine
    from prefix_rft.rollout.prompting import encode_prompt

    model_dir = resolve_model_dir(args.checkpoint, tempfile.mkdtemp())  # manifest verified
    tok = models.load_tokenizer(model_dir)
    engine, _ = make_engine("hf", EngineSpec(tok, model_dir=model_dir, max_batch_size=64))
    req = GenerationRequest(encode_prompt(tok, "What is 2 + 3?"), 16)
    out = engine.generate([req], 1, SamplingParams(temperature=0.0))[0][0]
    engine.close()
    print(json.dumps({"loaded": str(model_dir), "generated_tokens": len(out.token_ids)}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train under torchrun (any number of processes)")
    r.add_argument("--out", required=True)
    r.add_argument("--tokenizer", required=True, help="a tokenizer directory (e.g. SmolLM2's)")
    r.add_argument("--hidden", type=int, default=512)
    r.add_argument("--layers", type=int, default=8)
    r.add_argument("--heads", type=int, default=8)
    r.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    r.add_argument("--device", default="auto")
    r.add_argument("--prompts", type=int, default=8, help="groups per step (8 rollouts each)")
    r.add_argument("--minibatches", type=int, default=1)
    r.add_argument("--micro-batch-size", type=int, default=16)
    r.add_argument("--max-response-len", type=int, default=128)
    r.add_argument("--steps", type=int, default=1)
    r.add_argument("--lr", type=float, default=1e-5)
    r.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("compare", help="compare two `run` outputs (fewer processes first)")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--hidden", type=int, default=512)
    c.add_argument("--layers", type=int, default=8)
    c.add_argument("--heads", type=int, default=8)
    c.add_argument("--skip", type=int, default=1, help="warm-up steps left out of tokens/s")
    c.add_argument("--out")
    lo = sub.add_parser("load", help="load an exported checkpoint with the evaluation engine")
    lo.add_argument("checkpoint")
    args = p.parse_args(argv)
    return {"run": cmd_run, "compare": cmd_compare, "load": cmd_load}[args.cmd](args)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
