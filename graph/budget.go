package graph

// The decoding budget. Protobuf lets a file describe far more than its
// size in memory: an empty NodeProto is 2 bytes on disk and about 550 in
// memory once decoded and turned into IR, so a 6 MB file of 3 M empty
// nodes took 1.4 GB before its first node was even checked. Decode first
// walks the wire format, which allocates nothing, and adds up what the
// elements will cost; a file whose estimate is over the bound is refused
// before it is decoded.
//
// The bound: 64 × the file's size + 256 MiB. Real models sit far below it
// (a torch.onnx GPT-2 graph is about 4× its .onnx file; weights cost their
// own size); only files made of nearly empty messages exceed it.

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrTooWide reports a file whose decoded form would be out of proportion
// to its size.
var ErrTooWide = errors.New("the model would take too much memory to decode")

const (
	budgetFactor = 64
	budgetSlack  = 256 << 20
	maxNesting   = 64
)

// elem is what a length-delimited field holds, as the walk counts it:
// nothing it counts, a string, a value info (counted, not entered), or a
// message it enters.
type elem int

const (
	elemNone elem = iota
	elemString
	elemValueInfo
	elemModel
	elemFunction
	elemGraph
	elemNode
	elemAttr
	elemTensor
	elemSparse
	elemKinds
)

// cost is the estimated bytes an element costs, decoded and in the IR
// (measured with Go 1.26: TotalAlloc of proto.Unmarshal plus the IR's
// structs).
func (e elem) cost() int64 {
	switch e {
	case elemString:
		return 130
	case elemValueInfo:
		return 200
	case elemFunction, elemGraph:
		return 600
	case elemNode:
		return 560
	case elemAttr, elemTensor, elemSparse:
		return 420
	}
	return 0
}

// checkBudget estimates the memory data's ModelProto takes decoded and
// refuses it when over the bound, naming what it is made of.
func checkBudget(data []byte) error {
	var c budget
	if err := c.message(data, elemModel, 0); err != nil {
		return nil // malformed: proto.Unmarshal says why
	}
	est := int64(len(data))
	for e := range elemKinds {
		est += c[e] * e.cost()
	}
	if limit := int64(len(data))*budgetFactor + budgetSlack; est > limit {
		return fmt.Errorf("%w: %d nodes, %d attributes, %d tensors, %d value infos and %d strings in %d bytes would take about %d MiB (the bound is %d× the file + %d MiB)",
			ErrTooWide, c[elemNode], c[elemAttr], c[elemTensor]+c[elemSparse], c[elemValueInfo], c[elemString], len(data), est>>20, budgetFactor, budgetSlack>>20)
	}
	return nil
}

// budget counts the elements of each kind.
type budget [elemKinds]int64

// child is what field of a message of kind k holds.
func child(k elem, field protowire.Number) elem {
	switch k {
	case elemModel:
		switch field {
		case 7:
			return elemGraph
		case 25:
			return elemFunction
		}
	case elemFunction:
		switch field {
		case 7:
			return elemNode
		case 4, 5: // inputs, outputs
			return elemString
		}
	case elemGraph:
		switch field {
		case 1:
			return elemNode
		case 5:
			return elemTensor
		case 15:
			return elemSparse
		case 11, 12, 13:
			return elemValueInfo
		}
	case elemNode:
		switch field {
		case 1, 2:
			return elemString
		case 5:
			return elemAttr
		}
	case elemAttr:
		switch field {
		case 5, 10:
			return elemTensor
		case 6, 11:
			return elemGraph
		case 9:
			return elemString
		}
	case elemTensor:
		if field == 6 { // string_data
			return elemString
		}
	case elemSparse:
		if field == 1 || field == 2 {
			return elemTensor
		}
	}
	return elemNone
}

func (c *budget) message(b []byte, k elem, depth int) error {
	if depth > maxNesting {
		return errors.New("nested too deep")
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		e := child(k, num)
		c[e]++
		if e >= elemModel {
			if err := c.message(v, e, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}
