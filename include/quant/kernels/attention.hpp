// quant/kernels/attention.hpp: the attention kernels that read a quantized KV cache directly
// (kv_cache.hpp is the front end that validates arguments and owns the layout).
//
// For one query position and one K/V head h, with the g query heads that share it (grouped-query
// attention), the kernels compute
//
//   scores    s[i][t] = q_i . K[h][t]                 t < n     (q_i already times the softmax scale)
//   softmax   p[i][t] = exp(s[i][t] - max_t s[i][t])  in float, the sum returned for later
//   values    o[i]    = sum_t p[i][t] V[h][t]
//
// K[h][t] is the dequantized row of token t: s_tg * (u(code) - z_tg) over group g of the row, u
// the code's value (the format's decode, or the unsigned code for asymmetric schemes). The codes
// are decoded in registers and never written back to memory. Every pass over a K/V head serves
// all g query heads (4 per pass or tile), so the cache is read once per query position.
//
// Exact mode (fp32 q, float arithmetic):
//   scores  per token row, the row is decoded a step at a time (32 dims on AVX-512 and for 4-bit
//           codes, 16 on AVX2) and multiplied into one accumulator per query head; the 4 are
//           reduced together. One scale per row: the scale and zero point apply to the reduced
//           dot product, s * (dot - z * sum q); several groups: each step's values are scaled
//           first, one FMA shared by the query heads.
//   values  in blocks of 64 tokens: the coefficients a_tg = p_t * s_tg (and the zero-point sums
//           sum_t a_tg z_tg) are computed once per block, then tiles of 4 query heads x 64 dims
//           (AVX2: 2 x 32) accumulate a * u over the block's tokens in registers.
//   decode  4-bit codes 32 at a time (16 bytes) by a permute from the format's 16-entry value
//           table (any 4-bit format); even dims come from the low nibbles and odd ones from the
//           high nibbles, so q is prepared deinterleaved per 32 dims and the output re-interleaved
//           once at the end (as the GEMV nibble path does with x). int8 is widened and converted;
//           fp8 e4m3 / e5m2 are rebuilt as fp16 bits and converted (e4m3 as value * 2^-8, the 2^8
//           in the scale); other 8-bit formats are gathered from their table. fp32 rows are
//           loaded as they are: the same loops, the baseline a quantized cache is measured against.
// Fast mode (attention_mode::fast, defined in kv_cache.hpp: int8 q per 32 dims, bf16 weights):
//   scores  int8 and int4 keys: a tile of 16 (AVX2: 8) consecutive rows is loaded a vector of
//           code bytes at a time and transposed as 32-bit words in registers, so each vector holds
//           one word (4 int8 or 8 int4 codes) of every token of the tile; one vpdpbusd (without
//           VNNI: vpmaddubsw + vpmaddwd) with a broadcast word of q adds 4 products to every token:
//           no horizontal sums, per 32-dim block one convert and FMA with q's block scale, per
//           group one FMA with the tokens' scales, and a tile's scores are one store per head.
//           The transpose (64 shuffles per 16 rows x 64 bytes) is what the row-wise reduction it
//           replaces cost per 4 rows. Other formats: the exact kernels on the quantized q.
//   values  with AVX-512 BF16 and codes whose values are exact in bf16 (int8, int4, fp8): two
//           tokens' decoded values are packed as bf16 pairs (truncating their float bits, exact)
//           and multiplied by the pair of bf16 weights with vdpbf16ps, half the FMAs of the exact
//           pass; elsewhere the exact kernels on the bf16-rounded weights (the same numbers).
//
// Tiers (kernels/isa.hpp): the AVX-512 and AVX2 paths need head_dim and the group size to be
// multiples of the step (or one group per row); everything else, and every row on the generic
// tier (SSE2 on a baseline x86-64 build, NEON, ...), decodes a row through the format's value
// table into a small buffer and runs xsimd dot products and axpys on it. The results agree with
// a double-precision reference to float rounding on every path (tests/test_kv_cache.cpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "../config.hpp"
#include "../core/scalar_types.hpp"
#include "../formats/format_traits.hpp"
#include "../formats/minifloat.hpp"
#include "../layout/packing.hpp"
#include "activations.hpp"
#include "isa.hpp"
#include "simd/gemv.hpp"
#include "values.hpp"

#if defined(QUANT_ISA_AVX2) || defined(QUANT_ISA_AVX512)
#include <immintrin.h>
#endif

QUANT_NAMESPACE_BEGIN
namespace detail {

/// One part (K or V) of a KV cache as the kernels read it. Row (h, t) starts at
/// codes + (h * capacity + t) * row_bytes; its scales (and zero points, one byte each) at index
/// (h * capacity + t) * groups + g. groups == 0: one static scale for the whole part.
struct kv_part_problem {
  const std::uint8_t* codes = nullptr;
  std::size_t row_bytes = 0;
  std::size_t capacity = 0;
  std::size_t head_dim = 0;
  const void* scales = nullptr;
  const std::uint8_t* zeros = nullptr;
  std::size_t groups = 0;  ///< scales per row; 0 for a static (per-tensor) scale and for fp32
  std::size_t group = 0;   ///< dims per group (head_dim with one group per row)
  float static_scale = 1.0f;

