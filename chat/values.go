package chat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/ardanlabs/jinja"
)

// toValue converts the Go data a caller hands us into engine values. It
// accepts what JSON decoding produces plus json.RawMessage, which is decoded
// keeping key order: transformers' dicts keep insertion order, and a
// template that prints a dict (tojson of tool arguments) shows it, while a
// Go map has none (its keys are sorted here). Strings must be valid UTF-8
// and free of the generation sentinels; nothing else is accepted, so bad
// input is an error, never a surprise in the render.
func toValue(v any, depth int) (jinja.Value, error) {
	if depth > maxJSONDepth {
		return jinja.Undefined(), fmt.Errorf("value nests more than %d deep", maxJSONDepth)
	}
	switch x := v.(type) {
	case nil:
		return jinja.None(), nil
	case jinja.Value:
		return x, nil
	case bool:
		return jinja.NewBool(x), nil
	case string:
		if err := checkString(x); err != nil {
			return jinja.Undefined(), err
		}
		return jinja.NewString(x), nil
	case int:
		return jinja.NewInt(int64(x)), nil
	case int64:
		return jinja.NewInt(x), nil
	case int32:
		return jinja.NewInt(int64(x)), nil
	case float64:
		return jinja.NewFloat(x), nil
	case float32:
		return jinja.NewFloat(float64(x)), nil
	case json.Number:
		return numberValue(x)
	case json.RawMessage:
		return rawValue(x, depth)
	case []any:
		items := make([]jinja.Value, len(x))
		for i, it := range x {
			val, err := toValue(it, depth+1)
			if err != nil {
				return jinja.Undefined(), err
			}
			items[i] = val
		}
		return jinja.NewList(items), nil
	case []string:
		items := make([]any, len(x))
		for i, s := range x {
			items[i] = s
		}
		return toValue(items, depth)
	case []map[string]any:
		items := make([]any, len(x))
		for i, m := range x {
			items[i] = m
		}
		return toValue(items, depth)
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		d := jinja.NewDict()
		for _, k := range keys {
			if err := checkString(k); err != nil {
				return jinja.Undefined(), err
			}
			val, err := toValue(x[k], depth+1)
			if err != nil {
				return jinja.Undefined(), fmt.Errorf("%q: %w", k, err)
			}
			d.AsDict().Set(k, val)
		}
		return d, nil
	}
	return jinja.Undefined(), fmt.Errorf("unsupported value of type %T", v)
}

func checkString(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("string %q is not valid UTF-8", s)
	}
	if reserved(s) {
		return fmt.Errorf("string contains U+10FFFA to U+10FFFD, which chat reserves for its marks")
	}
	return nil
}

// numberValue keeps JSON's int/float distinction as Python's json does.
func numberValue(n json.Number) (jinja.Value, error) {
	s := string(n)
	if !strings.ContainsAny(s, ".eE") {
		if i, err := n.Int64(); err == nil {
			return jinja.NewInt(i), nil
		}
	}
	f, err := n.Float64()
	if err != nil {
		return jinja.Undefined(), fmt.Errorf("number %s: %w", s, err)
	}
	return jinja.NewFloat(f), nil
}

// rawValue decodes JSON keeping object key order.
func rawValue(raw json.RawMessage, depth int) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeOrdered(dec, depth)
	if err != nil {
		return jinja.Undefined(), fmt.Errorf("json value: %w", err)
	}
	if _, err := dec.Token(); err == nil {
		return jinja.Undefined(), fmt.Errorf("json value: trailing data")
	}
	return v, nil
}

func decodeOrdered(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > maxJSONDepth {
		return jinja.Undefined(), fmt.Errorf("value nests more than %d deep", maxJSONDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '[':
			var items []jinja.Value
			for dec.More() {
				v, err := decodeOrdered(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, v)
			}
			if _, err := dec.Token(); err != nil {
				return jinja.Undefined(), err
			}
			return jinja.NewList(items), nil
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				k, _ := kt.(string)
				if err := checkString(k); err != nil {
					return jinja.Undefined(), err
				}
				v, err := decodeOrdered(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				d.AsDict().Set(k, v)
			}
			if _, err := dec.Token(); err != nil {
				return jinja.Undefined(), err
			}
			return d, nil
		}
		return jinja.Undefined(), fmt.Errorf("unexpected %v", t)
	default:
		return toValue(t, depth)
	}
}
