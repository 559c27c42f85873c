"""Prompt length limits: a problem whose prompt cannot fit the model's context is refused with one
clear error before anything is generated, never handed to the engine to allocate.

The rule (`PromptLimit`):

    context   the configured limit when there is one (training: `rollout.vllm.max_model_len`),
              else the model's `max_position_embeddings`
    budget    the response tokens the prompt must leave room for (training:
              `rollout.max_response_len`; evaluation: the protocol's `max_new_tokens`)
    limit     context - budget prompt tokens; when the budget alone fills the context (a released
              4k-context model with 8k-token responses) the limit is context - 1 and one warning
              says that responses may run past the model's positions

A prompt's length is that of `encode_prompt` (chat template, instruction suffix and the
`<think>` opener included). A problem over the limit is an error naming its file and row (or its
benchmark and id): the run stops before generating; the problem is neither dropped nor cut
silently. Nothing is truncated: a cut problem statement would be graded against an answer it
may no longer determine.

The check is cheap: a prompt of B UTF-8 bytes has at most B + (the empty prompt's tokens) + 8
tokens (every token covers at least one byte; 8 allows for merges at the template's seams), so
short prompts are accepted without tokenizing; a prompt of C characters has at least C / L
tokens, L being the longest token string of the vocabulary, so a huge one (a 10 MB line) is
refused without tokenizing. Only prompts between the two bounds are tokenized.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from prefix_rft.errors import UserError

log = logging.getLogger(__name__)

_SEAM_TOKENS = 8  # slack of the byte bound for merges where the template meets the problem


@dataclass(frozen=True)
class PromptLimit:
    """How many prompt tokens fit: `context` minus the response `budget` (see the module doc)."""

    context: int
    budget: int
    context_source: str  # what set the context, for messages ("max_position_embeddings", ...)
    budget_source: str  # what set the budget ("rollout.max_response_len", ...)

    @property
    def max_prompt_tokens(self) -> int:
        if self.budget >= self.context:
            return self.context - 1
        return self.context - self.budget

    def describe(self) -> str:
        return (f"at most {self.max_prompt_tokens} prompt tokens: context {self.context} "
                f"({self.context_source}) minus {self.budget} response tokens ({self.budget_source})")


def model_context(config_or_path) -> int | None:
    """`max_position_embeddings` of a model config, a model directory or a built-in model name;
    None when it cannot be read (a hub id offline): the token check is then skipped."""
    config = config_or_path
    if isinstance(config_or_path, str):
        try:
            from transformers import AutoConfig

            from prefix_rft.models import resolve_model_path

            config = AutoConfig.from_pretrained(resolve_model_path(config_or_path))
        except Exception as e:  # unreadable: say so, the engine still has its own limit
            log.warning("cannot read the context length of %s (%s): prompt lengths are not "
                        "checked against it", config_or_path, e)
            return None
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def longest_token_chars(tokenizer) -> int:
    """Characters of the longest token string of the vocabulary (special tokens included): no
    token covers more characters of a text than this."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def _origin(problem) -> str:
    origin = getattr(problem, "origin", "")
    if origin:
        return origin
    bench = getattr(problem, "benchmark", "")
    return f"{bench + ' ' if bench else ''}problem '{problem.id}'"


def check_prompt_lengths(problems: Sequence, tokenizer, limit: PromptLimit, *,
                         think_tags: bool = False, what: str = "data") -> None:
    """Raise `UserError` if any problem's prompt exceeds `limit` (see the module doc); the message
    names the first such problem's file and row and how many there are."""
    from prefix_rft.rollout.prompting import encode_prompt

    if not problems:
        return
    if limit.budget >= limit.context:
        log.warning("%s: the response budget (%d, %s) is not below the model's context (%d, %s): "
                    "responses may run past the model's positions", what, limit.budget,
                    limit.budget_source, limit.context, limit.context_source)
    max_tokens = limit.max_prompt_tokens
    overhead = len(encode_prompt(tokenizer, "", think_tags=think_tags))
    per_token = longest_token_chars(tokenizer)
    too_long: list[tuple[object, str]] = []
    for p in problems:
        text = getattr(p, "problem", None) or p.prompt
        if len(text) / per_token > max_tokens:  # certainly too long: no need to tokenize it
            too_long.append((p, f"{len(text)} characters, at least {len(text) // per_token} tokens"))
        elif len(text.encode("utf-8")) + overhead + _SEAM_TOKENS <= max_tokens:
            continue  # certainly fits
        else:
            n = len(encode_prompt(tokenizer, text, think_tags=think_tags))
            if n > max_tokens:
                too_long.append((p, f"{n} tokens"))
    if too_long:
        first, size = too_long[0]
        more = f" ({len(too_long)} of {len(problems)} problems are too long)" if len(too_long) > 1 else ""
        raise UserError(f"{_origin(first)}: prompt too long ({size}; {what} allows "
                        f"{limit.describe()}){more}; shorten or drop it")


def check_training_prompts(cfg, tokenizer, model_config, train: Sequence, test: Sequence) -> None:
    """The training problems against `rollout.max_response_len` and the held-out problems the
    trainer evaluates (the first `eval.num_problems`) against `eval.max_new_tokens`, in the
    context of `rollout.vllm.max_model_len` when set, else the model's."""
    configured = cfg.rollout.vllm.max_model_len
    context = configured or model_context(model_config)
    if not context:
        return
    source = "rollout.vllm.max_model_len" if configured else "the model's max_position_embeddings"
    check_prompt_lengths(train, tokenizer, PromptLimit(
        context, cfg.rollout.max_response_len, source, "rollout.max_response_len"),
        think_tags=cfg.model.think_tags, what="data.train")
    check_prompt_lengths(list(test)[: cfg.eval.num_problems], tokenizer, PromptLimit(
        context, cfg.eval.max_new_tokens, source, "eval.max_new_tokens"),
        think_tags=cfg.model.think_tags, what="data.test")
