// quant/kernels/simd/quantize.hpp: round-to-nearest quantization ("packing") on SIMD registers,
// bit-identical to reference::quantize (codes including the zero tail bits, scales, zero points).
//
// quantize_kernel<Fmt, Asym, Scale, Isa> walks the scale grid as the reference does, one block
// (a group, a row or the whole matrix) at a time:
//
//   scan     the block's minimum and maximum with xsimd min/max. Both are exact and do not
//            depend on the order; only the sign of a zero extreme can differ from the
//            reference's scan, and choose_params never looks at it.
//   fit      the scale and zero point by the very functions the reference uses
//            (detail::choose_params in scheme/fit.hpp). The mse search evaluates each candidate
//            with SIMD quantize-dequantize into a small buffer, then detail::add_sq_errors, the
//            reference's own per-weight error with its fixed 16-lane order, so both pick the
//            same candidate bit for bit.
//   encode   w / s (a real division, as the reference) and the format's rule, one batch at a
//            time, into one byte per code:
//              integer    any integer_traits<B> format and every asymmetric scheme: nearbyint
//                         (round half to even), clamp, mask.
//              minifloat  any minifloat_traits<E, M, P> format (fp8 e4m3 / e5m2, fp4 e2m1):
//                         the exponent and mantissa from the bits, the mantissa rounded by
//                         nearbyint, saturation and the NaN code exactly as minifloat.hpp.
//              table      lut_traits<Table> formats of at most 16 codes (nf4 and users' tables):
//                         the code is the number of thresholds at or below v, compared as
//                         order keys (the float bits mapped to a signed integer order in which
//                         -0 < +0). Threshold j is the smallest key that format_traits::encode
//                         itself maps to code j + 1, found once per format by bisection, so ties
//                         (to the even code), -0.0 and values beyond the table are whatever the
//                         scalar encode does; the table is checked against encode at the
//                         boundaries and falls back to the scalar path if anything disagrees.
//              scalar     any other format (a user's own encode): format_traits::encode per
//                         weight, exactly the reference.
//            A format uses a vector path only when its traits inherit encode from the helper
//            unchanged; a traits class that declares its own encode takes the scalar path.
//   pack     one row at a time: 8-bit codes are copied; 1..7-bit codes are packed eight to a
//            64-bit lane (shift-or steps in xsimd uint64 batches give the canonical
//            little-endian bit stream), and the lanes' low `bits` bytes are compressed with
//            vpmovqd / vpmovqw (AVX-512), vpshufb (AVX2) or pshufd (SSE2) into the row. The last
//            partial chunk is packed from a zero-padded copy, so the tail bits are zero and no
//            byte outside the row is written. unpack_row is the inverse.
//
// Arguments are validated by kernels/api.hpp before the kernel runs.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "../../config.hpp"
#include "../../core/matrix_view.hpp"
#include "../../core/scalar_types.hpp"
#include "../../formats/integer.hpp"
#include "../../formats/lut.hpp"
#include "../../formats/minifloat.hpp"
#include "../../layout/packing.hpp"
#include "../../scheme/fit.hpp"
#include "../../scheme/granularity.hpp"
#include "../../tensor/tensor_view.hpp"
#include "../isa.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

QUANT_NAMESPACE_BEGIN
namespace detail {

// ------------------------------------------------------------------------------------------------
// Which encode a format has

/// How quantize_kernel encodes a format's codes (symmetric schemes; asymmetric ones are integer).
enum class encode_path { integer, minifloat, table, scalar };

template <unsigned B>
integer_traits<B> integer_base_of(const integer_traits<B>*);
void integer_base_of(const void*);
template <unsigned E, unsigned M, nonfinite P>
minifloat_traits<E, M, P> minifloat_base_of(const minifloat_traits<E, M, P>*);
void minifloat_base_of(const void*);
template <const auto& Table>
lut_traits<Table> lut_base_of(const lut_traits<Table>*);
void lut_base_of(const void*);

/// The helper F's traits derive from, if encode is still the helper's own.
template <class T, class Base>
constexpr bool encode_inherited() {
  if constexpr (std::is_void_v<Base>) return false;
  else return &T::encode == &Base::encode;
}

template <class Fmt>
constexpr encode_path encode_path_of() {
  using T = format_traits<Fmt>;
  using I = decltype(integer_base_of(static_cast<const T*>(nullptr)));
  using M = decltype(minifloat_base_of(static_cast<const T*>(nullptr)));
  using L = decltype(lut_base_of(static_cast<const T*>(nullptr)));
  if constexpr (encode_inherited<T, I>()) return encode_path::integer;
  else if constexpr (encode_inherited<T, M>()) return encode_path::minifloat;
  else if constexpr (encode_inherited<T, L>() && T::bits <= 4) return encode_path::table;
  else return encode_path::scalar;
}

/// A signed integer key with the order of the floats, -0.0 just below +0.0 (NaNs beyond +-Inf).
inline std::int32_t order_key(float v) noexcept {
  const auto x = std::bit_cast<std::int32_t>(v);
  return x < 0 ? x ^ 0x7FFFFFFF : x;
}
inline float from_order_key(std::int32_t k) noexcept { return std::bit_cast<float>(k < 0 ? k ^ 0x7FFFFFFF : k); }

/// The thresholds of a table format: code(v) = #{j : order_key(v) >= key[j]} (NaN: nan_code).
template <class Fmt>
struct table_thresholds {
  using T = format_traits<Fmt>;
  static constexpr std::size_t size = std::size_t{1} << T::bits;
  std::array<std::int32_t, size < 16 ? 16 : size> key{};  ///< size - 1 thresholds, then INT32_MAX
  std::uint8_t nan_code = 0;
  bool ok = true;  ///< false: encode is not the monotone step function assumed; use the scalar path

