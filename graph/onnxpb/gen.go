// Package onnxpb holds the Go types generated from loracc's transcription of
// the ONNX protobuf schema. Regenerate with `go generate ./graph/onnxpb`
// (needs protoc and protoc-gen-go on PATH).
package onnxpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative onnx.proto
