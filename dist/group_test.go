package dist

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// launches is a world of n ranks meeting on a free loopback port.
func launches(t *testing.T, n int) []Launch {
	t.Helper()
	port, err := freePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Launch, n)
	for r := range out {
		out[r] = Launch{Rank: r, World: n, LocalRank: r, LocalWorld: n, MasterAddr: "127.0.0.1", MasterPort: port}
	}
	return out
}

// quick are options with short deadlines, so failures show in a test's time.
func quick() Options {
	return Options{JoinTimeout: 3 * time.Second, Timeout: 2 * time.Second, Job: "test"}
}

// each runs f for every rank of ls in its own goroutine, each joined with
// opts(rank), and returns what each returned.
func each(t *testing.T, ls []Launch, opts func(r int) Options, f func(g *Group) error) []error {
	t.Helper()
	errs := make([]error, len(ls))
	var wg sync.WaitGroup
	for r, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := Join(l, opts(r))
			if err != nil {
				errs[r] = err
				return
			}
			defer g.Close()
			errs[r] = f(g)
		}()
	}
	wg.Wait()
	return errs
}

// errSkip marks a rank whose error wantAll does not check (the one a
// test makes fail).
var errSkip = errors.New("not checked")

func same(Options) func(int) Options { return func(int) Options { return quick() } }

// TestCollectives: three ranks sum float32 and int64 buffers (bit-equal
// results everywhere, summed in rank order), broadcast rank 0's bytes,
// agree, and meet at a barrier; a group of one does all of it alone.
func TestCollectives(t *testing.T) {
	ls := launches(t, 3)
	results := make([][]float32, 3)
	errs := each(t, ls, same(quick()), func(g *Group) error {
		r := g.Rank()
		f := []float32{float32(r) + 0.1, 1e-8 * float32(r+1), 1e8}
		if err := g.AllReduceFloat32(f); err != nil {
			return err
		}
		results[r] = f
		n := []int64{int64(r), 1 << 40}
		if err := g.AllReduceInt64(n); err != nil {
			return err
		}
		if n[0] != 3 || n[1] != 3<<40 {
			return fmt.Errorf("int64 sums %v", n)
		}
		b := []byte{byte(r), byte(r), byte(r)}
		if err := g.Broadcast(b); err != nil {
			return err
		}
		if string(b) != "\x00\x00\x00" {
			return fmt.Errorf("broadcast gave %v", b)
		}
		if err := g.Agree("settings", []byte("same")); err != nil {
			return err
		}
		return g.Barrier()
	})
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	want := []float32{(0.1 + 1.1) + 2.1, (1e-8 + 2e-8) + 3e-8, 3e8}
	for r := range 3 {
		for i := range want {
			if results[r][i] != want[i] {
				t.Errorf("rank %d: sum %d is %v, want %v (float32 adds in rank order)", r, i, results[r][i], want[i])
			}
		}
	}
	g, err := Join(Single(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := []float32{2}
	if err := g.AllReduceFloat32(f); err != nil || f[0] != 2 || g.Size() != 1 || g.Barrier() != nil {
		t.Errorf("a group of one: %v, %v", f, err)
	}
}

// wantAll checks that every rank failed with a message holding want.
func wantAll(t *testing.T, errs []error, want ...string) {
	t.Helper()
	for r, err := range errs {
		if err == errSkip {
			continue
		}
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("rank %d: error %v, want one saying %q", r, err, w)
			}
		}
	}
}

// TestAgreeDiffers: a rank whose value differs makes every rank fail,
// naming it.
func TestAgreeDiffers(t *testing.T) {
	errs := each(t, launches(t, 3), same(quick()), func(g *Group) error {
		v := "a"
		if g.Rank() == 2 {
			v = "b"
		}
		return g.Agree("adapter checksum", []byte(v))
	})
	wantAll(t, errs, "rank 2's adapter checksum differs from rank 0's")
}

