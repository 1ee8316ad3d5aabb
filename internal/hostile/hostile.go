// Package hostile writes ONNX models that try to choose where loracc
// writes: their external-data locations are dotfiles, nested paths, or the
// names of loracc's own outputs. Every location is one the loader accepts
// (relative, no ".."), so only the writer's policy stands between such a
// model and the files it names. Tests feed these models to the CLI and
// check that the output folder receives only the files loracc names.
package hostile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// Locations are the external-data locations the tests try, each one a
// file that placing the data "beside the output under the model's name"
// would overwrite: shell start-up files, SSH keys, nested folders to be
// created, and names an output of `-o out.onnx` uses itself.
func Locations() []string {
	return []string{
		".bashrc",
		".ssh/authorized_keys",
		"sub/dir/w.bin",
		"out.onnx",
		"out.onnx.data",
		"out.adapter/adapter_config.json",
	}
}

// Model writes dir/name, a two-layer MLP (testmodels.ExternalMLP, hidden
// 8) whose tensors live in the given external files, taken in turn (tensors
// share a file when there are fewer locations than tensors), and writes
// those files too. It returns the model's path.
func Model(dir, name string, locations ...string) (string, error) {
	if len(locations) == 0 {
		return "", fmt.Errorf("hostile: Model needs at least one location")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	m, err := testmodels.ExternalMLP(2, 8)
	if err != nil {
		return "", err
	}
	files := map[string][]byte{}
	for i, v := range m.Graph.Initializers {
		raw, err := v.Const.Bytes()
		if err != nil {
			return "", err
		}
		loc := locations[i%len(locations)]
		off := int64(len(files[loc]))
		files[loc] = append(files[loc], raw...)
		if err := v.Const.SetExternal(graph.External{Location: loc, Offset: off, Length: int64(len(raw)), Dir: abs}); err != nil {
			return "", err
		}
	}
	for loc, data := range files {
		p := filepath.Join(abs, filepath.FromSlash(loc))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return "", err
		}
	}
	path := filepath.Join(dir, name)
	return path, graph.Save(m, path, graph.SaveOptions{})
}
