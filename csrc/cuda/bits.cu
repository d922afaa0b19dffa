// Packed bit-mask kernels (layout of dgm/bits.py).
#include "dtypes.cuh"

namespace dgm::cuda {
namespace {

__global__ void pack_kernel(const bool* mask, uint8_t* bits, int64_t rows, int64_t cols, int64_t nbytes) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * nbytes;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / nbytes;
    bits[i] = pack_byte(mask + r * cols, cols, i - r * nbytes);
  }
}

__global__ void unpack_kernel(const uint8_t* bits, bool* mask, int64_t rows, int64_t cols, int64_t nbytes) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * cols;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    mask[i] = bit_at(bits + r * nbytes, i - r * cols);
  }
}

__global__ void popcount_kernel(const uint8_t* bits, int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    local += __popc(bits[i]);
  for (int offset = 16; offset > 0; offset /= 2) local += __shfl_down_sync(0xffffffffu, local, offset);
  if ((threadIdx.x & 31) == 0 && local) atomicAdd(count, local);
}

}  // namespace

cudaError_t pack_bits(const bool* mask, uint8_t* bits, int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t nbytes = (cols + 7) / 8;
  if (rows * nbytes == 0) return cudaSuccess;
  pack_kernel<<<grid_for(rows * nbytes), kThreads, 0, stream>>>(mask, bits, rows, cols, nbytes);
  return cudaGetLastError();
}

cudaError_t unpack_bits(const uint8_t* bits, bool* mask, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  unpack_kernel<<<grid_for(rows * cols), kThreads, 0, stream>>>(bits, mask, rows, cols, (cols + 7) / 8);
  return cudaGetLastError();
}

cudaError_t popcount(const uint8_t* bits, int64_t n, unsigned long long* count, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  popcount_kernel<<<grid_for(n), kThreads, 0, stream>>>(bits, n, count);
  return cudaGetLastError();
}

}  // namespace dgm::cuda
