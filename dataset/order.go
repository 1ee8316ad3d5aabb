package dataset

import (
	"math/bits"
	"math/rand/v2"
)

// Order is the order of the examples 0..n-1 in an epoch: a permutation
// that depends only on (n, seed, epoch), so a run resumed at epoch k sees
// the order the first run would have. It draws from PCG (whose output is
// specified) with its own Fisher–Yates and bounded draw rather than
// rand.Perm, whose algorithm the standard library does not promise to keep.
func Order(n int, seed uint64, epoch int) []int {
	p := make([]int, max(n, 0))
	for i := range p {
		p[i] = i
	}
	src := rand.NewPCG(seed, splitmix(uint64(epoch)^0x6c6f7261636321)) // "loracc!"
	for i := len(p) - 1; i > 0; i-- {
		j := below(src, uint64(i+1))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// below is a uniform draw in [0, n) by Lemire's multiply-and-reject.
func below(src *rand.PCG, n uint64) uint64 {
	hi, lo := bits.Mul64(src.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(src.Uint64(), n)
		}
	}
	return hi
}

// splitmix spreads the epoch number over all 64 bits, so neighbouring
// epochs start PCG from unrelated states.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Shard is rank's part of window, the examples that world ranks consume
// together in one step: every world-th example from the rank-th, which is
// torch's DistributedSampler split. Windows start at multiples of the
// global batch (a multiple of world), so over an epoch rank r reads
// Order(n, seed, epoch)[r::world]: disjoint from the other ranks' shards,
// together covering the epoch, in the order one process with the same
// seed reads it. Nothing is padded or dropped: an epoch's short last
// window gives some ranks fewer examples (none, when it holds fewer than
// world), which is exact because the loss is normalised by the global
// token count (torch pads by repeating examples, counting them twice).
func Shard(window []int, rank, world int) []int {
	if world <= 1 {
		return window
	}
	out := make([]int, 0, (len(window)+world-1-rank)/world)
	for i := rank; i < len(window); i += world {
		out = append(out, window[i])
	}
	return out
}
