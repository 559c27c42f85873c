"""How a Prefix-RFT run maps to GPUs: memory per GPU and the rollout/training time split,
computed from the model's config (no weights needed). `docs/SCALING.md` is this script's output.

    python perf/scaling.py                      # Qwen2.5-Math-7B, the paper's settings
    python perf/scaling.py --model 1.5b --gpus 1,2,4,8 --mean-response 3000

Memory per GPU for training with FSDP2 full sharding over N GPUs (mixed precision: fp32 master
weights, gradients and AdamW moments sharded; bf16 compute), for one micro-batch of
`--micro-batch` sequences of prompt + L_max tokens:

    sharded state   (4 + 4 + 8) bytes x P / N      fp32 params, fp32 grads, AdamW m and v
    gathered layer  2 x 2 x P_layer                bf16 weights of the layer being computed
                                                   (FSDP2 prefetches the next one)
    activations     no checkpointing:  34 x s x h bytes per layer (Korthikanti et al. 2022,
                                       flash attention: no s^2 term) x layers
                    checkpointing:     2 x s x h per layer (the saved layer inputs)
                                       + 34 x s x h (one layer recomputed in backward)
    logits          response tokens x vocab x (2 bf16 + 4 fp32 log-softmax + 4 grad) bytes
                    (the trainer keeps logits only for response positions: logits_to_keep)

Time per RL step (128 prompts x 8 samples): rollout tokens / generation rate versus training
FLOPs (6 x P x tokens, + 2 x P x tokens for the old-log-prob pass) / (N x peak x MFU). The
generation rate per GPU is an input (default from our vLLM measurement scaled by parameter
count, see docs/PERFORMANCE.md); change it when you have a measurement for your model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = True  # Qwen2 has q/k/v biases, LLaMA has none

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params_per_layer(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o
        if self.qkv_bias:
            attn += h + 2 * kv
        mlp = 3 * h * self.intermediate
        return attn + mlp + 2 * h  # two RMSNorm weights

    def params(self) -> int:
        emb = self.vocab * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return self.layers * self.params_per_layer() + emb + head + self.hidden


# config.json of the released models, written out (hidden_size, intermediate_size,
# num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings)
MODELS = {
    "7b": Arch("Qwen2.5-Math-7B", 3584, 18944, 28, 28, 4, 152064, False),
    "1.5b": Arch("Qwen2.5-Math-1.5B", 1536, 8960, 28, 12, 2, 151936, True),
    "8b": Arch("LLaMA-3.1-8B", 4096, 14336, 32, 32, 8, 128256, False, qkv_bias=False),
}


def train_memory(a: Arch, gpus: int, seq: int, resp: int, micro: int, checkpointing: bool) -> dict:
    p = a.params()
    state = 16 * p / gpus
    gathered = 2 * 2 * a.params_per_layer()
    per_layer_full = 34 * seq * micro * a.hidden
    if checkpointing:
        acts = a.layers * 2 * seq * micro * a.hidden + per_layer_full
    else:
        acts = a.layers * per_layer_full
    logits = resp * micro * a.vocab * (2 + 4 + 4)
    total = state + gathered + acts + logits
    return {"state": state, "gathered": gathered, "activations": acts, "logits": logits,
            "total": total}


def kv_bytes_per_token(a: Arch) -> int:
    return 2 * a.layers * a.kv_heads * a.head_dim * 2  # K and V, bf16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="7b", choices=sorted(MODELS))
    ap.add_argument("--gpus", default="1,2,4,8")
    ap.add_argument("--gpu-memory-gib", type=float, default=80.0, help="H100 80GB")
    ap.add_argument("--prompt", type=int, default=300, help="mean prompt tokens")
    ap.add_argument("--l-max", type=int, default=8192, help="L_max (paper: 8192)")
    ap.add_argument("--mean-response", type=int, default=3000,
                    help="mean generated response tokens per sample (assumption)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    ap.add_argument("--mfu", type=float, default=0.35, help="achieved fraction of peak in training")
    ap.add_argument("--gen-tokens-per-s", type=float, default=None,
                    help="generation rate per GPU (default: 19,208 tok/s measured for a 1.39B "
                    "model with vLLM on one H100, scaled by 1.39B / P)")
    a = ap.parse_args()
    arch = MODELS[a.model]
    p = arch.params()
    gpus = [int(x) for x in a.gpus.split(",")]
    seq = a.prompt + a.l_max
    gen_rate = a.gen_tokens_per_s or 19208.0 * 1.39e9 / p
    out = [f"## {arch.name}: {p / 1e9:.2f} B parameters "
           f"(hidden {arch.hidden}, {arch.layers} layers, {arch.heads}/{arch.kv_heads} heads, "
           f"vocab {arch.vocab}, tied embeddings {arch.tied})", ""]
    out += [f"Training memory per GPU, FSDP2 full shard, micro-batch {a.micro_batch} x "
            f"{seq} tokens (prompt {a.prompt} + L_max {a.l_max}), GiB:", "",
            "| GPUs | sharded fp32 state | gathered layer | activations (no ckpt / ckpt) | "
            "logits | total (no ckpt / ckpt) | fits 80 GiB? |", "|---|---|---|---|---|---|---|"]
    for n in gpus:
        m0 = train_memory(arch, n, seq, a.l_max, a.micro_batch, False)
        m1 = train_memory(arch, n, seq, a.l_max, a.micro_batch, True)
        fits = "yes" if m0["total"] / GiB < a.gpu_memory_gib else (
            "with checkpointing" if m1["total"] / GiB < a.gpu_memory_gib else "no")
        out.append(f"| {n} | {m0['state'] / GiB:.1f} | {m0['gathered'] / GiB:.2f} | "
                   f"{m0['activations'] / GiB:.1f} / {m1['activations'] / GiB:.1f} | "
                   f"{m0['logits'] / GiB:.1f} | {m0['total'] / GiB:.1f} / {m1['total'] / GiB:.1f} | "
                   f"{fits} |")
    samples = a.prompts * a.group
    gen_tokens = samples * a.mean_response
    train_tokens = samples * (a.prompt + a.mean_response)
    flops = (6 + 2) * p * train_tokens  # forward+backward, plus the old-log-prob forward
    kv = kv_bytes_per_token(arch)
    out += ["", f"One RL step: {a.prompts} prompts x {a.group} samples, mean response "
            f"{a.mean_response} tokens -> {gen_tokens / 1e6:.2f} M generated tokens, "
            f"{train_tokens / 1e6:.2f} M trained tokens, {flops / 1e15:.0f} PFLOP of training "
            f"(8 x P x tokens). KV cache: {kv / 1024:.0f} KiB per token, so one GPU's 40 GiB of "
            f"cache holds {40 * GiB / kv / 1e3:.0f} k tokens ({40 * GiB / kv / (a.prompt + a.l_max):.0f} "
            "full-length sequences) in flight.", "",
            f"Time per step (generation {gen_rate:,.0f} tokens/s per GPU; training at "
            f"{a.mfu:.0%} of {a.peak_tflops:.0f} TFLOP/s):", "",
            "| GPUs | rollout s | training s | step s | rollout share | 500 steps, h |",
            "|---|---|---|---|---|---|"]
    for n in gpus:
        t_gen = gen_tokens / (gen_rate * n)
        t_train = flops / (n * a.peak_tflops * 1e12 * a.mfu)
        step = t_gen + t_train
        out.append(f"| {n} | {t_gen:.0f} | {t_train:.0f} | {step:.0f} | {t_gen / step:.0%} | "
                   f"{500 * step / 3600:.1f} |")
    out += ["", "Assumptions: sequences are not packed (one micro-batch = the padded longest "
            "sequence); rollout and training share the GPUs in turn (colocated, as verl/LUFFY); "
            "the generation rate is per GPU at large batch and ignores the long tail of the "
            "longest responses. Every number above is from "
            f"`python perf/scaling.py --model {a.model} --gpus {a.gpus}`."]
    print("\n".join(out))


if __name__ == "__main__":
    main()
