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

// Estimated bytes each element costs, decoded and in the IR (measured
// with Go 1.26: TotalAlloc of proto.Unmarshal plus the IR's structs).
const (
	costNode      = 560
	costAttr      = 420
	costTensor    = 420
	costValueInfo = 200
	costString    = 130
	costGraph     = 600
	budgetFactor  = 64
	budgetSlack   = 256 << 20
	maxNesting    = 64
)

// ErrTooWide reports a file whose decoded form would be out of proportion
// to its size.
var ErrTooWide = errors.New("the model would take too much memory to decode")

// checkBudget estimates the memory data's ModelProto takes decoded and
// refuses it when over the bound, naming what it is made of.
func checkBudget(data []byte) error {
	var c budget
	if err := c.message(data, msgModel, 0); err != nil {
		return nil // malformed: proto.Unmarshal says why
	}
	limit := int64(len(data))*budgetFactor + budgetSlack
	if est := c.total(int64(len(data))); est > limit {
		return fmt.Errorf("%w: %d nodes, %d attributes, %d tensors, %d value infos and %d strings in %d bytes would take about %d MiB (the bound is %d× the file + %d MiB)",
			ErrTooWide, c.nodes, c.attrs, c.tensors, c.infos, c.strings, len(data), est>>20, budgetFactor, budgetSlack>>20)
	}
	return nil
}

type budget struct {
	nodes, attrs, tensors, infos, strings, graphs int64
}

func (c *budget) total(size int64) int64 {
	return size + c.nodes*costNode + c.attrs*costAttr + c.tensors*costTensor + c.infos*costValueInfo + c.strings*costString + c.graphs*costGraph
}

// Message kinds the walk descends into.
type msgKind int

const (
	msgModel msgKind = iota
	msgFunction
	msgGraph
	msgNode
	msgAttr
	msgTensor
	msgSparse
)

// child is the kind of a length-delimited field of a message of kind k
// (-1: not a message the walk counts; strings counts a string field).
func child(k msgKind, field protowire.Number) (kind msgKind, counted bool, str bool) {
	switch k {
	case msgModel:
		switch field {
		case 7:
			return msgGraph, true, false
		case 25:
			return msgFunction, true, false
		}
	case msgFunction:
		if field == 7 {
			return msgNode, true, false
		}
		return 0, false, field == 4 || field == 5 // inputs, outputs
	case msgGraph:
		switch field {
		case 1:
			return msgNode, true, false
		case 5:
			return msgTensor, true, false
		case 15:
			return msgSparse, true, false
		case 11, 12, 13:
			return -1, true, false // value infos
		}
	case msgNode:
		switch field {
		case 1, 2:
			return 0, false, true
		case 5:
			return msgAttr, true, false
		}
	case msgAttr:
		switch field {
		case 5, 10:
			return msgTensor, true, false
		case 6, 11:
			return msgGraph, true, false
		case 9:
			return 0, false, true
		}
	case msgTensor:
		if field == 6 { // string_data
			return 0, false, true
		}
	case msgSparse:
		if field == 1 || field == 2 {
			return msgTensor, true, false
		}
	}
	return 0, false, false
}

func (c *budget) message(b []byte, k msgKind, depth int) error {
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
		kind, counted, str := child(k, num)
		switch {
		case str:
			c.strings++
		case counted && kind == -1:
			c.infos++
		case counted:
			switch kind {
			case msgNode:
				c.nodes++
			case msgAttr:
				c.attrs++
			case msgTensor, msgSparse:
				c.tensors++
			case msgGraph, msgFunction:
				c.graphs++
			}
			if err := c.message(v, kind, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}
