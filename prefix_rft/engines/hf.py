"""Hugging Face transformers generation engine: batched, left-padded, per-row limits and stops.

Rows (request x sample) are generated in chunks of `max_batch_size`, longest inputs first so a
chunk carries little padding. Each chunk is sampled under its own seed derived from
`SamplingParams.seed` and the chunk index, inside `torch.random.fork_rng`, so generation is
reproducible and never disturbs the caller's RNG stream (resumed runs match straight runs).
A row stops at its first stop id (kept in the output) or at its own `max_new_tokens`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from prefix_rft.engines.base import GenerationOutput, GenerationRequest, SamplingParams


def _seed_for(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk * 7_919) % (2**63 - 1)


class HFEngine:
    """Generation with `model.generate`; the policy object is shared with the trainer."""

    def __init__(self, model, tokenizer, stop_ids: Sequence[int], *, max_batch_size: int = 256):
        self.model = model
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        self.stop_ids = list(dict.fromkeys(int(i) for i in stop_ids))
        self.max_batch_size = max_batch_size

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller (the trainer shares it)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self, requests: Sequence[GenerationRequest], n: int, sampling: SamplingParams
    ) -> list[list[GenerationOutput]]:
        rows = [(ri, req) for ri, req in enumerate(requests) for _ in range(n)]
        results: list[GenerationOutput | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][1].input_ids))
        todo = [i for i in order if rows[i][1].max_new_tokens > 0]
        for i in order:
            if rows[i][1].max_new_tokens <= 0:
                results[i] = GenerationOutput([], "length", [] if sampling.return_logprobs else None)
        was_training = self.model.training
        self.model.eval()
        try:
            for chunk_idx, start in enumerate(range(0, len(todo), self.max_batch_size)):
                idx = todo[start : start + self.max_batch_size]
                outs = self._generate_chunk([rows[i][1] for i in idx], sampling, chunk_idx)
                for i, out in zip(idx, outs):
                    results[i] = out
        finally:
            self.model.train(was_training)
        grouped: list[list[GenerationOutput]] = [[] for _ in requests]
        for (ri, _), out in zip(rows, results):
            grouped[ri].append(out)
        return grouped

    @torch.no_grad()
    def _generate_chunk(self, reqs, sampling: SamplingParams, chunk_idx: int):
        inputs = [r.input_ids for r in reqs]
        width = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[row, width - len(x) :] = 1
        limit = max(r.max_new_tokens for r in reqs)
        greedy = sampling.temperature <= 0
        gen_cfg = GenerationConfig(
            max_new_tokens=limit,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            output_logits=sampling.return_logprobs,
            return_dict_in_generate=True,
        )
        device = self.device
        devices = [device] if device.type == "cuda" else []
        ctx = torch.random.fork_rng(devices=devices) if not greedy else contextlib.nullcontext()
        with ctx:
            if not greedy:
                torch.manual_seed(_seed_for(sampling.seed, chunk_idx))
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg
            )
        new = out.sequences[:, width:].cpu()
        logps = None
        if sampling.return_logprobs:
            temp = sampling.temperature if sampling.temperature > 0 else 1.0
            steps = torch.stack(out.logits, dim=1).float() / temp  # [B, T, V]
            logps = torch.log_softmax(steps, dim=-1).gather(-1, new.to(steps.device)[..., None])
            logps = logps[..., 0].cpu()
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
