"""Keep torch.compile's inductor importable next to packages that vendor typing_extensions.

Metaflow ships its own copy of typing_extensions (`metaflow._vendor.typing_extensions`, imported
lazily, e.g. by its vendored typeguard). On Python < 3.13 that copy replaces
`typing._collect_parameters` with a version that knows only its own `NoDefault` sentinel, so
once it is imported after torch, importing inductor fails ("TypeError: Type parameter ~_T1
without a default follows type parameter with a default"; the same clash as
pytorch/pytorch#140914 with pip's vendored copy). In a process that has both -- a flow task,
a test session -- the compiled decode step would then fall back to eager kernels and
`model.compile_layers` would fail; so would any torch module imported lazily afterwards (e.g.
`torch.distributed.tensor`, which transformers loads on demand). `restore_typing` points `typing`
back at the installed typing_extensions' function (the sentinel torch's type parameters carry);
`ensure_inductor_importable` does that and imports inductor, before anything is compiled.
Metaflow imports its copy only in `metaflow.runner.click_api` (`metaflow.Runner`), so flow tasks
started by `python flow.py run` never see the clash; a process that drives flows with
`metaflow.Runner` after importing torch (a notebook, this project's tests) does.
"""

from __future__ import annotations


def restore_typing() -> bool:
    """Undo a vendored typing_extensions' patch of `typing._collect_parameters` if one replaced
    the installed typing_extensions' (no-op on Python >= 3.13, where neither patches it).
    Returns whether it changed anything. Call it after importing what vendors the copy (e.g.
    `metaflow.Runner`) in a process that goes on to import torch modules."""
    import sys
    import typing

    current = getattr(typing, "_collect_parameters", None)
    te = sys.modules.get("typing_extensions")
    if te is None:
        try:
            import typing_extensions as te
        except ImportError:  # pragma: no cover - torch requires it
            te = None
    own = getattr(te, "_collect_parameters", None)
    if (current is not None and own is not None and current is not own
            and getattr(current, "__module__", "typing") != "typing"):
        typing._collect_parameters = own
        return True
    return False


def ensure_inductor_importable() -> None:
    """`restore_typing`, then import torch's inductor (before anything is compiled)."""
    restore_typing()
    import torch._inductor.compile_fx  # noqa: F401  (an import that the patch breaks)
