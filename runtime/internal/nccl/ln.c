// ln.c: NCCL and the CUDA runtime through dlopen (nccl.go). Every entry
// that touches the device first makes the communicator's device current
// on the calling thread, since CUDA's current device is per thread and
// Go moves goroutines between threads.
#include "ln.h"
#include <string.h>

// keep copies dlerror's message, which the next dl call overwrites.
static void keep(char* buf, size_t cap, const char* msg) {
	if (!msg) msg = "unknown error";
	strncpy(buf, msg, cap - 1);
	buf[cap - 1] = 0;
}

#define SYM(h, field, name) \
	if (!(l->field = dlsym(h, name))) { *which = h == l->nccl ? 1 : 2; keep(err, cap, dlerror()); free(l); return NULL; }

static void* open_first(const char* path, const char* const* fallbacks, char* err, size_t cap) {
	if (path && path[0]) {
		void* h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
		if (!h) keep(err, cap, dlerror());
		return h;
	}
	for (int i = 0; fallbacks[i]; i++) {
		void* h = dlopen(fallbacks[i], RTLD_NOW | RTLD_GLOBAL);
		if (h) return h;
		const char* e = dlerror();
		if (i == 0) keep(err, cap, e); // the usual name's reason, not the last fallback's
	}
	return NULL;
}

// ln_open loads both libraries; on failure *which says which one (1:
// NCCL, 2: the CUDA runtime) and *err why.
lnLib* ln_open(const char* nccl, const char* cudart, int* which, char* err, size_t cap) {
	static const char* const ncclNames[] = {"libnccl.so.2", "libnccl.so", NULL};
	static const char* const cudartNames[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so", NULL};
	*which = 1;
	void* nc = open_first(nccl, ncclNames, err, cap);
	if (!nc) return NULL;
	*which = 2;
	void* cu = open_first(cudart, cudartNames, err, cap);
	if (!cu) return NULL;
	lnLib* l = calloc(1, sizeof(lnLib));
	if (!l) { keep(err, cap, "out of memory"); return NULL; }
	l->nccl = nc;
	l->cudart = cu;
	SYM(nc, GetVersion, "ncclGetVersion");
	SYM(nc, GetUniqueId, "ncclGetUniqueId");
	SYM(nc, CommInitRank, "ncclCommInitRank");
	SYM(nc, AllReduce, "ncclAllReduce");
	SYM(nc, CommDestroy, "ncclCommDestroy");
	SYM(nc, CommAbort, "ncclCommAbort");
	SYM(nc, CommGetAsyncError, "ncclCommGetAsyncError");
	SYM(nc, GetErrorString, "ncclGetErrorString");
	SYM(cu, SetDevice, "cudaSetDevice");
	SYM(cu, Malloc, "cudaMalloc");
	SYM(cu, Free, "cudaFree");
	SYM(cu, Memcpy, "cudaMemcpy");
	SYM(cu, StreamCreate, "cudaStreamCreate");
	SYM(cu, StreamDestroy, "cudaStreamDestroy");
	SYM(cu, StreamQuery, "cudaStreamQuery");
	SYM(cu, CudaErrorString, "cudaGetErrorString");
	return l;
}

const char* ln_error(lnLib* l, int status) {
	if (status > 0) return l->GetErrorString(status);
	if (status < 0) return l->CudaErrorString(-status);
	return "no error";
}

#define CU(call) do { int e_ = (call); if (e_) return -e_; } while (0)
#define NC(call) do { int e_ = (call); if (e_) return e_; } while (0)

int ln_version(lnLib* l, int* v) { return l->GetVersion(v); }

int ln_unique_id(lnLib* l, char* out) {
	lnUniqueId id;
	NC(l->GetUniqueId(&id));
	for (int i = 0; i < LN_UNIQUE_ID_BYTES; i++) out[i] = id.internal[i];
	return 0;
}

int ln_init(lnLib* l, lnComm* c, const char* id, int nranks, int rank, int dev) {
	lnUniqueId u;
	for (int i = 0; i < LN_UNIQUE_ID_BYTES; i++) u.internal[i] = id[i];
	c->dev = dev;
	CU(l->SetDevice(dev));
	CU(l->StreamCreate(&c->stream));
	return l->CommInitRank(&c->comm, nranks, u, rank);
}

// ln_start_host copies count elements of host memory to the device buffer
// and starts their in-place sum on the communicator's stream; ln_query
// reports when it is done and ln_fetch_host copies the sums back.
int ln_start_host(lnLib* l, lnComm* c, const void* host, size_t count, size_t elsize, int dtype) {
	size_t bytes = count * elsize;
	CU(l->SetDevice(c->dev));
	if (bytes > c->cap) {
		if (c->buf) CU(l->Free(c->buf));
		c->buf = NULL;
		c->cap = 0;
		CU(l->Malloc(&c->buf, bytes));
		c->cap = bytes;
	}
	// The legacy default stream orders this copy before the all-reduce on
	// c->stream (a blocking stream) and returns once the host memory is read.
	CU(l->Memcpy(c->buf, host, bytes, lnCudaMemcpyHostToDevice));
	return l->AllReduce(c->buf, c->buf, count, dtype, lnNcclSum, c->comm, c->stream);
}

// ln_query is 0 when the stream's work is done, LN_PENDING while it
// runs, or an error (an asynchronous NCCL error first).
int ln_query(lnLib* l, lnComm* c) {
	int async = 0;
	NC(l->CommGetAsyncError(c->comm, &async));
	if (async && async != lnNcclInProgress) return async;
	CU(l->SetDevice(c->dev));
	int st = l->StreamQuery(c->stream);
	if (st == lnCudaErrorNotReady) return LN_PENDING;
	return st ? -st : 0;
}

int ln_fetch_host(lnLib* l, lnComm* c, void* host, size_t bytes) {
	CU(l->SetDevice(c->dev));
	CU(l->Memcpy(host, c->buf, bytes, lnCudaMemcpyDeviceToHost));
	return 0;
}

// ln_allreduce takes device addresses as integers: they are not memory
// of the calling process's heap, and Go may not hold them as pointers.
int ln_allreduce(lnLib* l, lnComm* c, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op, uintptr_t stream) {
	CU(l->SetDevice(c->dev));
	return l->AllReduce((const void*)send, (void*)recv, count, dtype, op, c->comm, (void*)stream);
}

int ln_abort(lnLib* l, lnComm* c) {
	int st = c->comm ? l->CommAbort(c->comm) : 0;
	c->comm = NULL;
	return st;
}

int ln_destroy(lnLib* l, lnComm* c) {
	int st = 0;
	l->SetDevice(c->dev);
	if (c->comm) st = l->CommDestroy(c->comm);
	c->comm = NULL;
	if (c->buf) l->Free(c->buf);
	c->buf = NULL;
	c->cap = 0;
	if (c->stream) l->StreamDestroy(c->stream);
	c->stream = NULL;
	return st;
}
