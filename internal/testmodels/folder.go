package testmodels

import (
	"os"
	"path/filepath"

	"github.com/loracc/loracc/graph"
)

// WriteGenaiFolder writes GenaiLlama(o) as onnxruntime-genai's model
// builder lays out a folder: model.onnx with every weight in
// model.onnx.data, and genai_config.json.
func WriteGenaiFolder(dir string, o GenaiOptions) error {
	m, err := GenaiLlama(o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := graph.Save(m, filepath.Join(dir, "model.onnx"), graph.SaveOptions{Externalize: true}); err != nil {
		return err
	}
	cfg, err := GenaiConfig(o)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "genai_config.json"), cfg, 0o644)
}
