"""Hugging Face transformers generation engine: batched, left-padded, per-row limits/stops/seeds.

Rows (request x sample) are generated in chunks of `max_batch_size`, longest inputs first so a
chunk carries little padding. A row stops at its first stop id (kept in the output) or at its own
`max_new_tokens`; a chunk ends when every row has stopped or reached its limit.

Sampling is batch-invariant. Each row has its own 64-bit seed: `request.seed` mixed with the
sample index j when the request has one, else one derived from `SamplingParams.seed` and the
request's index (as the vLLM engine derives it) mixed with j (`row_seed`). `generate` runs
greedily, and the logits processors (temperature, top-p, then `GumbelSampler`) make the argmax an
exact sample: argmax(logits / T + G) with G_v ~ Gumbel(0, 1) i.i.d. is distributed as
softmax(logits / T), and the top-p warper's -inf entries never win (the Gumbel-max trick). The
noise is not drawn from a random stream but computed as a hash of (row seed, decode position,
vocabulary id) (`gumbel_noise`), so a row's tokens depend only on its seed and its input ids -- not
on the other rows of the chunk, the order of the requests or `max_batch_size` -- and no global RNG
is read or advanced (resumed runs match straight runs). "Only" is up to floating point: a batched
forward's logits can differ in the last bits with the batch's shape, which flips a token only if
two perturbed scores tie to within that error. Temperature 0 is plain argmax.

Fast path (`fast=True`; default: on for CUDA where `graph_decode.supports` the model): our own
static-KV-cache decode loop (`prefix_rft/rollout/engines/graph_decode.py`) whose whole step -- forward,
the same temperature / top-p / Gumbel-max sampling, log-probs, stop and limit bookkeeping -- is
one CUDA graph, compiled with inductor first (`compile`). Both paths run under the caller's
torch.autocast, if any (the trainer's `model.autocast` rollouts); a fast-path decoder is built per
autocast setting. The step's forward is
`graph_decode.FusedDecodeForward` (q/k/v and gate/up one GEMM each, GQA packed; `fused`).
Capturing (and compiling) happens on the first chunk of a new shape or sampling setting (seconds
to tens of seconds on a GPU), so call `warmup()` once per process before timing anything. Shapes are bucketed so that captures stay
few: a chunk's rows are padded with idle rows up to a power of two (at least 8, at most
`max_batch_size`) and the cache length is rounded up to a multiple of `CACHE_BUCKET` tokens; the
last `MAX_DECODERS` (shape, sampling) decoders are kept. Graphs read the weights where they were
at capture; the trainer updates them in place, and a decoder whose weights moved is rebuilt.
Transformers' continuous batching (`generate_batch`) is not used: it takes its logits processors
only from a `GenerationConfig` (transformers 5.24), so a per-row seeded sampler cannot be plugged in.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from prefix_rft.rollout.engines import graph_decode
from prefix_rft.rollout.engines.base import GenerationOutput, GenerationRequest, SamplingParams

CACHE_BUCKET = 256
"""Static-cache lengths are multiples of this many tokens (fast path)."""
MAX_DECODERS = 2
"""Fast-path decoders (each a KV cache + captured graph) kept per engine."""

_MIN_BATCH_BUCKET = 8
_MASK32 = 0xFFFFFFFF
_MASK64 = 2**64 - 1


def _seed_for(seed: int, index: int) -> int:
    """A request's seed when it has none (the same derivation as the vLLM engine's)."""
    return (seed * 1_000_003 + index * 7_919) % (2**31 - 1)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def row_seed(request_seed: int, sample: int) -> int:
    """The 64-bit seed of sample `sample` of a request whose seed is `request_seed` (any int)."""
    return _splitmix64(_splitmix64(request_seed & _MASK64) ^ sample)


def row_keys(seeds: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, 2] int64: the 64-bit row seeds as (low, high) 32-bit halves, `gumbel_noise`'s keys."""
    return torch.tensor([[s & _MASK32, (s >> 32) & _MASK32] for s in seeds], dtype=torch.long,
                        device=device).reshape(len(seeds), 2)


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x * m) mod 2^32 for int64 x in [0, 2^32), never overflowing int64 (whose wrapping torch
    does not promise on every backend): a multiplier >= 2^31 is replaced by m - 2^32, the same
    mod 2^32, so |product| < 2^63; `& 0xFFFFFFFF` of a negative int64 takes its low 32 bits."""
    return (x * (m - 2**32 if m >= 2**31 else m)) & _MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2^32) with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, position: torch.Tensor | int, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 standard Gumbel noise, a pure function of (row key, position, vocabulary id).

    `keys` is `row_keys(...)` ([B, 2] int64); `position` is the decode step (0 for the first new
    token). Per row and position a 32-bit key is hashed from the seed halves and the position;
    each vocabulary id is hashed on its own; their XOR is hashed once more into 32 bits, whose top
    23 bits k give u = (2k + 1) / 2^24 in (0, 1) (exact in float32, never 0 or 1), and
    G = -log(-log u). Integer arithmetic up to u, so every device draws the same u.
    """
    pos = torch.as_tensor(position, dtype=torch.long, device=keys.device)
    row = _fmix32(keys[:, 1] ^ _fmix32(keys[:, 0] ^ _fmix32(pos)))
    if keys.device.type == "cpu" and not torch.compiler.is_compiling():
        k = _bits_cpu(row.numpy().astype(np.uint32), _vocab_hash_cpu(vocab_size))
    else:
        vocab = _vocab_hash(vocab_size, keys.device)
        k = (_fmix32(row[:, None] ^ vocab[None, :]) >> 8) | 1
    u = k.to(torch.float32) * 2.0**-24
    return u.log_().neg_().log_().neg_()


