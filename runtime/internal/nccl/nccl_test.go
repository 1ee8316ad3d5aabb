package nccl

import (
	"errors"
	"strings"
	"testing"
)

// TestOpenMissing: without NCCL (this CPU machine, or a wrong path) Open
// says which library it could not load and why, as a MissingError. On a
// machine that has NCCL and CUDA the default load succeeds and reports
// the library's version.
func TestOpenMissing(t *testing.T) {
	_, err := Open("/nonexistent/libnccl.so.2", "")
	var me *MissingError
	if !errors.As(err, &me) || me.Lib != "/nonexistent/libnccl.so.2" || !strings.Contains(err.Error(), "nccl: cannot load /nonexistent/libnccl.so.2: ") || !strings.Contains(me.Why, "No such file") {
		t.Fatalf("error %v", err)
	}
	l, err := Open("", "")
	if err != nil {
		if !errors.As(err, &me) {
			t.Fatalf("the default load fails without a MissingError: %v", err)
		}
		t.Logf("no NCCL here: %v", err)
		return
	}
	v, err := l.Version()
	if err != nil || !strings.HasPrefix(v, "2.") {
		t.Errorf("version %q, %v", v, err)
	}
	t.Logf("NCCL %s", v)
}
