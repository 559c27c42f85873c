"""The generation interface every engine implements.

A request is a prompt (token ids) plus an optional prefix (token ids, e.g. the first m tokens of a
demonstration). The engine continues `prompt_ids + prefix_ids` and returns only the continuation:
the caller owns the prefix and puts it back in front of the response. `max_new_tokens` is per
request (Prefix-RFT gives a prefixed sample L_max - m).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int
    prefix_ids: Sequence[int] = ()
    # The request's own sampling seed. When set, its samples depend only on (seed, input ids):
    # not on the other requests of the call, their order or the batching (the trainer gives each
    # rollout a seed from (run seed, step, group, member), so sharding groups over GPUs samples the
    # same tokens). When None, the engine derives one from SamplingParams.seed and the index.
    seed: int | None = None

    @property
    def input_ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.prefix_ids)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    return_logprobs: bool = False  # log-probs of the sampled ids under the temperature-scaled policy


@dataclass
class GenerationOutput:
    token_ids: list[int]  # the continuation only; ends with the stop id when finish_reason == "stop"
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None = field(default=None)


class GenerationEngine(Protocol):
    def generate(
        self, requests: Sequence[GenerationRequest], n: int, sampling: SamplingParams
    ) -> list[list[GenerationOutput]]:
        """For each request, `n` sampled continuations (outer list follows `requests`)."""
        ...

    def close(self) -> None:
        """Release what the engine holds (GPU memory, worker processes); idempotent."""
        ...
