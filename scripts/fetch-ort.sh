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

die() {
	echo "fetch-ort: $*" >&2
	exit 1
}

sha256_of() {
	sha256sum "$1" | cut -d' ' -f1
}

main() {
	case "$(uname -s)/$(uname -m)" in
	Linux/x86_64) ;;
	*) die "only linux/x86_64 is supported by this script (got $(uname -s)/$(uname -m)); pass --ort-lib or set LORACC_ORT_LIB instead" ;;
	esac

	local dir="${LORACC_ORT_DIR:-$HOME/.cache/loracc/onnxruntime-${ORT_VERSION}}"
	local lib="${dir}/${LIB_NAME}"
	local sumfile="${lib}.sha256"
	local tarball="${dir}/${TARBALL_NAME}"

	# Fast path: library present and unchanged since we extracted it.
	if [[ -f "$lib" && -f "$sumfile" ]] && [[ "$(sha256_of "$lib")" == "$(cat "$sumfile")" ]]; then
		echo "$lib"
		return 0
	fi

	mkdir -p "$dir"

	# Reuse a cached tarball only if it still has the pinned checksum.
	if [[ -f "$tarball" ]] && [[ "$(sha256_of "$tarball")" != "$TARBALL_SHA256" ]]; then
		echo "fetch-ort: cached tarball $tarball has the wrong checksum; fetching again" >&2
		rm -f "$tarball"
	fi

	local tmp
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-ort.XXXXXX")"
	# shellcheck disable=SC2064 # expand tmp now, the local is gone at exit
	trap "rm -rf '$tmp'" EXIT

	if [[ ! -f "$tarball" ]]; then
		command -v npm >/dev/null || die "npm not found; install Node.js/npm or download ${NPM_SPEC} by hand"
		echo "fetch-ort: downloading ${NPM_SPEC} with npm pack" >&2
		(cd "$tmp" && npm pack --silent --ignore-scripts "$NPM_SPEC" >/dev/null) ||
			die "npm pack ${NPM_SPEC} failed"
		[[ -f "$tmp/$TARBALL_NAME" ]] || die "npm pack did not produce $TARBALL_NAME"
		local got
		got="$(sha256_of "$tmp/$TARBALL_NAME")"
		if [[ "$got" != "$TARBALL_SHA256" ]]; then
			die "checksum mismatch for ${NPM_SPEC}: got ${got}, want ${TARBALL_SHA256}; refusing to install"
		fi
		mv "$tmp/$TARBALL_NAME" "$tarball"
	fi

	tar -xzf "$tarball" -C "$tmp" "$MEMBER" || die "$MEMBER not found in $tarball"
	# Write next to the target and rename, so a concurrent reader never sees
	# a half-written library.
	cp "$tmp/$MEMBER" "${lib}.tmp"
	chmod 0644 "${lib}.tmp"
	mv -f "${lib}.tmp" "$lib"
	sha256_of "$lib" >"${sumfile}.tmp"
	mv -f "${sumfile}.tmp" "$sumfile"

	echo "$lib"
}

main "$@"
