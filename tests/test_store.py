"""The checkpoint store on a local directory and on a real (moto) S3 server: manifests with
hand-checked hashes, the commit protocol (manifest last, so interrupted saves and uploads are
never loaded, even when the writer is SIGKILLed mid-transfer), immutability, verification of
corrupted or swapped content, pruning, and the manifest that `save_checkpoint` now writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from prefix_rft.errors import UserError
from prefix_rft.io.store import (
    MANIFEST,
    CheckpointRef,
    LocalStore,
    S3Store,
    build_manifest,
    fetch_checkpoint,
    is_s3,
    open_checkpoint,
    open_store,
    sha256_file,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024**2
SHA_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2 example
SHA_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _ckpt_files(seed: int = 0) -> dict[str, bytes]:
    """A checkpoint-shaped tree (as prefix_rft.train.checkpoint writes it), content depending on seed."""
    weights = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return {"model/model.safetensors": weights, "model/config.json": b'{"hidden_size": 32}',
            "trainer_state.pt": bytes([seed % 256]) * 1000, "config.yaml": b"method: sft\n",
            "state.json": json.dumps({"global_step": seed}).encode()}


def _s3_uri(env, tag: str) -> str:
    return f"s3://{env.bucket}/test-store/{tag}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    env = request.getfixturevalue("s3_env")
    return S3Store(_s3_uri(env, "store"))


def _corrupt(store, ref: CheckpointRef, rel: str) -> None:
    """Flip the first byte of one committed file, in place."""
    if isinstance(store, LocalStore):
        p = Path(ref.uri) / rel
        data = bytearray(p.read_bytes())
        data[0] ^= 0xFF
        p.write_bytes(bytes(data))
    else:
        bucket, key = store._split(ref.uri)
        obj = store.client.get_object(Bucket=bucket, Key=f"{key}/{rel}")
        data = bytearray(obj["Body"].read())
        data[0] ^= 0xFF
        store.client.put_object(Bucket=bucket, Key=f"{key}/{rel}", Body=bytes(data))


def _put_uncommitted(store, name: str) -> str:
    """A checkpoint directory whose files are there but whose manifest never was."""
    uri = store.uri_for(name)
    if isinstance(store, LocalStore):
        _tree(Path(uri), {"state.json": b"{}", "trainer_state.pt": b"x"})
    else:
        bucket, key = store._split(uri)
        store.client.put_object(Bucket=bucket, Key=f"{key}/state.json", Body=b"{}")
    return uri


# ---------------------------------------------------------------------------------- manifests
def test_manifest_hashes_sizes_and_relpaths(tmp_path):
    big = bytes(range(256)) * 8193  # > the 1 MiB read chunk: chunked hashing must match hashlib
    d = _tree(tmp_path / "ck", {"a.txt": b"abc", "model/sub/empty.bin": b"", "model/big.bin": big,
                                MANIFEST: b"stale, not part of the manifest"})
    assert sha256_file(d / "a.txt") == SHA_ABC
    m = build_manifest(d, step=7, epoch=2, config_hash="cafe", meta={"phase": "rl"})
    assert m["files"] == {
        "a.txt": {"sha256": SHA_ABC, "size": 3},
        "model/big.bin": {"sha256": hashlib.sha256(big).hexdigest(), "size": 256 * 8193},
        "model/sub/empty.bin": {"sha256": SHA_EMPTY, "size": 0},
    }
    assert (m["format"], m["step"], m["epoch"], m["config_hash"], m["meta"]) == (1, 7, 2, "cafe",
                                                                               {"phase": "rl"})
    assert datetime.fromisoformat(m["created"]).utcoffset().total_seconds() == 0

    written = write_manifest(d, step=7, epoch=None, config_hash="cafe")
    assert json.loads((d / MANIFEST).read_text()) == written
    assert written["files"] == m["files"] and written["epoch"] is None
    assert sorted(p.name for p in d.iterdir()) == ["MANIFEST.json", "a.txt", "model"]  # no temp left
    # rewriting does not list the manifest itself
    assert MANIFEST not in write_manifest(d, step=8, epoch=None, config_hash="cafe")["files"]


def test_ref_round_trips_through_json():
    ref = CheckpointRef("s3://b/runs/r1/step-000010", 10, None, "h", "0" * 64, {"phase": "rl"})
    assert CheckpointRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert ref.name == "step-000010"
    assert is_s3(ref.uri) and not is_s3("/tmp/x")
    with pytest.raises(UserError, match="not a checkpoint reference"):
        CheckpointRef.from_dict({"uri": "x"})


# ---------------------------------------------------------------------------------- both stores
def test_commit_list_open_fetch_round_trip(store, tmp_path):
    files = _ckpt_files(1)
    src = _tree(tmp_path / "src", files)
    r2 = store.commit(src, "run-1/step-000002", step=2, epoch=0, config_hash="h", meta={"phase": "rl"})
    r5 = store.commit(_tree(tmp_path / "src5", _ckpt_files(5)), "run-1/step-000005", step=5,
                      epoch=1, config_hash="h")
    assert r2.uri == f"{store.root}/run-1/step-000002" and r2.name == "step-000002"
    assert (r2.step, r2.epoch, r2.config_hash, r2.meta) == (2, 0, "h", {"phase": "rl"})
    assert store.list() == [r2, r5] == store.list("run-1") == store.list("/run-1/")
    assert store.list("run-2") == []
    assert store.latest() == r5
    assert store.latest(where=lambda r: r.meta.get("phase") == "rl") == r2
    assert store.latest(where=lambda r: r.step > 5) is None
    assert store.open("run-1/step-000002") == r2 == store.open(r2.uri) == open_checkpoint(r2.uri)

    out = store.fetch(r2)
    if isinstance(store, LocalStore):
        assert out == Path(r2.uri)  # verified in place, no copy
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    # the fetched directory is itself the same committed checkpoint
    assert open_checkpoint(out).manifest_sha256 == r2.manifest_sha256
    if isinstance(store, S3Store):  # a fresh temp dir, the caller's to remove
        shutil.rmtree(out)

    dest = fetch_checkpoint(r5, tmp_path / "dest")
    assert dest == tmp_path / "dest"
    assert (dest / "trainer_state.pt").read_bytes() == _ckpt_files(5)["trainer_state.pt"]
    assert fetch_checkpoint(r5.uri, tmp_path / "dest2").is_dir()


def test_committed_checkpoints_are_immutable(store, tmp_path):
    ref = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "step-000001", step=1, epoch=None,
                       config_hash="h")
    with pytest.raises(UserError, match="immutable") as e:
        store.commit(_tree(tmp_path / "b", _ckpt_files(2)), "step-000001", step=1, epoch=None,
                     config_hash="h")
    assert ref.uri in str(e.value)
    out = store.fetch(ref, tmp_path / "out")
    assert (out / "state.json").read_bytes() == _ckpt_files(1)["state.json"]


def test_commit_with_move_renames_the_files_into_place(tmp_path):
    """move=True on one filesystem: each file is renamed (same inode, no copy), the manifest
    hashes what landed, and the caller's directory is left without files."""
    store = LocalStore(tmp_path / "store")
    src = _tree(tmp_path / "a", _ckpt_files(3))
    inode = (src / "model/model.safetensors").stat().st_ino
    ref = store.commit(src, "run/step-000003", step=3, epoch=1, config_hash="h", move=True)
    dest = Path(ref.uri)
    assert (dest / "model/model.safetensors").stat().st_ino == inode
    assert [p for p in src.rglob("*") if p.is_file()] == []
    manifest = json.loads((dest / MANIFEST).read_text())
    weights = _ckpt_files(3)["model/model.safetensors"]
    assert manifest["files"]["model/model.safetensors"] == {
        "size": 65536, "sha256": hashlib.sha256(weights).hexdigest()}
    assert store.open(ref.uri).step == 3


