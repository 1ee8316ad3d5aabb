package train

import (
	goruntime "runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestLoopKeepsOneThread: the loop runs every step on one OS thread, even
// when its goroutine blocks between steps and other goroutines keep the
// scheduler's threads busy. ONNX Runtime's CUDA provider keeps its
// handles and recorded CUDA graphs per thread, so a step on another
// thread would record its graph again and hold more device memory.
func TestLoopKeepsOneThread(t *testing.T) {
	cfg := fakeConfig(t, 5, 2, 24)
	threads := map[int]int{}
	cfg.OnStep = func(int) {
		threads[syscall.Gettid()]++
		var wg sync.WaitGroup
		for range 2 * goruntime.GOMAXPROCS(0) {
			wg.Go(func() {
				for end := time.Now().Add(200 * time.Microsecond); time.Now().Before(end); {
				}
			})
		}
		time.Sleep(time.Millisecond) // the loop's goroutine parks; unlocked, it may wake elsewhere
		wg.Wait()
	}
	fr := runFake(t, cfg, nil)
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	if len(threads) != 1 {
		t.Errorf("24 steps ran on %d OS threads (steps per thread id: %v), want 1", len(threads), threads)
	}
}
