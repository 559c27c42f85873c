"""Open a data spec as `datasets.Dataset` parts: the one loading path of training and held-out data.

A spec is a hub dataset (`hub:owner/name[:config]`), a local `.jsonl` / `.json` / `.parquet`
file or a directory of them, or the same behind an fsspec URL (`s3://bucket/key.parquet`,
`s3://bucket/dir/`, `gs://...` when that backend is installed). Every one is loaded with
`datasets.load_dataset`, so each file is read once into the datasets cache (`HF_DATASETS_CACHE`)
and memory-mapped from there on; a changed file is read again.

Each file is one `Part` (a hub split is one part too), kept apart because a directory may mix
schemas and because errors name the file:
  * `.parquet` and hub data come as typed columns (`kind="table"`);
  * `.jsonl` comes one text row per line (`kind="jsonl"`, blank lines kept, so row i is line
    i + 1) and `.json` as one text row holding the document (`kind="json"`). The readers parse
    the JSON themselves: rows of one file may then have different shapes (LUFFY's `target` is a
    string in some rows and a list in others), which a typed Arrow column could not hold, and a
    malformed line is reported with its line number.

S3 URLs use s3fs with the endpoint and credentials of the usual AWS variables
(`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, keys, region) and the checkpoint store's checksum
policy for non-AWS endpoints. A missing object or bucket is one `UserError` naming the URL.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from prefix_rft.errors import UserError

HUB_PREFIX = "hub:"
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
LOCAL_HINT = "local .jsonl/.json/.parquet files and directories always work"
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")

# Split names recognised at the start of a file name in a directory, with their aliases.
SPLIT_ALIASES = {
    "train": "train",
    "test": "test",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "eval": "validation",
}


@dataclass(frozen=True)
class Part:
    """One loaded file (or hub split): `where` names it in errors, `stem` makes fallback ids."""

    where: str
    stem: str
    kind: str  # "table" (typed columns), "jsonl" (one text row per line) or "json" (one document)
    dataset: Any  # datasets.Dataset, or any iterable of row dicts for "table"
    file: bool = True  # False for a hub split (which may be empty)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def url_protocol(spec: str | Path) -> str | None:
    """The fsspec protocol of a URL spec (`s3`, `gs`, ...), None for local paths and `file://`."""
    m = _URL.match(str(spec))
    if not m or m.group(1).lower() == "file":
        return None
    return m.group(1).lower()


def storage_options(protocol: str) -> dict[str, Any]:
    """fsspec options for `protocol`: for S3 the endpoint of the AWS variables (s3fs's botocore
    reads keys and region itself) and the store's checksum policy for non-AWS endpoints."""
    if protocol not in ("s3", "s3a"):
        return {}
    from prefix_rft.io.store import s3_config_kwargs, s3_endpoint_url

    endpoint = s3_endpoint_url()
    options: dict[str, Any] = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    config = s3_config_kwargs(endpoint)
    if config:
        options["config_kwargs"] = config
    return options


def datasets_module():
    """The `datasets` package, or a `UserError` saying it is missing."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "the 'datasets' package is not installed (a core dependency of prefix-rft: "
            "pip install -e . again)"
        ) from None
    return datasets


def in_memory_dataset(rows: list[dict]):
    """`datasets.Dataset.from_list(rows)` fingerprinted by the rows' JSON. By default
    `datasets` fingerprints an in-memory table by pickling it with dill, which raised
    `PicklingError: Can't pickle <class 'MonthDayNano'>` on the GPU machine (datasets 5.2.0,
    pyarrow 25.0.1, 2026-12-06) where the same versions pickle fine on the CPU VM; a content
    fingerprint also keeps `map`'s cache keyed by what the rows hold."""
    import hashlib
    import json

    datasets = datasets_module()
    import pyarrow as pa
    from datasets.table import InMemoryTable

    blob = json.dumps(rows, sort_keys=True, default=str).encode()
    return datasets.Dataset(InMemoryTable(pa.Table.from_pylist(rows)),
                            fingerprint=hashlib.sha256(blob).hexdigest()[:16])


def split_of(name: str) -> str | None:
    head = re.split(r"[-_.]", name.lower(), maxsplit=1)[0]
    return SPLIT_ALIASES.get(head)


