"""Training throughput of forward + backward on packed 4k-token rows: tokens/s, MFU, peak memory,
for Qwen2.5-1.5B's architecture with random weights (built from a hand-written config; no
download), through prefix-rft's packed log-prob pass (`prefix_rft.train.logprobs.packed_logprobs`).

    python perf/train_throughput.py --tiny                       # CPU smoke, seconds
    python perf/train_throughput.py --micro-rows 4 --steps 10 --out $OUT/train_tp.json
    python perf/train_throughput.py --layout padded --micro-rows 4        # the padded path
    python perf/train_throughput.py --attention mask --micro-rows 1      # dense block mask
    python perf/train_throughput.py --checkpointing --micro-rows 8 --precision amp

Workload: rows of exactly `--seq` tokens, each filled with documents whose lengths are drawn
uniformly from [--doc-min, --doc-max] (the last one cut to fit), random token ids. Every position
is trained (loss = token-mean NLL of the next token inside its document, temperature 1), as in
an SFT step; an RL update trains response positions only, which costs less in the output head.
A micro-batch is `--micro-rows` rows (one forward + backward); `--accum` micro-batches make an
optimizer step (AdamW, timed separately from forward + backward).

Layouts (`--attn-impl` = the model's attention implementation: sdpa, eager, flex_attention):
  packed  (default) padding-free. `--attention varlen` (default): the micro-batch's rows are one
          row of micro_rows x seq tokens through `prefix_rft.train.logprobs.packed_logprobs`, attention
          per document (torch's FlashAttention varlen kernel on CUDA in bf16, per-document SDPA
          elsewhere). `--attention mask`: a [micro_rows, seq] batch whose position ids restart
          per document; transformers builds the block-diagonal causal mask for --attn-impl
          (dense [seq, seq] for sdpa/eager, a BlockMask for flex_attention).
  padded  each document is its own row, right-padded to the micro-batch's longest document
          (attention mask, --attn-impl; what prefix_rft.train.logprobs.collate does today). Same
          documents, same real tokens; padding is computed but not counted.
Head: `fused` = hidden states through the chunked lm_head log-softmax (no [tokens, vocab]
logits kept for backward; the backward recomputes each chunk's logits); `model` = the HF model's
own logits for the trained positions (logits_to_keep), [tokens, vocab] float32 kept.

FLOPs (model FLOPs, for MFU; recomputation by checkpointing or the fused head is not counted):
  dense  = 6 x (parameters of every Linear, lm_head included: embeddings are tied, so the vocab
           matrix is counted once, as the lm_head matmul) x tokens
  attn   = 6 x layers x (heads x head_dim) x sum over documents of L (L + 1)
           (forward: QK^T and AV each 2 x heads x head_dim FLOPs per causal query-key pair, and a
           document of L tokens has L (L + 1) / 2 pairs; backward = 2 x forward). Only pairs
           inside a document count: a packed row's attention is block-diagonal, so padding and
           cross-document pairs are not useful work, whatever the kernel computes.
  MFU = (dense + attn) / forward+backward seconds / peak (default 989 TFLOP/s, H100 SXM dense
  bf16); also reported: mfu_dense_only (6 N tokens) and mfu_with_optimizer (step time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefix_rft.train import logprobs as lp  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0


def qwen2_5_1_5b_config():
    """Qwen/Qwen2.5-1.5B's config.json, written out (1.54 B parameters, embeddings tied)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643,
        eos_token_id=151643, hidden_act="silu", hidden_size=1536, initializer_range=0.02,
        intermediate_size=8960, max_position_embeddings=131072, max_window_layers=28,
        num_attention_heads=12, num_hidden_layers=28, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_theta=1000000.0, sliding_window=131072, use_sliding_window=False,
        tie_word_embeddings=True, use_cache=False, vocab_size=151936,
    )


def tiny_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096,
        tie_word_embeddings=True, use_cache=False,
    )


