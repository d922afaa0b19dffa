// Launchers of the CUDA kernels: plain C++ on raw pointers and a stream, so the .cu files need no
// torch headers (they compile in about a second each) and cuda/glue.cpp does the tensor side.
// Each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../elementwise.h"

namespace dgm::cuda {

// Floating storage types a launcher accepts; glue.cpp maps torch dtypes onto these.
enum class Dtype : int { Float32, Float64, Float16, BFloat16 };

cudaError_t pack_bits(const bool* mask, uint8_t* bits, int64_t rows, int64_t cols, cudaStream_t stream);
cudaError_t unpack_bits(const uint8_t* bits, bool* mask, int64_t rows, int64_t cols, cudaStream_t stream);
// Adds the number of set bits of bits[0:n] to *count (zeroed by the caller).
cudaError_t popcount(const uint8_t* bits, int64_t n, unsigned long long* count, cudaStream_t stream);

// The pointers inside `MaskedWeight` / `MaskedWeightGrad` are device pointers of storage type `dtype`.
cudaError_t masked_weight(Dtype dtype, const MaskedWeight<void>& args, void* out, cudaStream_t stream);
cudaError_t masked_weight_grad(Dtype dtype, const MaskedWeightGrad<void>& args, cudaStream_t stream);

// One parameter of a multi-tensor Adam step, with its group's hyper-parameters.
struct AdamTensor {
  void* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  const uint8_t* reserved;  // packed bits of the parameter as (shape[0], rest), or null
  const double* step;       // its step count (this step included), in device memory
  int64_t numel, cols, nbytes;
  AdamScalars h;
  double lr, beta1, beta2;
  int64_t first_block;      // blocks [first_block, next tensor's first_block) update this tensor
};

// Number of entries one block updates; the host sizes `first_block` with it.
constexpr int64_t kAdamChunk = 4096;
constexpr int kAdamTensorsPerLaunch = 24;

// The tensors of one launch, passed by value as the kernel's argument (as torch's
// multi_tensor_apply passes its pointers): no step allocates a table or copies one to the
// device, and a captured launch keeps its own. Kernel arguments may take 4 KiB.
struct AdamLaunch {
  AdamTensor tensors[kAdamTensorsPerLaunch];
  int count;
};
static_assert(sizeof(AdamLaunch) <= 4096, "AdamLaunch must fit the 4 KiB of kernel arguments");

// One launch updates the `launch.count` tensors of `launch`, `blocks` in all.
cudaError_t frozen_adam(Dtype dtype, const AdamLaunch& launch, int64_t blocks, cudaStream_t stream);

}  // namespace dgm::cuda
