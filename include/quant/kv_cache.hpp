// quant/kv_cache.hpp: a quantized attention KV cache and the attention kernels that read it.
//
// At long context the K and V of every past token outgrow the weights; serving stacks store them
// in 8 or 4 bits (vLLM's --kv-cache-dtype fp8, llama.cpp's q8_0 / q4_0 cache types). This header
// holds K and V of one attention layer, heads x tokens x head_dim each, in any quant format with
// the library's own scale rules, or in fp32 (F = float, the baseline):
//
//   per_channel<Sym, Scale>     one scale (and zero point) per token and head: the row of
//                               head_dim values is quantized exactly as quant::quantize<F,
//                               per_channel<Sym, Scale>> quantizes a row (fit_block, then the
//                               element rule of scheme/fit.hpp; the mse search too)
//   per_group<G, Sym, Scale>    the same with G-dim groups inside the head (a shorter last one)
//   per_tensor<symmetric, S>    one static scale for K and one for V, given by the caller as
//                               vLLM's k_scale / v_scale (kv_static_scale fits one on samples);
//                               values beyond it saturate
//
//   quant::kv_cache<quant::int8> c({.heads = 8, .head_dim = 128, .capacity = 16384});
//   c.append(k, v);                               // one token: heads * head_dim floats each
//   quant::attention(c, q, out);                  // q, out: q_heads x head_dim, causal over c.size()
//
// Layout (each part, K then V, at a 64-byte offset of one buffer; kv_storage gives the sizes):
//   codes   [head][token][row_bytes]  row_bytes = packed_bytes(head_dim, bits) (LSB-first stream)
//   scales  [head][token][group]      of the Scale type (per_channel: one group)
//   zeros   [head][token][group]      asymmetric only, one byte each (a row's zero points are
//                                     written with the row, without touching a neighbour's bits)
// Per head the tokens are consecutive rows, so the scores pass (q . K^T for all tokens of a head)
// and the values pass (sum_t p_t V_t) each stream one contiguous block of codes and a parallel,
// 32 to 64 times smaller block of scales front to back; the query heads that share a K/V head
// (grouped-query attention) are served by the same pass over it. Rows are whole code streams of
// canonical tensors (a head's codes are exactly the codes section of a capacity x head_dim
// tensor), head_dim 64 or 128 makes them whole cache lines, and keeping the scales apart keeps
// the codes aligned: interleaving a 4-byte scale after each 128-byte row would misalign every row
// and split the vector loads. The values pass wants dims in vector lanes (rows, as stored); the
// scores pass wants tokens in lanes (a vector of 16 scores per instruction, no horizontal sums):
// its fast kernel transposes tiles of 16 consecutive rows in registers instead of storing K
// transposed, which keeps an append one contiguous write per head and costs about what the
// horizontal sums it removes cost (kernels/attention.hpp).
//
// Two arithmetic modes (attention_mode): exact (fp32 q, codes decoded to float, FMA) and fast
// (int8 q per 32 dims and bf16 softmax weights, so int8 / int4 keys take integer dot products and
// int8 / int4 / fp8 values bf16 dot products). tests/test_kv_cache.cpp and
// benchmarks/kv_cache_bench.cpp measure the error each adds; the fast mode is what makes a
// quantized cache faster than an fp32 one by more than its decode costs when several query heads
// share a K/V head (4 FMAs per cached value in float at a group of 4).
//
// Capacity is fixed when the cache is made; nothing reallocates. kv_cache owns its buffer and
// counts the tokens appended; kv_cache_view binds caller memory ("size, then bind", as
// tensor_view), e.g. one buffer for every layer of a model, and writes at positions the caller
// tracks, as an engine does with its position counter. Every write validates first (sizes,
// capacity, finite values, overlap with the cache) and throws quant::error before it touches the
// cache. The attention kernels (kernels/attention.hpp) decode the codes in registers on the
// tier of this translation unit (kernels/isa.hpp), softmax in float with the max subtracted.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>

#include "config.hpp"
#include "core/error.hpp"
#include "core/matrix_view.hpp"
#include "core/scalar_types.hpp"
#include "formats/format_traits.hpp"
#include "kernels/api.hpp"
#include "kernels/attention.hpp"
#include "kernels/isa.hpp"
#include "kernels/threading.hpp"
#include "layout/packing.hpp"
#include "scheme/fit.hpp"
#include "scheme/granularity.hpp"

QUANT_NAMESPACE_BEGIN

/// The two halves of a KV cache.
enum class kv_part : unsigned { k = 0, v = 1 };

/// The dimensions of the cache of one attention layer.
struct kv_dims {
  std::size_t heads = 0;     ///< K/V heads
  std::size_t head_dim = 0;  ///< elements of one head's key (and value) per token
  std::size_t capacity = 0;  ///< tokens the cache holds at most
  /// Elements of one token's K (or V): heads * head_dim, head after head.
  constexpr std::size_t token_size() const noexcept { return heads * head_dim; }
};

/// How a cache quantizes.
struct kv_options {
  quantize_options fit{};  ///< per_channel / per_group: the scale search of every row (minmax or mse)
  float k_scale = 0.0f;    ///< per_tensor only: K's static scale (> 0), e.g. from kv_static_scale
  float v_scale = 0.0f;    ///< per_tensor only: V's static scale
};

/// The sizes of a cache's buffer and of its sections.
struct kv_storage_requirements {
  static constexpr std::size_t alignment = 64;  ///< section alignment, and the buffer's

  kv_dims dims{};
  unsigned bits = 0;           ///< code bits (32 for an fp32 cache)
  std::size_t row_bytes = 0;   ///< bytes of one (head, token) row of codes
  std::size_t groups = 0;      ///< scales per row (0: a static scale or none)
  std::size_t group = 0;       ///< dims per group
  std::size_t scale_size = 0;  ///< bytes of one stored scale
  bool asymmetric = false;     ///< one zero-point byte per scale

