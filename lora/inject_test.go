package lora

import (
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// TestCheckRanks: the whole adapter is bounded by the weights it adapts (a
// small head may take the global rank), 16× with allowLarge, and a huge
// rank is refused with the numbers rather than allocated.
func TestCheckRanks(t *testing.T) {
	ts := []*Target{{Name: "q", In: 64, Out: 64}, {Name: "head", In: 64, Out: 3}}
	for _, tc := range []struct {
		rank  int
		large bool
		want  string // "" passes
	}{
		{8, false, ""}, // 8·128 + 8·67 = 1560 ≤ 4288
		{32, false, "the adapter would have 6240 parameters"},
		{32, true, ""},
		{1 << 40, true, `rank 1099511627776 on "q", [64, 64]); lower the rank`},
	} {
		err := CheckRanks(ts, adapter.NewConfig(tc.rank, 1), tc.large)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("rank %d: %v", tc.rank, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("rank %d: %v, want %q", tc.rank, err, tc.want)
		}
	}
}

// TestInjectRefusesTakenNames: a model that already has "<target>.lora_A"
// is refused naming the value, instead of getting its branch renamed.
func TestInjectRefusesTakenNames(t *testing.T) {
	m, err := testmodels.Seed()
	if err != nil {
		t.Fatal(err)
	}
	taken, err := graph.NewFloatTensor("seed.lora_A", graph.Float, []int64{1}, []float32{0})
	if err != nil {
		t.Fatal(err)
	}
	m.Graph.AddInitializer(taken)
	c := &Options{Config: adapter.NewConfig(1, 1)}
	if err := Inject(m, c); err == nil || !strings.Contains(err.Error(), `already has a value named "seed.lora_A"`) {
		t.Errorf("inject over a taken name: %v", err)
	}
}

// TestUniqueNamesSuffixes: later targets of a name get the smallest free
// suffix in walk order, skipping names other targets already hold.
func TestUniqueNamesSuffixes(t *testing.T) {
	var ts []*Target
	for _, n := range []string{"m.block", "m.block", "m.block_2", "m.block", "m.block", "x"} {
		ts = append(ts, &Target{Name: n})
	}
	uniqueNames(ts)
	var got []string
	for _, tg := range ts {
		got = append(got, tg.Name)
	}
	if want := "m.block m.block_1 m.block_2 m.block_3 m.block_4 x"; strings.Join(got, " ") != want {
		t.Errorf("names %q, want %q", strings.Join(got, " "), want)
	}
}
