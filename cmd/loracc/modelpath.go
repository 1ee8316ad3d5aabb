package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/loracc/loracc/graph"
	"github.com/urfave/cli/v2"
)

// modelArg is the command's one positional argument, a model file or a
// model folder (resolveModel).
func modelArg(c *cli.Context, what string) (string, error) {
	p, err := onePositional(c, what)
	if err != nil {
		return "", err
	}
	return resolveModel(p)
}

// resolveModel turns a model folder into its model file: the decoder
// onnxruntime-genai's genai_config.json names (model.decoder.filename),
// else model.onnx. A file path is returned as it is.
func resolveModel(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil || !st.IsDir() {
		return p, nil // a file, or missing: the command's own open says so
	}
	cfgPath := filepath.Join(p, "genai_config.json")
	data, err := graph.ReadRegular(cfgPath, 1<<20, "genai config")
	switch {
	case err == nil:
		var cfg struct {
			Model struct {
				Decoder struct {
					Filename string `json:"filename"`
				} `json:"decoder"`
			} `json:"model"`
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			return "", fmt.Errorf("%s: %w", cfgPath, err)
		}
		name := cfg.Model.Decoder.Filename
		if name == "" || filepath.IsAbs(name) || !filepath.IsLocal(name) {
			return "", fmt.Errorf("%s: model.decoder.filename %q: want a file name inside the folder", cfgPath, name)
		}
		return filepath.Join(p, name), nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	if _, err := os.Stat(filepath.Join(p, "model.onnx")); err == nil {
		return filepath.Join(p, "model.onnx"), nil
	}
	return "", fmt.Errorf("%s is a folder with neither genai_config.json nor model.onnx", p)
}

// inGenaiFolder says whether a model file sits in an onnxruntime-genai
// folder (beside a genai_config.json), whose runtime feeds adapters under
// the builder's names.
func inGenaiFolder(model string) bool {
	st, err := os.Stat(filepath.Join(filepath.Dir(model), "genai_config.json"))
	return err == nil && st.Mode().IsRegular()
}

// adapterNames reads --adapter-names: whether adapter inputs take
// onnxruntime-genai's names (auto: when the model is in a genai folder).
func adapterNames(c *cli.Context, model string) (genai bool, err error) {
	switch n := c.String("adapter-names"); n {
	case "auto":
		return inGenaiFolder(model), nil
	case "peft":
		return false, nil
	case "genai":
		return true, nil
	default:
		return false, fmt.Errorf("--adapter-names %q: want auto, peft or genai", n)
	}
}
