// quant/formats/lut.hpp: code-table formats, whose codes index a table of values, and NF4.
//
// lut_traits<Table> turns a sorted std::array<float, 2^bits> into a format: decode is a table
// lookup, encode picks the nearest entry (a tie between two entries goes to the even code).
// A format that publishes its code_table gets table-lookup SIMD decoding automatically.
// nf4 is the 16-value NormalFloat table of QLoRA (Dettmers et al., 2023, appendix E): the
// quantiles of N(0, 1) normalized to [-1, 1], with an exact zero.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "../config.hpp"
#include "format_traits.hpp"

QUANT_NAMESPACE_BEGIN

namespace detail {
template <class A>
constexpr bool strictly_ascending(const A& t) {
  for (std::size_t i = 1; i < std::size(t); ++i)
    if (!(t[i - 1] < t[i])) return false;
  return true;
}
constexpr unsigned log2_exact(std::size_t n) {
  unsigned b = 0;
  while ((std::size_t{1} << b) < n) ++b;
  return b;
}
}  // namespace detail

/// Traits of a code-table format over Table, a constexpr std::array<float, N> with static
/// storage duration, N a power of two in [2, 256], entries strictly ascending and finite.
template <const auto& Table>
struct lut_traits {
  static constexpr std::size_t size = std::size(Table);
  static_assert(size >= 2 && size <= 256 && (size & (size - 1)) == 0,
                "quant::lut_traits: the table must have 2^bits entries, 2 to 256");
  static_assert(detail::strictly_ascending(Table), "quant::lut_traits: the table must be strictly ascending");
  static constexpr unsigned bits = detail::log2_exact(size);
  static constexpr const auto& code_table = Table;

  static constexpr float decode(std::uint8_t code) noexcept { return Table[code & (size - 1)]; }

  /// The nearest entry; a value exactly between two entries goes to the even code. NaN gives
  /// the code nearest to 0.
  static std::uint8_t encode(float v) noexcept {
    if (v != v) v = 0.0f;
    std::size_t lo = 0, hi = size - 1;  // find the last entry <= v by bisection
    if (v <= Table[0]) return 0;
    if (v >= Table[hi]) return static_cast<std::uint8_t>(hi);
    while (hi - lo > 1) {
      const std::size_t mid = (lo + hi) / 2;
      (Table[mid] <= v ? lo : hi) = mid;
    }
    // In double both distances are exact (a float difference can round two unequal ones equal).
    const double dl = static_cast<double>(v) - Table[lo], dh = static_cast<double>(Table[hi]) - v;
    if (dl < dh) return static_cast<std::uint8_t>(lo);
    if (dh < dl) return static_cast<std::uint8_t>(hi);
    return static_cast<std::uint8_t>(lo % 2 == 0 ? lo : hi);
  }
};

/// The NF4 table as published with QLoRA (bitsandbytes' float values).
inline constexpr std::array<float, 16> nf4_table{
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

struct nf4 {};

template <>
struct format_traits<nf4> : lut_traits<nf4_table> {
  static constexpr std::string_view name = "nf4";
  static constexpr std::uint32_t id = 0x10;
  static constexpr std::uint32_t layout_version = 1;
};

QUANT_NAMESPACE_END
