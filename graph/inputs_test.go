package graph

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReadRegular: a regular file within the limit is read whole; one over
// it, a FIFO, a device link and a folder are refused with a message naming
// the file, and the FIFO does not block the open.
func TestReadRegular(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok.json")
	if err := os.WriteFile(ok, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadRegular(ok, 2, "a test file"); err != nil || string(b) != "{}" {
		t.Errorf("within the limit: %q, %v", b, err)
	}
	fifo, zero, folder := filepath.Join(dir, "f"), filepath.Join(dir, "z"), filepath.Join(dir, "d")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		ok:     "ok.json: 2 bytes is more than 1, the limit for a test file",
		fifo:   "f: is a FIFO",
		zero:   "z: is a device",
		folder: "d: is a folder",
	} {
		done := make(chan error, 1)
		go func() { _, err := ReadRegular(path, 1, "a test file"); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want %q", filepath.Base(path), err, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: blocked", filepath.Base(path))
		}
	}
}
