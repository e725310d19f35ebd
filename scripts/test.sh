#!/usr/bin/env bash
# Install gflv2-keras with its test and deployment-runtime extras (editable) and run the default test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
# Test files run in GFLV2_TEST_WORKERS parallel pytest-xdist workers (default 2: most of a small model's test time
# is single-threaded tracing and compilation, so two workers use two cores; 0 runs in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e ".[test,onnx,litert,openvino]"
# TensorFlow's C++ notices hidden (3: ERROR lines too, such as cuInit on a machine without a GPU); set it to see them.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
python -m pytest -n "${GFLV2_TEST_WORKERS:-2}" --dist loadfile "$@"
