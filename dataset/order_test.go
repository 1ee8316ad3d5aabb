package dataset

import (
	"slices"
	"testing"
)

// TestShard: cutting an epoch's order into global batches of G (a
// multiple of the world size, as the loop makes them) and each batch into
// world shards gives every rank Order[r::world] over the epoch — disjoint
// shards covering the epoch, each step's shards together the batch one
// process would read — with the short last batch split, never padded.
func TestShard(t *testing.T) {
	for _, c := range []struct{ n, world, perRank int }{{10, 2, 2}, {11, 2, 2}, {17, 3, 2}, {5, 4, 1}, {3, 4, 1}, {8, 1, 3}} {
		order := Order(c.n, 9, 2)
		g := c.world * c.perRank
		shards := make([][]int, c.world)
		for lo := 0; lo < c.n; lo += g {
			window := order[lo:min(lo+g, c.n)]
			var union []int
			for r := range c.world {
				part := Shard(window, r, c.world)
				if len(part) > c.perRank {
					t.Fatalf("n=%d world=%d: rank %d got %d examples of a step, more than %d", c.n, c.world, r, len(part), c.perRank)
				}
				shards[r] = append(shards[r], part...)
				union = append(union, part...)
			}
			if !slices.Equal(slices.Sorted(slices.Values(union)), slices.Sorted(slices.Values(window))) {
				t.Fatalf("n=%d world=%d: a step's shards %v do not make its batch %v", c.n, c.world, union, window)
			}
		}
		seen := map[int]int{}
		for r, s := range shards {
			var want []int
			for i := r; i < c.n; i += c.world {
				want = append(want, order[i])
			}
			if !slices.Equal(s, want) {
				t.Errorf("n=%d world=%d: rank %d reads %v, want order[%d::%d] = %v", c.n, c.world, r, s, r, c.world, want)
			}
			for _, i := range s {
				seen[i]++
			}
		}
		for i := range c.n {
			if seen[i] != 1 {
				t.Errorf("n=%d world=%d: example %d is read %d times in the epoch, want once", c.n, c.world, i, seen[i])
			}
		}
	}
}
