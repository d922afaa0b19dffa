// Multi-tensor Adam / AdamW step that skips reserved entries: one launch for up to
// kAdamTensorsPerLaunch parameters of any groups; an entry whose reserved bit is set keeps its
// value, exp_avg and exp_avg_sq untouched. Each block computes its tensor's bias corrections from
// the step count in device memory.
//
// A thread updates runs of kVec consecutive entries (16 bytes of each of the four tensors), with
// 128-bit loads and stores where all four are 16-byte aligned (a block's chunk starts at a
// multiple of kAdamChunk entries, so that holds for every run of a tensor whose storage is) and
// entry by entry at the tensor's end. The reserved bits are addressed by (row, column), which a
// thread advances by constant steps: no division per entry.
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

// 16 bytes of entries of storage type T: one 128-bit load or store.
template <typename T>
struct alignas(16) Run {
  static constexpr int kVec = 16 / sizeof(T);
  T v[kVec];
};

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename T, typename A>
__global__ void frozen_adam_kernel(const DGM_GRID_CONSTANT AdamLaunch launch) {
  constexpr int kVec = Run<T>::kVec;
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
  const bool vector = aligned16(param) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq);
  const AdamCorrections c = adam_corrections(*t.step, t.lr, t.beta1, t.beta2);
  const A neg_step_size = A(c.neg_step_size), bc2_sqrt = A(c.bias_correction2_sqrt);

  const int64_t stride = int64_t(blockDim.x) * kVec;
  int64_t i = start + int64_t(threadIdx.x) * kVec;
  // Row and column of entry i, and the steps they take per `stride` entries (divisions once per thread).
  int64_t row = 0, col = 0, row_step = 0, col_step = 0;
  if (t.reserved) {
    row = i / t.cols;
    col = i - row * t.cols;
    row_step = stride / t.cols;
    col_step = stride - row_step * t.cols;
  }
  for (; i < end; i += stride) {
    const int n = end - i < kVec ? static_cast<int>(end - i) : kVec;
    Run<T> p, g, m, v;
    if (vector && n == kVec) {
      p = *reinterpret_cast<const Run<T>*>(param + i);
      g = *reinterpret_cast<const Run<T>*>(grad + i);
      m = *reinterpret_cast<const Run<T>*>(exp_avg + i);
      v = *reinterpret_cast<const Run<T>*>(exp_avg_sq + i);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (k < n) p.v[k] = param[i + k], g.v[k] = grad[i + k], m.v[k] = exp_avg[i + k], v.v[k] = exp_avg_sq[i + k];
      }
    }
    bool keep[kVec] = {};
    if (t.reserved) {
      int64_t r = row, cc = col;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        keep[k] = k < n && bit_at(t.reserved + r * t.nbytes, cc);
        if (++cc == t.cols) cc = 0, ++r;
      }
      row += row_step;
      col += col_step;
      if (col >= t.cols) col -= t.cols, ++row;
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (k >= n || keep[k]) continue;  // a reserved entry is stored back as it was read
      A pk = to_acc<A>(p.v[k]), mk = to_acc<A>(m.v[k]), vk = to_acc<A>(v.v[k]);
      adam_moments_at<A>(pk, to_acc<A>(g.v[k]), mk, vk, t.h);
      adam_update_at<A>(pk, mk, sqrt_(vk), t.h, neg_step_size, bc2_sqrt);
      p.v[k] = from_acc<T>(pk);
      m.v[k] = from_acc<T>(mk);
      v.v[k] = from_acc<T>(vk);
    }
    if (vector && n == kVec) {
      *reinterpret_cast<Run<T>*>(param + i) = p;
      *reinterpret_cast<Run<T>*>(exp_avg + i) = m;
      *reinterpret_cast<Run<T>*>(exp_avg_sq + i) = v;
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        if (k >= n || keep[k]) continue;
        param[i + k] = p.v[k], exp_avg[i + k] = m.v[k], exp_avg_sq[i + k] = v.v[k];
      }
    }
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
