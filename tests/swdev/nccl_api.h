// The part of NCCL 2.30's API that the NCCL stand-in (nccl.cpp) implements, shared with its
// self-test. Enum values and struct layouts follow cudarc 0.19.10's nccl/sys/mod.rs (feature
// nccl-02030); there is no nccl.h on the machines this is built on.
#pragma once
#include <cstddef>

extern "C" {

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError = 1,
    ncclSystemError = 2,
    ncclInternalError = 3,
    ncclInvalidArgument = 4,
    ncclInvalidUsage = 5,
    ncclRemoteError = 6,
    ncclInProgress = 7,
    ncclTimeout = 8,
    ncclNumResults = 9,
} ncclResult_t;

typedef enum {
    ncclInt8 = 0,
    ncclUint8 = 1,
    ncclInt32 = 2,
    ncclUint32 = 3,
    ncclInt64 = 4,
    ncclUint64 = 5,
    ncclFloat16 = 6,
    ncclFloat32 = 7,
    ncclFloat64 = 8,
    ncclBfloat16 = 9,
    ncclFloat8e4m3 = 10,
    ncclFloat8e5m2 = 11,
    ncclNumTypes = 12,
} ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4, ncclNumOps = 5 } ncclRedOp_t;

typedef struct {
    char internal[128];
} ncclUniqueId;

typedef struct ncclComm* ncclComm_t;
typedef struct CUstream_st* cudaStream_t;
// ncclConfig_t is only passed through (its fields are not read), so it stays opaque here.
typedef struct ncclConfig_v22800 ncclConfig_t;

#define SWNCCL_API __attribute__((visibility("default")))

SWNCCL_API ncclResult_t ncclGetVersion(int* version);
SWNCCL_API ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
SWNCCL_API ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
SWNCCL_API ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config);
SWNCCL_API ncclResult_t ncclCommFinalize(ncclComm_t comm);
SWNCCL_API ncclResult_t ncclCommDestroy(ncclComm_t comm);
SWNCCL_API ncclResult_t ncclCommAbort(ncclComm_t comm);
SWNCCL_API ncclResult_t ncclCommCount(const ncclComm_t comm, int* count);
SWNCCL_API ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device);
SWNCCL_API ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank);
SWNCCL_API ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error);
SWNCCL_API const char* ncclGetErrorString(ncclResult_t result);
SWNCCL_API const char* ncclGetLastError(ncclComm_t comm);
SWNCCL_API ncclResult_t ncclGroupStart();
SWNCCL_API ncclResult_t ncclGroupEnd();
SWNCCL_API ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                                      ncclComm_t comm, cudaStream_t stream);
SWNCCL_API ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype, ncclRedOp_t op,
                                          ncclComm_t comm, cudaStream_t stream);
SWNCCL_API ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype, ncclComm_t comm,
                                      cudaStream_t stream);
SWNCCL_API ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                                      cudaStream_t stream);
SWNCCL_API ncclResult_t ncclBcast(void* buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream);
SWNCCL_API ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op, int root,
                                   ncclComm_t comm, cudaStream_t stream);
SWNCCL_API ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream);
SWNCCL_API ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm, cudaStream_t stream);
}
