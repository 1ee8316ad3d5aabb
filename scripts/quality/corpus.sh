#!/usr/bin/env bash
# scripts/quality/corpus.sh: the text corpus of issue 14 (docs/quality.md).
#
# Downloads Debian's python3.11-doc (the Python 3.11 documentation; its reST
# sources are ~12 MB of English technical prose and code under the PSF
# licence) with apt-get download, pinned to one version and checked against
# its SHA-256, extracts it with dpkg-deb and runs corpus.py, which writes
# the splits as JSONL text records:
#
#   .gpu/quality/corpus/{pretrain_train,pretrain_heldout,downstream_train,
#                        downstream_valid,downstream_heldout}.jsonl, manifest.json
#   .gpu/quality/carry/corpus.tar.xz   the same folder, compressed, to carry
#                                      to the GPU machine (bench/quality/README.md)
#
# and refreshes the committed testdata/quality/corpus-manifest.json (the
# split recipe's result: sizes, counts, SHA-256 of each file) and
# testdata/quality/python3.11-doc.copyright (the package's licence notice).
# .gpu/ is ignored by git; the corpus itself is not committed.
#
# Run from the repository root: scripts/quality/corpus.sh
# Needs apt-get (Debian bookworm sources), dpkg-deb, python3, xz.
set -euo pipefail

pkg=python3.11-doc
version=3.11.2-6+deb12u7
sha=eafa42c54a08dcf3892d2e9f8e29644877c241d09186ca19a4d06129a339c9f3
deb=${pkg}_${version//:/%3a}_all.deb

root=$(git rev-parse --show-toplevel)
cache=${LORACC_QUALITY_CACHE:-$HOME/.cache/loracc-quality}
mkdir -p "$cache"

if [[ ! -f $cache/$deb ]] || ! echo "$sha  $cache/$deb" | sha256sum -c --quiet - 2>/dev/null; then
	rm -f "$cache/$deb"
	# apt's lists may be missing or old on a fresh machine: update once and retry
	(cd "$cache" && { apt-get download "$pkg=$version" || { apt-get update -qq && apt-get download "$pkg=$version"; }; })
fi
echo "$sha  $cache/$deb" | sha256sum -c --quiet - || { echo "corpus: $deb: SHA-256 mismatch" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$cache/$deb" "$tmp"
src=$tmp/usr/share/doc/python3.11/html/_sources
[[ -d $src ]] || { echo "corpus: $deb has no $src" >&2; exit 1; }

out=$root/.gpu/quality/corpus
rm -rf "$out"
mkdir -p "$out" "$root/testdata/quality" "$root/.gpu/quality/carry"
python3 "$root/scripts/quality/corpus.py" "$src" "$out" \
	--manifest "$root/testdata/quality/corpus-manifest.json" \
	--extra "package=$pkg" --extra "version=$version" --extra "deb_sha256=$sha"
cp "$tmp/usr/share/doc/$pkg/copyright" "$root/testdata/quality/python3.11-doc.copyright"
cp "$tmp/usr/share/doc/$pkg/copyright" "$out/LICENSE"

tar -C "$root/.gpu/quality" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
	-cJf "$root/.gpu/quality/carry/corpus.tar.xz" corpus
du -sh "$out" "$root/.gpu/quality/carry/corpus.tar.xz"
