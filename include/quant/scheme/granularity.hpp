// quant/scheme/granularity.hpp: symmetry and granularity, the second parameter of a tensor.
//
// A granularity says how many weights share one scale (and zero point), and carries the
// symmetry and the scale storage type:
//   per_tensor<Sym, Scale>       one scale for the whole matrix
//   per_channel<Sym, Scale>      one scale per row (output channel)
//   per_group<G, Sym, Scale>     one scale per G consecutive weights of a row; the last group of
//                                a row is shorter when G does not divide cols (ceil(cols/G)
//                                groups per row, as GPTQ and ONNX Runtime's MatMulNBits allow)
//   per_group<dynamic_group, ...> the same with G chosen at run time: per_group<dynamic_group>{64}
// Sym is symmetric (w = s*q, signed codes) or asymmetric (w = s*(q - z), unsigned codes and an
// integer zero point z per scale; integer formats only). Scale is float, fp16, bf16 or e8m0.
// grid_of() turns a granularity and a shape into the scale grid that every kernel indexes.
#pragma once

#include <cstddef>
#include <limits>
#include <string_view>
#include <type_traits>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/scalar_types.hpp"

QUANT_NAMESPACE_BEGIN

/// w = s * q with signed codes.
struct symmetric {
  static constexpr bool is_asymmetric = false;
  static constexpr std::string_view name = "sym";
};
/// w = s * (q - z) with unsigned codes and an integer zero point z.
struct asymmetric {
  static constexpr bool is_asymmetric = true;
  static constexpr std::string_view name = "asym";
};

/// How the scales of a granularity are laid over a matrix.
enum class granularity_kind { tensor, channel, group };

/// A group size chosen at run time: per_group<dynamic_group>{g}.
inline constexpr std::size_t dynamic_group = std::numeric_limits<std::size_t>::max();

namespace detail {
template <class Sym, class Scale>
struct granularity_base {
  static_assert(std::is_same_v<Sym, symmetric> || std::is_same_v<Sym, asymmetric>,
                "quant: the symmetry parameter must be quant::symmetric or quant::asymmetric");
  static_assert(is_scale_type_v<Scale>, "quant: the scale type must be float, quant::fp16, quant::bf16 or quant::e8m0");
  using symmetry = Sym;
  using scale_type = Scale;
  static constexpr bool is_asymmetric = Sym::is_asymmetric;
};
}  // namespace detail

template <class Sym = symmetric, class Scale = float>
struct per_tensor : detail::granularity_base<Sym, Scale> {
  static constexpr granularity_kind kind = granularity_kind::tensor;
  static constexpr std::size_t static_group_size = 0;
};

template <class Sym = symmetric, class Scale = float>
struct per_channel : detail::granularity_base<Sym, Scale> {
  static constexpr granularity_kind kind = granularity_kind::channel;
  static constexpr std::size_t static_group_size = 0;
};

template <std::size_t G, class Sym = symmetric, class Scale = float>
struct per_group : detail::granularity_base<Sym, Scale> {
  static_assert(G != 0, "quant::per_group: the group size must not be zero");
  static constexpr granularity_kind kind = granularity_kind::group;
  static constexpr std::size_t static_group_size = G;
  constexpr std::size_t group_size() const noexcept { return G; }
};

/// per_group with the group size held at run time.
template <class Sym, class Scale>
struct per_group<dynamic_group, Sym, Scale> : detail::granularity_base<Sym, Scale> {
  static constexpr granularity_kind kind = granularity_kind::group;
  static constexpr std::size_t static_group_size = dynamic_group;
  std::size_t size = 0;
  constexpr per_group() noexcept = default;
  constexpr explicit per_group(std::size_t group_size) noexcept : size(group_size) {}
  constexpr std::size_t group_size() const noexcept { return size; }
};

/// True for the granularity templates above.
template <class G>
inline constexpr bool is_granularity_v = requires {
  G::kind;
  typename G::symmetry;
  typename G::scale_type;
};

/// The scale grid of a matrix: which scale (and zero point) each weight uses.
/// Weight (r, c) uses scale index(r, c / group); per_tensor has a single scale.
struct scale_grid {
  std::size_t rows = 0, cols = 0;
  std::size_t group = 0;           ///< columns per group (cols for per_channel and per_tensor)
  std::size_t groups_per_row = 0;  ///< ceil(cols / group)
  bool single = false;             ///< per_tensor: every weight uses scale 0

  constexpr std::size_t count() const noexcept { return single ? 1 : rows * groups_per_row; }
  constexpr std::size_t index(std::size_t r, std::size_t g) const noexcept { return single ? 0 : r * groups_per_row + g; }
  /// Columns [begin, end) of group g of a row.
  constexpr std::size_t group_begin(std::size_t g) const noexcept { return g * group; }
  constexpr std::size_t group_end(std::size_t g) const noexcept { return (g + 1) * group < cols ? (g + 1) * group : cols; }
};

/// The scale grid of granularity gran over a rows x cols matrix. Throws quant::error for an
/// empty shape or a zero run-time group size; `who` names the calling function in the message.
template <class Gran>
scale_grid grid_of(const Gran& gran, std::size_t rows, std::size_t cols, const char* who) {
  if (rows == 0 || cols == 0) detail::fail(who, ": the matrix is empty (", rows, " x ", cols, ")");
  scale_grid g{rows, cols, cols, 1, Gran::kind == granularity_kind::tensor};
  if constexpr (Gran::kind == granularity_kind::group) {
    const std::size_t gs = gran.group_size();
    if (gs == 0) detail::fail(who, ": group size is 0; a group needs at least one column");
    g.group = gs;
    g.groups_per_row = (cols + gs - 1) / gs;
  }
  return g;
}

QUANT_NAMESPACE_END
