#!/usr/bin/env bash
# The project's main command (README): fetches the pinned ONNX Runtime,
# builds loracc and runs the embedded seed example end to end. Extra
# arguments go to loracc, so `scripts/run.sh inspect model.onnx` works too.
set -euo pipefail
cd "$(dirname "$0")/.."
lib=$(bash scripts/fetch-ort.sh)
export LORACC_ORT_LIB="$lib"
go build -o bin/loracc ./cmd/loracc
exec bin/loracc "$@"
