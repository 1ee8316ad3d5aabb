// Package tokenizer turns text into the token ids of a Hugging Face model
// and back, matching the Rust `tokenizers` library id for id.
//
// Supported files (Load picks the first present in a model folder):
//   - tokenizer.json (HF): BPE (byte-level as GPT-2/Llama-3/Qwen, with
//     ignore_merges; SentencePiece-style with byte_fallback and fuse_unk)
//     and Unigram (Viterbi over piece scores, byte_fallback). Added tokens
//     with their special/normalized/lstrip/rstrip/single_word flags;
//     normalizers NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents,
//     Prepend, Replace, BertNormalizer, Sequence; pre-tokenizers Split,
//     ByteLevel, Metaspace, Digits, Punctuation, Whitespace,
//     WhitespaceSplit, BertPreTokenizer, CharDelimiterSplit, Sequence;
//     post-processors TemplateProcessing, ByteLevel, Bert/RobertaProcessing,
//     Sequence; decoders ByteLevel, ByteFallback, Fuse, Strip, Replace,
//     Metaspace, WordPiece, Sequence.
//   - tokenizer.model (SentencePiece ModelProto), BPE or Unigram, with
//     byte fallback and the whitespace options, under the identity
//     normalization rule (a precompiled charsmap such as nmt_nfkc is
//     refused rather than approximated).
//   - GPT-2's encoder.json + vocab.bpe, as HF's GPT2TokenizerFast reads them.
//
// tokenizer_config.json supplies bos/eos/pad tokens, add_bos_token and
// add_eos_token (for files that do not fix BOS/EOS themselves),
// model_max_length and the raw chat templates (ChatTemplate).
//
// Why by hand: no Go library reproduces HF's tokenizer.json pipeline
// exactly (added-token splitting before normalization, the split
// behaviours, Metaspace's prepend schemes, ByteFallback's U+FFFD rule, ...),
// and SentencePiece has no Go port. The .model file is read with
// protowire field by field instead of generated code: a dozen fields do
// not justify the schema.
//
// Dependencies, each for one reason:
//   - github.com/dlclark/regexp2/v2: tokenizer.json regexes need
//     look-ahead (`\s+(?!\S)`), which Go's RE2 engine lacks. It backtracks,
//     so each match has a timeout and Encode returns an error past it; the
//     three regexes of the supported families (GPT-2, Llama-3, Qwen2/3) run
//     as hand-written scanners (scan.go) checked against regexp2 by a test
//     and a fuzz target, which is also what makes them fast.
//   - golang.org/x/text/unicode/norm: the NFC/NFKC normalizers.
//   - google.golang.org/protobuf/encoding/protowire (already in go.mod):
//     the .model reader.
//
// Offsets are not computed: loracc needs ids. A Tokenizer is safe for
// concurrent use; its word cache is bounded and locked.
//
// Not supported: WordPiece and WordLevel models, BPE dropout, the
// Precompiled normalizer (SentencePiece charsmaps such as nmt_nfkc), pair
// templates. Regexes other than the three scanned ones run with regexp2's
// .NET semantics standing in for Oniguruma's.
package tokenizer