  const std::uint8_t* row(std::size_t h, std::size_t t) const noexcept { return codes + (h * capacity + t) * row_bytes; }
  std::size_t scale_index(std::size_t h, std::size_t t) const noexcept { return (h * capacity + t) * groups; }
};

/// The queries of one K/V head as the scores kernels read them (prepare_q writes them; the
/// sizes come from attention_kernel::query_sizes).
struct kv_queries {
  float* qp = nullptr;        ///< nq x head_dim: scale * q (fast mode: its int8 quantization dequantized),
                              ///< deinterleaved per 32 dims on the 4-bit vector path
  float* qsum = nullptr;      ///< nq x G: the group sums of qp (asymmetric schemes, float paths)
  std::int8_t* q8 = nullptr;  ///< fast mode: nq x head_dim int8 (4-bit integer path: per 8 dims, even then odd)
  float* sx = nullptr;        ///< fast mode: nq x head_dim / 32 block scales of q8
  float* corr = nullptr;      ///< fast integer path: G x nq, sum over the group's blocks of sx * sum q8
  bool fast = false;          ///< fast mode: q quantized to int8 per block of 32 (fast_block_size)
  bool integer = false;       ///< fast mode on the integer path
};

/// Element counts of the sections of kv_queries for nq query heads.
struct kv_query_sizes {
  std::size_t qp = 0, qsum = 0, q8 = 0, sx = 0, corr = 0;
};

/// Tokens per block of the values pass (its coefficients stay in L1).
inline constexpr std::size_t attention_block = 64;


/// 2^k as a float.
constexpr float pow2f(int k) noexcept { return k >= 0 ? static_cast<float>(1ull << k) : 1.0f / static_cast<float>(1ull << -k); }

/// Softmax numerator of a row of n scores in place: s[t] = exp(s[t] - max); returns the sum.
/// xsimd's exp on the tier's vectors, float throughout.
template <class Isa>
float softmax_numerator(float* s, std::size_t n) noexcept {
  using batch = xsimd::batch<float, typename Isa::arch>;
  constexpr std::size_t w = batch::size;
  float mx = -std::numeric_limits<float>::infinity();
  std::size_t t = 0;
  if (n >= w) {
    batch m = batch::load_unaligned(s);
    for (t = w; t + w <= n; t += w) m = xsimd::max(m, batch::load_unaligned(s + t));
    alignas(64) float lanes[w];
    m.store_aligned(lanes);
    for (std::size_t j = 0; j < w; ++j) mx = lanes[j] > mx ? lanes[j] : mx;
  }
  for (; t < n; ++t) mx = s[t] > mx ? s[t] : mx;
  const batch vm(mx);
  batch acc0(0.0f), acc1(0.0f);
  t = 0;
  for (; t + 2 * w <= n; t += 2 * w) {
    const batch e0 = xsimd::exp(batch::load_unaligned(s + t) - vm);
    const batch e1 = xsimd::exp(batch::load_unaligned(s + t + w) - vm);
    e0.store_unaligned(s + t);
    e1.store_unaligned(s + t + w);
    acc0 += e0;
    acc1 += e1;
  }
  for (; t + w <= n; t += w) {
    const batch e = xsimd::exp(batch::load_unaligned(s + t) - vm);
    e.store_unaligned(s + t);
    acc0 += e;
  }
  float sum = xsimd::hadd(acc0 + acc1);
  for (; t < n; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  return sum;
}

#if defined(QUANT_ISA_AVX2)
/// The sums of four 8-lane vectors, {sum a, sum b, sum c, sum d}.
QUANT_ALWAYS_INLINE __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) noexcept {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
#endif
#if defined(QUANT_ISA_AVX512)
QUANT_ALWAYS_INLINE __m256 fold512(__m512 v) noexcept {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
/// The sums of four 16-lane vectors.
QUANT_ALWAYS_INLINE __m128 sum4(__m512 a, __m512 b, __m512 c, __m512 d) noexcept {
  return sum4(fold512(a), fold512(b), fold512(c), fold512(d));
}
#endif

/// The attention kernels for a cache of format Fmt (float: fp32 rows) with scales of type Scale,
/// on tier Isa.
template <class Fmt, bool Asym, class Scale, class Isa>
struct attention_kernel {
  static constexpr bool fp32 = std::is_same_v<Fmt, float>;
  static constexpr unsigned bits = [] {
    if constexpr (std::is_same_v<Fmt, float>) return 32u;
    else return format_traits<Fmt>::bits;
  }();
  static constexpr bool e4m3 = [] {
    if constexpr (std::is_same_v<Fmt, float>) return false;
    else return is_e4m3_v<Fmt> && !Asym;
  }();
  static constexpr bool e5m2 = [] {
    if constexpr (std::is_same_v<Fmt, float>) return false;
    else return is_e5m2_v<Fmt> && !Asym;
  }();
  static constexpr bool avx512 = Isa::id >= isa::avx512;
  /// Tiers with the hand-written paths, when this translation unit can compile them.
  static constexpr bool vector_tier = Isa::id >= isa::avx2 && isa_compiled_v<Isa> && (bits == 32 || bits == 8 || bits == 4);
  static constexpr std::size_t lanes = avx512 ? 16 : 8;
  /// Dims decoded per step on the vector tiers, and the vectors that holds.
  static constexpr std::size_t step = bits == 4 ? 32 : 2 * lanes;
  static constexpr std::size_t nvec = step / lanes;
  /// Query heads per pass over a row (scores) and per tile (values), vectors per values tile.
  static constexpr std::size_t score_heads = 4;
  static constexpr std::size_t tile_heads = avx512 ? 4 : 2;
  static constexpr std::size_t tile_vecs = 4;
  static constexpr std::size_t tile_steps = tile_vecs / nvec;

  static const float* table() noexcept {
    if constexpr (fp32) return nullptr;
    else return code_values<Fmt, Asym>::get().exact;
  }

  /// True when part p runs the vector path of this tier.
  static bool vector_path(const kv_part_problem& p) noexcept {
    if constexpr (!vector_tier) {
      (void)p;
      return false;
    } else {
      return p.head_dim % step == 0 && (p.groups <= 1 || p.group % step == 0);
    }
  }
  /// True when the vector path works on dims deinterleaved per 32 (4-bit codes).
  static bool deinterleaved(const kv_part_problem& p) noexcept { return bits == 4 && vector_path(p); }
  /// vdpbf16ps for the fast values pass: AVX-512 BF16 in this translation unit's own tier.
#if defined(QUANT_ISA_AVX512_BF16)
  static constexpr bool bf16_dp = !fp32 && Isa::id == default_isa::id && Isa::id >= isa::avx512;
#else
  static constexpr bool bf16_dp = false;
#endif
  /// True when the fast values pass runs on vdpbf16ps: every code's value (as the vector path
  /// decodes it) is exact in bf16 (int8, int4, fp8, e2m1; not nf4's table).
  static bool bf16_pairs(const kv_part_problem& p) noexcept {
    if constexpr (!bf16_dp) {
      (void)p;
      return false;
    } else {
      static const bool exact = [] {
        const float* tab = table();
        const float f = e4m3 ? 1.0f / 256.0f : 1.0f;
        for (unsigned c = 0; c < (1u << bits); ++c) {
          const float v = tab[c] * f;
          if (std::isfinite(v) && bf16::from_float(v).to_float() != v) return false;
        }
        return true;
      }();
      return exact && vector_path(p);
    }
  }

  /// The constant the vector path's decoded values carry (e4m3: value * 2^-8).
  static float value_factor(const kv_part_problem& p) noexcept { return e4m3 && vector_path(p) ? 256.0f : 1.0f; }

  static QUANT_ALWAYS_INLINE float scale_at(const kv_part_problem& p, std::size_t k) noexcept {
    return scale_traits<Scale>::decode(static_cast<const Scale*>(p.scales)[k]);
  }
  static QUANT_ALWAYS_INLINE float zero_at(const kv_part_problem& p, std::size_t k) noexcept {
    if constexpr (Asym) return static_cast<float>(p.zeros[k]);
    else {
      (void)p, (void)k;
      return 0.0f;
    }
  }

  /// Row (h, t) dequantized into out[0, head_dim): s * (u - z), the library's element rule.
  static void dequantize_row(const kv_part_problem& p, std::size_t h, std::size_t t, float* out) noexcept {
    const std::uint8_t* row = p.row(h, t);
    if constexpr (fp32) {
      std::memcpy(out, row, p.head_dim * sizeof(float));
    } else {
      const float* tab = table();
      if (p.groups == 0) {
        for (std::size_t c = 0; c < p.head_dim; ++c) out[c] = p.static_scale * tab[read_code(row, c, bits)];
        return;
      }
      const std::size_t k0 = p.scale_index(h, t);
      for (std::size_t g = 0; g < p.groups; ++g) {
        const float s = scale_at(p, k0 + g), z = zero_at(p, k0 + g);
        const std::size_t c1 = std::min(p.head_dim, (g + 1) * p.group);
        for (std::size_t c = g * p.group; c < c1; ++c) {
          if constexpr (Asym) out[c] = s * (tab[read_code(row, c, bits)] - z);
          else out[c] = s * tab[read_code(row, c, bits)];
        }
      }
    }
  }

  // ---- q ------------------------------------------------------------------------------------

  static constexpr bool int_format = [] {
    if constexpr (std::is_same_v<Fmt, float>) return false;
    else return is_integer_format_v<Fmt> && (format_traits<Fmt>::bits == 8 || format_traits<Fmt>::bits == 4);
  }();
  /// The fast integer path: dims per step (one vector of code bytes) and per int32 lane.
  static constexpr std::size_t int_step = (bits == 4 ? 8 : 4) * lanes;
#if defined(QUANT_ISA_AVX512_VNNI)
  static constexpr bool vnni = Isa::id >= isa::avx512_vnni;
#else
  static constexpr bool vnni = false;
#endif
  /// The integer the fast integer path multiplies is the code's value + int_delta: vpdpbusd wants
  /// unsigned bytes (int8 + 128, int4 + 8); without VNNI int8 runs signed (asymmetric: code - 128).
  static constexpr int int_delta = bits == 4 ? (Asym ? 0 : 8) : (vnni ? (Asym ? 0 : 128) : (Asym ? -128 : 0));

  /// True when the fast mode runs part p on integer dot products (int8 and int4 codes).
  static bool integer_path(const kv_part_problem& p) noexcept {
    if constexpr (!vector_tier || !int_format) {
      (void)p;
      return false;
    } else {
      // whole vectors of code bytes per row; groups of whole 32-dim blocks of q
      return p.head_dim % int_step == 0 && (p.groups <= 1 || p.group % fast_block_size == 0);
    }
  }

  static kv_query_sizes query_sizes(const kv_part_problem& p, std::size_t nq) noexcept {
    const std::size_t d = p.head_dim, ng = std::max<std::size_t>(p.groups, 1);
    return {nq * d, nq * ng, nq * d, nq * ((d + fast_block_size - 1) / fast_block_size), nq * ng};
  }

  /// Prepares the nq queries of one K/V head (q: nq rows of head_dim, row stride ldq) into Q,
  /// whose sections have query_sizes(p, nq) elements: qp = scale * q, or in the fast mode its
  /// quantization to int8 per block of 32 dims (quantize_activations, the GEMV fast mode's rule)
  /// dequantized; the group sums for asymmetric schemes; the integer path's int8 q, lane scales
  /// and per-group corrections.
  static void prepare_q(const kv_part_problem& p, const float* q, std::size_t ldq, std::size_t nq, float scale,
                        bool fast, kv_queries& Q) noexcept {
    const std::size_t d = p.head_dim, ng = std::max<std::size_t>(p.groups, 1), gs = p.groups ? p.group : d;
    const std::size_t nb = (d + fast_block_size - 1) / fast_block_size;
    fast = fast && !fp32;  // an fp32 cache has one mode
    Q.fast = fast;
    Q.integer = fast && integer_path(p);
    alignas(64) float tmp[32];
    alignas(64) std::int8_t tmp8[8];
    for (std::size_t i = 0; i < nq; ++i) {
      float* o = Q.qp + i * d;
      for (std::size_t c = 0; c < d; ++c) o[c] = scale * q[i * ldq + c];
      std::int8_t* q8 = Q.q8 + i * d;
      float* sx = Q.sx + i * nb;
      if (fast) quantize_activations(o, d, fast_block_size, q8, sx, o);  // o = its dequantized int8
      if constexpr (Asym) {
        for (std::size_t g = 0; g < ng; ++g) {
          double sum = 0.0;
          for (std::size_t c = g * gs; c < std::min(d, (g + 1) * gs); ++c) sum += o[c];
          Q.qsum[i * ng + g] = static_cast<float>(sum);
        }
      }
      if (Q.integer) {
        // corrections: per group, sum over its blocks of sx * sum q8 (the zero point's and the
        // code offset's share); lane scales: the block of each int32 lane of a step
        for (std::size_t g = 0; g < ng; ++g) {  // [g][i]: the heads of a group side by side
          double sum = 0.0;
          for (std::size_t c = g * gs; c < std::min(d, (g + 1) * gs); ++c)
            sum += static_cast<double>(sx[c / fast_block_size]) * q8[c];
          Q.corr[g * nq + i] = static_cast<float>(sum);
        }
        if constexpr (bits == 4)
          for (std::size_t c0 = 0; c0 < d; c0 += 8) {  // per 8 dims (a word of codes): even, then odd
            deinterleave_chunks(q8 + c0, 8, 8, tmp8);
            std::memcpy(q8 + c0, tmp8, 8);
          }
      }
      if (deinterleaved(p))
        for (std::size_t c0 = 0; c0 < d; c0 += 32) {
          deinterleave_phases(o + c0, 32, 32, 2, tmp);
          std::memcpy(o + c0, tmp, sizeof tmp);
        }
    }
  }

  // ---- scores -------------------------------------------------------------------------------

  /// s[i * lds + t] = qp_i . K[h][t] for i < nq, t < n (Q from prepare_q; on the fast integer
  /// path the same product with integer dot products per block of 32 dims).
  static void scores(const kv_part_problem& p, std::size_t h, const kv_queries& Q, std::size_t nq, std::size_t n,
                     float* s, std::size_t lds) noexcept {
#if defined(QUANT_ISA_AVX2)
    if constexpr (vector_tier) {
      if constexpr (int_format)
        if (Q.integer) return scores_int<lanes_t<avx512>>(p, h, Q, nq, n, s, lds);
      if (vector_path(p)) return scores_vector<lanes_t<avx512>>(p, h, Q.qp, Q.qsum, nq, n, s, lds);
    }
#endif
    scores_generic(p, h, Q.qp, nq, n, s, lds);
  }

  static void scores_generic(const kv_part_problem& p, std::size_t h, const float* qp, std::size_t nq, std::size_t n,
                             float* s, std::size_t lds) noexcept {
    constexpr std::size_t piece = 256;
    alignas(64) float buf[piece];
    const std::size_t d = p.head_dim;
    for (std::size_t t = 0; t < n; ++t) {
      if (d <= piece) {
        dequantize_row(p, h, t, buf);
        for (std::size_t i = 0; i < nq; ++i) s[i * lds + t] = dot<Isa>(buf, qp + i * d, d);
      } else {  // rows longer than the buffer: dequantized piece by piece
        for (std::size_t i = 0; i < nq; ++i) s[i * lds + t] = 0.0f;
        dequantize_long_row(p, h, t, [&](const float* v, std::size_t c0, std::size_t m) {
          for (std::size_t i = 0; i < nq; ++i) s[i * lds + t] += dot<Isa>(v, qp + i * d + c0, m);
        });
      }
    }
  }

  /// Calls f(values, c0, m) for pieces of 256 dims of a dequantized long row.
  template <class Fn>
  static void dequantize_long_row(const kv_part_problem& p, std::size_t h, std::size_t t, Fn&& f) noexcept {
    constexpr std::size_t piece = 256;
    alignas(64) float buf[piece];
    const std::uint8_t* row = p.row(h, t);
    const std::size_t d = p.head_dim;
    for (std::size_t c0 = 0; c0 < d; c0 += piece) {
      const std::size_t m = std::min(piece, d - c0);
      if constexpr (fp32) {
        std::memcpy(buf, reinterpret_cast<const float*>(row) + c0, m * sizeof(float));
      } else {
        const float* tab = table();
        for (std::size_t c = c0; c < c0 + m; ++c) {
          float s = p.static_scale, z = 0.0f;
          if (p.groups) {
            const std::size_t k = p.scale_index(h, t) + c / p.group;
            s = scale_at(p, k), z = zero_at(p, k);
          }
          if constexpr (Asym) buf[c - c0] = s * (tab[read_code(row, c, bits)] - z);
          else buf[c - c0] = s * tab[read_code(row, c, bits)];
        }
      }
      f(buf, c0, m);
    }
  }

#if defined(QUANT_ISA_AVX2)
  // ---- vector paths ---------------------------------------------------------------------------

  /// Decodes the step of dims [c, c + step) of a row into nvec vectors of values u (natural order;
  /// 4-bit: even dims, then odd dims).
  template <class V>
  static QUANT_ALWAYS_INLINE void decode(const std::uint8_t* row, std::size_t c, [[maybe_unused]] const float* tab,
                                         typename V::f* out) noexcept {
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      if constexpr (fp32) {
        const float* r = reinterpret_cast<const float*>(row) + c;
        out[0] = _mm512_loadu_ps(r);
        out[1] = _mm512_loadu_ps(r + 16);
      } else if constexpr (bits == 4) {
        const __m512 tv = _mm512_loadu_ps(tab);
        const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 2)));
        out[0] = _mm512_permutexvar_ps(v, tv);
        out[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tv);
      } else if constexpr (is_integer_format_v<Fmt>) {
        for (std::size_t j = 0; j < 2; ++j) {
          const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c + 16 * j));
          out[j] = _mm512_cvtepi32_ps(Asym ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b));
        }
      } else if constexpr (e4m3 || e5m2) {
        const __m512i h = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c)));
        __m512i f;
        if constexpr (e5m2) {
          f = _mm512_slli_epi16(h, 8);  // e5m2 is the high byte of an fp16
        } else {  // sign to bit 15, exponent and mantissa to bits 7..13: an fp16 worth value * 2^-8
          const __m512i mag = _mm512_and_si512(_mm512_slli_epi16(h, 7), _mm512_set1_epi16(0x3F80));
          f = _mm512_ternarylogic_epi32(mag, _mm512_slli_epi16(h, 8), _mm512_set1_epi16(static_cast<short>(0x8000)), 0xF8);
        }
        out[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(f));
        out[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(f, 1));
      } else {
        for (std::size_t j = 0; j < 2; ++j)
          out[j] = _mm512_i32gather_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c + 16 * j))), tab, 4);
      }
