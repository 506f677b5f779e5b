#!/usr/bin/env bash
# dgl-deploy GPU check: run on the GPU machine from the repository root, offline, in one call:
#     bash benchmarks/.work/gpu/run.sh              results: $OUT/gpu_check.json and $OUT/gpu_check.log
#     bash benchmarks/.work/gpu/run.sh --dry-run    (make gpu-check runs this here) install check + plan only
# `make gpu-check` copies this file into benchmarks/.work/gpu/ beside the wheels, videos and check.py.
# It installs the carried wheels the image lacks (the project and open_clip always; GPU_CHECK_INSTALL=all:
# every one) with pip --no-index --no-deps into a fresh --target folder put first on PYTHONPATH, then runs
# check.py under one budget (GPU_CHECK_BUDGET seconds from this script's start, default 450 of the 8 minutes).
# Online mode, for a user's own GPU machine with internet: where the prepared folder is absent (this file run as
# benchmarks/gpu_check/run.sh, no wheels/ beside it) or GPU_CHECK_ONLINE=1, and pip reaches its index, it runs
#     pip install ".[gpu,train,export]" decord pytest pytest-timeout   (into $PYTHON's environment: use a venv)
# instead of the carried wheels, so the onnxruntime-CUDA and TensorRT rows are measured too (default budget 1500 s);
# the synthetic videos are rendered there when the folder is absent. GPU_CHECK_ONLINE=0 forces the offline path.
set -uo pipefail
T0=$(date +%s)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
[ -f "$REPO/pyproject.toml" ] || REPO=$(cd "$HERE/../.." && pwd)  # run from benchmarks/gpu_check/ itself
[ -f "$REPO/pyproject.toml" ] || REPO=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$REPO/benchmarks/.work/gpu_out}
export GPU_CHECK_WORK=${GPU_CHECK_WORK:-/tmp/dgl-gpu-check}
SITE=$GPU_CHECK_WORK/site
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT" "$GPU_CHECK_WORK"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# the platform of the GPU machine, for pip's --dry-run where this python is not 3.12
TAGS="--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux2010_x86_64 --platform manylinux1_x86_64"

# online: the prepared folder is absent or GPU_CHECK_ONLINE=1, and pip can reach its index (not for =0)
online_wanted() {
  [ "${GPU_CHECK_ONLINE:-}" = 0 ] && return 1
  [ "${GPU_CHECK_ONLINE:-}" = 1 ] || [ ! -d "$HERE/wheels" ]
}

index_reachable() {
  timeout 30 "$PY" -m pip index versions pip >/dev/null 2>&1 \
    || timeout 60 "$PY" -m pip download -q --no-deps --no-cache-dir -d "$GPU_CHECK_WORK/probe" pip >/dev/null 2>&1
}

main_online() {
  echo "[gpu-check] $(date -u +%FT%TZ) ONLINE repo=$REPO out=$OUT python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
  local start=$SECONDS rc=0 folder=$HERE
  local cmd=("$PY" -m pip install -q --no-cache-dir "$REPO[gpu,train,export]" decord pytest pytest-timeout)
  if [ "$DRY" = 1 ]; then
    echo "[gpu-check] dry run: would run: ${cmd[*]}"
  else
    "${cmd[@]}" || rc=$?
    # onnxruntime (the export extra) and onnxruntime-gpu share the module: make sure the CUDA build is the one left
    if [ "$rc" = 0 ] && ! "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' 2>/dev/null; then
      "$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps "onnxruntime-gpu>=1.18" || rc=$?
    fi
    echo "[gpu-check] pip install .[gpu,train,export]: rc=$rc ($((SECONDS - start)) s)"
  fi
  if [ ! -f "$folder/videos/annotations.jsonl" ]; then  # no prepared folder: render the synthetic clips here
    folder=$GPU_CHECK_WORK/folder
    if [ "$DRY" = 1 ]; then
      echo "[gpu-check] dry run: would render the synthetic videos into $folder/videos"
    else
      rm -rf "$folder" && mkdir -p "$folder"
      "$PY" -P -c 'import json, sys; from pathlib import Path
sys.path.insert(0, sys.argv[1]); import prepare
folder = Path(sys.argv[2]); videos = prepare.make_videos(folder / "videos")
(folder / "manifest.json").write_text(json.dumps({"videos": videos}, indent=2))' "$HERE" "$folder" \
        || echo "[gpu-check] rendering the synthetic videos failed: the videos step will fail"
    fi
  fi
  printf '{"mode": "online", "python": "%s", "installed": ["%s[gpu,train,export]", "decord", "pytest", "pytest-timeout"], "project": "pip install from this tree"}\n' \
    "$("$PY" -c 'import platform; print(platform.python_version())')" "$REPO" > "$GPU_CHECK_WORK/install.json"
  export GPU_CHECK_INSTALL_RC=$rc GPU_CHECK_INSTALL_S=$((SECONDS - start)) PYTHONUNBUFFERED=1
  local dry=()
  [ "$DRY" = 1 ] && dry=(--dry-run)
  "$PY" -P "$HERE/check.py" run --repo "$REPO" --folder "$folder" --out "$OUT" --t0 "$T0" \
    --budget "${GPU_CHECK_BUDGET:-1500}" ${dry[@]+"${dry[@]}"}
  local run_rc=$?
  [ "$DRY" = 1 ] && return $(( rc != 0 ))
  return $run_rc
}

