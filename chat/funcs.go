package chat

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// This file holds the functions and filters chat puts into each render's
// context: transformers' own (raise_exception, strftime_now; tojson is in
// python.go), the sandbox's bounded range, Jinja2's trim, join, string,
// selectattr and rejectattr where the engine's differ, the printer every
// {{ }} goes through, and the budget that bounds loops, macro recursion and
// time. They are made per engine render, so their state (the budget)
// belongs to that render alone.

// Budgets for one render. Jinja2 has no unbounded loop, but nested loops
// over range() and recursive macros can still run for ever or overflow the
// Go stack, which (unlike a Python RecursionError) kills the process.
const (
	maxLoopIterations = 1 << 18
	maxMacroDepth     = 200
	maxRange          = 100000 // Jinja2's sandbox: MAX_RANGE
	renderTimeout     = 10 * time.Second
)

// RaisedError is the error a template's raise_exception(message) returns.
type RaisedError struct{ Message string }

func (e *RaisedError) Error() string { return "template raised: " + e.Message }

// errBudget marks renders stopped by a budget.
var errBudget = errors.New("render budget exceeded")

// budget counts what one render has spent.
type budget struct {
	iterations int
	depth      int
	deadline   time.Time
}

func (b *budget) tick() error {
	b.iterations++
	if b.iterations > maxLoopIterations {
		return fmt.Errorf("%w: more than %d loop iterations", errBudget, maxLoopIterations)
	}
	if b.iterations%1024 == 0 && time.Now().After(b.deadline) {
		return fmt.Errorf("%w: render ran past %v", errBudget, renderTimeout)
	}
	return nil
}

// builtins returns the callables for one render.
func builtins(now func() time.Time) map[string]jinja.Value {
	b := &budget{deadline: time.Now().Add(renderTimeout)}
	empty := jinja.NewString("")
	fn := jinja.NewCallable
	return map[string]jinja.Value{
		"raise_exception": fn("raise_exception", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			msg := ""
			if len(args) > 0 {
				msg = display(args[0])
			}
			return jinja.Undefined(), &RaisedError{Message: msg}
		}),
		"strftime_now": fn("strftime_now", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			if len(args) != 1 || !args[0].IsString() {
				return jinja.Undefined(), fmt.Errorf("strftime_now takes one format string")
			}
			return jinja.NewString(strftime(now(), args[0].AsString())), nil
		}),
		"range": fn("range", pyRange),
		fnTick: fn(fnTick, func([]jinja.Value, map[string]jinja.Value) (jinja.Value, error) {
			return empty, b.tick()
		}),
		fnEnter: fn(fnEnter, func([]jinja.Value, map[string]jinja.Value) (jinja.Value, error) {
			b.depth++
			if b.depth > maxMacroDepth {
				return empty, fmt.Errorf("%w: macros nest more than %d deep", errBudget, maxMacroDepth)
			}
			return empty, b.tick()
		}),
		fnLeave: fn(fnLeave, func([]jinja.Value, map[string]jinja.Value) (jinja.Value, error) {
			b.depth--
			return empty, nil
		}),
		replacedFilters["tojson"]: fn("tojson", filterToJSON),
		replacedFilters["trim"]:   fn("trim", filterTrim),
		replacedFilters["selectattr"]: fn("selectattr", func(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
			return filterAttr(args, true)
		}),
		replacedFilters["rejectattr"]: fn("rejectattr", func(args []jinja.Value, kw map[string]jinja.Value) (jinja.Value, error) {
			return filterAttr(args, false)
		}),
		replacedFilters["string"]: fn("string", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			if len(args) == 0 {
				return jinja.NewString(""), nil
			}
			return jinja.NewString(display(args[0])), nil
		}),
		replacedFilters["join"]: fn("join", filterJoin),
		fnPrint: fn("print", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			if len(args) != 1 {
				return jinja.Undefined(), fmt.Errorf("print takes one value")
			}
			return jinja.NewString(display(args[0])), nil
		}),
	}
}

// pyRange is range() with the sandbox's limit on its length.
func pyRange(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
	var n [3]int64
	for i, a := range args {
		if i >= 3 || !a.IsInt() {
			return jinja.Undefined(), fmt.Errorf("range takes one to three integers")
		}
		n[i] = a.AsInt()
	}
	start, stop, step := int64(0), n[0], int64(1)
	switch len(args) {
	case 0:
		return jinja.Undefined(), fmt.Errorf("range takes one to three integers")
	case 2:
		start, stop = n[0], n[1]
	case 3:
		start, stop, step = n[0], n[1], n[2]
	}
	if step == 0 {
		return jinja.Undefined(), fmt.Errorf("range() arg 3 must not be zero")
	}
	var count int64
	if step > 0 && stop > start {
		count = (stop - start + step - 1) / step
	} else if step < 0 && stop < start {
		count = (start - stop - step - 1) / -step
	}
	if count > maxRange || count < 0 {
		return jinja.Undefined(), fmt.Errorf("range too big: the sandbox blocks ranges larger than %d", maxRange)
	}
	items := make([]jinja.Value, count)
	for i := range items {
		items[i] = jinja.NewInt(start + int64(i)*step)
	}
	return jinja.NewList(items), nil
}

// filterTrim is Jinja2's trim: Python's str.strip, with optional chars.
func filterTrim(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
	if len(args) == 0 {
		return jinja.NewString(""), nil
	}
	s := display(args[0])
	if len(args) > 1 && !args[1].IsNone() {
		return jinja.NewString(strings.Trim(s, display(args[1]))), nil
	}
	return jinja.NewString(strings.TrimFunc(s, pyIsSpace)), nil
}

