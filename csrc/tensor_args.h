// Argument checks and raw-pointer views shared by the CPU ops (ops.cpp) and the CUDA glue
// (cuda/glue.cpp): both validate the same way and hand the same structs to their loops. The
// masked-weight ops are written once here, as templates over the device's compute step.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>
#include <vector>

#include "elementwise.h"

namespace dgm {

inline int64_t packed_cols(int64_t cols) { return (cols + 7) / 8; }

// (rows, cols) of a tensor viewed as 2-D with rows = dim 0 (the packed-bit layout).
inline std::pair<int64_t, int64_t> matrix_shape(const at::Tensor& t) {
  const int64_t rows = t.size(0);
  int64_t cols = 1;
  for (int64_t d = 1; d < t.dim(); ++d) cols *= t.size(d);
  return {rows, cols};
}

// `t` if it is a row-strided matrix (dims 1.. contiguous among themselves, any stride for dim 0:
// the views storage[:a, :b] a grown layer uses), else a contiguous copy.
inline at::Tensor row_strided(const at::Tensor& t) {
  int64_t expected = 1;
  for (int64_t d = t.dim() - 1; d >= 1; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return t.contiguous();
    expected *= t.size(d);
  }
  return t;
}

inline int64_t row_stride(const at::Tensor& t) {
  return t.size(0) > 1 ? t.stride(0) : matrix_shape(t).second;
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kHalf ||
                  t.scalar_type() == at::kBFloat16,
              op, ": ", name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but the weight is on ",
              ref.device());
}

// Packed bits of a mask of `like`'s shape: uint8 [rows, ceil(cols / 8)] on `like`'s device,
// row-strided as they come (a layer's reserved bits are a view of the storage's), else a copy.
inline at::Tensor checked_bits(const at::Tensor& bits, const at::Tensor& like, const char* op, const char* name) {
  auto [rows, cols] = matrix_shape(like);
  TORCH_CHECK(bits.scalar_type() == at::kByte, op, ": ", name, " must be packed uint8 bits, got ",
              bits.scalar_type());
  TORCH_CHECK(bits.dim() == 2 && bits.size(0) == rows && bits.size(1) == packed_cols(cols), op, ": ", name,
              " of shape ", bits.sizes(), " do not pack a mask of shape ", like.sizes(), "; expected (", rows, ", ",
              packed_cols(cols), ")");
  check_device(bits, like, op, name);
  return row_strided(bits);
}

// A bool (or uint8 0/1) per unit, `size` of them.
inline at::Tensor checked_flags(const at::Tensor& flags, int64_t size, const at::Tensor& like, const char* op,
                                const char* name) {
  TORCH_CHECK(flags.scalar_type() == at::kBool || flags.scalar_type() == at::kByte, op, ": ", name,
              " must be a bool tensor, got ", flags.scalar_type());
  TORCH_CHECK(flags.dim() == 1 && flags.size(0) == size, op, ": ", name, " must have shape (", size, "), got ",
              flags.sizes());
  check_device(flags, like, op, name);
  return flags.contiguous();
}

// Checks of the bit ops' inputs; each returns what the op needs, contiguous.
inline at::Tensor checked_mask(const at::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, "pack: mask must be a bool tensor, got dtype ", mask.scalar_type());
  TORCH_CHECK(mask.dim() >= 1, "pack: mask must have at least one dimension (rows)");
  return mask.contiguous();
}

// `bits` packing a mask of `shape`; returns (bits, cols).
inline std::pair<at::Tensor, int64_t> checked_unpack(const at::Tensor& bits, at::IntArrayRef shape) {
  TORCH_CHECK(bits.scalar_type() == at::kByte, "unpack: bits must be uint8, got dtype ", bits.scalar_type());
  TORCH_CHECK(!shape.empty(), "unpack: shape must have at least one dimension (rows)");
  int64_t cols = 1;
  for (size_t d = 1; d < shape.size(); ++d) {
    TORCH_CHECK(shape[d] >= 0, "unpack: shape must be non-negative, got ", shape);
    cols *= shape[d];
  }
  TORCH_CHECK(bits.dim() == 2 && bits.size(0) == shape[0] && bits.size(1) == packed_cols(cols),
              "unpack: bits of shape ", bits.sizes(), " do not hold a mask of shape ", shape, "; expected (",
              shape[0], ", ", packed_cols(cols), ")");
  return {bits.contiguous(), cols};
}

inline at::Tensor checked_popcount(const at::Tensor& bits) {
  TORCH_CHECK(bits.scalar_type() == at::kByte, "popcount: bits must be uint8, got dtype ", bits.scalar_type());
  return bits.contiguous();
}

// The weight and its mask, checked, with the tensors the pointers of `args` point into.
struct MaskedWeightInputs {
  at::Tensor weight, logits, bits, s;
  MaskedWeight<void> args;
};

