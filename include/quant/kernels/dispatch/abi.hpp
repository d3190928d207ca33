// quant/kernels/dispatch/abi.hpp: the plain-data interface between a program and the per-ISA
// translation units of the runtime-dispatch mode (kernels/dispatch.hpp).
//
// Deliberately outside the versioned quant namespace and free of library types: both sides of
// this interface are compiled with different flags and different inline namespaces, so they
// exchange only pointers, sizes and ids.
#pragma once

#include <cstddef>
#include <cstdint>

namespace quant_dispatch_v0 {

/// Scale storage types, by id.
enum class scale_kind : std::uint32_t { f32 = 0, f16 = 1, bf16 = 2, e8m0 = 3 };

/// One GEMV or dequantize call on rows [r0, r1) of a quantized matrix.
struct call {
  std::uint32_t format_id = 0;  ///< format_traits<F>::id (built-in formats only)
  bool asymmetric = false;
  scale_kind scales_type = scale_kind::f32;
  bool fast = false;            ///< GEMV mode
  const std::uint8_t* codes = nullptr;
  std::size_t row_bytes = 0;
  const void* scales = nullptr;
  const std::uint8_t* zeros = nullptr;
  std::size_t rows = 0, cols = 0, group = 0, groups_per_row = 0;
  bool single = false;          ///< per-tensor scale
  const float* x = nullptr;     ///< gemv: cols activations
  float* out = nullptr;         ///< gemv: y (rows); dequantize: the matrix
  std::size_t ld = 0;           ///< dequantize: row stride of out
  std::size_t r0 = 0, r1 = 0;
};

/// A tier's entry points; they return false when the (format, scheme, scale type) is not one
/// the dispatch library was built with (the caller then uses the header kernels).
using entry = bool (*)(const call&);

struct tier_entries {
  entry gemv = nullptr;
  entry dequantize = nullptr;
  unsigned isa = 0;  ///< quant::isa of the tier
};

/// Defined by the dispatch library (one per tier it was built with, and the selector).
tier_entries select_tier() noexcept;

}  // namespace quant_dispatch_v0
