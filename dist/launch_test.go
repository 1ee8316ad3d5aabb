package dist

import (
	"bytes"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain makes the test binary a launched rank when LORACC_DIST_CHILD
// names what it should do, so the launcher is tested on real processes.
func TestMain(m *testing.M) {
	if mode := os.Getenv("LORACC_DIST_CHILD"); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// child is a launched rank: it reads its launch from the environment and
// does what mode says.
func child(mode string) int {
	l, err := FromEnv(os.LookupEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	switch mode {
	case "env": // say what it was given
		fmt.Printf("rank=%d world=%d local=%d addr=%s nvls=%s\n", l.Rank, l.World, l.LocalRank, l.Addr(), os.Getenv("NCCL_NVLS_ENABLE"))
		return 0
	case "rank1-fails": // rank 1 exits with status 3; the others would wait forever
		if l.Rank == 1 {
			return 3
		}
		time.Sleep(time.Minute)
		return 0
	case "allreduce": // meet and all-reduce: the rendezvous of real processes
		g, err := Join(l, Options{JoinTimeout: 20 * time.Second, Timeout: 20 * time.Second, Job: "t"})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer g.Close()
		buf := []int64{int64(l.Rank + 1)}
		if err := g.AllReduceInt64(buf); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("rank %d sum %d\n", l.Rank, buf[0])
		return 0
	case "interrupt": // stop cleanly on SIGINT, saying so
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, os.Interrupt)
		fmt.Printf("rank %d ready\n", l.Rank)
		select {
		case <-ch:
			fmt.Printf("rank %d interrupted\n", l.Rank)
			return 0
		case <-time.After(time.Minute):
			return 4
		}
	}
	return 5
}

// syncBuffer is a bytes.Buffer several children write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func spawn(t *testing.T, mode string, n int) (Spawn, *syncBuffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	return Spawn{Path: exe, Env: append(os.Environ(), "LORACC_DIST_CHILD="+mode), N: n, Stdout: out, Stderr: out, Grace: 2 * time.Second}, out
}

// TestSpawnEnv: each child gets its rank, the world, one rendezvous
// address on the loopback and NCCL_NVLS_ENABLE=0; ranks that meet there
// all-reduce.
func TestSpawnEnv(t *testing.T) {
	s, out := spawn(t, "env", 3)
	if err := s.Run(nil); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for r := range 3 {
		if !strings.Contains(out.String(), fmt.Sprintf("rank=%d world=3 local=%d addr=127.0.0.1:", r, r)) {
			t.Errorf("rank %d's launch is not in the output:\n%s", r, out)
		}
	}
	if strings.Count(out.String(), "nvls=0") != 3 {
		t.Errorf("NCCL_NVLS_ENABLE is not 0 in every child:\n%s", out)
	}
	s, out = spawn(t, "allreduce", 3)
	if err := s.Run(nil); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for r := range 3 {
		if !strings.Contains(out.String(), fmt.Sprintf("rank %d sum 6", r)) {
			t.Errorf("rank %d did not all-reduce:\n%s", r, out)
		}
	}
}

// TestSpawnChildDies: when one rank exits with an error the others are
// stopped and the launcher says which rank ended and how, at once.
func TestSpawnChildDies(t *testing.T) {
	s, out := spawn(t, "rank1-fails", 3)
	start := time.Now()
	err := s.Run(nil)
	if err == nil || !strings.Contains(err.Error(), "rank 1 of 3 exited with status 3; the other ranks were stopped") {
		t.Fatalf("error %v\n%s", err, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v: the other ranks were not stopped", d)
	}
}

// TestSpawnForwardsSignals: a signal to the launcher reaches every rank
// once, and ranks that stop cleanly make a clean exit.
func TestSpawnForwardsSignals(t *testing.T) {
	s, out := spawn(t, "interrupt", 2)
	sig := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- s.Run(sig) }()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(out.String(), "ready") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the ranks did not start:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sig <- syscall.SIGINT
	if err := <-done; err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for r := range 2 {
		if !strings.Contains(out.String(), fmt.Sprintf("rank %d interrupted", r)) {
			t.Errorf("rank %d did not get the signal:\n%s", r, out)
		}
	}
}
