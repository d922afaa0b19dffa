// Multi-tensor Adam / AdamW step that skips reserved entries: one launch for up to
// kAdamTensorsPerLaunch parameters of any groups; an entry whose reserved bit is set keeps its
// value, exp_avg and exp_avg_sq untouched. Each block computes its tensor's bias corrections from
// the step count in device memory.
#include "dtypes.cuh"

// The launch's table is read where the kernel argument lives, without a per-thread copy.
#if defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 7))
#define DGM_GRID_CONSTANT __grid_constant__
#else
#define DGM_GRID_CONSTANT
#endif

namespace dgm::cuda {
namespace {

template <typename T, typename A>
__global__ void frozen_adam_kernel(const DGM_GRID_CONSTANT AdamLaunch launch) {
  const int64_t block = blockIdx.x;
  int lo = 0, hi = launch.count - 1;  // the last tensor whose first block is <= this block
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (launch.tensors[mid].first_block <= block) lo = mid;
    else hi = mid - 1;
  }
  const AdamTensor& t = launch.tensors[lo];
  const int64_t start = (block - t.first_block) * kAdamChunk;
  const int64_t end = start + kAdamChunk < t.numel ? start + kAdamChunk : t.numel;
  T* param = static_cast<T*>(t.param);
  const T* grad = static_cast<const T*>(t.grad);
  T* exp_avg = static_cast<T*>(t.exp_avg);
  T* exp_avg_sq = static_cast<T*>(t.exp_avg_sq);
  const AdamCorrections c = adam_corrections(*t.step, t.lr, t.beta1, t.beta2);
  const A neg_step_size = A(c.neg_step_size), bc2_sqrt = A(c.bias_correction2_sqrt);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    if (t.reserved) {
      const int64_t r = i / t.cols;
      if (bit_at(t.reserved + r * t.nbytes, i - r * t.cols)) continue;
    }
    A p = to_acc<A>(param[i]), m = to_acc<A>(exp_avg[i]), v = to_acc<A>(exp_avg_sq[i]);
    adam_at<A>(p, to_acc<A>(grad[i]), m, v, t.h, neg_step_size, bc2_sqrt);
    param[i] = from_acc<T>(p);
    exp_avg[i] = from_acc<T>(m);
    exp_avg_sq[i] = from_acc<T>(v);
  }
}

}  // namespace

cudaError_t frozen_adam(Dtype dtype, const AdamLaunch& launch, int64_t blocks, cudaStream_t stream) {
  if (blocks == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto t, auto acc) {
    frozen_adam_kernel<decltype(t), decltype(acc)><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(launch);
    return cudaGetLastError();
  });
}

}  // namespace dgm::cuda