#endif
    } else {
      if constexpr (fp32) {
        const float* r = reinterpret_cast<const float*>(row) + c;
        out[0] = _mm256_loadu_ps(r);
        out[1] = _mm256_loadu_ps(r + 8);
      } else if constexpr (bits == 4) {
        const __m256 tlo = _mm256_loadu_ps(tab), thi = _mm256_loadu_ps(tab + 8);
        auto look = [&](__m256i i) {  // tab[i & 15]
          return _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, i), _mm256_permutevar8x32_ps(thi, i),
                                  _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));
        };
        // 16 bytes: codes 0-15 then 16-31; even dims of the 32 first (out[0], out[1]), odd after
        for (std::size_t j = 0; j < 2; ++j) {
          const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2 + 8 * j)));
          out[j] = look(v);
          out[2 + j] = look(_mm256_srli_epi32(v, 4));
        }
      } else if constexpr (is_integer_format_v<Fmt>) {
        for (std::size_t j = 0; j < 2; ++j) {
          const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c + 8 * j));
          out[j] = _mm256_cvtepi32_ps(Asym ? _mm256_cvtepu8_epi32(b) : _mm256_cvtepi8_epi32(b));
        }
      } else if constexpr (e4m3 || e5m2) {
        const __m256i h = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
        __m256i f;
        if constexpr (e5m2) {
          f = _mm256_slli_epi16(h, 8);
        } else {
          const __m256i mag = _mm256_and_si256(_mm256_slli_epi16(h, 7), _mm256_set1_epi16(0x3F80));
          const __m256i sign = _mm256_and_si256(_mm256_slli_epi16(h, 8), _mm256_set1_epi16(static_cast<short>(0x8000)));
          f = _mm256_or_si256(mag, sign);
        }
        out[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(f));
        out[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(f, 1));
      } else {
        for (std::size_t j = 0; j < 2; ++j)
          out[j] = _mm256_i32gather_ps(tab, _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c + 8 * j))), 4);
      }
    }
  }

  template <class V>
  static QUANT_ALWAYS_INLINE __m128 reduce4(typename V::f a, typename V::f b, typename V::f c, typename V::f d) noexcept {
    return sum4(a, b, c, d);
  }

  /// The scores of up to 4 query heads [i0, i0 + H) against tokens [0, n).
  template <class V, std::size_t H>
  static void scores_heads(const kv_part_problem& p, std::size_t h, const float* qp, const float* qsum, std::size_t i0,
                           std::size_t n, float* s, std::size_t lds) noexcept {
    using f = typename V::f;
    const float* tab = table();
    const std::size_t d = p.head_dim;
    const float factor = value_factor(p);
    const bool grouped = p.groups > 1;
    const std::size_t ng = std::max<std::size_t>(p.groups, 1);
    const float* q[4];
    for (std::size_t i = 0; i < 4; ++i) q[i] = qp + (i0 + (i < H ? i : 0)) * d;
    alignas(16) float qs[4] = {0, 0, 0, 0};
    if constexpr (Asym)
      if (!grouped)
        for (std::size_t i = 0; i < H; ++i) qs[i] = qsum[(i0 + i) * ng];
    const __m128 qsv = _mm_load_ps(qs);
    for (std::size_t t = 0; t < n; ++t) {
      const std::uint8_t* row = p.row(h, t);
      f a0 = V::zero(), a1 = a0, a2 = a0, a3 = a0;
      const std::size_t k0 = grouped || p.groups == 1 ? p.scale_index(h, t) : 0;
      for (std::size_t c = 0; c < d; c += step) {
        f u[nvec];
        decode<V>(row, c, tab, u);
        if (grouped) {  // s * (u - z) per step (a step lies inside one group)
          const std::size_t k = k0 + c / p.group;
          const float sg = scale_at(p, k) * factor;
          const f vs = V::set1(sg), vb = V::set1(-sg * zero_at(p, k));
          for (std::size_t j = 0; j < nvec; ++j) u[j] = V::fmadd(u[j], vs, vb);
        }
        for (std::size_t j = 0; j < nvec; ++j) {
          const std::size_t cj = c + j * V::n;
          a0 = V::fmadd(u[j], V::load(q[0] + cj), a0);
          if constexpr (H > 1) a1 = V::fmadd(u[j], V::load(q[1] + cj), a1);
          if constexpr (H > 2) a2 = V::fmadd(u[j], V::load(q[2] + cj), a2);
          if constexpr (H > 3) a3 = V::fmadd(u[j], V::load(q[3] + cj), a3);
        }
      }
      __m128 r = reduce4<V>(a0, a1, a2, a3);
      if (!grouped) {
        float sc = p.static_scale * factor;
        if (p.groups == 1) sc = scale_at(p, k0) * factor;
        if constexpr (Asym) r = _mm_sub_ps(r, _mm_mul_ps(_mm_set1_ps(zero_at(p, k0)), qsv));
        r = _mm_mul_ps(r, _mm_set1_ps(sc));
      }
      alignas(16) float out[4];
      _mm_store_ps(out, r);
      for (std::size_t i = 0; i < H; ++i) s[(i0 + i) * lds + t] = out[i];
    }
  }

  template <class V>
  static void scores_vector(const kv_part_problem& p, std::size_t h, const float* qp, const float* qsum, std::size_t nq,
                            std::size_t n, float* s, std::size_t lds) noexcept {
    std::size_t i = 0;
    for (; i + 4 <= nq; i += 4) scores_heads<V, 4>(p, h, qp, qsum, i, n, s, lds);
    switch (nq - i) {
      case 3: scores_heads<V, 3>(p, h, qp, qsum, i, n, s, lds); break;
      case 2: scores_heads<V, 2>(p, h, qp, qsum, i, n, s, lds); break;
      case 1: scores_heads<V, 1>(p, h, qp, qsum, i, n, s, lds); break;
      default: break;
    }
  }

  // ---- the fast integer path: tokens in lanes ----------------------------------------------
  // V::n consecutive rows (a tile) are loaded a vector of code bytes at a time and transposed as
  // 32-bit words, so that vector w holds word w (4 int8 codes, or 8 int4 codes) of every token of
  // the tile. One vpdpbusd with a broadcast 4-byte word of q then adds 4 products to every
  // token's dot product: no horizontal sums, and a tile's scores are one vector store per head.

