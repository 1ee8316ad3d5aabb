package dist

import (
	"slices"
	"strings"
	"testing"
)

func lookupIn(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// TestFromEnv: torchrun's variables are read, defaults filled in, and
// every mistake is an error naming the variable and its value.
func TestFromEnv(t *testing.T) {
	l, err := FromEnv(lookupIn(nil))
	if err != nil || l.Distributed() || l.World != 1 {
		t.Fatalf("no variables: %+v, %v; want a single process", l, err)
	}
	full := map[string]string{"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29500"}
	l, err = FromEnv(lookupIn(full))
	want := Launch{Rank: 1, World: 4, LocalRank: 1, LocalWorld: 2, MasterAddr: "10.0.0.7", MasterPort: 29500}
	if err != nil || l != want || l.Addr() != "10.0.0.7:29500" {
		t.Fatalf("torchrun's variables: %+v, %v; want %+v", l, err, want)
	}
	l, err = FromEnv(lookupIn(map[string]string{"RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "[::1]", "MASTER_PORT": "1234"}))
	if err != nil || l.LocalRank != 2 || l.LocalWorld != 3 || l.Addr() != "[::1]:1234" {
		t.Fatalf("defaults: %+v (%s), %v", l, l.Addr(), err)
	}
	agent := map[string]string{"TORCHELASTIC_USE_AGENT_STORE": "True"}
	for k, v := range full {
		agent[k] = v
	}
	if l, err = FromEnv(lookupIn(agent)); err != nil || l.MasterPort != 29501 {
		t.Fatalf("under torchrun's agent store the rendezvous takes MASTER_PORT+1: %+v, %v", l, err)
	}
	if l, err = FromEnv(lookupIn(map[string]string{"RANK": "0", "WORLD_SIZE": "1"})); err != nil || l.Distributed() {
		t.Fatalf("WORLD_SIZE=1 needs no address: %+v, %v", l, err)
	}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range full {
			m[a] = b
		}
		if v == "<unset>" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{with("WORLD_SIZE", "<unset>"), `RANK="1" is set but WORLD_SIZE is not`},
		{with("RANK", "<unset>"), `WORLD_SIZE="4" is set but RANK is not`},
		{with("RANK", "one"), `RANK="one": want an integer`},
		{with("RANK", "-1"), `RANK=-1: must be ≥ 0`},
		{with("RANK", "4"), `RANK=4 is not below WORLD_SIZE=4`},
		{with("WORLD_SIZE", "0"), `WORLD_SIZE=0: must be ≥ 1`},
		{with("LOCAL_RANK", "x"), `LOCAL_RANK="x": want an integer`},
		{with("LOCAL_RANK", "2"), `LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2`},
		{with("MASTER_ADDR", "<unset>"), `WORLD_SIZE=4 needs MASTER_ADDR`},
		{with("MASTER_ADDR", "a b"), `MASTER_ADDR="a b": want a host name or an IP address`},
		{with("MASTER_PORT", "<unset>"), `WORLD_SIZE=4 needs MASTER_PORT`},
		{with("MASTER_PORT", "70000"), `MASTER_PORT=70000: want a port 1..65535`},
		{with("MASTER_PORT", "0"), `MASTER_PORT=0: must be ≥ 1`},
		{with("MASTER_PORT", "http"), `MASTER_PORT="http": want an integer`},
	} {
		_, err := FromEnv(lookupIn(c.env))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.env, err, c.want)
		}
	}
}

// TestEnviron: a child's environment has its launch variables (replacing
// the parent's) and NVLink multicast off, whatever the parent said.
func TestEnviron(t *testing.T) {
	l := Launch{Rank: 1, World: 2, LocalRank: 1, LocalWorld: 2, MasterAddr: "127.0.0.1", MasterPort: 4000}
	env := l.Environ([]string{"PATH=/bin", "RANK=9", "NCCL_NVLS_ENABLE=1", "HOME=/h"})
	for _, kv := range []string{"PATH=/bin", "HOME=/h", "RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "LOCAL_WORLD_SIZE=2", "MASTER_ADDR=127.0.0.1", "MASTER_PORT=4000", "NCCL_NVLS_ENABLE=0"} {
		if !slices.Contains(env, kv) {
			t.Errorf("child environment lacks %s: %v", kv, env)
		}
	}
	for _, kv := range []string{"RANK=9", "NCCL_NVLS_ENABLE=1"} {
		if slices.Contains(env, kv) {
			t.Errorf("child environment keeps the parent's %s", kv)
		}
	}
	back, err := FromEnv(func(k string) (string, bool) {
		for _, kv := range env {
			if a, b, _ := strings.Cut(kv, "="); a == k {
				return b, true
			}
		}
		return "", false
	})
	if err != nil || back != l {
		t.Errorf("FromEnv(Environ) = %+v, %v; want %+v", back, err, l)
	}
}
