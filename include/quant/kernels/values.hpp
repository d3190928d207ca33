// quant/kernels/values.hpp: the value of every code of a format, as the kernels read it.
//
// Every format has at most 256 codes, so its decode function becomes a table once per program:
// SIMD kernels decode 4-bit codes with one in-register permute or byte shuffle and 8-bit codes
// with a gather, whatever the format (a user's format through traits included).
//
// The fast GEMV mode multiplies int8 activations by integer weights. Its weight values are:
//   - integer formats: the code itself (symmetric: the signed code; asymmetric: the unsigned
//     code, the zero point subtracted afterwards), exactly;
//   - formats whose values are all integers after one power-of-two factor k <= 2^16, within
//     [-128, 127] (fp4 e2m1: k = 2 gives -12..12): exactly, v8 = k * value, multiplier 1/k;
//   - other formats with at most 16 codes (nf4, custom tables): the value rounded to the int8
//     grid of the format's largest magnitude m, v8 = rne(127 * value / m), multiplier m / 127.
//     For nf4 this moves a value by at most 1/254 of the group's scale; the README measures it;
//   - fp8 e4m3: the exact value, except that its subnormal codes (|value| < 2^-6, below 1/28672
//     of the largest) count as zero. With AVX-512 BF16 the kernel multiplies the codes, rebuilt
//     as bf16, by the int8 activations (exact in bf16) with vdpbf16ps, which flushes subnormal
//     inputs; every other path flushes them the same way, so the definition holds everywhere;
//   - everything else (e5m2, wide custom formats): the exact value in float; the kernel then
//     multiplies by the dequantized int8 activations in float.
// The scalar reference (reference/gemv.hpp) and every SIMD kernel use these same values, so the
// fast mode is one definition, tested kernel against reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "../formats/format_traits.hpp"
#include "../formats/minifloat.hpp"

QUANT_NAMESPACE_BEGIN
namespace detail {

template <class Fmt>
inline constexpr bool is_e4m3_v = std::is_base_of_v<minifloat_traits<4, 3, nonfinite::nan_only>, format_traits<Fmt>>;
template <class Fmt>
inline constexpr bool is_e5m2_v = std::is_base_of_v<minifloat_traits<5, 2, nonfinite::ieee>, format_traits<Fmt>>;

template <class Fmt, bool Asym>
struct code_values {
  static constexpr unsigned bits = format_traits<Fmt>::bits;
  static constexpr unsigned count = 1u << bits;

  alignas(64) float exact[256] = {};   ///< symmetric: decode(j); asymmetric: j (the zero point comes off later)
  alignas(64) float fast[256] = {};    ///< the fast-mode value of code j (= v8[j] * mult when int_fast)
  alignas(64) std::uint8_t u8[256] = {};  ///< int_fast: v8[j] + offset, an unsigned byte
  alignas(64) std::int8_t v8[256] = {};   ///< int_fast and symmetric: the fast-mode integer value
  alignas(64) float u8f[256] = {};        ///< u8 as float (the scalar tails of the integer paths)
  bool int_fast = false;  ///< the fast mode's weight values are integers (integer dot products)
  bool exact_fast = true; ///< the fast-mode values equal the exact ones
  float mult = 1.0f;      ///< fast value = v8 * mult
  int offset = 0;         ///< u8 = v8 + offset >= 0 (the kernels subtract offset * sum(x) per group)
  bool finite = true;     ///< every code decodes to a finite value

  static const code_values& get() {
    static const code_values v;
    return v;
  }

  code_values() noexcept {
    using T = format_traits<Fmt>;
    float m = 0.0f;
    for (unsigned j = 0; j < count; ++j) {
      const auto c = static_cast<std::uint8_t>(j);
      exact[j] = Asym ? static_cast<float>(j) : T::decode(c);
      if (!std::isfinite(exact[j])) finite = false;
      else m = std::fabs(exact[j]) > m ? std::fabs(exact[j]) : m;
    }
    for (unsigned j = 0; j < count; ++j) fast[j] = exact[j];
    if constexpr (is_e4m3_v<Fmt> && !Asym) {  // subnormal codes (exponent field 0) count as zero
      for (unsigned j = 0; j < count; ++j)
        if ((j & 0x78u) == 0) fast[j] = 0.0f;
      exact_fast = false;
    }
    if constexpr (Asym) {  // unsigned integer codes
      int_fast = true;
      for (unsigned j = 0; j < count; ++j) u8[j] = static_cast<std::uint8_t>(j), u8f[j] = static_cast<float>(j);
      return;
    }
    if (!finite) return;
    // Exact integers after a power-of-two factor?
    for (float k = 1.0f; k <= 65536.0f; k *= 2.0f) {
      bool ok = true;
      for (unsigned j = 0; j < count && ok; ++j) {
        const float v = exact[j] * k;
        ok = v == std::nearbyint(v) && v >= -128.0f && v <= 127.0f;
      }
      if (ok) {
        set_int(k, 1.0f / k, false);
        return;
      }
    }
    if (count <= 16 && m > 0.0f) {
      set_int(127.0f / m, m / 127.0f, true);
      exact_fast = false;
    }
  }

 private:
  void set_int(float to_int, float multiplier, bool round) noexcept {
    int lo = 0;
    for (unsigned j = 0; j < count; ++j) {
      const float v = round ? std::nearbyint(exact[j] * to_int) : exact[j] * to_int;
      v8[j] = static_cast<std::int8_t>(v);
      lo = v8[j] < lo ? v8[j] : lo;
    }
    int_fast = true;
    mult = multiplier;
    offset = -lo;
    for (unsigned j = 0; j < count; ++j) {
      u8[j] = static_cast<std::uint8_t>(v8[j] + offset);
      u8f[j] = static_cast<float>(u8[j]);
      fast[j] = static_cast<float>(v8[j]) * mult;
    }
  }
};

}  // namespace detail
QUANT_NAMESPACE_END
