#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetches the pinned ONNX
# Runtime, then vets and tests everything. ORT-backed tests must run here,
# so a missing library is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
lib=$(bash scripts/fetch-ort.sh)
export LORACC_ORT_LIB="$lib" LORACC_REQUIRE_ORT=1
models=$(bash scripts/fetch-real-models.sh); export LORACC_MODELS_DIR="$models" LORACC_REQUIRE_REAL=1
toks=$(bash scripts/fetch-tokenizers.sh); export LORACC_TOKENIZERS_DIR="$toks"
if command -v python3 >/dev/null; then
	echo "== python: scripts/quality (the corpus recipe's clean-up and splits)"
	python3 scripts/quality/corpus_test.py
fi
echo "== go vet"
go vet ./...
echo "== import direction"
bash scripts/check-imports.sh
echo "== go test"
go test -count=1 ./...
echo "== go test -race (runtime, concurrency)"
go test -count=1 -race ./runtime/...
