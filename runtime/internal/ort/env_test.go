package ort

import (
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
