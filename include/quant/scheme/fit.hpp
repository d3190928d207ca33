// quant/scheme/fit.hpp: choosing a scale (and zero point) for a block of weights, and the
// element-wise quantize / dequantize rules every kernel follows.
//
// Scale selection (quantize_options::search):
//   minmax (default)  Symmetric: the smallest scale that represents both extremes of the block,
//                     s = max(wmax / fmax, wmin / fmin), where [fmin, fmax] is the format's range.
//                     For int4 that is max(wmax/7, -wmin/8), so a block whose extreme is negative
//                     uses all 16 codes. With e8m0 scales (the MX formats) the OCP rule instead:
//                     s = 2^(floor(log2 amax) - floor(log2 fmax)), which may clip the largest
//                     values, as the spec prescribes.
//                     Asymmetric: the range [min(wmin, 0), max(wmax, 0)] (it always holds zero,
//                     so 0 is exact and nothing clips), s = range / (2^bits - 1) (rounded up to
//                     a power of two for e8m0 scales), and the integer zero point z = round(-lo / s).
//   mse               Tries clip_grid shrink factors p = 1 - k * clip_max_shrink / clip_grid
//                     (1.0 down to 0.525 by default) of the minmax range and keeps the one with
//                     the lowest squared error of the block (the earliest on ties); e8m0 scales
//                     try the four exponents around the OCP one. It costs clip_grid extra
//                     quantize passes and lowers the RMS error by 2-9% at 4 bits, ~22% for int3
//                     and 15-18% for int2; int8 gains nothing (doc/design.md has the table).
//                     The squared error of a block is defined bit for bit, so that every kernel
//                     picks the same candidate: each weight's error is rounded to float,
//                     d = float(double(w) - double(w')), and d*d (exact in double) is added to
//                     lane (column offset within the block) % 16 of 16 double partial sums, row
//                     after row; the lanes are then added pairwise (lane j += lane j+8, +4, +2,
//                     +1). Exact squares make the sum immune to FMA contraction, and the fixed
//                     lanes let SIMD kernels keep the order (add_sq_errors, sum_error_lanes).
// The element rules: symmetric code = encode(w / s), w' = s * decode(code);
// asymmetric code = clamp(rne(w / s) + z, 0, 2^bits - 1), w' = s * (code - z).
// A zero scale (an all-zero block) gives the code of 0 and dequantizes to 0.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../core/scalar_types.hpp"
#include "../formats/format_traits.hpp"

QUANT_NAMESPACE_BEGIN

/// How quantize() chooses each scale.
enum class scale_search {
  minmax,  ///< the block's extremes (absmax for symmetric schemes)
  mse,     ///< grid search over clipped ranges for the lowest squared error
};

/// Options of round-to-nearest quantization.
struct quantize_options {
  scale_search search = scale_search::minmax;
  unsigned clip_grid = 20;       ///< mse: number of shrink factors tried (>= 1)
  float clip_max_shrink = 0.5f;  ///< mse: factors go from 1 down to 1 - clip_max_shrink (exclusive), in [0, 1)
};

/// The parameters of one block: the stored scale, its decoded value, and the zero point.
template <class Scale>
struct block_params {
  Scale stored{};
  float scale = 0.0f;      ///< scale_traits<Scale>::decode(stored)
  std::uint8_t zero = 0;   ///< asymmetric schemes only
};

