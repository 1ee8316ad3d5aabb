package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsFirst moves a subcommand's flags ahead of its positional arguments,
// because urfave/cli stops reading flags at the first positional one and
// users type `loracc inject model.onnx --rank 8`. Flags that take a value
// keep it (`--rank 8` or `--rank=8`); "--" ends flag reordering.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	// Global flags may precede the command.
	i := 1
	valued := valueFlags(app.Flags)
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "--" {
		if valued[flagName(args[i])] && !strings.Contains(args[i], "=") {
			i++
		}
		i++
	}
	if i >= len(args) {
		return args
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return args
	}
	global := flagNames(app.Flags)
	local := flagNames(cmd.Flags)
	for k, v := range valueFlags(cmd.Flags) {
		valued[k] = v
	}
	// Global flags given after the command move before it.
	out := append([]string(nil), args[:i]...)
	var flags, pos []string
	rest := args[i+1:]
	for j := 0; j < len(rest); j++ {
		a := rest[j]
		if a == "--" {
			pos = append(pos, rest[j:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			name := flagName(a)
			dst := &flags
			if global[name] && !local[name] {
				dst = &out
			}
			*dst = append(*dst, a)
			if valued[name] && !strings.Contains(a, "=") && j+1 < len(rest) {
				j++
				*dst = append(*dst, rest[j])
			}
			continue
		}
		pos = append(pos, a)
	}
	out = append(out, args[i])
	return append(append(out, flags...), pos...)
}

// flagNames is the set of every name and alias of fs.
func flagNames(fs []cli.Flag) map[string]bool {
	m := map[string]bool{}
	for _, f := range fs {
		for _, n := range f.Names() {
			m[n] = true
		}
	}
	return m
}

func flagName(a string) string {
	a = strings.TrimLeft(a, "-")
	name, _, _ := strings.Cut(a, "=")
	return name
}

// valueFlags maps every name and alias of the flags that take a value.
func valueFlags(fs []cli.Flag) map[string]bool {
	m := map[string]bool{}
	for _, f := range fs {
		if _, isBool := f.(*cli.BoolFlag); isBool {
			continue
		}
		for _, n := range f.Names() {
			m[n] = true
		}
	}
	return m
}
