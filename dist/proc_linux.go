package dist

import "syscall"

// childAttr puts a rank in its own process group (terminal signals go to
// the launcher, which forwards them once) and asks the kernel to send it
// SIGTERM if the launcher dies, so no rank outlives it. (The signal
// follows the thread that started the child; Go keeps its threads for the
// life of the process unless a goroutine locked to one exits, which the
// launcher's do not.)
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
