"""Static-cache decoding whose whole decode step is one CUDA graph (the HF engine's fast path).

transformers' own fast path (`generate(cache_implementation="static")` + compile) captures the
model's forward, but every decode step still runs generate's Python loop around it: logits
processors, stopping criteria, a device-to-host sync to ask whether all rows are done, input
concatenation. At batch 64 on a 135M model that loop costs more than the forward (about 6 ms a
step on an H100). Here one step -- forward on the last token, temperature / top-p / Gumbel-max
sampling, the token's log-prob, stop and per-row limit bookkeeping, writing the token into an
output buffer -- reads and writes only preallocated device tensors, so it is captured once as a
CUDA graph and replayed; the host asks whether every row is done only every `CHECK_EVERY` steps.

Layout. A chunk of B rows, left-padded to width W, decodes into a static KV cache of L >= W + T
columns (T = the longest row limit): the prompt fills columns 0..W-1 and decode token t is fed at
column W + t - 1 after being written to the output buffer at column W + t. A [B, L] validity mask
says which columns a row may attend to (its real prompt tokens, then every fed token); it goes to
the model as a 4-D boolean mask, which transformers passes to attention as it is (no mask is
built, so nothing in the step depends on Python-side shapes). Pad query positions of the prefill
attend to themselves, so no attention row is empty (an empty row would be NaN).

Sampling is the plain path's, op for op: the same `TemperatureLogitsWarper`, `TopPLogitsWarper`
and hashed Gumbel noise (`hf.gumbel_noise`) on float32 logits, then argmax; log-probs are
log_softmax(logits / T) at the chosen token (T = 1 when greedy). A row's tokens therefore depend
only on its seed and input ids (up to floating point), as on the plain path.

`StaticKVCache` is duck-typed for transformers' decoder layers, which call only
`cache.update(key_states, value_states, layer_idx, ...)` when position ids and a 4-D mask are
given (transformers 5.17 and 5.24, Llama/Qwen2/Mistral-style models; `supports` says which).

The decode step's forward (`FusedDecodeForward`, on by default) is the model's own computation
for one new token per row, written out with the model's own modules (norms, rotary embedding,
activation, output projections, head) but with the GEMMs that read the same input fused: q/k/v
as one and gate/up as one (7 GEMMs a layer become 4), their weights copied into concatenated
buffers at the start of every chunk (the policy changes between rollouts). Its attention packs
the query heads of a key/value head into the query axis (`[B, H, 1, D] -> [B, H_kv, H/H_kv, D]`),
so each cached key/value is read once. Through transformers' own forward a compiled step
(transformers disables its q-length-1 GQA packing under dynamo) would repeat the whole cache
H/H_kv times per layer and step (`repeat_kv`). The prefill still runs the model's forward.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import torch

from prefix_rft.models import decoder_of

log = logging.getLogger(__name__)

CHECK_EVERY = 8
"""Decode steps between two host checks of 'every row is done'."""

RECOMPILE_LIMIT = 64
"""Compiled decoders a process may build (dynamo's per-function cache entries)."""

SUPPORTED_MODEL_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})


def supports(model) -> bool:
    """Whether `model` can decode through `GraphDecoder` (a decoder-only model whose attention
    layers only call `cache.update` and read the 4-D mask as given)."""
    from prefix_rft.train.logprobs import VARLEN_ATTENTION

    cfg = getattr(model, "config", None)
    return (
        getattr(cfg, "model_type", None) in SUPPORTED_MODEL_TYPES
        and not getattr(cfg, "use_sliding_window", False)
        and cfg._attn_implementation in ("sdpa", f"{VARLEN_ATTENTION}_sdpa")  # boolean 4-D masks
    )


