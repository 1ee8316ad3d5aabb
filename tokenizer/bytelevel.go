package tokenizer

import "unicode/utf8"

// byteRunes is GPT-2's reversible map from bytes to printable runes:
// printable Latin-1 bytes map to themselves, the other 68 to U+0100 on.
// It is computed once and never written after: a constant table, not
// state.
var byteRunes, runeBytes = makeByteTables()

func makeByteTables() ([256]rune, map[rune]byte) {
	var fwd [256]rune
	back := make(map[rune]byte, 256)
	n := rune(0)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			fwd[b] = rune(b)
		} else {
			fwd[b] = 256 + n
			n++
		}
		back[fwd[b]] = byte(b)
	}
	return fwd, back
}

// byteLevelMap appends to dst the byte-level form of s: each byte as its
// rune of byteRunes.
func byteLevelMap(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		dst = utf8.AppendRune(dst, byteRunes[s[i]])
	}
	return dst
}

// byteLevelUnmap turns a byte-level token back into bytes. A token with a
// rune outside the table (an added token such as "<|im_start|>" is fine,
// but one in another script is not) is taken as raw UTF-8, as HF's
// ByteLevel decoder does.
func byteLevelUnmap(dst []byte, tok string) []byte {
	start := len(dst)
	for _, r := range tok {
		b, ok := runeBytes[r]
		if !ok {
			return append(dst[:start], tok...)
		}
		dst = append(dst, b)
	}
	return dst
}
