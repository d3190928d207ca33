// quant/kernels/simd/gemv.hpp: y = W x for a quantized W, on SIMD registers.
//
// One kernel template, gemv_kernel<Fmt, Asym, Scale, Isa, Fast>, chosen at compile time from the
// format, the scheme, the scale type, the ISA tier and the mode. Inside, a path is picked once
// per call (never per row or per element) from what the format and the group size allow:
//
//   nibble    (AVX2 and AVX-512, 4-bit codes; groups a multiple of 32 or one group per row)
//             exact: 32 codes -> int32 lanes -> vpermps from the 16-entry value table (AVX2:
//             two half-table vpermps and a blend on bit 3; any 4-bit format: int4, nf4, e2m1,
//             a user's table) -> FMA with deinterleaved x.
//             fast:  128 (AVX2: 64) codes per 64-byte (32-byte) load, nibbles split with
//             and/shift, mapped to unsigned bytes (xor 0x88 for signed int4, vpshufb for
//             tables), and multiplied with int8 activations by vpdpbusd (VNNI) or vpmaddubsw +
//             vpmaddwd.
//   byte      (AVX2 and AVX-512, 8-bit codes; groups a multiple of 32 or one group per row)
//             exact: int8 widened and converted; fp8 e5m2/e4m3 rebuilt as fp16 bits and
//             converted with vcvtph2ps (the e4m3 exponent bias difference, 2^8, is folded into
//             the group scale); other 8-bit formats gathered from the 256-entry table.
//             fast:  int8 codes times int8 activations: vpdpbusd on unsigned codes (VNNI), or
//             vpmaddubsw on |w| and x * sign(w); fp8 e4m3 with AVX-512 BF16: the codes rebuilt
//             as bf16 by a shift and a mask, times the int8 activations as bf16, by vdpbf16ps.
//   narrow    (AVX2 and AVX-512, 2- and 3-bit codes; groups a multiple of 64 (2-bit) or 128
//             (3-bit), or one group per row), both modes in float: 4 or 8 codes per int32
//             lane, each phase decoded by one vpermps from the value table repeated to the
//             vector's width, FMA with x deinterleaved into the same phases.
//   generic   (every tier, format and group size) codes decoded through the value table into a
//             small buffer, then an xsimd FMA dot product with x.
//
// Every path computes, per row, y = mult * sum_g s_g * (sum_{c in g} u(q_c) x_c - z_g * X_g),
// where u is the code's value (or its value plus a constant offset, for the unsigned-byte dot
// products), z_g the zero point plus that offset, X_g the group's activation sum (prepared once
// per call) and mult the fast mode's table multiplier (kernels/values.hpp). Scales are decoded
// per batch of groups into a stack buffer. Arguments are validated by kernels/api.hpp.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "../../config.hpp"
#include "../../core/scalar_types.hpp"
#include "../../formats/minifloat.hpp"
#include "../../layout/packing.hpp"
#include "../../scheme/granularity.hpp"
#include "../isa.hpp"
#include "../values.hpp"
#include "../activations.hpp"

#if defined(QUANT_ISA_AVX2) || defined(QUANT_ISA_AVX512)
#include <immintrin.h>
#endif

QUANT_NAMESPACE_BEGIN

/// The kernel paths, as reported by gemv_path().
enum class gemv_path_kind { generic, nibble, byte, narrow };