  /// Per part (K or V): codes, scales, zero points, and the part with its padding.
  constexpr std::size_t code_bytes() const noexcept { return dims.heads * dims.capacity * row_bytes; }
  constexpr std::size_t scale_count() const noexcept { return dims.heads * dims.capacity * groups; }
  constexpr std::size_t scale_bytes() const noexcept { return scale_count() * scale_size; }
  constexpr std::size_t zero_bytes() const noexcept { return asymmetric ? scale_count() : 0; }
  constexpr std::size_t part_bytes() const noexcept {
    return round_up(code_bytes()) + round_up(scale_bytes()) + round_up(zero_bytes());
  }
  /// Offsets inside a bound buffer.
  constexpr std::size_t code_offset(kv_part p) const noexcept { return static_cast<std::size_t>(p) * part_bytes(); }
  constexpr std::size_t scale_offset(kv_part p) const noexcept { return code_offset(p) + round_up(code_bytes()); }
  constexpr std::size_t zero_offset(kv_part p) const noexcept { return scale_offset(p) + round_up(scale_bytes()); }
  /// The whole buffer (both parts).
  constexpr std::size_t buffer_bytes() const noexcept { return 2 * part_bytes(); }
  /// Bytes one token adds (K and V of every head, scales and zero points included).
  constexpr std::size_t bytes_per_token() const noexcept {
    return 2 * dims.heads * (row_bytes + groups * scale_size + (asymmetric ? groups : 0));
  }
  /// Bits per cached value, scales and zero points included (32 for fp32).
  constexpr double bits_per_value() const noexcept {
    return 8.0 * static_cast<double>(bytes_per_token()) / static_cast<double>(2 * dims.token_size());
  }

 private:
  static constexpr std::size_t round_up(std::size_t n) noexcept { return (n + alignment - 1) / alignment * alignment; }
};

namespace detail {

template <class F>
inline constexpr bool is_fp32_kv_v = std::is_same_v<std::remove_const_t<F>, float>;

/// Compile-time rules of a cache type; true, to sit in a static_assert.
template <class F, class Gran>
constexpr bool check_kv_types() {
  static_assert(is_granularity_v<Gran>, "quant::kv_cache: Gran must be per_channel, per_group or per_tensor");
  if constexpr (is_fp32_kv_v<F>) {
    static_assert(std::is_same_v<Gran, per_channel<>>,
                  "quant::kv_cache<float>: an fp32 cache has no scales; leave Gran at its default");
  } else {
    static_assert(check_format<F>());
    static_assert(!Gran::is_asymmetric || is_integer_format_v<F>,
                  "quant::kv_cache: asymmetric schemes need an integer format (library rule)");
    static_assert(Gran::kind != granularity_kind::tensor || !Gran::is_asymmetric,
                  "quant::kv_cache: a per_tensor cache has one static scale and no zero point: use symmetric");
  }
  return true;
}

/// a * b for sizes, throwing when it overflows.
inline std::size_t kv_mul(std::size_t a, std::size_t b, const char* who) {
  if (a != 0 && b > std::numeric_limits<std::size_t>::max() / a) fail(who, ": the cache is too large to address");
  return a * b;
}

/// True when byte ranges [a, a + na) and [b, b + nb) overlap.
inline bool ranges_overlap(const void* a, std::size_t na, const void* b, std::size_t nb) noexcept {
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return na != 0 && nb != 0 && x < y + nb && y < x + na;
}
template <class T>
std::size_t view_bytes(matrix_view<T> m) noexcept {
  return m.empty() ? 0 : ((m.rows() - 1) * m.ld() + m.cols()) * sizeof(T);
}

template <class F>
struct kv_format {
  using type = std::remove_const_t<F>;
};

}  // namespace detail

/// The buffer a cache of format F and granularity gran with dimensions d needs. Throws
/// quant::error for a zero dimension, a zero group size or a size that overflows.
template <class F, class Gran = per_channel<>>
kv_storage_requirements kv_storage(kv_dims d, const Gran& gran = {}) {
  static_assert(detail::check_kv_types<F, Gran>());
  const char* who = "quant::kv_storage";
  if (d.heads == 0 || d.head_dim == 0 || d.capacity == 0)
    detail::fail(who, ": heads = ", d.heads, ", head_dim = ", d.head_dim, ", capacity = ", d.capacity,
                 "; every dimension must be positive");
  kv_storage_requirements r;
  r.dims = d;
  if constexpr (detail::is_fp32_kv_v<F>) {
    r.bits = 32;
    r.row_bytes = detail::kv_mul(d.head_dim, sizeof(float), who);
    r.group = d.head_dim;
  } else {
    using Fmt = std::remove_const_t<F>;
    r.bits = format_traits<Fmt>::bits;
    r.row_bytes = packed_bytes(d.head_dim, r.bits);
    const scale_grid g = grid_of(gran, 1, d.head_dim, who);
    r.group = g.group;
    r.groups = Gran::kind == granularity_kind::tensor ? 0 : g.groups_per_row;
    r.scale_size = sizeof(typename Gran::scale_type);
    r.asymmetric = Gran::is_asymmetric;
  }
  const std::size_t rows = detail::kv_mul(d.heads, d.capacity, who);
  detail::kv_mul(rows, r.row_bytes + r.groups * (r.scale_size + 1) + 3 * kv_storage_requirements::alignment, who);
  detail::kv_mul(r.part_bytes(), 2, who);
  return r;
}

