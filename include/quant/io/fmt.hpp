// quant/io/fmt.hpp: {fmt} support, the only header of the library that includes fmt.
//
// Formats a tensor or tensor view as a one-line summary:
//   fmt::print("{}\n", t);  // int4 per_group<128, asym, f16> [4096 x 11008] 23.3 MB, 4.16 bits/weight
// and a granularity on its own ("per_channel<sym, f32>"). Works with {fmt} 9.1 and later.
#pragma once

#include <fmt/format.h>

#include "../quant.hpp"

template <class Gran>
  requires quant::is_granularity_v<Gran>
struct fmt::formatter<Gran> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  auto format(const Gran& g, format_context& ctx) const {
    using sym = typename Gran::symmetry;
    using scale = quant::scale_traits<typename Gran::scale_type>;
    if constexpr (Gran::kind == quant::granularity_kind::tensor)
      return fmt::format_to(ctx.out(), "per_tensor<{}, {}>", sym::name, scale::name);
    else if constexpr (Gran::kind == quant::granularity_kind::channel)
      return fmt::format_to(ctx.out(), "per_channel<{}, {}>", sym::name, scale::name);
    else
      return fmt::format_to(ctx.out(), "per_group<{}, {}, {}>", g.group_size(), sym::name, scale::name);
  }
};

template <class F, class Gran>
struct fmt::formatter<quant::tensor_view<F, Gran>> {
  constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
  auto format(const quant::tensor_view<F, Gran>& t, format_context& ctx) const {
    const double bytes = static_cast<double>(t.bytes());
    const char* unit = bytes >= 1e9 ? "GB" : bytes >= 1e6 ? "MB" : bytes >= 1e3 ? "kB" : "B";
    const double div = bytes >= 1e9 ? 1e9 : bytes >= 1e6 ? 1e6 : bytes >= 1e3 ? 1e3 : 1.0;
    return fmt::format_to(ctx.out(), "{} {} [{} x {}{}] {:.3g} {}, {:.3f} bits/weight",
                          quant::format_traits<std::remove_const_t<F>>::name, t.granularity(), t.rows(), t.cols(),
                          t.permuted() ? ", permuted columns" : "", bytes / div, unit, t.bits_per_weight());
  }
};

template <class F, class Gran>
struct fmt::formatter<quant::tensor<F, Gran>> : fmt::formatter<quant::tensor_view<const F, Gran>> {
  auto format(const quant::tensor<F, Gran>& t, format_context& ctx) const {
    if (t.empty()) return fmt::format_to(ctx.out(), "{} (empty tensor)", quant::format_traits<F>::name);
    return fmt::formatter<quant::tensor_view<const F, Gran>>::format(t.cview(), ctx);
  }
};