class StaticKVCache:
    """Preallocated keys/values [B, H_kv, L, D] per layer. `update` writes the new states at the
    cache columns in `columns` (a device tensor the decoder sets before each forward) and returns
    the whole buffers; the attention mask hides every column a row has not filled."""

    is_compileable = True

    def __init__(self, model, batch: int, length: int):
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        p = next(model.parameters())
        shape = (batch, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=p.dtype, device=p.device)
                     for _ in range(cfg.num_hidden_layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.columns = torch.zeros(1, dtype=torch.long, device=p.device)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k.index_copy_(2, self.columns, key_states.to(k.dtype))
        v.index_copy_(2, self.columns, value_states.to(v.dtype))
        return k, v

    def zero_(self) -> None:
        for t in (*self.keys, *self.values):
            t.zero_()

    def get_seq_length(self, layer_idx: int = 0) -> int:  # only asked when position ids are absent
        raise RuntimeError("StaticKVCache: the decoder always passes position ids")


class FusedDecodeForward:
    """`model`'s logits [B, V] for one token per row (`token` [B], `position` [B, 1], `valid`
    [B, L] the cache columns each row attends to), writing the token's keys/values into `cache`
    at `cache.columns`. The same computation as the model's forward (Llama/Qwen2/Qwen3/Mistral
    decoder layers), with q/k/v and gate/up each one GEMM over weights concatenated by
    `refresh` (call it whenever the weights may have changed) and GQA packed for q length 1."""

    def __init__(self, model):
        import sys

        inner = decoder_of(model)
        self.embed, self.norm, self.rotary = inner.embed_tokens, inner.norm, inner.rotary_emb
        self.head = model.lm_head
        self.layers = list(inner.layers)
        attn0 = self.layers[0].self_attn
        self.rope = sys.modules[type(attn0).__module__].apply_rotary_pos_emb
        self.head_dim = attn0.head_dim
        self.q_out = attn0.q_proj.out_features
        self.kv_out = attn0.k_proj.out_features
        self.mlp_out = self.layers[0].mlp.gate_proj.out_features
        self.qkv_w, self.qkv_b, self.gate_up_w = [], [], []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            w = a.q_proj.weight
            self.qkv_w.append(w.new_empty((self.q_out + 2 * self.kv_out, w.shape[1])))
            self.qkv_b.append(None if a.q_proj.bias is None
                              else w.new_empty(self.q_out + 2 * self.kv_out))
            g = m.gate_proj.weight
            self.gate_up_w.append(g.new_empty((2 * self.mlp_out, g.shape[1])))
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the current q/k/v and gate/up weights into the concatenated buffers (in place:
        a captured graph keeps reading the same addresses)."""
        for layer, qkv, bias, gu in zip(self.layers, self.qkv_w, self.qkv_b, self.gate_up_w):
            a, m = layer.self_attn, layer.mlp
            torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], out=qkv)
            if bias is not None:
                torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], out=bias)
            torch.cat([m.gate_proj.weight, m.up_proj.weight], out=gu)

    def __call__(self, token: torch.Tensor, position: torch.Tensor, valid: torch.Tensor,
                 cache: StaticKVCache) -> torch.Tensor:
        f = torch.nn.functional
        b, d = token.shape[0], self.head_dim
        h = self.embed(token[:, None])  # [B, 1, hidden]
        cos, sin = self.rotary(h, position)
        mask = valid[:, None, None, :]  # [B, 1, 1, L]: every head, the one query (packed: G)
        for i, layer in enumerate(self.layers):
            a, m = layer.self_attn, layer.mlp
            x = layer.input_layernorm(h)
            qkv = f.linear(x, self.qkv_w[i], self.qkv_b[i])
            q, k, v = qkv.split([self.q_out, self.kv_out, self.kv_out], dim=-1)
            q, k, v = q.view(b, 1, -1, d), k.view(b, 1, -1, d), v.view(b, 1, -1, d)
            if hasattr(a, "q_norm"):  # Qwen3: RMSNorm over each head before the rotation
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = self.rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # [B, H(kv), 1, D]
            keys, values = cache.update(k, v.transpose(1, 2), i)
            kv_heads = keys.shape[1]
            q = q.reshape(b, kv_heads, -1, d)  # GQA packed: query head h = kv head h // G
            o = f.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=a.scaling)
            h = h + a.o_proj(o.reshape(b, 1, -1))
            x = layer.post_attention_layernorm(h)
            gate, up = f.linear(x, self.gate_up_w[i]).split([self.mlp_out, self.mlp_out], dim=-1)
            h = h + m.down_proj(m.act_fn(gate) * up)
        return self.head(self.norm(h))[:, 0]


def _fusable(model) -> bool:
    """Whether `FusedDecodeForward` can run `model` (a Llama-style decoder without MLP biases);
    otherwise the decode step runs the model's own forward."""
    inner = decoder_of(model)
    layers = getattr(inner, "layers", None)
    if not layers or not hasattr(model, "lm_head"):
        return False
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    layer = layers[0]
    return (all(hasattr(layer.self_attn, n) for n in names)
            and all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))
            and layer.mlp.gate_proj.bias is None and layer.mlp.up_proj.bias is None
            and hasattr(inner, "rotary_emb"))


