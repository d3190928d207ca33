// quant/formats/format_traits.hpp: format_traits<F>, the one extension point for number formats.
//
// A format is a tag type F (an empty struct); everything about it lives in a specialization of
// quant::format_traits<F>, as {fmt} keeps a type's formatting in fmt::formatter<T>. A
// specialization provides:
//
//   static constexpr std::string_view name;      // "int4", "nf4", ... (printed by quant/io/fmt.hpp)
//   static constexpr unsigned bits;              // code width, 1..8
//   static constexpr std::uint32_t id;           // stable on-disk id; user formats use >= 0x80000000
//   static constexpr std::uint32_t layout_version;
//   static std::uint8_t encode(float v);         // v is in units of the scale: the nearest code,
//                                                // ties to even, saturating at the largest value
//   static float decode(std::uint8_t code);      // the value a code stands for (low `bits` bits)
//
// and optionally
//
//   static constexpr bool is_integer = true;     // codes are two's-complement integers: enables
//                                                // the asymmetric scheme (unsigned codes 0..2^bits-1
//                                                // with an integer zero point)
//   static constexpr std::array<float, 1 << bits> code_table;  // a code-table format: SIMD
//                                                // kernels decode it by table lookup
//
// Helpers build the common kinds: integer_traits<Bits> (integer.hpp), minifloat_traits<E, M, P>
// (minifloat.hpp) and lut_traits<Table> (lut.hpp). check_format<F>() turns a missing or wrong
// member into a static_assert that names it. The primary template is defined but marked, so
// is_format_v<F> is false for a type nobody specialized.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string_view>
#include <type_traits>

#include "../config.hpp"

QUANT_NAMESPACE_BEGIN

/// Specialize for a format tag F. The primary template marks "not a format".
template <class F>
struct format_traits {
  using quant_format_traits_not_specialized = void;
};

/// True when format_traits<F> has been specialized (cv-qualifiers on F are ignored).
template <class F>
inline constexpr bool is_format_v =
    !requires { typename format_traits<std::remove_cv_t<F>>::quant_format_traits_not_specialized; };

namespace detail {
template <class>
inline constexpr bool dependent_false = false;

template <class T>
concept has_bits = requires {
  { T::bits } -> std::convertible_to<unsigned>;
};
template <class T>
concept has_name = requires {
  { T::name } -> std::convertible_to<std::string_view>;
};
template <class T>
concept has_id = requires {
  { T::id } -> std::convertible_to<std::uint32_t>;
};
template <class T>
concept has_layout_version = requires {
  { T::layout_version } -> std::convertible_to<std::uint32_t>;
};
template <class T>
concept has_encode = requires(float v) {
  { T::encode(v) } -> std::same_as<std::uint8_t>;
};
template <class T>
concept has_decode = requires(std::uint8_t c) {
  { T::decode(c) } -> std::same_as<float>;
};
}  // namespace detail

/// Checks at compile time that F is a usable format; each missing or wrong member gives a
/// static_assert naming it. Returns true, so it can sit inside another static_assert.
template <class F>
constexpr bool check_format() {
  using Fmt = std::remove_cv_t<F>;
  static_assert(is_format_v<Fmt>,
                "quant: format_traits<F> is not specialized for this type; specialize "
                "quant::format_traits<F> (see quant/formats/format_traits.hpp)");
  if constexpr (is_format_v<Fmt>) {
    using T = format_traits<Fmt>;
    static_assert(detail::has_name<T>, "quant: format_traits<F> must declare 'static constexpr std::string_view name'");
    static_assert(detail::has_bits<T>, "quant: format_traits<F> must declare 'static constexpr unsigned bits'");
    static_assert(detail::has_id<T>, "quant: format_traits<F> must declare 'static constexpr std::uint32_t id'");
    static_assert(detail::has_layout_version<T>,
                  "quant: format_traits<F> must declare 'static constexpr std::uint32_t layout_version'");
    static_assert(detail::has_encode<T>,
                  "quant: format_traits<F> must declare 'static std::uint8_t encode(float)'");
    static_assert(detail::has_decode<T>, "quant: format_traits<F> must declare 'static float decode(std::uint8_t)'");
    if constexpr (detail::has_bits<T>) {
      static_assert(T::bits >= 1 && T::bits <= 8, "quant: format_traits<F>::bits must be between 1 and 8");
    }
    if constexpr (requires { T::code_table; } && detail::has_bits<T>) {
      static_assert(std::size(T::code_table) == (std::size_t{1} << T::bits),
                    "quant: format_traits<F>::code_table must have exactly 2^bits entries");
    }
  }
  return true;
}

/// True for formats whose codes are two's-complement integers (they allow asymmetric schemes).
template <class F>
inline constexpr bool is_integer_format_v = [] {
  if constexpr (requires { format_traits<std::remove_cv_t<F>>::is_integer; })
    return static_cast<bool>(format_traits<std::remove_cv_t<F>>::is_integer);
  else
    return false;
}();

/// True for formats that publish a code table (decoded by table lookup).
template <class F>
inline constexpr bool is_code_table_format_v = requires { format_traits<std::remove_cv_t<F>>::code_table; };

/// The finite range a format's codes decode to: min <= 0 <= max for every built-in format.
struct code_range {
  float min = 0.0f;
  float max = 0.0f;
  /// The largest magnitude, max(|min|, |max|).
  constexpr float max_abs() const noexcept { return max > -min ? max : -min; }
};

/// The range of F, found by decoding all 2^bits codes (non-finite codes are skipped).
template <class F>
code_range format_range() noexcept {
  using T = format_traits<std::remove_cv_t<F>>;
  static const code_range r = [] {
    code_range out{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
    for (unsigned c = 0; c < (1u << T::bits); ++c) {
      const float v = T::decode(static_cast<std::uint8_t>(c));
      if (v - v != 0.0f) continue;  // NaN or infinity
      out.min = v < out.min ? v : out.min;
      out.max = v > out.max ? v : out.max;
    }
    return out;
  }();
  return r;
}

QUANT_NAMESPACE_END