  static const table_thresholds& get() {
    static const table_thresholds t = make();
    return t;
  }

 private:
  static table_thresholds make() noexcept {
    table_thresholds t;
    t.key.fill(std::numeric_limits<std::int32_t>::max());
    auto enc = [](std::int32_t k) { return static_cast<unsigned>(T::encode(from_order_key(k))); };
    const std::int32_t kmin = order_key(-std::numeric_limits<float>::infinity());
    const std::int32_t kmax = order_key(std::numeric_limits<float>::infinity());
    t.nan_code = T::encode(std::numeric_limits<float>::quiet_NaN());
    t.ok = enc(kmin) == 0 && enc(kmax) == size - 1;
    for (std::size_t j = 0; j + 1 < size && t.ok; ++j) {
      std::int32_t lo = order_key(T::code_table[j]), hi = order_key(T::code_table[j + 1]);
      if (enc(lo) != j || enc(hi) != j + 1) {
        t.ok = false;
        break;
      }
      while (static_cast<std::int64_t>(hi) - lo > 1) {  // enc(lo) <= j < enc(hi)
        const auto mid = static_cast<std::int32_t>((static_cast<std::int64_t>(lo) + hi) / 2);
        (enc(mid) > j ? hi : lo) = mid;
      }
      t.key[j] = hi;
      t.ok = enc(hi) == j + 1 && enc(hi - 1) == j && (j == 0 || hi > t.key[j - 1]);
    }
    return t;
  }
};

/// The value of every code (format_traits::decode), for the mse search's dequantization.
template <class Fmt>
const std::array<float, 256>& code_value_table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> v{};
    for (unsigned c = 0; c < 256; ++c) v[c] = format_traits<Fmt>::decode(static_cast<std::uint8_t>(c));
    return v;
  }();
  return t;
}

// ------------------------------------------------------------------------------------------------
// Lane helpers with per-ISA overrides

template <class A>
inline constexpr bool is_avx512_arch_v = std::is_base_of_v<xsimd::avx512bw, A>;
template <class A>
inline constexpr bool is_avx2_arch_v = std::is_base_of_v<xsimd::avx2, A>;
template <class A>
inline constexpr bool is_sse2_arch_v = std::is_base_of_v<xsimd::sse2, A> && !std::is_base_of_v<xsimd::avx, A>;

/// xsimd::select on int32 lanes. xsimd 8.1's AVX-512BW integer select names the 8- and 16-bit
/// blends in dead switch cases; without optimization GCC defines those intrinsics as macros that
/// cast their arguments, and the int32 instantiation no longer compiles. The 32-bit blend is
/// what that select ends in anyway.
template <class A>
QUANT_ALWAYS_INLINE xsimd::batch<std::int32_t, A> iselect(const xsimd::batch_bool<std::int32_t, A>& cond,
                                                          const xsimd::batch<std::int32_t, A>& a,
                                                          const xsimd::batch<std::int32_t, A>& b) noexcept {
#if defined(QUANT_ISA_AVX512)
  if constexpr (is_avx512_arch_v<A>) return _mm512_mask_blend_epi32(cond, b, a);
  else
#endif
    return xsimd::select(cond, a, b);
}

