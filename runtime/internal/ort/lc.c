// lc.c: calls into ONNX Runtime's C API table by entry index (capi.go).
#include "lc.h"

lcPtr* lc_api(const char* lib, uint32_t version, char** err) {
	void* h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
	if (!h) { *err = dlerror(); return NULL; }
	lcGetApiBase base = (lcGetApiBase)dlsym(h, "OrtGetApiBase");
	if (!base) { *err = dlerror(); return NULL; }
	lcPtr* api = base()->GetApi(version);
	if (!api) { *err = "the library does not provide this API version"; }
	return api;
}

// lc_msg returns status's message (copied by the caller) and releases it.
const char* lc_msg(lcPtr* api, OrtStatus* st) {
	return ((const char* (*)(const OrtStatus*))api[lcGetErrorMessage])(st);
}
void lc_release_status(lcPtr* api, OrtStatus* st) {
	((void (*)(OrtStatus*))api[lcReleaseStatus])(st);
}
void lc_release(lcPtr* api, int idx, void* p) {
	if (p) ((void (*)(void*))api[idx])(p);
}
OrtStatus* lc_create_env(lcPtr* api, int level, void** out) {
	return ((OrtStatus* (*)(int, const char*, void**))api[lcCreateEnv])(level, "loracc", out);
}
OrtStatus* lc_create_session_options(lcPtr* api, void** out) {
	return ((OrtStatus* (*)(void**))api[lcCreateSessionOptions])(out);
}
OrtStatus* lc_set_threads(lcPtr* api, void* so, int n) {
	return ((OrtStatus* (*)(void*, int))api[lcSetIntraOpNumThreads])(so, n);
}
OrtStatus* lc_optimized_model_path(lcPtr* api, void* so, const char* path) {
	return ((OrtStatus* (*)(void*, const char*))api[lcSetOptimizedModelFilePath])(so, path);
}
OrtStatus* lc_disable_mem_pattern(lcPtr* api, void* so) {
	return ((OrtStatus* (*)(void*))api[lcDisableMemPattern])(so);
}
OrtStatus* lc_set_opt_level(lcPtr* api, void* so, int level) {
	return ((OrtStatus* (*)(void*, int))api[lcSetSessionGraphOptimizationLevel])(so, level);
}
// lc_append_cuda enables the CUDA provider; extend and limit (arena
// growth strategy and byte limit) are left at ORT's defaults when empty.
OrtStatus* lc_append_cuda(lcPtr* api, void* so, const char* device, int graph, const char* extend, const char* limit) {
	void* opts = NULL;
	OrtStatus* st = ((OrtStatus* (*)(void**))api[lcCreateCUDAProviderOptions])(&opts);
	if (st) return st;
	const char* keys[4] = {"device_id", "enable_cuda_graph"};
	const char* vals[4] = {device, graph ? "1" : "0"};
	size_t n = 2;
	if (extend[0]) { keys[n] = "arena_extend_strategy"; vals[n++] = extend; }
	if (limit[0]) { keys[n] = "gpu_mem_limit"; vals[n++] = limit; }
	st = ((OrtStatus* (*)(void*, const char* const*, const char* const*, size_t))api[lcUpdateCUDAProviderOptions])(opts, keys, vals, n);
	if (!st) st = ((OrtStatus* (*)(void*, const void*))api[lcSessionOptionsAppendExecutionProvider_CUDA_V2])(so, opts);
	((void (*)(void*))api[lcReleaseCUDAProviderOptions])(opts);
	return st;
}
OrtStatus* lc_create_session(lcPtr* api, void* env, const char* path, void* so, void** out) {
	return ((OrtStatus* (*)(void*, const char*, void*, void**))api[lcCreateSession])(env, path, so, out);
}
OrtStatus* lc_create_session_bytes(lcPtr* api, void* env, const void* data, size_t len, void* so, void** out) {
	return ((OrtStatus* (*)(void*, const void*, size_t, void*, void**))api[lcCreateSessionFromArray])(env, data, len, so, out);
}
OrtStatus* lc_create_binding(lcPtr* api, void* sess, void** out) {
	return ((OrtStatus* (*)(void*, void**))api[lcCreateIoBinding])(sess, out);
}
OrtStatus* lc_mem_info(lcPtr* api, const char* name, int id, void** out) {
	if (name[0] == 'C' && name[1] == 'p' && name[2] == 'u')
		return ((OrtStatus* (*)(int, int, void**))api[lcCreateCpuMemoryInfo])(0, 0, out); // device allocator, default mem
	return ((OrtStatus* (*)(const char*, int, int, int, void**))api[lcCreateMemoryInfo])(name, 0, id, 0, out);
}
OrtStatus* lc_tensor(lcPtr* api, void* info, void* data, size_t len, int64_t* shape, size_t rank, int type, void** out) {
	return ((OrtStatus* (*)(void*, void*, size_t, const int64_t*, size_t, int, void**))api[lcCreateTensorWithDataAsOrtValue])(info, data, len, shape, rank, type, out);
}
OrtStatus* lc_bind_input(lcPtr* api, void* b, const char* name, void* v) {
	return ((OrtStatus* (*)(void*, const char*, const void*))api[lcBindInput])(b, name, v);
}
OrtStatus* lc_bind_output_to(lcPtr* api, void* b, const char* name, void* info) {
	return ((OrtStatus* (*)(void*, const char*, const void*))api[lcBindOutputToDevice])(b, name, info);
}
OrtStatus* lc_run(lcPtr* api, void* sess, void* opts, void* b) {
	return ((OrtStatus* (*)(void*, const void*, const void*))api[lcRunWithBinding])(sess, opts, b);
}
OrtStatus* lc_bind_output(lcPtr* api, void* b, const char* name, void* v) {
	return ((OrtStatus* (*)(void*, const char*, const void*))api[lcBindOutput])(b, name, v);
}
OrtStatus* lc_allocator(lcPtr* api, void* sess, void* info, void** out) {
	return ((OrtStatus* (*)(const void*, const void*, void**))api[lcCreateAllocator])(sess, info, out);
}
OrtStatus* lc_alloc_tensor(lcPtr* api, void* alloc, int64_t* shape, size_t rank, int type, void** out) {
	return ((OrtStatus* (*)(void*, const int64_t*, size_t, int, void**))api[lcCreateTensorAsOrtValue])(alloc, shape, rank, type, out);
}
OrtStatus* lc_run_options(lcPtr* api, const char* graph, void** out) {
	OrtStatus* st = ((OrtStatus* (*)(void**))api[lcCreateRunOptions])(out);
	if (st || !graph) return st;
	return ((OrtStatus* (*)(void*, const char*, const char*))api[lcAddRunConfigEntry])(*out, "gpu_graph_id", graph);
}
void lc_clear(lcPtr* api, void* b) {
	((void (*)(void*))api[lcClearBoundInputs])(b);
	((void (*)(void*))api[lcClearBoundOutputs])(b);
}
// lc_outputs returns the bound output values in binding order; the array
// is freed here, the values belong to the caller.
OrtStatus* lc_outputs(lcPtr* api, void* b, void** vals, size_t cap, size_t* n) {
	void* alloc = NULL;
	OrtStatus* st = ((OrtStatus* (*)(void**))api[lcGetAllocatorWithDefaultOptions])(&alloc);
	if (st) return st;
	void** arr = NULL;
	st = ((OrtStatus* (*)(const void*, void*, void***, size_t*))api[lcGetBoundOutputValues])(b, alloc, &arr, n);
	if (st) return st;
	for (size_t i = 0; i < *n && i < cap; i++) vals[i] = arr[i];
	if (arr) ((OrtStatus* (*)(void*, void*))api[lcAllocatorFree])(alloc, arr);
	return NULL;
}
OrtStatus* lc_data(lcPtr* api, void* v, void** out) {
	return ((OrtStatus* (*)(void*, void**))api[lcGetTensorMutableData])(v, out);
}
OrtStatus* lc_shape(lcPtr* api, void* v, int64_t* dims, size_t cap, size_t* rank, int* type) {
	void* info = NULL;
	OrtStatus* st = ((OrtStatus* (*)(const void*, void**))api[lcGetTensorTypeAndShape])(v, &info);
	if (st) return st;
	st = ((OrtStatus* (*)(const void*, size_t*))api[lcGetDimensionsCount])(info, rank);
	if (!st && *rank <= cap) st = ((OrtStatus* (*)(const void*, int64_t*, size_t))api[lcGetDimensions])(info, dims, *rank);
	if (!st) st = ((OrtStatus* (*)(const void*, int*))api[lcGetTensorElementType])(info, type);
	((void (*)(void*))api[lcReleaseTensorTypeAndShapeInfo])(info);
	return st;
}

