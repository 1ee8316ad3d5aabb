// Package ort is the only place in loracc that touches cgo: it adapts
// github.com/yalue/onnxruntime_go to the byte-tensor API of package runtime.
//
// Everything here is about working with, and around, onnxruntime_go v1.27.0:
// its process-global environment, its typed Go tensors, and the cases it
// cannot express (see values.go).
package ort

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	ortgo "github.com/yalue/onnxruntime_go"
)

// env is the one piece of package-level mutable state in loracc. It exists
// because onnxruntime_go itself keeps the OrtEnv, the CPU memory info and the
// dlopen handle in package variables: there is exactly one ORT environment
// per process whatever we do. Counting references here lets several
// runtime.Env values (say, two tests, or a compiler pass and a checker) share
// it, and turns "loaded from another path" into an error instead of silently
// using the first library.
var env struct {
	sync.Mutex
	refs    int
	path    string // canonical path of the loaded library while refs > 0
	version string
	level   ortgo.LoggingLevel // ORT's log severity (LORACC_ORT_LOG), read once at load
	// arenas are the shared arenas registered with the environment
	// (Options.SharedArena), by device, with the settings they were made
	// with; they live as long as the environment.
	arenas map[string]string
}

// Acquire loads the ONNX Runtime shared library at libPath and initialises
// the environment, or adds a reference if the same library is already loaded.
// It returns the library's version string. Every successful Acquire must be
// matched by one Release.
func Acquire(libPath string) (string, error) {
	canon, err := canonicalPath(libPath)
	if err != nil {
		return "", err
	}
	env.Lock()
	defer env.Unlock()
	if env.refs > 0 {
		if canon != env.path {
			return "", fmt.Errorf("onnxruntime is already loaded from %q in this process; cannot also load %q (close every Env first)", env.path, canon)
		}
		env.refs++
		return env.version, nil
	}
	if ortgo.IsInitialized() {
		// Someone used onnxruntime_go directly; we cannot know which
		// library they loaded, so refuse rather than guess.
		return "", fmt.Errorf("onnxruntime_go was initialised outside loracc's runtime package")
	}
	level, err := logLevel(os.Getenv("LORACC_ORT_LOG"))
	if err != nil {
		return "", err
	}
	ortgo.SetSharedLibraryPath(canon)
	if err := ortgo.InitializeEnvironment(); err != nil {
		return "", fmt.Errorf("initialising onnxruntime from %q: %w", canon, err)
	}
	if err := ortgo.SetEnvironmentLogLevel(level); err != nil {
		ortgo.DestroyEnvironment()
		return "", fmt.Errorf("setting onnxruntime's log level: %w", err)
	}
	env.level = level
	env.refs = 1
	env.path = canon
	env.version = ortgo.GetVersion()
	return env.version, nil
}

// Release drops one reference taken by Acquire; the last one destroys the
// environment and unloads the library, after which Acquire may load a
// different one.
func Release() error {
	env.Lock()
	defer env.Unlock()
	if env.refs == 0 {
		// Only reachable through a bug in package runtime, which guards
		// against double release.
		panic("ort: Release without Acquire")
	}
	env.refs--
	if env.refs > 0 {
		return nil
	}
	env.path, env.version, env.arenas = "", "", nil
	if err := ortgo.DestroyEnvironment(); err != nil {
		return fmt.Errorf("destroying onnxruntime environment: %w", err)
	}
	return nil
}

// sharedArena registers the arena Options.SharedArena sessions of o's
// device allocate from, once per environment: a later session asking for
// other settings is an error (the arena cannot change under the sessions
// already using it).
func sharedArena(o Options, register func(extend int, limit int64) error) error {
	env.Lock()
	defer env.Unlock()
	device := "cpu"
	if o.CUDA {
		device = fmt.Sprintf("cuda:%d", o.CUDADeviceID)
	}
	settings := fmt.Sprintf("arena_extend_strategy=%q gpu_mem_limit=%d", o.ArenaExtend, o.GPUMemLimit)
	if have, ok := env.arenas[device]; ok {
		if have != settings {
			return fmt.Errorf("the shared %s arena was made with %s; this session asks for %s", device, have, settings)
		}
		return nil
	}
	extend := -1
	switch o.ArenaExtend {
	case "":
	case "kNextPowerOfTwo":
		extend = 0
	case "kSameAsRequested":
		extend = 1
	default:
		return fmt.Errorf("arena extend strategy %q: want kNextPowerOfTwo or kSameAsRequested", o.ArenaExtend)
	}
	if err := register(extend, o.GPUMemLimit); err != nil {
		return err
	}
	if env.arenas == nil {
		env.arenas = map[string]string{}
	}
	env.arenas[device] = settings
	return nil
}

// canonicalPath makes "./lib.so" and "/abs/dir/../dir/lib.so" compare equal,
// so that opening the same library twice by different spellings is allowed.
func canonicalPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("onnxruntime library %q: %w", p, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("onnxruntime library %q: %w", p, err)
	}
	return real, nil
}

// envLogLevel is the log severity Acquire gave ORT's environment (fatal,
// the default, before any Acquire).
func envLogLevel() ortgo.LoggingLevel {
	env.Lock()
	defer env.Unlock()
	if env.refs == 0 {
		return ortgo.LoggingLevelFatal
	}
	return env.level
}

// logLevel is ONNX Runtime's log severity from LORACC_ORT_LOG. The
// default is fatal: ORT's errors come back to loracc as statuses, which it
// reports once, with the file and node; ORT's own coloured copy of the
// same error would come first and read as a second failure. Set
// LORACC_ORT_LOG=warning (or verbose, info, error) to see ORT's log.
func logLevel(s string) (ortgo.LoggingLevel, error) {
	switch s {
	case "", "fatal":
		return ortgo.LoggingLevelFatal, nil
	case "error":
		return ortgo.LoggingLevelError, nil
	case "warning":
		return ortgo.LoggingLevelWarning, nil
	case "info":
		return ortgo.LoggingLevelInfo, nil
	case "verbose":
		return ortgo.LoggingLevelVerbose, nil
	}
	return 0, fmt.Errorf("LORACC_ORT_LOG=%q: want fatal (the default), error, warning, info or verbose", s)
}
