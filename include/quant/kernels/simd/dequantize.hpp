// quant/kernels/simd/dequantize.hpp: W as floats, bit-identical to the reference.
//
// Every value is computed as the reference computes it, s * v(q) (symmetric) or s * (q - z)
// (asymmetric), one rounding each, so the SIMD result equals reference::dequantize bit for bit.
// AVX-512 decodes 32 4-bit codes with two vpermps of the value table and re-interleaves them
// with vpermt2ps; 2- and 3-bit codes are shifted into place per lane and looked up with one
// vpermps per 16 codes; 8-bit codes are gathered from the 256-entry table (NaN codes included). The
// generic path decodes through the same table and lets the compiler vectorize the scaling.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../../config.hpp"
#include "../isa.hpp"
#include "../values.hpp"
#include "gemv.hpp"

QUANT_NAMESPACE_BEGIN
namespace detail {

template <class Fmt, bool Asym, class Scale, class Isa>
struct dequantize_kernel {
  using values_t = code_values<Fmt, Asym>;
  static constexpr unsigned bits = format_traits<Fmt>::bits;

  /// Rows [r0, r1) of W into out (row r at out + r * ld).
  static void rows(const gemv_problem& m, float* out, std::size_t ld, std::size_t r0, std::size_t r1) noexcept {
    const scale_grid& g = m.grid;
    const float* table = values_t::get().exact;
    for (std::size_t r = r0; r < r1; ++r) {
      const std::uint8_t* row = m.codes + r * m.row_bytes;
      float* o = out + r * ld;
      for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
        const std::size_t k = g.index(r, gi);
        const float s = load_scale<Scale>(m.scales, k);
        const float z = Asym ? static_cast<float>(read_code(m.zeros, k, bits)) : 0.0f;
        const std::size_t c0 = g.group_begin(gi), c1 = g.group_end(gi);
        std::size_t c = c0;
#if defined(QUANT_ISA_AVX512)
        if constexpr (Isa::id >= isa::avx512 && isa_compiled_v<Isa>) c = group_avx512(row, c0, c1, s, z, table, o);
#endif
        decode_codes<bits>(row, c, c1, table, o + c);
        for (std::size_t i = c; i < c1; ++i) o[i] = Asym ? s * (o[i] - z) : s * o[i];
      }
    }
  }

#if defined(QUANT_ISA_AVX512)
  // Returns the first column it did not write.
  static std::size_t group_avx512(const std::uint8_t* row, std::size_t c0, std::size_t c1, float s, float z,
                                  const float* table, float* o) noexcept {
    const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
    auto finish = [&](__m512 v) { return Asym ? _mm512_mul_ps(vs, _mm512_sub_ps(v, vz)) : _mm512_mul_ps(vs, v); };
    std::size_t c = c0;
    if constexpr (bits == 4) {
      if (c0 % 2 != 0) return c0;
      const __m512 tv = _mm512_loadu_ps(table);
      const __m512i i0 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      const __m512i i1 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
      for (; c + 32 <= c1; c += 32) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
        const __m512 lo = _mm512_permutexvar_ps(v, tv);
        const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tv);
        _mm512_storeu_ps(o + c, finish(_mm512_permutex2var_ps(lo, i0, hi)));
        _mm512_storeu_ps(o + c + 16, finish(_mm512_permutex2var_ps(lo, i1, hi)));
      }
    } else if constexpr (bits == 2 || bits == 3) {
      // 16 codes per step: their 32 or 48 bits broadcast to the lanes, shifted by 0, bits, 2 bits,
      // ... per lane (3-bit: the second 8 lanes start at bit 24), looked up in T16[i] = T[i mod 2^bits].
      constexpr std::size_t align = bits == 2 ? 4 : 8;  // codes per whole bytes
      if (c0 % align != 0) return c0;
      alignas(64) float t16[16];
      for (unsigned i = 0; i < 16; ++i) t16[i] = table[i & ((1u << bits) - 1u)];
      const __m512 tv = _mm512_load_ps(t16);
      const __m512i shifts = bits == 2 ? _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
                                       : _mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 0, 3, 6, 9, 12, 15, 18, 21);
      for (; c + 16 <= c1; c += 16) {
        __m512i v;
        if constexpr (bits == 2) {
          std::uint32_t w;
          std::memcpy(&w, row + c / 4, 4);
          v = _mm512_set1_epi32(static_cast<int>(w));
        } else {
          const std::uint8_t* q = row + c / 8 * 3;
          const std::uint32_t lo = q[0] | (q[1] << 8) | (q[2] << 16), hi = q[3] | (q[4] << 8) | (q[5] << 16);
          v = _mm512_mask_set1_epi32(_mm512_set1_epi32(static_cast<int>(lo)), 0xFF00, static_cast<int>(hi));
        }
        _mm512_storeu_ps(o + c, finish(_mm512_permutexvar_ps(_mm512_srlv_epi32(v, shifts), tv)));
      }
    } else if constexpr (bits == 8) {
      for (; c + 16 <= c1; c += 16) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
        _mm512_storeu_ps(o + c, finish(_mm512_i32gather_ps(v, table, 4)));
      }
    }
    (void)table;
    return c;
  }
#endif
};

}  // namespace detail
QUANT_NAMESPACE_END
