"""Per-token log-probs and entropies of response positions only.

Layout of a micro-batch: [left-padded prompt | response | right padding]. The model is run on
everything but the last column and asked for the logits of the last R positions only
(`logits_to_keep`), which predict exactly the R response tokens. Logits are divided by the
sampling temperature. Entropy is computed under no_grad, in chunks of positions, so no
full-vocabulary softmax is ever kept for the backward pass.

Packed (padding-free) passes, further down: `pack_sequences` concatenates sequences into one row
per token budget with restarting position ids; `packed_logprobs` runs the model with attention
restricted to each sequence and sends only response positions through a chunked lm_head
log-softmax (`packed_score` is `score` on top of it). They return what `score` /
`response_logits` + `logprobs_from_logits` return (tests/test_logprobs_packed.py).

The training passes, last: `passes` runs micro-batches of rows either way (`packed`) and yields a
`Pass` that maps per-row tensors to and from its layout; `score` is its no-grad form, per row.
The trainer's scoring, backward and demo-NLL passes all go through it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, P + R - 1]
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor  # [B, R]
    response_mask: torch.Tensor  # [B, R] bool: real response tokens


def collate(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> MicroBatch:
    b = len(prompts)
    p_max = max(len(p) for p in prompts)
    r_max = max(1, max(len(r) for r in responses))
    width = p_max + r_max
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, p_max - len(p) : p_max] = torch.tensor(list(p), dtype=torch.long)
        mask[i, p_max - len(p) : p_max] = 1
        if len(r):
            ids[i, p_max : p_max + len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, p_max : p_max + len(r)] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    resp = ids[:, p_max:]
    resp_mask = mask[:, p_max:].bool()
    return MicroBatch(ids[:, :-1], mask[:, :-1], position_ids[:, :-1], resp, resp_mask)


def response_logits(model, mb: MicroBatch) -> torch.Tensor:
    """Logits [B, R, V] of the response positions (float32)."""
    dev = next(model.parameters()).device
    r = mb.response_ids.shape[1]
    out = model(
        input_ids=mb.input_ids.to(dev),
        attention_mask=mb.attention_mask.to(dev),
        position_ids=mb.position_ids.to(dev),
        logits_to_keep=r,
        use_cache=False,
    )
    return out.logits[:, -r:, :].float()


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[target] without materialising the softmax."""
    scaled = logits / temperature
    picked = scaled.gather(-1, targets[..., None].to(scaled.device))[..., 0]
    return picked - torch.logsumexp(scaled, dim=-1)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position, chunked over positions, no grad."""
    flat = logits.detach().reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for s in range(0, flat.shape[0], chunk):
        x = flat[s : s + chunk].float() / temperature
        logz = torch.logsumexp(x, dim=-1)
        p = torch.softmax(x, dim=-1)
        out[s : s + chunk] = logz - (p * x).sum(-1)
    return out.reshape(logits.shape[:-1])


# ---------------------------------------------------------------------------- packed (padding-free)
# Several (prompt, response) sequences are concatenated into ONE row with no padding; position ids
# restart at 0 for every sequence, and attention is restricted to each sequence (block-diagonal
# causal). Only the hidden states of positions that predict a response token go through the
# output head, in chunks, so neither padding nor prompt positions cost an lm_head matmul and no
# [tokens, vocab] tensor is kept for the backward pass.
#
# Attention over packed sequences (`attention` of `packed_logprobs`):
#   "varlen" (default): the sequence boundaries (`cu_seq_lens_q/k`, `max_length_q/k`, the
#       kwargs transformers' flash path reads) go with the call. A model running
#       flash_attention_2/3/4 uses them as they are. Any other model gets, once,
#       `install_varlen_attention`: its attention implementation becomes a dispatcher that runs
#       packed calls per sequence - torch's FlashAttention varlen kernel
#       (`torch.nn.attention.varlen.varlen_attn`, CUDA, bf16/fp16; no flash-attn package) or,
#       elsewhere, one causal SDPA call per sequence - and hands every other call (generation,
#       padded batches) to the original implementation with its own mask, unchanged. Cost ~ sum
#       of L_i^2, never T^2. The switch is permanent rather than a context around the forward
#       because activation checkpointing re-runs the layers during backward, after any context
#       would have closed.
#   "mask": only the restarting position ids: transformers (5.17 and 5.24,
#       `masking_utils.find_packed_sequence_indices`; attention_mask None and no cache) builds a
#       block-diagonal causal mask for the model's own implementation: a dense [T, T] mask for
#       sdpa/eager (SDPA then cannot use its flash kernel; cost ~ T^2), a BlockMask that skips
#       off-diagonal blocks for flex_attention, varlen from position ids for flash_attention_*.
# `use_cache=False` is passed explicitly: with a cache, transformers skips packed detection.


@dataclass
class PackedBatch:
    """Sequences packed into one row [1, T] (T = sum of prompt + response - 1 over sequences)."""

    input_ids: torch.Tensor  # [1, T] long
    position_ids: torch.Tensor  # [1, T] long, restarting at 0 for every sequence
    cu_seqlens: torch.Tensor  # [n + 1] int32: boundaries of the n sequences in the row
    max_seqlen: int
    logit_index: torch.Tensor  # [N] long: row positions whose next-token logits score a response token
    targets: torch.Tensor  # [N] long: those response tokens
    rows: list[int]  # caller's index of each packed sequence, in row order
    response_lens: list[int]  # response tokens of each packed sequence (sum = N)

    @property
    def num_tokens(self) -> int:
        """Tokens in the row (what a forward pass costs)."""
        return int(self.input_ids.shape[1])

    @property
    def seq_lens(self) -> list[int]:
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).tolist()

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """[N] per-token values in packing order -> one tensor per packed sequence (`rows` order)."""
        return list(torch.split(values, self.response_lens))

    def gather(self, per_row: Sequence[torch.Tensor], device=None) -> torch.Tensor:
        """Per-sequence 1-D tensors indexed like the caller's list (e.g. old log-probs, advantages
        expanded to the response length, token weights) -> [N] in packing order, on `device`."""
        parts = [torch.as_tensor(per_row[i])[:n] for i, n in zip(self.rows, self.response_lens)]
        out = torch.cat(parts) if parts else torch.zeros(0)
        return out.to(device) if device is not None else out


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    max_tokens: int | None = None,
    sort: bool = False,
) -> list[PackedBatch]:
    """Pack (prompt, response) pairs into padding-free rows of at most `max_tokens` tokens each
    (a longer sequence gets a row of its own; None = everything in one row).

    Sequence i contributes prompt + response[:-1] (the last response token is only a target).
    Pairs with an empty response are skipped (they have nothing to score); a response needs a
    non-empty prompt. `sort`: first-fit decreasing by length (fewer rows) instead of the given
    order. Every pair with a response appears in exactly one batch; `PackedBatch.rows` maps back.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses differ in length: {len(prompts)} vs {len(responses)}")
    items = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if len(r) == 0:
            continue
        if len(p) == 0:
            raise ValueError(f"sequence {i}: empty prompt (the first response token has no context)")
        items.append((i, len(p) + len(r) - 1))
    groups: list[list[tuple[int, int]]] = []
    if sort:
        loads: list[int] = []
        for i, n in sorted(items, key=lambda x: -x[1]):
            for g, load in enumerate(loads):
                if max_tokens is None or load + n <= max_tokens:
                    groups[g].append((i, n))
                    loads[g] += n
                    break
            else:
                groups.append([(i, n)])
                loads.append(n)
    else:
        load = 0
        for i, n in items:
            if groups and (max_tokens is None or load + n <= max_tokens):
                groups[-1].append((i, n))
                load += n
            else:
                groups.append([(i, n)])
                load = n
    return [_pack_group(prompts, responses, [i for i, _ in g]) for g in groups]


