#!/usr/bin/env bash
# Check the LOWEST dependency versions pyproject.toml allows: make a fresh virtualenv, install
# gflv2-keras (editable, with the test extra) pinned to TensorFlow 2.20.0, Keras 3.15.0 and
# keras-hub 0.32.0 (+ tensorflow-text 2.20.*, which keras-hub 0.32 needs at >= 2.20.1), print the
# versions in use and run a focused set of tests.
#
# Usage: bash scripts/test_lowest.sh [VENV_DIR [TEST_PATH ...]]
#   VENV_DIR   virtualenv folder (default .venv-lowest, relative to the repo root). It is deleted and
#              made anew, but only when this script made it (marker file .gflv2-test-lowest inside);
#              any other existing folder is refused.
#   TEST_PATH  pytest paths (default: the keras-hub / detector / backend / public-API / accumulation
#              tests below).
# Environment: PYTHON (interpreter for the venv, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv-lowest}"
shift || true
if [ "$#" -gt 0 ]; then
    TESTS=("$@")
else
    TESTS=(tests/models/test_keras_hub.py tests/models/test_detector.py tests/backends
           tests/test_public_api_only.py tests/training/test_accumulation.py)
fi
MARKER=".gflv2-test-lowest"

# Only ever remove a folder this script made.
if [ -e "$VENV" ]; then
    if [ -d "$VENV" ] && [ -f "$VENV/$MARKER" ]; then
        echo "Removing the previous lowest-versions venv $VENV"
        rm -rf -- "$VENV"
    else
        echo "error: $VENV exists and was not made by $0 (no $MARKER in it); refusing to touch it" >&2
        exit 2
    fi
fi
mkdir -p -- "$VENV"
echo "made by scripts/test_lowest.sh; safe for it to delete" > "$VENV/$MARKER"
"${PYTHON:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"

CONSTRAINTS="$(mktemp "${TMPDIR:-/tmp}/gflv2-lowest-constraints.XXXXXX")"
trap 'rm -f -- "$CONSTRAINTS"' EXIT
cat > "$CONSTRAINTS" <<'EOF'
tensorflow==2.20.0
keras==3.15.0
keras-hub==0.32.0
tensorflow-text==2.20.*
torch==2.13.0
EOF

"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" -e ".[test]"

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
"$PY" - <<'EOF'
from importlib.metadata import version
for name in ("tensorflow", "keras", "keras-hub", "tensorflow-text", "jax", "jaxlib", "torch", "numpy"):
    try:
        print(f"{name:16s} {version(name)}")
    except Exception as error:  # noqa: BLE001 - report, don't fail
        print(f"{name:16s} not installed ({error})")
import keras, keras_hub, tensorflow  # noqa: E401 - the imported versions, not only the metadata
print(f"imported: tensorflow {tensorflow.__version__}, keras {keras.__version__}, keras_hub {keras_hub.__version__}")
EOF

"$PY" -m pytest -q "${TESTS[@]}"
