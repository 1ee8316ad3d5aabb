#!/usr/bin/env bash
# Refactoring check: runs two loracc binaries (OLD, NEW) on every testdata
# model — inspect, inject, fuse with the injected adapter, export-train
# with one and with four steps per run — in the same folder one after the
# other, and reports every output file or message that differs. Exit
# status 1 when any differs.
#   scripts/same-outputs.sh /tmp/loracc-old bin/loracc
set -uo pipefail
old=$(realpath "$1") new=$(realpath "$2")
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
runall() { # runall BIN: every command on every model, in $work/run
	local bin=$1 model name abs logits loss
	for model in testdata/models/*.onnx; do
		name=$(basename "$model" .onnx) abs=$(realpath "$model")
		logits=y loss=mse
		case $name in gpt2_tiny) logits=logits loss=lm ;; bert_tiny) logits=logits loss=ce ;; esac
		d=$work/run/$name
		mkdir -p "$d"
		cd "$d"
		{
			"$bin" inspect "$abs" --rank 4; echo "exit $?"
			"$bin" inject "$abs" --rank 2 --init gaussian --seed 7 -o m.lora.onnx --adapter m.adapter; echo "exit $?"
			"$bin" fuse "$abs" --adapter m.adapter -o m.fused.onnx; echo "exit $?"
			for k in 1 4; do
				"$bin" export-train m.lora.onnx --loss $loss --logits $logits --labels labels --steps-per-run $k -o export$k; echo "exit $?"
			done
		} >log.txt 2>&1
		cd - >/dev/null
	done
}
runall "$old" && mv "$work/run" "$work/old"
runall "$new" && mv "$work/run" "$work/new"
if diff -r "$work/old" "$work/new"; then
	echo "same outputs and messages on every testdata model ($(find "$work/new" -type f | wc -l) files)"
else
	exit 1
fi
