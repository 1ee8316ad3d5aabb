// lc.h: loracc's declarations of the ONNX Runtime C API entries it calls
// (see capi.go for why they are declared by index).
#ifndef LORACC_LC_H
#define LORACC_LC_H
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void OrtStatus;
typedef const void* lcPtr;
typedef struct {
	lcPtr* (*GetApi)(uint32_t version);
	const char* (*GetVersionString)(void);
} lcApiBase;
typedef const lcApiBase* (*lcGetApiBase)(void);

// Indices in struct OrtApi (onnxruntime_c_api.h, API 24).
enum {
	lcGetErrorMessage = 2, lcCreateEnv = 3, lcCreateSession = 7, lcCreateSessionFromArray = 8, lcRun = 9, lcCreateSessionOptions = 10,
	lcSetOptimizedModelFilePath = 11, lcDisableMemPattern = 17, lcSetSessionGraphOptimizationLevel = 23, lcSetIntraOpNumThreads = 24,
	lcCreateTensorWithDataAsOrtValue = 49, lcGetTensorMutableData = 51,
	lcGetTensorElementType = 60, lcGetDimensionsCount = 61, lcGetDimensions = 62, lcGetTensorTypeAndShape = 65,
	lcCreateMemoryInfo = 68, lcCreateCpuMemoryInfo = 69, lcAllocatorFree = 76, lcGetAllocatorWithDefaultOptions = 78,
	lcReleaseEnv = 92, lcReleaseStatus = 93, lcReleaseMemoryInfo = 94, lcReleaseSession = 95, lcReleaseValue = 96,
	lcReleaseTensorTypeAndShapeInfo = 99, lcReleaseSessionOptions = 100,
	lcRunWithBinding = 133, lcCreateIoBinding = 134, lcReleaseIoBinding = 135, lcBindInput = 136, lcBindOutput = 137,
	lcBindOutputToDevice = 138, lcGetBoundOutputValues = 140, lcClearBoundInputs = 141, lcClearBoundOutputs = 142,
	lcCreateRunOptions = 39, lcCreateTensorAsOrtValue = 48, lcReleaseRunOptions = 97,
	lcCreateAllocator = 131, lcReleaseAllocator = 132, lcAddRunConfigEntry = 165,
	lcSynchronizeBoundInputs = 202, lcSynchronizeBoundOutputs = 203,
	lcSessionOptionsAppendExecutionProvider_CUDA_V2 = 204, lcCreateCUDAProviderOptions = 205,
	lcUpdateCUDAProviderOptions = 206, lcReleaseCUDAProviderOptions = 208,
	lcCreateLoraAdapterFromArray = 281, lcReleaseLoraAdapter = 282, lcRunOptionsAddActiveLoraAdapter = 283,
	lcGetKeyValuePairs = 298, lcReleaseKeyValuePairs = 300, lcAllocatorGetStats = 319,
	lcAddSessionConfigEntry = 130, lcCreateAndRegisterAllocator = 144, lcReleaseArenaCfg = 157, lcCreateArenaCfgV2 = 164,
	lcCreateAndRegisterAllocatorV2 = 259,
};

lcPtr* lc_api(const char* lib, uint32_t version, char** err);
const char* lc_msg(lcPtr* api, OrtStatus* st);
void lc_release_status(lcPtr* api, OrtStatus* st);
void lc_release(lcPtr* api, int idx, void* p);
OrtStatus* lc_create_env(lcPtr* api, int level, void** out);
OrtStatus* lc_create_session_options(lcPtr* api, void** out);
OrtStatus* lc_set_threads(lcPtr* api, void* so, int n);
OrtStatus* lc_set_opt_level(lcPtr* api, void* so, int level);
OrtStatus* lc_disable_mem_pattern(lcPtr* api, void* so);
OrtStatus* lc_optimized_model_path(lcPtr* api, void* so, const char* path);
OrtStatus* lc_append_cuda(lcPtr* api, void* so, const char* device, int graph, const char* extend, const char* limit);
OrtStatus* lc_alloc_stats(lcPtr* api, void* alloc, char* buf, size_t cap);
OrtStatus* lc_create_session(lcPtr* api, void* env, const char* path, void* so, void** out);
OrtStatus* lc_create_session_bytes(lcPtr* api, void* env, const void* data, size_t len, void* so, void** out);
OrtStatus* lc_create_binding(lcPtr* api, void* sess, void** out);
OrtStatus* lc_mem_info(lcPtr* api, const char* name, int id, void** out);
OrtStatus* lc_tensor(lcPtr* api, void* info, void* data, size_t len, int64_t* shape, size_t rank, int type, void** out);
OrtStatus* lc_bind_input(lcPtr* api, void* b, const char* name, void* v);
OrtStatus* lc_bind_output_to(lcPtr* api, void* b, const char* name, void* info);
OrtStatus* lc_run(lcPtr* api, void* sess, void* opts, void* b);
OrtStatus* lc_bind_output(lcPtr* api, void* b, const char* name, void* v);
OrtStatus* lc_allocator(lcPtr* api, void* sess, void* info, void** out);
OrtStatus* lc_alloc_tensor(lcPtr* api, void* alloc, int64_t* shape, size_t rank, int type, void** out);
OrtStatus* lc_run_options(lcPtr* api, const char* graph, void** out);
void lc_clear(lcPtr* api, void* b);
OrtStatus* lc_outputs(lcPtr* api, void* b, void** vals, size_t cap, size_t* n);
OrtStatus* lc_lora(lcPtr* api, const void* data, size_t len, void** out);
OrtStatus* lc_activate_lora(lcPtr* api, void* opts, void* adapter);
OrtStatus* lc_run_plain(lcPtr* api, void* sess, void* opts, const char** in_names, void** ins, size_t n_in, const char** out_names, size_t n_out, void** outs);
OrtStatus* lc_data(lcPtr* api, void* v, void** out);
OrtStatus* lc_shape(lcPtr* api, void* v, int64_t* dims, size_t cap, size_t* rank, int* type);
OrtStatus* lc_sync(lcPtr* api, void* b, int outputs);
OrtStatus* lc_config_entry(lcPtr* api, void* so, const char* key, const char* val);
OrtStatus* lc_register_arena(lcPtr* api, void* env, int cuda, int device, int extend, size_t max_mem);
#endif
