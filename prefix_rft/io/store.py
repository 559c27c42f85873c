"""Checkpoint store: committed, verifiable checkpoints under a local directory or an S3 prefix.

A store is opened on a root URI (`/abs/dir`, `file:///abs/dir` or `s3://bucket/prefix`). Each
checkpoint is a "directory" below the root, named by a relative path that may contain slashes:

    <root>/<name>/
        model/...             whatever the writer put there (see `prefix_rft.train.checkpoint`)
        trainer_state.pt
        config.yaml
        state.json
        MANIFEST.json         {"format": 1, "files": {relpath: {"sha256", "size"}}, "step",
                              "epoch", "config_hash", "meta", "created"}

Commit protocol: a checkpoint exists exactly when its MANIFEST.json exists.
  * commit copies/uploads every file first and writes MANIFEST.json LAST, so an interrupted save
    or upload leaves a directory without a manifest, which `list`, `latest`, `open` and `fetch`
    never treat as a checkpoint. Locally the files are copied (or, with `move`, renamed) into a
    hidden sibling `.<leaf>.tmp-*` (skipped by `list`; the next commit into the same directory removes those
    an interrupted commit left, `remove_stale_staging`) and renamed into place; on S3 the
    manifest PUT is conditional (`If-None-Match: *`), so two writers cannot both commit one
    name, and the objects of an interrupted upload are cleared when that name is committed.
  * checkpoints are immutable: committing to a name that has a manifest is refused.
  * delete removes MANIFEST.json FIRST, so a half-deleted checkpoint is never loadable.
  * fetch verifies what it returns: the manifest's sha256 (when given a `CheckpointRef`, which
    pins the content) and every listed file's size and sha256.

A `CheckpointRef` is the small JSON-able handle that pipeline artifacts hold; `manifest_sha256`
identifies the checkpoint's content, so a ref can never silently resolve to other bytes.

Plain file logic: no torch, MLflow or Metaflow here; boto3 is imported only for S3 URIs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefix_rft.errors import UnavailableError, UserError

MANIFEST = "MANIFEST.json"
FORMAT = 1
_MANIFEST_TMP = f".{MANIFEST}."  # prefix of write_manifest's temp files: never part of a manifest
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------- manifests
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _rename(src: str | Path, dst: Path) -> bool:
    """Rename src to dst; False (nothing done) when they are on different filesystems."""
    try:
        os.rename(src, dst)
        return True
    except OSError:
        return False


def _manifest_files(local_dir: Path) -> Iterator[tuple[str, Path]]:
    """(posix relpath, path) of every file under local_dir except the manifest (and its temp
    files), sorted so manifests are byte-identical for identical trees."""
    out = []
    for dirpath, dirnames, filenames in os.walk(local_dir):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(local_dir).as_posix()
            if rel == MANIFEST or rel.startswith(_MANIFEST_TMP):
                continue
            out.append((rel, p))
    return iter(sorted(out))


def build_manifest(local_dir: str | Path, *, step: int, epoch: int | None, config_hash: str,
                   meta: dict | None = None, known: dict[str, str] | None = None) -> dict:
    """`known`: relpath -> sha256 already computed for exactly that file's bytes (a commit with
    `move` passes the caller's own manifest's): used instead of hashing the file again."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise UserError(f"{local_dir}: not a directory (cannot build a checkpoint manifest)")
    known = known or {}
    files = {rel: {"sha256": known.get(rel) or sha256_file(p), "size": p.stat().st_size}
             for rel, p in _manifest_files(local_dir)}
    return {"format": FORMAT, "files": files, "step": int(step),
            "epoch": None if epoch is None else int(epoch), "config_hash": str(config_hash),
            "meta": dict(meta or {}), "created": datetime.now(timezone.utc).isoformat()}


def _manifest_bytes(manifest: dict) -> bytes:
    """The one serialisation: CheckpointRef.manifest_sha256 is the sha256 of these bytes."""
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def write_manifest(local_dir: str | Path, *, step: int, epoch: int | None, config_hash: str,
                   meta: dict | None = None, known: dict[str, str] | None = None) -> dict:
    """Write local_dir/MANIFEST.json atomically (temp file + fsync + os.replace): a reader sees
    either no manifest or a complete one. `known`: as for build_manifest."""
    local_dir = Path(local_dir)
    manifest = build_manifest(local_dir, step=step, epoch=epoch, config_hash=config_hash, meta=meta,
                              known=known)
    _write_bytes_atomic(local_dir / MANIFEST, _manifest_bytes(manifest))
    return manifest


