"""vLLM generation engine (optional: `pip install 'prefix-rft[gpu]'`, needs a CUDA GPU).

Token ids in, token ids out: prompts go in as `TokensPrompt(prompt_token_ids=...)` (the caller's
chat-templated ids, never re-tokenised text) and the continuation comes back as token ids. Each
request is sampled under its own seed: `request.seed` when set (reduced mod 2^63, the range of a
torch generator's seed), else one derived from `SamplingParams.seed` and the request's index, so
results do not depend on how vLLM batches requests; `n` samples of a request come from that one
seeded stream. (A seed does not give the same tokens as in the HF engine, whose sampler is a
hash-based Gumbel-max; each engine is reproducible on its own.) Only this module imports vLLM;
nothing else in the package does, so the CPU test suite never needs it.

Two ways to run it:

* evaluation (`colocate=False`): `LLM(model_dir)` loads its own weights and keeps the GPU
  (weights + KV cache, `gpu_memory_utilization` of the card) until the process ends; deleting
  the engine does not reliably release it. Run evaluation in its own process (the pipeline's
  `eval_task` is one) and call `close()` at the end.
* training rollouts (`colocate=True`): vLLM runs inside the training process (engine core in
  process, `external_launcher` executor: one engine per torchrun rank, on that rank's GPU) and
  generates from the trainer's weights, which the trainer pushes in before every rollout phase
  (`load_weights`: tensors handed over on the GPU, no disk round trip; the engine's prefix cache
  is reset, so no KV block computed with older weights is reused). The engine starts with
  placeholder weights (`load_format="dummy"`) and refuses to generate before the first
  `load_weights`; a push that leaves any vLLM parameter unwritten is an error. With
  `sleep_level` 1 or 2 it frees its GPU memory between rollout phases (`release`: KV cache
  discarded; weights offloaded to CPU at level 1, discarded at level 2, where the next push
  refills them) so the update has the card. Log-probs are vLLM's "processed" ones: those of the
  temperature-scaled (and top-p-truncated) distribution the token was sampled from, the quantity
  the trainer's log-probs at the rollout temperature are compared with.

Host overhead: vLLM's scheduler and output processing run in the calling thread when the engine
core is in process (colocated), so Python work per sampled token competes with the GPU. The
log-probs come back flat (`flat_logprobs`: a few lists per request instead of one dict and one
`Logprob` object per token), and the cyclic garbage collector is paused while `generate` runs
(the objects vLLM creates per step would otherwise trigger full collections over the trainer's
whole heap); reference counting still frees everything as usual.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from collections.abc import Iterable, Sequence

from prefix_rft.errors import UserError
from prefix_rft.rollout.engines.base import GenerationOutput, GenerationRequest, SamplingParams


def available() -> bool:
    """vLLM importable and a CUDA device present."""
    try:
        import torch
        import vllm  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def _seed_for(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919) % (2**31 - 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher_env() -> None:
    """The torchrun variables vLLM's external launcher reads; a single process gets rank 0 of 1."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


@contextlib.contextmanager
def _gc_paused():
    """The cyclic garbage collector off for the duration (restored as it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def token_logprobs(logprobs, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each of `token_ids` from a vLLM completion's `logprobs`: either flat
    (`FlatLogprobs`: position i spans `start_indices[i]:end_indices[i]` of `token_ids`/`logprobs`)
    or a list of {token id: Logprob} per position. The sampled token is always among a position's
    entries; a missing one is an error, never a silent 0."""
    starts = getattr(logprobs, "start_indices", None)
    if starts is None:
        return [step[t].logprob for step, t in zip(logprobs, token_ids)]
    ids, values, ends = logprobs.token_ids, logprobs.logprobs, logprobs.end_indices
    out = []
    for pos, tok in enumerate(token_ids[: len(starts)]):
        s, e = starts[pos], ends[pos]
        if s < e and ids[s] == tok:  # the sampled token comes first
            out.append(values[s])
            continue
        hit = next((i for i in range(s, e) if ids[i] == tok), None)
        if hit is None:
            raise RuntimeError(f"engine 'vllm': no log-prob for sampled token {tok} at position {pos}")
        out.append(values[hit])
    return out


def _vllm_llm_class():
    import importlib.util

    if importlib.util.find_spec("flashinfer") is None:
        # vLLM 0.25 builds its top-k/top-p sampler on FlashInfer by default; without the
        # package that fails at construction, so fall back to the PyTorch sampler.
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        from vllm import LLM
    except ImportError as e:
        raise UserError("engine 'vllm': vLLM is not installed (pip install 'prefix-rft[gpu]'); "
                        f"use the hf engine ({e})") from None
    return LLM