def test_commit_with_move_reuses_the_callers_hashes_of_unchanged_files(tmp_path, monkeypatch):
    """save_checkpoint has hashed its files into its own MANIFEST.json; a commit with move
    renames them and hashes only what changed since: here the config, rewritten with other
    bytes of the same size after the manifest. The manifest still holds every file's true hash."""
    import prefix_rft.io.store as store_mod

    files = _ckpt_files(5)
    src = _tree(tmp_path / "a", files)
    write_manifest(src, step=5, epoch=None, config_hash="h")
    later = (src / MANIFEST).stat().st_mtime_ns + 10**9
    (src / "config.yaml").write_bytes(b"method: rft\n")  # same size, other bytes, newer
    os.utime(src / "config.yaml", ns=(later, later))
    hashed = []
    real = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    ref = LocalStore(tmp_path / "store").commit(src, "run/step-000005", step=5, epoch=1,
                                                config_hash="h", move=True)
    assert hashed == ["config.yaml"]
    manifest = json.loads((Path(ref.uri) / MANIFEST).read_text())
    want = {**files, "config.yaml": b"method: rft\n"}
    assert manifest["files"] == {rel: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                                 for rel, data in want.items()}
    assert manifest["epoch"] == 1  # the commit's own fields, not the caller's manifest's
    # without move (a copy) or without a manifest of the caller's, everything is hashed
    src2 = _tree(tmp_path / "b", files)
    write_manifest(src2, step=5, epoch=None, config_hash="h")
    hashed.clear()
    LocalStore(tmp_path / "store").commit(src2, "run/step-000006", step=6, epoch=1, config_hash="h")
    assert sorted(hashed) == sorted(Path(rel).name for rel in files)