/// The static scale of a per_tensor cache of format F and scale type Scale, fitted on sample K
/// (or V) values with the library's per_tensor rule (the scale quant::quantize<F,
/// per_tensor<symmetric, Scale>> would give those samples), decoded. Throws for an empty or
/// non-finite sample, or samples that are all zero.
template <class F, class Scale = float>
float kv_static_scale(matrix_view<const float> samples, const quantize_options& options = {}) {
  static_assert(check_format<F>());
  const char* who = "quant::kv_static_scale";
  detail::check_not_empty(samples, who);
  detail::check_options(options, who);
  detail::check_finite(samples, who);
  const auto p = fit_block<std::remove_const_t<F>, false, Scale>(samples, options);
  if (!(p.scale > 0.0f)) detail::fail(who, ": the samples are all zero; a static scale needs a non-zero value");
  return p.scale;
}

/// A view of the KV cache of one layer over caller memory (see the top of this header). F is a
/// format, or float for fp32 rows; kv_cache_view<const F, Gran> is the read-only view the
/// attention functions take (a mutable view converts to it). Trivially copyable; holds no token
/// count: positions are the caller's.
template <class F, class Gran = per_channel<>>
class kv_cache_view {
  static_assert(detail::check_kv_types<F, Gran>());
  static constexpr bool is_const = std::is_const_v<F>;
  template <class T>
  using maybe_const = std::conditional_t<is_const, const T, T>;

 public:
  using format = std::remove_const_t<F>;
  using granularity_type = Gran;
  using scale_type = typename Gran::scale_type;
  using byte_type = maybe_const<std::uint8_t>;
  static constexpr bool is_fp32 = detail::is_fp32_kv_v<F>;
  static constexpr bool is_asymmetric = !is_fp32 && Gran::is_asymmetric;
  static constexpr bool is_static = !is_fp32 && Gran::kind == granularity_kind::tensor;

  kv_cache_view() = default;

  /// Binds a 64-byte-aligned buffer of at least kv_storage<F>(d, gran).buffer_bytes() bytes.
  /// Checks the options (per_tensor needs finite k_scale, v_scale > 0; other granularities none).
  /// Nothing is written.
  static kv_cache_view bind(std::span<maybe_const<std::byte>> buffer, kv_dims d, const Gran& gran = {},
                            const kv_options& o = {}) {
    const char* who = "quant::kv_cache_view::bind";
    const kv_storage_requirements r = kv_storage<F, Gran>(d, gran);
    if (buffer.size() < r.buffer_bytes())
      detail::fail(who, ": buffer has ", buffer.size(), " bytes, needs ", r.buffer_bytes(), " for ", d.heads,
                   " heads x ", d.head_dim, " dims x ", d.capacity, " tokens");
    if (reinterpret_cast<std::uintptr_t>(buffer.data()) % kv_storage_requirements::alignment != 0)
      detail::fail(who, ": buffer is not aligned to ", kv_storage_requirements::alignment, " bytes");
    detail::check_options(o.fit, who);
    kv_cache_view v;
    v.req_ = r;
    v.gran_ = gran;
    v.opts_ = o;
    v.base_ = reinterpret_cast<byte_type*>(buffer.data());
    if constexpr (is_static) {
      for (const auto& [name, s] : {std::pair{"k_scale", o.k_scale}, std::pair{"v_scale", o.v_scale}})
        if (!(s > 0.0f) || !std::isfinite(s))
          detail::fail(who, ": options.", name, " = ", s, "; a per_tensor cache needs a finite static scale > 0");
      v.static_[0] = scale_traits<scale_type>::decode(scale_traits<scale_type>::encode(o.k_scale));
      v.static_[1] = scale_traits<scale_type>::decode(scale_traits<scale_type>::encode(o.v_scale));
    } else if (o.k_scale != 0.0f || o.v_scale != 0.0f) {
      detail::fail(who, ": options.k_scale = ", o.k_scale, ", options.v_scale = ", o.v_scale,
                   "; static scales are for per_tensor caches only (this one scales every row)");
    }
    return v;
  }

  /// The read-only view of the same memory.
  operator kv_cache_view<const format, Gran>() const noexcept
    requires(!is_const)
  {
    kv_cache_view<const format, Gran> c;
    c.req_ = req_, c.gran_ = gran_, c.opts_ = opts_, c.base_ = base_;
    c.static_[0] = static_[0], c.static_[1] = static_[1];
    return c;
  }

  const kv_dims& dims() const noexcept { return req_.dims; }
  std::size_t heads() const noexcept { return req_.dims.heads; }
  std::size_t head_dim() const noexcept { return req_.dims.head_dim; }
  std::size_t capacity() const noexcept { return req_.dims.capacity; }
  bool empty() const noexcept { return base_ == nullptr; }
  const Gran& granularity() const noexcept { return gran_; }
  const kv_options& options() const noexcept { return opts_; }
  const kv_storage_requirements& requirements() const noexcept { return req_; }
  std::size_t bytes_per_token() const noexcept { return req_.bytes_per_token(); }
  /// The bound buffer (buffer_bytes() bytes).
  std::span<maybe_const<std::byte>> buffer() const noexcept {
    return {reinterpret_cast<maybe_const<std::byte>*>(base_), base_ ? req_.buffer_bytes() : 0};
  }