def _vocab_hash(vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[V] int64 in [0, 2^32): every vocabulary id's hash."""
    return _fmix32(_mul32(torch.arange(vocab_size, device=device), 0x9E3779B9))


@functools.lru_cache(maxsize=4)
def _vocab_hash_cpu(vocab_size: int) -> np.ndarray:
    """`_vocab_hash` as uint32, computed once per vocabulary size."""
    return _vocab_hash(vocab_size).numpy().astype(np.uint32)


def _bits_cpu(row: np.ndarray, vocab: np.ndarray) -> torch.Tensor:
    """[B, V] int32 `(fmix32(row ^ vocab) >> 8) | 1` in numpy uint32, whose arithmetic wraps
    modulo 2^32 by definition: the same bits as the int64 path with half the memory traffic
    (2.5x faster on CPU at 72 x 49,152, the learning test's rollout step)."""
    x = row[:, None] ^ vocab[None, :]
    x ^= x >> 16
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> 13
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> 16
    x >>= 8
    x |= 1
    return torch.from_numpy(x.view(np.int32))  # < 2^24 after the shift: the same value


class GumbelSampler(LogitsProcessor):
    """Adds each row's Gumbel noise for the current decode step; the last processor of the list,
    so that the greedy argmax of generate is a sample of the processed distribution."""

    def __init__(self, keys: torch.Tensor, prompt_width: int,
                 noise: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = gumbel_noise):
        self.keys = keys
        self.prompt_width = prompt_width
        self.noise = noise

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # a 0-d tensor, as the fast path's step passes it (`gumbel_noise` takes either)
        pos = torch.full((), input_ids.shape[1] - self.prompt_width, dtype=torch.long,
                         device=scores.device)
        return scores + self.noise(self.keys, pos, scores.shape[-1])


def sampling_processors(temperature: float, top_p: float, keys: torch.Tensor, prompt_width: int,
                        noise: Callable = gumbel_noise) -> LogitsProcessorList:
    """Temperature, top-p (transformers' definitions, as with `do_sample=True`) and Gumbel noise:
    greedy decoding through these samples from the temperature-scaled, top-p-filtered policy."""
    return LogitsProcessorList([*_warper_list(temperature, top_p),
                                GumbelSampler(keys, prompt_width, noise)])


def _warper_list(temperature: float, top_p: float) -> list[LogitsProcessor]:
    procs: list[LogitsProcessor] = []
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    return procs


class _RowLimits(StoppingCriteria):
    """Finishes each row at its own `max_new_tokens`, so a chunk ends once every row is done."""

    def __init__(self, limits: torch.Tensor, prompt_width: int):
        self.limits = limits
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return self.limits <= input_ids.shape[1] - self.prompt_width


_DECODING = {"auto": {}, "generate": {"fast": False}, "graph": {"fast": True, "compile": False},
             "compiled": {"fast": True, "compile": "inductor"}}


def decoding_options(mode: str) -> dict:
    """`HFEngine` keyword arguments of a `model.decoding` mode (see prefix_rft/core/config.py)."""
    if mode not in _DECODING:
        raise ValueError(f"decoding {mode!r}: expected one of {', '.join(_DECODING)}")
    return _DECODING[mode]


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class HFEngine:
    """Generation with the policy object shared with the trainer: `model.generate` (plain path) or
    `graph_decode.GraphDecoder` (fast path).

    `fast`: the fast path (see the module docstring); None = on for CUDA when the model is
    supported. `compile`: torch.compile backend of the fast path's decode step; None = "inductor"
    on CUDA and none elsewhere; False = none. `fused`: the fast path's decode step runs
    `graph_decode.FusedDecodeForward` (fused q/k/v and gate/up GEMMs, packed GQA) rather than
    the model's own forward (False: for comparisons).
    """

    def __init__(self, model, tokenizer, stop_ids: Sequence[int], *, max_batch_size: int = 256,
                 fast: bool | None = None, compile: str | bool | None = None,
                 fused: bool = True):
        self.model = model
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        self.stop_ids = list(dict.fromkeys(int(i) for i in stop_ids))
        self.max_batch_size = max_batch_size
        on_cuda = self.device.type == "cuda"
        if fast is None:
            fast = on_cuda and graph_decode.supports(model)
        elif fast and not graph_decode.supports(model):
            raise ValueError(f"fast decoding supports {sorted(graph_decode.SUPPORTED_MODEL_TYPES)} "
                             "models with sdpa attention; use fast=False")
        self.fast = fast
        self.graph = on_cuda  # CUDA graphs need CUDA; elsewhere the same step runs eagerly
        if compile is None:
            compile = "inductor" if on_cuda else False
        self.compile = compile or None
        self.fused = fused
        self._decoders: dict[tuple, graph_decode.GraphDecoder] = {}

    def close(self) -> None:
        """Release the fast path's caches and graphs (the model belongs to the caller)."""
        self._decoders.clear()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def graph_errors(self) -> list[str]:
        """Why a kept fast-path decoder runs without its compiled CUDA graph (empty: none)."""
        return [d.graph_error for d in self._decoders.values() if d.graph_error]

    def warmup(self, prompt_len: int, max_new_tokens: int, *, batch_size: int | None = None,
               sampling: SamplingParams | None = None) -> None:
        """Build (capture, compile) the fast path for chunks of `batch_size` rows (default
        `max_batch_size`) of up to `prompt_len + max_new_tokens` tokens with `sampling` (default
        greedy and temperature 1.0), so the first real call is not the one that pays for it.
        A no-op when the fast path is off."""
        if not self.fast:
            return
        rows = batch_size or self.max_batch_size
        reqs = [GenerationRequest([self.pad_id] * prompt_len, 2, seed=i) for i in range(rows)]
        cache_len = prompt_len + max_new_tokens
        settings = [sampling] if sampling is not None else [SamplingParams(0.0), SamplingParams(1.0)]
        with self._eval_mode():
            for s in settings:
                self._generate_chunk(reqs, list(range(rows)), s, cache_len)

    def generate(
        self, requests: Sequence[GenerationRequest], n: int, sampling: SamplingParams
    ) -> list[list[GenerationOutput]]:
        rows = [(ri, j, req) for ri, req in enumerate(requests) for j in range(n)]
        seeds = [row_seed(req.seed if req.seed is not None else _seed_for(sampling.seed, ri), j)
                 for ri, j, req in rows]
        results: list[GenerationOutput | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][2].input_ids))
        todo = [i for i in order if rows[i][2].max_new_tokens > 0]
        for i in order:
            if rows[i][2].max_new_tokens <= 0:
                results[i] = GenerationOutput([], "length",
                                              [] if sampling.return_logprobs else None)

        with self._eval_mode():
            for start in range(0, len(todo), self.max_batch_size):
                idx = todo[start : start + self.max_batch_size]
                outs = self._generate_chunk([rows[i][2] for i in idx], [seeds[i] for i in idx],
                                            sampling)
                for i, out in zip(idx, outs):
                    results[i] = out
        grouped: list[list[GenerationOutput]] = [[] for _ in requests]
        for (ri, _, _), out in zip(rows, results):
            grouped[ri].append(out)
        return grouped

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """The model in eval mode, its own mode restored afterwards (the trainer shares it)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _generate_chunk(self, reqs: Sequence[GenerationRequest], seeds: Sequence[int],
                        sampling: SamplingParams,
                        cache_len: int | None = None) -> list[GenerationOutput]:
        inputs = [r.input_ids for r in reqs]
        limits = [r.max_new_tokens for r in reqs]
        seeds = list(seeds)
        if self.fast:  # idle rows (limit 0: finished at once) up to the batch bucket
            rows = min(_pow2_at_least(max(len(reqs), _MIN_BATCH_BUCKET)), self.max_batch_size)
            extra = max(0, rows - len(reqs))
            inputs, limits, seeds = (inputs + [inputs[0]] * extra, limits + [0] * extra,
                                     seeds + [0] * extra)
        width = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x) :] = 1
        if self.fast:
            needed = max(width + max(limits), cache_len or 0)
            length = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
            decoder = self._decoder(len(inputs), length, sampling)
            new, logps = decoder.decode(ids, mask, torch.tensor(limits),
                                        row_keys(seeds, decoder.device))
        else:
            new, logps = self._generate_plain(ids, mask, limits, seeds, sampling)
        if not sampling.return_logprobs:
            logps = None
        stop = set(self.stop_ids)
        results = []
        for row, req in enumerate(reqs):
            toks = new[row].tolist()[: req.max_new_tokens]
            reason = "length"
            for j, t in enumerate(toks):
                if t in stop:
                    toks, reason = toks[: j + 1], "stop"
                    break
            lp = logps[row, : len(toks)].tolist() if logps is not None else None
            results.append(GenerationOutput(toks, reason, lp))
        return results

    def _decoder(self, rows: int, length: int, sampling: SamplingParams) -> graph_decode.GraphDecoder:
        """The fast-path decoder of this shape and sampling setting (built and captured once)."""
        greedy = sampling.temperature <= 0
        dev = self.device.type  # a graph keeps the precision it was captured in: key on autocast
        key = (rows, length, 0.0 if greedy else sampling.temperature,
               1.0 if greedy else sampling.top_p,
               torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev))
        dec = self._decoders.pop(key, None)
        if dec is not None and not dec.still_valid():
            dec = None
        if dec is None:
            while len(self._decoders) >= MAX_DECODERS:  # drop the least recently used
                self._decoders.pop(next(iter(self._decoders)))
            procs = None if greedy else _warpers(sampling.temperature, sampling.top_p)
            dec = graph_decode.GraphDecoder(
                self.model, batch=rows, length=length, pad_id=self.pad_id, stop_ids=self.stop_ids,
                temperature=sampling.temperature, processors=procs, noise=gumbel_noise,
                graph=self.graph, compile=self.compile, fused=self.fused)
        self._decoders[key] = dec  # most recently used last
        return dec

    def _generate_plain(self, ids, mask, limits, seeds, sampling):
        """`model.generate` on one left-padded chunk -> (new tokens [B, T], log-probs or None)."""
        device = self.device
        width = ids.shape[1]
        greedy = sampling.temperature <= 0
        gen_cfg = GenerationConfig(
            max_new_tokens=max(limits),
            do_sample=False,
            repetition_penalty=1.0,  # never a model default's: the policy is the plain softmax
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            output_logits=sampling.return_logprobs,
            return_dict_in_generate=True,
        )
        procs = LogitsProcessorList() if greedy else sampling_processors(
            sampling.temperature, sampling.top_p, row_keys(seeds, device), width)
        stops = StoppingCriteriaList([_RowLimits(torch.tensor(limits, device=device), width)])
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  generation_config=gen_cfg, logits_processor=procs,
                                  stopping_criteria=stops)
        new = out.sequences[:, width:].cpu()
        logps = None
        if sampling.return_logprobs:
            temp = sampling.temperature if sampling.temperature > 0 else 1.0
            steps = torch.stack(out.logits, dim=1).float() / temp  # [B, T, V]
            logps = torch.log_softmax(steps, dim=-1).gather(-1, new.to(steps.device)[..., None])
            logps = logps[..., 0].cpu()
        return new, logps


def _warpers(temperature: float, top_p: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """[B, V] scores -> scores: the temperature and top-p warpers of `sampling_processors`."""
    procs = _warper_list(temperature, top_p)

    def apply(scores: torch.Tensor) -> torch.Tensor:
        for p in procs:
            scores = p(None, scores)
        return scores

    return apply
