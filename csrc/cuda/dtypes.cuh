// CUDA side of the storage types: conversions of the 16-bit floats (torch builds with their
// implicit conversions switched off) and the dtype switch every launcher uses.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launch.h"

namespace dgm {

template <>
__host__ __device__ __forceinline__ float to_acc<float, __half>(__half x) { return __half2float(x); }
template <>
__host__ __device__ __forceinline__ __half from_acc<__half, float>(float x) { return __float2half_rn(x); }
template <>
__host__ __device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}

namespace cuda {

// Calls f(T{}, A{}) with the storage type T of `dtype` and its math type A.
template <typename F>
cudaError_t dispatch(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::Float32: return f(float{}, float{});
    case Dtype::Float64: return f(double{}, double{});
    case Dtype::Float16: return f(__half{}, float{});
    case Dtype::BFloat16: return f(__nv_bfloat16{}, float{});
  }
  return cudaErrorInvalidValue;
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n items.
inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
}

}  // namespace cuda
}  // namespace dgm