  /// The code stream of row (head, token) of a part: row_bytes bytes (fp32: head_dim floats).
  std::span<byte_type> row_codes(kv_part p, std::size_t head, std::size_t token) const {
    check_row(head, token, "quant::kv_cache_view::row_codes");
    return {base_ + req_.code_offset(p) + (head * capacity() + token) * req_.row_bytes, req_.row_bytes};
  }
  /// Code c of row (head, token); its group's scale (decoded) and zero point.
  std::uint8_t code(kv_part p, std::size_t head, std::size_t token, std::size_t c) const {
    static_assert(!is_fp32, "quant::kv_cache_view::code: an fp32 cache has no codes (use read)");
    const auto row = row_codes(p, head, token);
    if (c >= head_dim()) detail::fail("quant::kv_cache_view::code: c = ", c, " >= head_dim = ", head_dim());
    return read_code(row.data(), c, req_.bits);
  }
  float scale(kv_part p, std::size_t head, std::size_t token, std::size_t group) const {
    check_row(head, token, "quant::kv_cache_view::scale");
    if constexpr (is_fp32) return 1.0f;
    else if constexpr (is_static) return static_[static_cast<unsigned>(p)];
    else {
      check_group(group, "quant::kv_cache_view::scale");
      return scale_traits<scale_type>::decode(scales(p)[(head * capacity() + token) * req_.groups + group]);
    }
  }
  std::uint8_t zero(kv_part p, std::size_t head, std::size_t token, std::size_t group) const {
    check_row(head, token, "quant::kv_cache_view::zero");
    if constexpr (is_asymmetric) {
      check_group(group, "quant::kv_cache_view::zero");
      return base_[req_.zero_offset(p) + (head * capacity() + token) * req_.groups + group];
    } else {
      return 0;
    }
  }
  /// Row (head, token) of a part dequantized into out (head_dim floats): s * (u - z).
  void read(kv_part p, std::size_t head, std::size_t token, std::span<float> out) const {
    check_row(head, token, "quant::kv_cache_view::read");
    if (out.size() != head_dim())
      detail::fail("quant::kv_cache_view::read: out has ", out.size(), " elements, expected head_dim = ", head_dim());
    kernel::dequantize_row(problem(p), head, token, out.data());
  }

  /// Writes one token at position pos: k and v hold heads * head_dim floats (head after head),
  /// each head's row quantized with the cache's rule. Throws before writing anything for a
  /// wrong size, pos >= capacity, a non-finite value, or k / v inside the cache's buffer.
  void write(std::size_t pos, std::span<const float> k, std::span<const float> v) const
    requires(!is_const)
  {
    const char* who = "quant::kv_cache_view::write";
    const std::size_t n = req_.dims.token_size();
    if (k.size() != n) detail::fail(who, ": k has ", k.size(), " elements, expected heads * head_dim = ", n);
    if (v.size() != n) detail::fail(who, ": v has ", v.size(), " elements, expected heads * head_dim = ", n);
    write(pos, matrix_view<const float>(k.data(), 1, n), matrix_view<const float>(v.data(), 1, n));
  }
  /// Writes k.rows() tokens at positions [pos, pos + k.rows()): k and v are tokens x (heads *
  /// head_dim) (any row stride). The same checks, all before the first write.
  void write(std::size_t pos, matrix_view<const float> k, matrix_view<const float> v) const
    requires(!is_const)
  {
    const char* who = "quant::kv_cache_view::write";
    if (empty()) detail::fail(who, ": the view is not bound");
    const std::size_t n = req_.dims.token_size();
    if (k.rows() == 0) detail::fail(who, ": k has no tokens (0 rows)");
    if (k.cols() != n) detail::fail(who, ": k has ", k.cols(), " columns, expected heads * head_dim = ", n);
    if (v.rows() != k.rows() || v.cols() != n)
      detail::fail(who, ": v is ", v.rows(), " x ", v.cols(), ", expected tokens x heads * head_dim = ", k.rows(), " x ", n);
    if (pos > capacity() || k.rows() > capacity() - pos)
      detail::fail(who, ": tokens [", pos, ", ", pos + k.rows(), ") do not fit the capacity of ", capacity(), " tokens");
    for (const auto& [name, m] : {std::pair{"k", k}, std::pair{"v", v}}) {
      if (detail::ranges_overlap(m.data(), detail::view_bytes(m), base_, req_.buffer_bytes()))
        detail::fail(who, ": ", name, " lies inside the cache's buffer");
      if (!detail::all_finite<default_isa>(m))
        for (std::size_t t = 0; t < m.rows(); ++t)
          for (std::size_t c = 0; c < n; ++c)
            if (!std::isfinite(m(t, c)))
              detail::fail(who, ": ", name, "(", t, ", ", c, ") = ", m(t, c), " (head ", c / head_dim(), ", dim ",
                           c % head_dim(), "); cached values must be finite");
    }
    for (std::size_t t = 0; t < k.rows(); ++t)
      for (std::size_t h = 0; h < heads(); ++h) {
        quantize_row(kv_part::k, h, pos + t, &k(t, h * head_dim()));
        quantize_row(kv_part::v, h, pos + t, &v(t, h * head_dim()));
      }
  }

  /// The part as the kernels read it.
  detail::kv_part_problem problem(kv_part p) const noexcept {
    detail::kv_part_problem m;
    m.codes = base_ + req_.code_offset(p);
    m.row_bytes = req_.row_bytes;
    m.capacity = capacity();
    m.head_dim = head_dim();
    m.scales = base_ + req_.scale_offset(p);
    m.zeros = is_asymmetric ? base_ + req_.zero_offset(p) : nullptr;
    m.groups = req_.groups;
    m.group = req_.group;
    m.static_scale = static_[static_cast<unsigned>(p)];
    return m;
  }

  /// The kernels of this cache type on tier Isa.
  template <class Isa = default_isa>
  using kernel_t = detail::attention_kernel<format, is_asymmetric, scale_type, Isa>;

 private:
  template <class, class>
  friend class kv_cache_view;
  using kernel = kernel_t<>;

  maybe_const<scale_type>* scales(kv_part p) const noexcept {
    return reinterpret_cast<maybe_const<scale_type>*>(base_ + req_.scale_offset(p));
  }
  void check_row(std::size_t head, std::size_t token, const char* who) const {
    if (empty()) detail::fail(who, ": the view is not bound");
    if (head >= heads()) detail::fail(who, ": head ", head, " >= heads = ", heads());
    if (token >= capacity()) detail::fail(who, ": token ", token, " >= capacity = ", capacity());
  }
  void check_group(std::size_t group, const char* who) const {
    if (group >= req_.groups) detail::fail(who, ": group ", group, " >= groups per row = ", req_.groups);
  }

