// tests/user_formats.hpp: the user-defined formats several tests share, each defined through
// format_traits only: nf3 (a code table, lut_traits), sm3 (every member written by hand, so its
// encode is the format's own), int6 (integer_traits) and e3m2 (minifloat_traits, no Inf/NaN).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <quant/quant.hpp>
#include <string_view>

namespace user {
struct nf3 {};
inline constexpr std::array<float, 8> nf3_table{-1.0f, -0.5350f, -0.2469f, 0.0f, 0.1833f, 0.3819f, 0.6229f, 1.0f};
struct sm3 {};   // 3-bit sign + magnitude: +-{0, 1, 2, 3}, written by hand
struct int6 {};  // a 6-bit integer
struct e3m2 {};  // a 6-bit minifloat without Inf/NaN
}  // namespace user

template <>
struct quant::format_traits<user::nf3> : quant::lut_traits<user::nf3_table> {
  static constexpr std::string_view name = "nf3";
  static constexpr std::uint32_t id = 0x80000001;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct quant::format_traits<user::sm3> {
  static constexpr std::string_view name = "sm3";
  static constexpr unsigned bits = 3;
  static constexpr std::uint32_t id = 0x80000002;
  static constexpr std::uint32_t layout_version = 1;
  static std::uint8_t encode(float v) {
    const float m = std::fmin(3.0f, std::nearbyint(std::fabs(v)));
    return static_cast<std::uint8_t>((v < 0 ? 4 : 0) | static_cast<int>(m));
  }
  static float decode(std::uint8_t c) { return (c & 4 ? -1.0f : 1.0f) * static_cast<float>(c & 3); }
};
template <>
struct quant::format_traits<user::int6> : quant::integer_traits<6> {
  static constexpr std::string_view name = "int6";
  static constexpr std::uint32_t id = 0x80000003;
  static constexpr std::uint32_t layout_version = 1;
};
template <>
struct quant::format_traits<user::e3m2> : quant::minifloat_traits<3, 2, quant::nonfinite::none> {
  static constexpr std::string_view name = "e3m2";
  static constexpr std::uint32_t id = 0x80000004;
  static constexpr std::uint32_t layout_version = 1;
};