def test_a_failed_commit_with_move_gives_the_files_back(tmp_path, monkeypatch):
    """If the commit fails after the renames (here: writing the manifest), every file is back
    in the caller's directory, unchanged, and no staging directory is left."""
    import prefix_rft.io.store as store_mod

    store = LocalStore(tmp_path / "store")
    files = _ckpt_files(4)
    src = _tree(tmp_path / "a", files)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        store.commit(src, "run/step-000004", step=4, epoch=1, config_hash="h", move=True)
    assert {p.relative_to(src).as_posix(): p.read_bytes()
            for p in src.rglob("*") if p.is_file()} == files
    assert list((tmp_path / "store" / "run").iterdir()) == []


def test_list_skips_directories_without_manifest(store, tmp_path):
    ref = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "run/step-000001", step=1,
                       epoch=None, config_hash="h")
    half = _put_uncommitted(store, "run/step-000009")
    if isinstance(store, LocalStore):  # a staging dir that got as far as its manifest
        _tree(Path(store.root) / "run" / ".step-000009.tmp-x", {MANIFEST: b"{}"})
    assert store.list() == [ref] and store.latest() == ref
    for call in (lambda: store.open("run/step-000009"), lambda: store.fetch(half),
                 lambda: open_checkpoint(half)):
        with pytest.raises(UserError, match="is not a committed checkpoint") as e:
            call()
        assert half in str(e.value)


def test_prune_keeps_last_k_and_protected(store, tmp_path):
    src = _tree(tmp_path / "src", {"state.json": b"{}"})
    refs = [store.commit(src, f"run/step-{s:06d}", step=s, epoch=None, config_hash="h")
            for s in (1, 2, 3, 4, 5)]
    other = store.commit(src, "eval/best", step=2, epoch=None, config_hash="h")
    assert store.prune(0) == [] and len(store.list()) == 6
    deleted = store.prune(2, protect=["run/step-000001"], prefix="run")
    assert deleted == [refs[1].uri, refs[2].uri]
    assert store.list() == [refs[0], other, refs[3], refs[4]]  # sorted by (step, uri)
    # protect by full uri or last component; where= narrows what may be pruned
    assert store.prune(1, protect=[refs[0].uri, "best"]) == [refs[3].uri]
    assert store.prune(1, where=lambda r: r.step < 5) == [refs[0].uri]
    assert store.list() == [other, refs[4]]


