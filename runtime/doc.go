// Package runtime runs ONNX models with ONNX Runtime: it is how loracc
// checks its rewrites numerically (injected with B=0 equals the base model,
// fused equals unfused, gradients against finite differences) and how the
// CLI runs a compiled model.
//
// The library is loaded at run time, not linked: FindLibrary locates it
// (--ort-lib, $LORACC_ORT_LIB, or what scripts/fetch-ort.sh installed) and
// Open loads it into an Env, which main builds once and passes down. An Env
// makes Sessions; a Session's Run takes and returns Tensors as raw
// little-endian bytes, so every ONNX element type with a byte size,
// float16 and bfloat16 included, moves without conversion.
//
// All cgo lives in runtime/internal/ort, the only importer of
// github.com/yalue/onnxruntime_go; this package is plain Go. Input and
// output types and dim_param names are read from the model protobuf here
// (modelio.go) rather than asked of ORT, which would load the model twice.
//
// Tests need the library and skip when FindLibrary fails.
package runtime