namespace detail {

/// The quantized matrix as the kernels see it: plain pointers and the scale grid.
struct gemv_problem {
  const std::uint8_t* codes = nullptr;
  std::size_t row_bytes = 0;
  const void* scales = nullptr;
  const std::uint8_t* zeros = nullptr;
  scale_grid grid{};
};

/// x after the per-call preparation (pointers into the workspace, or to the caller's x).
struct gemv_prepared {
  const float* x = nullptr;         ///< natural order: x (exact) or xdq (fast)
  const float* xp = nullptr;        ///< nibble exact path: x deinterleaved per 32 columns
  const std::int8_t* xq = nullptr;  ///< fast integer paths: int8 activations (nibble: deinterleaved per 128)
  const float* sxl = nullptr;       ///< fast integer paths: the block scale of each int32 lane
  const std::uint16_t* xb = nullptr;  ///< fp8 e4m3 fast path with BF16: xq * 2^120 as bf16
  const float* gsum = nullptr;      ///< per group: the sum of x (exact) or xdq (fast)
  gemv_path_kind path = gemv_path_kind::generic;
  bool integer = false;             ///< the fast mode's integer-dot variant of the path
};

template <class Scale>
QUANT_ALWAYS_INLINE float load_scale(const void* scales, std::size_t k) noexcept {
  return scale_traits<Scale>::decode(static_cast<const Scale*>(scales)[k]);
}

/// Decodes codes [c0, c1) of a row through a value table into out[0, c1 - c0).
template <unsigned Bits>
QUANT_ALWAYS_INLINE void decode_codes(const std::uint8_t* row, std::size_t c0, std::size_t c1, const float* table,
                                      float* out) noexcept {
  if constexpr (Bits == 8) {
    for (std::size_t c = c0; c < c1; ++c) out[c - c0] = table[row[c]];
  } else if constexpr (Bits == 4) {
    std::size_t c = c0;
    if (c & 1) out[c - c0] = table[row[c / 2] >> 4], ++c;
    for (; c + 2 <= c1; c += 2) {
      const std::uint8_t b = row[c / 2];
      out[c - c0] = table[b & 15];
      out[c - c0 + 1] = table[b >> 4];
    }
    if (c < c1) out[c - c0] = table[row[c / 2] & 15];
  } else if constexpr (Bits == 2) {
    for (std::size_t c = c0; c < c1; ++c) out[c - c0] = table[(row[c / 4] >> (2 * (c % 4))) & 3];
  } else {
    for (std::size_t c = c0; c < c1; ++c) out[c - c0] = table[read_code(row, c, Bits)];
  }
}

/// sum_i a[i] * b[i] on xsimd batches of the tier's architecture.
template <class Isa>
QUANT_ALWAYS_INLINE float dot(const float* a, const float* b, std::size_t n) noexcept {
  using arch = typename Isa::arch;
  using batch = xsimd::batch<float, arch>;
  constexpr std::size_t w = batch::size;
  batch s0(0.0f), s1(0.0f);
  std::size_t i = 0;
  for (; i + 2 * w <= n; i += 2 * w) {
    s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
    s1 = xsimd::fma(batch::load_unaligned(a + i + w), batch::load_unaligned(b + i + w), s1);
  }
  for (; i + w <= n; i += w) s0 = xsimd::fma(batch::load_unaligned(a + i), batch::load_unaligned(b + i), s0);
  float s = xsimd::hadd(s0 + s1);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// Groups whose scales are decoded together into a stack buffer.
inline constexpr std::size_t scale_batch = 64;

#if defined(QUANT_ISA_AVX2)
/// The float-lane operations the row drivers need, for 8 lanes (AVX2)...
struct lanes256 {
  using f = __m256;
  using i = __m256i;
  static constexpr std::size_t n = 8;
  static QUANT_ALWAYS_INLINE f zero() noexcept { return _mm256_setzero_ps(); }
  static QUANT_ALWAYS_INLINE f set1(float v) noexcept { return _mm256_set1_ps(v); }
  static QUANT_ALWAYS_INLINE f load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static QUANT_ALWAYS_INLINE f add(f a, f b) noexcept { return _mm256_add_ps(a, b); }
  static QUANT_ALWAYS_INLINE f mul(f a, f b) noexcept { return _mm256_mul_ps(a, b); }
  static QUANT_ALWAYS_INLINE f fmadd(f a, f b, f c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  static QUANT_ALWAYS_INLINE i index(const std::int32_t* p) noexcept {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static QUANT_ALWAYS_INLINE f permute(i idx, f v) noexcept { return _mm256_permutevar8x32_ps(v, idx); }
  static QUANT_ALWAYS_INLINE float sum(f v) noexcept {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};
#endif
#if defined(QUANT_ISA_AVX512)
/// ... and for 16 lanes (AVX-512).
struct lanes512 {
  using f = __m512;
  using i = __m512i;
  static constexpr std::size_t n = 16;
  static QUANT_ALWAYS_INLINE f zero() noexcept { return _mm512_setzero_ps(); }
  static QUANT_ALWAYS_INLINE f set1(float v) noexcept { return _mm512_set1_ps(v); }
  static QUANT_ALWAYS_INLINE f load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static QUANT_ALWAYS_INLINE f add(f a, f b) noexcept { return _mm512_add_ps(a, b); }
  static QUANT_ALWAYS_INLINE f mul(f a, f b) noexcept { return _mm512_mul_ps(a, b); }
  static QUANT_ALWAYS_INLINE f fmadd(f a, f b, f c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  static QUANT_ALWAYS_INLINE i index(const std::int32_t* p) noexcept { return _mm512_loadu_si512(p); }
  static QUANT_ALWAYS_INLINE f permute(i idx, f v) noexcept { return _mm512_permutexvar_ps(idx, v); }
  static QUANT_ALWAYS_INLINE float sum(f v) noexcept { return _mm512_reduce_add_ps(v); }
};
template <bool Wide>
using lanes_t = std::conditional_t<Wide, lanes512, lanes256>;
#elif defined(QUANT_ISA_AVX2)
template <bool Wide>
using lanes_t = lanes256;
#endif

template <class Fmt, bool Asym, class Scale, class Isa, bool Fast>
struct gemv_kernel {
  using values_t = code_values<Fmt, Asym>;
  static constexpr unsigned bits = format_traits<Fmt>::bits;
  static constexpr bool avx512 = Isa::id >= isa::avx512;
  static constexpr bool vnni = Isa::id >= isa::avx512_vnni;
  /// Tiers with the nibble, byte and narrow paths (AVX2 and up); their float lanes per vector.
  static constexpr bool vector_paths = Isa::id >= isa::avx2;
  static constexpr std::size_t lanes = avx512 ? 16 : 8;
  /// Columns per step of the integer paths: 64 or 32 bytes of codes.
  static constexpr std::size_t nibble_chunk = 8 * lanes, byte_chunk = 4 * lanes;
  /// Columns per step of the narrow (2- and 3-bit) path: 16 int32 lanes of 4 or 8 codes.
  static constexpr std::size_t narrow_step = bits == 3 ? 128 : 64;
  /// fp8 e4m3 fast mode as bf16 dot products (vdpbf16ps), when this translation unit's tier is
  /// Isa and its flags enable AVX-512 BF16.
#if defined(QUANT_ISA_AVX512_BF16)
  static constexpr bool bf16_fp8 = is_e4m3_v<Fmt> && !Asym && Isa::id == default_isa::id;
#else
  static constexpr bool bf16_fp8 = false;
#endif

  /// The path this kernel takes for a grid (the same for every row).
  static gemv_path_kind path_for(const scale_grid& g) noexcept {
    if constexpr (vector_paths && (bits == 4 || bits == 8)) {
      const bool one_group = g.groups_per_row == 1;
      if (one_group || g.group % 32 == 0) return bits == 4 ? gemv_path_kind::nibble : gemv_path_kind::byte;
    }
    if constexpr (vector_paths && (bits == 2 || bits == 3)) {
      if (g.groups_per_row == 1 || g.group % narrow_step == 0) return gemv_path_kind::narrow;
    }
    (void)g;
    return gemv_path_kind::generic;
  }

  /// Whether the fast mode runs as integer dot products on this path.
  static bool integer_fast(gemv_path_kind p, const scale_grid& g) noexcept {
    if constexpr (!Fast) {
      (void)p, (void)g;
      return false;
    } else {
      const values_t& v = values_t::get();
      if (p == gemv_path_kind::byte && bf16_fp8) return true;
      if (p == gemv_path_kind::generic || p == gemv_path_kind::narrow || !v.int_fast) return false;
      if (p == gemv_path_kind::byte) return is_integer_format_v<Fmt>;  // signed-by-sign without VNNI
      // Groups smaller than a chunk: the lane scales handle 32 and 64 only.
      const std::size_t chunk = nibble_chunk;
      if (g.groups_per_row > 1 && g.group % chunk != 0 && g.group != 32 && g.group != 64) return false;
      if (!vnni) {  // vpmaddubsw saturates 16-bit pair sums: need 2 * max(u) * 127 <= 32767
        unsigned umax = 0;
        for (unsigned j = 0; j < values_t::count; ++j) umax = v.u8[j] > umax ? v.u8[j] : umax;
        if (2u * umax * 127u > 32767u) return false;
      }
      return true;
    }
  }

  static std::size_t workspace_bytes(const scale_grid& g) noexcept { return prepare_impl(g, nullptr, nullptr).second; }

  static gemv_prepared prepare(const scale_grid& g, const float* x, std::byte* ws) noexcept {
    return prepare_impl(g, x, ws).first;
  }

  static std::pair<gemv_prepared, std::size_t> prepare_impl(const scale_grid& g, const float* x, std::byte* ws) noexcept {
    workspace_carver w{ws};
    gemv_prepared p;
    p.path = path_for(g);
    p.integer = integer_fast(p.path, g);
    const std::size_t n = g.cols;
    const float* xv = x;  // the activations the kernel multiplies with, natural order
    if constexpr (Fast) {
      auto* q = w.template take<std::int8_t>(n);
      auto* sx = w.template take<float>((n + fast_block_size - 1) / fast_block_size);
      auto* xdq = w.template take<float>(n);
      if (ws) quantize_activations(x, n, fast_block_size, q, sx, xdq);
      xv = xdq;
      if (p.integer) {
        const bool nib = p.path == gemv_path_kind::nibble;
        const std::size_t chunk = nib ? nibble_chunk : byte_chunk, lane_cols = chunk / lanes;
        const std::size_t full = n / chunk * chunk;
        auto* sxl = w.template take<float>(full / lane_cols);
        std::int8_t* qp = q;
        if (nib) {
          qp = w.template take<std::int8_t>(full);
          if (ws) deinterleave_chunks(q, full, chunk, qp);
        }
        if constexpr (bf16_fp8) {  // q * 2^120, exact in bf16: the codes enter as value * 2^-120
          auto* xb = w.template take<std::uint16_t>(full);
          if (ws)
            for (std::size_t c = 0; c < full; ++c)
              xb[c] = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(static_cast<float>(q[c]) * 0x1p120f) >> 16);
          p.xb = xb;
        }
        if (ws)
          for (std::size_t l = 0; l < full / lane_cols; ++l) sxl[l] = sx[l * lane_cols / fast_block_size];
        p.xq = qp;
        p.sxl = sxl;
      }
    }
    p.x = xv;
    if ((p.path == gemv_path_kind::nibble && !p.integer) || p.path == gemv_path_kind::narrow) {
      const std::size_t chunk = p.path == gemv_path_kind::nibble ? 32 : narrow_step;
      const std::size_t full = n / chunk * chunk;
      auto* xp = w.template take<float>(full);
      if (ws) deinterleave_phases(xv, full, chunk, chunk / 16, xp);
      p.xp = xp;
    }
    const bool need_sums = Asym || p.integer;
    if (need_sums) {
      auto* gs = w.template take<float>(g.groups_per_row);
      if (ws) group_sums(xv, g, gs);
      p.gsum = gs;
    }
    return {p, w.used};
  }

  /// y[r] for r in [r0, r1).
  static void rows(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0, std::size_t r1) noexcept {
#if defined(QUANT_ISA_AVX2)
    if constexpr (vector_paths && isa_compiled_v<Isa>) {
      using V = lanes_t<avx512>;
      if constexpr (bits == 4) {
        if (p.path == gemv_path_kind::nibble) {
          if (p.integer) return rows_nibble_int<V>(m, p, y, r0, r1);
          return rows_nibble_float<V>(m, p, y, r0, r1);
        }
      }
      if constexpr (bits == 8) {
        if (p.path == gemv_path_kind::byte) {
          if (p.integer) return rows_byte_int<V>(m, p, y, r0, r1);
          return rows_byte_float<V>(m, p, y, r0, r1);
        }
      }
      if constexpr (bits == 2 || bits == 3) {
        if (p.path == gemv_path_kind::narrow) return rows_narrow_float<V>(m, p, y, r0, r1);
      }
    }
#endif
    rows_generic(m, p, y, r0, r1);
  }

  // ---- shared pieces -------------------------------------------------------------------------

  static const float* value_table() noexcept {
    const values_t& v = values_t::get();
    return Fast ? v.fast : v.exact;
  }

  /// Decodes the scales of groups [g0, g0 + n) of row r into s.
  static QUANT_ALWAYS_INLINE void row_scales(const gemv_problem& m, std::size_t r, std::size_t g0, std::size_t n,
                                             float* s) noexcept {
    for (std::size_t i = 0; i < n; ++i) s[i] = load_scale<Scale>(m.scales, m.grid.index(r, g0 + i));
  }

  /// The zero point (plus the code offset of the integer paths) of scale index k.
  static QUANT_ALWAYS_INLINE float zero_of(const gemv_problem& m, std::size_t k, int offset) noexcept {
    if constexpr (Asym) return static_cast<float>(read_code(m.zeros, k, bits) + offset);
    else return static_cast<float>(offset);
  }

  // ---- generic path --------------------------------------------------------------------------

  static void rows_generic(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                           std::size_t r1) noexcept {
    const scale_grid& g = m.grid;
    const float* table = value_table();
    constexpr std::size_t piece = 256;
    alignas(64) float buf[piece];
    alignas(64) float s[scale_batch];
    for (std::size_t r = r0; r < r1; ++r) {
      const std::uint8_t* row = m.codes + r * m.row_bytes;
      double acc = 0.0;
      for (std::size_t gb = 0; gb < g.groups_per_row; gb += scale_batch) {
        const std::size_t ng = std::min(scale_batch, g.groups_per_row - gb);
        row_scales(m, r, gb, ng, s);
        for (std::size_t gi = gb; gi < gb + ng; ++gi) {
          float part = 0.0f;
          for (std::size_t c = g.group_begin(gi); c < g.group_end(gi); c += piece) {
            const std::size_t e = std::min(c + piece, g.group_end(gi));
            decode_codes<bits>(row, c, e, table, buf);
            part += dot<Isa>(buf, p.x + c, e - c);
          }
          if constexpr (Asym) part -= zero_of(m, g.index(r, gi), 0) * p.gsum[gi];
          acc += static_cast<double>(s[gi - gb]) * part;
        }
      }
      y[r] = static_cast<float>(acc);
    }
  }

#if defined(QUANT_ISA_AVX2)
  // ---- AVX2 and AVX-512 paths ----------------------------------------------------------------
  // The row drivers are written once over V (lanes256 or lanes512); each path's step, the part
  // that decodes codes, is written per width where the instructions differ.

  /// Columns [c0, c1) of a group handled by the SIMD loop, the rest by the scalar tail.
  static QUANT_ALWAYS_INLINE float scalar_part(const std::uint8_t* row, std::size_t c0, std::size_t c1,
                                               const float* table, const float* x) noexcept {
    float t = 0.0f;
    for (std::size_t c = c0; c < c1; ++c) t += table[read_code(row, c, bits)] * x[c];
    return t;
  }

  // The float paths (exact mode, and fast mode without integer dots): steps of S columns, four
  // accumulators per group, the group scale (times `unit`) applied once per group. step(row, c,
  // a, b) adds the products of columns [c, c + S) into a and b.
  template <class V, std::size_t S, class Step>
  static QUANT_ALWAYS_INLINE void rows_float(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                                             std::size_t r1, float unit, Step step) noexcept {
    using f = typename V::f;
    const scale_grid& g = m.grid;
    const float* table = value_table();
    const std::size_t full = g.cols / S * S;
    alignas(64) float s[scale_batch];
    for (std::size_t r = r0; r < r1; ++r) {
      const std::uint8_t* row = m.codes + r * m.row_bytes;
      f tot = V::zero();
      float tail = 0.0f, corr = 0.0f;
      for (std::size_t gb = 0; gb < g.groups_per_row; gb += scale_batch) {
        const std::size_t ng = std::min(scale_batch, g.groups_per_row - gb);
        row_scales(m, r, gb, ng, s);
        for (std::size_t gi = gb; gi < gb + ng; ++gi) {
          const std::size_t c0 = g.group_begin(gi), c1 = g.group_end(gi), cf = std::min(c1, full);
          f a0 = V::zero(), a1 = a0, a2 = a0, a3 = a0;
          std::size_t c = c0;
          for (; c + 2 * S <= cf; c += 2 * S) {
            step(row, c, a0, a1);
            step(row, c + S, a2, a3);
          }
          if (c < cf) step(row, c, a0, a1);
          const float sg = s[gi - gb];
          tot = V::fmadd(V::add(V::add(a0, a1), V::add(a2, a3)), V::set1(sg * unit), tot);
          if (cf < c1) tail += sg * scalar_part(row, std::max(c0, cf), c1, table, p.x);
          if constexpr (Asym) corr += sg * zero_of(m, g.index(r, gi), 0) * p.gsum[gi];
        }
      }
      y[r] = V::sum(tot) + tail - corr;
    }
  }

  // Exact (or float fast) 4-bit: 32 codes per step, x deinterleaved per 32. AVX-512: two vpermps
  // of the 16-entry value table; AVX2: two vpermps of each table half and a blend on bit 3.
  template <class V>
  static void rows_nibble_float(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                                std::size_t r1) noexcept {
    const float* xp = p.xp;
    const float* table = value_table();
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      const __m512 tv = _mm512_loadu_ps(table);
      rows_float<V, 32>(m, p, y, r0, r1, 1.0f, [&](const std::uint8_t* row, std::size_t c, __m512& a, __m512& b) {
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
        a = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, tv), _mm512_loadu_ps(xp + c), a);
        b = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tv), _mm512_loadu_ps(xp + c + 16), b);
      });
#endif
    } else {
      const __m256 tlo = _mm256_loadu_ps(table), thi = _mm256_loadu_ps(table + 8);
      auto look = [&](__m256i i) {  // table[i & 15]
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i), _mm256_permutevar8x32_ps(thi, i),
                                _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));
      };
      rows_float<V, 32>(m, p, y, r0, r1, 1.0f, [&](const std::uint8_t* row, std::size_t c, __m256& a, __m256& b) {
        for (std::size_t h = 0; h < 2; ++h) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2 + 8 * h)));
          a = _mm256_fmadd_ps(look(v), _mm256_loadu_ps(xp + c + 8 * h), a);
          b = _mm256_fmadd_ps(look(_mm256_srli_epi32(v, 4)), _mm256_loadu_ps(xp + c + 16 + 8 * h), b);
        }
      });
    }
  }

  // Exact (or float fast) 2- and 3-bit codes. Each int32 lane gets the bits of consecutive codes
  // (2-bit: one byte, 4 codes; 3-bit: three bytes, 8 codes, moved into place by a dword permute
  // and a byte shuffle); phase k of every lane is lane >> (bits * k), whose low bits index the
  // value table repeated to the permute's width (T16[i] = T[i mod 2^bits], or T8), so one vpermps
  // decodes a vector of codes. x is deinterleaved per step into the same phases: 16 lanes per
  // phase, which AVX2 covers in two halves.
  template <class V>
  static void rows_narrow_float(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                                std::size_t r1) noexcept {
    constexpr int phases = static_cast<int>(narrow_step / 16);
    const float* table = value_table();
    alignas(64) float tr[16];
    for (unsigned i = 0; i < 16; ++i) tr[i] = table[i & ((1u << bits) - 1u)];
    const float* xp = p.xp;
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      const __m512 tv = _mm512_load_ps(tr);
      const __m512i dwords = _mm512_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 9, 10, 11, 0);
      const __m512i spread = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1));
      rows_float<V, narrow_step>(m, p, y, r0, r1, 1.0f,
                                 [&](const std::uint8_t* row, std::size_t c, __m512& a, __m512& b) {
        __m512i v;
        if constexpr (bits == 2) {
          v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 4)));
        } else {  // 48 bytes (a masked load never touches the bytes past them)
          v = _mm512_maskz_loadu_epi8(0x0000FFFFFFFFFFFFull, row + c / 8 * 3);
          v = _mm512_shuffle_epi8(_mm512_permutexvar_epi32(dwords, v), spread);
        }
        const float* xc = xp + c;
        a = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, tv), _mm512_loadu_ps(xc), a);
        b = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, bits), tv), _mm512_loadu_ps(xc + 16), b);
        for (int k = 2; k < phases; k += 2) {
          a = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, bits * k), tv), _mm512_loadu_ps(xc + 16 * k), a);
          b = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, bits * (k + 1)), tv),
                              _mm512_loadu_ps(xc + 16 * (k + 1)), b);
        }
      });
