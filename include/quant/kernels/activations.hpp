// quant/kernels/activations.hpp: the per-call preparation of the activation vector x.
//
// A GEMV call prepares x once (O(cols)) and then every row reads the prepared form:
//   - the fast mode quantizes x to int8 per block of fast_block_size (the reference rule,
//     reproduced bit for bit: s = max|x| / 127, q = clamp(rne(x / s), -127, 127)) and keeps
//     q, the block scales, and xdq = s * q in float;
//   - kernels that decode several codes of the same bytes at once read x "deinterleaved" per
//     chunk: for nibbles the even columns of the chunk, then the odd ones, so the low and high
//     nibbles of the same bytes line up with consecutive activations (2- and 3-bit codes: 4 and
//     8 such phases);
//   - per group, the sum of the activations the kernel multiplies with, for the zero-point (and
//     code-offset) correction  sum_c (u_c - z) x_c = sum_c u_c x_c - z * sum_c x_c.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../scheme/granularity.hpp"

QUANT_NAMESPACE_BEGIN

/// Number of consecutive activations that share one int8 scale in the fast GEMV mode.
inline constexpr std::size_t fast_block_size = 32;

namespace detail {

/// Quantizes x[0, n) per block of `block` values; writes q (int8), the block scales and
/// xdq = scale * q. Bit-identical to reference::quantize_activation_block.
inline void quantize_activations(const float* x, std::size_t n, std::size_t block, std::int8_t* q, float* sx,
                                 float* xdq) noexcept {
  for (std::size_t b0 = 0, bi = 0; b0 < n; b0 += block, ++bi) {
    const std::size_t e = b0 + block < n ? b0 + block : n;
    float amax = 0.0f;
    for (std::size_t i = b0; i < e; ++i) amax = std::fabs(x[i]) > amax ? std::fabs(x[i]) : amax;
    const float s = amax / 127.0f;
    sx[bi] = s;
    for (std::size_t i = b0; i < e; ++i) {
      float v = s == 0.0f ? 0.0f : std::nearbyint(x[i] / s);
      v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
      q[i] = static_cast<std::int8_t>(v);
      xdq[i] = s * v;
    }
  }
}

/// Per group of the grid: the sum of v[c] over the group's columns (accumulated in double).
inline void group_sums(const float* v, const scale_grid& g, float* out) noexcept {
  for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
    double s = 0.0;
    for (std::size_t c = g.group_begin(gi); c < g.group_end(gi); ++c) s += v[c];
    out[gi] = static_cast<float>(s);
  }
}

/// Deinterleaves v[0, n) (n a multiple of chunk) per chunk into `phases` runs: run k holds the
/// chunk's positions k, k + phases, k + 2 * phases, ... (the codes a kernel extracts from the
/// same bytes with one shift line up with consecutive activations).
template <class T>
void deinterleave_phases(const T* v, std::size_t n, std::size_t chunk, std::size_t phases, T* out) noexcept {
  const std::size_t run = chunk / phases;
  for (std::size_t c0 = 0; c0 < n; c0 += chunk)
    for (std::size_t k = 0; k < phases; ++k)
      for (std::size_t i = 0; i < run; ++i) out[c0 + k * run + i] = v[c0 + phases * i + k];
}

/// Deinterleaves v[0, n) (n a multiple of chunk) per chunk: even positions, then odd ones.
template <class T>
void deinterleave_chunks(const T* v, std::size_t n, std::size_t chunk, T* out) noexcept {
  deinterleave_phases(v, n, chunk, 2, out);
}

/// A bump allocator over a caller's workspace; sizes are rounded up to 64 bytes.
struct workspace_carver {
  std::byte* base = nullptr;  ///< nullptr: only count
  std::size_t used = 0;
  template <class T>
  T* take(std::size_t n) noexcept {
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += (n * sizeof(T) + 63) / 64 * 64;
    return p;
  }
};

}  // namespace detail
QUANT_NAMESPACE_END