/// The smallest (largest) lane of v; a zero may come back with either sign.
template <bool Max, class A>
QUANT_ALWAYS_INLINE float reduce_extreme(const xsimd::batch<float, A>& v) noexcept {
#if defined(__SSE2__)
  auto op128 = [](__m128 a, __m128 b) { return Max ? _mm_max_ps(a, b) : _mm_min_ps(a, b); };
  (void)op128;
#endif
#if defined(QUANT_ISA_AVX512)
  if constexpr (is_avx512_arch_v<A>) {
    const __m512 x = v;
    const __m256 lo = _mm512_castps512_ps256(x), hi = _mm512_extractf32x8_ps(x, 1);
    const __m256 y = Max ? _mm256_max_ps(lo, hi) : _mm256_min_ps(lo, hi);
    __m128 z = op128(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
    z = op128(z, _mm_movehl_ps(z, z));
    return _mm_cvtss_f32(op128(z, _mm_shuffle_ps(z, z, 1)));
  }
#endif
#if defined(QUANT_ISA_AVX2)
  if constexpr (is_avx2_arch_v<A>) {
    const __m256 y = v;
    __m128 z = op128(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
    z = op128(z, _mm_movehl_ps(z, z));
    return _mm_cvtss_f32(op128(z, _mm_shuffle_ps(z, z, 1)));
  }
#endif
#if defined(__SSE2__)
  if constexpr (is_sse2_arch_v<A>) {
    __m128 z = v;
    z = op128(z, _mm_movehl_ps(z, z));
    return _mm_cvtss_f32(op128(z, _mm_shuffle_ps(z, z, 1)));
  }
#endif
  constexpr std::size_t n = xsimd::batch<float, A>::size;
  alignas(64) float t[n];
  v.store_aligned(t);
  float r = t[0];
  for (std::size_t i = 1; i < n; ++i) r = Max ? (t[i] > r ? t[i] : r) : (t[i] < r ? t[i] : r);
  return r;
}
template <class A>
QUANT_ALWAYS_INLINE float reduce_min(const xsimd::batch<float, A>& v) noexcept {
  return reduce_extreme<false>(v);
}
template <class A>
QUANT_ALWAYS_INLINE float reduce_max(const xsimd::batch<float, A>& v) noexcept {
  return reduce_extreme<true>(v);
}

/// Stores the low byte of each int32 lane of c (codes, 0..255) to out[0, size).
template <class A>
QUANT_ALWAYS_INLINE void store_code_bytes(const xsimd::batch<std::int32_t, A>& c, std::uint8_t* out) noexcept {
  constexpr std::size_t n = xsimd::batch<std::int32_t, A>::size;
#if defined(QUANT_ISA_AVX512)
  if constexpr (is_avx512_arch_v<A>) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(c));
    return;
  }
#endif
#if defined(QUANT_ISA_AVX2)
  if constexpr (is_avx2_arch_v<A>) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i t = _mm256_shuffle_epi8(c, pick);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out),
                     _mm_unpacklo_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1)));
    return;
  }
#endif
#if defined(__SSE2__)
  if constexpr (is_sse2_arch_v<A>) {
    const __m128i t = _mm_packs_epi32(c, c);
    const int v = _mm_cvtsi128_si32(_mm_packus_epi16(t, t));
    std::memcpy(out, &v, 4);
    return;
  }
#endif
  alignas(64) std::int32_t t[n];
  c.store_aligned(t);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(t[i]);
}

/// table[c] for each lane (c < Count; Count is 16 or 256).
template <std::size_t Count, class A>
QUANT_ALWAYS_INLINE xsimd::batch<float, A> lookup_values(const xsimd::batch<std::int32_t, A>& c,
                                                         const float* table) noexcept {
  using fb = xsimd::batch<float, A>;
#if defined(QUANT_ISA_AVX512)
  if constexpr (is_avx512_arch_v<A>) {
    if constexpr (Count <= 16) return fb(_mm512_permutexvar_ps(c, _mm512_loadu_ps(table)));
    else return fb(_mm512_i32gather_ps(c, table, 4));
  }
#endif
#if defined(QUANT_ISA_AVX2)
  if constexpr (is_avx2_arch_v<A>) {
    if constexpr (Count <= 16) {
      const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), c);
      const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), c);
      return fb(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(c, 28))));
    } else {
      return fb(_mm256_i32gather_ps(table, c, 4));
    }
  }
#endif
  constexpr std::size_t n = fb::size;
  alignas(64) std::int32_t i[n];
  alignas(64) float v[n];
  c.store_aligned(i);
  for (std::size_t k = 0; k < n; ++k) v[k] = table[i[k]];
  return fb::load_aligned(v);
}