def _unchanged_hashes(local_dir: Path) -> dict[str, str]:
    """relpath -> sha256 from local_dir's own MANIFEST.json (save_checkpoint writes one) for the
    files it lists that have not changed since: same size, not modified after the manifest was
    written. Empty when there is no readable manifest; every other file is hashed."""
    path = local_dir / MANIFEST
    try:
        written = path.stat().st_mtime_ns
        listed = json.loads(path.read_bytes())["files"]
        out = {}
        for rel, info in listed.items():
            st = (local_dir / rel).lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size == info["size"] and st.st_mtime_ns <= written:
                out[rel] = str(info["sha256"])
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=_MANIFEST_TMP, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _parse_manifest(uri: str, data: bytes) -> dict:
    try:
        m = json.loads(data)
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or "step" not in m:
            raise ValueError("expected an object with 'files' and 'step'")
    except ValueError as e:
        raise UserError(f"checkpoint {uri}: {MANIFEST} is malformed ({e})") from None
    if m.get("format") != FORMAT:
        raise UserError(f"checkpoint {uri}: {MANIFEST} has format {m.get('format')!r}; "
                        f"this version reads format {FORMAT}")
    return m


def _verify_files(uri: str, local_dir: Path, manifest: dict) -> None:
    """Every listed file exists with its size and sha256; extra files are ignored."""
    for rel, info in manifest["files"].items():
        p = local_dir / rel
        if not p.is_file():
            raise UserError(f"checkpoint {uri}: {rel} is missing")
        size = p.stat().st_size
        if size != info["size"]:
            raise UserError(f"checkpoint {uri}: {rel} size mismatch "
                            f"(expected {info['size']} bytes, got {size})")
        got = sha256_file(p)
        if got != info["sha256"]:
            raise UserError(f"checkpoint {uri}: {rel} sha256 mismatch "
                            f"(expected {info['sha256']}, got {got})")


def verify_local_checkpoint(path: str | Path) -> dict:
    """Check a checkpoint directory on this machine against its MANIFEST.json (every listed file
    there, with its size and sha256) and return the manifest; `UserError` naming the directory
    and the first file that differs, or the missing manifest (an uncommitted directory)."""
    path = Path(path)
    try:
        data = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise UserError(f"checkpoint {path}: no {MANIFEST} (not a committed checkpoint: its save "
                        "was interrupted, or it was not written by prefix-rft)") from None
    manifest = _parse_manifest(str(path), data)
    _verify_files(str(path), path, manifest)
    return manifest


