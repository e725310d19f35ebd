#!/usr/bin/env bash
# Install gflv2-keras (editable) and run the main job on built-in data: generate a synthetic
# COCO-format shapes dataset, train a small GFLv2 from scratch on the CPU, evaluate it with
# COCO AP on held-out images, and save predictions and the trained preset in ./demo_output.
# Extra arguments go to `gflv2 demo` (see `gflv2 demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e .
# TensorFlow's C++ notices hidden (3: ERROR lines too, such as cuInit on a machine without a GPU); set it to see them.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
gflv2 demo --output demo_output "$@"
