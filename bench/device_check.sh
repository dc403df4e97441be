#!/usr/bin/env bash
# One prepared run for a lent GPU machine (see the `device` tool): install the `gpu` extra from
# carried wheels (.whl/), run the GPU-marked tests and the GPU benchmark, write results to $OUT.
# Prepare here first (x86-64, Python 3.12 wheels):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     onnxruntime-gpu cupy-cuda13x fastrlock numpy onnx protobuf rich tokenizers markdown-it-py mdurl \
#     pygments typing_extensions ml_dtypes huggingface_hub flatbuffers packaging sympy mpmath coloredlogs humanfriendly
# and carry .whl plus bench/work (the exported GPT-2-small built by bench_runner.build_model).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
python3 bench/bench_gpu.py --tokens 262144 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
