#!/usr/bin/env bash
# vLLM's torch.compile cache, carried from one GPU session to the next. A lent machine starts with
# an empty ~/.cache/vllm, so every engine start of a session compiles first: on a lent H100
# (2026-12-07, docs/PERFORMANCE.md) an engine's init took 53.2 s with an empty cache and 25.4 s
# when an earlier start of the same model and arguments had filled it.
#
#   bash perf/gpu/compile_cache.sh save          # on the machine, in the session's last call:
#                                                # writes $OUT/vllm_compile_cache.tgz
#   bash perf/gpu/compile_cache.sh load FILE     # on the machine, after staging (FILE carried)
#
# Here, keep the returned file as .stage/compile_cache/vllm_compile_cache.tgz (.stage/ is
# ignored) and carry that folder in the load call:
#   run(carry=[".stage/compile_cache"],
#       command="bash perf/gpu/compile_cache.sh load .stage/compile_cache/vllm_compile_cache.tgz")
# vLLM names every entry by a hash of the model, the engine's arguments and the vLLM and torch
# versions, and loads only an entry whose hash matches: a cache from another setup costs
# nothing but its carrying.
# Only torch_compile_cache/ is kept (the compiled graphs); the rest of the cache root is left.
# Env: VLLM_CACHE_ROOT (vLLM's own variable; default ~/.cache/vllm), OUT (save's folder),
# CACHE_MAX_MIB (58: the most a run call carries beside the checkout).
# Exit status: 0 done; 1 the archive would be too large to carry, or FILE is not a readable
# archive of this cache; 2 usage; 3 nothing to save (no engine has compiled on this machine).
set -euo pipefail
ROOT_DIR=${VLLM_CACHE_ROOT:-$HOME/.cache/vllm}
MAX_MIB=${CACHE_MAX_MIB:-58}
SUB=torch_compile_cache
NAME=vllm_compile_cache.tgz

die() { echo "compile_cache: $*" >&2; exit "${2:-1}"; }
entries() { find "$1" -type f | wc -l | tr -d ' '; }

case "${1:-}" in
  save)
    [ -n "${OUT:-}" ] || die "OUT is not set (the folder whose files come back)" 2
    [ -d "$ROOT_DIR/$SUB" ] || die "no $ROOT_DIR/$SUB: no vLLM engine has compiled on this machine" 3
    mkdir -p "$OUT"
    tar czf "$OUT/$NAME" -C "$ROOT_DIR" "$SUB"
    bytes=$(stat -c %s "$OUT/$NAME")
    if [ "$bytes" -gt $(( MAX_MIB * 1048576 )) ]; then
      rm -f "$OUT/$NAME"
      die "$ROOT_DIR/$SUB packs to $(( bytes / 1048576 )) MiB, over the $MAX_MIB MiB a call can carry; not saved"
    fi
    echo "saved $(entries "$ROOT_DIR/$SUB") files of $ROOT_DIR/$SUB -> $OUT/$NAME ($(( bytes / 1024 )) KiB)"
    ;;
  load)
    file=${2:-}
    [ -n "$file" ] || die "usage: $0 load FILE" 2
    [ -f "$file" ] || die "$file: no such file (carry its folder in this call)"
    # only an archive of torch_compile_cache/ is unpacked into the cache root
    listing=$(tar tzf "$file" 2>/dev/null) || die "$file: not a gzip tar archive"
    if grep -qv "^$SUB/" <<< "$listing"; then
      die "$file: holds files outside $SUB/ (not made by \`$0 save\`)"
    fi
    mkdir -p "$ROOT_DIR"
    tar xzf "$file" -C "$ROOT_DIR"
    echo "loaded $(entries "$ROOT_DIR/$SUB") files into $ROOT_DIR/$SUB"
    ;;
  *) die "usage: $0 save | load FILE" 2 ;;
esac
