"""Running the Metaflow pipeline in tests: `metaflow.Runner` on flows/prefix_rft_flow.py with the
tiny config (tests/pipeline_configs.py), against the session's real MLflow server and moto S3.

Importing this module imports Metaflow, which reads its datastore root when imported: the
module points it at a private directory first. The session-scoped `happy_flow` fixture
(conftest.py) runs `happy_run` once, for tests/test_pipeline.py and tests/test_notebook.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

_MF_ROOT = tempfile.mkdtemp(prefix="prefix-rft-metaflow-")
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _MF_ROOT
os.environ["METAFLOW_CARD_LOCALROOT"] = os.path.join(_MF_ROOT, "cards")
os.environ["METAFLOW_USER"] = "tester"

import metaflow.runner.click_api  # noqa: E402, F401  (loads Metaflow's vendored typing_extensions now)
from metaflow import Runner, namespace  # noqa: E402, F401 (namespace: for the tests)

from prefix_rft.torch_compat import restore_typing  # noqa: E402

restore_typing()  # ...whose patch of `typing` breaks torch modules imported later in this session

from tests import pipeline_configs  # noqa: E402

FLOW = str(Path(__file__).resolve().parents[1] / "flows" / "prefix_rft_flow.py")
EXPERIMENT = "pipeline-tests"
# The shared happy run's experiment: the notebook test compares the runs in it, so the other
# pipeline tests' runs (failures, warm starts) stay out of it.
SHARED_EXPERIMENT = "pipeline-shared-runs"


def tiny_config(model_dir, root: Path, *, experiment: str = EXPERIMENT, **extra) -> dict:
    """The shared tiny config written to `root/config.yaml`: {"path": ..., "data": ...}."""
    cfg = pipeline_configs.tiny_config(model_dir, root, experiment=experiment, **extra)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"path": path, "data": cfg}


def flow_env(servers, root: Path, **extra) -> dict:
    env = {
        **servers.env(),
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": _MF_ROOT,
        "METAFLOW_CARD_LOCALROOT": os.path.join(_MF_ROOT, "cards"),
        "METAFLOW_USER": "tester",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2",
        "TQDM_DISABLE": "1",
    }
    env.update(extra)
    return env


def run_flow(config_path, env, cwd, *, resume: str | None = None, origin: str | None = None,
             **params):
    # a resumed run reuses its origin's config (Metaflow refuses --config with resume)
    top = {} if origin is not None else {"config": [("config", str(config_path))]}
    with Runner(FLOW, show_output=False, env=env, cwd=str(cwd), **top) as runner:
        if origin is not None:
            kw = {"origin_run_id": origin}
            if resume:
                kw["step_to_rerun"] = resume
            result = runner.resume(**kw)
        else:
            result = runner.run(**params)
        out = result.stdout + result.stderr
        return result.run, result.status, out


def happy_run(servers, model_dir, root: Path) -> dict:
    """One full run on a local checkpoint root (prefix_rft, 2 epochs, base + 2 epochs
    evaluated) in SHARED_EXPERIMENT."""
    cfg = tiny_config(model_dir, root, experiment=SHARED_EXPERIMENT)
    run, status, out = run_flow(cfg["path"], flow_env(servers, root), root)
    return {"run": run, "status": status, "out": out, "root": root, "cfg": cfg}
