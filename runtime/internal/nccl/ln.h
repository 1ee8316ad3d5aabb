// ln.h: loracc's own declarations of the NCCL and CUDA runtime entries it
// calls (nccl.go says why there is no header). Types are spelled by their
// ABI: ncclResult_t, ncclDataType_t, ncclRedOp_t and cudaError_t are C
// enums (int), ncclComm_t and cudaStream_t pointers, ncclUniqueId a
// struct of 128 bytes passed by value.
#ifndef LORACC_LN_H
#define LORACC_LN_H
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define LN_UNIQUE_ID_BYTES 128 // NCCL_UNIQUE_ID_BYTES
typedef struct { char internal[LN_UNIQUE_ID_BYTES]; } lnUniqueId;

// Values from NCCL's nccl.h and CUDA's driver_types.h.
enum {
	lnNcclSum = 0,                                     // ncclRedOp_t ncclSum
	lnCudaMemcpyHostToDevice = 1, lnCudaMemcpyDeviceToHost = 2, // cudaMemcpyKind
	lnCudaErrorNotReady = 600,                         // cudaError_t: work still pending
	lnNcclInProgress = 7,                              // ncclResult_t ncclInProgress
};

typedef struct {
	void* nccl;
	void* cudart;
	// NCCL
	int (*GetVersion)(int*);
	int (*GetUniqueId)(lnUniqueId*);
	int (*CommInitRank)(void**, int, lnUniqueId, int);
	int (*AllReduce)(const void*, void*, size_t, int, int, void*, void*);
	int (*CommDestroy)(void*);
	int (*CommAbort)(void*);
	int (*CommGetAsyncError)(void*, int*);
	const char* (*GetErrorString)(int);
	// CUDA runtime
	int (*SetDevice)(int);
	int (*Malloc)(void**, size_t);
	int (*Free)(void*);
	int (*Memcpy)(void*, const void*, size_t, int);
	int (*StreamCreate)(void**);
	int (*StreamDestroy)(void*);
	int (*StreamQuery)(void*);
	const char* (*CudaErrorString)(int);
} lnLib;

// A communicator with its device, its own stream and a device buffer for
// all-reduces of host memory.
typedef struct {
	void* comm;
	void* stream;
	void* buf;
	size_t cap;
	int dev;
} lnComm;

// Status codes of the ln_ functions: 0 success, > 0 an ncclResult_t,
// < 0 minus a cudaError_t; ln_query's LN_PENDING: still running.
#define LN_PENDING (1 << 20)
lnLib* ln_open(const char* nccl, const char* cudart, int* which, char* err, size_t cap);
const char* ln_error(lnLib* l, int status);
int ln_version(lnLib* l, int* v);
int ln_unique_id(lnLib* l, char* out);
int ln_init(lnLib* l, lnComm* c, const char* id, int nranks, int rank, int dev);
int ln_start_host(lnLib* l, lnComm* c, const void* host, size_t count, size_t elsize, int dtype);
int ln_query(lnLib* l, lnComm* c);
int ln_fetch_host(lnLib* l, lnComm* c, void* host, size_t bytes);
int ln_allreduce(lnLib* l, lnComm* c, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op, uintptr_t stream);
int ln_abort(lnLib* l, lnComm* c);
int ln_destroy(lnLib* l, lnComm* c);
#endif