  /// Quantizes x[0, head_dim) into row (h, t) of part p (arguments checked).
  void quantize_row(kv_part p, std::size_t h, std::size_t t, const float* x) const noexcept {
    std::uint8_t* row = base_ + req_.code_offset(p) + (h * capacity() + t) * req_.row_bytes;
    const std::size_t d = head_dim();
    if constexpr (is_fp32) {
      std::memcpy(row, x, d * sizeof(float));
    } else {
      constexpr unsigned bits = format_traits<format>::bits;
      std::memset(row, 0, req_.row_bytes);  // canonical stream: unused tail bits are zero
      if constexpr (is_static) {
        const float s = static_[static_cast<unsigned>(p)];
        for (std::size_t c = 0; c < d; ++c) write_code(row, c, bits, detail::quantize_value<format, false>(x[c], s, 0));
      } else {
        const std::size_t k0 = (h * capacity() + t) * req_.groups;
        for (std::size_t g = 0; g < req_.groups; ++g) {
          const std::size_t c0 = g * req_.group, c1 = std::min(d, c0 + req_.group);
          const auto bp = fit_block<format, is_asymmetric, scale_type>(matrix_view<const float>(x + c0, 1, c1 - c0), opts_.fit);
          scales(p)[k0 + g] = bp.stored;
          if constexpr (is_asymmetric) base_[req_.zero_offset(p) + k0 + g] = bp.zero;
          for (std::size_t c = c0; c < c1; ++c)
            write_code(row, c, bits, detail::quantize_value<format, is_asymmetric>(x[c], bp.scale, bp.zero));
        }
      }
    }
  }

  kv_storage_requirements req_{};
  [[no_unique_address]] Gran gran_{};
  kv_options opts_{};
  byte_type* base_ = nullptr;
  float static_[2] = {1.0f, 1.0f};  ///< per_tensor: the decoded static scales of K and V
};

/// An owning KV cache of one layer: one 64-byte-aligned buffer of fixed capacity, and the count
/// of tokens appended. Copies are deep; moves leave an empty cache.
template <class F, class Gran = per_channel<>>
class kv_cache {
 public:
  using view_type = kv_cache_view<F, Gran>;
  using const_view_type = kv_cache_view<const F, Gran>;

  kv_cache() = default;
  /// An empty cache of d.capacity tokens (the buffer zero-filled). Throws as kv_storage and
  /// kv_cache_view::bind do.
  explicit kv_cache(kv_dims d, const Gran& gran = {}, const kv_options& o = {}) {
    const kv_storage_requirements r = kv_storage<F, Gran>(d, gran);
    allocate(r.buffer_bytes());
    try {
      view_ = view_type::bind({buf_.get(), size_bytes_}, d, gran, o);
    } catch (...) {
      buf_.reset();
      size_bytes_ = 0;
      throw;
    }
  }
  kv_cache(const kv_cache& o) : tokens_(o.tokens_) {
    if (o.size_bytes_ == 0) return;
    allocate(o.size_bytes_);
    std::memcpy(buf_.get(), o.buf_.get(), size_bytes_);
    view_ = view_type::bind({buf_.get(), size_bytes_}, o.dims(), o.view_.granularity(), o.view_.options());
  }
  kv_cache(kv_cache&& o) noexcept
      : buf_(std::move(o.buf_)), size_bytes_(std::exchange(o.size_bytes_, 0)), view_(std::exchange(o.view_, {})),
        tokens_(std::exchange(o.tokens_, 0)) {}
  kv_cache& operator=(const kv_cache& o) {
    if (this != &o) *this = kv_cache(o);
    return *this;
  }
  kv_cache& operator=(kv_cache&& o) noexcept {
    buf_ = std::move(o.buf_);
    size_bytes_ = std::exchange(o.size_bytes_, 0);
    view_ = std::exchange(o.view_, {});
    tokens_ = std::exchange(o.tokens_, 0);
    return *this;
  }
  ~kv_cache() = default;

  view_type view() noexcept { return view_; }
  const_view_type view() const noexcept { return view_; }
  const_view_type cview() const noexcept { return view_; }

  /// Tokens appended so far, and the capacity.
  std::size_t size() const noexcept { return tokens_; }
  std::size_t capacity() const noexcept { return view_.capacity(); }
  const kv_dims& dims() const noexcept { return view_.dims(); }
  bool empty() const noexcept { return size_bytes_ == 0; }
  /// Payload bytes of the tokens appended (bytes_per_token() each).
  std::size_t bytes() const noexcept { return tokens_ * view_.bytes_per_token(); }
  std::size_t bytes_per_token() const noexcept { return view_.bytes_per_token(); }

  /// Appends one token (k, v: heads * head_dim floats each) or a block of tokens (tokens x
  /// heads * head_dim). Throws, leaving the cache unchanged, when it would exceed the capacity
  /// or for any input kv_cache_view::write rejects.
  void append(std::span<const float> k, std::span<const float> v) {
    check_bound("quant::kv_cache::append");
    view_.write(tokens_, k, v);
    ++tokens_;
  }
  void append(matrix_view<const float> k, matrix_view<const float> v) {
    check_bound("quant::kv_cache::append");
    view_.write(tokens_, k, v);
    tokens_ += k.rows();
  }
  /// Forgets every token (the capacity stays).
  void clear() noexcept { tokens_ = 0; }
  /// Keeps the first n tokens (n <= size()).
  void truncate(std::size_t n) {
    if (n > tokens_) detail::fail("quant::kv_cache::truncate: n = ", n, " > size() = ", tokens_);
    tokens_ = n;
  }
  /// Row (head, token < size()) of a part, dequantized.
  void read(kv_part p, std::size_t head, std::size_t token, std::span<float> out) const {
    if (token >= tokens_) detail::fail("quant::kv_cache::read: token ", token, " >= size() = ", tokens_);
    view_.read(p, head, token, out);
  }