main() {
  if online_wanted; then
    if index_reachable; then
      main_online
      return
    fi
    echo "[gpu-check] online mode wanted but pip cannot reach its index: the carried wheels"
    [ -d "$HERE/wheels" ] || { echo "[gpu-check] and there is no prepared folder ($HERE/wheels): run make gpu-check"; return 1; }
  fi
  echo "[gpu-check] $(date -u +%FT%TZ) repo=$REPO out=$OUT python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
  rm -rf "$SITE"
  local start=$SECONDS rc=0 dry=()
  [ "$DRY" = 1 ] && dry=(--dry-run)
  "$PY" -P "$HERE/check.py" select --folder "$HERE" --repo "$REPO" --mode "${GPU_CHECK_INSTALL:-missing}" \
    ${dry[@]+"${dry[@]}"} || return 1
  mapfile -t WHEELS < "$GPU_CHECK_WORK/selected.txt"
  if [ "$DRY" = 1 ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    # not the GPU machine's Python: let pip resolve the set for cp312 manylinux x86_64 without installing it
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --dry-run --ignore-installed --no-index --no-deps --no-cache-dir $TAGS \
      --target "$SITE" "${WHEELS[@]}" || rc=$?
    echo "[gpu-check] pip --dry-run for cp312 manylinux x86_64 of ${#WHEELS[@]} wheels: rc=$rc"
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${WHEELS[@]}" || rc=$?
    echo "[gpu-check] pip install of ${#WHEELS[@]} wheels into $SITE: rc=$rc ($((SECONDS - start)) s)"
    if [ -s "$GPU_CHECK_WORK/rebuild" ]; then  # sources changed since make gpu-check: build the project from here
      local src=$GPU_CHECK_WORK/src
      rm -rf "$src" && mkdir -p "$src"
      cp -r "$REPO/pyproject.toml" "$REPO/dgl_deploy" "$REPO/training" "$REPO/export" "$src/"
      [ -f "$REPO/README.md" ] && cp "$REPO/README.md" "$src/"
      if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
          --target "$SITE" "$src"; then
        echo "[gpu-check] building the project from this tree failed: installing the carried (older) wheel"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
          "$HERE"/wheels/dgl_deploy-*.whl || rc=$?
        sed -i 's/built from this tree (the carried wheel is older)/carried wheel, OLDER than this tree (rebuild failed)/' \
          "$GPU_CHECK_WORK/install.json"
      fi
    fi
  fi
  export GPU_CHECK_INSTALL_RC=$rc GPU_CHECK_INSTALL_S=$((SECONDS - start))
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  if [ "$DRY" = 1 ]; then
    [ -d "$SITE" ] && "$PY" -P "$HERE/check.py" importcheck --site "$SITE"
    "$PY" -P "$HERE/check.py" run --repo "$REPO" --folder "$HERE" --out "$OUT" --t0 "$T0" \
      --budget "${GPU_CHECK_BUDGET:-450}" --dry-run
    return $(( rc != 0 ))
  fi
  "$PY" -P "$HERE/check.py" run --repo "$REPO" --folder "$HERE" --out "$OUT" --t0 "$T0" \
    --budget "${GPU_CHECK_BUDGET:-450}"
}

cd "$REPO" || exit 1
main "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
