package adapter

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestORTAdapterRoundTrip(t *testing.T) {
	f32 := func(xs ...float32) []byte {
		var b []byte
		for _, x := range xs {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		}
		return b
	}
	in := []NamedTensor{
		{Name: "q.lora_A", DType: graph.Float, Shape: []int64{3, 2}, Data: f32(1, 2, 3, 4, 5, 6)},
		{Name: "q.lora_B", DType: graph.Float, Shape: []int64{2, 1}, Data: f32(7, 8)},
		{Name: "a-much-longer-name.lora_A", DType: graph.Float16, Shape: []int64{1, 1}, Data: []byte{0, 0x3c}},
	}
	buf, err := EncodeORTAdapter(in, 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[4:8]) != "TORT" {
		t.Fatalf("identifier %q", buf[4:8])
	}
	fv, out, err := DecodeORTAdapter(buf)
	if err != nil {
		t.Fatal(err)
	}
	if fv != ORTAdapterFormatVersion || len(out) != len(in) {
		t.Fatalf("format %d, %d params", fv, len(out))
	}
	for i := range in {
		a, b := in[i], out[i]
		if a.Name != b.Name || a.DType != b.DType || !bytes.Equal(a.Data, b.Data) || len(a.Shape) != len(b.Shape) {
			t.Errorf("param %d: wrote %+v, read %+v", i, a, b)
		}
	}
	// raw_data and dims must start 8-aligned (FlatBuffers force_align / int64).
	again, _ := EncodeORTAdapter(in, 3, 1)
	if !bytes.Equal(buf, again) {
		t.Error("encoding is not deterministic")
	}
	if _, _, err := DecodeORTAdapter(buf[:len(buf)/2]); err == nil {
		t.Error("a truncated buffer decoded")
	}
}