#endif
    } else {
      const __m256 tv = _mm256_load_ps(tr);
      const __m256i dwords = _mm256_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0);
      const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1,  //
                                              0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
      rows_float<V, narrow_step>(m, p, y, r0, r1, 1.0f,
                                 [&](const std::uint8_t* row, std::size_t c, __m256& a, __m256& b) {
        for (std::size_t h = 0; h < 2; ++h) {
          __m256i v;
          if constexpr (bits == 2) {
            v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 4 + 8 * h)));
          } else {  // 24 bytes: 16 + 8
            const std::uint8_t* q = row + c / 8 * 3 + 24 * h;
            const __m256i raw = _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q))),
                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 16)), 1);
            v = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(raw, dwords), spread);
          }
          const float* xc = xp + c + 8 * h;
          for (int k = 0; k < phases; k += 2) {
            a = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(tv, _mm256_srli_epi32(v, bits * k)), _mm256_loadu_ps(xc + 16 * k), a);
            b = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(tv, _mm256_srli_epi32(v, bits * (k + 1))),
                                _mm256_loadu_ps(xc + 16 * (k + 1)), b);
          }
        }
      });
    }
  }

  /// The group scales of the lanes of a chunk when groups are smaller than the chunk: lane i
  /// covers lane_cols columns, so it belongs to group (i * lane_cols) / group of the chunk.
  template <class V>
  static QUANT_ALWAYS_INLINE typename V::i lane_group_index(std::size_t lane_cols, std::size_t group) noexcept {
    alignas(64) std::int32_t idx[16];
    for (std::size_t i = 0; i < 16; ++i) idx[i] = static_cast<std::int32_t>(i * lane_cols / group);
    return V::index(idx);
  }

  // The integer paths: Chunk columns per step, the step's int32 lanes (lane_cols columns each,
  // inside one activation block) converted and scaled by lane scale * group scale. The step's
  // dot(row, c) is sum d(q) * xq per lane, where d(q) = tail_table[q] and the weight value is
  // mult * (d(q) - off - z).
  template <class V, std::size_t Chunk, class Dot>
  static QUANT_ALWAYS_INLINE void rows_int(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                                           std::size_t r1, float off, const float* tail_table, Dot dot) noexcept {
    using f = typename V::f;
    const values_t& v = values_t::get();
    const scale_grid& g = m.grid;
    constexpr std::size_t lane_cols = Chunk / V::n;
    const std::size_t full = g.cols / Chunk * Chunk;
    const bool small_groups = g.groups_per_row > 1 && g.group % Chunk != 0;  // 32 or 64: several per step
    const std::size_t per_group = small_groups || g.groups_per_row == 1 ? 0 : g.group / Chunk;
    const typename V::i lane_idx = lane_group_index<V>(lane_cols, small_groups ? g.group : Chunk);
    alignas(64) float s[scale_batch + 16] = {};
    for (std::size_t r = r0; r < r1; ++r) {
      const std::uint8_t* row = m.codes + r * m.row_bytes;
      f t0 = V::zero(), t1 = t0;
      float tail = 0.0f, corr = 0.0f;
      for (std::size_t gb = 0; gb < g.groups_per_row; gb += scale_batch) {
        const std::size_t ng = std::min(scale_batch, g.groups_per_row - gb);
        row_scales(m, r, gb, ng, s);
        for (std::size_t i = 0; i < ng; ++i) {
          if constexpr (Asym) corr += s[i] * (zero_of(m, g.index(r, gb + i), 0) + off) * p.gsum[gb + i];
          else corr += s[i] * off * p.gsum[gb + i];
        }
        const std::size_t c0 = g.group_begin(gb), c1 = g.group_end(gb + ng - 1), cf = std::max(c0, std::min(c1, full));
        if (small_groups) {
          const std::size_t step = Chunk / g.group;  // groups per step
          std::size_t c = c0;
          const float* sk = s;
          for (; c + 2 * Chunk <= cf; c += 2 * Chunk, sk += 2 * step) {
            const f w0 = V::permute(lane_idx, V::load(sk)), w1 = V::permute(lane_idx, V::load(sk + step));
            t0 = V::fmadd(dot(row, c), V::mul(w0, V::load(p.sxl + c / lane_cols)), t0);
            t1 = V::fmadd(dot(row, c + Chunk), V::mul(w1, V::load(p.sxl + c / lane_cols + V::n)), t1);
          }
          if (c < cf) {
            const f w0 = V::permute(lane_idx, V::load(sk));
            t0 = V::fmadd(dot(row, c), V::mul(w0, V::load(p.sxl + c / lane_cols)), t0);
          }
        } else {
          if (per_group == 1) {  // one step per group (g = Chunk): two groups per iteration
            const std::size_t n = (cf - c0) / Chunk;
            std::size_t k = 0;
            for (; k + 2 <= n; k += 2) {
              const std::size_t c = c0 + k * Chunk;
              t0 = V::fmadd(dot(row, c), V::mul(V::set1(s[k]), V::load(p.sxl + c / lane_cols)), t0);
              t1 = V::fmadd(dot(row, c + Chunk), V::mul(V::set1(s[k + 1]), V::load(p.sxl + c / lane_cols + V::n)), t1);
            }
            if (k < n) {
              const std::size_t c = c0 + k * Chunk;
              t0 = V::fmadd(dot(row, c), V::mul(V::set1(s[k]), V::load(p.sxl + c / lane_cols)), t0);
            }
          } else {
            for (std::size_t i = 0; i < ng; ++i) {
              const std::size_t ca = c0 + i * g.group, ce = std::min(ca + g.group, cf);
              if (ca >= ce) break;
              f a0 = V::zero(), a1 = a0;
              std::size_t c = ca;
              for (; c + 2 * Chunk <= ce; c += 2 * Chunk) {
                a0 = V::fmadd(dot(row, c), V::load(p.sxl + c / lane_cols), a0);
                a1 = V::fmadd(dot(row, c + Chunk), V::load(p.sxl + c / lane_cols + V::n), a1);
              }
              if (c + Chunk <= ce) a0 = V::fmadd(dot(row, c), V::load(p.sxl + c / lane_cols), a0);
              t0 = V::fmadd(V::add(a0, a1), V::set1(s[i]), t0);
            }
          }
        }
        if (cf < c1)  // the row's last columns, past the last whole step
          for (std::size_t gi = gb; gi < gb + ng; ++gi) {
            const std::size_t a = std::max(g.group_begin(gi), cf), e = g.group_end(gi);
            if (a < e) tail += s[gi - gb] * scalar_part(row, a, e, tail_table, p.x);
          }
      }
      y[r] = v.mult * (V::sum(V::add(t0, t1)) + tail - corr);
    }
  }

  /// Adds sum over each 4-byte group of u * s (u unsigned, s signed) to the int32 lanes of acc:
  /// vpdpbusd with VNNI, else vpmaddubsw + vpmaddwd (the caller keeps pair sums within int16).
  static QUANT_ALWAYS_INLINE __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) noexcept {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  }