 private:
  void check_bound(const char* who) const {
    if (empty()) detail::fail(who, ": the cache was default-constructed (no capacity)");
  }
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{64}); }
  };
  void allocate(std::size_t n) {
    buf_.reset(static_cast<std::byte*>(::operator new[](n, std::align_val_t{64})));
    std::memset(buf_.get(), 0, n);
    size_bytes_ = n;
  }
  std::unique_ptr<std::byte[], aligned_delete> buf_;
  std::size_t size_bytes_ = 0;
  view_type view_{};
  std::size_t tokens_ = 0;
};

// ------------------------------------------------------------------------------------------------
// Attention

/// The arithmetic of the attention kernels, as the GEMV modes:
///   exact  q in fp32 times the codes decoded to float in registers (FMA), on every format;
///   fast   two roundings that let integer and bf16 dot products run, defined once for every
///          tier: q (times the scale) is quantized to int8 per block of 32 dims with the GEMV fast
///          mode's rule (s = max|q| / 127, round to nearest-even), and each coefficient of the
///          values pass, softmax weight times V's scale, is rounded to bf16. int8 and int4 keys
///          (either scheme) then take integer dot products (vpdpbusd with AVX-512 VNNI, vpmaddubsw
///          otherwise) on tiles of 16 tokens; values whose codes are exact in bf16 (int8, int4,
///          fp8) take vdpbf16ps on pairs of tokens with AVX-512 BF16; everything else runs the
///          float kernels on the rounded numbers. The benchmark and the tests measure what the
///          roundings add (an fp32 cache ignores the mode).
enum class attention_mode { exact, fast };

/// Options of attention() and attention_scores().
struct attention_options {
  float scale = 0.0f;  ///< the factor of the scores; 0 means 1 / sqrt(head_dim)
  attention_mode mode = attention_mode::exact;
};

/// Which kernel the attention functions run for a cache: the tier, whether K and V take the
/// vector path (kernels/attention.hpp) or the generic one, and whether the fast mode's scores run
/// as integer dot products.
struct attention_kernel_info {
  isa tier = isa::generic;
  bool vector = false;
  bool integer_fast = false;
};

namespace detail {

/// The kernels attention calls run for a cache view type, on this translation unit's tier.
template <class F, class Gran>
using kv_kernel_for = detail::attention_kernel<std::remove_const_t<F>, kv_cache_view<F, Gran>::is_asymmetric,
                                               typename Gran::scale_type, default_isa>;

/// Checks a bound cache, q (query heads x head_dim, finite) and 1 <= n <= capacity; returns the
/// query heads per K/V head.
template <class F, class Gran>
std::size_t check_attention(const kv_cache_view<F, Gran>& c, matrix_view<const float> q, std::size_t n,
                            const char* who) {
  if (c.empty()) fail(who, ": the cache view is not bound");
  if (q.rows() == 0 || q.rows() % c.heads() != 0)
    fail(who, ": q has ", q.rows(), " rows (query heads), expected a positive multiple of the cache's ", c.heads(),
         " K/V heads");
  if (q.cols() != c.head_dim()) fail(who, ": q has ", q.cols(), " columns, expected head_dim = ", c.head_dim());
  if (n == 0) fail(who, ": n = 0; attention needs at least one cached token");
  if (n > c.capacity()) fail(who, ": n = ", n, " exceeds the cache's capacity of ", c.capacity(), " tokens");
  if (!all_finite<default_isa>(q))
    for (std::size_t i = 0; i < q.rows(); ++i)
      for (std::size_t d = 0; d < q.cols(); ++d)
        if (!std::isfinite(q(i, d))) fail(who, ": q(", i, ", ", d, ") = ", q(i, d), "; queries must be finite");
  return q.rows() / c.heads();
}

/// Checks an output matrix's shape and that it overlaps neither the inputs nor the cache.
template <class F, class Gran>
void check_attention_out(const kv_cache_view<F, Gran>& c, matrix_view<float> out, std::size_t rows, std::size_t cols,
                         matrix_view<const float> in, const char* who, const char* name, const char* in_name) {
  if (out.rows() != rows || out.cols() != cols)
    fail(who, ": ", name, " is ", out.rows(), " x ", out.cols(), ", expected ", rows, " x ", cols);
  if (ranges_overlap(out.data(), view_bytes(out), in.data(), view_bytes(in)))
    fail(who, ": ", name, " overlaps ", in_name, "; they need separate buffers");
  const auto b = c.buffer();
  if (ranges_overlap(out.data(), view_bytes(out), b.data(), b.size())) fail(who, ": ", name, " lies inside the cache's buffer");
}

/// The softmax factor: o.scale, or 1 / sqrt(head_dim) when it is 0.
inline float attention_scale(const attention_options& o, std::size_t head_dim, const char* who) {
  if (o.scale == 0.0f) return 1.0f / std::sqrt(static_cast<float>(head_dim));
  if (!std::isfinite(o.scale)) fail(who, ": options.scale = ", o.scale, " is not finite");
  return o.scale;
}

/// The sections of attention()'s workspace, carved from `base` (nullptr: sizes only).
struct attention_workspace {
  float* scores = nullptr;  ///< q_heads x lds
  kv_queries q;             ///< the prepared queries of all heads (sections of q_sizes for q_heads)
  kv_query_sizes q_sizes;   ///< for one query head
  float* scratch = nullptr; ///< heads x per_head, the values pass
  std::size_t lds = 0, per_head = 0, bytes = 0;
  /// The queries of K/V head h (g query heads each).
  kv_queries head(std::size_t h, std::size_t g) const noexcept {
    kv_queries r = q;
    const std::size_t i0 = h * g;
    r.qp += i0 * q_sizes.qp, r.qsum += i0 * q_sizes.qsum, r.q8 += i0 * q_sizes.q8;
    r.sx += i0 * q_sizes.sx, r.corr += i0 * q_sizes.corr;
    return r;
  }
};
template <class F, class Gran>
attention_workspace carve_attention(const kv_cache_view<F, Gran>& c, std::size_t q_heads, std::size_t n,
                                    std::byte* base) {
  using K = kv_kernel_for<F, Gran>;
  attention_workspace w;
  workspace_carver cv{base};
  const detail::kv_part_problem pk = c.problem(kv_part::k);
  w.lds = (n + 15) / 16 * 16;
  w.per_head = (K::scratch_floats(c.problem(kv_part::v), q_heads / c.heads()) + 15) / 16 * 16;
  w.q_sizes = K::query_sizes(pk, 1);
  w.scores = cv.template take<float>(q_heads * w.lds);
  w.q.qp = cv.template take<float>(q_heads * w.q_sizes.qp);
  w.q.qsum = cv.template take<float>(q_heads * w.q_sizes.qsum);
  w.q.q8 = cv.template take<std::int8_t>(q_heads * w.q_sizes.q8);
  w.q.sx = cv.template take<float>(q_heads * w.q_sizes.sx);
  w.q.corr = cv.template take<float>(q_heads * w.q_sizes.corr);
  w.scratch = cv.template take<float>(c.heads() * w.per_head);
  w.bytes = cv.used;
  return w;
}

}  // namespace detail

