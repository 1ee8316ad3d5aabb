package adapter

import (
	"io"

	"github.com/loracc/loracc/graph"
)

// writeFileAtomic writes data through graph.WriteFileAtomic (temp file in
// the same folder, fsync, rename), so a crash never leaves half an adapter.
func writeFileAtomic(path string, data []byte) error {
	return graph.WriteFileAtomic(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
