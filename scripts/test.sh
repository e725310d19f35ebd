#!/usr/bin/env bash
# Install gflv2-keras with its test and deployment-runtime extras (editable) and run the default test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test,onnx,litert,openvino]"
# TensorFlow's C++ notices hidden (3: ERROR lines too, such as cuInit on a machine without a GPU); set it to see them.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
python -m pytest "$@"
