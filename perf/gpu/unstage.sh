#!/usr/bin/env bash
# Unpack on the GPU machine what perf/gpu/stage.sh packed here (run from the repo root there).
#
#   bash perf/gpu/unstage.sh copy .stage/c07     # once per chunk, that chunk named in run's carry
#   bash perf/gpu/unstage.sh finish              # once every chunk has been copied
#
# copy: checks the chunk's piece against its sha256 and keeps it in /tmp/stage (files under /tmp
#   stay between the calls while the machine is held; it goes back after 30 s idle, and a fresh
#   one starts bare). One line: the piece, and how many of all pieces are there.
# finish: joins the pieces into the tar (deleting each piece once appended), checks the tar's
#   sha256, extracts it to /tmp/stage/x, installs the wheels into /tmp/site
#   (pip --no-index --no-deps --target), converts the model to a bf16 Hugging Face directory in
#   /tmp/cache (unless the stage was made with --no-model) and writes /tmp/stage/env.sh, which
#   every later command sources: `source /tmp/stage/env.sh && python3 ...`.
# Every step is skipped when already done; a second finish says so and does nothing. Every
# failure ends with one line on stderr and a non-zero exit; pip's and the conversion's output
# go to /tmp/stage/{pip,convert}.log.
# Env knobs (for a dry run elsewhere): STAGE_TMP (/tmp/stage), STAGE_SITE (/tmp/site),
# STAGE_CACHE (/tmp/cache), PY (python3), STAGE_PIP_EXTRA (more pip install arguments).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STAGE=${STAGE_TMP:-/tmp/stage}
SITE=${STAGE_SITE:-/tmp/site}
CACHE=${STAGE_CACHE:-/tmp/cache}
PY=${PY:-python3}

die() { echo "unstage: $*" >&2; exit 1; }
val() { sed -n "s/^$1=//p" "$2"; }            # val KEY FILE: a value of a stage.info file
mib() { awk "BEGIN{printf \"%.1f\", $1/1048576}"; }
size() { stat -c %s "$1"; }
want_sha() { awk -v n="$1" '$2==n{print $1}' "$STAGE/SHA256SUMS"; }
finished() { [ -f "$STAGE/done" ] && [ -f "$STAGE/env.sh" ] && [ "$(cat "$STAGE/done")" = "$(val tar_sha256 "$STAGE/stage.info")" ]; }

# Number of pieces already appended to an interrupted finish's stage.tar.part (0 if none).
consumed() {
  local part=$STAGE/stage.tar.part p
  [ -f "$part" ] || { echo 0; return; }
  p=$(val piece_bytes "$STAGE/stage.info")
  [ $(( $(size "$part") % p )) = 0 ] || die "$part: not a whole number of pieces; delete $STAGE and copy every chunk again"
  echo $(( $(size "$part") / p ))
}

# The pieces neither in /tmp/stage nor already appended, as "NNN NNN ...".
missing() {
  local n k i out=""
  n=$(val pieces "$STAGE/stage.info"); k=$(consumed)
  for ((i = k + 1; i <= n; i++)); do
    [ -f "$STAGE/$(printf 'stage.tar.%03d' "$i")" ] || out+="$(printf '%03d' "$i") "
  done
  # shorten runs: "004 005 006 009" -> "004-006 009"
  echo "${out% }" | awk '{ o = ""; for (i = 1; i <= NF; i = j + 1) { j = i; while (j < NF && $(j+1) + 0 == $j + 1) j++;
    o = o (o == "" ? "" : " ") (j > i ? $i "-" $j : $i) } print o }'
}

missing_count() {
  local n k i c=0
  n=$(val pieces "$STAGE/stage.info"); k=$(consumed)
  for ((i = k + 1; i <= n; i++)); do [ -f "$STAGE/$(printf 'stage.tar.%03d' "$i")" ] || c=$((c + 1)); done
  echo "$c"
}