def _pack_group(prompts, responses, rows: list[int]) -> PackedBatch:
    ids, pos, index, targets, bounds, rlens = [], [], [], [], [0], []
    offset = 0
    for i in rows:
        p, r = list(prompts[i]), list(responses[i])
        seq = p + r[:-1]
        ids.extend(seq)
        pos.extend(range(len(seq)))
        index.extend(range(offset + len(p) - 1, offset + len(seq)))
        targets.extend(r)
        offset += len(seq)
        bounds.append(offset)
        rlens.append(len(r))
    lens = [b - a for a, b in zip(bounds, bounds[1:])]
    return PackedBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        max_seqlen=max(lens),
        logit_index=torch.tensor(index, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        rows=list(rows),
        response_lens=rlens,
    )


# -- attention -------------------------------------------------------------------------------
VARLEN_ATTENTION = "prefix_rft_varlen"
_FLASH_NAMES = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def _flash_varlen_fn():
    """torch's varlen flash attention (torch >= 2.9 on CUDA), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _varlen_params() -> frozenset:
    import inspect

    return frozenset(inspect.signature(_flash_varlen_fn()).parameters)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _varlen_cuda(q, k, v, cu, max_len: int, scale):
    """q/k/v [T, H, D] -> [T, H, D] with torch's FlashAttention varlen kernel, causal per sequence
    (the keyword names changed across torch releases: is_causal, later window_size/enable_gqa)."""
    fn = _flash_varlen_fn()
    params = _varlen_params()
    kw = {"scale": scale}
    if "is_causal" in params:
        kw["is_causal"] = True
    else:
        kw["window_size"] = (-1, 0)  # (left, right) = causal
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    cu = cu.to(device=q.device, dtype=torch.int32)
    return fn(q, k, v, cu, cu, max_len, max_len, **kw)


def _use_flash_varlen(q: torch.Tensor) -> bool:
    return (
        q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] <= 256
        and _flash_varlen_fn() is not None and _capability(q.device.index or 0)[0] >= 8
    )


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """Attention of one packed row: query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D],
    None), causal inside each sequence of `cu_seq_lens_q` (`max_length_q` the longest)."""
    cu, max_len = kwargs["cu_seq_lens_q"], kwargs.get("max_length_q")
    if query.shape[0] != 1:
        raise ValueError(f"{VARLEN_ATTENTION}: expects one packed row, got batch {query.shape[0]}")
    if _use_flash_varlen(query):
        if max_len is None:
            max_len = int((cu[1:] - cu[:-1]).max())
        out = _varlen_cuda(query[0].transpose(0, 1), key[0].transpose(0, 1),
                           value[0].transpose(0, 1), cu, int(max_len), scaling)
        return out.unsqueeze(0), None
    bounds = cu.tolist()
    gqa = key.shape[1] != query.shape[1]
    outs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], is_causal=True, scale=scaling,
            enable_gqa=gqa,
        )
        for a, b in zip(bounds, bounds[1:])
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _dispatcher(original: str):
    """Attention function: packed calls (cu_seq_lens_q given) -> varlen; others -> `original`."""
    import sys

    from transformers import AttentionInterface

    interface = AttentionInterface()

    def attention(module, query, key, value, attention_mask, **kwargs):
        if kwargs.get("cu_seq_lens_q") is not None:
            return varlen_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if original == "eager":  # each modeling file has its own eager function
            fn = sys.modules[type(module).__module__].eager_attention_forward
        else:
            fn = interface[original]
        return fn(module, query, key, value, attention_mask, **kwargs)

    return attention


def install_varlen_attention(model) -> str:
    """Give `model` varlen attention for packed calls (idempotent; returns the implementation's
    name). Calls without `cu_seq_lens_q` - generation, padded batches - still run the model's
    original implementation with the mask transformers builds for it, so they are unchanged.
    Models on flash_attention_* already read `cu_seq_lens_q` and are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    current = model.config._attn_implementation or "eager"
    if current.startswith(VARLEN_ATTENTION) or current in _FLASH_NAMES:
        return current
    if current not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ValueError(f"attention implementation {current!r}: no mask function to keep for "
                         "unpacked calls; use attention='mask' or load the model with sdpa/eager")
    name = f"{VARLEN_ATTENTION}_{current}"
    AttentionInterface.register(name, _dispatcher(current))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    model.config._attn_implementation = name
    return name


