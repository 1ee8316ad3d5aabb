package infer

import "github.com/loracc/loracc/graph"

// Convolution and pooling: output rank is x's; dims from the window
// arithmetic (Conv, AveragePool, MaxPool, LpPool, the global pools).
// Channels are what Concat's gradient needs in convolutional necks:
// Conv's come from the weight, pooling keeps x's.

// maxPoolType: MaxPool's output 1 holds int64 indices.
func maxPoolType(s *Inferer, n *graph.Node, idx int) graph.DataType {
	if idx == 1 {
		return graph.Int64
	}
	return firstTyped(s, n, idx)
}

// windowDims are the dims of a Conv or pooling output: x's batch, the
// channels (Conv: the weight's dim 0), and each spatial size from the
// window arithmetic when x's size, the kernel and the pads are static.
func windowDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	if len(x) != rank || rank < 2 {
		return nil
	}
	out := unknownDims(rank)
	out[0], out[1] = x[0], x[1]
	k := rank - 2
	if n.Op == "GlobalAveragePool" || n.Op == "GlobalMaxPool" {
		for i := 2; i < rank; i++ {
			out[i] = graph.Dim{Value: 1}
		}
		return out
	}
	kernel := n.AttrInts("kernel_shape")
	if n.Op == "Conv" {
		out[1] = graph.Dim{Value: -1}
		w := s.Info(n.Input(1))
		if w.Dims != nil && len(w.Dims) == rank {
			out[1] = w.Dims[0]
			if kernel == nil {
				kernel = make([]int64, k)
				for i := range k {
					kernel[i] = -1
					if w.Dims[2+i].Known() {
						kernel[i] = w.Dims[2+i].Value
					}
				}
			}
		}
	}
	at := func(name string, i int, def int64) int64 {
		if xs := n.AttrInts(name); len(xs) > i {
			return xs[i]
		}
		return def
	}
	autoPad := "NOTSET"
	if a := n.Attr("auto_pad"); a != nil && len(a.S) > 0 {
		autoPad = string(a.S)
	}
	for i := range k {
		xi := x[2+i]
		if len(kernel) != k || kernel[i] < 0 {
			continue
		}
		st, d := at("strides", i, 1), at("dilations", i, 1)
		span := d*(kernel[i]-1) + 1
		if !xi.Known() {
			// A window that keeps the size keeps x's symbol.
			same := st == 1 && (autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER" ||
				autoPad == "NOTSET" && at("pads", i, 0)+at("pads", k+i, 0) == span-1 ||
				autoPad == "VALID" && span == 1)
			if same {
				out[2+i] = xi
			}
			continue
		}
		var size int64
		switch autoPad {
		case "NOTSET":
			free := xi.Value + at("pads", i, 0) + at("pads", k+i, 0) - span
			if n.AttrInt("ceil_mode", 0) != 0 {
				size = (free+st-1)/st + 1
			} else {
				size = free/st + 1
			}
		case "VALID":
			size = (xi.Value-span)/st + 1
		case "SAME_UPPER", "SAME_LOWER":
			size = (xi.Value + st - 1) / st
		default:
			continue
		}
		out[2+i] = graph.Dim{Value: size}
	}
	return out
}