inline MaskedWeightInputs masked_weight_inputs(const at::Tensor& weight_in, const std::optional<at::Tensor>& logits_in,
                                               const std::optional<at::Tensor>& s_in,
                                               const std::optional<at::Tensor>& bits_in, const char* op) {
  check_floating(weight_in, op, "weight");
  TORCH_CHECK(weight_in.dim() >= 1, op, ": weight must have at least one dimension");
  TORCH_CHECK(!(logits_in && bits_in), op, ": give the soft mask (logits) or the binary mask (bits), not both");
  MaskedWeightInputs in;
  in.weight = row_strided(weight_in);
  auto [rows, cols] = matrix_shape(in.weight);
  in.args = {in.weight.data_ptr(), row_stride(in.weight), nullptr, 0, nullptr, 0, nullptr, false, rows, cols,
             packed_cols(cols)};
  if (logits_in) {
    TORCH_CHECK(logits_in->sizes() == weight_in.sizes(), op, ": logits of shape ", logits_in->sizes(),
                " do not match the weight's ", weight_in.sizes());
    TORCH_CHECK(logits_in->scalar_type() == weight_in.scalar_type(), op, ": logits dtype ",
                logits_in->scalar_type(), " does not match the weight's ", weight_in.scalar_type());
    check_device(*logits_in, weight_in, op, "logits");
    const bool s_double = weight_in.scalar_type() == at::kDouble;
    TORCH_CHECK(s_in && s_in->dim() == 0 && s_in->scalar_type() == (s_double ? at::kDouble : at::kFloat), op,
                ": the soft mask needs the sharpness s as a 0-d tensor, float64 for float64 weights, else float32");
    check_device(*s_in, weight_in, op, "s");
    in.logits = row_strided(*logits_in);
    in.args.logits = in.logits.data_ptr();
    in.args.ldl = row_stride(in.logits);
    in.s = *s_in;
    in.args.s = in.s.data_ptr();
    in.args.s_double = s_double;
  }
  if (bits_in) {
    in.bits = checked_bits(*bits_in, weight_in, op, "bits");
    in.args.bits = in.bits.data_ptr<uint8_t>();
    in.args.ldb = row_stride(in.bits);
  }
  return in;
}

// Everything the gradient epilogue reads, with the outputs its pointers write.
struct MaskedWeightGradInputs {
  MaskedWeightInputs w;
  at::Tensor grad, frozen_bits, row_flags, col_flags, grad_weight, grad_logits;
  MaskedWeightGrad<void> args;
};

// The op masked_weight on one device: checks and output allocation as every device has them;
// `Fill(in, out)` writes the masked weight into the contiguous `out`.
template <void (*Fill)(const MaskedWeightInputs&, const at::Tensor&)>
at::Tensor masked_weight_op(const at::Tensor& weight, const std::optional<at::Tensor>& logits,
                            const std::optional<at::Tensor>& s, const std::optional<at::Tensor>& bits) {
  MaskedWeightInputs in = masked_weight_inputs(weight, logits, s, bits, "masked_weight");
  at::Tensor out = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  Fill(in, out);
  return out;
}

// The op masked_weight_backward on one device: everything the gradient epilogue reads is checked
// and the outputs are allocated (empty when not wanted) here; `Run(in)` writes them.
template <void (*Run)(const MaskedWeightGradInputs&)>
std::tuple<at::Tensor, at::Tensor> masked_weight_backward_op(
    const at::Tensor& grad, const at::Tensor& weight, const std::optional<at::Tensor>& logits,
    const std::optional<at::Tensor>& s,
    const std::optional<at::Tensor>& bits, const std::optional<at::Tensor>& frozen_bits,
    const std::optional<at::Tensor>& frozen_out, const std::optional<at::Tensor>& frozen_in, int64_t out_dim,
    bool weight_grad, bool logits_grad) {
  const char* op = "masked_weight_backward";
  MaskedWeightGradInputs in;
  in.w = masked_weight_inputs(weight, logits, s, bits, op);
  TORCH_CHECK(grad.sizes() == weight.sizes() && grad.scalar_type() == weight.scalar_type(), op,
              ": grad must match the weight's shape ", weight.sizes(), " and dtype ", weight.scalar_type(), ", got ",
              grad.sizes(), " ", grad.scalar_type());
  check_device(grad, weight, op, "grad");
  TORCH_CHECK(!logits_grad || logits, op, ": the logits gradient needs the logits");
  TORCH_CHECK(!(frozen_bits && (frozen_out || frozen_in)), op,
              ": give frozen_bits (DGMw) or frozen units (DGMa), not both");
  TORCH_CHECK(!frozen_in || frozen_out, op, ": frozen_in needs frozen_out");
  in.grad = grad.contiguous();
  in.args = {in.w.args, in.grad.data_ptr(), nullptr, 0, false, nullptr, nullptr, 1, nullptr, nullptr};
  if (frozen_bits) {
    in.frozen_bits = checked_bits(*frozen_bits, weight, op, "frozen_bits");
    in.args.frozen_bits = in.frozen_bits.data_ptr<uint8_t>();
    in.args.ldf = row_stride(in.frozen_bits);
  }
  if (frozen_out) {
    TORCH_CHECK(weight.dim() >= 2, op, ": frozen units need a weight with unit dims 0 and 1, got shape ",
                weight.sizes());
    TORCH_CHECK(out_dim == 0 || out_dim == 1, op, ": out_dim must be 0 or 1, got ", out_dim);
    in.args.unit_frozen = true;
    in.args.inner = in.w.args.cols / std::max<int64_t>(weight.size(1), 1);
    at::Tensor out = checked_flags(*frozen_out, weight.size(out_dim), weight, op, "frozen_out");
    at::Tensor inp = frozen_in ? checked_flags(*frozen_in, weight.size(1 - out_dim), weight, op, "frozen_in")
                               : at::Tensor();
    in.row_flags = out_dim == 0 ? out : inp;
    in.col_flags = out_dim == 0 ? inp : out;
    if (in.row_flags.defined()) in.args.row_flags = static_cast<const uint8_t*>(in.row_flags.data_ptr());
    if (in.col_flags.defined()) in.args.col_flags = static_cast<const uint8_t*>(in.col_flags.data_ptr());
  }
  auto dense = weight.options().memory_format(at::MemoryFormat::Contiguous);
  in.grad_weight = at::empty(weight_grad ? weight.sizes() : at::IntArrayRef{0}, dense);
  in.grad_logits = at::empty(logits_grad ? weight.sizes() : at::IntArrayRef{0}, dense);
  if (weight_grad) in.args.grad_weight = in.grad_weight.data_ptr();
  if (logits_grad) in.args.grad_logits = in.grad_logits.data_ptr();
  if (weight_grad || logits_grad) Run(in);
  return {in.grad_weight, in.grad_logits};
}

