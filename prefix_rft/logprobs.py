"""Per-token log-probs and entropies of response positions only.

Layout of a micro-batch: [left-padded prompt | response | right padding]. The model is run on
everything but the last column and asked for the logits of the last R positions only
(`logits_to_keep`), which predict exactly the R response tokens. Logits are divided by the
sampling temperature. Entropy is computed under no_grad, in chunks of positions, so no
full-vocabulary softmax is ever kept for the backward pass.
"""

from __future__ import annotations

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
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """No-grad log-probs (and entropies) of every response token, one 1-D tensor per row."""
    logps: list[torch.Tensor] = []
    ents: list[torch.Tensor] | None = [] if with_entropy else None
    for s in range(0, len(prompts), micro_batch_size):
        mb = collate(prompts[s : s + micro_batch_size], responses[s : s + micro_batch_size], pad_id)
        logits = response_logits(model, mb)
        lp = logprobs_from_logits(logits, mb.response_ids, temperature).cpu()
        ent = entropy_from_logits(logits, temperature, chunk).cpu() if with_entropy else None
        del logits
        for i, r in enumerate(responses[s : s + micro_batch_size]):
            n = len(r)
            logps.append(lp[i, :n].clone())
            if ents is not None:
                ents.append(ent[i, :n].clone())
    return logps, ents
