package dist

// The rendezvous: rank 0 listens at MASTER_ADDR:MASTER_PORT, every other
// rank dials it (retrying until the join timeout) and says hello with its
// rank, the world size and the job; rank 0 waits for all of them, checks
// that they agree, and welcomes them together. The connections stay open:
// they form a star through rank 0 that carries the collectives of
// collective.go. Each collective has a deadline, and a rank that
// disappears (its socket closes) or stops (it sends an abort) makes every
// other rank fail with a message naming it, never hang.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configure a rendezvous and the group's collectives.
type Options struct {
	// JoinTimeout bounds the rendezvous: how long rank 0 waits for the
	// others and they keep dialling it. Default 5 minutes.
	JoinTimeout time.Duration
	// Timeout bounds each collective: how long a rank waits for the
	// slowest one to arrive. Default 10 minutes, PyTorch's NCCL default.
	Timeout time.Duration
	// Job must be the same on every rank (the command derives it from its
	// arguments), so processes started for another run, or with other
	// settings, are refused at the rendezvous rather than training on.
	Job string
	// Logf receives a line while rank 0 waits (nil: none).
	Logf func(format string, args ...any)
}

func (o Options) withDefaults() Options {
	if o.JoinTimeout <= 0 {
		o.JoinTimeout = 5 * time.Minute
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Group is the ranks of one run, met at the rendezvous. Its collectives
// (collective.go) must be called by every rank in the same order, from
// one goroutine per rank; Close and Abort may be called from any.
type Group struct {
	rank, world int
	timeout     time.Duration
	// peers: on rank 0, peers[r] is the connection to rank r (nil at 0);
	// on another rank, peers[0] is the connection to rank 0.
	peers []net.Conn
	seq   uint32 // collectives so far

	mu  sync.Mutex
	err error // sticky: set by the first failure, returned by every later call
}

// Rank is this process's rank.
func (g *Group) Rank() int { return g.rank }

// Size is the world size.
func (g *Group) Size() int { return g.world }

// frame kinds.
const (
	kindHello   byte = 1 // a rank's join: helloMagic, world, rank, job
	kindWelcome byte = 2 // rank 0: everybody is here
	kindData    byte = 3 // a collective's contribution or result
	kindAbort   byte = 4 // the sender stops the group; the body says why
)

const helloMagic = "loracc-dist/1"

// header is a frame's kind, its collective's op, the collective's number
// and the body's length (big endian).
const headerLen = 1 + 1 + 4 + 4

// Join meets the other ranks of l at l.Addr(). A single process (World 1)
// gets a group of one without touching the network.
func Join(l Launch, o Options) (*Group, error) {
	o = o.withDefaults()
	g := &Group{rank: l.Rank, world: l.World, timeout: o.Timeout}
	if l.World <= 1 {
		g.world = 1
		return g, nil
	}
	if l.Rank == 0 {
		return g, g.accept(l, o)
	}
	return g, g.dial(l, o)
}

// accept is rank 0's side of the rendezvous.
func (g *Group) accept(l Launch, o Options) error {
	ln, err := listen(l)
	if err != nil {
		return fmt.Errorf("dist: rank 0: listening at %s (MASTER_ADDR:MASTER_PORT): %w", l.Addr(), err)
	}
	defer ln.Close()
	deadline := time.Now().Add(o.JoinTimeout)
	g.peers = make([]net.Conn, l.World)
	refuse := func(err error) error {
		g.abortPeers(err.Error())
		return err
	}
	o.Logf("rank 0: waiting at %s for %d more ranks", l.Addr(), l.World-1)
	for joined := 0; joined < l.World-1; {
		ln.(*net.TCPListener).SetDeadline(deadline)
		c, err := ln.Accept()
		if err != nil {
			var missing []string
			for r := 1; r < l.World; r++ {
				if g.peers[r] == nil {
					missing = append(missing, fmt.Sprint(r))
				}
			}
			return refuse(fmt.Errorf("dist: rank 0: rank %s of %d did not join at %s within %s: %w", strings.Join(missing, ", "), l.World, l.Addr(), o.JoinTimeout, err))
		}
		rank, world, job, err := readHello(c, deadline)
		if err != nil {
			// Not one of ours (a port scan, a stale process): drop it.
			o.Logf("rank 0: ignoring a connection from %s: %v", c.RemoteAddr(), err)
			c.Close()
			continue
		}
		g.setDeadline(c, 5*time.Second)
		switch {
		case world != l.World:
			writeFrame(c, kindAbort, 0, 0, []byte(fmt.Sprintf("rank 0 has WORLD_SIZE=%d, this rank %d", l.World, world)))
			c.Close()
			return refuse(fmt.Errorf("dist: rank 0: rank %d (from %s) was started with WORLD_SIZE=%d, rank 0 with %d", rank, c.RemoteAddr(), world, l.World))
		case rank <= 0 || rank >= l.World:
			writeFrame(c, kindAbort, 0, 0, []byte(fmt.Sprintf("rank %d is not in 1..%d", rank, l.World-1)))
			c.Close()
			return refuse(fmt.Errorf("dist: rank 0: a process from %s says it is rank %d, not in 1..%d", c.RemoteAddr(), rank, l.World-1))
		case g.peers[rank] != nil:
			writeFrame(c, kindAbort, 0, 0, []byte(fmt.Sprintf("rank %d has joined already", rank)))
			c.Close()
			return refuse(fmt.Errorf("dist: rank 0: two processes say they are rank %d (from %s and %s); is RANK set per process?", rank, g.peers[rank].RemoteAddr(), c.RemoteAddr()))
		case job != o.Job:
			writeFrame(c, kindAbort, 0, 0, []byte("rank 0 was started with other arguments"))
			c.Close()
			return refuse(fmt.Errorf("dist: rank 0: rank %d (from %s) was started with other arguments or data than rank 0 (job %q, rank 0's %q); start every rank with the same command", rank, c.RemoteAddr(), job, o.Job))
		}
		g.peers[rank] = c
		joined++
	}
	for r := 1; r < l.World; r++ {
		g.setDeadline(g.peers[r], 5*time.Second)
		if err := writeFrame(g.peers[r], kindWelcome, 0, 0, nil); err != nil {
			return refuse(fmt.Errorf("dist: rank 0: welcoming rank %d: %w", r, err))
		}
	}
	return nil
}

// listen binds rank 0's port on MASTER_ADDR, or on every interface when
// MASTER_ADDR names this host by an address it cannot bind (a name other
// hosts resolve differently, a NAT).
func listen(l Launch) (net.Listener, error) {
	ln, err := net.Listen("tcp", l.Addr())
	if err == nil {
		return ln, nil
	}
	if ln, err2 := net.Listen("tcp", joinHostPort("", l.MasterPort)); err2 == nil {
		return ln, nil
	}
	return nil, err
}

// readHello reads a joining rank's hello.
func readHello(c net.Conn, deadline time.Time) (rank, world int, job string, err error) {
	c.SetDeadline(time.Now().Add(min(10*time.Second, time.Until(deadline)+time.Second)))
	kind, _, _, body, err := readFrame(c, 1<<16)
	if err != nil {
		return 0, 0, "", err
	}
	if kind != kindHello || len(body) < len(helloMagic)+8 || string(body[:len(helloMagic)]) != helloMagic {
		return 0, 0, "", errors.New("not a loracc rank's hello")
	}
	b := body[len(helloMagic):]
	return int(binary.BigEndian.Uint32(b)), int(binary.BigEndian.Uint32(b[4:])), string(b[8:]), nil
}

// dial is the side of every rank but 0.
func (g *Group) dial(l Launch, o Options) error {
	deadline := time.Now().Add(o.JoinTimeout)
	var c net.Conn
	var err error
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		c, err = net.DialTimeout("tcp", l.Addr(), max(min(5*time.Second, time.Until(deadline)), time.Millisecond))
		if err == nil {
			break
		}
		if time.Now().Add(wait).After(deadline) {
			return fmt.Errorf("dist: rank %d: could not reach rank 0 at %s within %s: %w; is rank 0 running, with the same MASTER_ADDR and MASTER_PORT?", l.Rank, l.Addr(), o.JoinTimeout, err)
		}
		time.Sleep(wait)
	}
	hello := append([]byte(helloMagic), make([]byte, 8)...)
	binary.BigEndian.PutUint32(hello[len(helloMagic):], uint32(l.Rank))
	binary.BigEndian.PutUint32(hello[len(helloMagic)+4:], uint32(l.World))
	hello = append(hello, o.Job...)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := writeFrame(c, kindHello, 0, 0, hello); err != nil {
		c.Close()
		return fmt.Errorf("dist: rank %d: saying hello to rank 0 at %s: %w", l.Rank, l.Addr(), err)
	}
	// Rank 0 answers when every rank is here.
	c.SetDeadline(deadline.Add(10 * time.Second))
	kind, _, _, body, err := readFrame(c, 1<<16)
	switch {
	case err != nil:
		c.Close()
		return fmt.Errorf("dist: rank %d: waiting for rank 0 at %s to see every rank: %w", l.Rank, l.Addr(), err)
	case kind == kindAbort:
		c.Close()
		return fmt.Errorf("dist: rank %d: rank 0 refused the group: %s", l.Rank, body)
	case kind != kindWelcome:
		c.Close()
		return fmt.Errorf("dist: rank %d: %s answered with frame kind %d, not a welcome (is something else on MASTER_PORT?)", l.Rank, l.Addr(), kind)
	}
	g.peers = []net.Conn{c}
	return nil
}

// Close ends the group: the connections close, so a rank still waiting
// in a collective sees this rank gone. Safe twice.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err == nil {
		g.err = errors.New("dist: the group is closed")
	}
	for i, c := range g.peers {
		if c != nil {
			c.Close()
			g.peers[i] = nil
		}
	}
	return nil
}