#if defined(QUANT_ISA_AVX512)
  /// r[t] word w -> r[w] word t for 16 vectors of 16 32-bit words (64 shuffles).
  static QUANT_ALWAYS_INLINE void transpose16(__m512i* r) noexcept {
    __m512i a[16], x[16];
    for (int k = 0; k < 8; ++k) {
      a[k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
      a[8 + k] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    // x[4 j + m]: block b holds word 4 b + j of tokens 4 m .. 4 m + 3
    for (int m = 0; m < 4; ++m) {
      x[0 + m] = _mm512_unpacklo_epi64(a[2 * m], a[2 * m + 1]);
      x[4 + m] = _mm512_unpackhi_epi64(a[2 * m], a[2 * m + 1]);
      x[8 + m] = _mm512_unpacklo_epi64(a[8 + 2 * m], a[8 + 2 * m + 1]);
      x[12 + m] = _mm512_unpackhi_epi64(a[8 + 2 * m], a[8 + 2 * m + 1]);
    }
    for (int j = 0; j < 4; ++j) {  // a 4 x 4 transpose of 128-bit blocks
      const __m512i p = _mm512_shuffle_i32x4(x[4 * j], x[4 * j + 1], 0x44), q = _mm512_shuffle_i32x4(x[4 * j], x[4 * j + 1], 0xEE);
      const __m512i u = _mm512_shuffle_i32x4(x[4 * j + 2], x[4 * j + 3], 0x44), v = _mm512_shuffle_i32x4(x[4 * j + 2], x[4 * j + 3], 0xEE);
      r[j] = _mm512_shuffle_i32x4(p, u, 0x88);
      r[4 + j] = _mm512_shuffle_i32x4(p, u, 0xDD);
      r[8 + j] = _mm512_shuffle_i32x4(q, v, 0x88);
      r[12 + j] = _mm512_shuffle_i32x4(q, v, 0xDD);
    }
  }
#endif
  /// The same for 8 vectors of 8 words (24 shuffles).
  static QUANT_ALWAYS_INLINE void transpose8(__m256i* r) noexcept {
    __m256i a[8], x[8];
    for (int k = 0; k < 4; ++k) {
      a[k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
      a[4 + k] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int m = 0; m < 2; ++m) {  // x[2 j + m]: block b holds word 4 b + j of tokens 4 m .. 4 m + 3
      x[0 + m] = _mm256_unpacklo_epi64(a[2 * m], a[2 * m + 1]);
      x[2 + m] = _mm256_unpackhi_epi64(a[2 * m], a[2 * m + 1]);
      x[4 + m] = _mm256_unpacklo_epi64(a[4 + 2 * m], a[4 + 2 * m + 1]);
      x[6 + m] = _mm256_unpackhi_epi64(a[4 + 2 * m], a[4 + 2 * m + 1]);
    }
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm256_permute2x128_si256(x[2 * j], x[2 * j + 1], 0x20);
      r[4 + j] = _mm256_permute2x128_si256(x[2 * j], x[2 * j + 1], 0x31);
    }
  }

  static QUANT_ALWAYS_INLINE __m256 to_float(__m256i v) noexcept { return _mm256_cvtepi32_ps(v); }
#if defined(QUANT_ISA_AVX512)
  static QUANT_ALWAYS_INLINE __m512 to_float(__m512i v) noexcept { return _mm512_cvtepi32_ps(v); }
#endif

  /// iacc += sum over the 4 bytes of each lane of (code value + int_delta) * q, for one word
  /// vector w (4-bit: its 8 nibbles, with the broadcast words qe of the even and qo of the odd
  /// dims). int8 with VNNI: vpdpbusd on the codes as unsigned bytes; without: vpmaddubsw on |w|
  /// and q with w's sign (pair sums <= 2 * 128 * 127); 4-bit: unsigned nibbles (pair sums <=
  /// 4 * 15 * 127 before vpmaddwd).
  template <class V>
  static QUANT_ALWAYS_INLINE typename V::i word_dot(typename V::i iacc, typename V::i w, std::int32_t qe,
                                                    std::int32_t qo) noexcept {
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      const __m512i ve = _mm512_set1_epi32(qe);
      if constexpr (bits == 4) {
        const __m512i lowmask = _mm512_set1_epi8(0x0F);
        __m512i lo, hi;
        if constexpr (!Asym) {  // (w ^ 0x88) & 0x0F in one ternary-logic op: 0x28 = (A ^ B) & C
          const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x88));
          lo = _mm512_ternarylogic_epi32(w, flip, lowmask, 0x28);
          hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), flip, lowmask, 0x28);
        } else {
          lo = _mm512_and_si512(w, lowmask);
          hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), lowmask);
        }
        const __m512i vo = _mm512_set1_epi32(qo);
        if constexpr (vnni) {
#if defined(QUANT_ISA_AVX512_VNNI)
          return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(iacc, lo, ve), hi, vo);
