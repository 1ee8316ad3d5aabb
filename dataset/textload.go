package dataset

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/loracc/loracc/graph"
)

// cacheVersion changes whenever the tokenised form of a record changes,
// so caches written by an older loracc are not reused.
const cacheVersion = "loracc tokens v1"

// sniff reads the first non-blank record of path and returns its format.
// A first line that is not a JSON object is left to the token-id reader,
// whose messages say what is wrong with it.
func (s *Set) sniff(path string) (Format, error) {
	f, _, err := graph.OpenRegular(path)
	if err != nil {
		return "", fmt.Errorf("dataset: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for first := true; sc.Scan(); first = false {
		line := sc.Bytes()
		if first {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var keys map[string]json.RawMessage
		if json.Unmarshal(line, &keys) != nil {
			return FormatIDs, nil
		}
		return formatOfKeys(keys, func(k string) bool { return s.byName[k] != nil }), nil
	}
	return FormatIDs, nil // empty: the reader says so
}

// loadText tokenises a file of text records (or reuses its cache) and
// reads the token examples.
func (s *Set) loadText(path string, format Format) error {
	if err := s.textFields(format); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	opts := s.spec.Text
	if opts.Tokenizer == nil {
		return fmt.Errorf("%s: %s records need a tokenizer, and none was given", path, format)
	}
	tk, err := opts.Tokenizer()
	if err != nil {
		return fmt.Errorf("%s: %s records need a tokenizer: %w", path, format, err)
	}
	f, _, err := graph.OpenRegular(path)
	if err != nil {
		return fmt.Errorf("dataset: %w", err)
	}
	data, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("dataset: %s: %w", path, err)
	}
	maxLen := s.spec.MaxLength
	if maxLen == 0 {
		if m := tk.Tok.MaxLength(); m > 0 {
			maxLen = min(m, DefaultMaxLength)
		}
	}
	if opts.Packing && maxLen == 0 {
		return fmt.Errorf("%s: packing needs a maximum length, and the tokenizer (%s) sets none", path, tk.Dir)
	}
	s.stats = Stats{Format: format, MaxLength: maxLen}

	var cache, statsFile string
	if opts.CacheDir != "" {
		h := sha256.New()
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00%t\x00%t\x00%s\x00%s\x00%d\x00", cacheVersion, tk.Key, format, maxLen, opts.Packing, opts.PromptLoss, s.ids.name, s.labels.name, s.spec.IgnoreIndex)
		h.Write(data)
		base := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		stem := filepath.Join(opts.CacheDir, fmt.Sprintf("%s.%x", base, h.Sum(nil)[:8]))
		cache, statsFile = stem+".tokens.jsonl", stem+".stats.json"
		if st, ok := readStats(statsFile); ok {
			if cf, err := os.Open(cache); err == nil {
				defer cf.Close()
				st.Cache, st.Reused = cache, true
				s.stats = st
				return s.read(cf, cache, maxLine)
			}
		}
	}
	tokens, err := s.tokenise(path, data, tk, format, maxLen)
	if err != nil {
		return err
	}
	if cache != "" {
		if err := writeCache(cache, statsFile, tokens, s.stats); err != nil {
			return err
		}
		s.stats.Cache = cache
	}
	return s.read(bytes.NewReader(tokens), path+" (tokenised)", len(tokens)+1)
}

// textFields checks that the graph takes what text records give: lm
// sequences of input ids and labels, and at most a mask besides.
func (s *Set) textFields(format Format) error {
	if s.spec.Loss != "lm" {
		return fmt.Errorf("%s records train the lm loss, not %s", format, s.spec.Loss)
	}
	if s.ids == nil || !s.ids.seq || len(s.ids.dims) != 1 || !s.labels.seq || len(s.labels.dims) != 1 {
		return fmt.Errorf("%s records need input ids and labels of shape [batch, sequence]", format)
	}
	for _, f := range s.fields {
		if f != s.ids && f != s.labels && f != s.mask {
			return fmt.Errorf("%s records give input ids, labels and the attention mask; the graph also takes %q, which only token-id data can give", format, f.name)
		}
	}
	return nil
}

// tokenise encodes every record and returns the examples as token-id
// lines. Errors name path:line and the field.
func (s *Set) tokenise(path string, data []byte, tk *Tokenizer, format Format, maxLen int) ([]byte, error) {
	var docs []document
	lineNo := 0
	for rest := data; len(rest) > 0; {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte{'\n'})
		lineNo++
		if lineNo == 1 {
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if len(line) > maxLine {
			return nil, fmt.Errorf("%s:%d: line longer than %d bytes", path, lineNo, maxLine)
		}
		s.stats.Records++
		var rec map[string]json.RawMessage
		if c := bytes.TrimSpace(line)[0]; c != '{' && what(c) != "" {
			return nil, fmt.Errorf("%s:%d: expected a JSON object, got %s", path, lineNo, what(c))
		}
		if err := json.Unmarshal(line, &rec); err != nil {
			return nil, fmt.Errorf("%s:%d: not JSON: %w", path, lineNo, err)
		}
		for _, f := range s.fields { // in order, so the message is always the same
			if rec[f.name] != nil {
				return nil, fmt.Errorf("%s:%d: field %q: a %s record in a file of %s records (the first record sets the format)", path, lineNo, f.name, FormatIDs, format)
			}
		}
		d, err := encodeRecord(tk, format, rec, s.spec.Text.PromptLoss)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, lineNo, err)
		}
		d.line = lineNo
		if err := s.checkTokens(d, format); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, lineNo, err)
		}
		docs = append(docs, d)
	}
	if s.stats.Records == 0 {
		return nil, fmt.Errorf("%s: no examples (the file has no records)", path)
	}
	if s.spec.Text.Packing {
		docs = s.pack(docs, tk, maxLen)
	}
	var out []byte
	for _, d := range docs {
		if maxLen > 0 && len(d.ids) > maxLen {
			d.ids, d.counted = d.ids[:maxLen], d.counted[:maxLen]
			s.stats.Truncated++
		}
		if !slices.Contains(d.counted[min(1, len(d.counted)):], true) {
			s.stats.Skipped++
			continue
		}
		out = s.appendExample(out, d)
		s.stats.Examples++
	}
	if s.stats.Examples == 0 {
		return nil, fmt.Errorf("%s: no examples: all %d records were skipped, none has a token the loss counts after position 0", path, s.stats.Records)
	}
	return out, nil
}

