#!/usr/bin/env bash
# fetch-ort.sh installs the pinned ONNX Runtime core library that loracc
# loads at run time, and prints its path.
#
# Why npm: the onnxruntime-node package ships the plain C-API shared library
# (bin/napi-v6/linux/x64/libonnxruntime.so.1) next to its Node binding, and
# the npm registry is reachable where GitHub release downloads may not be.
# `npm pack` only downloads the tarball; no install scripts run.
#
# The tarball's sha256 is pinned so a changed upstream artifact fails loudly
# instead of silently changing the runtime we test against.
#
# Environment:
#   LORACC_ORT_DIR  install dir (default ~/.cache/loracc/onnxruntime-1.29.0)
#
# Idempotent: when the library is present and matches the stored checksum,
# nothing is downloaded.
set -euo pipefail

readonly ORT_VERSION="1.29.0"
readonly NPM_SPEC="onnxruntime-node@${ORT_VERSION}"
readonly TARBALL_NAME="onnxruntime-node-${ORT_VERSION}.tgz"
readonly TARBALL_SHA256="cfdfb45ec4044b1fdca43e5d2e180fb6817e649ff8ad1e0dfc90e18e51b67037"
readonly MEMBER="package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
readonly LIB_NAME="libonnxruntime.so.1"

prog=fetch-ort
# shellcheck source=npm-fetch.sh
source "$(dirname "$0")/npm-fetch.sh"

main() {
	case "$(uname -s)/$(uname -m)" in
	Linux/x86_64) ;;
	*) die "only linux/x86_64 is supported by this script (got $(uname -s)/$(uname -m)); pass --ort-lib or set LORACC_ORT_LIB instead" ;;
	esac
	dir="${LORACC_ORT_DIR:-$HOME/.cache/loracc/onnxruntime-${ORT_VERSION}}"
	mkdir -p "$dir"
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-ort.XXXXXX")"
	# shellcheck disable=SC2064 # expand tmp now
	trap "rm -rf '$tmp'" EXIT
	npm_fetch "$NPM_SPEC" "$TARBALL_NAME" "$TARBALL_SHA256" "$MEMBER" "$LIB_NAME"
	echo "${dir}/${LIB_NAME}"
}

main "$@"
