"""perf/gpu/compile_cache.sh: vLLM's compile cache saved on one GPU machine and loaded on the
next, checked here on a cache root of plain files (VLLM_CACHE_ROOT)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "perf/gpu/compile_cache.sh"


def _run(*args, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("OUT", "VLLM_CACHE_ROOT")}
    full.update(env)
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True,
                          timeout=60)


def _cache(root: Path) -> None:
    graph = root / "torch_compile_cache" / "f63e31f754" / "rank_0_0" / "backbone"
    graph.mkdir(parents=True)
    (graph / "artifact").write_bytes(b"\x01" * 1000)
    aot = root / "torch_compile_cache" / "torch_aot_compile" / "08d2" / "rank_0_0"
    aot.mkdir(parents=True)
    (aot / "model").write_bytes(b"\x02" * 10)
    (root / "modelinfos").mkdir()
    (root / "modelinfos" / "qwen2.json").write_text("{}")  # not a compiled graph: not carried


def test_save_then_load_on_a_bare_machine(tmp_path):
    first, out, bare = tmp_path / "first", tmp_path / "out", tmp_path / "bare"
    _cache(first)
    r = _run("save", VLLM_CACHE_ROOT=str(first), OUT=str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"saved 2 files of {first}/torch_compile_cache -> {out}/vllm_compile_cache.tgz")
    with tarfile.open(out / "vllm_compile_cache.tgz") as t:
        files = sorted(m.name for m in t.getmembers() if m.isfile())
    assert files == ["torch_compile_cache/f63e31f754/rank_0_0/backbone/artifact",
                     "torch_compile_cache/torch_aot_compile/08d2/rank_0_0/model"]
    r = _run("load", str(out / "vllm_compile_cache.tgz"), VLLM_CACHE_ROOT=str(bare))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"loaded 2 files into {bare}/torch_compile_cache"
    got = bare / "torch_compile_cache/f63e31f754/rank_0_0/backbone/artifact"
    assert got.read_bytes() == b"\x01" * 1000 and not (bare / "modelinfos").exists()


def test_refusals(tmp_path):
    # nothing compiled yet: exit 3, nothing written
    r = _run("save", VLLM_CACHE_ROOT=str(tmp_path / "empty"), OUT=str(tmp_path / "out"))
    assert r.returncode == 3 and "no vLLM engine has compiled" in r.stderr
    assert not (tmp_path / "out").exists()
    # too large to carry: refused with its size, the archive removed
    big = tmp_path / "big"
    (big / "torch_compile_cache").mkdir(parents=True)
    (big / "torch_compile_cache" / "blob").write_bytes(os.urandom(2 * 1048576))
    r = _run("save", VLLM_CACHE_ROOT=str(big), OUT=str(tmp_path / "o2"), CACHE_MAX_MIB="1")
    assert r.returncode == 1 and "packs to 2 MiB, over the 1 MiB a call can carry" in r.stderr
    assert list((tmp_path / "o2").iterdir()) == []
    # an archive with anything outside torch_compile_cache/ is not unpacked
    other = tmp_path / "other.tgz"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "evil").write_text("x")
    with tarfile.open(other, "w:gz") as t:
        t.add(tmp_path / "x" / "evil", arcname="evil")
    r = _run("load", str(other), VLLM_CACHE_ROOT=str(tmp_path / "dst"))
    assert r.returncode == 1 and "holds files outside torch_compile_cache/" in r.stderr
    assert not (tmp_path / "dst").exists()
    r = _run("load", str(tmp_path / "missing.tgz"), VLLM_CACHE_ROOT=str(tmp_path / "dst"))
    assert r.returncode == 1 and "no such file" in r.stderr
    assert _run("bogus").returncode == 2