/// Shift-and-mask steps that pack the eight Bits-bit codes of each 64-bit lane (one per byte)
/// into the lane's low Bits bytes, code k at bits [k*Bits, (k+1)*Bits): pairs of codes, then
/// pairs of pairs, then the two halves.
template <unsigned Bits, class A>
QUANT_ALWAYS_INLINE xsimd::batch<std::uint64_t, A> pack_lanes(xsimd::batch<std::uint64_t, A> x) noexcept {
  using ub = xsimd::batch<std::uint64_t, A>;
  constexpr std::uint64_t b1 = (1ull << Bits) - 1, b2 = (1ull << (2 * Bits)) - 1, b4 = (1ull << (4 * Bits)) - 1;
  constexpr std::uint64_t per16 = 0x0001000100010001ull, per32 = 0x0000000100000001ull;
  x = x & ub(0x0101010101010101ull * b1);
  x = (x & ub(per16 * b1)) | ((x >> static_cast<std::int32_t>(8 - Bits)) & ub(per16 * (b1 << Bits)));
  x = (x & ub(per32 * b2)) | ((x >> static_cast<std::int32_t>(16 - 2 * Bits)) & ub(per32 * (b2 << (2 * Bits))));
  return (x & ub(b4)) | ((x >> static_cast<std::int32_t>(32 - 4 * Bits)) & ub(b4 << (4 * Bits)));
}

/// The inverse of pack_lanes: Bits bytes of packed codes in each lane's low bytes -> one code per byte.
template <unsigned Bits, class A>
QUANT_ALWAYS_INLINE xsimd::batch<std::uint64_t, A> unpack_lanes(xsimd::batch<std::uint64_t, A> x) noexcept {
  using ub = xsimd::batch<std::uint64_t, A>;
  constexpr std::uint64_t b1 = (1ull << Bits) - 1, b2 = (1ull << (2 * Bits)) - 1, b4 = (1ull << (4 * Bits)) - 1;
  constexpr std::uint64_t per16 = 0x0001000100010001ull, per32 = 0x0000000100000001ull;
  x = (x & ub(b4)) | ((x << static_cast<std::int32_t>(32 - 4 * Bits)) & ub(b4 << 32));
  x = (x & ub(per32 * b2)) | ((x << static_cast<std::int32_t>(16 - 2 * Bits)) & ub(per32 * (b2 << 16)));
  return (x & ub(per16 * b1)) | ((x << static_cast<std::int32_t>(8 - Bits)) & ub(per16 * (b1 << 8)));
}

/// Writes the low Bits bytes of each lane of x to out, lane after lane (Bits * size bytes).
template <unsigned Bits, class A>
QUANT_ALWAYS_INLINE void compress_lanes(const xsimd::batch<std::uint64_t, A>& x, std::uint8_t* out) noexcept {
  constexpr std::size_t n = xsimd::batch<std::uint64_t, A>::size;
#if defined(QUANT_ISA_AVX512)
  if constexpr (is_avx512_arch_v<A> && (Bits == 1 || Bits == 2 || Bits == 3 || Bits == 4)) {
    if constexpr (Bits == 1) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm512_cvtepi64_epi8(x));
    } else if constexpr (Bits == 2) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi64_epi16(x));
    } else if constexpr (Bits == 4) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(x));
    } else {  // 3 bytes of each dword, 12 per 128-bit half, stored with byte masks
      const __m256i pick = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,  //
                                            0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
      const __m256i t = _mm256_shuffle_epi8(_mm512_cvtepi64_epi32(x), pick);
      _mm_mask_storeu_epi8(out, 0x0FFF, _mm256_castsi256_si128(t));
      _mm_mask_storeu_epi8(out + 12, 0x0FFF, _mm256_extracti128_si256(t, 1));
    }
    return;
  }
#endif
#if defined(QUANT_ISA_AVX2)
  if constexpr (is_avx2_arch_v<A> && (Bits == 2 || Bits == 4)) {
    if constexpr (Bits == 4) {
      const __m256i pick = _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                            0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1);
      const __m256i t = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, pick), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(t));
    } else {
      const __m256i pick = _mm256_setr_epi8(0, 1, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                            0, 1, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
      const __m256i t =
          _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(x, pick), _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(t));
    }
    return;
  }
#endif
#if defined(__SSE2__)
  if constexpr (is_sse2_arch_v<A> && (Bits == 2 || Bits == 4)) {
    const __m128i t = _mm_shuffle_epi32(x, _MM_SHUFFLE(3, 1, 2, 0));
    if constexpr (Bits == 4) {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out), t);
    } else {
      const int v = _mm_cvtsi128_si32(_mm_shufflelo_epi16(t, _MM_SHUFFLE(3, 3, 2, 0)));
      std::memcpy(out, &v, 4);
    }
    return;
  }
#endif
  alignas(64) std::uint64_t t[n];
  x.store_aligned(t);
  for (std::size_t l = 0; l < n; ++l) std::memcpy(out + l * Bits, &t[l], Bits);
}

