#!/usr/bin/env bash
# Imports point one way: graph imports nothing of ours; rewrite and runtime
# import graph (and adapter) but never each other; only runtime/internal/ort
# imports the cgo binding. Fails naming the offending package.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
fail=0
while read -r pkg imports; do
	for imp in $imports; do
		case "$pkg" in
		"$mod"/graph | "$mod"/graph/*)
			case "$imp" in "$mod"/graph/onnxpb | "$mod"/graph) ;; "$mod"/*) echo "graph package $pkg imports $imp"; fail=1 ;; esac ;;
		"$mod"/rewrite*)
			case "$imp" in "$mod"/runtime*) echo "$pkg imports $imp (rewrite must not import runtime)"; fail=1 ;; esac ;;
		"$mod"/runtime*)
			case "$imp" in "$mod"/rewrite*) echo "$pkg imports $imp (runtime must not import rewrite)"; fail=1 ;; esac ;;
		esac
		if [ "$imp" = "github.com/yalue/onnxruntime_go" ] && [ "$pkg" != "$mod/runtime/internal/ort" ]; then
			echo "$pkg imports the cgo binding; only runtime/internal/ort may"
			fail=1
		fi
	done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}}' ./...)
exit $fail
