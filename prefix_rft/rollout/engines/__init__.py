"""Generation engines behind one interface: token ids in, token ids out.

`base` defines the interface; `factory` is the registry every engine is built through (training
and evaluation alike); `hf` is the Hugging Face transformers implementation (CPU and GPU) and
`vllm` the vLLM one (GPU, evaluation). Importing this package loads neither torch nor vLLM: take
an engine class from its own module (`prefix_rft.rollout.engines.hf.HFEngine`) or, better, build it with
`make_engine`.
"""

from prefix_rft.rollout.engines.base import (
    GenerationEngine,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from prefix_rft.rollout.engines.factory import (
    EngineSpec,
    engine_names,
    make_engine,
    register_chooser,
    register_engine,
    unregister_engine,
)

__all__ = [
    "EngineSpec",
    "GenerationEngine",
    "GenerationOutput",
    "GenerationRequest",
    "SamplingParams",
    "engine_names",
    "make_engine",
    "register_chooser",
    "register_engine",
    "unregister_engine",
]
