"""Turning a problem into prompt token ids, and a response into training token ids.

Token ids in, token ids out: everything downstream (rollouts, prefixes, losses) works on the
lists returned here, so the chat template is applied in exactly one place.

Prompt format (as in the paper): no system prompt of ours, one user turn holding the problem
followed by :data:`USER_SUFFIX`, then the template's generation prompt. The chat template is
the tokenizer's (choose it with ``prefix_rft.models.load_tokenizer(..., chat_template=...)``) and
is used as is: some templates insert their own default system prompt when none is given, e.g.
SmolLM2's ("You are a helpful AI assistant named SmolLM, trained by Hugging Face") and
Qwen2.5-Instruct's ("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."); that
is the model's template, and it is kept.

A response ends with the template's end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, ...), so a
demonstration trained with :func:`encode_response_text` teaches the model to stop, and generation
stops on any of :func:`stop_token_ids`.
"""

from __future__ import annotations

from typing import Any

from prefix_rft.errors import UserError

USER_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}"
"""The paper's user suffix, appended to every problem."""

THINK_OPEN = "<think>\n"

# End-of-turn tokens of common chat templates, in order of preference.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>")


def build_messages(problem: str, *, user_suffix: str = USER_SUFFIX) -> list[dict]:
    """The chat for one problem: a single user turn, ``problem + user_suffix``; no system prompt."""
    return [{"role": "user", "content": f"{problem}{user_suffix}"}]


def _as_id_list(encoded: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)`` output (list, BatchEncoding or tensor) -> list[int]."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):  # a batch of one
        if len(encoded) != 1:
            raise ValueError(f"expected one sequence, got {len(encoded)}")
        encoded = list(encoded[0])
    return [int(i) for i in encoded]


def encode_prompt(
    tokenizer,
    problem: str,
    *,
    user_suffix: str = USER_SUFFIX,
    think_tags: bool = False,
) -> list[int]:
    """Prompt token ids for ``problem``: the chat template with the generation prompt.

    With ``think_tags=True`` the ids of ``"<think>\\n"`` are appended after the generation prompt;
    the model then writes its reasoning, ``"</think>"``, then the answer.
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "?"
        raise UserError(
            f"tokenizer {name!r}: has no chat template; pass chat_template= to load_tokenizer "
            "(e.g. 'qwen2.5-instruct' or 'llama-3.1-instruct')"
        )
    messages = build_messages(problem, user_suffix=user_suffix)
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    ids = _as_id_list(encoded)
    if think_tags:
        ids += tokenizer.encode(THINK_OPEN, add_special_tokens=False)
    return ids


def _template_text(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: use all of them
        return "\n".join(str(t) for t in template.values())
    return template or ""


def end_of_turn_id(tokenizer) -> int:
    """The id that closes an assistant turn: the chat template's end-of-turn token if the template
    uses one and the vocabulary has it (``<|im_end|>``, ``<|eot_id|>``, ...), else eos."""
    vocab = tokenizer.get_vocab()
    template = _template_text(tokenizer)
    for token in _END_OF_TURN_TOKENS:
        if token in template and token in vocab:
            return int(vocab[token])
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no end-of-turn token in its chat template and no eos token")
    return int(tokenizer.eos_token_id)


def stop_token_ids(tokenizer) -> list[int]:
    """Every id that ends a response: the eos id(s), plus the chat template's end-of-turn token(s)
    (``<|im_end|>``, ``<|eot_id|>``, ``<|end_of_text|>``, ``<|endoftext|>``) that the template uses
    and the vocabulary has; deduplicated, eos first."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for i in eos if isinstance(eos, (list, tuple)) else [eos]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    vocab = tokenizer.get_vocab()  # membership test: convert_tokens_to_ids maps unknowns to unk
    template = _template_text(tokenizer)
    for token in _END_OF_TURN_TOKENS:
        if token in template and token in vocab and int(vocab[token]) not in ids:
            ids.append(int(vocab[token]))
    return ids


def encode_response_text(tokenizer, text: str, *, end_of_turn: bool = True) -> list[int]:
    """Token ids of a response/demonstration, without any special tokens added at the start;
    with ``end_of_turn`` the end-of-turn id (:func:`end_of_turn_id`) is appended so a trained
    demonstration teaches the model to stop."""
    ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    if end_of_turn:
        ids.append(end_of_turn_id(tokenizer))
    return ids
