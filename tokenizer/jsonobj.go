package tokenizer

import (
	"encoding/json"
	"fmt"
)

// obj is one JSON object of tokenizer.json, read field by field so that an
// unknown or malformed field gives an error naming its path
// ("pre_tokenizer.pretokenizers[1].pattern") rather than a panic.
type obj struct {
	path string
	m    map[string]json.RawMessage
}

// parseObj reads raw as an object; null or absent gives ok=false.
func parseObj(path string, raw json.RawMessage) (obj, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return obj{}, false, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return obj{}, false, fmt.Errorf("%s: %w", path, err)
	}
	if m == nil {
		return obj{}, false, nil
	}
	return obj{path: path, m: m}, true, nil
}

func (o obj) has(key string) bool {
	v, ok := o.m[key]
	return ok && string(v) != "null"
}

func (o obj) get(key string, dst any) error {
	if err := json.Unmarshal(o.m[key], dst); err != nil {
		return fmt.Errorf("%s.%s: %w", o.path, key, err)
	}
	return nil
}

func (o obj) str(key, def string) (string, error) {
	if !o.has(key) {
		return def, nil
	}
	var s string
	return s, o.get(key, &s)
}

func (o obj) boolean(key string, def bool) (bool, error) {
	if !o.has(key) {
		return def, nil
	}
	var b bool
	return b, o.get(key, &b)
}

func (o obj) integer(key string, def int) (int, error) {
	if !o.has(key) {
		return def, nil
	}
	var n int
	return n, o.get(key, &n)
}

func (o obj) typ() (string, error) {
	t, err := o.str("type", "")
	if err == nil && t == "" {
		err = fmt.Errorf("%s: no \"type\"", o.path)
	}
	return t, err
}

// list reads key as a list of objects.
func (o obj) list(key string) ([]obj, error) {
	var raws []json.RawMessage
	if o.has(key) {
		if err := o.get(key, &raws); err != nil {
			return nil, err
		}
	}
	out := make([]obj, 0, len(raws))
	for i, r := range raws {
		x, ok, err := parseObj(fmt.Sprintf("%s.%s[%d]", o.path, key, i), r)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%s.%s[%d]: null", o.path, key, i)
		}
		out = append(out, x)
	}
	return out, nil
}

// pattern reads {"String": s} or {"Regex": r}.
func (o obj) pattern(key string) (pattern, error) {
	p, ok, err := parseObj(o.path+"."+key, o.m[key])
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s.%s: missing", o.path, key)
	}
	if p.has("String") {
		s, err := p.str("String", "")
		return literal(s), err
	}
	if p.has("Regex") {
		s, err := p.str("Regex", "")
		if err != nil {
			return nil, err
		}
		re, err := compileRegex(s)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", o.path, key, err)
		}
		return re, nil
	}
	return nil, fmt.Errorf("%s.%s: neither String nor Regex", o.path, key)
}
