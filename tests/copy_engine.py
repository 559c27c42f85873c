"""A test engine with its own copy of the weights, synced like vLLM (`WeightSyncedEngine`).

`CopyEngine` decodes with the real HF engine, but from a second model of the policy's
architecture that starts with different random weights: only the trainer's weight pushes make
it decode the policy. It records every push (the names and a checksum of what it received) and
fails when a push misses a parameter, so tests can check the sync protocol on CPU (one process,
and two gloo processes under FSDP2) without a GPU. Registered as `COPY` while `copy_engine()`
is active.
"""

from __future__ import annotations

import contextlib

import torch

from prefix_rft.rollout.engines import EngineSpec, register_engine, unregister_engine
from prefix_rft.rollout.engines.hf import HFEngine, decoding_options

COPY = "hf-copy-test"


class CopyEngine:
    needs_weight_sync = True

    def __init__(self, spec: EngineSpec):
        config = spec.model.config
        with torch.random.fork_rng():  # the caller's RNG untouched
            torch.manual_seed(12345)  # deliberately different from the policy's weights
            self.copy = type(spec.model)(config).float().eval()
        self.inner = HFEngine(self.copy, spec.tokenizer, spec.stop_ids(),
                              max_batch_size=spec.max_batch_size, **decoding_options("generate"))
        self.pushes: list[dict[str, float]] = []  # per push: name -> sum of the received tensor
        self.released = 0
        self.stale = True  # until the first push

    def load_weights(self, weights) -> None:
        own = dict(self.copy.named_parameters())
        got: dict[str, float] = {}
        with torch.no_grad():
            for name, tensor in weights:
                own[name].copy_(tensor)
                got[name] = float(tensor.double().sum())
        missing = set(own) - set(got)
        if missing:
            raise RuntimeError(f"push missed {sorted(missing)}")
        self.pushes.append(got)
        self.stale = False

    def generate(self, requests, n, sampling):
        if self.stale:
            raise RuntimeError("generate before the first push")
        return self.inner.generate(requests, n, sampling)

    def release(self) -> None:
        self.released += 1

    def close(self) -> None:
        pass


@contextlib.contextmanager
def copy_engine():
    """Register `COPY` for the duration; yields the list of engines built meanwhile."""
    built: list[CopyEngine] = []

    @register_engine(COPY)
    def _build(spec: EngineSpec) -> CopyEngine:
        built.append(CopyEngine(spec))
        return built[-1]

    try:
        yield built
    finally:
        unregister_engine(COPY)
