"""MLflow 3 lineage against the session's real MLflow server (tests/conftest.py): a committed
checkpoint of a tiny random model (a few MB) becomes a LoggedModel that points at the checkpoint
(no weights copied into MLflow), metrics are logged against it, it is registered with aliases,
and the registered model loads by its `models:/` URI, both through
`prefix_rft.io.tracking.load_registered` (an HF directory) and `mlflow.pyfunc.load_model`.

Checkpoints live on the session's S3 server (moto) and in a local store; the loaders fetch only
the `model/` files, hash-verified.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch

from prefix_rft.io import run_layout
from prefix_rft.io.store import open_store
from prefix_rft.io.tracking import Tracker, load_registered


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tiny_checkpoint(smollm2_dir, tmp_path_factory) -> Path:
    """A checkpoint-shaped directory: model/ (random 1-layer model + SmolLM2's tokenizer) and a
    stand-in optimizer state that no loader may fetch."""
    from prefix_rft.models import load_tokenizer, tiny_random_model

    root = tmp_path_factory.mktemp("tiny-ckpt") / "ckpt"
    tok = load_tokenizer(str(smollm2_dir))
    model = tiny_random_model(len(tok), hidden_size=16, num_layers=1, num_heads=2, seed=3)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "trainer_state.pt").write_bytes(b"optimizer state")
    return root


def _commit(store_root: str, local: Path, run: str = "42"):
    return open_store(store_root).commit(
        local, f"{run}/step-000002", step=2, epoch=1, config_hash="cfg123",
        meta={"kind": "checkpoint", "method": "prefix_rft", "end_of_epoch": True})


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_checkpoint_model_registered_and_loaded_from_s3(s3_env, tiny_checkpoint, tmp_path,
                                                         monkeypatch):
    import mlflow

    servers = s3_env
    prefix = _unique("lineage")
    ref = _commit(f"s3://{servers.bucket}/{prefix}", tiny_checkpoint)
    t = Tracker(servers.mlflow_uri, timeout_s=10)
    exp = _unique("lineage-tests")
    run = t.create_run(exp, "lineage", {})
    eid = t.experiment_id(exp)

    model_id = t.checkpoint_model(eid, run, ref.to_dict())
    assert t.checkpoint_model(eid, run, ref.to_dict()) == model_id  # looked up, not made again
    m = t.logged_model(model_id)
    assert m["name"] == "42-step-000002" and m["status"].endswith("READY")
    assert m["source_run_id"] == run
    assert m["tags"][run_layout.MODEL_CHECKPOINT_URI_TAG] == ref.uri
    assert m["tags"][run_layout.MODEL_MANIFEST_TAG] == ref.manifest_sha256
    assert m["params"] == {"step": "2", "epoch": "1", "config_hash": "cfg123", "end_of_epoch": "True",
                           "manifest_sha256": ref.manifest_sha256, "method": "prefix_rft"}
    # only a pointer in MLflow's artifact store: no weights were copied
    arts = {a.path for a in t.client.list_logged_model_artifacts(model_id)}
    assert arts == {"MLmodel", "checkpoint.json"}
    assert [o.model_id for o in t.client.get_run(run).outputs.model_outputs] == [model_id]

    t.log_metrics(run, {"eval/heldout/avg_at_1": 0.25, "eval/heldout/ci_low": 0.1}, step=1,
                  model_id=model_id)
    assert t.logged_model(model_id)["metrics"] == {"eval/heldout/avg_at_1": 0.25,
                                                   "eval/heldout/ci_low": 0.1}

    name = _unique("lineage-model")
    version = t.register_model(name, model_id, aliases=("best", "last"), tags={"epoch": "1"})
    mv = t.client.get_model_version_by_alias(name, "best")
    assert str(mv.version) == version == "1" and mv.source == f"models:/{model_id}"
    assert mv.run_id == run and mv.tags["epoch"] == "1"
    assert str(t.client.get_model_version_by_alias(name, "last").version) == "1"
    assert name in t.logged_model(model_id)["tags"]["mlflow.modelVersions"]

    # the documented one-liner: an HF directory with just the model files, hash-verified
    got = load_registered(f"models:/{name}@best", tracking_uri=servers.mlflow_uri,
                          dst=tmp_path / "dl")
    assert got == tmp_path / "dl" / "model"
    assert not (tmp_path / "dl" / "trainer_state.pt").exists()
    want = _weights(tiny_checkpoint / "model")
    assert {k: v.equal(want[k]) for k, v in _weights(got).items()} == {k: True for k in want}

    # ... and MLflow's own loader, through the pyfunc flavour of the pointer model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", servers.mlflow_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@best")
    out = pyfunc.predict(["1+1=", "2+2="], params={"max_new_tokens": 3})
    assert len(out) == 2 and all(isinstance(x, str) for x in out)
    assert out == pyfunc.predict(["1+1=", "2+2="], params={"max_new_tokens": 3})  # greedy


def test_local_checkpoint_model_loads_in_place(local_servers, tiny_checkpoint, tmp_path):
    """A local store on this machine (a local MLflow or a server this machine can read): the
    loader verifies the checkpoint's model/ in place; nothing is downloaded or copied."""
    ref = _commit(str(tmp_path / "store"), tiny_checkpoint, run="7")
    t = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    exp = _unique("lineage-local")
    t.client.create_experiment(exp, artifact_location=str(tmp_path / "art"))
    run = t.create_run(exp, "lineage", {})
    model_id = t.checkpoint_model(t.experiment_id(exp), run, ref.to_dict())
    assert t.logged_model(model_id)["name"] == "7-step-000002"
    version = t.register_model("local-model", model_id, aliases=("best",))
    got = load_registered("models:/local-model@best", tracking_uri=t.uri)
    assert got == Path(ref.uri) / "model" and version == "1"
    # a changed weight file is refused, naming it
    (Path(ref.uri) / "model" / "config.json").write_text("{}")
    with pytest.raises(Exception, match="config.json size mismatch|config.json sha256 mismatch"):
        load_registered(f"models:/{model_id}", tracking_uri=t.uri)


def test_deleted_checkpoints_are_tagged(local_servers, tiny_checkpoint, tmp_path):
    ref = _commit(str(tmp_path / "store"), tiny_checkpoint, run="8")
    t = Tracker(local_servers.mlflow_uri, timeout_s=10)
    exp = _unique("lineage-deleted")
    run = t.create_run(exp, "lineage", {})
    eid = t.experiment_id(exp)
    model_id = t.checkpoint_model(eid, run, ref.to_dict())
    t.mark_checkpoints_deleted(eid, [ref.uri, str(tmp_path / "never-committed")])
    assert t.logged_model(model_id)["tags"][run_layout.MODEL_DELETED_TAG] == "true"


def test_loading_keeps_the_tracking_uri_of_the_environment(monkeypatch, tmp_path):
    """`load_registered` switches MLflow's process-wide URI for its block; afterwards the
    process must still use $MLFLOW_TRACKING_URI (MLflow's own helper deletes the variable when it
    puts back an unset URI, which sent a later `mlflow.pyfunc.load_model` to a local sqlite file)."""
    import mlflow

    from prefix_rft.io.tracking import _process_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/from-env")
    with _process_tracking_uri(f"sqlite:///{tmp_path}/other.db"):
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/other.db"
    assert os.environ.get("MLFLOW_TRACKING_URI") == "http://127.0.0.1:9/from-env"
    assert mlflow.get_tracking_uri() == "http://127.0.0.1:9/from-env"


def test_transfer_timeout_lengthens_requests_only_while_artifacts_move(monkeypatch):
    """`_transfer_timeout` raises MLflow's per-request timeout to at least 600 s inside the block
    (nested blocks share it), puts the previous value back after, and keeps a larger one."""
    from prefix_rft.io import tracking as T

    key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    monkeypatch.setenv(key, "10")
    with T._transfer_timeout():
        assert os.environ[key] == "600"
        with T._transfer_timeout():
            assert os.environ[key] == "600"
        assert os.environ[key] == "600"  # the outer block still runs
    assert os.environ[key] == "10"
    monkeypatch.setenv(key, "900")
    with T._transfer_timeout():
        assert os.environ[key] == "900"
    monkeypatch.delenv(key)
    with pytest.raises(RuntimeError), T._transfer_timeout():
        assert os.environ[key] == "600"
        raise RuntimeError("a failed upload")
    assert key not in os.environ


def test_copied_weights_go_through_multipart_upload_and_download(s3_env, tiny_checkpoint, tmp_path,
                                                                 monkeypatch):
    """Weights copied into a LoggedModel (local checkpoints, MLflow a server) take MLflow's
    multipart paths once a file passes its size thresholds (lowered here to 1 MB; by default
    500 MB, so a 1.5B model's 3 GB takes them): presigned part uploads and a "complete" call
    made under the long transfer timeout (with the default 10 s, a GB-size file's "complete"
    timed out and its retry failed for good), then a presigned ranged download. The loaded
    file is byte-identical and lands in `dst` itself (no second copy)."""
    from mlflow.store.artifact import http_artifact_repo

    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(1024**2))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(5 * 1024**2))  # S3's least
    monkeypatch.setenv("MLFLOW_MULTIPART_DOWNLOAD_MINIMUM_FILE_SIZE", str(1024**2))
    model = tmp_path / "model"
    model.mkdir()
    for f in (tiny_checkpoint / "model").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    blob = os.urandom(11 * 1024**2 + 5)  # 3 parts: 5 MB, 5 MB, the rest
    (model / "extra.bin").write_bytes(blob)
    seen = []
    real = http_artifact_repo.HttpArtifactRepository.complete_multipart_upload

    def complete(self, *a, **kw):  # the real call, noting the timeout it runs under
        seen.append(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT"))
        return real(self, *a, **kw)

    monkeypatch.setattr(http_artifact_repo.HttpArtifactRepository, "complete_multipart_upload",
                        complete)
    t = Tracker(s3_env.mlflow_uri, timeout_s=10)
    exp = _unique("lineage-copied")
    run = t.create_run(exp, "lineage", {})
    m = t.client.create_logged_model(t.experiment_id(exp), name="copied", source_run_id=run)
    t.attach_weights(m.model_id, model)
    big = sorted(f.name for f in model.iterdir() if f.stat().st_size >= 1024**2)
    assert "extra.bin" in big  # with the weights and tokenizer.json: each completed under
    assert seen == ["600"] * len(big)  # the transfer timeout
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"  # metadata calls: short again
    arts = {a.path for a in t.client.list_logged_model_artifacts(m.model_id, "model")}
    assert "model/extra.bin" in arts and "model/config.json" in arts
    t.client.finalize_logged_model(m.model_id, "READY")
    name = _unique("copied-model")
    t.register_model(name, m.model_id, aliases=("best",))
    got = load_registered(f"models:/{name}@best", tracking_uri=s3_env.mlflow_uri,
                          dst=tmp_path / "dl")
    assert got == tmp_path / "dl" / "model"
    assert (got / "extra.bin").read_bytes() == blob
    want = _weights(tiny_checkpoint / "model")
    assert {k: v.equal(want[k]) for k, v in _weights(got).items()} == {k: True for k in want}