def _packed_call_kwargs(model, batch: PackedBatch, attention: str, device) -> dict:
    """Extra forward kwargs of a packed call (besides input_ids and position_ids)."""
    if attention == "mask":
        return {}
    if attention != "varlen":
        raise ValueError(f"attention {attention!r}: expected 'varlen' or 'mask'")
    name = install_varlen_attention(model)
    cu = batch.cu_seqlens.to(device)
    kw = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": batch.max_seqlen,
          "max_length_k": batch.max_seqlen}
    if name not in _FLASH_NAMES:
        # a 4-D mask is passed through as it is: transformers then builds no [T, T] mask, which
        # the varlen path would not read anyway
        kw["attention_mask"] = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device)
    return kw


# -- output head -------------------------------------------------------------------------------
class _ChunkedLogprobHead(torch.autograd.Function):
    """log softmax(h W^T + b) / T at the targets, for hidden states h [N, H], computed in chunks
    of positions. Forward keeps only h (not the [N, V] logits); backward recomputes each chunk's
    logits. Entropy (optional) comes out of the same forward, without gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk: int, want_entropy: bool):
        n = hidden.shape[0]
        acc = torch.promote_types(weight.dtype, torch.float32)  # float32 (float64 in gradcheck)
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        ent = torch.empty(n if want_entropy else 0, dtype=acc, device=hidden.device)
        for s in range(0, n, chunk):
            x = torch.nn.functional.linear(hidden[s : s + chunk], weight, bias).to(acc) / temperature
            lse = torch.logsumexp(x, dim=-1)
            logp[s : s + chunk] = x.gather(-1, targets[s : s + chunk, None])[:, 0] - lse
            if want_entropy:
                ent[s : s + chunk] = lse - (torch.softmax(x, dim=-1) * x).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.temperature, ctx.chunk = temperature, chunk
        dev = hidden.device.type  # backward recomputes the logits as the forward did (autocast)
        ctx.autocast = (dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        dev, enabled, dtype = ctx.autocast
        with torch.autocast(dev, dtype=dtype, enabled=enabled):
            return _ChunkedLogprobHead._backward(ctx, g_logp)

    @staticmethod
    def _backward(ctx, g_logp):
        hidden, weight, bias, targets = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = (torch.zeros(bias.shape, dtype=acc, device=bias.device)
                  if need_b and bias is not None else None)
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            x = torch.nn.functional.linear(h, weight, bias).to(acc) / t
            g = g_logp[s : s + chunk].to(acc)
            # d logp / d logits = (onehot(target) - softmax) / T
            d = torch.softmax(x, dim=-1).mul_(-g[:, None])
            d.scatter_add_(1, targets[s : s + chunk, None], g[:, None]).div_(t)
            dw = d.to(weight.dtype)
            if grad_h is not None:
                grad_h[s : s + chunk] = dw @ weight
            if grad_w is not None:
                grad_w.add_(dw.t() @ h)
            if grad_b is not None:
                grad_b.add_(d.sum(0))
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None, None)


def _sharded(model) -> bool:
    """FSDP2 / DTensor parameters: the fused head calls the base model and reads the lm_head
    weight directly, bypassing the root module's unshard hooks, so it cannot run on them."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def _fused_head_ok(model) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = model.config
    return (
        isinstance(head, torch.nn.Linear)
        and not _sharded(model)
        and hasattr(model, getattr(model, "base_model_prefix", "") or "-")
        and not getattr(cfg, "final_logit_softcapping", None)
        and getattr(cfg, "logit_scale", None) in (None, 1.0)
        and getattr(cfg, "logits_scaling", None) in (None, 1.0)
    )