#endif
        } else {
          return _mm512_add_epi32(iacc, _mm512_madd_epi16(_mm512_add_epi16(_mm512_maddubs_epi16(lo, ve),
                                                                             _mm512_maddubs_epi16(hi, vo)),
                                                          _mm512_set1_epi16(1)));
        }
      } else if constexpr (vnni) {
#if defined(QUANT_ISA_AVX512_VNNI)
        const __m512i u = Asym ? w : _mm512_xor_si512(w, _mm512_set1_epi8(static_cast<char>(0x80)));
        return _mm512_dpbusd_epi32(iacc, u, ve);
#endif
      } else {
        const __m512i sw = Asym ? _mm512_xor_si512(w, _mm512_set1_epi8(static_cast<char>(0x80))) : w;
        const __m512i sx = _mm512_mask_sub_epi8(ve, _mm512_movepi8_mask(sw), _mm512_setzero_si512(), ve);
        return _mm512_add_epi32(iacc, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(sw), sx), _mm512_set1_epi16(1)));
      }
#endif
    } else {
      const __m256i ve = _mm256_set1_epi32(qe);
      if constexpr (bits == 4) {
        __m256i b = w;
        if constexpr (!Asym) b = _mm256_xor_si256(b, _mm256_set1_epi8(static_cast<char>(0x88)));
        const __m256i lowmask = _mm256_set1_epi8(0x0F);
        const __m256i lo = _mm256_and_si256(b, lowmask), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), lowmask);
        return _mm256_add_epi32(iacc, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, ve),
                                                                         _mm256_maddubs_epi16(hi, _mm256_set1_epi32(qo))),
                                                        _mm256_set1_epi16(1)));
      } else {
        const __m256i sw = Asym ? _mm256_xor_si256(w, _mm256_set1_epi8(static_cast<char>(0x80))) : w;
        return _mm256_add_epi32(iacc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(sw), _mm256_sign_epi8(ve, sw)),
                                                        _mm256_set1_epi16(1)));
      }
    }
  }

  /// Loads tile rows r[0, V::n) at byte cb (rows past the last token repeat it) and transposes.
  template <class V>
  static QUANT_ALWAYS_INLINE void load_tile(const std::uint8_t* const* rows, std::size_t cb, typename V::i* r) noexcept {
    if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
      for (std::size_t k = 0; k < 16; ++k) r[k] = _mm512_loadu_si512(rows[k] + cb);
      transpose16(r);
#endif
    } else {
      for (std::size_t k = 0; k < 8; ++k) r[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[k] + cb));
      transpose8(r);
    }
  }

  /// The scales of group g of the tile's tokens [t0, t0 + m) (then repeated) into st, and
  /// int_delta plus their zero points into zt.
  template <class V>
  static QUANT_ALWAYS_INLINE void tile_scales(const kv_part_problem& p, std::size_t h, std::size_t t0, std::size_t m,
                                              std::size_t g, float* st, float* zt) noexcept {
    if (p.groups == 0) {
      std::fill_n(st, V::n, p.static_scale);
      std::fill_n(zt, V::n, static_cast<float>(int_delta));
      return;
    }
    if constexpr (std::is_same_v<Scale, float> && !Asym) {  // one scale per row: contiguous
      if (p.groups == 1 && m == V::n) {
        std::memcpy(st, static_cast<const float*>(p.scales) + p.scale_index(h, t0), V::n * sizeof(float));
        std::fill_n(zt, V::n, static_cast<float>(int_delta));
        return;
      }
    }
    for (std::size_t k = 0; k < V::n; ++k) {
      const std::size_t kk = p.scale_index(h, t0 + (k < m ? k : m - 1)) + g;
      st[k] = scale_at(p, kk);
      zt[k] = static_cast<float>(int_delta) + zero_at(p, kk);
    }
  }

  /// The fast integer scores of query heads [i0, i0 + H) of the nq in Q, a tile of V::n tokens
  /// at a time.
  template <class V, std::size_t H>
  static void scores_int_heads(const kv_part_problem& p, std::size_t h, const kv_queries& Q, std::size_t nq,
                               std::size_t i0, std::size_t n, float* s, std::size_t lds) noexcept {
    using f = typename V::f;
    using vi = typename V::i;
    constexpr std::size_t T = V::n, bytes = 4 * V::n;  // tokens per tile, code bytes per load
    constexpr std::size_t dims_word = bits == 4 ? 8 : 4, words_block = fast_block_size / dims_word;
    const std::size_t d = p.head_dim, nb = d / fast_block_size;
    const std::size_t gsize = p.groups > 1 ? p.group : d, blocks_group = gsize / fast_block_size;
    const std::int8_t* qw[H];  // the query's int8 codes (4-bit: per 8 dims, even then odd)
    const float* sx[H];
    for (std::size_t i = 0; i < H; ++i) qw[i] = Q.q8 + (i0 + i) * d, sx[i] = Q.sx + (i0 + i) * nb;
    const auto word = [](const std::int8_t* q, std::size_t k) {  // 4 bytes as one 32-bit word
      std::int32_t v;
      std::memcpy(&v, q + 4 * k, 4);
      return v;
    };
    alignas(64) float st[16], zt[16], cz[16];
    for (std::size_t t0 = 0; t0 < n; t0 += T) {
      const std::size_t m = std::min(T, n - t0);
      const std::uint8_t* rows[T];
      for (std::size_t k = 0; k < T; ++k) rows[k] = p.row(h, t0 + (k < m ? k : m - 1));
      f tot[H], facc[H];
      for (std::size_t i = 0; i < H; ++i) tot[i] = V::zero(), facc[i] = V::zero();
      for (std::size_t cb = 0, wi = 0; cb < p.row_bytes; cb += bytes, wi += T) {  // wi: the row's word index
        vi r[T];
        load_tile<V>(rows, cb, r);
#pragma GCC unroll 16
        for (std::size_t b = 0; b < T / words_block; ++b) {  // blocks of 32 dims (T is a multiple)
          vi iacc[H];
          for (std::size_t i = 0; i < H; ++i) iacc[i] = vi{};
#pragma GCC unroll 8
          for (std::size_t k = 0; k < words_block; ++k) {
            const std::size_t w = b * words_block + k;
            for (std::size_t i = 0; i < H; ++i)
              iacc[i] = word_dot<V>(iacc[i], r[w], word(qw[i], bits == 4 ? 2 * (wi + w) : wi + w),
                                    bits == 4 ? word(qw[i], 2 * (wi + w) + 1) : 0);
          }
          const std::size_t blk = (wi + b * words_block) / words_block;
          for (std::size_t i = 0; i < H; ++i) facc[i] = V::fmadd(to_float(iacc[i]), V::set1(sx[i][blk]), facc[i]);
          if ((blk + 1) % blocks_group == 0) {  // a group's end: s_g * (dot - (delta + z_g) * corr)
            const std::size_t g = blk / blocks_group;
            tile_scales<V>(p, h, t0, m, g, st, zt);
            const f sv = V::load(st), zv = V::load(zt);
            for (std::size_t i = 0; i < H; ++i) {
              tot[i] = V::fmadd(V::fmadd(zv, V::set1(-Q.corr[g * nq + i0 + i]), facc[i]), sv, tot[i]);
              facc[i] = V::zero();
            }
          }
        }
      }
      for (std::size_t i = 0; i < H; ++i) {
        float* o = s + (i0 + i) * lds + t0;
        if (m == T) {
          if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
            _mm512_storeu_ps(o, tot[i]);
#endif
          } else {
            _mm256_storeu_ps(o, tot[i]);
          }
        } else {
          if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
            _mm512_store_ps(cz, tot[i]);
#endif
          } else {
            _mm256_store_ps(cz, tot[i]);
          }
          std::memcpy(o, cz, m * sizeof(float));
        }
      }
    }
  }

  template <class V>
  static void scores_int(const kv_part_problem& p, std::size_t h, const kv_queries& Q, std::size_t nq, std::size_t n,
                         float* s, std::size_t lds) noexcept {
    std::size_t i = 0;
    for (; i + 4 <= nq; i += 4) scores_int_heads<V, 4>(p, h, Q, nq, i, n, s, lds);
    switch (nq - i) {
      case 3: scores_int_heads<V, 3>(p, h, Q, nq, i, n, s, lds); break;
      case 2: scores_int_heads<V, 2>(p, h, Q, nq, i, n, s, lds); break;
      case 1: scores_int_heads<V, 1>(p, h, Q, nq, i, n, s, lds); break;
      default: break;
    }
  }
