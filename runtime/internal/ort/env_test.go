package ort

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	ortgo "github.com/yalue/onnxruntime_go"
)

// TestLogLevel: ORT's own log is off (fatal only) unless LORACC_ORT_LOG
// asks for it; an unknown value is an error naming the choices.
func TestLogLevel(t *testing.T) {
	for s, want := range map[string]ortgo.LoggingLevel{"": ortgo.LoggingLevelFatal, "fatal": ortgo.LoggingLevelFatal, "warning": ortgo.LoggingLevelWarning, "verbose": ortgo.LoggingLevelVerbose} {
		if got, err := logLevel(s); err != nil || got != want {
			t.Errorf("logLevel(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	if _, err := logLevel("loud"); err == nil || !strings.Contains(err.Error(), `LORACC_ORT_LOG="loud": want fatal (the default), error, warning, info or verbose`) {
		t.Errorf("logLevel(loud): %v", err)
	}
}

// TestSharedArenaOnce: the shared arena of a device is registered once
// per environment, with the first session's settings; a session asking
// for other settings is refused naming both, and an unknown growth
// strategy is refused before anything is registered.
func TestSharedArenaOnce(t *testing.T) {
	env.Lock()
	saved := env.arenas
	env.arenas = nil
	env.Unlock()
	defer func() {
		env.Lock()
		env.arenas = saved
		env.Unlock()
	}()
	var calls []string
	register := func(extend int, limit int64) error {
		calls = append(calls, fmt.Sprintf("%d/%d", extend, limit))
		return nil
	}
	o := Options{CUDA: true, ArenaExtend: "kSameAsRequested", GPUMemLimit: 1 << 30}
	for range 2 {
		if err := sharedArena(o, register); err != nil {
			t.Fatal(err)
		}
	}
	if err := sharedArena(Options{}, register); err != nil { // the CPU's is another arena
		t.Fatal(err)
	}
	if want := []string{"1/1073741824", "-1/0"}; !slices.Equal(calls, want) {
		t.Errorf("registrations %v, want %v", calls, want)
	}
	other := o
	other.GPUMemLimit = 2 << 30
	if err := sharedArena(other, register); err == nil || !strings.Contains(err.Error(), "gpu_mem_limit=1073741824") || !strings.Contains(err.Error(), "gpu_mem_limit=2147483648") {
		t.Errorf("other settings: %v", err)
	}
	if err := sharedArena(Options{CUDA: true, CUDADeviceID: 1, ArenaExtend: "doubling"}, register); err == nil || !strings.Contains(err.Error(), `"doubling"`) {
		t.Errorf("unknown strategy: %v", err)
	}
	if len(calls) != 2 {
		t.Errorf("%d registrations after the refusals", len(calls))
	}
}
