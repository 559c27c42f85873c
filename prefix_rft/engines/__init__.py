"""Generation engines behind one interface: token ids in, token ids out.

`base` defines the interface; `hf` is the Hugging Face transformers implementation (CPU and GPU).
`vllm` implements the same interface with vLLM (optional, CUDA GPUs).
"""

from prefix_rft.engines.base import (
    GenerationEngine,
    GenerationOutput,
    GenerationRequest,
    SamplingParams,
)
from prefix_rft.engines.hf import HFEngine

__all__ = ["GenerationEngine", "GenerationOutput", "GenerationRequest", "SamplingParams", "HFEngine"]
