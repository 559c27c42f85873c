"""How the model runs its passes: packed or padded micro-batches (`model.packing`), the
autocast dtype over float32 master weights (`model.autocast`), and compiled decoder layers
(`model.compile_layers`)."""

from __future__ import annotations

import contextlib

import torch

from prefix_rft.errors import UserError


def use_packing(model_cfg, device: torch.device) -> bool:
    """`model.packing`: on / off as given; auto = on where packed attention is one kernel per
    layer (CUDA, bfloat16/float16 weights or autocast, or a flash_attention_* model), else off:
    in float32 the packed pass runs one SDPA call per sequence (`logprobs.varlen_attention_forward`), which for
    256 short trajectories is several times slower than padded micro-batches."""
    if model_cfg.packing != "auto":
        return model_cfg.packing == "on"
    return device.type == "cuda" and (
        model_cfg.dtype in ("bfloat16", "float16") or autocast_dtype(model_cfg, device) is not None
        or model_cfg.attn_implementation.startswith("flash_attention")
    )


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices natively (faster than float32): a CUDA GPU
    with bf16 support, or a CPU with AVX-512 BF16 or AMX tiles (oneDNN emulates bf16 on other
    CPUs, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, name, lambda: False)()
                   for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def autocast_dtype(model_cfg, device: torch.device) -> torch.dtype | None:
    """`model.autocast` on `device`: the dtype of the passes' and rollouts' forward, or None
    (model.dtype). auto = bfloat16 over float32 weights where the device has native bf16."""
    if model_cfg.autocast == "auto":
        return torch.bfloat16 if model_cfg.dtype == "float32" and native_bf16(device) else None
    return None if model_cfg.autocast == "off" else getattr(torch, model_cfg.autocast)


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place (the training passes and the prefill run them;
    the fast path's decode step has its own compiled forward). Returns how many."""
    from prefix_rft.models import decoder_of
    from prefix_rft.torch_compat import ensure_inductor_importable

    layers = getattr(decoder_of(model), "layers", None)
    if layers is None:
        raise UserError(f"model.compile_layers: {type(model).__name__} has no decoder layers")
    ensure_inductor_importable()
    for layer in layers:
        layer.compile()
    return len(layers)


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """`model.autocast` as a context (rollouts; the passes enter it per micro-batch)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
