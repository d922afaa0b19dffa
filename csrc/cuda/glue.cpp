// CUDA implementations of the ops declared in ops.cpp: checks (tensor_args.h), output allocation,
// device guard and stream, then the raw-pointer launchers of launch.h. Compiled in CUDA builds only.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../tensor_args.h"
#include "launch.h"

namespace dgm::cuda {
namespace {

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float32;
    case at::kDouble: return Dtype::Float64;
    case at::kHalf: return Dtype::Float16;
    case at::kBFloat16: return Dtype::BFloat16;
    default: TORCH_CHECK(false, "dgm CUDA ops: unsupported dtype ", t.scalar_type());
  }
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor pack_bits_cuda(const at::Tensor& mask_in) {
  const at::Tensor mask = checked_mask(mask_in);
  c10::cuda::CUDAGuard guard(mask.device());
  auto [rows, cols] = matrix_shape(mask);
  at::Tensor bits = at::empty({rows, packed_cols(cols)}, mask.options().dtype(at::kByte));
  C10_CUDA_CHECK(pack_bits(mask.data_ptr<bool>(), bits.data_ptr<uint8_t>(), rows, cols, stream()));
  return bits;
}

at::Tensor unpack_bits_cuda(const at::Tensor& bits_in, at::IntArrayRef shape) {
  auto [bits, cols] = checked_unpack(bits_in, shape);
  c10::cuda::CUDAGuard guard(bits.device());
  at::Tensor mask = at::empty(shape, bits.options().dtype(at::kBool));
  C10_CUDA_CHECK(unpack_bits(bits.data_ptr<uint8_t>(), mask.data_ptr<bool>(), shape[0], cols, stream()));
  return mask;
}

at::Tensor popcount_cuda(const at::Tensor& bits_in) {
  const at::Tensor bits = checked_popcount(bits_in);
  c10::cuda::CUDAGuard guard(bits.device());
  at::Tensor count = at::zeros({}, bits.options().dtype(at::kLong));
  C10_CUDA_CHECK(popcount(bits.data_ptr<uint8_t>(), bits.numel(),
                          reinterpret_cast<unsigned long long*>(count.data_ptr<int64_t>()), stream()));
  return count;
}

void masked_weight_cuda(const MaskedWeightInputs& in, const at::Tensor& out) {
  c10::cuda::CUDAGuard guard(out.device());
  C10_CUDA_CHECK(masked_weight(dtype_of(out), in.args, out.data_ptr(), stream()));
}

void masked_weight_backward_cuda(const MaskedWeightGradInputs& in) {
  c10::cuda::CUDAGuard guard(in.grad.device());
  C10_CUDA_CHECK(masked_weight_grad(dtype_of(in.grad), in.args, stream()));
}

void frozen_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, const c10::List<std::optional<at::Tensor>>& reserved,
                      at::TensorList steps, at::ArrayRef<double> lrs, at::ArrayRef<double> beta1s,
                      at::ArrayRef<double> beta2s, at::ArrayRef<double> epss, at::ArrayRef<double> weight_decays,
                      const c10::List<bool>& decoupled) {
  const std::vector<AdamParam> ps = adam_inputs(params, grads, exp_avgs, exp_avg_sqs, reserved, steps, lrs, beta1s,
                                                beta2s, epss, weight_decays, decoupled);
  if (ps.empty()) return;
  c10::cuda::CUDAGuard guard(ps[0].param.device());
  // The table rides in the kernel's arguments, kAdamTensorsPerLaunch tensors a launch.
  for (size_t first = 0; first < ps.size(); first += kAdamTensorsPerLaunch) {
    AdamLaunch launch{};
    int64_t blocks = 0;
    for (size_t i = first; i < ps.size() && launch.count < kAdamTensorsPerLaunch; ++i) {
      const AdamParam& a = ps[i];
      const int64_t numel = a.param.numel();
      const int64_t cols = a.param.dim() ? matrix_shape(a.param).second : 1;
      launch.tensors[launch.count++] = {a.param.data_ptr(), a.grad.data_ptr(), a.exp_avg.data_ptr(),
                                        a.exp_avg_sq.data_ptr(),
                                        a.reserved.defined() ? a.reserved.data_ptr<uint8_t>() : nullptr,
                                        a.step.data_ptr<double>(), numel, cols, packed_cols(cols), a.h, a.lr,
                                        a.beta1, a.beta2, blocks};
      blocks += (numel + kAdamChunk - 1) / kAdamChunk;
    }
    C10_CUDA_CHECK(frozen_adam(dtype_of(ps[0].param), launch, blocks, stream()));
  }
}

}  // namespace
}  // namespace dgm::cuda

TORCH_LIBRARY_IMPL(dgm, CUDA, m) {
  m.impl("pack_bits", dgm::cuda::pack_bits_cuda);
  m.impl("unpack_bits", dgm::cuda::unpack_bits_cuda);
  m.impl("popcount", dgm::cuda::popcount_cuda);
  m.impl("masked_weight", &dgm::masked_weight_op<dgm::cuda::masked_weight_cuda>);
  m.impl("masked_weight_backward", &dgm::masked_weight_backward_op<dgm::cuda::masked_weight_backward_cuda>);
  m.impl("frozen_adam_", dgm::cuda::frozen_adam_cuda);
}