copy_one() {
  local dir=${1%/} piece name want got n k miss
  [ -d "$dir" ] || die "$dir: no such folder (name it in run's carry)"
  piece=$(ls "$dir"/stage.tar.[0-9][0-9][0-9] 2>/dev/null) || true
  [ -n "$piece" ] && [ "$(echo "$piece" | wc -l)" = 1 ] || die "$dir: expected exactly one stage.tar.NNN"
  [ -f "$dir/SHA256SUMS" ] && [ -f "$dir/stage.info" ] || die "$dir: SHA256SUMS or stage.info missing"
  mkdir -p "$STAGE"
  if [ -f "$STAGE/stage.info" ] && [ "$(val tar_sha256 "$STAGE/stage.info")" != "$(val tar_sha256 "$dir/stage.info")" ]; then
    echo "unstage: $STAGE held another stage; starting over with this one" >&2
    rm -rf "$STAGE" && mkdir -p "$STAGE"
  fi
  cp "$dir/SHA256SUMS" "$dir/stage.info" "$STAGE/"
  if finished; then echo "already finished: source $STAGE/env.sh"; return 0; fi
  name=$(basename "$piece"); want=$(want_sha "$name")
  [ -n "$want" ] || die "$name: not listed in $dir/SHA256SUMS"
  k=$(consumed)
  if [ "$((10#${name##*.}))" -le "$k" ]; then
    state="already joined"
  elif [ -f "$STAGE/$name" ] && [ "$(sha256sum < "$STAGE/$name" | cut -d' ' -f1)" = "$want" ]; then
    state="already here"
  else
    cp "$piece" "$STAGE/$name.tmp"
    got=$(sha256sum < "$STAGE/$name.tmp" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { rm -f "$STAGE/$name.tmp"; die "$name: sha256 $got, expected $want (chunk damaged; run stage.sh again)"; }
    mv "$STAGE/$name.tmp" "$STAGE/$name"; state="ok"
  fi
  n=$(val pieces "$STAGE/stage.info"); miss=$(missing)
  echo "$name $state ($(mib "$(size "$piece")") MiB); $(( n - $(missing_count) ))/$n pieces here${miss:+, missing: $miss}"
}

# Join the pieces into stage.tar (resuming an interrupted join), check it, extract it to x/.
assemble() {
  local tar=$STAGE/stage.tar n k i miss want got
  want=$(val tar_sha256 "$STAGE/stage.info")
  if [ -f "$STAGE/x/.extracted" ] && [ "$(cat "$STAGE/x/.extracted")" = "$want" ]; then return 0; fi
  if [ ! -f "$tar" ]; then
    miss=$(missing)
    [ -z "$miss" ] || die "missing pieces $miss: copy those chunks first (piece 007 is in .stage/c07)"
    n=$(val pieces "$STAGE/stage.info"); k=$(consumed)
    for ((i = 1; i <= n; i++)); do
      local p; p=$STAGE/$(printf 'stage.tar.%03d' "$i")
      if ((i > k)); then cat "$p" >> "$tar.part" || die "cannot append $p to $tar.part (disk full?)"; fi
      rm -f "$p"
    done
    mv "$tar.part" "$tar"
  fi
  got=$(sha256sum < "$tar" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { rm -f "$tar"; die "stage.tar sha256 $got, expected $want: copy every chunk again"; }
  rm -rf "$STAGE/x" "$STAGE/x.tmp" && mkdir -p "$STAGE/x.tmp"
  tar -xf "$tar" -C "$STAGE/x.tmp" || die "extracting $tar failed"
  echo "$want" > "$STAGE/x.tmp/.extracted"
  mv "$STAGE/x.tmp" "$STAGE/x" && rm -f "$tar"
  echo "joined and extracted $(val pieces "$STAGE/stage.info") pieces ($(mib "$(val tar_bytes "$STAGE/stage.info")") MiB), sha256 ok"
}

install_wheels() {
  local want; want=$(val tar_sha256 "$STAGE/stage.info")
  if [ -f "$STAGE/installed" ] && [ "$(cat "$STAGE/installed")" = "$want" ]; then return 0; fi
  # --upgrade: replace what an earlier install left in the target instead of skipping it
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" ${STAGE_PIP_EXTRA:-} \
    "$STAGE"/x/wheels/*.whl > "$STAGE/pip.log" 2>&1 \
    || die "pip install into $SITE failed: $(tail -n 1 "$STAGE/pip.log") (log: $STAGE/pip.log)"
  echo "$want" > "$STAGE/installed"
  echo "installed $(ls "$STAGE"/x/wheels/*.whl | wc -l) wheels into $SITE"
}

convert_model() {
  local model dir; model=$(val model "$STAGE/stage.info")
  [ "$model" != none ] || { echo "no model in this stage"; return 0; }
  PREFIX_RFT_GGUF_PARTS="$STAGE/x/gguf" PREFIX_RFT_CACHE="$CACHE" PYTHONPATH="$SITE:$ROOT" \
    "$PY" -m prefix_rft.builtin_models fetch "$model" > "$STAGE/convert.out" 2> "$STAGE/convert.log" \
    || die "converting $model failed: $(tail -n 1 "$STAGE/convert.log") (log: $STAGE/convert.log)"
  dir=$(tail -n 1 "$STAGE/convert.out")
  [ -f "$dir/config.json" ] || die "converting $model printed '$dir', which holds no config.json"
  rm -rf "$STAGE/x/gguf"
  echo "model: $dir"
}

finish() {
  [ -f "$STAGE/stage.info" ] || die "nothing copied yet: run 'bash perf/gpu/unstage.sh copy .stage/cNN' for every chunk first"
  if finished; then echo "already finished, nothing to do: source $STAGE/env.sh"; return 0; fi
  assemble
  install_wheels
  convert_model
  cat > "$STAGE/env.sh" <<EOF
# written by perf/gpu/unstage.sh finish; source it before running anything staged
export PYTHONPATH=$SITE:$ROOT
export PREFIX_RFT_CACHE=$CACHE
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_USE_FLASHINFER_SAMPLER=0  # flashinfer is not staged
EOF
  val tar_sha256 "$STAGE/stage.info" > "$STAGE/done"
  echo "finished: source $STAGE/env.sh"
}

case "${1:-}" in
  copy)
    shift; [ $# -ge 1 ] || die "usage: unstage.sh copy .stage/cNN [...]"
    for d in "$@"; do copy_one "$d"; done ;;
  finish) finish ;;
  *) die "usage: unstage.sh copy .stage/cNN [...] | finish" ;;
esac
