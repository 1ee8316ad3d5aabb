//go:build !linux

package dist

import "syscall"

// childAttr puts a rank in its own process group (terminal signals go to
// the launcher, which forwards them once).
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
