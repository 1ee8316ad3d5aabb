package generate

import (
	"strings"
	"unicode/utf8"
)

// Streamer turns a growing list of token ids into printable text, piece by
// piece. Decoding one token at a time is wrong for most tokenizers: a
// character split over byte-fallback tokens decodes as U+FFFD until its
// last byte arrives, and decoders such as Metaspace treat the first token
// differently. So Streamer decodes the whole list each time and hands out
// the new suffix, holding it back while the text ends in U+FFFD (a
// character not yet complete) or while the decoder has rewritten text
// already handed out (it resumes once the text again starts with it).
type Streamer struct {
	decode func(ids []int) string
	ids    []int
	text   string // decode(ids)
	out    string // what has been handed out, a prefix of text when in step
}

// NewStreamer streams with decode, typically the tokenizer's Decode with
// special tokens skipped.
func NewStreamer(decode func(ids []int) string) *Streamer {
	return &Streamer{decode: decode}
}

// Add appends a token and returns the text that became final with it
// (often "", never a broken character).
func (s *Streamer) Add(id int) string {
	s.ids = append(s.ids, id)
	s.text = s.decode(s.ids)
	return s.take(false)
}

// Flush returns what is left once generation ends, a trailing incomplete
// character included: no more bytes will complete it. Text already handed
// out cannot be taken back, so if the decoder rewrote it Flush returns ""
// and Text holds the true decode.
func (s *Streamer) Flush() string { return s.take(true) }

// Text is the decoded text of every token added so far.
func (s *Streamer) Text() string { return s.text }

func (s *Streamer) take(final bool) string {
	if !strings.HasPrefix(s.text, s.out) {
		return ""
	}
	rest := s.text[len(s.out):]
	if !final {
		rest = strings.TrimRight(rest, "\uFFFD")
		// Never cut inside a character (a decoder returning raw bytes).
		for len(rest) > 0 && !utf8.ValidString(rest) {
			rest = rest[:len(rest)-1]
		}
	}
	s.out += rest
	return rest
}