/// The kernel the attention functions run for this cache in this translation unit.
template <class F, class Gran>
attention_kernel_info attention_path(const kv_cache_view<F, Gran>& c) {
  using K = detail::kv_kernel_for<F, Gran>;
  if (c.empty()) detail::fail("quant::attention_path: the cache view is not bound");
  return {default_isa::id, K::vector_path(c.problem(kv_part::k)) && K::vector_path(c.problem(kv_part::v)),
          K::integer_path(c.problem(kv_part::k))};
}

/// Bytes of workspace attention(c, q, n, out, workspace) needs for q_heads query heads and n
/// tokens (64-byte aligned; O(q_heads * (n + head_dim))).
template <class F, class Gran>
std::size_t attention_workspace_size(const kv_cache_view<F, Gran>& c, std::size_t q_heads, std::size_t n) {
  if (c.empty()) detail::fail("quant::attention_workspace_size: the cache view is not bound");
  if (q_heads == 0 || q_heads % c.heads() != 0)
    detail::fail("quant::attention_workspace_size: q_heads = ", q_heads, " is not a positive multiple of the cache's ",
                 c.heads(), " K/V heads");
  return detail::carve_attention(c, q_heads, n, nullptr).bytes;
}

/// Attention of one query position over the first n cached tokens (causal: the caller passes
/// n = position + 1): for query head i, K/V head h = i / (q_heads / heads),
///   out(i, :) = softmax_t(scale * q(i, :) . K[h][t]) V[h][t]
/// q and out are q_heads x head_dim (any row stride); softmax in float with the max subtracted.
/// workspace: attention_workspace_size(c, q_heads, n) bytes, 64-byte aligned; nothing is
/// allocated. The K/V heads are split over exec (one task each). Throws quant::error, before
/// writing out, for a shape or length mismatch, n = 0 or n > capacity, a non-finite q, out
/// overlapping q, the cache or the workspace, or a short or misaligned workspace.
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void attention(kv_cache_view<F, Gran> c, matrix_view<const float> q, std::size_t n, matrix_view<float> out,
               std::span<std::byte> workspace, const attention_options& o = {}, Exec&& exec = {}) {
  const char* who = "quant::attention";
  const std::size_t g = detail::check_attention(c, q, n, who);
  detail::check_attention_out(c, out, q.rows(), c.head_dim(), q, who, "out", "q");
  const float scale = detail::attention_scale(o, c.head_dim(), who);
  const detail::attention_workspace w0 = detail::carve_attention(c, q.rows(), n, nullptr);
  if (workspace.size() < w0.bytes)
    detail::fail(who, ": workspace has ", workspace.size(), " bytes, needs ", w0.bytes, " (attention_workspace_size)");
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % 64 != 0) detail::fail(who, ": workspace is not aligned to 64 bytes");
  if (detail::ranges_overlap(out.data(), detail::view_bytes(out), workspace.data(), w0.bytes) ||
      detail::ranges_overlap(q.data(), detail::view_bytes(q), workspace.data(), w0.bytes))
    detail::fail(who, ": the workspace overlaps q or out");
  using K = detail::kv_kernel_for<F, Gran>;
  const detail::attention_workspace w = detail::carve_attention(c, q.rows(), n, workspace.data());
  const kv_cache_view<const std::remove_const_t<F>, Gran> cc = c;
  const detail::kv_part_problem pk = cc.problem(kv_part::k), pv = cc.problem(kv_part::v);
  const std::size_t d = c.head_dim();
  const bool fast = o.mode == attention_mode::fast;
  exec(c.heads(), [&](std::size_t h) {
    const std::size_t i0 = h * g;
    float* s = w.scores + i0 * w.lds;
    detail::kv_queries qh = w.head(h, g);
    K::prepare_q(pk, &q(i0, 0), q.ld(), g, scale, fast, qh);
    K::scores(pk, h, qh, g, n, s, w.lds);
    float inv[64];
    for (std::size_t i0b = 0; i0b < g; i0b += 64) {
      const std::size_t gb = std::min<std::size_t>(64, g - i0b);
      for (std::size_t i = 0; i < gb; ++i) inv[i] = 1.0f / detail::softmax_numerator<default_isa>(s + (i0b + i) * w.lds, n);
      float* orow = &out(i0 + i0b, 0);
      K::values(pv, h, s + i0b * w.lds, w.lds, gb, n, orow, out.ld(), w.scratch + h * w.per_head, fast);
      for (std::size_t i = 0; i < gb; ++i)
        for (std::size_t e = 0; e < d; ++e) orow[i * out.ld() + e] *= inv[i];
    }
  });
}