#endif  // QUANT_ISA_AVX2

  // ---- values -------------------------------------------------------------------------------

  /// Floats of scratch values() needs for nq query heads.
  static std::size_t scratch_floats(const kv_part_problem& p, std::size_t nq) noexcept {
    const std::size_t ng = std::max<std::size_t>(p.groups, 1);
    return attention_block * nq * ng * 3 / 2 + 2 * nq * ng + 2 * attention_block * ng + 64;
  }

  /// The coefficient of the fast mode's values pass: rounded to bf16 (nearest-even; subnormals
  /// to zero, as vdpbf16ps reads them). Coefficients are finite.
  static QUANT_ALWAYS_INLINE float fast_coef(float a) noexcept {
    const float r = bf16::from_float(a).to_float();
    return std::fabs(r) < 0x1p-126f ? 0.0f : r;
  }
  /// The same on a vector, bit for bit.
  template <class B>
  static QUANT_ALWAYS_INLINE B fast_coef(B a) noexcept {
    using ib = xsimd::batch<std::int32_t, typename B::arch_type>;
    const ib x = xsimd::bitwise_cast<ib>(a);
    const B r = xsimd::bitwise_cast<B>((x + ((x >> 16) & ib(1)) + ib(0x7FFF)) & ib(static_cast<std::int32_t>(0xFFFF0000u)));
    return xsimd::select(xsimd::abs(r) < B(0x1p-126f), B(0.0f), r);
  }

  /// out[i * ldo + c] = sum_{t < n} w[i * ldw + t] * V[h][t][c] for i < nq (every element of the
  /// nq rows of out is written). With each row as s_g * (u - z) over its groups, the sum is taken
  /// as sum_t a_tg * (u - z) with a_tg = w_t * s_tg; the fast mode rounds a_tg to bf16 (the
  /// values u - z of int8, int4 and fp8 codes are exact in bf16, so AVX-512 BF16 runs it as
  /// vdpbf16ps on pairs of tokens; other tiers the same numbers in float). scratch:
  /// scratch_floats(p, nq) floats, 64-byte aligned.
  static void values(const kv_part_problem& p, std::size_t h, const float* w, std::size_t ldw, std::size_t nq,
                     std::size_t n, float* out, std::size_t ldo, float* scratch, bool fast = false) noexcept {
    for (std::size_t i = 0; i < nq; ++i) std::fill_n(out + i * ldo, p.head_dim, 0.0f);
    fast = fast && !fp32;  // an fp32 cache has one mode
#if defined(QUANT_ISA_AVX2)
    if constexpr (vector_tier) {
      if (vector_path(p)) return values_vector<lanes_t<avx512>>(p, h, w, ldw, nq, n, out, ldo, scratch, fast);
    }
#endif
    (void)scratch;
    values_generic(p, h, w, ldw, nq, n, out, ldo, fast);
  }

  /// The values u - z of dims [c0, c1) of row (h, t) (fp32: the row) into out.
  static void raw_values(const kv_part_problem& p, std::size_t h, std::size_t t, std::size_t c0, std::size_t c1,
                         float z, float* out) noexcept {
    const std::uint8_t* row = p.row(h, t);
    if constexpr (fp32) {
      (void)z;
      std::memcpy(out, reinterpret_cast<const float*>(row) + c0, (c1 - c0) * sizeof(float));
    } else {
      const float* tab = table();
      for (std::size_t c = c0; c < c1; ++c) out[c - c0] = tab[read_code(row, c, bits)] - z;
    }
  }

  static void values_generic(const kv_part_problem& p, std::size_t h, const float* w, std::size_t ldw, std::size_t nq,
                             std::size_t n, float* out, std::size_t ldo, bool fast) noexcept {
    using batch = xsimd::batch<float, typename Isa::arch>;
    constexpr std::size_t bw = batch::size, piece = 256;
    alignas(64) float v[piece];
    const std::size_t d = p.head_dim, ng = std::max<std::size_t>(p.groups, 1), gs = p.groups ? p.group : d;
    for (std::size_t t = 0; t < n; ++t)
      for (std::size_t g = 0; g < ng; ++g) {
        const std::size_t k = p.groups ? p.scale_index(h, t) + g : 0;
        const float sg = p.groups ? scale_at(p, k) : p.static_scale, z = p.groups ? zero_at(p, k) : 0.0f;
        for (std::size_t c0 = g * gs; c0 < std::min(d, (g + 1) * gs); c0 += piece) {
          const std::size_t m = std::min({piece, d - c0, (g + 1) * gs - c0});
          raw_values(p, h, t, c0, c0 + m, z, v);
          for (std::size_t i = 0; i < nq; ++i) {
            const float a = fast ? fast_coef(w[i * ldw + t] * sg) : w[i * ldw + t] * sg;
            float* o = out + i * ldo + c0;
            std::size_t c = 0;
            for (; c + bw <= m; c += bw)
              xsimd::fma(batch(a), batch::load_unaligned(v + c), batch::load_unaligned(o + c)).store_unaligned(o + c);
            for (; c < m; ++c) o[c] += a * v[c];
          }
        }
      }
  }