// checkTokens checks a document's ids against the model's bounds, so an
// id the model's embedding lacks names the record rather than a line of
// the tokenised file.
func (s *Set) checkTokens(d document, format Format) error {
	key := formatKeys(format)[len(formatKeys(format))-1]
	for j, id := range d.ids {
		for _, f := range []*field{s.ids, s.labels} {
			if f == s.labels && !d.counted[j] {
				continue
			}
			if f.limit.Size > 0 && int64(id) >= f.limit.Size {
				return fmt.Errorf("field %q: token %d has id %d, outside [0, %d), %s; is the tokenizer the model's?", key, j, id, f.limit.Size, f.limit.Of)
			}
			if !f.kind.fits(int64(id)) {
				return fmt.Errorf("field %q: token %d has id %d, out of %s range", key, j, id, f.dtype)
			}
		}
	}
	return nil
}

// pack concatenates the documents, an EOS between them (text and
// completion documents already end with one), and cuts the stream into
// chunks of maxLen tokens; the last chunk may be shorter.
func (s *Set) pack(docs []document, tk *Tokenizer, maxLen int) []document {
	var all document
	for _, d := range docs {
		all.ids = append(all.ids, d.ids...)
		all.counted = append(all.counted, d.counted...)
		tk.appendEOS(&all, false)
	}
	var out []document
	for lo := 0; lo < len(all.ids); lo += maxLen {
		hi := min(lo+maxLen, len(all.ids))
		out = append(out, document{ids: all.ids[lo:hi], counted: all.counted[lo:hi]})
	}
	return out
}

// appendExample writes d as a token-id line: the ids, and labels equal to
// them where the loss counts the token and the ignore index elsewhere.
// The lm loss scores position t against label t+1, so a label counts the
// prediction of its own token from the ones before it.
func (s *Set) appendExample(out []byte, d document) []byte {
	name := func(n string) []byte { b, _ := json.Marshal(n); return b }
	out = append(out, '{')
	out = append(out, name(s.ids.name)...)
	out = append(out, ":["...)
	for j, id := range d.ids {
		if j > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendInt(out, int64(id), 10)
	}
	out = append(out, "],"...)
	out = append(out, name(s.labels.name)...)
	out = append(out, ":["...)
	for j, id := range d.ids {
		if j > 0 {
			out = append(out, ',')
		}
		v := s.spec.IgnoreIndex
		if d.counted[j] {
			v = int64(id)
		}
		out = strconv.AppendInt(out, v, 10)
	}
	return append(out, "]}\n"...)
}

// readStats reads a cache's stats file; false when it is missing or
// unreadable (the cache is then rebuilt).
func readStats(path string) (Stats, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Stats{}, false
	}
	var st Stats
	if json.Unmarshal(data, &st) != nil || st.Examples == 0 {
		return Stats{}, false
	}
	return st, true
}

// writeCache writes the tokens and then the stats, each to a temporary
// file renamed into place: the stats file is the mark of a complete
// cache, so a run killed while writing leaves no cache that looks whole.
func writeCache(tokens, statsFile string, data []byte, st Stats) error {
	if err := os.MkdirAll(filepath.Dir(tokens), 0o755); err != nil {
		return fmt.Errorf("dataset: cache: %w", err)
	}
	js, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("dataset: cache: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{tokens, data}, {statsFile, append(js, '\n')}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.data, 0o644); err != nil {
			return fmt.Errorf("dataset: cache: %w", err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			return errors.Join(fmt.Errorf("dataset: cache: %w", err), os.Remove(tmp))
		}
	}
	return nil
}