#if defined(QUANT_ISA_AVX512)
  static QUANT_ALWAYS_INLINE __m512i dot_u8s8(__m512i acc, __m512i u, __m512i s) noexcept {
#if defined(QUANT_ISA_AVX512_VNNI)
    if constexpr (vnni) return _mm512_dpbusd_epi32(acc, u, s);
#endif
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
  }
#endif

  // Fast 4-bit with integer dot products: 4 * V::n * 2 codes per load (128 or 64), nibbles split
  // with and/shift (one vpternlogd each for signed int4 on AVX-512), mapped to unsigned bytes
  // (xor 0x88 for signed int4, vpshufb for tables) and multiplied with the deinterleaved int8
  // activations.
  template <class V>
  static void rows_nibble_int(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                              std::size_t r1) noexcept {
    const values_t& v = values_t::get();
    constexpr bool sym_int = !Asym && is_integer_format_v<Fmt>;
    constexpr bool lookup = !Asym && !is_integer_format_v<Fmt>;
    const std::int8_t* xq = p.xq;
    const float off = static_cast<float>(v.offset);
    const __m128i utab = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v.u8));
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      const __m512i lowmask = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x88));
      const __m512i ut = _mm512_broadcast_i32x4(utab);
      rows_int<V, 128>(m, p, y, r0, r1, off, v.u8f, [&](const std::uint8_t* row, std::size_t c) {
        const __m512i b = _mm512_loadu_si512(row + c / 2);
        __m512i lo, hi;
        if constexpr (sym_int) {  // (b ^ 0x88) & 0x0F in one ternary-logic op: 0x28 = (A ^ B) & C
          lo = _mm512_ternarylogic_epi32(b, flip, lowmask, 0x28);
          hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(b, 4), flip, lowmask, 0x28);
        } else {
          lo = _mm512_and_si512(b, lowmask);
          hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), lowmask);
        }
        if constexpr (lookup) {
          lo = _mm512_shuffle_epi8(ut, lo);
          hi = _mm512_shuffle_epi8(ut, hi);
        }
        __m512i acc = dot_u8s8(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq + c));
        acc = dot_u8s8(acc, hi, _mm512_loadu_si512(xq + c + 64));
        return _mm512_cvtepi32_ps(acc);
      });
