"""The one place engines are built: a registry of engine names and `make_engine`.

Training (`rollout.engine`) and evaluation (`prefix-rft eval --engine`, `pipeline.eval_engine`)
both ask `make_engine(name, EngineSpec(...))` for an engine. An `EngineSpec` says what to generate
with: either an in-memory `model` (the trainer's policy, whose weights the engine shares and
follows as they train) or a `model_dir` the engine loads itself (evaluation), plus the options an
engine may use (dtype, device, batch size, seed, decoding mode, vLLM memory settings).

Built-in names:
  hf    `prefix_rft.rollout.engines.hf.HFEngine` (any device; loads `model_dir` unless given `model`).
  vllm  `prefix_rft.rollout.engines.vllm.VLLMEngine` (a CUDA GPU). Evaluation: loads
        `model_dir`. Training (`model` given): colocated in the trainer's process, built from
        `model_dir`'s config and tokenizer, its weights pushed from `model` before every rollout
        phase (`WeightSyncedEngine`).
  auto  a chooser, not an engine: vllm when vLLM is installed with a GPU and the engine has a
        `model_dir` to start from and runs in one process (`world_size` 1), else hf. (Data-parallel
        runs take vllm only when asked for by name.)

A new engine is one module plus one registration, e.g.

    @register_engine("mine")
    def _mine(spec: EngineSpec) -> GenerationEngine:
        from my_package.engine import MyEngine
        return MyEngine(spec.model, spec.stop_ids())

This module imports no torch, transformers or vLLM (builders import their engine when called),
so configuration validation can consult the registry cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prefix_rft.errors import UserError
from prefix_rft.rollout.engines.base import GenerationEngine


@dataclass(frozen=True)
class EngineSpec:
    """What an engine is built from. Give `model` (shared, in memory) or `model_dir` (loaded)."""

    tokenizer: Any
    model: Any = None
    model_dir: str | None = None
    dtype: str = "bfloat16"
    device: str = "auto"
    max_batch_size: int = 256
    seed: int = 0
    decoding: str = "auto"  # the HF engine's `model.decoding` mode (auto, generate, graph, compiled)
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    sleep_level: int = 0  # vLLM in training: free its memory between rollout phases (1 or 2)
    enforce_eager: bool = False  # vLLM: no CUDA graphs (quicker start, slower decode)
    world_size: int = 1  # processes of the run (auto picks hf when > 1)

    def stop_ids(self) -> list[int]:
        """The token ids that end a response (the tokenizer's end-of-turn ids)."""
        from prefix_rft.rollout.prompting import stop_token_ids

        return stop_token_ids(self.tokenizer)


Builder = Callable[[EngineSpec], GenerationEngine]
Chooser = Callable[[EngineSpec], str]


@dataclass(frozen=True)
class _Entry:
    build: Builder | None  # None for a chooser such as "auto"
    choose: Chooser | None
    trains: bool  # usable as `rollout.engine` (generates from the trainer's in-memory policy)


_REGISTRY: dict[str, _Entry] = {}


def register_engine(name: str, *, trains: bool = True) -> Callable[[Builder], Builder]:
    """Decorator: register `builder(spec) -> engine` under `name`. `trains=False` keeps the
    engine out of `rollout.engine`'s choices (it cannot generate from an in-memory policy)."""

    def add(builder: Builder) -> Builder:
        _add(name, _Entry(builder, None, trains))
        return builder

    return add


def register_chooser(name: str, choose: Chooser, *, trains: bool = True) -> None:
    """Register `name` as a chooser: `choose(spec)` names the registered engine to build."""
    _add(name, _Entry(None, choose, trains))


def _add(name: str, entry: _Entry) -> None:
    if name in _REGISTRY:
        raise ValueError(f"engine {name!r} is already registered")
    _REGISTRY[name] = entry


def unregister_engine(name: str) -> None:
    """Remove a registration (tests register throwaway engines)."""
    del _REGISTRY[name]


def engine_names(*, training: bool = False) -> list[str]:
    """Registered names in registration order; `training=True`: only those that can train."""
    return [n for n, e in _REGISTRY.items() if e.trains or not training]


def _one_of(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def training_engine_problem(name: str) -> str | None:
    """Why `name` cannot be `rollout.engine`, or None when it can."""
    choices = engine_names(training=True)
    if name in _REGISTRY and name not in choices:
        return (f"{name!r} rollouts in training are not supported yet (the trainer generates from "
                f"its in-memory policy); use {_one_of(choices)}")
    if name not in choices:
        return f"{name!r} is not an engine that can train; expected {_one_of(choices)}"
    return None


def make_engine(name: str, spec: EngineSpec, *, key: str = "engine") -> tuple[GenerationEngine, str]:
    """(engine, the name actually built) for registered `name`; a chooser resolves first.
    `key` names the setting `name` came from in the error for an unknown name."""
    if name not in _REGISTRY:
        raise UserError(f"{key} {name!r}: expected {_one_of(engine_names())}")
    entry = _REGISTRY[name]
    if entry.choose is not None:
        name = entry.choose(spec)
        entry = _REGISTRY[name]
    return entry.build(spec), name


# ---------------------------------------------------------------------------------- built-ins
def _choose_auto(spec: EngineSpec) -> str:
    from prefix_rft.rollout.engines import vllm

    if spec.model_dir is None or spec.world_size > 1 or str(spec.device).startswith("cpu"):
        return "hf"
    return "vllm" if vllm.available() else "hf"


register_chooser("auto", _choose_auto)


@register_engine("hf")
def _hf(spec: EngineSpec) -> GenerationEngine:
    from prefix_rft.rollout.engines.hf import HFEngine, decoding_options

    model = spec.model if spec.model is not None else _load_hf_model(spec)
    return HFEngine(model, spec.tokenizer, spec.stop_ids(), max_batch_size=spec.max_batch_size,
                    **decoding_options(spec.decoding))


def _load_hf_model(spec: EngineSpec):
    import torch

    from prefix_rft.models import load_policy

    if spec.model_dir is None:
        raise ValueError("engine 'hf': give EngineSpec.model or EngineSpec.model_dir")
    dev = torch.device("cuda" if spec.device == "auto" and torch.cuda.is_available() else
                       "cpu" if spec.device == "auto" else spec.device)
    dtype = spec.dtype
    if dev.type == "cpu" and dtype in ("bfloat16", "float16"):
        dtype = "float32"  # half precision on CPU is slow and not what users mean
    return load_policy(spec.model_dir, dtype=dtype).to(dev).eval()


@register_engine("vllm")
def _vllm(spec: EngineSpec) -> GenerationEngine:
    from prefix_rft.models import resolve_model_path
    from prefix_rft.rollout.engines.vllm import VLLMEngine

    if spec.model_dir is None:
        raise UserError("engine 'vllm' starts from a model directory (its config, tokenizer and, "
                        "for evaluation, weights); a randomly initialised policy "
                        "(model.random_init) has none: use the hf engine")
    colocate = spec.model is not None
    # a built-in alias becomes its converted directory, as load_policy does for the hf engine:
    # vLLM knows nothing of our aliases and, offline, looks the name up in the hub cache and fails
    return VLLMEngine(resolve_model_path(spec.model_dir), spec.stop_ids(), dtype=spec.dtype, seed=spec.seed,
                      gpu_memory_utilization=spec.gpu_memory_utilization,
                      max_model_len=spec.max_model_len, enforce_eager=spec.enforce_eager,
                      colocate=colocate, sleep_level=spec.sleep_level if colocate else 0,
                      max_num_seqs=spec.max_batch_size if colocate else None)