class VLLMEngine:
    """`LLM(model_dir)` behind the `GenerationEngine` interface; with `colocate=True` also a
    `WeightSyncedEngine` (see the module doc)."""

    def __init__(self, model_dir: str, stop_ids: Sequence[int], *, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, enforce_eager: bool = False,
                 show_progress: bool = False, colocate: bool = False, sleep_level: int = 0,
                 max_num_seqs: int | None = None):
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"sleep_level must be 0, 1 or 2, got {sleep_level}")
        LLM = _vllm_llm_class()
        self.stop_ids = list(dict.fromkeys(int(i) for i in stop_ids))
        self.show_progress = show_progress
        self.needs_weight_sync = colocate  # colocated: the trainer pushes its weights in
        self.sleep_level = sleep_level if colocate else 0
        self._loaded = not colocate  # colocated: placeholder weights until the first push
        self._asleep: set[str] = set()  # "weights", "kv_cache" while released
        extra: dict = {}
        if colocate:
            _launcher_env()
            extra = {"distributed_executor_backend": "external_launcher",
                     "enable_sleep_mode": self.sleep_level > 0, "load_format": "dummy",
                     "logprobs_mode": "processed_logprobs"}
        if max_num_seqs is not None:
            extra["max_num_seqs"] = max_num_seqs
        self.dtype = dtype
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
                       **extra)
        if self.sleep_level:  # nothing to keep until the first push
            self.release()

    # ------------------------------------------------------------------ weights (colocated)
    def _model(self):
        """vLLM's model module, in this process (colocated: the engine core runs in process)."""
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        return runner.get_model()  # the model itself, not its CUDA-graph wrapper

    def load_weights(self, weights: Iterable) -> None:
        """Write (Hugging Face name, tensor) pairs into vLLM's model in place (fused q/k/v and
        gate/up projections are filled by vLLM's own loader); every vLLM parameter must be
        written, else `RuntimeError` naming the ones that were not (they would be stale)."""
        import torch

        if not self.needs_weight_sync:
            raise RuntimeError("engine 'vllm': load_weights needs colocate=True")
        self._wake(["weights"])
        target = getattr(torch, self.dtype)
        model = self._model()
        loaded = model.load_weights((n, t.to(target)) for n, t in weights)
        missing = sorted(set(dict(model.named_parameters())) - set(loaded or ()))
        if missing:
            raise RuntimeError(f"engine 'vllm': the weight push left {len(missing)} parameters "
                               f"unwritten (they would keep stale values): {missing[:5]}")
        torch.cuda.synchronize()
        self.llm.reset_prefix_cache()  # KV blocks cached under the old weights are invalid
        self._loaded = True

    def release(self) -> None:
        """Free the KV cache (and the weights at sleep level 2, offload them at level 1)."""
        if self.sleep_level and not self._asleep:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]) -> None:
        import torch

        todo = [t for t in tags if t in self._asleep]
        if todo:
            # vLLM maps its memory outside PyTorch's caching allocator: blocks the update left
            # cached (free to PyTorch, taken for CUDA) must go back first, or waking up runs out
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=todo)
            self._asleep.difference_update(todo)

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerationRequest], n: int,
                 sampling: SamplingParams) -> list[list[GenerationOutput]]:
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        if not self._loaded:
            raise RuntimeError("engine 'vllm' (colocated): generate before the first "
                               "load_weights would sample from placeholder weights")
        if not requests:
            return []
        self._wake(["weights", "kv_cache"])
        prompts = [TokensPrompt(prompt_token_ids=list(r.input_ids)) for r in requests]
        greedy = sampling.temperature <= 0
        params = [
            VSampling(
                n=n, temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p, max_tokens=max(1, r.max_new_tokens),
                seed=r.seed % 2**63 if r.seed is not None else _seed_for(sampling.seed, i),
                stop_token_ids=self.stop_ids,
                logprobs=0 if sampling.return_logprobs else None, detokenize=False,
                flat_logprobs=sampling.return_logprobs,
            )
            for i, r in enumerate(requests)
        ]
        with _gc_paused():
            outs = self.llm.generate(prompts, params, use_tqdm=self.show_progress)
        return [self._samples(req, out, sampling.return_logprobs)
                for req, out in zip(requests, outs)]

    @staticmethod
    def _samples(req: GenerationRequest, out, with_logprobs: bool) -> list[GenerationOutput]:
        samples = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            toks = list(c.token_ids)[: max(0, req.max_new_tokens)]
            reason = "stop" if c.finish_reason == "stop" and toks else "length"
            lp = None
            if with_logprobs and c.logprobs is not None:
                lp = token_logprobs(c.logprobs, toks)
            samples.append(GenerationOutput(toks, reason, lp))
        return samples

    def close(self) -> None:
        """Drop the engine and ask CUDA for the memory back (best effort; see module doc)."""
        import torch

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
