"""The generation interface every engine implements.

A request is a prompt (token ids) plus an optional prefix (token ids, e.g. the first m tokens of a
demonstration). The engine continues `prompt_ids + prefix_ids` and returns only the continuation:
the caller owns the prefix and puts it back in front of the response. `max_new_tokens` is per
request (Prefix-RFT gives a prefixed sample L_max - m).

Engines that generate from their own copy of the weights (vLLM: its own memory layout, its own
CUDA graphs) also implement `WeightSyncedEngine`: the trainer pushes the policy's current weights
into them before every rollout phase (so they are never staler than the last optimizer step) and
tells them when the phase is over, so they can give the GPU memory back to the update.
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


class WeightSyncedEngine(GenerationEngine, Protocol):
    """An engine with its own copy of the policy's weights (`needs_weight_sync = True`).

    The trainer's protocol, on every process, at every rollout phase (training steps and the
    held-out evaluation alike):
        engine.load_weights(prefix_rft.rollout.engines.weight_sync.policy_weights(model))
        engine.generate(...)          # zero or more calls
        engine.release()
    `load_weights` receives every parameter of the policy once, full (unsharded) and under its
    Hugging Face name; the engine must use exactly these values until the next call."""

    needs_weight_sync: bool

    def load_weights(self, weights) -> None:
        """Replace the engine's weights with `weights`, an iterable of (name, tensor)."""
        ...

    def release(self) -> None:
        """The rollout phase is over: free what the update needs (KV cache, weights); the next
        `load_weights` or `generate` brings it back."""
        ...


def needs_weight_sync(engine) -> bool:
    """Whether `engine` keeps its own weights (see `WeightSyncedEngine`)."""
    return bool(getattr(engine, "needs_weight_sync", False))
