package generate

import (
	"strings"
	"testing"
)

// byteDecoder decodes ids as bytes, the way byte-fallback tokens decode a
// character split over several tokens: U+FFFD until it is complete.
func byteDecoder(ids []int) string {
	b := make([]byte, len(ids))
	for i, id := range ids {
		b[i] = byte(id)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

func TestStreamerHoldsBrokenCharacters(t *testing.T) {
	s := NewStreamer(byteDecoder)
	var pieces []string
	for _, b := range []byte("hé€!") {
		pieces = append(pieces, s.Add(int(b)))
	}
	pieces = append(pieces, s.Flush())
	if got := strings.Join(pieces, ""); got != "hé€!" {
		t.Fatalf("streamed %q, want %q", got, "hé€!")
	}
	for _, p := range pieces {
		if strings.ContainsRune(p, '\uFFFD') {
			t.Errorf("a piece held a broken character: %q", pieces)
		}
	}
	// "€" is three bytes: nothing is printed for its first two.
	if pieces[3] != "" || pieces[4] != "" || pieces[5] != "€" {
		t.Errorf("pieces %q: want the euro sign printed whole with its last byte", pieces)
	}
}

func TestStreamerFlushesIncompleteTail(t *testing.T) {
	s := NewStreamer(byteDecoder)
	s.Add('a')
	if got := s.Add(0xe2); got != "" {
		t.Errorf("half a character printed: %q", got)
	}
	if got := s.Flush(); got != "\uFFFD" {
		t.Errorf("Flush = %q, want the replacement character", got)
	}
}

// A decoder that rewrites earlier text (Metaspace drops a leading space
// once a second token arrives, say) holds output until it agrees again.
func TestStreamerRewrittenPrefix(t *testing.T) {
	words := map[int]string{1: " a", 2: "b", 3: "c"}
	dec := func(ids []int) string {
		var sb strings.Builder
		for _, id := range ids {
			sb.WriteString(words[id])
		}
		if len(ids) == 2 {
			return strings.TrimPrefix(sb.String(), " ")
		}
		return sb.String()
	}
	s := NewStreamer(dec)
	got := s.Add(1) + s.Add(2) + s.Add(3) + s.Flush()
	if got != " abc" || s.Text() != " abc" {
		t.Errorf("streamed %q (text %q), want \" abc\"", got, s.Text())
	}
}
