package train

import (
	"encoding/json"
	"math"
	"os"
	"testing"
)

// scheduleRef is testdata/ref/schedules.json, written by
// testdata/torch/make_schedule_ref.py with transformers.
type scheduleRef struct {
	Transformers string `json:"transformers"`
	Cases        []struct {
		Kind   string    `json:"kind"`
		LR     float64   `json:"lr"`
		Warmup int       `json:"warmup"`
		Total  int       `json:"total"`
		LRs    []float64 `json:"lrs"`
	} `json:"cases"`
}

// TestScheduleMatchesHF: every step's lr is Hugging Face's, for each
// kind, with and without warmup, warmup as long as (or longer than) the
// run, and runs of one step.
func TestScheduleMatchesHF(t *testing.T) {
	const path = "../../testdata/ref/schedules.json"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v: the fixture is made on a machine with torch and transformers by "+
			"python3 testdata/torch/make_schedule_ref.py testdata/ref/schedules.json", err)
	}
	var ref scheduleRef
	if err := json.Unmarshal(data, &ref); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	kinds := map[string]int{}
	for _, c := range ref.Cases {
		s := Schedule{Kind: c.Kind, LR: c.LR, Warmup: c.Warmup, Total: c.Total}
		if err := s.Validate(); err != nil {
			t.Errorf("%+v: %v", s, err)
			continue
		}
		if len(c.LRs) != c.Total || c.Total == 0 {
			t.Errorf("%+v: the fixture has %d lrs", s, len(c.LRs))
		}
		kinds[c.Kind]++
		for i, want := range c.LRs {
			// HF multiplies lr by its factor; At divides last. Allow an ulp or two.
			if got := s.At(i + 1); math.Abs(got-want) > 1e-15*c.LR {
				t.Errorf("%s lr %g warmup %d total %d: step %d: %.17g, transformers %s says %.17g", c.Kind, c.LR, c.Warmup, c.Total, i+1, got, ref.Transformers, want)
			}
		}
	}
	for _, k := range []string{"constant", "linear", "cosine"} {
		if kinds[k] == 0 {
			t.Errorf("%s has no %s cases", path, k)
		}
	}
}
