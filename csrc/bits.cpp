// Bit-mask ops of the extension (CPU); see dgm/bits.py for the layout.
#include <torch/extension.h>

namespace {

int64_t popcount_bits(const at::Tensor& bits) {
  TORCH_CHECK(bits.scalar_type() == at::kByte, "popcount: bits must be uint8");
  auto c = bits.contiguous().cpu();
  const uint8_t* p = c.data_ptr<uint8_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < c.numel(); ++i) n += __builtin_popcount(p[i]);
  return n;
}

}  // namespace

TORCH_LIBRARY(dgm, m) { m.def("popcount(Tensor bits) -> int"); }
TORCH_LIBRARY_IMPL(dgm, CPU, m) { m.impl("popcount", popcount_bits); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
