package tokenizer

import (
	"fmt"

	"golang.org/x/text/unicode/norm"
)

// This file maps tokenizer.json's normalizer, pre_tokenizer and decoder
// objects onto the pieces of normalizer.go, pretok.go and decoder.go.

func parseNormalizer(o obj) (normalizer, error) {
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Lowercase":
		return lowercase{}, nil
	case "StripAccents":
		return stripAccents{}, nil
	case "Strip":
		l, err1 := o.boolean("strip_left", true)
		r, err2 := o.boolean("strip_right", true)
		return strip{l, r}, firstErr(err1, err2)
	case "Prepend":
		p, err := o.str("prepend", "")
		return prepend{p}, err
	case "Replace":
		r, err := parseReplace(o)
		return r, err
	case "BertNormalizer":
		c, e1 := o.boolean("clean_text", true)
		h, e2 := o.boolean("handle_chinese_chars", true)
		l, e3 := o.boolean("lowercase", true)
		s, e4 := o.boolean("strip_accents", l) // null: follows lowercase
		return bertNormalizer{c, h, s, l}, firstErr(e1, e2, e3, e4)
	case "Sequence":
		subs, err := o.list("normalizers")
		if err != nil {
			return nil, err
		}
		var seq normSequence
		for _, s := range subs {
			n, err := parseNormalizer(s)
			if err != nil {
				return nil, err
			}
			seq = append(seq, n)
		}
		return seq, nil
	}
	return nil, fmt.Errorf("%s: unsupported normalizer type %q", o.path, t)
}

func parseReplace(o obj) (replace, error) {
	p, err := o.pattern("pattern")
	if err != nil {
		return replace{}, err
	}
	c, err := o.str("content", "")
	return replace{p, c}, err
}

func parseBehavior(o obj, def string) (behavior, error) {
	s, err := o.str("behavior", def)
	if err != nil {
		return 0, err
	}
	switch s {
	case "Removed":
		return removed, nil
	case "Isolated":
		return isolated, nil
	case "MergedWithPrevious":
		return mergedWithPrevious, nil
	case "MergedWithNext":
		return mergedWithNext, nil
	case "Contiguous":
		return contiguous, nil
	}
	return 0, fmt.Errorf("%s.behavior: unknown %q", o.path, s)
}

func parsePrependScheme(o obj) (prependScheme, error) {
	if !o.has("prepend_scheme") {
		// Files older than prepend_scheme have add_prefix_space.
		add, err := o.boolean("add_prefix_space", true)
		if !add {
			return prependNever, err
		}
		return prependAlways, err
	}
	s, err := o.str("prepend_scheme", "")
	switch s {
	case "always":
		return prependAlways, err
	case "first":
		return prependFirst, err
	case "never":
		return prependNever, err
	}
	return 0, firstErr(err, fmt.Errorf("%s.prepend_scheme: unknown %q", o.path, s))
}

func parsePreTokenizer(o obj) (preTokenizer, error) {
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "Split":
		p, err := o.pattern("pattern")
		if err != nil {
			return nil, err
		}
		b, err := parseBehavior(o, "")
		if err != nil {
			return nil, err
		}
		inv, err := o.boolean("invert", false)
		return split{p, b, inv}, err
	case "ByteLevel":
		add, e1 := o.boolean("add_prefix_space", true)
		useRe, e2 := o.boolean("use_regex", true)
		bl := byteLevel{addPrefixSpace: add}
		if useRe {
			var err error
			if bl.re, err = compileRegex(gpt2Pattern); err != nil {
				return nil, err
			}
		}
		return bl, firstErr(e1, e2)
	case "Metaspace":
		r, e1 := o.str("replacement", "▁")
		sch, e2 := parsePrependScheme(o)
		sp, e3 := o.boolean("split", true)
		return metaspace{r, sch, sp}, firstErr(e1, e2, e3)
	case "Digits":
		each, err := o.boolean("individual_digits", false)
		return runeClass{match: isNumeric, behavior: isolated, each: each}, err
	case "Punctuation":
		b, err := parseBehavior(o, "Isolated")
		return runeClass{match: isPunct, behavior: b, each: true}, err
	case "Whitespace":
		return whitespace{}, nil
	case "WhitespaceSplit":
		return runeClass{match: isSpace, behavior: removed}, nil
	case "BertPreTokenizer":
		return preSequence{runeClass{match: isSpace, behavior: removed},
			runeClass{match: isPunct, behavior: isolated, each: true}}, nil
	case "CharDelimiterSplit":
		d, err := o.str("delimiter", "")
		if err != nil {
			return nil, err
		}
		return split{literal(d), removed, false}, nil
	case "Sequence":
		subs, err := o.list("pretokenizers")
		if err != nil {
			return nil, err
		}
		var seq preSequence
		for _, s := range subs {
			p, err := parsePreTokenizer(s)
			if err != nil {
				return nil, err
			}
			seq = append(seq, p)
		}
		return seq, nil
	}
	return nil, fmt.Errorf("%s: unsupported pre_tokenizer type %q", o.path, t)
}

func parseDecoder(o obj) (decoder, error) {
	t, err := o.typ()
	if err != nil {
		return nil, err
	}
	switch t {
	case "ByteLevel":
		return byteLevelDecoder{}, nil
	case "ByteFallback":
		return byteFallbackDecoder{}, nil
	case "Fuse":
		return fuseDecoder{}, nil
	case "Strip":
		c, e1 := o.str("content", " ")
		a, e2 := o.integer("start", 0)
		b, e3 := o.integer("stop", 0)
		return stripDecoder{c, a, b}, firstErr(e1, e2, e3)
	case "Replace":
		r, err := parseReplace(o)
		return replaceDecoder{r}, err
	case "Metaspace":
		r, e1 := o.str("replacement", "▁")
		sch, e2 := parsePrependScheme(o)
		return metaspaceDecoder{r, sch}, firstErr(e1, e2)
	case "WordPiece":
		p, e1 := o.str("prefix", "##")
		c, e2 := o.boolean("cleanup", true)
		return wordPieceDecoder{p, c}, firstErr(e1, e2)
	case "Sequence":
		subs, err := o.list("decoders")
		if err != nil {
			return nil, err
		}
		var seq decSequence
		for _, s := range subs {
			d, err := parseDecoder(s)
			if err != nil {
				return nil, err
			}
			seq = append(seq, d)
		}
		return seq, nil
	}
	return nil, fmt.Errorf("%s: unsupported decoder type %q", o.path, t)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
