// Package generate runs a causal language model exported to ONNX token by
// token: it reads which of Optimum's inputs the model takes, drives its KV
// cache when it has one, and picks each next token greedily or by
// sampling with temperature, top-k and top-p.
//
// It works on ids and leaves text to its callers (cmd/loracc's generate
// command tokenizes, renders chat templates and prints), so it imports
// only graph and runtime; Streamer is the one piece that touches text,
// through a decode function it is given.
//
// Why the cache is optional: an export with past_key_values.N.key/value
// inputs and present.N.key/value outputs costs one token's work per step,
// but many exports (testdata's gpt2_tiny, anything exported for training)
// have neither, and for those each step reruns the whole sequence, which
// gives the same tokens, only slower. Batch size is 1: a CLI generating
// one answer needs no padding and no per-row stop bookkeeping.
package generate