// TestRankDies: a rank whose process ends (its connections close without
// a word) makes the others' next collective fail at once, naming it.
func TestRankDies(t *testing.T) {
	start := time.Now()
	errs := each(t, launches(t, 3), same(quick()), func(g *Group) error {
		if g.Rank() == 1 {
			g.Close()
			return errSkip
		}
		return g.AllReduceFloat32([]float32{1})
	})
	wantAll(t, errs, "rank 1", "the connection closed")
	if d := time.Since(start); d > time.Second {
		t.Errorf("the others took %v to notice; want no wait for the deadline", d)
	}
}

// TestRankAborts: a rank that fails on its own (a NaN, an ORT error)
// aborts the group with its reason; the others' collective fails with it.
func TestRankAborts(t *testing.T) {
	errs := each(t, launches(t, 3), same(quick()), func(g *Group) error {
		if g.Rank() == 2 {
			g.Abort("step 7: loss is not finite")
			return errSkip
		}
		return g.AllReduceInt64([]int64{1})
	})
	wantAll(t, errs, "rank 2 stopped: step 7: loss is not finite")
}

// TestCollectiveTimeout: a rank that never arrives (hung, stopped) makes
// the others fail at the deadline, naming it.
func TestCollectiveTimeout(t *testing.T) {
	o := quick()
	o.Timeout = 300 * time.Millisecond
	hang := make(chan struct{})
	errs := each(t, launches(t, 3), func(int) Options { return o }, func(g *Group) error {
		if g.Rank() == 1 {
			<-hang
			return errSkip
		}
		err := g.AllReduceFloat32([]float32{1})
		if g.Rank() == 0 {
			close(hang)
		}
		return err
	})
	wantAll(t, errs, "rank 1 failed in all-reduce (float32) #1", "no answer before the deadline")
}

// TestMismatchedCollectives: ranks that call different collectives at
// the same point fail instead of mixing their data.
func TestMismatchedCollectives(t *testing.T) {
	errs := each(t, launches(t, 2), same(quick()), func(g *Group) error {
		if g.Rank() == 1 {
			return g.AllReduceInt64([]int64{1})
		}
		return g.AllReduceFloat32([]float32{1})
	})
	wantAll(t, errs, "the ranks do not run the same steps")
}

// TestJoinFailures: the rendezvous fails with a clear message, on every
// rank present, for each way a launch goes wrong.
func TestJoinFailures(t *testing.T) {
	t.Run("no rank 0", func(t *testing.T) {
		o := quick()
		o.JoinTimeout = 300 * time.Millisecond
		_, err := Join(launches(t, 2)[1], o)
		if err == nil || !strings.Contains(err.Error(), "rank 1: could not reach rank 0 at 127.0.0.1:") || !strings.Contains(err.Error(), "MASTER_ADDR and MASTER_PORT") {
			t.Errorf("error %v", err)
		}
	})
	t.Run("missing rank", func(t *testing.T) {
		o := quick()
		o.JoinTimeout = 500 * time.Millisecond
		ls := launches(t, 3)
		errs := each(t, ls[:2], func(int) Options { return o }, func(*Group) error { return nil })
		if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 2 of 3 did not join") {
			t.Errorf("rank 0: %v", errs[0])
		}
		if errs[1] == nil || !strings.Contains(errs[1].Error(), "rank 2 of 3 did not join") {
			t.Errorf("rank 1: %v, want rank 0's reason", errs[1])
		}
	})
	t.Run("world sizes differ", func(t *testing.T) {
		ls := launches(t, 2)
		ls[1].World = 3
		errs := each(t, ls, same(quick()), func(*Group) error { return nil })
		wantAll(t, errs, "WORLD_SIZE")
	})
	t.Run("two rank 1s", func(t *testing.T) {
		ls := launches(t, 3)
		ls[2].Rank = 1
		errs := each(t, ls, same(quick()), func(*Group) error { return nil })
		if errs[0] == nil || !strings.Contains(errs[0].Error(), "two processes say they are rank 1") {
			t.Errorf("rank 0: %v", errs[0])
		}
	})
	t.Run("other job", func(t *testing.T) {
		errs := each(t, launches(t, 2), func(r int) Options {
			o := quick()
			o.Job = fmt.Sprint("job", r)
			return o
		}, func(*Group) error { return nil })
		wantAll(t, errs, "other arguments")
	})
}
