package graph

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// Every file loracc reads (models, external data, adapters, data,
// checkpoints) is opened here, so one rule holds for all of them: only a
// regular file is read, and only as much of it as its caller bounds.
// The open is non-blocking, so a FIFO named as an input cannot hang the
// command, and the check is made on the opened file (fstat), so nothing
// swapped in between a check and the open slips through. A symlink is
// followed: a link to a regular file is fine, one to /dev/zero is not.
const openFlags = os.O_RDONLY | syscall.O_NONBLOCK

// OpenRegular opens path for reading if it is a regular file.
func OpenRegular(path string) (*os.File, fs.FileInfo, error) {
	f, err := os.OpenFile(path, openFlags, 0)
	if err != nil {
		return nil, nil, err
	}
	return checkRegular(f, path)
}

// checkRegular keeps f if it is a regular file and closes it if not.
func checkRegular(f *os.File, shown string) (*os.File, fs.FileInfo, error) {
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if err := regularOnly(st, shown); err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, st, nil
}

// regularOnly explains why a file that is not regular is refused.
func regularOnly(st fs.FileInfo, shown string) error {
	switch m := st.Mode(); {
	case m.IsRegular():
		return nil
	case m.IsDir():
		return fmt.Errorf("%s: is a folder, not a file", shown)
	case m&fs.ModeNamedPipe != 0:
		return fmt.Errorf("%s: is a FIFO, not a regular file", shown)
	case m&(fs.ModeDevice|fs.ModeCharDevice) != 0:
		return fmt.Errorf("%s: is a device, not a regular file", shown)
	default:
		return fmt.Errorf("%s: is not a regular file (%s)", shown, m.Type())
	}
}

// ReadRegular reads the whole of the regular file at path, refusing one
// larger than limit bytes before reading it; what names the kind of file
// in that error ("an adapter config"). The read itself is bounded too, so a file that grows
// while it is read cannot take more than limit bytes of memory.
func ReadRegular(path string, limit int64, what string) ([]byte, error) {
	f, st, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes is more than %d, the limit for %s", path, st.Size(), limit, what)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: grew past %d bytes, the limit for %s, while it was read", path, limit, what)
	}
	return data, nil
}
