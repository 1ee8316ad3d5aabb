package main

// Data-parallel `loracc train`: one process per rank, as torchrun starts
// them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or as
// `--nproc-per-node N` starts them on this host. The ranks meet at the
// rendezvous (package dist) before anything is compiled, so a bad launch
// fails in seconds; each compiles the split step (grad.onnx, optim.onnx)
// itself, rank 0 into the run folder and the others into a temporary
// folder removed at exit, since only rank 0 writes the run's files.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/loracc/loracc/dist"
	"github.com/loracc/loracc/runtime/train"
	"github.com/urfave/cli/v2"
)

// distFlags are train's flags for data-parallel runs.
func distFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "nproc-per-node", Usage: "start N ranks of this command on this host, as torchrun --nproc-per-node does (one per GPU with --device cuda); they meet on 127.0.0.1 at MASTER_PORT or a free port"},
		&cli.StringFlag{Name: "comm", Value: "auto", Usage: "how the ranks sum their gradients: tcp (through rank 0 over the rendezvous connections, in host memory), nccl (libnccl.so.2, through device memory), or auto (tcp)"},
		&cli.DurationFlag{Name: "dist-timeout", Value: 10 * time.Minute, Usage: "how long a rank waits for the others, at the rendezvous and at each step, before failing"},
	}
}

// launchRanks runs `train --nproc-per-node N`: N copies of this command
// without the flag, ranks 0..N-1 of one host.
func launchRanks(c *cli.Context) error {
	if v, ok := os.LookupEnv(dist.EnvWorld); ok {
		return fmt.Errorf("--nproc-per-node starts the ranks of this host itself, but %s=%s is already set (by torchrun?); leave one of them out", dist.EnvWorld, v)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--nproc-per-node: finding this program to start its ranks: %w", err)
	}
	args, _ := c.App.Metadata["args"].([]string)
	if len(args) == 0 {
		return fmt.Errorf("--nproc-per-node: the command line is unknown")
	}
	port := 0
	if s, ok := os.LookupEnv(dist.EnvMasterPort); ok {
		if port, err = strconv.Atoi(s); err != nil || port <= 0 || port > 65535 {
			return fmt.Errorf("%s=%q: want a port 1..65535", dist.EnvMasterPort, s)
		}
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	return dist.Spawn{Path: exe, Args: withoutFlag(args[1:], "nproc-per-node"), Env: os.Environ(), N: c.Int("nproc-per-node"),
		MasterPort: port, Stdout: c.App.Writer, Stderr: c.App.ErrWriter}.Run(sig)
}

// withoutFlag is args without --name VALUE, --name=VALUE or their
// one-dash forms.
func withoutFlag(args []string, name string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		bare := strings.TrimLeft(a, "-")
		switch {
		case strings.HasPrefix(a, "-") && bare == name:
			i++ // and its value
		case strings.HasPrefix(a, "-") && strings.HasPrefix(bare, name+"="):
		default:
			out = append(out, a)
		}
	}
	return out
}

// rank is this process's part in a data-parallel run.
type rank struct {
	launch dist.Launch
	group  *dist.Group
	// work holds what this rank compiles and caches: "" on rank 0 (the
	// run folder), a temporary folder elsewhere.
	work    string
	timeout time.Duration // --dist-timeout
	// closers release what the communicator holds (NCCL's), told whether
	// the run failed.
	closers []func(failed bool)
}

// joinRanks meets the other ranks when the environment says this process
// is one of several (nil, nil otherwise), after refusing what the split
// step does not support yet.
func joinRanks(c *cli.Context) (*rank, error) {
	l, err := dist.FromEnv(os.LookupEnv)
	if err != nil || !l.Distributed() {
		return nil, err
	}
	for _, f := range []struct {
		bad  bool
		what string
	}{
		{c.Bool("static"), "--static"}, {c.Int("steps-per-run") > 1, "--steps-per-run > 1"},
		{c.String("cuda-graph") == "on", "--cuda-graph on"}, {c.String("device-state") == "on", "--device-state on"},
	} {
		if f.bad {
			return nil, fmt.Errorf("rank %d of %d: data-parallel training does not combine with %s yet", l.Rank, l.World, f.what)
		}
	}
	switch c.String("comm") {
	case "auto", "tcp", "nccl":
	default:
		return nil, fmt.Errorf("--comm %q: want tcp, nccl or auto", c.String("comm"))
	}
	args, _ := c.App.Metadata["args"].([]string)
	job := sha256.Sum256([]byte(strings.Join(args[min(1, len(args)):], "\x00")))
	o := dist.Options{JoinTimeout: c.Duration("dist-timeout"), Timeout: c.Duration("dist-timeout"), Job: hex.EncodeToString(job[:8])}
	if l.Rank == 0 {
		o.Logf = logger(c)
	}
	g, err := dist.Join(l, o)
	if err != nil {
		return nil, err
	}
	r := &rank{launch: l, group: g, timeout: o.Timeout}
	if l.Rank != 0 {
		if r.work, err = os.MkdirTemp("", fmt.Sprintf("loracc-rank-%d-", l.Rank)); err != nil {
			g.Abort(err.Error())
			return nil, err
		}
	}
	return r, nil
}

// done ends this rank's part: on an error the others are told why (their
// next collective fails with it), and the temporary folder goes.
func (r *rank) done(err error) error {
	if r == nil {
		return err
	}
	for _, c := range r.closers {
		c(err != nil)
	}
	if err != nil {
		err = fmt.Errorf("rank %d of %d: %w", r.launch.Rank, r.launch.World, err)
		r.group.Abort(err.Error())
	}
	r.group.Close()
	if r.work != "" {
		os.RemoveAll(r.work)
	}
	return err
}

// leader reports whether this process writes the run folder: alone, or
// rank 0.
func (r *rank) leader() bool { return r == nil || r.launch.Rank == 0 }

// workDir is where this rank compiles its graphs and caches its data.
func (r *rank) workDir(run string) string {
	if r == nil || r.work == "" {
		return run
	}
	return r.work
}

// configure makes cfg this rank's: its GPU, its share of the CPU's
// threads, its communicator, and quiet progress off rank 0.
func (r *rank) configure(c *cli.Context, cfg *train.Config, device string) error {
	if r == nil {
		return nil
	}
	cfg.Split = true
	if device == "cuda" {
		cfg.Session.CUDADeviceID = r.launch.LocalRank
	} else {
		cfg.Session.IntraOpThreads = max(1, runtime.NumCPU()/max(r.launch.LocalWorld, 1))
	}
	switch c.String("comm") {
	case "nccl":
		comm, err := ncclComm(r, device)
		if err != nil {
			return err
		}
		cfg.Comm = comm
	default: // tcp, auto
		cfg.Comm = r.group
	}
	if r.launch.Rank != 0 {
		cfg.Out, cfg.Terminal = io.Discard, false
	}
	return nil
}
