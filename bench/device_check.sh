#!/usr/bin/env bash
# GPU check: speed, peak GPU memory (bf16 and fp8 weights, with and without model offload) and
# bf16/fp16 deviation from fp32 on full-size random-weight networks, within a 6-minute budget.
#
#   bench/device_check.sh [--tiny] [--budget-s SECONDS] [--out FILE.json]
#
# On a machine without diffusers (the lent GPU machine has torch, transformers, safetensors,
# numpy, pillow, pyyaml and scipy, but no diffusers and no internet), put the missing pure-Python
# wheels in .whl/ first, here, where pip reaches the registry:
#   bench/device_check.sh --fetch-wheels
# and carry .whl along; they are installed into a private folder, nothing system-wide changes.
# --tiny runs the same script on tiny configs in seconds (CPU is fine): CI runs that.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  version="$(python3 -c 'import diffusers; print(diffusers.__version__)')"
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "diffusers==$version" importlib_metadata zipp
  ls .whl
  exit 0
fi

if ! python3 -c 'import diffusers' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    site="$(mktemp -d)"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "device_check: diffusers is not installed and .whl/ holds no wheels (run --fetch-wheels where pip works)" >&2
    exit 2
  fi
fi
export PYTHONUNBUFFERED=1
exec python3 bench/device_check.py "$@"
