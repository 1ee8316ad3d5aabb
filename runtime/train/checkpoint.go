package train

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// Progress is where a run stands: enough to continue it exactly.
type Progress struct {
	Step     int    `json:"step"`     // steps done
	Epoch    int    `json:"epoch"`    // current epoch (0-based)
	Position int    `json:"position"` // examples of this epoch's order consumed
	Seed     uint64 `json:"seed"`     // the data order is a function of (seed, epoch)
	// Examples and Data identify the data the run trains on (its size and
	// dataset.Set.Fingerprint), so a resume on other data is refused
	// rather than continuing a position in an order that no longer
	// exists. Checkpoints before they were recorded lack them.
	Examples int    `json:"examples,omitempty"`
	Data     string `json:"data,omitempty"`
	// LossScale, Skipped and CleanSteps are fp16 dynamic loss scaling's
	// state (scaler.go): the scale, the steps skipped on overflow so far
	// and the clean steps since the scale last changed.
	LossScale  float64 `json:"loss_scale,omitempty"`
	Skipped    int     `json:"skipped,omitempty"`
	CleanSteps int     `json:"clean_steps,omitempty"`
	// World is the number of ranks of a data-parallel run (absent for
	// one process): a resume needs as many, since Position counts global
	// batches whose shards depend on it.
	World int `json:"world_size,omitempty"`
}

// checkpointsDir holds step-N folders and the "latest" pointer.
func checkpointsDir(run string) string { return filepath.Join(run, "checkpoints") }

// saveCheckpoint writes a checkpoint so that a crash at any moment leaves
// either the previous one or the new one complete: files go into a
// temporary folder, each synced; the folder is renamed to step-N; only
// then does the "latest" pointer (an atomically replaced file) move.
// Older checkpoints beyond the newest two are removed afterwards.
func saveCheckpoint(run string, p Progress, params Params, state map[string]runtime.Tensor, like *adapter.Adapter) error {
	dir := checkpointsDir(run)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	name := fmt.Sprintf("step-%08d", p.Step)
	final := filepath.Join(dir, name)
	tmp, err := os.MkdirTemp(dir, "."+name+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	a, err := ToAdapter(params, like)
	if err != nil {
		return err
	}
	if err := a.Save(tmp); err != nil {
		return err
	}
	var ts []adapter.NamedTensor
	for _, k := range sortedKeys(state) {
		v := state[k]
		ts = append(ts, adapter.NamedTensor{Name: k, DType: v.DType, Shape: v.Shape, Data: v.Data})
	}
	if err := adapter.WriteSafetensors(filepath.Join(tmp, "optimizer.safetensors"), ts, nil); err != nil {
		return err
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(tmp, "progress.json"), append(data, '\n')); err != nil {
		return err
	}
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	syncDir(dir)
	if err := writeFile(filepath.Join(dir, "latest"), []byte(name+"\n")); err != nil {
		return err
	}
	pruneCheckpoints(dir, name)
	return nil
}

func writeFile(path string, data []byte) error {
	return graph.WriteFileAtomic(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// pruneCheckpoints keeps the newest two step folders (the latest and its
// predecessor, in case the latest is being read) and leftovers of
// interrupted saves are removed.
func pruneCheckpoints(dir, latest string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var steps []string
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, ".step-"):
			os.RemoveAll(filepath.Join(dir, n))
		case strings.HasPrefix(n, "step-") && e.IsDir():
			steps = append(steps, n)
		}
	}
	sort.Strings(steps)
	for i := 0; i < len(steps)-2; i++ {
		if steps[i] != latest {
			os.RemoveAll(filepath.Join(dir, steps[i]))
		}
	}
}

// Checkpoint is a loaded checkpoint.
type Checkpoint struct {
	Dir      string
	Progress Progress
	Adapter  *adapter.Adapter
	State    map[string]runtime.Tensor
}

// maxSmallFile bounds the run folder's small text files (the "latest"
// pointer, progress.json): loracc writes well under a kilobyte.
const maxSmallFile = 1 << 20

// LoadLatest reads the checkpoint the "latest" pointer names, or returns
// nil when the run has none.
func LoadLatest(run string) (*Checkpoint, error) {
	dir := checkpointsDir(run)
	ptr, err := graph.ReadRegular(filepath.Join(dir, "latest"), maxSmallFile, "a checkpoint pointer")
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	name := strings.TrimSpace(string(ptr))
	if !strings.HasPrefix(name, "step-") || strings.ContainsAny(name, `/\`) {
		return nil, fmt.Errorf("%s: bad checkpoint pointer %q", filepath.Join(dir, "latest"), name)
	}
	cdir := filepath.Join(dir, name)
	ck := &Checkpoint{Dir: cdir, State: map[string]runtime.Tensor{}}
	data, err := graph.ReadRegular(filepath.Join(cdir, "progress.json"), maxSmallFile, "a checkpoint's progress")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &ck.Progress); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(cdir, "progress.json"), err)
	}
	if ck.Adapter, err = adapter.Load(cdir); err != nil {
		return nil, err
	}
	f, err := adapter.ReadSafetensors(filepath.Join(cdir, "optimizer.safetensors"))
	if err != nil {
		return nil, err
	}
	for _, t := range f.Tensors {
		ck.State[t.Name] = runtime.Tensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	return ck, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
