"""The policy's weights as an engine with its own copy receives them (`WeightSyncedEngine`).

`policy_weights(model)` yields every parameter of the trainer's policy once, as a full tensor
under its Hugging Face name, cast to the engine's dtype one tensor at a time (never a second full
copy of the model):

* FSDP2-sharded parameters (DTensors) are gathered with `full_tensor()`, one parameter at a
  time, a collective: every rank iterates the same names in the same order, so every rank's
  engine gets the whole model while no rank holds more than one gathered parameter. (The trainer
  pushes outside `distributed.unsharded`; inside it the parameters would already be whole and
  nothing would be communicated.)
* wrapper prefixes that activation checkpointing and `torch.compile` add to module names are
  removed, so names are those of the model's `state_dict` on disk (what vLLM's `load_weights`
  and `from_pretrained` expect).
* tied parameters (input embeddings = output head) are one parameter and come once, under the
  first name; an engine that ties them too fills both.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def hf_name(name: str) -> str:
    """`name` without the module-wrapper parts that checkpointing/compile/FSDP1 insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def policy_weights(model: torch.nn.Module, dtype: torch.dtype | None = None
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, full detached tensor in `dtype`) for every parameter of `model`."""
    for name, param in model.named_parameters():
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # an FSDP2 shard: gather (collective)
            tensor = tensor.full_tensor()
        if dtype is not None and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        yield hf_name(name), tensor
