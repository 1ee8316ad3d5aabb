package hostile

import (
	"fmt"
	"os"
	"syscall"
)

// Specials are the kinds of non-regular file Replace can put where loracc
// expects an input: a FIFO, which blocks a plain open for ever; a symlink
// to /dev/zero, which reads without end; and a folder.
func Specials() []string { return []string{"fifo", "zero", "folder"} }

// Replace removes the file at path and puts a special file of the given
// kind (one of Specials) in its place.
func Replace(path, kind string) error {
	if err := os.RemoveAll(path); err != nil {
		return err
	}
	switch kind {
	case "fifo":
		return syscall.Mkfifo(path, 0o644)
	case "zero":
		return os.Symlink("/dev/zero", path)
	case "folder":
		return os.Mkdir(path, 0o755)
	}
	return fmt.Errorf("hostile: no special file kind %q", kind)
}