/// Packs n codes (one per byte; only the low Bits bits are used) into the canonical stream at
/// out, writing exactly packed_bytes(n, Bits) bytes (the unused tail bits are zero). The SIMD
/// counterpart of quant::pack_codes.
template <unsigned Bits, class Isa>
void pack_row(const std::uint8_t* codes, std::size_t n, std::uint8_t* out) noexcept {
  static_assert(Bits >= 1 && Bits <= 8);
  if constexpr (Bits == 8) {
    if (n != 0) std::memcpy(out, codes, n);
  } else if constexpr (std::endian::native != std::endian::little) {
    pack_codes({codes, n}, Bits, out);
  } else {
    using ub = xsimd::batch<std::uint64_t, typename Isa::arch>;
    constexpr std::size_t chunk = 8 * ub::size;  // codes per batch
    std::size_t i = 0;
    for (; i + chunk <= n; i += chunk)
      compress_lanes<Bits>(pack_lanes<Bits>(ub::load_unaligned(reinterpret_cast<const std::uint64_t*>(codes + i))),
                           out + i / 8 * Bits);
    if (i < n) {
      alignas(64) std::uint64_t t[chunk / 8] = {};
      alignas(64) std::uint8_t o[chunk / 8 * Bits];
      std::memcpy(t, codes + i, n - i);
      compress_lanes<Bits>(pack_lanes<Bits>(ub::load_aligned(t)), o);
      std::memcpy(out + i / 8 * Bits, o, packed_bytes(n - i, Bits));
    }
  }
}

/// Unpacks n codes of the canonical stream at in, one per byte (reads packed_bytes(n, Bits)
/// bytes). The SIMD counterpart of quant::unpack_codes.
template <unsigned Bits, class Isa>
void unpack_row(const std::uint8_t* in, std::size_t n, std::uint8_t* codes) noexcept {
  static_assert(Bits >= 1 && Bits <= 8);
  if constexpr (Bits == 8) {
    if (n != 0) std::memcpy(codes, in, n);
  } else if constexpr (std::endian::native != std::endian::little) {
    unpack_codes(in, Bits, {codes, n});
  } else {
    using ub = xsimd::batch<std::uint64_t, typename Isa::arch>;
    constexpr std::size_t lanes = ub::size, chunk = 8 * lanes;
    alignas(64) std::uint64_t t[lanes];
    std::size_t i = 0;
    for (; i + chunk <= n; i += chunk) {
      for (std::size_t l = 0; l < lanes; ++l) {
        t[l] = 0;
        std::memcpy(&t[l], in + (i / 8 + l) * Bits, Bits);
      }
      unpack_lanes<Bits>(ub::load_aligned(t)).store_unaligned(reinterpret_cast<std::uint64_t*>(codes + i));
    }
    if (i < n) {
      alignas(64) std::uint8_t b[chunk / 8 * Bits] = {};
      std::memcpy(b, in + i / 8 * Bits, packed_bytes(n - i, Bits));
      for (std::size_t l = 0; l < lanes; ++l) {
        t[l] = 0;
        std::memcpy(&t[l], b + l * Bits, Bits);
      }
      alignas(64) std::uint8_t o[chunk];
      unpack_lanes<Bits>(ub::load_aligned(t)).store_aligned(reinterpret_cast<std::uint64_t*>(o));
      std::memcpy(codes + i, o, n - i);
    }
  }
}

/// True when every element of w is finite: the sum of x - x over each row is 0 then, and NaN as
/// soon as one element is NaN or infinite.
template <class Isa>
bool all_finite(matrix_view<const float> w) noexcept {
  using fb = xsimd::batch<float, typename Isa::arch>;
  constexpr std::size_t n = fb::size;
  for (std::size_t r = 0; r < w.rows(); ++r) {
    const float* x = &w(r, 0);
    fb a0(0.0f), a1(0.0f);
    std::size_t c = 0;
    for (; c + 2 * n <= w.cols(); c += 2 * n) {
      const fb u = fb::load_unaligned(x + c), v = fb::load_unaligned(x + c + n);
      a0 += u - u;
      a1 += v - v;
    }
    float s = xsimd::hadd(a0 + a1);
    for (; c < w.cols(); ++c) s += x[c] - x[c];
    if (s != 0.0f) return false;
  }
  return true;
}

// ------------------------------------------------------------------------------------------------
// The kernel

template <class Fmt, bool Asym, class Scale, class Isa>
struct quantize_kernel {
  using traits = format_traits<Fmt>;
  using arch = typename Isa::arch;
  using fbatch = xsimd::batch<float, arch>;
  using ibatch = xsimd::batch<std::int32_t, arch>;
  static constexpr std::size_t lanes = fbatch::size;
  static constexpr unsigned bits = traits::bits;
  static constexpr encode_path path = Asym ? encode_path::integer : encode_path_of<Fmt>();

