package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime/internal/ort"
)

// Env is a loaded ONNX Runtime. Build one in main and pass it down.
//
// ORT's environment is process-wide underneath (onnxruntime_go keeps it in
// package variables), so Envs share it by reference count: Open twice with
// the same library is fine and each Env is closed on its own; opening a
// different library while any Env is open is an error. Sessions must be
// closed before their Env.
type Env struct {
	libPath string
	version string

	mu       sync.Mutex
	sessions int
	held     bool // holds a reference on the ORT environment
}

// Open loads the ONNX Runtime shared library at libPath (see FindLibrary)
// and initialises its environment.
func Open(libPath string) (*Env, error) {
	version, err := ort.Acquire(libPath)
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	return &Env{libPath: libPath, version: version, held: true}, nil
}

// Version is the loaded library's version string, e.g. "1.29.0".
func (e *Env) Version() string { return e.version }

// LibraryPath is the path Open was given.
func (e *Env) LibraryPath() string { return e.libPath }

// Close releases this Env's reference on the ORT environment. It refuses
// while sessions made from e are open, because unloading the library under
// them would crash, and is a no-op when already closed.
func (e *Env) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.held {
		return nil
	}
	if e.sessions > 0 {
		return fmt.Errorf("runtime: close env: %d session(s) still open", e.sessions)
	}
	e.held = false
	if err := ort.Release(); err != nil {
		return fmt.Errorf("runtime: close env: %w", err)
	}
	return nil
}

// NewSession loads the model at modelPath. Loading by path (rather than
// bytes) lets ORT resolve external data files next to the model.
func (e *Env) NewSession(modelPath string, opts SessionOptions) (*Session, error) {
	name := fmt.Sprintf("model %q", modelPath)
	f, st, err := graph.OpenRegular(modelPath)
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	defer f.Close()
	mio, err := readModelIO(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: not a valid ONNX model: %w", name, err)
	}
	return e.newSession(name, modelPath, nil, mio, opts)
}

// NewSessionFromBytes loads a serialized model. External data, if any, is
// looked up relative to the working directory, so prefer NewSession for
// models that have it.
func (e *Env) NewSessionFromBytes(model []byte, opts SessionOptions) (*Session, error) {
	name := "in-memory model"
	if len(model) == 0 {
		return nil, fmt.Errorf("runtime: %s: empty", name)
	}
	mio, err := readModelIO(bytes.NewReader(model), int64(len(model)))
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: not a valid ONNX model: %w", name, err)
	}
	return e.newSession(name, "", model, mio, opts)
}

func (e *Env) newSession(name, path string, model []byte, mio modelIO, opts SessionOptions) (*Session, error) {
	o, err := opts.ort()
	if err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", name, err)
	}
	if len(mio.outputs) == 0 {
		return nil, fmt.Errorf("runtime: %s: graph has no outputs", name)
	}
	if err := e.addSession(); err != nil {
		return nil, fmt.Errorf("runtime: %s: %w", name, err)
	}
	s, err := ort.NewSession(path, model, names(mio.inputs), names(mio.outputs), o)
	if err != nil {
		e.removeSession()
		return nil, fmt.Errorf("runtime: %s: creating %s session: %w", name, opts.device(), err)
	}
	return newSession(e, name, s, mio), nil
}

var errEnvClosed = errors.New("env is closed")

func (e *Env) addSession() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.held {
		return errEnvClosed
	}
	e.sessions++
	return nil
}

func (e *Env) removeSession() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sessions--
}

func names(infos []IOInfo) []string {
	out := make([]string, len(infos))
	for i, info := range infos {
		out[i] = info.Name
	}
	return out
}

// readModelFile reads the signature of the model file at path.
func readModelFile(path string) (modelIO, error) {
	f, st, err := graph.OpenRegular(path)
	if err != nil {
		return modelIO{}, err
	}
	defer f.Close()
	return readModelIO(f, st.Size())
}
