package graph_test

import (
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"google.golang.org/protobuf/encoding/protowire"
)

// TestWidthBombRefused: a 6 MB model of 1.2 M one-letter nodes would take
// hundreds of MB decoded; Decode refuses it from the wire format, before
// allocating for it, with the counts and the bound. A real model decodes.
func TestWidthBombRefused(t *testing.T) {
	data := widthBomb(1_200_000)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := graph.Decode(data, t.TempDir())
	runtime.ReadMemStats(&after)
	if !errors.Is(err, graph.ErrTooWide) || !strings.Contains(err.Error(), "1200000 nodes") || !strings.Contains(err.Error(), "the bound is 64× the file + 256 MiB") {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("refusing the %d-byte file allocated %d bytes", len(data), alloc)
	}
	if _, err := graph.Decode(widthBomb(1000), t.TempDir()); errors.Is(err, graph.ErrTooWide) {
		t.Errorf("1000 nodes refused as too wide: %v", err)
	}
	if _, err := graph.Load("../testdata/models/gpt2_tiny.onnx"); err != nil {
		t.Fatal(err)
	}
}

// widthBomb is a serialized ModelProto whose graph holds n nodes, each
// with an op_type of one letter and nothing else: about 5 bytes a node
// on disk, hundreds in memory once decoded. Written with protowire, not
// the schema, so the file is exactly what a hostile writer would send.
func widthBomb(n int) []byte {
	node := protowire.AppendTag(nil, 4, protowire.BytesType) // NodeProto.op_type
	node = protowire.AppendString(node, "A")
	var graph []byte
	for range n {
		graph = protowire.AppendTag(graph, 1, protowire.BytesType) // GraphProto.node
		graph = protowire.AppendBytes(graph, node)
	}
	m := protowire.AppendTag(nil, 1, protowire.VarintType) // ModelProto.ir_version
	m = protowire.AppendVarint(m, 8)
	m = protowire.AppendTag(m, 7, protowire.BytesType) // ModelProto.graph
	return protowire.AppendBytes(m, graph)
}
