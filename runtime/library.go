package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ORTVersion is the ONNX Runtime release loracc is tested against and that
// scripts/fetch-ort.sh installs.
const ORTVersion = "1.29.0"

// ErrNoLibrary is returned (wrapped) by FindLibrary when no ONNX Runtime
// library was given or installed; tests use it to skip.
var ErrNoLibrary = errors.New("onnxruntime library not found")

// FindLibrary returns the ONNX Runtime shared library to load, checking in
// order: flagPath (from --ort-lib), $LORACC_ORT_LIB, and the file
// scripts/fetch-ort.sh installs, libonnxruntime.so.1 in $LORACC_ORT_DIR or
// else ~/.cache/loracc/onnxruntime-1.29.0. An explicit path that does not
// exist is an error rather than a reason to look further, so a typo is not
// hidden by a stale default.
func FindLibrary(flagPath string) (string, error) {
	if flagPath != "" {
		return checkLibrary(flagPath, "--ort-lib")
	}
	if p := os.Getenv("LORACC_ORT_LIB"); p != "" {
		return checkLibrary(p, "LORACC_ORT_LIB")
	}
	dir := os.Getenv("LORACC_ORT_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("runtime: %w: no --ort-lib or LORACC_ORT_LIB and no home directory (%v); run scripts/fetch-ort.sh or pass --ort-lib", ErrNoLibrary, err)
		}
		dir = filepath.Join(home, ".cache", "loracc", "onnxruntime-"+ORTVersion)
	}
	p := filepath.Join(dir, "libonnxruntime.so.1")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("runtime: %w at %s; run scripts/fetch-ort.sh, set LORACC_ORT_LIB or pass --ort-lib", ErrNoLibrary, p)
	}
	return p, nil
}

func checkLibrary(p, from string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("runtime: %s %q: %w: %w", from, p, ErrNoLibrary, err)
	}
	if st.IsDir() {
		return "", fmt.Errorf("runtime: %s %q: %w: is a directory", from, p, ErrNoLibrary)
	}
	return p, nil
}
