package train

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// TestLoopStatic: with static shapes every step runs on the graph of its
// bucket — rows always BatchSize, the sequence padded to the bucket of
// the batch's longest example — each bucket compiled and opened once; an
// epoch's short last batch is dropped; an example over the longest bucket
// stops the run naming the step.
func TestLoopStatic(t *testing.T) {
	cfg := fakeConfig(t, 10, 4, 6) // 10 examples, batches of 4: 2 steps per epoch, 2 dropped
	var compiled []int
	shapes := map[int][][]int64{}
	trains := map[int]*fakeTrain{}
	cfg.Static = &Static{
		Bucket: func(n int) (int, error) {
			if n > 8 {
				return 0, fmt.Errorf("%d tokens is over the longest bucket, 8", n)
			}
			return (n + 1) / 2 * 2, nil // buckets of 2
		},
		Graph: func(seqLen int) (string, trainio.Graph, error) {
			compiled = append(compiled, seqLen)
			return fmt.Sprint(seqLen), cfg.IO.Train, nil
		},
	}
	r, err := newRunner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.metrics.Close()
	r.open = func(g *stepGraph, path string) error {
		var seqLen int
		fmt.Sscan(path, &seqLen)
		ft := &fakeTrain{k: 1}
		trains[seqLen] = ft
		g.sess = recordShapes{ft, func(s []int64) { shapes[seqLen] = append(shapes[seqLen], s) }}
		return nil
	}
	res, err := r.loop(t.Context())
	if err != nil || res.Steps != 6 {
		t.Fatalf("steps %v, err %v", res, err)
	}
	if len(compiled) != len(trains) || !slices.IsSorted(slices.Sorted(slices.Values(compiled))) {
		t.Errorf("compiled %v for %d opened buckets", compiled, len(trains))
	}
	seenIdx := map[int64]int{}
	for l, ss := range shapes {
		for _, s := range ss {
			if s[0] != 4 || s[1] != int64(l) || l%2 != 0 {
				t.Errorf("bucket %d ran a batch of shape %v", l, s)
			}
		}
		for _, st := range trains[l].steps {
			longest := 0
			for _, i := range st.idx {
				seenIdx[i]++
				longest = max(longest, fakeTokens(int(i))+1)
			}
			if want := (longest + 1) / 2 * 2; want != l {
				t.Errorf("examples %v (longest %d) ran in bucket %d, want %d", st.idx, longest, l, want)
			}
		}
	}
	// 3 epochs of 2 steps: 8 of the 10 examples each epoch.
	total := 0
	for _, n := range seenIdx {
		total += n
	}
	if total != 24 {
		t.Errorf("%d examples trained over 6 steps of 4, want 24", total)
	}
	// An example over the longest bucket stops the run.
	cfg2 := fakeConfig(t, 10, 4, 2)
	cfg2.Static = &Static{Bucket: func(n int) (int, error) { return 0, fmt.Errorf("%d tokens is over the longest bucket, 2", n) }, Graph: cfg.Static.Graph}
	r2, err := newRunner(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.metrics.Close()
	r2.open = r.open
	if _, err := r2.loop(t.Context()); err == nil || !containsAll(err.Error(), "step 1", "over the longest bucket") {
		t.Errorf("over-long example: %v", err)
	}
	// Too few examples for one static batch.
	cfg3 := fakeConfig(t, 3, 4, 2)
	cfg3.Static = cfg.Static
	if _, err := newRunner(cfg3); err == nil {
		t.Error("3 examples for a static batch of 4 were accepted")
	}
}

// recordShapes wraps a fake graph, reporting each run's input_ids shape.
type recordShapes struct {
	*fakeTrain
	shape func([]int64)
}

func (r recordShapes) Run(feeds map[string]runtime.Tensor, outputs []string) (map[string]runtime.Tensor, error) {
	r.shape(feeds["input_ids"].Shape)
	return r.fakeTrain.Run(feeds, outputs)
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