// lc_sync waits until the binding's inputs (outputs) are ready: copies and
// kernels on the provider's streams finished. Sessions run on their own
// streams, so a buffer one session wrote must be synchronised before
// another reads it.
OrtStatus* lc_sync(lcPtr* api, void* b, int outputs) {
	return ((OrtStatus* (*)(void*))api[outputs ? lcSynchronizeBoundOutputs : lcSynchronizeBoundInputs])(b);
}

// lc_alloc_stats writes the allocator's statistics (ORT's arena: InUse,
// MaxInUse, TotalAllocated, NumAllocs, ...) into buf as "key=value\n"
// lines, truncated at cap.
OrtStatus* lc_alloc_stats(lcPtr* api, void* alloc, char* buf, size_t cap) {
	void* kvp = NULL;
	OrtStatus* st = ((OrtStatus* (*)(const void*, void**))api[lcAllocatorGetStats])(alloc, &kvp);
	if (st) return st;
	const char* const* keys = NULL;
	const char* const* vals = NULL;
	size_t n = 0;
	((void (*)(const void*, const char* const**, const char* const**, size_t*))api[lcGetKeyValuePairs])(kvp, &keys, &vals, &n);
	size_t used = 0;
	buf[0] = 0;
	for (size_t i = 0; i < n; i++) {
		size_t kl = strlen(keys[i]), vl = strlen(vals[i]);
		if (used + kl + vl + 3 > cap) break;
		memcpy(buf + used, keys[i], kl); used += kl;
		buf[used++] = '=';
		memcpy(buf + used, vals[i], vl); used += vl;
		buf[used++] = '\n';
		buf[used] = 0;
	}
	((void (*)(void*))api[lcReleaseKeyValuePairs])(kvp);
	return NULL;
}