// filterJoin is Jinja2's join(value, d="", attribute=None): the str() of
// each item (a string's characters, a dict's keys) with d between.
func filterJoin(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
	if len(args) == 0 {
		return jinja.Undefined(), fmt.Errorf("join: no value")
	}
	sep := ""
	if len(args) > 1 {
		sep = display(args[1])
	}
	if d, ok := kwargs["d"]; ok {
		sep = display(d)
	}
	var items []jinja.Value
	switch v := args[0]; {
	case v.IsList():
		items = v.AsList().Items
	case v.IsDict():
		for _, k := range v.AsDict().Keys {
			items = append(items, jinja.NewString(k))
		}
	case v.IsString():
		for _, r := range v.AsString() {
			items = append(items, jinja.NewString(string(r)))
		}
	default:
		return jinja.Undefined(), fmt.Errorf("join: %s is not iterable", v.String())
	}
	attr, hasAttr := kwargs["attribute"]
	parts := make([]string, len(items))
	for i, it := range items {
		if hasAttr {
			next := jinja.Undefined()
			if it.IsDict() {
				if v, ok := it.AsDict().Get(display(attr)); ok {
					next = v
				}
			}
			it = next
		}
		parts[i] = display(it)
	}
	return jinja.NewString(strings.Join(parts, sep)), nil
}

// filterAttr is Jinja2's selectattr (keep) and rejectattr: items whose
// attribute (a dotted path) passes a test, truthiness by default. The
// engine's own versions fail on the one-argument form.
func filterAttr(args []jinja.Value, keep bool) (jinja.Value, error) {
	if len(args) < 2 {
		return jinja.Undefined(), fmt.Errorf("selectattr/rejectattr need an attribute name")
	}
	if !args[0].IsList() {
		return jinja.NewList(nil), nil
	}
	test, testArgs := "truthy", []jinja.Value(nil)
	if len(args) > 2 {
		test, testArgs = display(args[2]), args[3:]
	}
	var out []jinja.Value
	for _, it := range args[0].AsList().Items {
		attr := it
		for _, part := range strings.Split(display(args[1]), ".") {
			next := jinja.Undefined()
			if attr.IsDict() {
				if v, ok := attr.AsDict().Get(part); ok {
					next = v
				}
			}
			attr = next
		}
		ok, err := valueTest(test, attr, testArgs)
		if err != nil {
			return jinja.Undefined(), err
		}
		if ok == keep {
			out = append(out, it)
		}
	}
	return jinja.NewList(out), nil
}

// valueTest evaluates the Jinja2 tests selectattr is used with.
func valueTest(name string, v jinja.Value, args []jinja.Value) (bool, error) {
	arg := func() (jinja.Value, error) {
		if len(args) == 0 {
			return jinja.Undefined(), fmt.Errorf("test %q needs an argument", name)
		}
		return args[0], nil
	}
	switch name {
	case "truthy":
		return v.IsTruthy(), nil
	case "defined":
		return !v.IsUndefined(), nil
	case "undefined":
		return v.IsUndefined(), nil
	case "none":
		return v.IsNone(), nil
	case "true":
		return v.IsBool() && v.AsBool(), nil
	case "false":
		return v.IsBool() && !v.AsBool(), nil
	case "string":
		return v.IsString(), nil
	case "number":
		return v.IsNumber() && !v.IsBool(), nil
	case "mapping":
		return v.IsDict(), nil
	case "sequence", "iterable":
		return v.IsList() || v.IsString() || v.IsDict(), nil
	case "eq", "equalto", "==", "sameas":
		a, err := arg()
		return err == nil && v.Equals(a), err
	case "ne", "!=":
		a, err := arg()
		return err == nil && !v.Equals(a), err
	case "in":
		a, err := arg()
		if err != nil {
			return false, err
		}
		switch {
		case a.IsList():
			for _, x := range a.AsList().Items {
				if x.Equals(v) {
					return true, nil
				}
			}
		case a.IsDict() && v.IsString():
			return a.AsDict().Has(v.AsString()), nil
		case a.IsString() && v.IsString():
			return strings.Contains(a.AsString(), v.AsString()), nil
		}
		return false, nil
	}
	return false, fmt.Errorf("selectattr/rejectattr: test %q is not supported", name)
}

// strftime formats t as Python's (glibc's) strftime does for the
// directives chat templates use; "%-d" style flags drop the padding.
func strftime(t time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 >= len(format) {
			b.WriteByte(c)
			continue
		}
		i++
		noPad := false
		if format[i] == '-' && i+1 < len(format) {
			noPad = true
			i++
		}
		num := func(v, width int) {
			if noPad {
				b.WriteString(strconv.Itoa(v))
			} else {
				fmt.Fprintf(&b, "%0*d", width, v)
			}
		}
		switch format[i] {
		case 'Y':
			b.WriteString(strconv.Itoa(t.Year()))
		case 'y':
			num(t.Year()%100, 2)
		case 'm':
			num(int(t.Month()), 2)
		case 'd':
			num(t.Day(), 2)
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'H':
			num(t.Hour(), 2)
		case 'I':
			num((t.Hour()+11)%12+1, 2)
		case 'M':
			num(t.Minute(), 2)
		case 'S':
			num(t.Second(), 2)
		case 'j':
			num(t.YearDay(), 3)
		case 'p':
			b.WriteString(map[bool]string{true: "PM", false: "AM"}[t.Hour() >= 12])
		case 'B':
			b.WriteString(t.Month().String())
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'Z':
			name, _ := t.Zone()
			b.WriteString(name)
		case 'z':
			b.WriteString(t.Format("-0700"))
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			if noPad {
				b.WriteByte('-')
			}
			b.WriteByte(format[i])
		}
	}
	return b.String()
}
