// Per-element math of every op, shared by the CPU loops (ops.cpp) and the CUDA kernels
// (cuda/*.cu) so both backends compute the same formula in the same order. No torch headers:
// the .cu files include this and must stay light to compile.
//
// T is the storage type (float, double, or a 16-bit float), A the type the math runs in (float
// for 16-bit storage, else T). to_acc / from_acc convert; the CUDA side specialises them for
// __half and __nv_bfloat16, whose implicit conversions torch's build flags switch off.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DGM_HD __host__ __device__ __forceinline__
#else
#define DGM_HD inline
#endif

namespace dgm {

template <typename A, typename T>
DGM_HD A to_acc(T x) { return static_cast<A>(x); }

template <typename T, typename A>
DGM_HD T from_acc(A x) { return static_cast<T>(x); }

DGM_HD float exp_(float x) { return expf(x); }
DGM_HD double exp_(double x) { return exp(x); }
DGM_HD float sqrt_(float x) { return sqrtf(x); }
DGM_HD double sqrt_(double x) { return sqrt(x); }
DGM_HD double pow_(double x, double y) { return pow(x, y); }
// Fused multiply-add, one rounding: what ATen's vectorised CPU kernels (Vectorized::fmadd) compute.
DGM_HD float fma_(float a, float b, float c) { return fmaf(a, b, c); }
DGM_HD double fma_(double a, double b, double c) { return fma(a, b, c); }

// Bit `col` of one packed row (dgm/bits.py: bit j of byte b holds column 8 * b + j).
DGM_HD bool bit_at(const uint8_t* row, int64_t col) { return (row[col >> 3] >> (col & 7)) & 1; }

// Byte `byte` of a packed row from `cols` bools: padding bits past `cols` are zero.
DGM_HD uint8_t pack_byte(const bool* row, int64_t cols, int64_t byte) {
  uint8_t v = 0;
  for (int j = 0; j < 8; ++j) {
    int64_t c = 8 * byte + j;
    if (c < cols && row[c]) v |= uint8_t(1u << j);
  }
  return v;
}

template <typename A>
DGM_HD A sigmoid(A x) { return A(1) / (A(1) + exp_(-x)); }

// A weight matrix and its mask, both as row-strided 2-D views (rows = dim 0, cols = the rest,
// contiguous within a row): W_eff = W * m with m = sigmoid(s * logits), the packed bits, or 1.
// Packed bits are row-strided too (a row's bytes contiguous, rows ld* bytes apart).
// The sharpness s is read from device memory (a 0-d tensor: float64 for float64 weights, else
// float32), so a step's value never passes through the host and a captured launch reads each
// step's own.
template <typename T>
struct MaskedWeight {
  const T* weight;
  int64_t ldw;
  const T* logits;       // soft mask, or null
  int64_t ldl;
  const uint8_t* bits;   // packed binary mask [rows, nbytes], or null
  int64_t ldb;
  const void* s;         // with logits
  bool s_double;
  int64_t rows, cols, nbytes;
};

// The same arguments with the storage type attached (launchers receive them as void pointers).
template <typename T>
MaskedWeight<T> typed(const MaskedWeight<void>& a) {
  return {static_cast<const T*>(a.weight), a.ldw, static_cast<const T*>(a.logits), a.ldl, a.bits, a.ldb, a.s,
          a.s_double, a.rows, a.cols, a.nbytes};
}

template <typename A, typename T>
DGM_HD A sharpness(const MaskedWeight<T>& a) {
  return a.s_double ? A(*static_cast<const double*>(a.s)) : A(*static_cast<const float*>(a.s));
}

template <typename A, typename T>
DGM_HD A mask_at(const MaskedWeight<T>& a, int64_t r, int64_t c) {
  if (a.logits) return sigmoid<A>(sharpness<A>(a) * to_acc<A>(a.logits[r * a.ldl + c]));
  if (a.bits) return bit_at(a.bits + r * a.ldb, c) ? A(1) : A(0);
  return A(1);
}

// Forward pass: out (contiguous) = W_eff.
template <typename A, typename T>
DGM_HD void masked_weight_at(const MaskedWeight<T>& a, T* out, int64_t r, int64_t c) {
  out[r * a.cols + c] = from_acc<T>(to_acc<A>(a.weight[r * a.ldw + c]) * mask_at<A>(a, r, c));
}

// Backward epilogue: from G = dL/dW_eff (contiguous), grad_W = G * m * (1 - frozen) and
// grad_logits = G * W * s * m * (1 - m), in the order autograd of the reference computes them.
// Frozen entries: the packed frozen bits, or (DGMa) row_flags[r] && col_flags[c / inner] where a
// null flag array counts as all set.
template <typename T>
struct MaskedWeightGrad {
  MaskedWeight<T> w;
  const T* grad;
  const uint8_t* frozen_bits;  // packed [rows, nbytes], rows ldf bytes apart, or null
  int64_t ldf;
  bool unit_frozen;
  const uint8_t* row_flags;
  const uint8_t* col_flags;
  int64_t inner;
  T* grad_weight;  // or null
  T* grad_logits;  // or null
};

template <typename T>
MaskedWeightGrad<T> typed(const MaskedWeightGrad<void>& a) {
  return {typed<T>(a.w), static_cast<const T*>(a.grad), a.frozen_bits, a.ldf, a.unit_frozen, a.row_flags, a.col_flags,
          a.inner, static_cast<T*>(a.grad_weight), static_cast<T*>(a.grad_logits)};
}

template <typename T>
DGM_HD bool frozen_at(const MaskedWeightGrad<T>& a, int64_t r, int64_t c) {
  if (a.frozen_bits) return bit_at(a.frozen_bits + r * a.ldf, c);
  if (!a.unit_frozen) return false;
  return (!a.row_flags || a.row_flags[r]) && (!a.col_flags || a.col_flags[c / a.inner]);
}

template <typename A, typename T>
DGM_HD void masked_weight_grad_at(const MaskedWeightGrad<T>& a, int64_t r, int64_t c) {
  const int64_t i = r * a.w.cols + c;
  const A g = to_acc<A>(a.grad[i]);
  const A m = mask_at<A>(a.w, r, c);
  if (a.grad_weight) a.grad_weight[i] = from_acc<T>(frozen_at(a, r, c) ? A(0) : g * m);
  if (a.grad_logits) {
    const A w = to_acc<A>(a.w.weight[r * a.w.ldw + c]);
    a.grad_logits[i] = from_acc<T>(g * w * (A(1) - m) * m * sharpness<A>(a.w));
  }
}

// Adam / AdamW hyper-parameters of one parameter's group, pre-combined on the host in double as
// torch.optim.Adam does (1 - lr * weight_decay, 1 - beta1, 1 - beta2 are Python floats there).
struct AdamScalars {
  double decay;            // 1 - lr * weight_decay (decoupled)
  double weight_decay;     // L2 coefficient added to the gradient (not decoupled)
  double one_minus_beta1, beta2, one_minus_beta2, eps;
  bool decoupled, has_weight_decay;
};

// ATen's lerp (Vectorized lerp_vec, which its scalar loop matches): one fused multiply-add from
// the nearer end, the weight's complement rounded in A.
template <typename A>
DGM_HD A lerp_(A self, A end, A weight) {
  const bool small = weight < A(0.5) && weight > A(-0.5);
  return fma_(small ? weight : weight - A(1), end - self, small ? self : end);
}

// The bias corrections of step `step` (the step count after this step's increment), in double as
// torch.optim.Adam (foreach=False, not capturable) computes them on the host: step_size = lr /
// (1 - beta1 ** step), negated when passed as addcdiv_'s value, and (1 - beta2 ** step) ** 0.5
// (Python's ** is C's pow, which may round differently from sqrt). They are computed where the
// step count lives (device memory), so no step passes a new value through the host.
struct AdamCorrections {
  double neg_step_size, bias_correction2_sqrt;
};

DGM_HD AdamCorrections adam_corrections(double step, double lr, double beta1, double beta2) {
  return {-(lr / (1 - pow_(beta1, step))), pow_(1 - pow_(beta2, step), 0.5)};
}

// One Adam step of one entry, in two halves around the square root of exp_avg_sq (the CPU loop
// takes it from ATen's sqrt, as torch.optim.Adam does: on x86 that is MKL's vectorised sqrt,
// within 1 ulp of the correctly rounded one; the CUDA kernel from sqrt). torch.optim.Adam's
// _single_tensor_adam, each tensor op as ATen's CPU kernel rounds it (a Python scalar rounded to
// A first, as ATen passes it to a kernel):
//   grad.add(param, alpha=wd)                    fma(p, wd, g)
//   param.mul_(1 - lr * wd)                      p * decay
//   exp_avg.lerp_(grad, 1 - beta1)               lerp_ above
//   exp_avg_sq.mul_(beta2).addcmul_(g, g, 1-b2)  fma((1 - b2) * g, g, v * b2)
//   (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)     root / bc2_sqrt + eps
//   param.addcdiv_(exp_avg, denom, -step_size)   p + (-step_size * m) / denom
template <typename A>
DGM_HD void adam_moments_at(A& p, A g, A& m, A& v, const AdamScalars& h) {
  if (h.has_weight_decay) {
    if (h.decoupled) p = p * A(h.decay);
    else g = fma_(p, A(h.weight_decay), g);
  }
  m = lerp_(m, g, A(h.one_minus_beta1));
  v = fma_(A(h.one_minus_beta2) * g, g, v * A(h.beta2));
}

template <typename A>
DGM_HD void adam_update_at(A& p, A m, A root, const AdamScalars& h, A neg_step_size, A bias_correction2_sqrt) {
  const A denom = root / bias_correction2_sqrt + A(h.eps);
  p = p + neg_step_size * m / denom;
}

}  // namespace dgm