// lc_lora loads an .onnx_adapter from memory; its tensors stay on the CPU
// (no device allocator) and are fed to the inputs of the same names.
OrtStatus* lc_lora(lcPtr* api, const void* data, size_t len, void** out) {
	return ((OrtStatus* (*)(const void*, size_t, void*, void**))api[lcCreateLoraAdapterFromArray])(data, len, NULL, out);
}
OrtStatus* lc_activate_lora(lcPtr* api, void* opts, void* adapter) {
	return ((OrtStatus* (*)(void*, const void*))api[lcRunOptionsAddActiveLoraAdapter])(opts, adapter);
}
// lc_run_plain is the C API's Run (not RunWithBinding): the one that
// feeds the run options' active LoRA adapters.
OrtStatus* lc_run_plain(lcPtr* api, void* sess, void* opts, const char** in_names, void** ins, size_t n_in, const char** out_names, size_t n_out, void** outs) {
	return ((OrtStatus* (*)(void*, const void*, const char* const*, const void* const*, size_t, const char* const*, size_t, void**))api[lcRun])(sess, opts, in_names, (const void* const*)ins, n_in, out_names, n_out, outs);
}

OrtStatus* lc_config_entry(lcPtr* api, void* so, const char* key, const char* val) {
	return ((OrtStatus* (*)(void*, const char*, const char*))api[lcAddSessionConfigEntry])(so, key, val);
}

// lc_register_arena registers an arena allocator for the CPU or CUDA
// device with the environment, for every session that sets
// session.use_env_allocators. extend: ORT's ArenaExtendStrategy
// (0 kNextPowerOfTwo, 1 kSameAsRequested), or -1 for ORT's default;
// max_mem: the arena's byte limit, 0 for none.
OrtStatus* lc_register_arena(lcPtr* api, void* env, int cuda, int device, int extend, size_t max_mem) {
	const char* keys[2];
	size_t vals[2];
	size_t n = 0;
	if (extend >= 0) { keys[n] = "arena_extend_strategy"; vals[n++] = (size_t)extend; }
	if (max_mem > 0) { keys[n] = "max_mem"; vals[n++] = max_mem; }
	void* cfg = NULL;
	OrtStatus* st = ((OrtStatus* (*)(const char* const*, const size_t*, size_t, void**))api[lcCreateArenaCfgV2])(keys, vals, n, &cfg);
	if (st) return st;
	void* info = NULL;
	st = ((OrtStatus* (*)(const char*, int, int, int, void**))api[lcCreateMemoryInfo])(cuda ? "Cuda" : "Cpu", 1, device, 0, &info); // OrtArenaAllocator, OrtMemTypeDefault
	if (!st) {
		if (cuda) {
			// ORT builds the CUDA arena from the provider options (its own
			// arena_extend_strategy and gpu_mem_limit), so they go there too.
			char id[16], lim[32];
			snprintf(id, sizeof id, "%d", device);
			snprintf(lim, sizeof lim, "%zu", max_mem);
			const char* pk[3] = {"device_id"};
			const char* pv[3] = {id};
			size_t np = 1;
			if (extend >= 0) { pk[np] = "arena_extend_strategy"; pv[np++] = extend ? "kSameAsRequested" : "kNextPowerOfTwo"; }
			if (max_mem > 0) { pk[np] = "gpu_mem_limit"; pv[np++] = lim; }
			st = ((OrtStatus* (*)(void*, const char*, const void*, const void*, const char* const*, const char* const*, size_t))api[lcCreateAndRegisterAllocatorV2])(
				env, "CUDAExecutionProvider", info, cfg, pk, pv, np);
		} else {
			st = ((OrtStatus* (*)(void*, const void*, const void*))api[lcCreateAndRegisterAllocator])(env, info, cfg);
		}
		((void (*)(void*))api[lcReleaseMemoryInfo])(info);
	}
	((void (*)(void*))api[lcReleaseArenaCfg])(cfg);
	return st;
}