# ---------------------------------------------------------------------------------- refs
@dataclass(frozen=True, eq=True, unsafe_hash=False)
class CheckpointRef:
    """What pipeline artifacts hold: where a checkpoint is and which content it must have."""

    uri: str
    step: int
    epoch: int | None
    config_hash: str
    manifest_sha256: str
    meta: dict = field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment]  # holds a dict: equality yes, hashing no

    def to_dict(self) -> dict:
        return {"uri": self.uri, "step": self.step, "epoch": self.epoch,
                "config_hash": self.config_hash, "manifest_sha256": self.manifest_sha256,
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointRef:
        try:
            return cls(uri=str(d["uri"]), step=int(d["step"]),
                       epoch=None if d.get("epoch") is None else int(d["epoch"]),
                       config_hash=str(d["config_hash"]),
                       manifest_sha256=str(d["manifest_sha256"]), meta=dict(d.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a checkpoint reference: {d!r} ({e!r})") from None

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def _ref(uri: str, manifest_data: bytes) -> CheckpointRef:
    m = _parse_manifest(uri, manifest_data)
    return CheckpointRef(uri=uri, step=int(m["step"]), epoch=m.get("epoch"),
                        config_hash=str(m.get("config_hash", "")),
                        manifest_sha256=hashlib.sha256(manifest_data).hexdigest(),
                        meta=dict(m.get("meta") or {}))


def _not_committed(uri: str) -> UserError:
    return UserError(f"{uri} is not a committed checkpoint (no {MANIFEST}): an interrupted "
                     f"save/upload, or not a checkpoint")


def _check_ref(ref: CheckpointRef, data: bytes) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != ref.manifest_sha256:
        raise UserError(f"checkpoint {ref.uri}: {MANIFEST} sha256 mismatch (expected "
                        f"{ref.manifest_sha256}, got {got}): its content is not the referenced one")


def _only(uri: str, data: bytes, manifest: dict, only: str | None) -> tuple[str, bytes, dict]:
    """The manifest restricted to the files below the relative directory `only` (all if None)."""
    if only is None:
        return uri, data, manifest
    below = only.strip("/") + "/"
    files = {rel: info for rel, info in manifest["files"].items() if rel.startswith(below)}
    if not files:
        raise UserError(f"checkpoint {uri}: no files under {below}")
    return uri, data, {**manifest, "files": files}


def _clean_name(name: str) -> str:
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise UserError(f"checkpoint name {name!r}: expected a relative path like "
                        f"'run-1/step-000010' (no '..')")
    return "/".join(parts)


def is_staging_name(name: str) -> bool:
    """A staging directory's name (`.<leaf>.tmp-*`, where a save or commit writes before the
    rename that commits it): hidden, so never the name of a committed checkpoint."""
    return name.startswith(".") and ".tmp-" in name


def remove_stale_staging(directory: str | Path) -> list[Path]:
    """Remove the staging directories directly under `directory` that an interrupted save or
    commit left behind (killed before its rename); log a line naming each. Call it where one
    writer owns `directory` (a run's checkpoint directory), before that writer stages anew: a
    staging directory of a writer still running there would be taken from under it (its
    rename then fails; nothing committed is ever touched). Returns the removed paths."""
    import logging

    directory = Path(directory)
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for p in sorted(entries):
        if is_staging_name(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            logging.getLogger(__name__).warning(
                "removed %s: the staging directory of an interrupted save (never committed)", p)
    return removed


def _hidden(rel: str) -> bool:
    """Under a hidden component (`.x.tmp-*` staging dirs): never a committed checkpoint."""
    return any(p.startswith(".") for p in rel.split("/") if p)


# ---------------------------------------------------------------------------------- stores
def _parallel(fn: Callable[[str], None], items: list[str], workers: int) -> None:
    """fn over items on a thread pool; the first failure cancels what has not started yet."""
    if not items:
        return
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


# Where boto3 clients find an S3-compatible endpoint (MinIO, Ceph, R2, moto), first set wins.
S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "METAFLOW_S3_ENDPOINT_URL",
                    "MLFLOW_S3_ENDPOINT_URL")
# Checksum policy of the project's S3 clients: "auto" (the default) is "when_required" for a
# custom endpoint and botocore's own default on AWS; "when_required" / "when_supported" force one.
S3_CHECKSUMS_VAR = "PREFIX_RFT_S3_CHECKSUMS"
_CHECKSUM_MODES = ("auto", "when_required", "when_supported")


def s3_endpoint_url() -> str | None:
    """The S3 endpoint URL the environment names, or None for AWS itself."""
    return next((os.environ[k] for k in S3_ENDPOINT_VARS if os.environ.get(k)), None)


def s3_checksum_mode(endpoint_url: str | None) -> str | None:
    """The checksum setting for a client of `endpoint_url`, or None to leave botocore's default.

    botocore (boto3 >= 1.36) computes a CRC checksum for every upload and validates the checksums
    of downloads by default; several S3-compatible servers reject or mangle those headers. With a
    custom endpoint the clients therefore only send/check checksums an operation requires, unless
    `PREFIX_RFT_S3_CHECKSUMS` says otherwise. botocore's own variables
    (AWS_REQUEST_CHECKSUM_CALCULATION, AWS_RESPONSE_CHECKSUM_VALIDATION) win over "auto"."""
    mode = os.environ.get(S3_CHECKSUMS_VAR, "auto").strip().lower() or "auto"
    if mode not in _CHECKSUM_MODES:
        raise UserError(f"{S3_CHECKSUMS_VAR}={mode!r} (expected one of {', '.join(_CHECKSUM_MODES)})")
    if mode != "auto":
        return mode
    if not endpoint_url or any(os.environ.get(k) for k in (
            "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")):
        return None
    return "when_required"


def s3_config_kwargs(endpoint_url: str | None, **extra: Any) -> dict[str, Any]:
    """`botocore.config.Config` keyword arguments for an S3 client of `endpoint_url`: `extra`
    plus the checksum policy of `s3_checksum_mode`. Shared by the checkpoint store's boto3
    client and the data loaders' s3fs file system."""
    mode = s3_checksum_mode(endpoint_url)
    if mode is not None:
        extra.update(request_checksum_calculation=mode, response_checksum_validation=mode)
    return extra


class CheckpointStore(ABC):
    """Checkpoints below `root`; see the module docstring for the commit protocol."""

    root: str

    # -- implemented by subclasses
    @abstractmethod
    def uri_for(self, name_or_uri: str | Path) -> str:
        """A name relative to root (may contain '/') or a full URI -> the full URI."""
        raise NotImplementedError

    @abstractmethod
    def commit(self, local_dir: str | Path, name: str, *, step: int, epoch: int | None,
               config_hash: str, meta: dict | None = None, move: bool = False) -> CheckpointRef:
        """Copy/upload local_dir's files to <root>/<name>, then its manifest (rebuilt from the
        files): the checkpoint exists from that last write on. Refuses an existing one.
        `move`: the caller gives local_dir up, so a store on the same filesystem may rename its
        files into place instead of copying them (the caller removes local_dir afterwards)."""
        raise NotImplementedError

    @abstractmethod
    def _read_manifest(self, uri: str) -> bytes | None:
        """The manifest's bytes, or None when there is none."""
        raise NotImplementedError

    @abstractmethod
    def _manifest_uris(self, prefix: str) -> list[str]:
        raise NotImplementedError

    @abstractmethod
    def fetch(self, ref_or_uri: CheckpointRef | str, dest: str | Path | None = None,
              verify: bool = True, only: str | None = None) -> Path:
        """A local directory with the checkpoint's files, checked against its manifest (and a
        ref's manifest_sha256); verify=False skips the per-file size and sha256 checks.
        `only`: a relative directory (e.g. "model/"): fetch and verify just the files below it
        (inference needs the weights, not the optimizer state)."""
        raise NotImplementedError

    @abstractmethod
    def _delete(self, uri: str) -> None:
        raise NotImplementedError

    # -- shared
    def _prefix_uri(self, prefix: str) -> str:
        return self.root if not str(prefix).strip("/") else f"{self.root}/{_clean_name(prefix)}"

    def _committed(self, ref_or_uri: CheckpointRef | str) -> tuple[str, bytes, dict]:
        """(uri, manifest bytes, parsed manifest) of a committed checkpoint; a ref's manifest
        hash must match."""
        ref = ref_or_uri if isinstance(ref_or_uri, CheckpointRef) else None
        uri = self.uri_for(ref.uri if ref else ref_or_uri)
        data = self._read_manifest(uri)
        if data is None:
            raise _not_committed(uri)
        if ref is not None:
            _check_ref(ref, data)
        return uri, data, _parse_manifest(uri, data)

    def open(self, name_or_uri: str | Path) -> CheckpointRef:
        uri = self.uri_for(name_or_uri)
        data = self._read_manifest(uri)
        if data is None:
            raise _not_committed(uri)
        return _ref(uri, data)

    def _try_open(self, uri: str) -> CheckpointRef | None:
        """Like open, but None when the manifest vanished (deleted since it was listed)."""
        data = self._read_manifest(uri)
        return None if data is None else _ref(uri, data)

    def _open_many(self, uris: list[str]) -> list[CheckpointRef]:
        return [r for r in map(self._try_open, uris) if r is not None]

    def list(self, prefix: str = "") -> list[CheckpointRef]:
        """Every committed checkpoint under root/prefix (recursive; `prefix` is a directory),
        sorted by (step, uri)."""
        refs = self._open_many(self._manifest_uris(prefix))
        return sorted(refs, key=lambda r: (r.step, r.uri))

    def latest(self, where: Callable[[CheckpointRef], bool] | None = None,
               prefix: str = "") -> CheckpointRef | None:
        refs = [r for r in self.list(prefix) if where is None or where(r)]
        return refs[-1] if refs else None

    def delete(self, ref_or_uri: CheckpointRef | str) -> None:
        uri = ref_or_uri.uri if isinstance(ref_or_uri, CheckpointRef) else self.uri_for(ref_or_uri)
        self._delete(uri)

    def prune(self, keep_last: int, protect: Iterable[str | CheckpointRef] = (), prefix: str = "",
              where: Callable[[CheckpointRef], bool] | None = None) -> list[str]:
        """Delete all but the newest `keep_last` (by step) of list(prefix) that match `where`,
        sparing those named in `protect` (uri, name relative to root, or last component).
        keep_last <= 0 keeps everything. Returns the deleted URIs."""
        if keep_last <= 0:
            return []
        refs = [r for r in self.list(prefix) if where is None or where(r)]
        keep = {r.uri for r in refs[-keep_last:]}
        protected = {p.uri if isinstance(p, CheckpointRef) else str(p).rstrip("/") for p in protect}
        deleted = []
        for r in refs:
            rel = r.uri[len(self.root) + 1:] if r.uri.startswith(self.root + "/") else r.uri
            if r.uri in keep or protected & {r.uri, rel, r.name}:
                continue
            self._delete(r.uri)
            deleted.append(r.uri)
        return deleted


class LocalStore(CheckpointStore):
    """Checkpoints in a local (or mounted) directory tree."""

    def __init__(self, root: str | Path):
        root = str(root)
        if root.startswith("file://"):
            root = root[len("file://"):]
        self.root = os.path.abspath(os.path.expanduser(root))

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def uri_for(self, name_or_uri: str | Path) -> str:
        s = str(name_or_uri)
        if s.startswith("file://"):
            s = s[len("file://"):]
        if os.path.isabs(s):
            return os.path.abspath(s)
        return os.path.join(self.root, *_clean_name(s).split("/"))

    def _read_manifest(self, uri: str) -> bytes | None:
        try:
            return (Path(uri) / MANIFEST).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _manifest_uris(self, prefix: str) -> list[str]:
        base = Path(self._prefix_uri(prefix))
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # staging dirs
            if MANIFEST in filenames:
                out.append(os.path.abspath(dirpath))
        return out

    def commit(self, local_dir: str | Path, name: str, *, step: int, epoch: int | None,
               config_hash: str, meta: dict | None = None, move: bool = False) -> CheckpointRef:
        """Copy local_dir to <root>/<name> via a hidden staging sibling renamed into place; the
        manifest is written inside it before the rename, so the final path appears complete.
        With `move`, files on the store's filesystem are renamed into the staging dir instead of
        copied, and a renamed file that local_dir's own MANIFEST.json lists, unchanged since, is
        not hashed again (a 1.5B float32 checkpoint with its AdamW state is 19 GB, which
        save_checkpoint has just hashed); if the commit fails the files go back."""
        src = Path(local_dir)
        dest = Path(self.uri_for(_clean_name(name)))
        if not src.is_dir():
            raise UserError(f"{src}: not a directory (nothing to commit as {dest})")
        kw = {"step": step, "epoch": epoch, "config_hash": config_hash, "meta": meta}
        in_place = src.resolve() == dest.resolve()  # written in place (e.g. by save_checkpoint)
        if (dest / MANIFEST).exists():
            if in_place and self._same_commit(dest, **kw):
                return self.open(str(dest))  # idempotent: this exact commit already happened
            raise UserError(f"{dest} is already a committed checkpoint; checkpoints are "
                            f"immutable (delete it first or choose another name)")
        if in_place:
            write_manifest(dest, **kw)
            return self.open(str(dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(dest.parent)  # left by this run's interrupted commits
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        moved: list[tuple[Path, Path]] = []  # (source, staged) of the files renamed, not copied
        # a renamed file keeps its bytes: the hash the caller's own manifest has for it stands
        unchanged = _unchanged_hashes(src) if move else {}
        known = {}
        try:
            for rel, p in _manifest_files(src):
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                if move and not p.is_symlink() and _rename(p, tmp / rel):
                    moved.append((Path(p), tmp / rel))
                    if rel in unchanged:
                        known[rel] = unchanged[rel]
                else:
                    shutil.copy2(p, tmp / rel)
            write_manifest(tmp, **kw, known=known)  # hashes the copies: it describes what landed
            if dest.exists():  # an uncommitted leftover (interrupted delete): not a checkpoint
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            for source, staged in moved:  # the caller's files back where they were
                _rename(staged, source)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.open(str(dest))

    def _same_commit(self, dest: Path, *, step: int, epoch: int | None, config_hash: str,
                     meta: dict | None) -> bool:
        """dest's manifest has these fields and matches its files (e.g. save_checkpoint wrote it
        and the pipeline now commits the same directory in place)."""
        data = self._read_manifest(str(dest))
        m = _parse_manifest(str(dest), data or b"")
        if (m["step"], m.get("epoch"), m.get("config_hash"), m.get("meta") or {}) != (
                int(step), epoch, str(config_hash), dict(meta or {})):
            return False
        try:
            _verify_files(str(dest), dest, m)
        except UserError:
            return False
        return set(m["files"]) == {rel for rel, _ in _manifest_files(dest)}

    def fetch(self, ref_or_uri: CheckpointRef | str, dest: str | Path | None = None,
              verify: bool = True, only: str | None = None) -> Path:
        """Verify in place and return the checkpoint's own directory (no copy), or copy the
        listed files (and manifest) into `dest` and verify the copy."""
        uri, data, manifest = _only(*self._committed(ref_or_uri), only)
        src = Path(uri)
        if dest is None:
            out = src
        else:
            out = Path(dest)
            out.mkdir(parents=True, exist_ok=True)
            for rel in manifest["files"]:
                if not (src / rel).is_file():
                    raise UserError(f"checkpoint {uri}: {rel} is missing")
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, out / rel)
            if only is None:  # a partial copy is not a checkpoint
                _write_bytes_atomic(out / MANIFEST, data)
        if verify:
            _verify_files(uri, out, manifest)
        return out

    def _delete(self, uri: str) -> None:
        p = Path(uri)
        with contextlib.suppress(FileNotFoundError):
            (p / MANIFEST).unlink()  # first: from here on it is not a checkpoint
        shutil.rmtree(p, ignore_errors=True)


class S3Store(CheckpointStore):
    """Checkpoints under an S3 prefix, moved by boto3's managed (multipart, threaded) transfers.

    The endpoint is `endpoint_url`, else the first of `S3_ENDPOINT_VARS` set, else AWS; with a
    custom endpoint the client computes checksums only when required (see `s3_checksum_mode`)."""

    def __init__(self, root: str, *, endpoint_url: str | None = None, max_concurrency: int = 8,
                 multipart_threshold: int = 8 * 1024**2, multipart_chunksize: int = 8 * 1024**2,
                 client: Any = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not is_s3(root):
            raise UserError(f"{root}: not an s3:// URI")
        bucket, _, key = str(root)[len("s3://"):].partition("/")
        if not bucket:
            raise UserError(f"{root}: expected s3://bucket/prefix")
        self.bucket, self.prefix = bucket, key.strip("/")
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.max_concurrency = max(1, int(max_concurrency))
        self.endpoint_url = endpoint_url or s3_endpoint_url()
        # files in parallel x parts in parallel share one connection pool: size it for both
        self.client = client or boto3.client(
            "s3", endpoint_url=self.endpoint_url,
            config=Config(**s3_config_kwargs(
                self.endpoint_url, max_pool_connections=max(10, self.max_concurrency * 4))))
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize,
            max_concurrency=self.max_concurrency, use_threads=True,
            preferred_transfer_client="classic")

    def __repr__(self) -> str:
        return f"S3Store({self.root!r}, endpoint_url={self.endpoint_url!r})"

    # -- addressing
    def uri_for(self, name_or_uri: str | Path) -> str:
        s = str(name_or_uri)
        if is_s3(s):
            return s.rstrip("/")
        return f"{self.root}/{_clean_name(s)}"

    def _split(self, uri: str) -> tuple[str, str]:
        """(bucket, key prefix of the checkpoint dir, with no trailing slash)."""
        bucket, _, key = uri[len("s3://"):].partition("/")
        return bucket, key.strip("/")

    @staticmethod
    def _key(prefix: str, rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    @contextlib.contextmanager
    def _errors(self, uri: str, what: str) -> Iterator[None]:
        """botocore/s3transfer failures (no bucket, denied, unreachable) as one-line UserErrors."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            err = e.response.get("Error", {})
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            cls = UnavailableError if status >= 500 or status == 429 else UserError
            raise cls(f"{uri}: {what} failed: {err.get('Code', '?')} "
                      f"{err.get('Message') or ''} (endpoint {self.endpoint_url or 'AWS'})"
                      .rstrip()) from None
        except (BotoCoreError, Boto3Error) as e:  # no connection, timeouts: may pass on retry
            raise UnavailableError(f"{uri}: {what} failed: {e} "
                                   f"(endpoint {self.endpoint_url or 'AWS'})") from None

    def _exists(self, bucket: str, key: str, uri: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(uri, "HEAD " + key):
            try:
                self.client.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

    def _keys(self, bucket: str, prefix: str, uri: str) -> Iterator[dict]:
        with self._errors(uri, "listing"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=prefix)
            for page in pages:
                yield from page.get("Contents", [])

    # -- protocol
    def _read_manifest(self, uri: str) -> bytes | None:
        from botocore.exceptions import ClientError

        bucket, prefix = self._split(uri)
        key = self._key(prefix, MANIFEST)
        with self._errors(uri, f"reading {MANIFEST}"):
            try:
                return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def _manifest_uris(self, prefix: str) -> list[str]:
        base = self._prefix_uri(prefix)
        bucket, key = self._split(base)
        out = []
        for obj in self._keys(bucket, f"{key}/" if key else "", base):
            k = obj["Key"]
            if k == MANIFEST or k.endswith("/" + MANIFEST):
                d = k[: -len(MANIFEST)].rstrip("/")
                rel = d[len(key):] if key else d
                if not _hidden(rel):
                    out.append(f"s3://{bucket}/{d}" if d else f"s3://{bucket}")
        return out

    def _open_many(self, uris: list[str]) -> list[CheckpointRef]:
        if len(uris) <= 1:
            return super()._open_many(uris)
        with ThreadPoolExecutor(min(self.max_concurrency, len(uris))) as pool:
            return [r for r in pool.map(self._try_open, uris) if r is not None]

    def commit(self, local_dir: str | Path, name: str, *, step: int, epoch: int | None,
               config_hash: str, meta: dict | None = None, move: bool = False) -> CheckpointRef:
        """Upload every file (several at once, each a managed multipart transfer), then PUT the
        manifest last and conditionally: only then does the checkpoint exist. (`move` changes
        nothing: an upload is a copy; the caller removes local_dir.)"""
        src = Path(local_dir)
        uri = self.uri_for(_clean_name(name))
        bucket, prefix = self._split(uri)
        manifest_key = self._key(prefix, MANIFEST)
        if self._exists(bucket, manifest_key, uri):
            raise UserError(f"{uri} is already a committed checkpoint; checkpoints are immutable "
                            f"(delete it first or choose another name)")
        manifest = build_manifest(src, step=step, epoch=epoch, config_hash=config_hash, meta=meta)
        # Objects and multipart uploads left by an interrupted upload are not a checkpoint:
        # clear them so the directory holds exactly the new files (and no parts stay billed).
        self._clear(bucket, prefix, uri)
        # Largest first: the long transfers start early, small files fill in around them.
        order = sorted(manifest["files"], key=lambda r: (-manifest["files"][r]["size"], r))

        def upload(rel: str) -> None:
            with self._errors(uri, f"uploading {rel}"):
                self.client.upload_file(str(src / rel), bucket, self._key(prefix, rel),
                                        Config=self.transfer)

        _parallel(upload, order, self.max_concurrency)
        data = _manifest_bytes(manifest)
        self._put_manifest(bucket, manifest_key, data, uri)
        return _ref(uri, data)

    def _put_manifest(self, bucket: str, key: str, data: bytes, uri: str) -> None:
        from botocore.exceptions import ClientError

        with self._errors(uri, f"writing {MANIFEST}"):
            try:
                self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*",
                                       ContentType="application/json")
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise UserError(f"{uri} was committed by another writer meanwhile; "
                                    f"checkpoints are immutable") from None
                if code not in ("NotImplemented", "501"):
                    raise
                # an S3-compatible server without conditional writes: plain PUT
                self.client.put_object(Bucket=bucket, Key=key, Body=data,
                                       ContentType="application/json")

    def fetch(self, ref_or_uri: CheckpointRef | str, dest: str | Path | None = None,
              verify: bool = True, only: str | None = None) -> Path:
        """Download the listed files (concurrently) and the manifest into `dest` (default: a new
        temp dir, removed again on failure) and verify them."""
        uri, data, manifest = _only(*self._committed(ref_or_uri), only)
        bucket, prefix = self._split(uri)
        made = dest is None
        out = Path(tempfile.mkdtemp(prefix="prefix-rft-ckpt-")) if made else Path(dest)
        try:
            out.mkdir(parents=True, exist_ok=True)

            def download(rel: str) -> None:
                from botocore.exceptions import ClientError

                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                with self._errors(uri, f"downloading {rel}"):
                    try:
                        self.client.download_file(bucket, self._key(prefix, rel), str(out / rel),
                                                  Config=self.transfer)
                    except ClientError as e:
                        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                            raise UserError(f"checkpoint {uri}: {rel} is missing") from None
                        raise

            files = sorted(manifest["files"], key=lambda r: -manifest["files"][r]["size"])
            _parallel(download, files, self.max_concurrency)
            if only is None:  # a partial copy is not a checkpoint
                _write_bytes_atomic(out / MANIFEST, data)
            if verify:
                _verify_files(uri, out, manifest)
        except BaseException:
            if made:
                shutil.rmtree(out, ignore_errors=True)
            raise
        return out

    def _delete_objects(self, bucket: str, keys: list[str], uri: str) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            with self._errors(uri, "deleting"):
                resp = self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                           "Quiet": True})
            if resp.get("Errors"):
                e = resp["Errors"][0]
                raise UserError(f"{uri}: deleting {e.get('Key')} failed: {e.get('Code')} "
                                f"{e.get('Message', '')}")

    def _clear(self, bucket: str, prefix: str, uri: str) -> None:
        """Delete every object and abort every multipart upload under prefix/."""
        if not prefix:
            raise UserError(f"{uri}: refusing to clear a whole bucket; checkpoints live under a "
                            f"key prefix")
        under = f"{prefix}/"
        self._delete_objects(bucket, [o["Key"] for o in self._keys(bucket, under, uri)], uri)
        with self._errors(uri, "aborting unfinished multipart uploads"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                                 Prefix=under)
            for page in pages:
                for up in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=bucket, Key=up["Key"],
                                                       UploadId=up["UploadId"])

    def _delete(self, uri: str) -> None:
        bucket, prefix = self._split(uri)
        with self._errors(uri, f"deleting {MANIFEST}"):
            self.client.delete_object(Bucket=bucket, Key=self._key(prefix, MANIFEST))  # first
        self._clear(bucket, prefix, uri)


# ---------------------------------------------------------------------------------- helpers
def open_store(uri: str | Path, **kw: Any) -> CheckpointStore:
    """LocalStore for paths and file:// URIs, S3Store (kwargs: endpoint_url, max_concurrency,
    multipart_threshold, multipart_chunksize) for s3:// URIs."""
    if is_s3(uri):
        return S3Store(str(uri), **kw)
    if "://" in str(uri) and not str(uri).startswith("file://"):
        raise UserError(f"{uri}: unsupported checkpoint location "
                        f"(expected a path, file:// or s3://)")
    return LocalStore(uri)


def open_checkpoint(uri: str | Path) -> CheckpointRef:
    """The ref of the checkpoint directory at `uri`; UserError if it has no manifest."""
    store = open_store(uri)  # rooted at the checkpoint itself: root is the normalised URI
    return store.open(store.root)


def fetch_checkpoint(uri_or_ref: str | Path | CheckpointRef,
                     dest: str | Path | None = None, only: str | None = None) -> Path:
    """A verified local directory with the checkpoint (local ones are verified in place);
    `only`: just the files below that relative directory (see `CheckpointStore.fetch`)."""
    if isinstance(uri_or_ref, CheckpointRef):
        return open_store(uri_or_ref.uri).fetch(uri_or_ref, dest, only=only)
    store = open_store(uri_or_ref)
    return store.fetch(store.root, dest, only=only)