// One parameter's tensors of a frozen Adam step, checked, and its group's hyper-parameters.
struct AdamParam {
  at::Tensor param, grad, exp_avg, exp_avg_sq, reserved, step;
  AdamScalars h;
  double lr, beta1, beta2;
};

inline AdamScalars adam_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                bool decoupled) {
  return {1 - lr * weight_decay, weight_decay, 1 - beta1, beta2, 1 - beta2, eps, decoupled, weight_decay != 0};
}

// The per-parameter lists of frozen_adam_: parameters of any number of groups, each with its
// group's hyper-parameters; `steps` are the parameters' step counts (0-d float64 tensors on the
// parameters' device), already counting this step.
inline std::vector<AdamParam> adam_inputs(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                                          at::TensorList exp_avg_sqs,
                                          const c10::List<std::optional<at::Tensor>>& reserved, at::TensorList steps,
                                          at::ArrayRef<double> lrs, at::ArrayRef<double> beta1s,
                                          at::ArrayRef<double> beta2s, at::ArrayRef<double> epss,
                                          at::ArrayRef<double> weight_decays, const c10::List<bool>& decoupled) {
  const char* op = "frozen_adam_";
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n && reserved.size() == n &&
                  steps.size() == n && lrs.size() == n && beta1s.size() == n && beta2s.size() == n &&
                  epss.size() == n && weight_decays.size() == n && decoupled.size() == n,
              op, ": every per-parameter list must have one entry per parameter (", n, ")");
  std::vector<AdamParam> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    check_floating(p, op, "params");
    TORCH_CHECK(p.is_contiguous(), op, ": params[", i, "] must be contiguous");
    TORCH_CHECK(p.device() == params[0].device() && p.scalar_type() == params[0].scalar_type(), op,
                ": all params of one call must share device and dtype; params[", i, "] is ", p.scalar_type(),
                " on ", p.device(), ", params[0] ", params[0].scalar_type(), " on ", params[0].device());
    for (const at::Tensor* t : {&grads[i], &exp_avgs[i], &exp_avg_sqs[i]})
      TORCH_CHECK(t->sizes() == p.sizes() && t->scalar_type() == p.scalar_type() && t->device() == p.device(), op,
                  ": grads, exp_avgs and exp_avg_sqs [", i, "] must match params[", i, "] (", p.sizes(), " ",
                  p.scalar_type(), " on ", p.device(), "), got ", t->sizes(), " ", t->scalar_type(), " on ",
                  t->device());
    TORCH_CHECK(exp_avgs[i].is_contiguous() && exp_avg_sqs[i].is_contiguous(), op, ": optimiser state [", i,
                "] must be contiguous");
    TORCH_CHECK(steps[i].dim() == 0 && steps[i].scalar_type() == at::kDouble && steps[i].device() == p.device(), op,
                ": steps[", i, "] must be a 0-d float64 tensor on the parameter's device, got ", steps[i].sizes(),
                " ", steps[i].scalar_type(), " on ", steps[i].device());
    AdamParam a{p, grads[i].contiguous(), exp_avgs[i], exp_avg_sqs[i], at::Tensor(), steps[i],
                adam_scalars(lrs[i], beta1s[i], beta2s[i], epss[i], weight_decays[i], decoupled.get(i)), lrs[i],
                beta1s[i], beta2s[i]};
    std::optional<at::Tensor> r = reserved.get(i);
    if (r) {
      TORCH_CHECK(p.dim() >= 1, op, ": reserved bits need a parameter with at least one dimension");
      a.reserved = checked_bits(*r, p, op, "reserved").contiguous();  // read at the packed row length
    }
    out.push_back(std::move(a));
  }
  return out;
}

}  // namespace dgm
