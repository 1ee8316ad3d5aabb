package dist

// The launcher of `loracc train --nproc-per-node N`: N copies of the
// command on this host, each with its rank in torchrun's variables, so a
// child cannot tell it from a torchrun launch. The children run in their
// own process group: a Ctrl-C at the terminal reaches the launcher only,
// which forwards it once to each child (every rank then stops after the
// same step and rank 0 writes the checkpoint). When one child fails, the
// others get two seconds to end by themselves (they usually fail at once,
// naming it, or print why they stopped the group), then are stopped
// (SIGTERM, then SIGKILL after a grace period), and the launcher returns
// an error naming the rank that ended first and how, so a dead rank never
// leaves the others waiting.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Spawn describes the ranks to start on this host.
type Spawn struct {
	Path string   // the program (os.Executable())
	Args []string // its arguments, without the program name
	Env  []string // the base environment (os.Environ())
	N    int      // processes, ranks 0..N-1
	// MasterAddr and MasterPort are where rank 0 listens: 127.0.0.1 and a
	// free port when empty and 0.
	MasterAddr string
	MasterPort int
	// Stdout and Stderr receive the children's output (shared).
	Stdout, Stderr io.Writer
	// Grace is how long the other ranks get after SIGTERM, once one has
	// failed, before they are killed. Default 30 s.
	Grace time.Duration
}

// Run starts the ranks and waits for all of them. Signals from sig are
// forwarded to every child still running. It returns nil when every rank
// exits with status 0.
func (s Spawn) Run(sig <-chan os.Signal) error {
	if s.N < 1 {
		return fmt.Errorf("dist: --nproc-per-node %d: must be ≥ 1", s.N)
	}
	if s.MasterAddr == "" {
		s.MasterAddr = "127.0.0.1"
	}
	if s.MasterPort == 0 {
		port, err := freePort(s.MasterAddr)
		if err != nil {
			return fmt.Errorf("dist: finding a free port on %s for the rendezvous: %w", s.MasterAddr, err)
		}
		s.MasterPort = port
	}
	if s.Grace <= 0 {
		s.Grace = 30 * time.Second
	}
	stdout, stderr := shared(s.Stdout, s.Stderr)
	type exit struct {
		rank int
		err  error
	}
	done := make(chan exit, s.N)
	cmds := make([]*exec.Cmd, s.N)
	running := make([]bool, s.N)
	signalAll := func(sg os.Signal) {
		for i, c := range cmds {
			if running[i] {
				c.Process.Signal(sg)
			}
		}
	}
	for i := range s.N {
		l := Launch{Rank: i, World: s.N, LocalRank: i, LocalWorld: s.N, MasterAddr: s.MasterAddr, MasterPort: s.MasterPort}
		c := exec.Command(s.Path, s.Args...)
		c.Env = l.Environ(s.Env)
		c.Stdout, c.Stderr = stdout, stderr
		c.SysProcAttr = childAttr()
		if err := c.Start(); err != nil {
			signalAll(syscall.SIGKILL)
			for range i {
				<-done
			}
			return fmt.Errorf("dist: starting rank %d (%s): %w", i, s.Path, err)
		}
		cmds[i], running[i] = c, true
		go func() { done <- exit{i, c.Wait()} }()
	}
	var first *exit
	var term, kill <-chan time.Time
	for left := s.N; left > 0; {
		select {
		case e := <-done:
			left--
			running[e.rank] = false
			if e.err != nil && first == nil {
				// The others usually fail at once too (their collective
				// names the rank that went); give them a moment to say
				// why before stopping them.
				first = &e
				term = time.After(min(settle, s.Grace))
			}
		case <-term:
			signalAll(syscall.SIGTERM)
			kill = time.After(s.Grace)
		case sg := <-sig:
			signalAll(sg)
		case <-kill:
			signalAll(syscall.SIGKILL)
		}
	}
	if first != nil {
		return fmt.Errorf("rank %d of %d %s; the other ranks were stopped", first.rank, s.N, describeExit(first.err))
	}
	return nil
}

// shared makes the children's writers safe to share: a file is handed to
// every child as is; any other writer gets one lock (shared by stdout and
// stderr when they are the same writer), since each child copies its
// output to it from its own goroutine.
func shared(stdout, stderr io.Writer) (io.Writer, io.Writer) {
	wrap := func(w io.Writer, mu *sync.Mutex) io.Writer {
		if _, ok := w.(*os.File); ok || w == nil {
			return w
		}
		return &lockedWriter{w: w, mu: mu}
	}
	mu := &sync.Mutex{}
	if stdout != stderr {
		return wrap(stdout, mu), wrap(stderr, &sync.Mutex{})
	}
	return wrap(stdout, mu), wrap(stderr, mu)
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// settle is how long the other ranks may take to end on their own after
// one failed, before they get SIGTERM.
const settle = 2 * time.Second

// describeExit says how a child ended.
func describeExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("was killed by signal %d (%s)", int(ws.Signal()), ws.Signal())
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	return fmt.Sprintf("failed: %v", err)
}

// freePort asks the kernel for a port that is free now on addr.
func freePort(addr string) (int, error) {
	ln, err := net.Listen("tcp", joinHostPort(addr, 0))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