def test_delete_removes_the_checkpoint(store, tmp_path):
    ref = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "run/step-000001", step=1,
                       epoch=None, config_hash="h")
    keep = store.commit(_tree(tmp_path / "b", _ckpt_files(2)), "run/step-000002", step=2,
                        epoch=None, config_hash="h")
    store.delete(ref)
    with pytest.raises(UserError, match="not a committed checkpoint"):
        store.open(ref.uri)
    assert store.list() == [keep]
    if isinstance(store, LocalStore):
        assert not Path(ref.uri).exists()
    else:
        bucket, key = store._split(ref.uri)
        assert store.client.list_objects_v2(Bucket=bucket, Prefix=key + "/")["KeyCount"] == 0
    store.delete("run/step-000002")  # by name
    assert store.list() == []


def test_corrupted_file_is_refused(store, tmp_path):
    ref = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "run/step-000001", step=1,
                       epoch=None, config_hash="h")
    _corrupt(store, ref, "model/model.safetensors")
    for target in (ref, ref.uri):
        with pytest.raises(UserError, match="sha256 mismatch") as e:
            store.fetch(target)
        assert ref.uri in str(e.value) and "model/model.safetensors" in str(e.value)
    # extra files are ignored: only what the manifest lists is checked
    if isinstance(store, LocalStore):
        (Path(ref.uri) / "model/model.safetensors").write_bytes(_ckpt_files(1)["model/model.safetensors"])
        (Path(ref.uri) / "notes.txt").write_text("added later")
        assert store.fetch(ref) == Path(ref.uri)


def test_an_evaluation_fetches_and_verifies_the_weights_only(store, tmp_path):
    """steps.common.fetch_into(..., only="model/"), as the eval task calls it: a changed optimizer
    state does not stop an evaluation, which never reads it (13 of a 1.5B float32 checkpoint's
    19 GB); a changed weights file does; from S3 only the weights come down."""
    from steps.common import fetch_into

    ref = store.commit(_tree(tmp_path / "a", _ckpt_files(2)), "run/step-000002", step=2,
                       epoch=1, config_hash="h")
    _corrupt(store, ref, "trainer_state.pt")
    got = fetch_into(ref.to_dict(), tmp_path / "scratch", only="model/")
    assert (got / "model/model.safetensors").read_bytes() == _ckpt_files(2)["model/model.safetensors"]
    files = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
    if isinstance(store, LocalStore):
        assert got == Path(ref.uri)  # verified in place
    else:
        assert files == ["model/config.json", "model/model.safetensors"]
    with pytest.raises(UserError, match="trainer_state.pt sha256 mismatch"):
        fetch_into(ref.to_dict(), tmp_path / "scratch2")  # the whole checkpoint: refused
    _corrupt(store, ref, "model/config.json")
    with pytest.raises(UserError, match="model/config.json sha256 mismatch"):
        fetch_into(ref.to_dict(), tmp_path / "scratch3", only="model/")


def test_ref_to_replaced_content_is_refused(store, tmp_path):
    old = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "run/step-000001", step=1,
                       epoch=None, config_hash="h")
    store.delete(old)
    new = store.commit(_tree(tmp_path / "b", _ckpt_files(2)), "run/step-000001", step=1,
                       epoch=None, config_hash="h")
    assert new.uri == old.uri and new.manifest_sha256 != old.manifest_sha256
    for ref in (old, dataclasses.replace(new, manifest_sha256="0" * 64)):
        with pytest.raises(UserError, match="MANIFEST.json sha256 mismatch") as e:
            store.fetch(ref, tmp_path / "out")
        assert new.uri in str(e.value)
    assert (store.fetch(new, tmp_path / "ok") / "state.json").read_bytes() == b'{"global_step": 2}'


# ---------------------------------------------------------------------------------- S3 specifics
def test_s3_multipart_upload_and_download(s3_env, tmp_path):
    store = S3Store(_s3_uri(s3_env, "multipart"), multipart_threshold=5 * MiB,
                    multipart_chunksize=5 * MiB, max_concurrency=4)
    big = os.urandom(12 * MiB)
    ref = store.commit(_tree(tmp_path / "a", {"model/big.safetensors": big, "state.json": b"{}"}),
                       "step-000001", step=1, epoch=None, config_hash="h")
    bucket, key = store._split(ref.uri)
    etag = store.client.head_object(Bucket=bucket, Key=f"{key}/model/big.safetensors")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # 12 MiB in 5 MiB parts: 5 + 5 + 2
    small = store.client.head_object(Bucket=bucket, Key=f"{key}/state.json")["ETag"]
    assert "-" not in small  # below the threshold: one PUT
    out = store.fetch(ref, tmp_path / "out")
    assert (out / "model/big.safetensors").read_bytes() == big