@functools.cache
def _cache_kwarg(model_cls: type) -> str:
    """The forward keyword of the cache: `cache` (transformers >= 5.2x) or `past_key_values`."""
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class GraphDecoder:
    """Decodes chunks of exactly `batch` rows into a cache of `length` columns with one sampling
    setting (`temperature` <= 0 = greedy; `processors`: [B, V] scores -> scores, the plain path's
    temperature/top-p warpers; `noise` its Gumbel noise). `graph`: capture the decode step as a CUDA graph (CUDA only);
    `compile`: a torch.compile backend for the step (e.g. "inductor"), None = eager; `fused`:
    the step's forward is `FusedDecodeForward` (False: the model's own forward)."""

    def __init__(self, model, *, batch: int, length: int, pad_id: int, stop_ids, temperature: float,
                 processors: Callable | None, noise: Callable, graph: bool, compile: str | None,
                 fused: bool = True):
        self.model = model
        self.fused = FusedDecodeForward(model) if fused and _fusable(model) else None
        self.batch, self.length = batch, length
        self.pad_id = pad_id
        self.greedy = temperature <= 0
        self.processors = processors
        self.noise = noise
        self.temperature = 1.0 if self.greedy else float(temperature)
        p = next(model.parameters())
        dev = self.device = p.device
        self.cache = StaticKVCache(model, batch, length)
        self._decode_columns = self.cache.columns  # the step's; the prefill swaps in its own
        self._cache_kw = _cache_kwarg(type(model))
        z = functools.partial(torch.zeros, device=dev)
        self.valid = z((batch, length), dtype=torch.bool)  # columns each row may attend to
        self.token = z(batch, dtype=torch.long)  # the token fed next
        self.position = z((batch, 1), dtype=torch.long)  # its position id
        self.column = z(1, dtype=torch.long)  # its cache column
        self.step = z((), dtype=torch.long)  # decode index of the token being sampled
        self.done = z(batch, dtype=torch.bool)
        self.limit = z(batch, dtype=torch.long)
        self.keys = z((batch, 2), dtype=torch.long)
        self.out_tokens = z((batch, length), dtype=torch.long)
        self.out_logprobs = z((batch, length), dtype=torch.float32)
        self.stop = torch.tensor(sorted(set(int(i) for i in stop_ids)), dtype=torch.long, device=dev)
        step = self._step
        if compile:
            if compile == "inductor":
                from prefix_rft.torch_compat import ensure_inductor_importable

                ensure_inductor_importable()
            # Every decoder (shape x sampling setting) compiles `_step` once more; dynamo's default
            # of 8 entries per code object would silently run later decoders uncompiled.
            cfg = torch._dynamo.config
            cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
            step = torch.compile(step, backend=compile, fullgraph=True, dynamic=False)
        self._run = step
        self._graph = None
        self.steps_run = 0
        self.graph_error: str | None = None
        if graph:
            self._capture_or_fall_back()
        self._params = self._param_ptrs()

    # ------------------------------------------------------------------ the step
    def _sample(self, logits: torch.Tensor) -> None:
        """Choose each row's next token from [B, V] logits, record it at column `column + 1`,
        update `done`, and make it the token fed next."""
        x = logits.float()
        logz = torch.log_softmax(x / self.temperature, dim=-1)
        if self.greedy:
            choice = x.argmax(dim=-1)
        else:
            scores = self.processors(x) if self.processors is not None else x
            choice = (scores + self.noise(self.keys, self.step, x.shape[-1])).argmax(dim=-1)
        logp = logz.gather(-1, choice[:, None])[:, 0]
        written = torch.where(self.done, torch.full_like(choice, self.pad_id), choice)
        col = self.column + 1
        self.out_tokens.index_copy_(1, col, written[:, None])
        self.out_logprobs.index_copy_(1, col, logp[:, None])
        stopped = (written[:, None] == self.stop[None, :]).any(dim=-1)
        self.done.logical_or_(stopped | (self.step + 1 >= self.limit))
        self.token.copy_(written)

    def _step(self) -> None:
        """Feed `token` at `column`, sample the next token (everything in place)."""
        self.column.add_(1)
        self.valid.index_fill_(1, self.column, True)
        self.cache.columns.copy_(self.column)
        if self.fused is not None:
            logits = self.fused(self.token, self.position, self.valid, self.cache)
        else:
            logits = self.model(input_ids=self.token[:, None], position_ids=self.position,
                                attention_mask=self.valid[:, None, None, :], use_cache=True,
                                **{self._cache_kw: self.cache}).logits[:, -1]
        self.step.add_(1)
        self._sample(logits)
        self.position.add_(1)

    def _capture_or_fall_back(self) -> None:
        """Capture the (compiled) step; if compiling or capturing fails, the eager step, captured;
        if that fails too, the eager step without a graph. Failures are logged and kept in
        `graph_error` (benchmarks report them): slower, never wrong."""
        errors = []
        for run in dict.fromkeys([self._run, self._step]):  # the compiled step first, if any
            self._run = run
            try:
                self._capture()
                break
            except Exception as e:  # noqa: BLE001 - any failure: the next, simpler way
                errors.append(f"{'compiled' if run is not self._step else 'eager'}: "
                              f"{type(e).__name__}: {e}")
                self._graph = None
                torch.cuda.synchronize(self.device)
        if errors:
            self.graph_error = "; ".join(errors)
            log.warning("decode step: %s; %s", self.graph_error,
                        "captured eagerly" if self._graph is not None else "running without a graph")

    def _capture(self) -> None:
        """Warm the step up on a side stream (compiling it if asked), then record it once."""
        self.valid.fill_(True)  # dummy state: no empty attention row during the warm-up
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._run()
        self.cache.zero_()

    def _param_ptrs(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.model.parameters())

    def still_valid(self) -> bool:
        """A captured graph reads the weights at the addresses they had at capture: False once
        they moved (the engine then builds a new decoder). In-place updates keep addresses."""
        return self._graph is None or self._param_ptrs() == self._params

    # ------------------------------------------------------------------ a chunk
    @torch.no_grad()
    def decode(self, ids: torch.Tensor, mask: torch.Tensor, limits: torch.Tensor,
               keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids/mask [batch, W] (left-padded), limits [batch], keys [batch, 2] -> (tokens, log-probs)
        [batch, T] on the CPU, T = max limit; a row's entries after it stopped are pad / 0."""
        b, width = ids.shape
        steps = int(limits.max())
        if b != self.batch or width + steps > self.length:
            raise ValueError(f"chunk {b} x ({width} + {steps}) does not fit the decoder "
                             f"({self.batch} x {self.length})")
        dev = self.device
        if self.fused is not None:
            self.fused.refresh()  # the policy may have been updated since the last chunk
        ids, mask = ids.to(dev), mask.to(dev).bool()
        self.valid.zero_()
        self.valid[:, :width] = mask
        self.limit.copy_(limits)
        self.keys.copy_(keys)
        self.done.zero_()
        self.step.zero_()
        self.out_tokens.fill_(self.pad_id)
        self.out_logprobs.zero_()
        # prefill: causal inside the prompt, pad columns hidden, a pad query sees itself
        cols = torch.arange(self.length, device=dev)
        rows = torch.arange(width, device=dev)
        attn = (cols[None, :] <= rows[:, None])[None] & self.valid[:, None, :]
        attn |= (cols[None, :] == rows[:, None])[None]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        self.cache.columns = torch.arange(width, device=dev)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=attn[:, None],
                         use_cache=True, logits_to_keep=1, **{self._cache_kw: self.cache})
        self.cache.columns = self._decode_columns
        self.column.fill_(width - 1)
        self._sample(out.logits[:, -1])
        self.position.copy_(mask.long().sum(-1, keepdim=True))
        self.steps_run = steps  # decode positions computed (the prefill's first token included)
        for t in range(1, steps):
            if t % CHECK_EVERY == 0 and bool(self.done.all()):
                self.steps_run = t
                break
            if self._graph is not None:
                self._graph.replay()
            else:
                self._run()
        return (self.out_tokens[:, width : width + steps].cpu(),
                self.out_logprobs[:, width : width + steps].cpu())