#endif
    } else {
      const __m256i lowmask = _mm256_set1_epi8(0x0F), flip = _mm256_set1_epi8(static_cast<char>(0x88));
      const __m256i ut = _mm256_broadcastsi128_si256(utab);
      rows_int<V, 64>(m, p, y, r0, r1, off, v.u8f, [&](const std::uint8_t* row, std::size_t c) {
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c / 2));
        if constexpr (sym_int) b = _mm256_xor_si256(b, flip);
        __m256i lo = _mm256_and_si256(b, lowmask), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), lowmask);
        if constexpr (lookup) {
          lo = _mm256_shuffle_epi8(ut, lo);
          hi = _mm256_shuffle_epi8(ut, hi);
        }
        __m256i acc = dot_u8s8(_mm256_setzero_si256(), lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c)));
        acc = dot_u8s8(acc, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c + 32)));
        return _mm256_cvtepi32_ps(acc);
      });
    }
  }

  // V::n 8-bit codes, in pieces of 8 (AVX2) or 16 (AVX-512) values, as float vectors: out[j]
  // holds codes [j * V::n, (j + 1) * V::n) of q. Integers are widened and converted; fp8
  // e5m2/e4m3 are rebuilt as fp16 bits and converted (e4m3 as value * 2^-8, its NaN codes
  // patched); other formats are gathered from the 256-entry table.
  template <class V>
  static QUANT_ALWAYS_INLINE void byte_values(const std::uint8_t* q, const float* table, typename V::f* out) noexcept {
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      if constexpr (is_integer_format_v<Fmt>) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        if constexpr (Asym) {
          out[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(b)));
          out[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(b, 1)));
        } else {
          out[0] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
          out[1] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
        }
      } else if constexpr (is_e5m2_v<Fmt> || is_e4m3_v<Fmt>) {
        const __m512i h = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
        __m512i f;
        if constexpr (is_e5m2_v<Fmt>) {
          f = _mm512_slli_epi16(h, 8);  // e5m2 is the high byte of an fp16
        } else {
          // sign to bit 15, exponent and mantissa to bits 7..13: an fp16 worth value * 2^-8
          const __m512i mag = _mm512_and_si512(_mm512_slli_epi16(h, 7), _mm512_set1_epi16(0x3F80));
          f = _mm512_ternarylogic_epi32(mag, _mm512_slli_epi16(h, 8), _mm512_set1_epi16(static_cast<short>(0x8000)), 0xF8);
          const __mmask32 nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(h, _mm512_set1_epi16(0x7F)), _mm512_set1_epi16(0x7F));
          f = _mm512_mask_mov_epi16(f, nan, _mm512_set1_epi16(0x7E00));
          if constexpr (Fast)  // the fast mode's subnormal codes are zero (kernels/values.hpp)
            f = _mm512_maskz_mov_epi16(_mm512_test_epi16_mask(h, _mm512_set1_epi16(0x78)), f);
        }
        out[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(f));
        out[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(f, 1));
      } else {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        out[0] = _mm512_i32gather_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(b)), table, 4);
        out[1] = _mm512_i32gather_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(b, 1)), table, 4);
      }