def test_s3_errors_name_the_uri(s3_env, tmp_path, monkeypatch):
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/ckpts"
    store = S3Store(missing)
    with pytest.raises(UserError, match="NoSuchBucket") as e:
        store.list()
    assert missing in str(e.value)
    with pytest.raises(UserError, match="no-such-bucket"):
        store.commit(_tree(tmp_path / "a", {"x": b"1"}), "step-1", step=1, epoch=None, config_hash="h")

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"s3://{s3_env.bucket}/ckpts"
    with pytest.raises(UserError, match="Could not connect") as e:
        S3Store(uri, endpoint_url=f"http://127.0.0.1:{port}").open("step-1")
    assert uri in str(e.value)
    with pytest.raises(UserError, match="unsupported checkpoint location"):
        open_store("gs://bucket/x")


def _put_headers(store: S3Store) -> list[dict]:
    """The headers of every PutObject the store's client sends from now on."""
    sent: list[dict] = []
    store.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers)))
    return sent


def _checksummed(headers: dict) -> bool:
    return any(k.lower().startswith("x-amz-checksum-") or k.lower() == "x-amz-trailer"
               for k in headers)


def test_s3_checksums_only_when_required_on_a_custom_endpoint(s3_env, tmp_path, monkeypatch):
    """Non-AWS endpoints get `when_required` checksums (boto3 >= 1.36 sends a CRC with every
    upload by default, which some S3-compatible servers reject); PREFIX_RFT_S3_CHECKSUMS
    overrides it, and AWS itself keeps botocore's default."""
    monkeypatch.delenv("PREFIX_RFT_S3_CHECKSUMS", raising=False)
    store = S3Store(_s3_uri(s3_env, "checksums"))
    config = store.client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    sent = _put_headers(store)
    files = _ckpt_files(3)
    ref = store.commit(_tree(tmp_path / "a", files), "step-3", step=3, epoch=None,
                       config_hash="h")
    out = fetch_checkpoint(ref, tmp_path / "out")  # a fresh store (and client) downloads
    assert {rel: (out / rel).read_bytes() for rel in files} == files
    assert len(sent) == len(files) + 1 and not any(_checksummed(h) for h in sent)

    monkeypatch.setenv("PREFIX_RFT_S3_CHECKSUMS", "when_supported")
    store = S3Store(_s3_uri(s3_env, "checksums"))
    assert store.client.meta.config.request_checksum_calculation == "when_supported"
    sent = _put_headers(store)
    store.commit(_tree(tmp_path / "b", {"x": b"1"}), "s", step=1, epoch=None, config_hash="h")
    assert sent and all(_checksummed(h) for h in sent)

    monkeypatch.setenv("PREFIX_RFT_S3_CHECKSUMS", "never")
    with pytest.raises(UserError, match=r"PREFIX_RFT_S3_CHECKSUMS='never' \(expected one of auto"):
        S3Store(_s3_uri(s3_env, "checksums"))
    monkeypatch.delenv("PREFIX_RFT_S3_CHECKSUMS")
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "METAFLOW_S3_ENDPOINT_URL",
                "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    aws = S3Store("s3://some-bucket/x").client.meta.config  # no request is made
    assert aws.request_checksum_calculation == "when_supported"  # botocore's default


# ---------------------------------------------------------------------------------- interruptions
COMMIT_SCRIPT = """
import sys
from prefix_rft.io.store import open_store
store = open_store(sys.argv[1], max_concurrency=int(sys.argv[5]), multipart_threshold=5 * 2**20,
                   multipart_chunksize=5 * 2**20)
store.commit(sys.argv[2], sys.argv[3], step=int(sys.argv[4]), epoch=None, config_hash="h")
"""