namespace detail {

inline void check_options(const quantize_options& o, const char* who) {
  if (o.search == scale_search::mse && o.clip_grid == 0) fail(who, ": options.clip_grid is 0; the mse search needs >= 1");
  if (!(o.clip_max_shrink >= 0.0f && o.clip_max_shrink < 1.0f))
    fail(who, ": options.clip_max_shrink = ", o.clip_max_shrink, " is outside [0, 1)");
}

/// floor(log2 x) for a positive finite x (read from the bits; what std::frexp gives otherwise).
inline int floor_log2(float x) noexcept {
  const auto b = std::bit_cast<std::uint32_t>(x);
  const auto field = static_cast<int>((b >> 23) & 0xFFu);
  if (field != 0 && field != 0xFF) return field - 127;  // normal
  if (field == 0 && (b & 0x7FFFFFu) != 0) return 31 - std::countl_zero(b & 0x7FFFFFu) - 149;  // m * 2^-149
  int e = 0;
  std::frexp(x, &e);
  return e - 1;
}

template <class F, bool Asym>
QUANT_ALWAYS_INLINE std::uint8_t quantize_value(float w, float s, std::uint8_t z) noexcept {
  using T = format_traits<F>;
  if constexpr (Asym) {
    if (s == 0.0f) return z;
    constexpr float qmax = static_cast<float>((1u << T::bits) - 1u);
    float q = std::nearbyint(w / s) + static_cast<float>(z);
    q = q < 0.0f ? 0.0f : (q > qmax ? qmax : q);
    return static_cast<std::uint8_t>(q);
  } else {
    return T::encode(s == 0.0f ? 0.0f : w / s);
  }
}

template <class F, bool Asym>
QUANT_ALWAYS_INLINE float dequantize_value(std::uint8_t code, float s, std::uint8_t z) noexcept {
  if constexpr (Asym)
    return s * (static_cast<float>(code) - static_cast<float>(z));
  else
    return s * format_traits<F>::decode(code);
}

/// The partial sums of a block's squared error (see the top of this header).
inline constexpr std::size_t error_lanes = 16;

/// Adds the squared errors of n weights w[i], dequantized to wq[i], to lanes[i % 16]; w[0] must
/// sit at a column offset of the block that is a multiple of 16. The one definition of the
/// per-weight error: the reference and the SIMD kernels both call it.
QUANT_ALWAYS_INLINE void add_sq_errors(const float* w, const float* wq, std::size_t n, double* lanes) noexcept {
  auto sq = [](float a, float b) {
    const auto d = static_cast<float>(static_cast<double>(a) - static_cast<double>(b));
    return static_cast<double>(d) * static_cast<double>(d);  // exact: 24 x 24 bits
  };
  std::size_t i = 0;
  for (; i + error_lanes <= n; i += error_lanes)
    for (std::size_t j = 0; j < error_lanes; ++j) lanes[j] += sq(w[i + j], wq[i + j]);
  for (std::size_t j = 0; i + j < n; ++j) lanes[j] += sq(w[i + j], wq[i + j]);
}

/// The error of a block from its lanes: lane j += lane j + h for h = 8, 4, 2, 1.
inline double sum_error_lanes(double* lanes) noexcept {
  for (std::size_t h = error_lanes / 2; h >= 1; h /= 2)
    for (std::size_t j = 0; j < h; ++j) lanes[j] += lanes[j + h];
  return lanes[0];
}

template <class F, bool Asym, class Scale>
double block_sq_error(matrix_view<const float> b, const block_params<Scale>& p) noexcept {
  double lanes[error_lanes] = {};
  constexpr std::size_t chunk = 4 * error_lanes;
  float wq[chunk];
  for (std::size_t r = 0; r < b.rows(); ++r)
    for (std::size_t c0 = 0; c0 < b.cols(); c0 += chunk) {
      const std::size_t n = b.cols() - c0 < chunk ? b.cols() - c0 : chunk;
      for (std::size_t i = 0; i < n; ++i)
        wq[i] = dequantize_value<F, Asym>(quantize_value<F, Asym>(b(r, c0 + i), p.scale, p.zero), p.scale, p.zero);
      add_sq_errors(&b(r, c0), wq, n, lanes);
    }
  return sum_error_lanes(lanes);
}

/// Parameters for a block with extremes [lo, hi] (already shrunk by the search).
template <class F, bool Asym, class Scale>
block_params<Scale> params_for_range(float lo, float hi) noexcept {
  using ST = scale_traits<Scale>;
  block_params<Scale> p;
  if constexpr (Asym) {
    lo = lo < 0.0f ? lo : 0.0f;
    hi = hi > 0.0f ? hi : 0.0f;
    constexpr float qmax = static_cast<float>((1u << format_traits<F>::bits) - 1u);
    const float s = (hi - lo) / qmax;
    if constexpr (ST::power_of_two) {  // round up: a smaller power of two would clip the range
      const int e = s > 0.0f ? floor_log2(s) : e8m0::min_exponent;
      p.stored = s > 0.0f ? e8m0::from_exponent(std::ldexp(1.0f, e) < s ? e + 1 : e) : ST::encode(0.0f);
    } else {
      p.stored = ST::encode(s);
    }
    p.scale = ST::decode(p.stored);
    if (p.scale > 0.0f) {
      float z = std::nearbyint(-lo / p.scale);
      p.zero = static_cast<std::uint8_t>(z < 0.0f ? 0.0f : (z > qmax ? qmax : z));
    }
  } else {
    const code_range f = format_range<F>();
    const float amax = hi > -lo ? hi : -lo;
    float s = 0.0f;
    if (hi > 0.0f && f.max > 0.0f) s = hi / f.max;
    if (lo < 0.0f && f.min < 0.0f) s = lo / f.min > s ? lo / f.min : s;
    if (s == 0.0f && amax > 0.0f) s = amax / f.max_abs();
    p.stored = ST::encode(s);
    p.scale = ST::decode(p.stored);
  }
  return p;
}

/// The OCP MX scale for a block of absolute maximum amax: 2^(floor(log2 amax) - floor(log2 fmax)),
/// fmax the format's largest positive value (its emax: 2 for e2m1, 8 for e4m3, 6 for int8).
template <class F, class Scale>
block_params<Scale> mx_params(float amax, int exponent_offset) noexcept {
  block_params<Scale> p;
  if (amax > 0.0f) {
    const int e = floor_log2(amax) - floor_log2(format_range<F>().max) + exponent_offset;
    p.stored = e8m0::from_exponent(e);
  } else {
    p.stored = scale_traits<Scale>::encode(0.0f);
  }
  p.scale = scale_traits<Scale>::decode(p.stored);
  return p;
}

/// The scale search of fit_block for a block whose extremes are [lo, hi] (their signs of zero
/// do not matter); err(p) is the block's squared error under the parameters p (block_sq_error).
template <class F, bool Asym, class Scale, class Err>
block_params<Scale> choose_params(float lo, float hi, const quantize_options& o, Err&& err) noexcept {
  constexpr bool mx = !Asym && scale_traits<Scale>::power_of_two;
  const float amax = hi > -lo ? hi : -lo;
  auto candidate = [&](unsigned k) {
    if constexpr (mx) {
      return mx_params<F, Scale>(amax, o.search == scale_search::mse ? 1 - static_cast<int>(k) : 0);
    } else {
      // k = 0 is the full range (also when clip_grid is 0, which the minmax search allows).
      const float p =
          k == 0 ? 1.0f : 1.0f - static_cast<float>(k) * o.clip_max_shrink / static_cast<float>(o.clip_grid);
      return params_for_range<F, Asym, Scale>(lo * p, hi * p);
    }
  };
  if (o.search == scale_search::minmax) return candidate(0);
  const unsigned n = mx ? 4u : o.clip_grid;
  block_params<Scale> best = candidate(0);
  double best_err = err(best);
  for (unsigned k = 1; k < n; ++k) {
    const block_params<Scale> p = candidate(k);
    const double e = err(p);
    if (e < best_err) best_err = e, best = p;
  }
  return best;
}

}  // namespace detail

/// Chooses the scale (and zero point) of one block of weights, as described at the top of this
/// header. The block must be non-empty and finite (quantize() checks that first).
template <class F, bool Asym, class Scale>
block_params<Scale> fit_block(matrix_view<const float> b, const quantize_options& o) noexcept {
  float lo = b(0, 0), hi = b(0, 0);
  for (std::size_t r = 0; r < b.rows(); ++r)
    for (std::size_t c = 0; c < b.cols(); ++c) {
      const float w = b(r, c);
      lo = w < lo ? w : lo;
      hi = w > hi ? w : hi;
    }
  return detail::choose_params<F, Asym, Scale>(
      lo, hi, o, [&](const block_params<Scale>& p) { return detail::block_sq_error<F, Asym>(b, p); });
}

QUANT_NAMESPACE_END