// Abort stops the group because this rank failed: the others' pending or
// next collective fails with reason, naming this rank, instead of
// waiting for its deadline. Then the group is closed.
func (g *Group) Abort(reason string) {
	msg := fmt.Sprintf("rank %d stopped: %s", g.rank, reason)
	g.abortPeers(msg)
	g.Close()
}

// abortPeers sends an abort to every connection (best effort, briefly).
func (g *Group) abortPeers(msg string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.peers {
		if c != nil {
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			writeFrame(c, kindAbort, 0, 0, []byte(msg))
		}
	}
}

// fail records the group's first failure err, sends why to the other
// ranks (rank 0 tells everybody; another rank tells rank 0, which tells
// the rest) and closes the connections. It returns the group's error.
func (g *Group) fail(err error, why string) error {
	g.mu.Lock()
	first := g.err == nil
	if first {
		g.err = err
	}
	err = g.err
	g.mu.Unlock()
	if first {
		g.abortPeers(why)
		g.Close()
	}
	return err
}

// broken returns the sticky error, if any.
func (g *Group) broken() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

func (g *Group) setDeadline(c net.Conn, d time.Duration) { c.SetDeadline(time.Now().Add(d)) }

// writeFrame writes one frame in one call (writev for a TCP connection),
// so an Abort from another goroutine never lands inside a frame.
func writeFrame(w io.Writer, kind, op byte, seq uint32, body []byte) error {
	if uint64(len(body)) > 1<<32-1 {
		return fmt.Errorf("a frame of %d bytes is over 4 GiB", len(body))
	}
	var h [headerLen]byte
	h[0], h[1] = kind, op
	binary.BigEndian.PutUint32(h[2:], seq)
	binary.BigEndian.PutUint32(h[6:], uint32(len(body)))
	bufs := net.Buffers{h[:], body}
	_, err := bufs.WriteTo(w)
	return err
}

// readFrame reads one frame whose body is at most limit bytes, or 64 KiB
// (an abort's reason, the frame of a rank in another collective, which
// the caller then reports).
func readFrame(r io.Reader, limit int) (kind, op byte, seq uint32, body []byte, err error) {
	var h [headerLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, 0, nil, describe(err)
	}
	limit = max(limit, 1<<16)
	n := binary.BigEndian.Uint32(h[6:])
	if uint64(n) > uint64(limit) {
		return 0, 0, 0, nil, fmt.Errorf("a frame of %d bytes, more than the %d expected", n, limit)
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, 0, 0, nil, describe(err)
	}
	return h[0], h[1], binary.BigEndian.Uint32(h[2:]), body, nil
}

// describe says what a read error means for the rank at the other end.
func describe(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("the connection closed (its process ended?): %w", err)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("no answer before the deadline: %w", err)
	}
	return err
}