def _kill_mid_commit(root: str, src: Path, name: str, step: int, arrived, concurrency: int = 1,
                     timeout: float = 60) -> bool:
    """Run store.commit in a subprocess and SIGKILL it as soon as `arrived()` sees part of the
    checkpoint. Returns False when the commit finished before that (the caller grows the data)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", COMMIT_SCRIPT, root, str(src), name, str(step),
                             str(concurrency)], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if arrived():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")
                assert proc.returncode == 0, f"commit subprocess failed:\n{err[-3000:]}"
                return False
            time.sleep(0.005)
        pytest.fail(f"nothing of {name} arrived under {root} within {timeout:.0f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _big_tree(path: Path, mib: int) -> Path:
    block = os.urandom(MiB)
    _tree(path, {"config.yaml": b"method: sft\n", "state.json": b"{}", "trainer_state.pt": b"t" * 999})
    (path / "model").mkdir()
    with open(path / "model" / "model.safetensors", "wb") as f:
        for i in range(mib):
            f.write(block[:-4] + i.to_bytes(4, "big"))  # distinct blocks, cheap to make
    return path


def _assert_never_loaded(store, earlier: CheckpointRef, uri: str) -> None:
    assert [r.uri for r in store.list()] == [earlier.uri]
    assert store.latest() == earlier
    for call in (lambda: open_checkpoint(uri), lambda: store.fetch(uri), lambda: store.open(uri)):
        with pytest.raises(UserError, match="not a committed checkpoint") as e:
            call()
        assert uri in str(e.value)


def test_interrupted_s3_upload_is_never_loaded(s3_env, tmp_path):
    store = S3Store(_s3_uri(s3_env, "killed"))
    earlier = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "run/step-000001", step=1,
                           epoch=None, config_hash="h")
    uri = store.uri_for("run/step-000002")
    bucket, key = store._split(uri)
    c = store.client

    def arrived() -> bool:
        """Small files complete (2 files at a time) and >= 1 part of the big one uploaded."""
        if not c.list_objects_v2(Bucket=bucket, Prefix=key + "/")["KeyCount"]:
            return False
        return any(c.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                   for u in c.list_multipart_uploads(Bucket=bucket, Prefix=key + "/").get("Uploads", []))

    for mib in (40, 160):
        src = _big_tree(tmp_path / f"big{mib}", mib)
        if _kill_mid_commit(store.root, src, "run/step-000002", 2, arrived, concurrency=2):
            break
        store.delete(uri)  # it finished first: try again with more data
    else:
        pytest.fail("the upload always finished before it could be killed")
    leftovers = {o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=key + "/")["Contents"]}
    assert leftovers and f"{key}/{MANIFEST}" not in leftovers
    _assert_never_loaded(store, earlier, uri)

    # a retry of the same name succeeds and leaves exactly the new files (no stale objects/parts)
    again = store.commit(_tree(tmp_path / "small", _ckpt_files(2)), "run/step-000002", step=2,
                         epoch=None, config_hash="h")
    keys = {o["Key"] for o in c.list_objects_v2(Bucket=bucket, Prefix=key + "/")["Contents"]}
    assert keys == {f"{key}/{rel}" for rel in [*_ckpt_files(2), MANIFEST]}
    assert not c.list_multipart_uploads(Bucket=bucket, Prefix=key + "/").get("Uploads")
    assert store.latest() == again


def test_interrupted_local_commit_is_never_loaded(tmp_path):
    store = LocalStore(tmp_path / "store")
    earlier = store.commit(_tree(tmp_path / "a", _ckpt_files(1)), "run/step-000001", step=1,
                           epoch=None, config_hash="h")
    uri = store.uri_for("run/step-000002")
    run_dir = Path(store.root) / "run"

    def arrived() -> bool:  # the big file is being copied into the staging dir
        return any(t.joinpath("model", "model.safetensors").is_file()
                   for t in run_dir.glob(".step-000002.tmp-*"))

    for mib in (64, 256, 1024):
        src = _big_tree(tmp_path / f"big{mib}", mib)
        if _kill_mid_commit(store.root, src, "run/step-000002", 2, arrived):
            break
        store.delete(uri)
    else:
        pytest.fail("the local commit always finished before it could be killed")
    assert not Path(uri).exists() and list(run_dir.glob(".step-000002.tmp-*"))
    _assert_never_loaded(store, earlier, uri)
    again = store.commit(_tree(tmp_path / "small", _ckpt_files(2)), "run/step-000002", step=2,
                         epoch=None, config_hash="h")
    assert store.latest() == again


# ---------------------------------------------------------------------------------- local details
def test_open_checkpoint_without_manifest_names_it(tmp_path):
    d = _tree(tmp_path / "step-000003", {"state.json": b"{}", "trainer_state.pt": b"x"})
    for call in (open_checkpoint, fetch_checkpoint):
        with pytest.raises(UserError) as e:
            call(d)
        assert str(d) in str(e.value) and "no MANIFEST.json" in str(e.value)
        assert "interrupted save/upload" in str(e.value)


def test_local_commit_in_place_writes_only_the_manifest(tmp_path):
    store = LocalStore(f"file://{tmp_path}/store")
    assert store.root == str(tmp_path / "store")
    d = _tree(tmp_path / "store" / "run" / "step-000004", _ckpt_files(4))
    ref = store.commit(d, "run/step-000004", step=4, epoch=None, config_hash="h")
    assert ref.uri == str(d) and sorted(p.name for p in d.iterdir()) == sorted(
        ["MANIFEST.json", "model", "trainer_state.pt", "config.yaml", "state.json"])
    # committing the same directory again with the same fields is a no-op ...
    assert store.commit(d, "run/step-000004", step=4, epoch=None, config_hash="h") == ref
    # ... with other fields it would rewrite a committed checkpoint
    with pytest.raises(UserError, match="immutable"):
        store.commit(d, "run/step-000004", step=5, epoch=None, config_hash="h")


def test_save_checkpoint_writes_a_verifiable_manifest(smol_tokenizer, tmp_path):
    from prefix_rft.core.config import resolve
    from prefix_rft.data import Problem
    from prefix_rft.train.trainer import Trainer

    cfg = resolve({
        "method": "sft",
        "model": {"name_or_path": "unused", "device": "cpu",
                  "random_init": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "seed": 0}},
        "data": {"train": "unused"}, "reward": {"num_workers": 0}, "eval": {"num_problems": 0},
    })
    problems = [Problem("p0", "What is 1 + 1?", "2", ("1 + 1 = 2. \\boxed{2}",))]
    tr = Trainer(cfg, tokenizer=smol_tokenizer, train=problems, test=[], progress=False)
    path = tr.save(tmp_path / "checkpoints" / "step-000000")
    ref = open_checkpoint(path)
    assert (ref.uri, ref.step, ref.epoch, ref.config_hash) == (str(path), 0, None, cfg.config_hash())
    assert ref.meta == {"phase": tr.state.phase, "sft_step": 0, "optimizer_steps": 0,
                        "method": "sft"}
    manifest = json.loads((path / MANIFEST).read_text())
    assert {"trainer_state.pt", "config.yaml", "state.json", "model/model.safetensors"} <= set(
        manifest["files"])
    assert fetch_checkpoint(ref) == path
    # the store sees it, and committing it in place again is idempotent
    store = LocalStore(path.parent)
    assert store.list() == [ref]
    assert store.commit(path, "step-000000", step=0, epoch=None, config_hash=cfg.config_hash(),
                        meta=ref.meta) == ref


def test_verify_local_checkpoint_names_the_missing_manifest_and_the_changed_file(tmp_path):
    from prefix_rft.io.store import verify_local_checkpoint, write_manifest

    ck = tmp_path / "step-000001"
    (ck / "model").mkdir(parents=True)
    (ck / "model" / "w.bin").write_bytes(b"weights")
    with pytest.raises(UserError, match=f"checkpoint {ck}: no MANIFEST.json"):
        verify_local_checkpoint(ck)
    write_manifest(ck, step=1, epoch=None, config_hash="abc")
    assert verify_local_checkpoint(ck)["step"] == 1
    (ck / "model" / "w.bin").write_bytes(b"weightz")  # same size, other bytes
    with pytest.raises(UserError, match="model/w.bin sha256 mismatch"):
        verify_local_checkpoint(ck)