  /// Quantizes w (finite, the shape of out) into out, as reference::quantize does.
  template <class Gran>
  static void run(matrix_view<const float> w, tensor_view<Fmt, Gran> out, const quantize_options& o) {
    const scale_grid& g = out.grid();
    const std::size_t ld = w.ld();
    std::vector<std::uint8_t> codes(g.cols);  // one row, a byte per code (allocated before any write)
    const bool scalar = use_scalar();
    Scale* scales = out.scales().data();
    if constexpr (Asym) {
      auto z = out.zeros();
      if (!z.empty()) std::memset(z.data(), 0, z.size());
    }
    auto store = [&](std::size_t k, const block_params<Scale>& p) {
      scales[k] = p.stored;
      if constexpr (Asym) write_code(out.zeros().data(), k, bits, p.zero);
    };
    if (g.single) {
      const block_params<Scale> p = fit(w.data(), ld, g.rows, g.cols, o, scalar);
      store(0, p);
      for (std::size_t r = 0; r < g.rows; ++r) {
        encode(&w(r, 0), g.cols, p, codes.data(), scalar);
        pack_row<bits, Isa>(codes.data(), g.cols, out.row_codes(r));
      }
      return;
    }
    for (std::size_t r = 0; r < g.rows; ++r) {
      const float* wr = &w(r, 0);
      for (std::size_t gi = 0; gi < g.groups_per_row; ++gi) {
        const std::size_t c0 = g.group_begin(gi), n = g.group_end(gi) - c0;
        const block_params<Scale> p = fit(wr + c0, ld, 1, n, o, scalar);
        store(g.index(r, gi), p);
        encode(wr + c0, n, p, codes.data() + c0, scalar);
      }
      pack_row<bits, Isa>(codes.data(), g.cols, out.row_codes(r));
    }
  }

  /// True when this format's codes come from the scalar encode (decided once per call).
  static bool use_scalar() noexcept {
    if constexpr (path == encode_path::scalar) return true;
    else if constexpr (path == encode_path::table) return !table_thresholds<Fmt>::get().ok;
    else return false;
  }

