"""vLLM generation engine (optional: `pip install 'prefix-rft[gpu]'`, needs a CUDA GPU).

Token ids in, token ids out: prompts go in as `TokensPrompt(prompt_token_ids=...)` (the caller's
chat-templated ids, never re-tokenised text) and the continuation comes back as token ids. Each
request is sampled under its own seed: `request.seed` when set (reduced mod 2^63, the range of a
torch generator's seed), else one derived from `SamplingParams.seed` and the request's index, so
results do not depend on how vLLM batches requests; `n` samples of a request come from that one
seeded stream. (A seed does not give the same tokens as in the HF engine, whose sampler is a
hash-based Gumbel-max; each engine is reproducible on its own.) Only this module imports vLLM;
nothing else in the package does, so the CPU test suite never needs it.

Memory: vLLM keeps the GPU (weights + KV cache, `gpu_memory_utilization` of the card) until the
process ends; deleting the engine does not reliably release it. Run evaluation in its own process
(the pipeline's `eval_task` is one) and call `close()` at the end.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

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


class VLLMEngine:
    """`LLM(model_dir)` behind the `GenerationEngine` interface."""

    def __init__(self, model_dir: str, stop_ids: Sequence[int], *, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, seed: int = 0, enforce_eager: bool = False,
                 show_progress: bool = False):
        import importlib.util
        import os

        if importlib.util.find_spec("flashinfer") is None:
            # vLLM 0.25 builds its top-k/top-p sampler on FlashInfer by default; without the
            # package that fails at construction, so fall back to the PyTorch sampler.
            os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        try:
            from vllm import LLM
        except ImportError as e:
            raise UserError("engine 'vllm': vLLM is not installed (pip install 'prefix-rft[gpu]'); "
                            f"use --engine hf ({e})") from None
        self.stop_ids = list(dict.fromkeys(int(i) for i in stop_ids))
        self.show_progress = show_progress
        self.llm = LLM(model=str(model_dir), dtype=dtype, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager)

    def generate(self, requests: Sequence[GenerationRequest], n: int,
                 sampling: SamplingParams) -> list[list[GenerationOutput]]:
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.input_ids)) for r in requests]
        greedy = sampling.temperature <= 0
        params = [
            VSampling(
                n=n, temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p, max_tokens=max(1, r.max_new_tokens),
                seed=r.seed % 2**63 if r.seed is not None else _seed_for(sampling.seed, i),
                stop_token_ids=self.stop_ids,
                logprobs=0 if sampling.return_logprobs else None, detokenize=False,
            )
            for i, r in enumerate(requests)
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=self.show_progress)
        result = []
        for req, out in zip(requests, outs):
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)[: req.max_new_tokens]
                reason = "stop" if c.finish_reason == "stop" else "length"
                lp = None
                if sampling.return_logprobs and c.logprobs is not None:
                    lp = [step[t].logprob for step, t in zip(c.logprobs, toks)]
                samples.append(GenerationOutput(toks, reason, lp))
            result.append(samples)
        return result

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