def packed_logprobs(
    model,
    batch: PackedBatch,
    *,
    temperature: float,
    with_entropy: bool = False,
    chunk: int = 1024,
    attention: str = "varlen",
    head: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [N] of the batch's response tokens in packing order (differentiable when grad
    is enabled) and, with `with_entropy`, their entropies [N] (no grad), both float32 on the
    model's device. Use `batch.split` / `batch.gather` to go to and from per-sequence tensors.

    `head`: "fused" = the base model's hidden states at the N response positions through the
    chunked lm_head log-softmax (`_ChunkedLogprobHead`; no [N, V] tensor kept for backward);
    "model" = the full model with `logits_to_keep` = those positions (any head, e.g. soft-capped
    logits; [N, V] logits kept); "auto" = fused when the head is a plain Linear and the
    parameters are not sharded (FSDP2 DTensors: "model", which goes through the root's hooks).
    `attention`: "varlen" | "mask" (see the section comment above); "varlen" installs
    `install_varlen_attention` on the model the first time.
    """
    dev = next(model.parameters()).device
    kwargs = _packed_call_kwargs(model, batch, attention, dev)
    ids = batch.input_ids.to(dev)
    pos = batch.position_ids.to(dev)
    index = batch.logit_index.to(dev)
    targets = batch.targets.to(dev)
    if head == "fused" and _sharded(model):
        raise ValueError("head='fused' cannot run on sharded (FSDP2) parameters; use 'model'")
    if head == "fused" or (head == "auto" and _fused_head_ok(model)):
        base = getattr(model, model.base_model_prefix)
        hidden = base(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).last_hidden_state
        h = hidden[0].index_select(0, index)
        lm = model.get_output_embeddings()
        logp, ent = _ChunkedLogprobHead.apply(h, lm.weight, lm.bias, targets, float(temperature),
                                              int(chunk), bool(with_entropy))
        return logp, (ent if with_entropy else None)
    out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=index, **kwargs)
    logits = out.logits[0].float()
    logp = logprobs_from_logits(logits, targets, temperature)
    ent = entropy_from_logits(logits, temperature, chunk) if with_entropy else None
    return logp, ent


@torch.no_grad()
def packed_score(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    temperature: float,
    max_tokens: int | None,
    with_entropy: bool,
    chunk: int = 1024,
    attention: str = "varlen",
    head: str = "auto",
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """`score` without padding: the same outputs (one CPU tensor per row, empty for an empty
    response), computed on rows of at most `max_tokens` packed tokens."""
    logps = [torch.zeros(0) for _ in prompts]
    ents = [torch.zeros(0) for _ in prompts] if with_entropy else None
    for batch in pack_sequences(prompts, responses, max_tokens=max_tokens):
        lp, ent = packed_logprobs(model, batch, temperature=temperature, with_entropy=with_entropy,
                                  chunk=chunk, attention=attention, head=head)
        for i, x in zip(batch.rows, batch.split(lp.cpu())):
            logps[i] = x.clone()
        if ents is not None:
            for i, x in zip(batch.rows, batch.split(ent.cpu())):
                ents[i] = x.clone()
    return logps, ents


# ---------------------------------------------------------------------------- the training passes
def pad_rows(rows: Sequence[torch.Tensor], width: int, fill, dtype, device) -> torch.Tensor:
    """Right-pad 1-D per-row tensors into a [len(rows), width] tensor on `device`."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for j, x in enumerate(rows):
        out[j, : len(x)] = x
    return out.to(device)


@dataclass
class Pass:
    """One micro-batch's forward: log-probs (and entropies) of its response tokens, in the padded
    layout [B, R] or the packed one [N], and the mapping of per-row 1-D tensors to and from that
    layout, so that code on top of it (the trainer's loss) is the same for both."""

    logp: torch.Tensor
    entropy: torch.Tensor | None
    lens: list[int]  # response length of each row of the micro-batch
    packed: PackedBatch | None = None

    def put(self, rows: Sequence[torch.Tensor], fill, dtype) -> torch.Tensor:
        """Per-row tensors in the layout of `logp` (padding positions hold `fill`)."""
        if self.packed is not None:
            return self.packed.gather(rows, self.logp.device).to(dtype)
        return pad_rows(rows, self.logp.shape[1], fill, dtype, self.logp.device)

    def rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A tensor in the layout of `logp` -> one 1-D tensor per row (empty for no response)."""
        if self.packed is None:
            return [x[i, :n] for i, n in enumerate(self.lens)]
        out = [x.new_zeros(0) for _ in self.lens]
        for i, v in zip(self.packed.rows, self.packed.split(x)):
            out[i] = v
        return out


def _autocast(model, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def passes(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
           pad_id: int, micro_batch_size: int, temperature: float, with_entropy: bool,
           chunk: int = 1024, packed: bool = False, autocast: torch.dtype | None = None):
    """(offset, Pass) per micro-batch of `micro_batch_size` rows: padded (`collate`) or packed
    into one padding-free row (`packed_logprobs`). Differentiable under grad mode; entropies are
    never differentiated. `autocast`: run each forward under torch.autocast in this dtype (the
    backward follows the recorded dtypes; log-probs come out in float32 either way)."""
    for s in range(0, len(prompts), micro_batch_size):
        ps, rs = prompts[s : s + micro_batch_size], responses[s : s + micro_batch_size]
        lens = [len(r) for r in rs]
        if packed:  # no batch when every response is empty: nothing to score
            for b in pack_sequences(ps, rs, max_tokens=None):
                with _autocast(model, autocast):
                    logp, ent = packed_logprobs(model, b, temperature=temperature,
                                                with_entropy=with_entropy, chunk=chunk)
                yield s, Pass(logp.float(), None if ent is None else ent.float(), lens, b)
            continue
        mb = collate(ps, rs, pad_id)
        with _autocast(model, autocast):
            logits = response_logits(model, mb)
        if autocast is not None:  # the head ran in `autocast`; the softmax runs in float32
            logits = logits.float()
        logp = logprobs_from_logits(logits, mb.response_ids, temperature)
        ent = entropy_from_logits(logits, temperature, chunk) if with_entropy else None
        del logits
        yield s, Pass(logp.float(), None if ent is None else ent.float(), lens)


@torch.no_grad()
def score(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_id: int,
    temperature: float,
    micro_batch_size: int,
    with_entropy: bool,
    chunk: int = 1024,
    packed: bool = False,
    autocast: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """No-grad log-probs (and entropies) of every response token, one 1-D CPU tensor per row,
    through `passes` (padded, or `packed`; under `autocast` if given)."""
    logps = [torch.zeros(0) for _ in prompts]
    ents = [torch.zeros(0) for _ in prompts] if with_entropy else None
    for s, ps in passes(model, prompts, responses, pad_id=pad_id, micro_batch_size=micro_batch_size,
                        temperature=temperature, with_entropy=with_entropy, chunk=chunk,
                        packed=packed, autocast=autocast):
        for j, x in enumerate(ps.rows(ps.logp.cpu())):
            logps[s + j] = x.clone()
        if ents is not None:
            for j, x in enumerate(ps.rows(ps.entropy.cpu())):
                ents[s + j] = x.clone()
    return logps, ents
