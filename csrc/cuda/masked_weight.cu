// The two fused passes around the cuDNN convolution of a masked layer: W_eff = W * m before it,
// and the weight-gradient epilogue (grad_W and grad_logits from one read of G) after it.
#include "dtypes.cuh"

namespace dgm::cuda {
namespace {

// Rows over grid.y, columns over grid.x: consecutive threads touch consecutive entries of a row.
template <typename T, typename A>
__global__ void masked_weight_kernel(MaskedWeight<T> a, T* out) {
  for (int64_t r = blockIdx.y; r < a.rows; r += gridDim.y)
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < a.cols; c += int64_t(gridDim.x) * blockDim.x)
      masked_weight_at<A>(a, out, r, c);
}

template <typename T, typename A>
__global__ void masked_weight_grad_kernel(MaskedWeightGrad<T> a) {
  for (int64_t r = blockIdx.y; r < a.w.rows; r += gridDim.y)
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < a.w.cols;
         c += int64_t(gridDim.x) * blockDim.x)
      masked_weight_grad_at<A>(a, r, c);
}

dim3 grid_2d(int64_t rows, int64_t cols) {
  return dim3(grid_for(cols), static_cast<unsigned>(rows < 65535 ? rows : 65535));
}

}  // namespace

cudaError_t masked_weight(Dtype dtype, const MaskedWeight<void>& args, void* out, cudaStream_t stream) {
  if (args.rows * args.cols == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto t, auto acc) {
    using T = decltype(t);
    masked_weight_kernel<T, decltype(acc)><<<grid_2d(args.rows, args.cols), kThreads, 0, stream>>>(
        typed<T>(args), static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t masked_weight_grad(Dtype dtype, const MaskedWeightGrad<void>& args, cudaStream_t stream) {
  if (args.w.rows * args.w.cols == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto t, auto acc) {
    using T = decltype(t);
    masked_weight_grad_kernel<T, decltype(acc)><<<grid_2d(args.w.rows, args.w.cols), kThreads, 0, stream>>>(
        typed<T>(args));
    return cudaGetLastError();
  });
}

}  // namespace dgm::cuda
