// Command loracc adds LoRA adapters to ONNX models, trains them with ONNX
// Runtime and fuses them back into the weights. Run without arguments, it
// walks through the seed example end to end.
package main

import (
	"fmt"
	"io"
	"os"
	goruntime "runtime"
	"strings"

	"github.com/urfave/cli/v2"
)

func main() {
	// Every command runs its ONNX Runtime sessions on this goroutine. The
	// CUDA provider keeps cuBLAS/cuDNN handles and recorded CUDA graphs per
	// OS thread, so the goroutine keeps to one (runtime/train's loop locks
	// its own too, for other callers of that package).
	goruntime.LockOSThread()
	if err := run(os.Args, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "loracc: %v\n", err)
		os.Exit(1)
	}
}

// run is main without the process: tests call it with their own writers.
func run(args []string, stdout, stderr io.Writer) error {
	app := newApp(stdout, stderr)
	app.Metadata = map[string]any{"args": args} // train --nproc-per-node starts copies of this command
	return app.Run(flagsFirst(app, args))
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "loracc",
		Usage:     "LoRA for ONNX models: inject, train, fuse, generate",
		Writer:    stdout,
		ErrWriter: stderr,
		// Repeatable flags take their value whole: a regexp like a{1,3}
		// or --check-input x=1,2,3 holds commas of its own.
		DisableSliceFlagSeparator: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "ort-lib", EnvVars: []string{"LORACC_ORT_LIB"},
				Usage: "path of libonnxruntime.so (default: ~/.cache/loracc/onnxruntime-1.29.0/libonnxruntime.so.1, where scripts/fetch-ort.sh puts it)"},
		},
		Commands: []*cli.Command{
			inspectCommand(),
			injectCommand(),
			fuseCommand(),
			exportTrainCommand(),
			trainCommand(),
			dataCommand(),
			doctorCommand(),
			exportAdapterCommand(),
			generateCommand(),
			demoCommand(),
			reverseCommand(),
			chatDemoCommand(),
		},
		// No command: the embedded seed example, so `loracc` alone shows
		// what the tool does.
		Action: func(c *cli.Context) error {
			if c.Args().Len() > 0 {
				return fmt.Errorf("unknown command %q (see loracc --help)", c.Args().First())
			}
			return runDemo(c)
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
	}
	return app
}

// onePositional returns the single MODEL argument or a usage error.
func onePositional(c *cli.Context, what string) (string, error) {
	switch c.Args().Len() {
	case 0:
		return "", fmt.Errorf("%s: missing %s argument (usage: loracc %s)", c.Command.Name, what, c.Command.UsageText)
	case 1:
		return c.Args().First(), nil
	}
	return "", fmt.Errorf("%s: expected one %s, got %q", c.Command.Name, what, strings.Join(c.Args().Slice(), " "))
}

// logger writes progress lines to stderr.
func logger(c *cli.Context) func(string, ...any) {
	w := c.App.ErrWriter
	return func(format string, args ...any) {
		fmt.Fprintf(w, format+"\n", args...)
	}
}
