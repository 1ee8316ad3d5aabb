// Package dist is what data-parallel training needs besides the
// collectives on the device: the launch conventions people know from
// torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), a
// launcher that starts one process per device on one host, and a TCP
// rendezvous at MASTER_ADDR:MASTER_PORT whose connections also carry
// small agreements and a host all-reduce (Group). It imports nothing of
// ours: the training loop sees a Group only through its own
// Communicator interface, and NCCL's unique id is opaque bytes here.
package dist

import (
	"fmt"
	"strconv"
	"strings"
)

// Launch is one process's place in a run, as torchrun describes it.
type Launch struct {
	Rank      int // 0..World-1; rank 0 owns the run folder
	World     int // WORLD_SIZE; 1 for a single process
	LocalRank int // the process's index on its host: its GPU
	// LocalWorld is LOCAL_WORLD_SIZE, the processes on this host (for
	// splitting CPU threads among them); World when not given.
	LocalWorld int
	MasterAddr string // where rank 0 listens
	MasterPort int
}

// Single is the launch of a process that trains alone.
func Single() Launch { return Launch{World: 1, LocalWorld: 1} }

// Distributed reports whether the process is one of several.
func (l Launch) Distributed() bool { return l.World > 1 }

// Addr is MASTER_ADDR:MASTER_PORT, for dialling and messages.
func (l Launch) Addr() string { return joinHostPort(l.MasterAddr, l.MasterPort) }

// Env variable names, torchrun's.
const (
	EnvRank       = "RANK"
	EnvWorld      = "WORLD_SIZE"
	EnvLocalRank  = "LOCAL_RANK"
	EnvLocalWorld = "LOCAL_WORLD_SIZE"
	EnvMasterAddr = "MASTER_ADDR"
	EnvMasterPort = "MASTER_PORT"
)

// FromEnv reads the launch from the environment (lookup is os.LookupEnv
// in the command, a map in tests). Neither RANK nor WORLD_SIZE set is a
// single process. Otherwise both are needed, and with WORLD_SIZE > 1 so
// are MASTER_ADDR and MASTER_PORT; LOCAL_RANK defaults to RANK and
// LOCAL_WORLD_SIZE to WORLD_SIZE (one host). Under torchrun's agent store
// (TORCHELASTIC_USE_AGENT_STORE=True) the rendezvous port is
// MASTER_PORT+1. Errors name the variable and its value, since a
// launcher's mistake is otherwise found only when the ranks fail to meet.
func FromEnv(lookup func(string) (string, bool)) (Launch, error) {
	rankS, hasRank := lookup(EnvRank)
	worldS, hasWorld := lookup(EnvWorld)
	if !hasRank && !hasWorld {
		return Single(), nil
	}
	if !hasWorld {
		return Launch{}, fmt.Errorf("dist: %s=%q is set but %s is not; a launcher sets both (or neither, for one process)", EnvRank, rankS, EnvWorld)
	}
	if !hasRank {
		return Launch{}, fmt.Errorf("dist: %s=%q is set but %s is not; a launcher sets both (or neither, for one process)", EnvWorld, worldS, EnvRank)
	}
	var l Launch
	var err error
	if l.World, err = intVar(EnvWorld, worldS, 1); err != nil {
		return Launch{}, err
	}
	if l.Rank, err = intVar(EnvRank, rankS, 0); err != nil {
		return Launch{}, err
	}
	if l.Rank >= l.World {
		return Launch{}, fmt.Errorf("dist: %s=%d is not below %s=%d", EnvRank, l.Rank, EnvWorld, l.World)
	}
	l.LocalRank, l.LocalWorld = l.Rank, l.World
	if s, ok := lookup(EnvLocalRank); ok {
		if l.LocalRank, err = intVar(EnvLocalRank, s, 0); err != nil {
			return Launch{}, err
		}
	}
	if s, ok := lookup(EnvLocalWorld); ok {
		if l.LocalWorld, err = intVar(EnvLocalWorld, s, 1); err != nil {
			return Launch{}, err
		}
		if l.LocalRank >= l.LocalWorld {
			return Launch{}, fmt.Errorf("dist: %s=%d is not below %s=%d", EnvLocalRank, l.LocalRank, EnvLocalWorld, l.LocalWorld)
		}
	}
	if l.World == 1 {
		return l, nil // nobody to meet: the address is not needed
	}
	addr, ok := lookup(EnvMasterAddr)
	if !ok || strings.TrimSpace(addr) == "" {
		return Launch{}, fmt.Errorf("dist: %s=%d needs %s, the host where rank 0 listens", EnvWorld, l.World, EnvMasterAddr)
	}
	if strings.ContainsAny(addr, " \t\n/") {
		return Launch{}, fmt.Errorf("dist: %s=%q: want a host name or an IP address", EnvMasterAddr, addr)
	}
	l.MasterAddr = strings.Trim(addr, "[]") // [::1] as well as ::1
	portS, ok := lookup(EnvMasterPort)
	if !ok {
		return Launch{}, fmt.Errorf("dist: %s=%d needs %s, the port where rank 0 listens", EnvWorld, l.World, EnvMasterPort)
	}
	if l.MasterPort, err = intVar(EnvMasterPort, portS, 1); err != nil {
		return Launch{}, err
	}
	if l.MasterPort > 65535 {
		return Launch{}, fmt.Errorf("dist: %s=%d: want a port 1..65535", EnvMasterPort, l.MasterPort)
	}
	if v, _ := lookup(envAgentStore); v == "True" {
		// torchrun's agent already serves its TCPStore at MASTER_PORT
		// (PyTorch's ranks join it as clients); our rendezvous, which
		// speaks another protocol, takes the next port on every rank.
		if l.MasterPort++; l.MasterPort > 65535 {
			return Launch{}, fmt.Errorf("dist: %s=65535 under torchrun's agent store leaves no port for the rendezvous (it uses MASTER_PORT+1)", EnvMasterPort)
		}
	}
	return l, nil
}

// envAgentStore is set to "True" by torchrun when its agent hosts the
// store at MASTER_ADDR:MASTER_PORT.
const envAgentStore = "TORCHELASTIC_USE_AGENT_STORE"

// intVar reads an integer variable of at least lo.
func intVar(name, s string, lo int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("dist: %s=%q: want an integer", name, s)
	}
	if n < lo {
		return 0, fmt.Errorf("dist: %s=%d: must be ≥ %d", name, n, lo)
	}
	return n, nil
}

// Environ is the environment of a child process at l: base (the
// parent's) with the launch variables replaced, and NCCL_NVLS_ENABLE=0
// always, even over a value the user set: NVLink multicast can take the
// GPUs of the shared hosts out of service (issue 15).
func (l Launch) Environ(base []string) []string {
	set := map[string]string{
		EnvRank: strconv.Itoa(l.Rank), EnvWorld: strconv.Itoa(l.World),
		EnvLocalRank: strconv.Itoa(l.LocalRank), EnvLocalWorld: strconv.Itoa(l.LocalWorld),
		EnvMasterAddr: l.MasterAddr, EnvMasterPort: strconv.Itoa(l.MasterPort),
		"NCCL_NVLS_ENABLE": "0",
	}
	out := make([]string, 0, len(base)+len(set)+1)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ours := set[k]; !ours {
			out = append(out, kv)
		}
	}
	for _, k := range []string{EnvRank, EnvWorld, EnvLocalRank, EnvLocalWorld, EnvMasterAddr, EnvMasterPort, "NCCL_NVLS_ENABLE"} {
		out = append(out, k+"="+set[k])
	}
	return out
}

func joinHostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}
