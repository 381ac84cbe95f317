# Sourced by quickstart.sh and test.sh: make $VENV if needed, install torch only where the
# environment has none (keep a CUDA build you already have), then slkd with its test tools.
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -c "import torch, torchvision" 2>/dev/null || "$PY" -m pip install -q torch torchvision
"$PY" -m pip install -q -e ".[test,report]"