  /// The parameters of a block of `rows` rows of n weights (row stride ld), as fit_block.
  QUANT_ALWAYS_INLINE static block_params<Scale> fit(const float* w, std::size_t ld, std::size_t rows, std::size_t n,
                                                     const quantize_options& o, bool scalar) noexcept {
    float lo = w[0], hi = w[0];
    for (std::size_t r = 0; r < rows; ++r) minmax(w + r * ld, n, lo, hi);
    return choose_params<Fmt, Asym, Scale>(lo, hi, o, [&](const block_params<Scale>& p) {
      double lanes_sum[error_lanes] = {};
      constexpr std::size_t chunk = 16 * error_lanes;  // starts stay multiples of 16 columns
      alignas(64) float wq[chunk];
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c0 = 0; c0 < n; c0 += chunk) {
          const std::size_t m = n - c0 < chunk ? n - c0 : chunk;
          const float* src = w + r * ld + c0;
          dequantize(src, m, p, wq, scalar);
          add_sq_errors(src, wq, m, lanes_sum);
        }
      return sum_error_lanes(lanes_sum);
    });
  }

  /// Folds w[0, n) into [lo, hi].
  QUANT_ALWAYS_INLINE static void minmax(const float* w, std::size_t n, float& lo, float& hi) noexcept {
    std::size_t i = 0;
    if (n >= lanes) {
      fbatch l0(lo), h0(hi), l1(lo), h1(hi);
      for (; i + 2 * lanes <= n; i += 2 * lanes) {
        const fbatch a = fbatch::load_unaligned(w + i), b = fbatch::load_unaligned(w + i + lanes);
        l0 = xsimd::min(l0, a), h0 = xsimd::max(h0, a);
        l1 = xsimd::min(l1, b), h1 = xsimd::max(h1, b);
      }
      if (i + lanes <= n) {
        const fbatch a = fbatch::load_unaligned(w + i);
        l0 = xsimd::min(l0, a), h0 = xsimd::max(h0, a);
        i += lanes;
      }
      const float l = reduce_min(xsimd::min(l0, l1)), h = reduce_max(xsimd::max(h0, h1));
      lo = l < lo ? l : lo;
      hi = h > hi ? h : hi;
    }
    for (; i < n; ++i) {
      lo = w[i] < lo ? w[i] : lo;
      hi = w[i] > hi ? w[i] : hi;
    }
  }

  /// The element rule of fit.hpp (quantize_value) for one batch of weights and one block's
  /// parameters; codes() gives the codes, dequantized() the values s * decode(code).
  struct encoder {
    fbatch s, z;
    const std::int32_t* keys = nullptr;  // table formats: the thresholds
    std::int32_t nan_code = 0;

    explicit encoder(const block_params<Scale>& p) noexcept : s(p.scale), z(static_cast<float>(p.zero)) {
      if constexpr (path == encode_path::table && !Asym) {
        const table_thresholds<Fmt>& t = table_thresholds<Fmt>::get();
        keys = t.key.data();
        nan_code = t.nan_code;
      }
    }

    QUANT_ALWAYS_INLINE ibatch codes(fbatch w) const noexcept {
      if constexpr (Asym) {
        return xsimd::batch_cast<std::int32_t>(asym_q(w));
      } else if constexpr (path == encode_path::integer) {
        return int_q(w) & ibatch(static_cast<std::int32_t>((1u << bits) - 1u));
      } else if constexpr (path == encode_path::minifloat) {
        return minifloat_code(w / s);
      } else {
        return table_code(w / s);
      }
    }

    QUANT_ALWAYS_INLINE fbatch dequantized(fbatch w) const noexcept {
      if constexpr (Asym) {
        return s * (asym_q(w) - z);
      } else if constexpr (path == encode_path::integer) {
        return s * xsimd::batch_cast<float>(int_q(w));
      } else {
        constexpr std::size_t count = std::size_t{1} << bits;
        return s * lookup_values<count>(codes(w), code_value_table<Fmt>().data());
      }
    }

   private:
    // clamp(nearbyint(w / s) + z, 0, 2^bits - 1), as a float
    QUANT_ALWAYS_INLINE fbatch asym_q(fbatch w) const noexcept {
      constexpr float qmax = static_cast<float>((1u << bits) - 1u);
      const fbatch q = xsimd::nearbyint(w / s) + z;
      return xsimd::min(xsimd::max(q, fbatch(0.0f)), fbatch(qmax));
    }

    // integer_traits::encode before the mask: the signed code
    QUANT_ALWAYS_INLINE ibatch int_q(fbatch w) const noexcept {
      constexpr float lo = -static_cast<float>(1u << (bits - 1)), hi = static_cast<float>((1u << (bits - 1)) - 1u);
      fbatch r = xsimd::nearbyint(w / s);
      r = xsimd::select(r == r, r, fbatch(0.0f));
      r = xsimd::min(xsimd::max(r, fbatch(lo)), fbatch(hi));
      return xsimd::batch_cast<std::int32_t>(r);
    }

    // minifloat_traits::encode
    QUANT_ALWAYS_INLINE static ibatch minifloat_code(fbatch v) noexcept {
      using T = traits;
      constexpr unsigned E = T::exponent_bits, M = T::mantissa_bits;
      constexpr auto inf_bits = static_cast<std::int32_t>(0x7F800000);
      const ibatch x = xsimd::bitwise_cast<ibatch>(v);
      const ibatch ax = x & ibatch(0x7FFFFFFF);
      const ibatch sign =
          (x >> static_cast<std::int32_t>(31 - (E + M))) & ibatch(static_cast<std::int32_t>(T::sign_bit));
      const fbatch a = xsimd::bitwise_cast<fbatch>(ax);
      // Subnormal: an integer multiple of 2^(1-bias-M).
      const ibatch sub = xsimd::batch_cast<std::int32_t>(xsimd::nearbyint(a * fbatch(T::exp2i(M + T::bias - 1))));
      // Normal: a = 2^e * frac with frac in [1, 2) (exact); the mantissa rounds to nearest-even and
      // a carry (q == 2^M) moves into the exponent.
      const ibatch e = (ax >> 23) - ibatch(127);
      const fbatch frac = xsimd::bitwise_cast<fbatch>((ax & ibatch(0x007FFFFF)) | ibatch(0x3F800000));
      const fbatch m = (frac - fbatch(1.0f)) * fbatch(static_cast<float>(1u << M));
      const ibatch q = xsimd::batch_cast<std::int32_t>(xsimd::nearbyint(m));
      const ibatch norm = ((e + ibatch(T::bias)) << static_cast<std::int32_t>(M)) + q;
      const ibatch maxc(static_cast<std::int32_t>(T::max_code));
      ibatch code = iselect(ax < ibatch(std::bit_cast<std::int32_t>(T::min_normal)), sub, norm);
      code = xsimd::min(code, maxc);
      code = iselect(ax >= ibatch(std::bit_cast<std::int32_t>(T::max_value)), maxc, code) | sign;
      const ibatch nan_code(static_cast<std::int32_t>(T::encode(std::numeric_limits<float>::quiet_NaN())));
      const ibatch neg_nan_code(static_cast<std::int32_t>(T::encode(-std::numeric_limits<float>::quiet_NaN())));
      const ibatch nan = iselect(sign == ibatch(0), nan_code, neg_nan_code);
      return iselect(ax > ibatch(inf_bits), nan, code);
    }

    // lut_traits::encode through the threshold keys
    QUANT_ALWAYS_INLINE ibatch table_code(fbatch v) const noexcept {
      constexpr std::size_t thresholds = (std::size_t{1} << bits) - 1;
      const ibatch x = xsimd::bitwise_cast<ibatch>(v);
      const ibatch key = x ^ iselect(x < ibatch(0), ibatch(0x7FFFFFFF), ibatch(0));
      ibatch c(0);
#if defined(QUANT_ISA_AVX512)
      if constexpr (is_avx512_arch_v<arch>) {  // bisection over the sorted thresholds with vpermd
        const __m512i kv = _mm512_loadu_si512(keys);  // the 16-entry array ends in INT32_MAX
        for (std::int32_t step = (thresholds + 1) / 2; step >= 1; step /= 2) {
          const ibatch t(_mm512_permutexvar_epi32(c + ibatch(step - 1), kv));
          c = iselect(key >= t, c + ibatch(step), c);
        }
      } else
#endif
      {
        const ibatch one(1);
        for (std::size_t j = 0; j < thresholds; ++j) c = iselect(key >= ibatch(keys[j]), c + one, c);
      }
      const ibatch ax = x & ibatch(0x7FFFFFFF);
      return iselect(ax > ibatch(static_cast<std::int32_t>(0x7F800000)), ibatch(nan_code), c);
    }
  };

  /// The codes of w[0, n) under p into out[0, n), one per byte.
  QUANT_ALWAYS_INLINE static void encode(const float* w, std::size_t n, const block_params<Scale>& p, std::uint8_t* out,
                     bool scalar) noexcept {
    if (p.scale == 0.0f) {  // every weight gets the code quantize_value gives with s = 0
      std::memset(out, quantize_value<Fmt, Asym>(0.0f, 0.0f, p.zero), n);
      return;
    }
    if constexpr (path != encode_path::integer && path != encode_path::minifloat) {
      if (scalar) {
        for (std::size_t i = 0; i < n; ++i) out[i] = quantize_value<Fmt, Asym>(w[i], p.scale, p.zero);
        return;
      }
    }
    if constexpr (path != encode_path::scalar) {
      const encoder e(p);
      std::size_t i = 0;
      for (; i + lanes <= n; i += lanes) store_code_bytes(e.codes(fbatch::load_unaligned(w + i)), out + i);
      if (i < n) {
        alignas(64) float t[lanes] = {};
        alignas(64) std::uint8_t c[lanes];
        std::memcpy(t, w + i, (n - i) * sizeof(float));
        store_code_bytes(e.codes(fbatch::load_aligned(t)), c);
        std::memcpy(out + i, c, n - i);
      }
    }
    (void)scalar;
  }

  /// The dequantized values s * decode(code) of w[0, n) under p into out[0, n).
  static void dequantize(const float* w, std::size_t n, const block_params<Scale>& p, float* out,
                         bool scalar) noexcept {
    if (p.scale == 0.0f) {
      const float v = dequantize_value<Fmt, Asym>(quantize_value<Fmt, Asym>(0.0f, 0.0f, p.zero), 0.0f, p.zero);
      for (std::size_t i = 0; i < n; ++i) out[i] = v;
      return;
    }
    if constexpr (path != encode_path::integer && path != encode_path::minifloat) {
      if (scalar) {
        for (std::size_t i = 0; i < n; ++i)
          out[i] = dequantize_value<Fmt, Asym>(quantize_value<Fmt, Asym>(w[i], p.scale, p.zero), p.scale, p.zero);
        return;
      }
    }
    if constexpr (path != encode_path::scalar) {
      const encoder e(p);
      std::size_t i = 0;
      for (; i + lanes <= n; i += lanes) e.dequantized(fbatch::load_unaligned(w + i)).store_unaligned(out + i);
      if (i < n) {
        alignas(64) float t[lanes] = {};
        alignas(64) float d[lanes];
        std::memcpy(t, w + i, (n - i) * sizeof(float));
        e.dequantized(fbatch::load_aligned(t)).store_aligned(d);
        std::memcpy(out + i, d, (n - i) * sizeof(float));
      }
    }
    (void)scalar;
  }
};

}  // namespace detail
QUANT_NAMESPACE_END