# ---------------------------------------------------------------------------- workload
def make_rows(n_rows: int, seq: int, doc_min: int, doc_max: int, vocab: int, seed: int):
    """n_rows rows of exactly `seq` tokens; each row a list of documents of L + 1 token ids
    (L inputs, the last id only a target)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n_rows):
        docs, left = [], seq
        while left > 0:
            n = min(left, rng.randint(doc_min, doc_max))
            docs.append(torch.randint(0, vocab, (n + 1,), generator=g).tolist())
            left -= n
        rows.append(docs)
    return rows


def n_linear_params(model) -> int:
    # a tied lm_head is the embedding matrix: counted here once, as the lm_head matmul
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_of(model, rows_docs) -> dict:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hq = cfg.num_attention_heads * head_dim
    lengths = [len(d) - 1 for row in rows_docs for d in row]
    tokens = sum(lengths)
    dense = 6 * n_linear_params(model) * tokens
    attn = 6 * cfg.num_hidden_layers * hq * sum(L * (L + 1) for L in lengths)
    return {"tokens": tokens, "documents": len(lengths), "dense": dense, "attn": attn}


# ---------------------------------------------------------------------------- passes
def _head(model, hidden, targets, head: str, chunk: int):
    if head == "fused":
        lm = model.get_output_embeddings()
        logp, _ = lp._ChunkedLogprobHead.apply(hidden, lm.weight, lm.bias, targets, 1.0, chunk, False)
        return logp
    logits = model.get_output_embeddings()(hidden).float()
    return lp.logprobs_from_logits(logits, targets, 1.0)


def micro_batches(rows_docs, micro_rows: int, layout: str, attention: str, device):
    """Prepared (kind, tensors) micro-batches on `device`."""
    out = []
    for s in range(0, len(rows_docs), micro_rows):
        rows = rows_docs[s : s + micro_rows]
        docs = [d for row in rows for d in row]
        if layout == "padded":
            width = max(len(d) - 1 for d in docs)
            ids = torch.zeros((len(docs), width), dtype=torch.long)
            tgt = torch.zeros((len(docs), width), dtype=torch.long)
            mask = torch.zeros((len(docs), width), dtype=torch.long)
            for i, d in enumerate(docs):
                n = len(d) - 1
                ids[i, :n], tgt[i, :n], mask[i, :n] = torch.tensor(d[:-1]), torch.tensor(d[1:]), 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            sel = mask.bool().reshape(-1)
            out.append(("padded", {"ids": ids.to(device), "mask": mask.to(device), "pos": pos.to(device),
                                   "sel": sel.nonzero()[:, 0].to(device),
                                   "tgt": tgt.reshape(-1)[sel].to(device)}))
        elif attention == "varlen":
            (batch,) = lp.pack_sequences([d[:1] for d in docs], [d[1:] for d in docs])
            out.append(("row", batch))
        else:  # [R, seq] rows, positions restarting per document: transformers' packed mask
            ids = torch.tensor([[t for d in row for t in d[:-1]] for row in rows])
            pos = torch.tensor([[p for d in row for p in range(len(d) - 1)] for row in rows])
            tgt = torch.tensor([[t for d in row for t in d[1:]] for row in rows]).reshape(-1)
            out.append(("rows", {"ids": ids.to(device), "pos": pos.to(device), "tgt": tgt.to(device)}))
    return out


def forward_backward(model, mb, args, scale: float) -> float:
    kind, b = mb
    base = getattr(model, model.base_model_prefix)
    if kind == "row":
        logp, _ = lp.packed_logprobs(model, b, temperature=1.0, chunk=args.chunk,
                                     attention="varlen", head=args.head)
    elif kind == "rows":
        h = base(input_ids=b["ids"], position_ids=b["pos"], use_cache=False).last_hidden_state
        logp = _head(model, h.reshape(-1, h.shape[-1]), b["tgt"], args.head, args.chunk)
    else:
        h = base(input_ids=b["ids"], attention_mask=b["mask"], position_ids=b["pos"],
                 use_cache=False).last_hidden_state
        h = h.reshape(-1, h.shape[-1]).index_select(0, b["sel"])
        logp = _head(model, h, b["tgt"], args.head, args.chunk)
    loss = -logp.sum() * scale
    loss.backward()
    return float(loss.detach())


# ---------------------------------------------------------------------------- main
def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny Qwen2 config, 512-token rows, CPU smoke")
    p.add_argument("--seq", type=int, default=None, help="tokens per packed row (default 4096; tiny 512)")
    p.add_argument("--doc-min", type=int, default=None, help="shortest document (default seq/16)")
    p.add_argument("--doc-max", type=int, default=None, help="longest document (default 3 seq/4)")
    p.add_argument("--micro-rows", type=int, default=1, help="rows per forward/backward")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--layout", choices=["packed", "padded"], default="packed")
    p.add_argument("--attention", choices=["varlen", "mask"], default="varlen",
                   help="packed layout: per-document varlen attention, or transformers' packed mask")
    p.add_argument("--attn-impl", default="sdpa", help="model attention: sdpa | eager | flex_attention")
    p.add_argument("--head", choices=["fused", "model"], default="fused")
    p.add_argument("--chunk", type=int, default=2048, help="positions per chunk of the fused head")
    p.add_argument("--precision", choices=["bf16", "amp", "fp32"], default=None,
                   help="bf16 = bf16 parameters (default on CUDA); amp = fp32 master parameters "
                        "+ bf16 autocast; fp32 (default on CPU)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    p.add_argument("--compile", action="store_true", help="torch.compile every decoder layer")
    p.add_argument("--no-optimizer", action="store_true", help="skip the AdamW step")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2; tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 5; tiny 2)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    a.seq = a.seq or (512 if a.tiny else 4096)
    a.doc_min = a.doc_min or max(1, a.seq // 16)
    a.doc_max = a.doc_max or max(a.doc_min, 3 * a.seq // 4)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 2)
    a.steps = a.steps if a.steps is not None else (2 if a.tiny else 5)
    a.precision = a.precision or ("bf16" if cuda else "fp32")
    if a.peak_tflops is None and cuda:
        a.peak_tflops = H100_BF16_DENSE_TFLOPS
    return a


def main(argv=None) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM

    a = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = tiny_config() if a.tiny else qwen2_5_1_5b_config()
    pdtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    torch.manual_seed(a.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=pdtype, attn_implementation=a.attn_impl)
    model.train()
    if a.checkpointing:
        from prefix_rft.models import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    if a.compile:
        from prefix_rft.train.precision import compile_layers

        compile_layers(model)  # what model.compile_layers does in the trainer
    n_params = sum(p.numel() for p in model.parameters())
    opt = None if a.no_optimizer else torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    rows_per_step = a.micro_rows * a.accum
    all_rows = make_rows(rows_per_step * (a.warmup + a.steps), a.seq, a.doc_min, a.doc_max,
                         cfg.vocab_size, a.seed)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if a.precision == "amp"
                else torch.autocast(device.type, enabled=False))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    steps = []
    for k in range(a.warmup + a.steps):
        rows = all_rows[k * rows_per_step : (k + 1) * rows_per_step]
        fl = flops_of(model, rows)
        mbs = micro_batches(rows, a.micro_rows, a.layout, a.attention, device)
        sync()
        t0 = time.perf_counter()
        loss = 0.0
        with autocast:
            for mb in mbs:
                loss += forward_backward(model, mb, a, 1.0 / fl["tokens"])
        sync()
        t1 = time.perf_counter()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        sync()
        t2 = time.perf_counter()
        fb, step = t1 - t0, t2 - t0
        row = {"step": k, "timed": k >= a.warmup, "loss": loss, "fwd_bwd_s": fb, "optimizer_s": t2 - t1,
               "tokens": fl["tokens"], "documents": fl["documents"],
               "tokens_per_s": fl["tokens"] / fb, "step_tokens_per_s": fl["tokens"] / step,
               "flops_dense": fl["dense"], "flops_attn": fl["attn"]}
        if a.peak_tflops:
            peak = a.peak_tflops * 1e12
            row["mfu"] = (fl["dense"] + fl["attn"]) / fb / peak
            row["mfu_dense_only"] = fl["dense"] / fb / peak
            row["mfu_with_optimizer"] = (fl["dense"] + fl["attn"]) / step / peak
        steps.append(row)
        print(f"step {k}{'' if row['timed'] else ' (warm-up)'}: {fl['tokens']} tokens in "
              f"{fl['documents']} docs, fwd+bwd {fb:.3f} s ({row['tokens_per_s']:,.0f} tok/s"
              + (f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else "")
              + f"), optimizer {t2 - t1:.3f} s, loss {loss:.3f}", flush=True)
    timed = [r for r in steps if r["timed"]]
    summary = {k: statistics.median(r[k] for r in timed)
               for k in ("fwd_bwd_s", "optimizer_s", "tokens", "tokens_per_s", "step_tokens_per_s",
                         "mfu", "mfu_dense_only", "mfu_with_optimizer") if k in timed[0]}
    if torch.cuda.is_available():
        summary["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        summary["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    else:
        summary["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    result = {
        "benchmark": "train_throughput", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "env": {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "model": {"config": "tiny" if a.tiny else "Qwen2.5-1.5B", "n_params": n_params,
                  "n_linear_params": n_linear_params(model), "layers": cfg.num_hidden_layers,
                  "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
                  "kv_heads": cfg.num_key_value_heads, "vocab": cfg.vocab_size},
        "settings": {k: getattr(a, k) for k in ("seq", "doc_min", "doc_max", "micro_rows", "accum",
                                                "layout", "attention", "attn_impl", "head",
                                                "chunk", "precision",
                                                "checkpointing", "compile", "warmup", "steps",
                                                "peak_tflops")},
        "summary": summary, "steps": steps,
    }
    print(json.dumps({"summary": summary, "settings": result["settings"]}, indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