def files_for_split(where: str, names: list[str], split: str) -> list[str]:
    """The data file names of a directory listing that belong to `split` (all of them when no
    name starts with a split name), sorted."""
    files = sorted(n for n in names if PurePosixPath(n).suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise UserError(f"{where}: directory has no .jsonl, .json or .parquet file")
    if not any(split_of(PurePosixPath(f).name) for f in files):
        return files
    wanted = SPLIT_ALIASES.get(split.lower(), split.lower())
    chosen = [f for f in files if split_of(PurePosixPath(f).name) == wanted]
    if not chosen:
        found = ", ".join(PurePosixPath(f).name for f in files)
        raise UserError(f"{where}: no file for split '{split}' (found: {found})")
    return chosen


def load_file(file: str, *, options: dict | None = None) -> Part:
    """One `.jsonl` / `.json` / `.parquet` file (a local path or a URL) as a `Part`."""
    name = PurePosixPath(file.rstrip("/")).name
    suffix = PurePosixPath(name).suffix.lower()
    stem = PurePosixPath(name).stem
    if suffix == ".parquet":
        builder, kind, extra = "parquet", "table", {}
    elif suffix == ".jsonl":
        builder, kind, extra = "text", "jsonl", {"sample_by": "line"}
    elif suffix == ".json":
        builder, kind, extra = "text", "json", {"sample_by": "document"}
    else:
        raise UserError(
            f"{file}: unsupported file type '{PurePosixPath(name).suffix}' "
            f"(expected .jsonl, .json or .parquet)"
        )
    datasets = datasets_module()
    kwargs = {"storage_options": options} if options else {}
    try:
        with _own_storage_online(datasets, remote=url_protocol(file) is not None):
            ds = datasets.load_dataset(builder, data_files=file, split="train", **extra, **kwargs)
    except Exception as e:
        raise _load_error(file, suffix, e) from None
    return Part(file, stem, kind, ds)


_ONLINE_LOCK = threading.Lock()


@contextlib.contextmanager
def _own_storage_online(datasets, *, remote: bool) -> Iterator[None]:
    """Let `datasets` read a URL of the user's own storage while the hub is offline.

    `datasets` reads HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as "no network at all" and refuses
    s3:// files too; this project sets them to keep the Hugging Face hub out of runs, not to keep
    its own bucket out. For the duration of one load of a remote data file the flag is lifted
    (and download counting, which would call the hub, is off)."""
    cfg = datasets.config
    if not remote or not cfg.HF_HUB_OFFLINE:
        yield
        return
    with _ONLINE_LOCK:
        saved = cfg.HF_HUB_OFFLINE, cfg.HF_UPDATE_DOWNLOAD_COUNTS
        cfg.HF_HUB_OFFLINE, cfg.HF_UPDATE_DOWNLOAD_COUNTS = False, False
        try:
            yield
        finally:
            cfg.HF_HUB_OFFLINE, cfg.HF_UPDATE_DOWNLOAD_COUNTS = saved


def _load_error(file: str, suffix: str, err: Exception) -> UserError:
    cause = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, UnicodeDecodeError):
        return UserError(f"{file}: not UTF-8 text (byte {cause.start}) (expected JSON text)")
    if isinstance(cause, FileNotFoundError):
        return UserError(f"{file}: file not found ({one_line(cause)})")
    if suffix == ".parquet":
        return UserError(f"{file}: cannot read as Parquet ({one_line(cause)})")
    return UserError(f"{file}: cannot read ({type(cause).__name__}: {one_line(cause)})")


def open_parts(spec: str | Path, *, split: str = "train") -> list[Part]:
    """The parts of a spec (see the module doc): a hub split, or one part per data file."""
    if isinstance(spec, str) and spec.startswith(HUB_PREFIX):
        return [open_hub(spec, split)]
    protocol = url_protocol(spec)
    if protocol is not None:
        return _open_url(str(spec), protocol, split)
    path = Path(str(spec)[len("file://"):] if str(spec).startswith("file://") else spec)
    if path.is_dir():
        names = [p.name for p in path.iterdir() if p.is_file()]
        return [load_file(str(path / n)) for n in files_for_split(str(path), names, split)]
    if path.exists():
        return [load_file(str(path))]
    hint = ""
    if isinstance(spec, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        hint = f"; for a hub dataset write {HUB_PREFIX}{spec}"
    raise UserError(
        f"{spec}: file not found (expected a .jsonl, .json or .parquet file, a directory of "
        f"them, an s3:// URL or {HUB_PREFIX}owner/name{hint})"
    )


def _open_url(url: str, protocol: str, split: str) -> list[Part]:
    """A file or a "directory" (prefix) behind an fsspec URL; missing ones name the URL."""
    import fsspec

    options = storage_options(protocol)
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise UserError(
            f"{url}: no file system for '{protocol}://' ({one_line(e)}; s3:// needs s3fs, "
            f"gs:// gcsfs, ...)"
        ) from None
    try:
        info = fs.info(root)
    except FileNotFoundError:
        raise UserError(
            f"{url}: not found (no such object or bucket{_endpoint_note(options)})"
        ) from None
    except Exception as e:  # denied, unreachable endpoint, bad credentials
        raise UserError(
            f"{url}: cannot open ({type(e).__name__}: {one_line(e)}{_endpoint_note(options)})"
        ) from None
    if info.get("type") != "directory":
        return [load_file(url, options=options)]
    names = [PurePosixPath(p).name for p in fs.ls(root, detail=False)]
    base = url.rstrip("/")
    return [load_file(f"{base}/{n}", options=options)
            for n in files_for_split(url, names, split)]


def _endpoint_note(options: dict) -> str:
    endpoint = options.get("endpoint_url")
    return f"; endpoint {endpoint}" if endpoint else ""


def open_hub(spec: str, split: str) -> Part:
    """A split of a hub dataset `hub:owner/name[:config]` (through the datasets cache)."""
    body = spec[len(HUB_PREFIX):]
    name, _, config = body.partition(":")
    if not name:
        raise UserError(f"{spec}: no dataset name (expected {HUB_PREFIX}owner/name[:config])")
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise UserError(f"{spec}: cannot load from the hub while {var}=1 ({LOCAL_HINT})")
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{spec}: cannot load from the hub: the 'datasets' package is not installed "
            f"(a core dependency: pip install -e . again; {LOCAL_HINT})"
        ) from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        raise UserError(
            f"{spec}: cannot load split '{split}' from the hub ({type(e).__name__}: "
            f"{one_line(e)}; {LOCAL_HINT})"
        ) from None
    return Part(f"{spec} [{split}]", name.rsplit("/", 1)[-1], "table", ds, file=False)