#if defined(QUANT_ISA_AVX2)
  /// One tile: H query heads [i0, i0 + H) x S steps of dims from c0, over the block's tokens
  /// [t0, t1); coef[(g * nq + i) * attention_block + t - t0] are the block's coefficients.
  template <class V, std::size_t H, std::size_t S>
  static QUANT_ALWAYS_INLINE void values_tile(const kv_part_problem& p, std::size_t h, std::size_t i0, std::size_t c0,
                                              std::size_t t0, std::size_t t1, const float* coef, std::size_t nq,
                                              float* out, std::size_t ldo) noexcept {
    using f = typename V::f;
    constexpr std::size_t NV = S * nvec;
    const float* tab = table();
    f acc[H][NV];
    for (std::size_t i = 0; i < H; ++i)
      for (std::size_t j = 0; j < NV; ++j) acc[i][j] = V::zero();
    const float* cg[S];  // the coefficients of head i0 for each step's group
    for (std::size_t k = 0; k < S; ++k)
      cg[k] = coef + ((p.groups > 1 ? (c0 + k * step) / p.group : 0) * nq + i0) * attention_block;
    for (std::size_t t = t0; t < t1; ++t) {
      const std::uint8_t* row = p.row(h, t);
      const std::size_t tt = t - t0;
      f u[NV];
      for (std::size_t k = 0; k < S; ++k) decode<V>(row, c0 + k * step, tab, u + k * nvec);
      for (std::size_t i = 0; i < H; ++i)
        for (std::size_t k = 0; k < S; ++k) {
          const f a = V::set1(cg[k][i * attention_block + tt]);
          for (std::size_t j = 0; j < nvec; ++j) acc[i][k * nvec + j] = V::fmadd(u[k * nvec + j], a, acc[i][k * nvec + j]);
        }
    }
    for (std::size_t i = 0; i < H; ++i) {
      float* o = out + (i0 + i) * ldo + c0;
      for (std::size_t j = 0; j < NV; ++j) {
        if constexpr (V::n == 16) {
#if defined(QUANT_ISA_AVX512)
          _mm512_storeu_ps(o + j * 16, _mm512_add_ps(_mm512_loadu_ps(o + j * 16), acc[i][j]));
#endif
        } else {
          _mm256_storeu_ps(o + j * 8, _mm256_add_ps(_mm256_loadu_ps(o + j * 8), acc[i][j]));
        }
      }
    }
  }

  template <class V, std::size_t H>
  static void values_heads(const kv_part_problem& p, std::size_t h, std::size_t i0, std::size_t t0, std::size_t t1,
                           const float* coef, std::size_t nq, float* out, std::size_t ldo) noexcept {
    const std::size_t d = p.head_dim;
    std::size_t c = 0;
    for (; c + tile_steps * step <= d; c += tile_steps * step)
      values_tile<V, H, tile_steps>(p, h, i0, c, t0, t1, coef, nq, out, ldo);
    for (; c < d; c += step) values_tile<V, H, 1>(p, h, i0, c, t0, t1, coef, nq, out, ldo);
  }