/// The same with the workspace on the heap.
template <class F, class Gran>
void attention(kv_cache_view<F, Gran> c, matrix_view<const float> q, std::size_t n, matrix_view<float> out,
               const attention_options& o = {}) {
  const char* who = "quant::attention";
  detail::check_attention(c, q, n, who);
  detail::check_attention_out(c, out, q.rows(), c.head_dim(), q, who, "out", "q");
  const std::size_t bytes = detail::carve_attention(c, q.rows(), n, nullptr).bytes;
  detail::heap_workspace ws(bytes);
  attention(c, q, n, out, std::span<std::byte>(ws.p, bytes), o);
}

/// Attention over every token of an owning cache (n = c.size()).
template <class F, class Gran>
void attention(const kv_cache<F, Gran>& c, matrix_view<const float> q, matrix_view<float> out,
               const attention_options& o = {}) {
  attention(c.cview(), q, c.size(), out, o);
}
template <class F, class Gran, class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void attention(const kv_cache<F, Gran>& c, matrix_view<const float> q, matrix_view<float> out,
               std::span<std::byte> workspace, const attention_options& o = {}, Exec&& exec = {}) {
  attention(c.cview(), q, c.size(), out, workspace, o, exec);
}

/// The scores alone: scores(i, t) = scale * q(i, :) . K[i / (q_heads / heads)][t] for t < n
/// (scores is q_heads x n, any row stride; o.scale 0 means 1 / sqrt(head_dim); o.mode as in
/// attention). Allocates O(q_heads * head_dim) for the prepared queries.
template <class F, class Gran>
void attention_scores(kv_cache_view<F, Gran> c, matrix_view<const float> q, std::size_t n, matrix_view<float> scores,
                      const attention_options& o = {}) {
  const char* who = "quant::attention_scores";
  const std::size_t g = detail::check_attention(c, q, n, who);
  detail::check_attention_out(c, scores, q.rows(), n, q, who, "scores", "q");
  const float scale = detail::attention_scale(o, c.head_dim(), who);
  using K = detail::kv_kernel_for<F, Gran>;
  const std::size_t bytes = detail::carve_attention(c, q.rows(), 1, nullptr).bytes;
  detail::heap_workspace ws(bytes);
  const detail::attention_workspace w = detail::carve_attention(c, q.rows(), 1, ws.p);
  const kv_cache_view<const std::remove_const_t<F>, Gran> cc = c;
  const detail::kv_part_problem pk = cc.problem(kv_part::k);
  for (std::size_t h = 0; h < c.heads(); ++h) {
    detail::kv_queries qh = w.head(h, g);
    K::prepare_q(pk, &q(h * g, 0), q.ld(), g, scale, o.mode == attention_mode::fast, qh);
    K::scores(pk, h, qh, g, n, &scores(h * g, 0), scores.ld());
  }
}

/// The weighted sum alone: out(i, :) = sum_{t < n} w(i, t) V[i / (q_heads / heads)][t] (w is
/// q_heads x n and finite, out q_heads x head_dim; any row strides; o.mode as in attention: the
/// fast mode rounds each w * scale to bf16). Allocates a small scratch.
template <class F, class Gran>
void attention_values(kv_cache_view<F, Gran> c, matrix_view<const float> w, std::size_t n, matrix_view<float> out,
                      const attention_options& o = {}) {
  const char* who = "quant::attention_values";
  if (c.empty()) detail::fail(who, ": the cache view is not bound");
  if (w.rows() == 0 || w.rows() % c.heads() != 0)
    detail::fail(who, ": w has ", w.rows(), " rows (query heads), expected a positive multiple of the cache's ",
                 c.heads(), " K/V heads");
  if (n == 0 || n > c.capacity()) detail::fail(who, ": n = ", n, " is not in [1, capacity = ", c.capacity(), "]");
  if (w.cols() != n) detail::fail(who, ": w has ", w.cols(), " columns, expected n = ", n);
  if (!detail::all_finite<default_isa>(w))
    for (std::size_t i = 0; i < w.rows(); ++i)
      for (std::size_t t = 0; t < n; ++t)
        if (!std::isfinite(w(i, t))) detail::fail(who, ": w(", i, ", ", t, ") = ", w(i, t), "; weights must be finite");
  detail::check_attention_out(c, out, w.rows(), c.head_dim(), w, who, "out", "w");
  using K = detail::kv_kernel_for<F, Gran>;
  const kv_cache_view<const std::remove_const_t<F>, Gran> cc = c;
  const detail::kv_part_problem pv = cc.problem(kv_part::v);
  const std::size_t g = w.rows() / c.heads();
  detail::heap_workspace ws(K::scratch_floats(pv, g) * sizeof(float));
  for (std::size_t h = 0; h < c.heads(); ++h)
    K::values(pv, h, &w(h * g, 0), w.ld(), g, n, &out(h * g, 0), out.ld(), reinterpret_cast<float*>(ws.p),
              o.mode == attention_mode::fast);
}

/// Softmax of every row of s in place, in float with the row's max subtracted (what attention()
/// applies between the two passes). Throws for an empty matrix or a non-finite value.
inline void softmax_rows(matrix_view<float> s) {
  const char* who = "quant::softmax_rows";
  if (s.empty()) detail::fail(who, ": s is empty (", s.rows(), " x ", s.cols(), ")");
  if (!detail::all_finite<default_isa>(matrix_view<const float>(s)))
    for (std::size_t i = 0; i < s.rows(); ++i)
      for (std::size_t t = 0; t < s.cols(); ++t)
        if (!std::isfinite(s(i, t))) detail::fail(who, ": s(", i, ", ", t, ") = ", s(i, t), "; scores must be finite");
  for (std::size_t i = 0; i < s.rows(); ++i) {
    float* r = &s(i, 0);
    const float inv = 1.0f / detail::softmax_numerator<default_isa>(r, s.cols());
    for (std::size_t t = 0; t < s.cols(); ++t) r[t] *= inv;
  }
}

QUANT_NAMESPACE_END
