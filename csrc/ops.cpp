// The extension's ops: their schemas (torch.ops.dgm.*, visible to torch.compile), the CPU
// implementations, and the Python module dgm._C whose import registers them (import torch first).
// The CUDA implementations are in cuda/glue.cpp; both share tensor_args.h and elementwise.h.
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "tensor_args.h"

namespace dgm {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Rows per parallel chunk so a chunk holds about 32k entries.
int64_t row_grain(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)); }

at::Tensor pack_bits(const at::Tensor& mask_in) {
  const at::Tensor mask = checked_mask(mask_in);
  auto [rows, cols] = matrix_shape(mask);
  const int64_t nbytes = packed_cols(cols);
  at::Tensor bits = at::empty({rows, nbytes}, mask.options().dtype(at::kByte));
  const bool* src = mask.data_ptr<bool>();
  uint8_t* dst = bits.data_ptr<uint8_t>();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t b = 0; b < nbytes; ++b) dst[r * nbytes + b] = pack_byte(src + r * cols, cols, b);
  });
  return bits;
}

at::Tensor unpack_bits(const at::Tensor& bits_in, at::IntArrayRef shape) {
  auto [bits, cols] = checked_unpack(bits_in, shape);
  at::Tensor mask = at::empty(shape, bits.options().dtype(at::kBool));
  const int64_t rows = shape[0], nbytes = packed_cols(cols);
  const uint8_t* src = bits.data_ptr<uint8_t>();
  bool* dst = mask.data_ptr<bool>();
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = bit_at(src + r * nbytes, c);
  });
  return mask;
}

at::Tensor popcount(const at::Tensor& bits_in) {
  const at::Tensor bits = checked_popcount(bits_in);
  const uint8_t* p = bits.data_ptr<uint8_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < bits.numel(); ++i) n += __builtin_popcount(p[i]);
  at::Tensor out = at::empty({}, bits.options().dtype(at::kLong));
  *out.data_ptr<int64_t>() = n;
  return out;
}

void masked_weight_cpu(const MaskedWeightInputs& in, const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "masked_weight", [&] {
    const MaskedWeight<scalar_t> a = typed<scalar_t>(in.args);
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, a.rows, row_grain(a.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < a.cols; ++c) masked_weight_at<acc_t<scalar_t>>(a, dst, r, c);
    });
  });
}

void masked_weight_backward_cpu(const MaskedWeightGradInputs& in) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.w.weight.scalar_type(), "masked_weight_backward", [&] {
    const MaskedWeightGrad<scalar_t> a = typed<scalar_t>(in.args);
    at::parallel_for(0, a.w.rows, row_grain(a.w.cols), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < a.w.cols; ++c) masked_weight_grad_at<acc_t<scalar_t>>(a, r, c);
    });
  });
}

void frozen_adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 const c10::List<std::optional<at::Tensor>>& reserved, at::TensorList steps, at::ArrayRef<double> lrs,
                 at::ArrayRef<double> beta1s, at::ArrayRef<double> beta2s, at::ArrayRef<double> epss,
                 at::ArrayRef<double> weight_decays, const c10::List<bool>& decoupled) {
  const std::vector<AdamParam> ps = adam_inputs(params, grads, exp_avgs, exp_avg_sqs, reserved, steps, lrs, beta1s,
                                                beta2s, epss, weight_decays, decoupled);
  for (size_t t = 0; t < ps.size(); ++t) {
    const AdamParam& a = ps[t];
    const int64_t numel = a.param.numel();
    const int64_t cols = a.param.dim() ? matrix_shape(a.param).second : 1;
    const uint8_t* res = a.reserved.defined() ? a.reserved.data_ptr<uint8_t>() : nullptr;
    const AdamCorrections c = adam_corrections(*a.step.data_ptr<double>(), a.lr, a.beta1, a.beta2);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.param.scalar_type(), "frozen_adam_", [&] {
      using A = acc_t<scalar_t>;
      scalar_t* p = a.param.data_ptr<scalar_t>();
      const scalar_t* g = a.grad.data_ptr<scalar_t>();
      scalar_t* m = a.exp_avg.data_ptr<scalar_t>();
      scalar_t* v = a.exp_avg_sq.data_ptr<scalar_t>();
      const A neg_step_size = A(c.neg_step_size), bc2_sqrt = A(c.bias_correction2_sqrt);
      const int64_t nbytes = packed_cols(cols);
      auto free = [&](int64_t i) { return !res || !bit_at(res + (i / cols) * nbytes, i % cols); };
      at::parallel_for(0, numel, 32768, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          if (!free(i)) continue;
          A pi = A(p[i]), mi = A(m[i]), vi = A(v[i]);
          adam_moments_at<A>(pi, A(g[i]), mi, vi, a.h);
          p[i] = scalar_t(pi);
          m[i] = scalar_t(mi);
          v[i] = scalar_t(vi);
        }
      });
      // ATen's square root, rounded as torch.optim.Adam's exp_avg_sq.sqrt() (see adam_update_at).
      const at::Tensor root_t = a.exp_avg_sq.sqrt();
      const scalar_t* root = root_t.data_ptr<scalar_t>();
      at::parallel_for(0, numel, 32768, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          if (!free(i)) continue;
          A pi = A(p[i]);
          adam_update_at<A>(pi, A(m[i]), A(root[i]), a.h, neg_step_size, bc2_sqrt);
          p[i] = scalar_t(pi);
        }
      });
    });
  }
}

}  // namespace
}  // namespace dgm

TORCH_LIBRARY(dgm, m) {
  m.def("pack_bits(Tensor mask) -> Tensor");
  m.def("unpack_bits(Tensor bits, int[] shape) -> Tensor");
  m.def("popcount(Tensor bits) -> Tensor");
  m.def("masked_weight(Tensor weight, Tensor? logits, Tensor? s, Tensor? bits) -> Tensor");
  m.def("masked_weight_backward(Tensor grad, Tensor weight, Tensor? logits, Tensor? s, Tensor? bits, "
        "Tensor? frozen_bits, Tensor? frozen_out, Tensor? frozen_in, int out_dim, bool weight_grad, "
        "bool logits_grad) -> (Tensor, Tensor)");
  m.def("frozen_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
        "Tensor?[] reserved, Tensor[] steps, float[] lrs, float[] beta1s, float[] beta2s, float[] epss, "
        "float[] weight_decays, bool[] decoupled) -> ()");
}

TORCH_LIBRARY_IMPL(dgm, CPU, m) {
  m.impl("pack_bits", dgm::pack_bits);
  m.impl("unpack_bits", dgm::unpack_bits);
  m.impl("popcount", dgm::popcount);
  m.impl("masked_weight", &dgm::masked_weight_op<dgm::masked_weight_cpu>);
  m.impl("masked_weight_backward", &dgm::masked_weight_backward_op<dgm::masked_weight_backward_cpu>);
  m.impl("frozen_adam_", dgm::frozen_adam);
}

#ifdef DGM_WITH_CUDA
constexpr int kWithCuda = 1;
#else
constexpr int kWithCuda = 0;
#endif

static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                 "dgm's C++/CUDA ops; importing it registers torch.ops.dgm.*", -1, nullptr};

PyMODINIT_FUNC PyInit__C() {
  PyObject* module = PyModule_Create(&module_def);
  if (module && PyModule_AddIntConstant(module, "WITH_CUDA", kWithCuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
