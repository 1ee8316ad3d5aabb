package main

import (
	"errors"
	"testing"
)

// TestParseBytes: --gpu-mem-limit takes bytes or a number with a binary
// or decimal unit, and refuses anything else.
func TestParseBytes(t *testing.T) {
	for s, want := range map[string]int64{"40GiB": 40 << 30, "1.5 GiB": 3 << 29, "38000MiB": 38000 << 20, "80GB": 80e9, "4096": 4096, "512B": 512} {
		if got, err := parseBytes(s); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "GiB", "-1GiB", "0", "lots", "NaN", "1e30GiB"} {
		if _, err := parseBytes(s); err == nil {
			t.Errorf("parseBytes(%q) accepted", s)
		}
	}
	if !outOfMemory(errors.New("running: BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer")) || outOfMemory(errors.New("shape mismatch")) {
		t.Error("outOfMemory misreads ORT's messages")
	}
}