#endif
    } else {
      if constexpr (is_integer_format_v<Fmt>) {
        for (int j = 0; j < 2; ++j) {
          const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * j));
          out[j] = _mm256_cvtepi32_ps(Asym ? _mm256_cvtepu8_epi32(b) : _mm256_cvtepi8_epi32(b));
        }
      } else if constexpr (is_e5m2_v<Fmt> || is_e4m3_v<Fmt>) {
        const __m256i h = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
        __m256i f;
        if constexpr (is_e5m2_v<Fmt>) {
          f = _mm256_slli_epi16(h, 8);
        } else {
          const __m256i mag = _mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16(0x3F80));
          const __m256i sign = _mm256_and_si256(_mm256_slli_epi16(h, 8), _mm256_set1_epi16(static_cast<short>(0x8000)));
          f = _mm256_or_si256(mag, sign);
          const __m256i nan = _mm256_cmpeq_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7F)), _mm256_set1_epi16(0x7F));
          f = _mm256_blendv_epi8(f, _mm256_set1_epi16(0x7E00), nan);
          if constexpr (Fast)
            f = _mm256_andnot_si256(_mm256_cmpeq_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x78)), _mm256_setzero_si256()), f);
        }
        out[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(f));
        out[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(f, 1));
      } else {
        for (int j = 0; j < 2; ++j) {
          const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * j));
          out[j] = _mm256_i32gather_ps(table, _mm256_cvtepu8_epi32(b), 4);
        }
      }
    }
  }

  // Exact (or float fast) 8-bit: 2 * V::n codes per step. e4m3 is rebuilt as value * 2^-8
  // (values_t::fast equals exact for fp8).
  template <class V>
  static void rows_byte_float(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                              std::size_t r1) noexcept {
    using f = typename V::f;
    const float* table = value_table();
    const float* x = p.x;
    rows_float<V, 2 * V::n>(m, p, y, r0, r1, is_e4m3_v<Fmt> ? 256.0f : 1.0f,
                            [&](const std::uint8_t* row, std::size_t c, f& a, f& b) {
                              f w[2];
                              byte_values<V>(row + c, table, w);
                              a = V::fmadd(w[0], V::load(x + c), a);
                              b = V::fmadd(w[1], V::load(x + c + V::n), b);
                            });
  }

  // Fast 8-bit integers: 4 * V::n codes per step against int8 activations. With VNNI, vpdpbusd
  // on unsigned codes (xor 0x80 when signed); without, the signed value (the code - 128 when
  // unsigned) by its sign: vpmaddubsw(|w|, x * sign(w)), whose pair sums (<= 2 * 128 * 127)
  // cannot saturate.
  template <class V>
  static void rows_byte_int(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                            std::size_t r1) noexcept {
    const values_t& v = values_t::get();
    const std::int8_t* xq = p.xq;
    constexpr bool use_vnni = vnni && V::n == 16;
    // d(q) = u8 (VNNI) or u8 - 128 (the signed value); off follows (kernels/values.hpp).
    alignas(64) float d[256];
    for (unsigned j = 0; j < 256; ++j) d[j] = v.u8f[j] - (use_vnni ? 0.0f : 128.0f);
    const float off = static_cast<float>(v.offset) - (use_vnni ? 0.0f : 128.0f);
    if constexpr (V::n == 16 && bf16_fp8) {
#if defined(QUANT_ISA_AVX512_BF16)
      rows_fp8_bf16(m, p, y, r0, r1);
#endif
    } else if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
      rows_int<V, 64>(m, p, y, r0, r1, off, d, [&](const std::uint8_t* row, std::size_t c) {
        __m512i b = _mm512_loadu_si512(row + c);
        const __m512i x = _mm512_loadu_si512(xq + c);
        if constexpr (use_vnni) {
          if constexpr (!Asym) b = _mm512_xor_si512(b, flip);
          return _mm512_cvtepi32_ps(dot_u8s8(_mm512_setzero_si512(), b, x));
        } else {
          if constexpr (Asym) b = _mm512_xor_si512(b, flip);
          const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(b), _mm512_setzero_si512(), x);
          return _mm512_cvtepi32_ps(dot_u8s8(_mm512_setzero_si512(), _mm512_abs_epi8(b), sx));
        }
      });
