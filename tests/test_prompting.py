"""prefix_rft.rollout.prompting (and chat-template selection in prefix_rft.models.load_tokenizer)."""

from __future__ import annotations

import hashlib

import pytest

from prefix_rft.errors import UserError
from prefix_rft.models import TEMPLATES_DIR, load_tokenizer, shipped_chat_templates
from prefix_rft.rollout.prompting import (
    USER_SUFFIX,
    build_messages,
    encode_prompt,
    encode_response_text,
    stop_token_ids,
)

PROBLEM = "What is 7 + 5?"
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def qwen_templated(smollm2_dir):
    """SmolLM2's tokenizer (same ChatML special tokens) with the shipped Qwen2.5-Instruct template."""
    return load_tokenizer(str(smollm2_dir), chat_template="qwen2.5-instruct")


def test_user_suffix_is_the_papers():
    assert USER_SUFFIX == "\nPlease reason step by step, and put your final answer within \\boxed{}"


def test_build_messages_single_user_turn_no_system():
    assert build_messages(PROBLEM) == [{"role": "user", "content": PROBLEM + USER_SUFFIX}]
    assert build_messages(PROBLEM, user_suffix="") == [{"role": "user", "content": PROBLEM}]


def test_encode_prompt(smol_tokenizer):
    ids = encode_prompt(smol_tokenizer, PROBLEM)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    text = smol_tokenizer.decode(ids)
    # exactly: the template's own default system prompt (SmolLM2 injects one), our one user turn,
    # the generation prompt; no system prompt of ours
    assert text == (
        SMOL_SYSTEM + f"<|im_start|>user\n{PROBLEM}{USER_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>assistant\n")


def test_encode_prompt_think_tags(smol_tokenizer):
    plain = encode_prompt(smol_tokenizer, PROBLEM)
    think = encode_prompt(smol_tokenizer, PROBLEM, think_tags=True)
    assert think[: len(plain)] == plain
    assert think[len(plain) :] == smol_tokenizer.encode("<think>\n", add_special_tokens=False)
    assert smol_tokenizer.decode(think).endswith("<|im_start|>assistant\n<think>\n")


def test_encode_prompt_custom_suffix(smol_tokenizer):
    text = smol_tokenizer.decode(encode_prompt(smol_tokenizer, PROBLEM, user_suffix=" Answer:"))
    assert f"<|im_start|>user\n{PROBLEM} Answer:<|im_end|>" in text
    assert "boxed" not in text


def test_stop_token_ids_smollm2(smol_tokenizer):
    im_end = smol_tokenizer.get_vocab()["<|im_end|>"]
    ids = stop_token_ids(smol_tokenizer)
    assert im_end in ids
    assert len(ids) == len(set(ids))
    assert smol_tokenizer.eos_token_id in ids


def test_encode_response_text(smol_tokenizer):
    text = "7 + 5 = 12.\nSo the answer is \\boxed{12}."
    ids = encode_response_text(smol_tokenizer, text)
    im_end = smol_tokenizer.get_vocab()["<|im_end|>"]
    assert ids[-1] == im_end
    assert smol_tokenizer.decode(ids[:-1]) == text
    assert ids[0] != smol_tokenizer.bos_token_id  # no special tokens added in front
    assert encode_response_text(smol_tokenizer, text, end_of_turn=False) == ids[:-1]


def test_prompt_plus_response_matches_template(smol_tokenizer):
    """Prompt ids + response ids = the template's rendering of the full chat (up to <|im_end|>)."""
    response = "The answer is \\boxed{12}."
    full = encode_prompt(smol_tokenizer, PROBLEM) + encode_response_text(smol_tokenizer, response)
    rendered = smol_tokenizer.apply_chat_template(
        build_messages(PROBLEM) + [{"role": "assistant", "content": response}], tokenize=False
    )
    assert rendered.startswith(smol_tokenizer.decode(full))
    assert smol_tokenizer.decode(full).endswith("<|im_end|>")


def test_shipped_qwen_template(qwen_templated):
    assert set(shipped_chat_templates()) >= {"qwen2.5-instruct", "llama-3.1-instruct"}
    text = qwen_templated.decode(encode_prompt(qwen_templated, PROBLEM))
    assert "<|im_start|>user" in text
    assert text == (
        QWEN_SYSTEM + f"<|im_start|>user\n{PROBLEM}{USER_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert qwen_templated.padding_side == "left" and qwen_templated.pad_token is not None


def test_shipped_llama_template(smollm2_dir):
    tok = load_tokenizer(str(smollm2_dir), chat_template="llama-3.1-instruct")
    text = tok.apply_chat_template(build_messages("X", user_suffix=""), tokenize=False,
                                   add_generation_prompt=True)
    assert text == (
        tok.bos_token
        + "<|start_header_id|>system<|end_header_id|>\n\n"
        + "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        + "<|start_header_id|>user<|end_header_id|>\n\nX<|eot_id|>"
        + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # SmolLM2's vocabulary has no <|eot_id|>: end of turn falls back to eos
    assert stop_token_ids(tok) == [tok.eos_token_id]
    assert encode_response_text(tok, "hi")[-1] == tok.eos_token_id


def test_shipped_templates_unchanged():
    """The shipped files are byte-identical to the upstream templates (see templates/README.md)."""
    expected = {
        "qwen2.5-instruct": "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f",
        "llama-3.1-instruct": "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65",
    }
    for name, sha in expected.items():
        assert hashlib.sha256((TEMPLATES_DIR / f"{name}.jinja").read_bytes()).hexdigest() == sha


def test_chat_template_from_jinja_file_and_from_dir(smollm2_dir, tmp_path):
    path = tmp_path / "plain.jinja"
    path.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}"
    )
    tok = load_tokenizer(str(smollm2_dir), chat_template=str(path))
    text = tok.decode(encode_prompt(tok, "Q", user_suffix=""))
    assert text == "<|im_start|>user: Q<|im_end|><|im_start|>assistant: "
    # borrowing from a tokenizer directory: SmolLM2's own template
    borrowed = load_tokenizer(str(smollm2_dir), chat_template=str(smollm2_dir))
    assert "SmolLM" in borrowed.chat_template


def test_bad_chat_template_is_a_user_error(smollm2_dir, tmp_path):
    with pytest.raises(UserError, match="no-such-template"):
        load_tokenizer(str(smollm2_dir), chat_template="no-such-template")
    with pytest.raises(UserError, match="missing.jinja"):
        load_tokenizer(str(smollm2_dir), chat_template=str(tmp_path / "missing.jinja"))
    with pytest.raises(UserError, match="not_a_tokenizer"):
        (tmp_path / "not_a_tokenizer").mkdir()
        load_tokenizer(str(smollm2_dir), chat_template=str(tmp_path / "not_a_tokenizer"))


def test_pad_token_falls_back_to_eos(smollm2_dir, tmp_path):
    tok = load_tokenizer(str(smollm2_dir))
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    reloaded = load_tokenizer(str(tmp_path / "nopad"))
    assert reloaded.pad_token == reloaded.eos_token == "<|im_end|>"
    assert reloaded.padding_side == "left"


def test_encode_prompt_without_template_is_a_user_error(smollm2_dir):
    tok = load_tokenizer(str(smollm2_dir))
    tok.chat_template = None
    with pytest.raises(UserError, match="chat_template"):
        encode_prompt(tok, PROBLEM)
