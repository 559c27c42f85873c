"""A GGUF file's weights as a transformers state dict, read and de-quantized one tensor at a time.

transformers can load a GGUF itself, but it keeps the whole model in memory while converting and
is slow for models of a billion parameters and more. Here each tensor is de-quantized with the
``gguf`` package, renamed to the transformers name and cast on its own, so memory stays near one
shard of the output (:func:`convert_gguf_to_hf` writes sharded safetensors).

Names (``blk.N.*`` are the decoder layers):

=================  =====================================
GGUF               transformers
=================  =====================================
token_embd         model.embed_tokens
blk.N.attn_q/k/v   model.layers.N.self_attn.q/k/v_proj
blk.N.attn_output  model.layers.N.self_attn.o_proj
blk.N.attn_norm    model.layers.N.input_layernorm
blk.N.ffn_gate/up  model.layers.N.mlp.gate_proj/up_proj
blk.N.ffn_down     model.layers.N.mlp.down_proj
blk.N.ffn_norm     model.layers.N.post_attention_layernorm
output_norm        model.norm
output             lm_head (absent when the embeddings are tied)
=================  =====================================

Rotary layout: for the ``llama`` architecture llama.cpp's converter reorders the rows of the query
and key projections (each head's two rotary halves interleaved); :func:`unpermute_rotary` puts
them back, exactly as transformers does when it loads such a file. ``qwen2`` files are written
without that reordering and are used as stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from prefix_rft.errors import UserError

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_IN_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_SKIPPED = {"rope_freqs"}  # precomputed rotary frequencies; transformers computes its own
ROTARY_PERMUTED = frozenset({"llama"})
"""GGUF architectures whose query/key rows llama.cpp reorders (undone by :func:`unpermute_rotary`)."""

SHARD_BYTES = 2 * 1024**3


def hf_tensor_name(gguf_name: str) -> str:
    """The transformers parameter name for a GGUF tensor name (``blk.3.attn_q.bias`` ->
    ``model.layers.3.self_attn.q_proj.bias``); `UserError` for a name outside the table."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _TOP_LEVEL:
        return f"{_TOP_LEVEL[stem]}.{kind}"
    pieces = stem.split(".")
    if len(pieces) == 3 and pieces[0] == "blk" and pieces[1].isdigit() and pieces[2] in _IN_LAYER:
        return f"model.layers.{pieces[1]}.{_IN_LAYER[pieces[2]]}.{kind}"
    raise UserError(f"GGUF tensor {gguf_name!r}: no transformers name for it (unsupported layout)")


def unpermute_rotary(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of a query/key projection's rows, ``n_heads`` heads
    (the key/value head count for keys): within each head, rows ``(i, half)`` go back from
    interleaved to two contiguous halves."""
    dim = weights.shape[0] // n_heads // 2
    w = weights.reshape(n_heads, dim, 2, *weights.shape[1:])
    return w.swapaxes(2, 1).reshape(weights.shape)


def iter_hf_tensors(
    path: str | Path,
    *,
    architecture: str,
    num_heads: int,
    num_kv_heads: int,
    dtype: torch.dtype,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(transformers name, tensor)`` for each weight of the GGUF at ``path``, de-quantized
    to float32 and then cast to ``dtype``, in file order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    for tensor in reader.tensors:
        if tensor.name.rpartition(".")[0] in _SKIPPED:
            continue
        name = hf_tensor_name(tensor.name)
        weights = dequantize(tensor.data, tensor.tensor_type)
        weights = weights.reshape([int(d) for d in reversed(tensor.shape)])
        if architecture in ROTARY_PERMUTED and ".attn_q." in tensor.name:
            weights = unpermute_rotary(weights, num_heads)
        elif architecture in ROTARY_PERMUTED and ".attn_k." in tensor.name:
            weights = unpermute_rotary(weights, num_kv_heads)
        yield name, torch.from_numpy(np.array(weights, dtype=np.float32)).to(dtype)


def gguf_config(path: Path, dtype: str):
    """The transformers config of the GGUF at ``path``: untied when the file has its own
    ``output`` tensor, no quantization settings, ``dtype`` as the saved weights' dtype."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    names = {t.name for t in GGUFReader(str(path)).tensors}
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    values = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        values.pop(key, None)
    values["tie_word_embeddings"] = "output.weight" not in names
    values["dtype"] = dtype
    return type(config).from_dict(values)


def _expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the model ``config`` describes (built on the meta device);
    records that model's class in ``config.architectures``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    config.architectures = [type(model).__name__]
    return shapes


def write_sharded(tensors: Iterator[tuple[str, torch.Tensor]], out: Path) -> dict[str, tuple]:
    """Save ``tensors`` as ``model-0000k-of-0000n.safetensors`` shards of about
    :data:`SHARD_BYTES` plus ``model.safetensors.index.json``; return each name's shape."""
    from safetensors.torch import save_file

    shards: list[list[str]] = []
    weight_map: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        index = len(shards)
        save_file(pending, str(out / f"shard-{index}.tmp"), metadata={"format": "pt"})
        shards.append(list(pending))
        weight_map.update(dict.fromkeys(pending, index))
        pending, pending_bytes = {}, 0

    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if pending and pending_bytes + size > SHARD_BYTES:
            flush()
        pending[name], shapes[name] = tensor.contiguous(), tuple(tensor.shape)
        pending_bytes += size
        total += size
    if pending:
        flush()
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for i, file in enumerate(files):
        (out / f"shard-{i}.tmp").rename(out / file)
    index = {"metadata": {"total_size": total}, "weight_map": {k: files[v] for k, v in weight_map.items()}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return shapes


def convert_gguf_to_hf(path: Path, out: Path, *, dtype: str = "bfloat16") -> None:
    """Write a plain Hugging Face directory for the GGUF at ``path`` into ``out``: sharded
    safetensors in ``dtype``, ``config.json``, ``generation_config.json`` and the tokenizer with
    its chat template. Fails if the written names/shapes differ from what the config's model
    expects, or if the tokenizer has no chat template."""
    from transformers import AutoTokenizer, GenerationConfig

    config = gguf_config(path, dtype)
    expected = _expected_shapes(config)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    tensors = iter_hf_tensors(
        path,
        architecture=config.model_type,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        dtype=torch_dtype,
    )
    written = write_sharded(tensors, out)
    if written != expected:
        missing, extra = sorted(set(expected) - set(written)), sorted(set(written) - set(expected))
        wrong = sorted(k for k in set(written) & set(expected) if written[k] != expected[k])
        raise RuntimeError(f"{path}: tensors do not fit the config: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{path}: the GGUF tokenizer has no chat template")
    tokenizer.model_max_length = int(config.max_position_embeddings)
    tokenizer.save_pretrained(out)