#endif
    } else {
      const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
      rows_int<V, 32>(m, p, y, r0, r1, off, d, [&](const std::uint8_t* row, std::size_t c) {
        __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
        if constexpr (Asym) b = _mm256_xor_si256(b, flip);
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c));
        return _mm256_cvtepi32_ps(dot_u8s8(_mm256_setzero_si256(), _mm256_abs_epi8(b), _mm256_sign_epi8(x, b)));
      });
    }
  }

#if defined(QUANT_ISA_AVX512_BF16)
  // Fast fp8 e4m3 with AVX-512 BF16: 64 codes per step. A code c, sign-extended to 16 bits and
  // shifted left by 4, masked to sign | exponent | mantissa, is the bf16 of value * 2^-120
  // (subnormal codes become bf16 subnormals, which vdpbf16ps reads as zero: the fast-mode value,
  // kernels/values.hpp); the NaN codes are patched to a bf16 NaN. vdpbf16ps multiplies pairs by
  // the activations xq * 2^120 (exact in bf16) and sums each 32 columns, one activation block,
  // in float; the two blocks of a step are folded into lanes 0-7 and 8-15 for rows_int.
  static void rows_fp8_bf16(const gemv_problem& m, const gemv_prepared& p, float* y, std::size_t r0,
                            std::size_t r1) noexcept {
    using V = lanes512;
    const values_t& v = values_t::get();
    const std::uint16_t* xb = p.xb;
    const __m512i field = _mm512_set1_epi16(static_cast<short>(0x87F0)), nan_bits = _mm512_set1_epi16(0x07F0);
    const __m512i qnan = _mm512_set1_epi16(0x7FC0);
    auto block = [&](const std::uint8_t* q, const std::uint16_t* x) {
      const __m512i h = _mm512_slli_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q))), 4);
      const __mmask32 nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(h, nan_bits), nan_bits);
      const __m512i w = _mm512_mask_mov_epi16(_mm512_and_si512(h, field), nan, qnan);
      return _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w, (__m512bh)_mm512_loadu_si512(x));
    };
    rows_int<V, 64>(m, p, y, r0, r1, 0.0f, v.fast, [&](const std::uint8_t* row, std::size_t c) {
      const __m512 a = block(row + c, xb + c), b = block(row + c + 32, xb + c + 32);
      return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    });
  }
#endif
#endif  // QUANT_ISA_AVX2
};

}  // namespace detail
QUANT_NAMESPACE_END