#if defined(QUANT_ISA_AVX512_BF16)
  /// The fast values pass with vdpbf16ps (AVX-512 BF16 in this translation unit's own tier):
  /// tokens go in pairs; per 16 dims, the two rows' values (exact in bf16: truncating their float
  /// bits is exact) are packed as bf16 pairs, times the pair of bf16 coefficients broadcast.
  template <std::size_t H, std::size_t S>
  static QUANT_ALWAYS_INLINE void values_tile_bf16(const kv_part_problem& p, std::size_t h, std::size_t i0,
                                                   std::size_t c0, std::size_t t0, std::size_t t1,
                                                   const std::uint16_t* cbf, std::size_t nq, float* out,
                                                   std::size_t ldo) noexcept {
    using V = lanes512;
    constexpr std::size_t NV = S * nvec;
    const float* tab = table();
    __m512 acc[H][NV];
    for (std::size_t i = 0; i < H; ++i)
      for (std::size_t j = 0; j < NV; ++j) acc[i][j] = _mm512_setzero_ps();
    const std::uint16_t* cg[S];
    for (std::size_t k = 0; k < S; ++k)
      cg[k] = cbf + ((p.groups > 1 ? (c0 + k * step) / p.group : 0) * nq + i0) * (attention_block + 2);
    const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    for (std::size_t t = t0; t < t1; t += 2) {
      const std::uint8_t* r0 = p.row(h, t);
      const std::uint8_t* r1 = t + 1 < t1 ? p.row(h, t + 1) : r0;  // an odd last token: its pair's coefficient is 0
      const std::size_t tt = t - t0;
      __m512 u0[NV], u1[NV];
      __m512i pk[NV];
      for (std::size_t k = 0; k < S; ++k) {
        decode<V>(r0, c0 + k * step, tab, u0 + k * nvec);
        decode<V>(r1, c0 + k * step, tab, u1 + k * nvec);
      }
      for (std::size_t j = 0; j < NV; ++j)  // (u0 >> 16) | (u1 & 0xFFFF0000): 0xF8 = A | (B & C)
        pk[j] = _mm512_ternarylogic_epi32(_mm512_srli_epi32(_mm512_castps_si512(u0[j]), 16), _mm512_castps_si512(u1[j]),
                                          high, 0xF8);
      for (std::size_t i = 0; i < H; ++i)
        for (std::size_t k = 0; k < S; ++k) {
          std::uint32_t word;
          std::memcpy(&word, cg[k] + i * (attention_block + 2) + tt, 4);
          const __m512i a = _mm512_set1_epi32(static_cast<int>(word));
          for (std::size_t j = 0; j < nvec; ++j)
            acc[i][k * nvec + j] = _mm512_dpbf16_ps(acc[i][k * nvec + j], (__m512bh)pk[k * nvec + j], (__m512bh)a);
        }
    }
    for (std::size_t i = 0; i < H; ++i) {
      float* o = out + (i0 + i) * ldo + c0;
      for (std::size_t j = 0; j < NV; ++j) _mm512_storeu_ps(o + j * 16, _mm512_add_ps(_mm512_loadu_ps(o + j * 16), acc[i][j]));
    }
  }

  template <std::size_t H>
  static void values_heads_bf16(const kv_part_problem& p, std::size_t h, std::size_t i0, std::size_t t0, std::size_t t1,
                                const std::uint16_t* cbf, std::size_t nq, float* out, std::size_t ldo) noexcept {
    const std::size_t d = p.head_dim;
    std::size_t c = 0;
    for (; c + tile_steps * step <= d; c += tile_steps * step)
      values_tile_bf16<H, tile_steps>(p, h, i0, c, t0, t1, cbf, nq, out, ldo);
    for (; c < d; c += step) values_tile_bf16<H, 1>(p, h, i0, c, t0, t1, cbf, nq, out, ldo);
  }
#endif

  template <class V>
  static void values_vector(const kv_part_problem& p, std::size_t h, const float* w, std::size_t ldw, std::size_t nq,
                            std::size_t n, float* out, std::size_t ldo, float* scratch, bool fast) noexcept {
    using batch = xsimd::batch<float, typename Isa::arch>;
    constexpr std::size_t bw = batch::size, B = attention_block;
    const std::size_t ng = std::max<std::size_t>(p.groups, 1), d = p.head_dim;
    float* coef = scratch;                 // [g][i][t]: w * s of the block's tokens
    float* bias = coef + B * nq * ng;      // [i][g]: sum_t w * s * z
    float* st = bias + nq * ng;            // [g][t]: the block's scales (times the value factor)
    float* zt = st + B * ng;               // [g][t]: and zero points
    auto* cbf = reinterpret_cast<std::uint16_t*>(zt + B * ng);  // [g][i][t]: coef as bf16 (+ a zero)
    std::fill_n(bias, nq * ng, 0.0f);
    const float factor = value_factor(p);
    const bool dp = fast && bf16_pairs(p);
    for (std::size_t t0 = 0; t0 < n; t0 += B) {
      const std::size_t t1 = std::min(n, t0 + B), m = t1 - t0;
      // the block's scales (and zero points) by group, then coef = w * s by vectors of tokens
      if (p.groups == 0) {
        std::fill_n(st, m, p.static_scale * factor);
      } else {
        for (std::size_t t = t0; t < t1; ++t) {
          const std::size_t k0 = p.scale_index(h, t);
          for (std::size_t g = 0; g < ng; ++g) {
            st[g * B + t - t0] = scale_at(p, k0 + g) * factor;
            if constexpr (Asym) zt[g * B + t - t0] = zero_at(p, k0 + g);
          }
        }
      }
      for (std::size_t g = 0; g < ng; ++g)
        for (std::size_t i = 0; i < nq; ++i) {
          const float* wi = w + i * ldw + t0;
          float* ci = coef + (g * nq + i) * B;
          const float* sg = st + g * B;
          std::size_t t = 0;
          batch zb(0.0f);
          for (; t + bw <= m; t += bw) {
            batch a = batch::load_unaligned(wi + t) * batch::load_unaligned(sg + t);
            if (fast) a = fast_coef(a);
            a.store_unaligned(ci + t);
            if constexpr (Asym) zb = xsimd::fma(a, batch::load_unaligned(zt + g * B + t), zb);
          }
          float zs = 0.0f;
          for (; t < m; ++t) {
            ci[t] = fast ? fast_coef(wi[t] * sg[t]) : wi[t] * sg[t];
            if constexpr (Asym) zs += ci[t] * zt[g * B + t];
          }
          if constexpr (Asym) bias[i * ng + g] += xsimd::hadd(zb) + zs;
          if (dp) {  // bf16 bits of the (already rounded) coefficients, a zero after an odd count
            std::uint16_t* bi = cbf + (g * nq + i) * (B + 2);
            for (t = 0; t < m; ++t) bi[t] = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(ci[t]) >> 16);
            bi[m] = 0;
          }
        }
      std::size_t i = 0;
#if defined(QUANT_ISA_AVX512_BF16)
      if constexpr (bf16_dp)
        if (dp) {
          for (; i + tile_heads <= nq; i += tile_heads) values_heads_bf16<tile_heads>(p, h, i, t0, t1, cbf, nq, out, ldo);
          for (; i < nq; ++i) values_heads_bf16<1>(p, h, i, t0, t1, cbf, nq, out, ldo);
        }
#endif
      for (; i + tile_heads <= nq; i += tile_heads) values_heads<V, tile_heads>(p, h, i, t0, t1, coef, nq, out, ldo);
      for (; i < nq; ++i) values_heads<V, 1>(p, h, i, t0, t1, coef, nq, out, ldo);
    }
    if constexpr (Asym)
      for (std::size_t i = 0; i < nq; ++i)
        for (std::size_t c = 0; c < d; ++c) out[i * ldo + c] -= bias[i * ng + (p.groups > 1 ? c / p.group : 0)];
    if (deinterleaved(p)) {  // back to the natural order of dims
      alignas(64) float tmp[32];
      for (std::size_t i = 0; i < nq; ++i)
        for (std::size_t c0 = 0; c0 < d; c0 += 32) {
          float* o = out + i * ldo + c0;
          for (std::size_t k = 0; k < 16; ++k) tmp[2 * k] = o[k], tmp[2 * k + 1] = o[16 + k];
          std::memcpy(o, tmp, sizeof tmp);
        }
    }
  }
#endif  // QUANT_ISA_AVX2
};

}  // namespace detail
QUANT_NAMESPACE_END
