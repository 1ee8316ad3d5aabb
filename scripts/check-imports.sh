#!/usr/bin/env bash
# Imports point one way. Each library package below may import only the
# packages of this module listed beside it (the layering of
# docs/architecture.md): graph imports nothing of ours; the passes (lora,
# trainstep, autodiff, rewrite) and the runtime import graph but never each
# other; only graph imports the ONNX protobuf schema or protowire, and only
# runtime/internal/ort imports the cgo binding. Packages not listed (the
# CLI, benchmarks, test helpers) may import any library package, but the
# protobuf and cgo rules hold for them too. Test files are not checked:
# tests may craft hostile protobuf. Fails naming each offending import.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
declare -A allowed=(
	[graph]="graph/onnxpb"
	[graph/onnxpb]=""
	[trainio]=""
	[tokenizer]=""
	[chat]=""
	[dist]=""
	[adapter]="graph"
	[branch]="graph adapter"
	[infer]="graph"
	[internal/quant]="graph internal/opb"
	[fold]="graph infer"
	[internal/opb]="graph infer"
	[autodiff]="graph infer internal/opb internal/quant"
	[lora]="graph adapter branch internal/quant"
	[trainstep]="graph branch infer internal/opb internal/quant autodiff fold trainio"
	[rewrite]="graph adapter lora trainstep trainio"
	[dataset]="graph infer trainio tokenizer chat"
	[runtime]="graph runtime/internal/ort runtime/internal/nccl"
	[runtime/internal/nccl]=""
	[generate]="graph runtime"
	[runtime/internal/ort]="graph"
	[memplan]="graph infer"
	[runtime/train]="graph adapter branch dataset runtime trainio internal/plot internal/progress"
)
fail=0
while read -r pkg imports; do
	rel=${pkg#"$mod"/}
	for imp in $imports; do
		case "$imp" in
		google.golang.org/protobuf/encoding/protowire)
			if [ "$rel" != graph ] && [ "$rel" != graph/onnxpb ] && [ "$rel" != tokenizer ]; then
				echo "$rel imports $imp: only packages graph and tokenizer decode protobuf"
				fail=1
			fi ;;
		"$mod"/graph/onnxpb | google.golang.org/protobuf/*)
			if [ "$rel" != graph ] && [ "$rel" != graph/onnxpb ]; then
				echo "$rel imports $imp: only package graph decodes protobuf"
				fail=1
			fi ;;
		github.com/yalue/onnxruntime_go)
			if [ "$rel" != runtime/internal/ort ]; then
				echo "$rel imports the cgo binding; only runtime/internal/ort may"
				fail=1
			fi ;;
		esac
		[ -n "${allowed[$rel]+set}" ] || continue
		case "$imp" in "$mod"/*) ;; *) continue ;; esac
		dep=${imp#"$mod"/}
		if ! [[ " ${allowed[$rel]} " == *" $dep "* ]]; then
			echo "$rel imports $dep (allowed: ${allowed[$rel]:-nothing of ours}; see docs/architecture.md)"
			fail=1
		fi
	done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
exit $fail
