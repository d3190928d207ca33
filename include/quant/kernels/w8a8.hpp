// quant/kernels/w8a8.hpp: the W8A8 int8 path: per-channel int8 weights, per-token dynamic int8
// activations, and an int8 x int8 GEMV / small-batch GEMM with int32 accumulation.
//
//   Y[t, r] = s_x[t] * s_w[r] * sum_c q_w[r, c] * q_x[t, c]        (the sum exact, in int32)
//
// This is the inference side of SmoothQuant (algorithms/smoothquant.hpp): the smoothed weights
// are quantized once, and every call quantizes its activations token by token.
//
// Weights (w8a8::weights, weights_view). One symmetric int8 scale per output row, with quant's
// own symmetric rule (s = max(wmax / 127, wmin / -128), codes rne(w / s) saturated to [-128, 127]):
// the codes and scales are exactly those of quant::quantize<int8, per_channel<symmetric>> (tested),
// and convert() copies such a tensor. The layout is the kernel's own rather than that tensor's:
//   - rows are padded with zero codes to a multiple of 64 columns (`ld`), so all tiers run whole
//     64-byte steps with no tail code (the matching activation columns are zero too);
//   - rows come in blocks of 4 (block_rows; the last block padded with zero rows of scale 0),
//     interleaved by 64 columns: block b holds columns 0-63 of rows 4b, 4b+1, 4b+2, 4b+3, then
//     columns 64-127 of the same rows, and so on. A kernel tile of 4 rows thus reads one
//     contiguous stream. With 4 separate row streams of 4 KB the hardware prefetchers fell
//     behind: 16.5 GB/s at one token on a 64 MB matrix, against 23 GB/s for one row at a time
//     and the same for the interleaved tile;
//   - every row carries the sum of its codes, which the VNNI path needs (below).
// Payload: padded_rows * ld bytes of codes + 4 bytes of scale + 4 bytes of code sum per row.
//
// Activations. quantize_activations(x, q, scales): per token t, s_t = max_c |x[t, c]| / 127 and
// q = clamp(rne(x / s_t), -127, 127) (round half to even: the current rounding mode, which is to
// nearest-even unless the program changed it); an all-zero token has s_t = 0 and q = 0. The
// original SmoothQuant rounds the same way (torch.round) but clamps max|x| below at 1e-5, which
// changes nothing in y for a zero token. Codes are symmetric, never -128; pre-quantized
// activations passed to gemm must follow that (it is checked).
//
// The integer dot products, per ISA tier (kernels/isa.hpp), all exactly equal (tested):
//   avx512_vnni  vpdpbusd multiplies unsigned by signed bytes: the activations are offset to
//                u8 = q_x + 128 once per call, and the kernel subtracts 128 * sum_c q_w[r, c]
//                (precomputed per row) from each accumulator, in wrapping 32-bit arithmetic, so
//                the result is exact whenever the true dot fits in int32 (cols <= max_cols).
//   avx512, avx2 vpmaddubsw(|q_w|, q_x * sign(q_w)) + vpmaddwd: |q_w| <= 128 and |q_x| <= 127,
//                so the 16-bit pair sums (<= 32512) cannot saturate.
//   sse4_2, generic  plain C++ over blocks of 64 columns (the compiler vectorizes what it can).
// Tiles of one block of 4 rows x 4 tokens (AVX2: x 2) keep 16 (8) vector accumulators in
// registers; per batch of up to max_batch (16) tokens the kernel walks the blocks once: a block is
// read from memory by its first token tile and from cache by the others. More tokens are taken 16
// at a time. The SIMD tiers prefetch the weight stream 4 KB ahead. A row range that starts or
// ends inside a block computes the whole block and stores only its own rows.
// The float output s_x[t] * s_w[r] * float(dot) is computed by one scalar function for every tier,
// so y is bit-identical across tiers as well.
//
// Threads and partitions: every gemm takes a row range (quant::row_range) or an executor
// (quant::executor, as quant::gemv): the activations are prepared once, then rows are split over
// up to 64 tasks. The non-allocating overloads take a 64-byte-aligned workspace of
// gemm_workspace_size(w, tokens) bytes. Header-only: the tier is the translation unit's
// (default_isa); the runtime-dispatch library does not cover this path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/matrix_view.hpp"
#include "../formats/integer.hpp"
#include "../scheme/fit.hpp"
#include "../scheme/granularity.hpp"
#include "../tensor/tensor_view.hpp"
#include "activations.hpp"
#include "api.hpp"
#include "isa.hpp"
#include "threading.hpp"

#if defined(QUANT_ISA_AVX2) || defined(QUANT_ISA_AVX512)
#include <immintrin.h>
#endif

QUANT_NAMESPACE_BEGIN
namespace w8a8 {

/// Rows of the weight codes are padded to a multiple of this many columns.
inline constexpr std::size_t row_align = 64;
/// Rows per interleaved block of the weight codes.
inline constexpr std::size_t block_rows = 4;
/// Tokens per pass over the weights.
inline constexpr std::size_t max_batch = 16;
/// The largest number of columns: |dot| <= 128 * 127 * cols must stay below 2^31.
inline constexpr std::size_t max_cols = 131072;

/// Sizes of a W8A8 weight buffer (weights_storage) and its sections, each at a 64-byte offset.
struct weights_layout {
  std::size_t rows = 0, cols = 0;
  std::size_t ld = 0;             ///< codes per row in memory: cols rounded up to row_align
  std::size_t padded_rows = 0;    ///< rows rounded up to block_rows
  std::size_t scales_offset = 0;  ///< bytes: padded_rows floats
  std::size_t sums_offset = 0;    ///< bytes: padded_rows int32 code sums
  std::size_t buffer_bytes = 0;   ///< the whole buffer
  /// The bytes a GEMM reads: padded codes, scales and code sums.
  std::size_t bytes() const noexcept { return padded_rows * (ld + sizeof(float) + sizeof(std::int32_t)); }
  /// Offset of code (r, c) in the codes section.
  std::size_t offset(std::size_t r, std::size_t c) const noexcept {
    return (r / block_rows) * block_rows * ld + (c / row_align) * block_rows * row_align + (r % block_rows) * row_align +
           c % row_align;
  }
};

/// The buffer a rows x cols W8A8 weight matrix needs. Throws quant::error for an empty shape or
/// cols > max_cols.
inline weights_layout weights_storage(std::size_t rows, std::size_t cols) {
  const char* who = "quant::w8a8::weights_storage";
  if (rows == 0 || cols == 0) detail::fail(who, ": the shape ", rows, " x ", cols, " is empty");
  if (cols > max_cols) detail::fail(who, ": cols = ", cols, " exceeds max_cols = ", max_cols, " (int32 accumulation)");
  weights_layout l;
  l.rows = rows, l.cols = cols;
  l.ld = (cols + row_align - 1) / row_align * row_align;
  l.padded_rows = (rows + block_rows - 1) / block_rows * block_rows;
  auto up = [](std::size_t n) { return (n + 63) / 64 * 64; };
  l.scales_offset = up(l.padded_rows * l.ld);
  l.sums_offset = l.scales_offset + up(l.padded_rows * sizeof(float));
  l.buffer_bytes = l.sums_offset + up(l.padded_rows * sizeof(std::int32_t));
  return l;
}

/// A view of W8A8 weights: Code = std::int8_t (mutable, what quantize_weights writes) or
/// const std::int8_t (what gemm reads). Code (r, c) is at(r, c), at codes()[layout().offset(r, c)]
/// (blocks of 4 rows interleaved by 64 columns, see the top of this header).
template <class Code>
class weights_view {
  static_assert(std::is_same_v<std::remove_const_t<Code>, std::int8_t>,
                "quant::w8a8::weights_view: Code is std::int8_t or const std::int8_t");
  static constexpr bool is_const = std::is_const_v<Code>;
  template <class T>
  using maybe_const = std::conditional_t<is_const, const T, T>;

 public:
  weights_view() = default;

  /// Binds a 64-byte-aligned buffer of at least weights_storage(rows, cols).buffer_bytes bytes.
  static weights_view bind(std::span<maybe_const<std::byte>> buffer, std::size_t rows, std::size_t cols) {
    const weights_layout l = weights_storage(rows, cols);
    if (buffer.size() < l.buffer_bytes)
      detail::fail("quant::w8a8::weights_view::bind: buffer has ", buffer.size(), " bytes, needs ", l.buffer_bytes,
                   " for ", rows, " x ", cols);
    if (reinterpret_cast<std::uintptr_t>(buffer.data()) % 64 != 0)
      detail::fail("quant::w8a8::weights_view::bind: buffer is not aligned to 64 bytes");
    weights_view v;
    v.l_ = l;
    v.codes_ = reinterpret_cast<Code*>(buffer.data());
    v.scales_ = reinterpret_cast<maybe_const<float>*>(buffer.data() + l.scales_offset);
    v.sums_ = reinterpret_cast<maybe_const<std::int32_t>*>(buffer.data() + l.sums_offset);
    return v;
  }

  /// A read-only view from a mutable one.
  template <class U>
    requires(is_const && std::is_same_v<U, std::int8_t>)
  weights_view(const weights_view<U>& o) noexcept  // NOLINT: implicit, as matrix_view's
      : l_(o.layout()), codes_(o.codes().data()), scales_(o.padded_scales()), sums_(o.padded_sums()) {}

  std::size_t rows() const noexcept { return l_.rows; }
  std::size_t cols() const noexcept { return l_.cols; }
  std::size_t ld() const noexcept { return l_.ld; }
  bool empty() const noexcept { return l_.rows == 0; }
  const weights_layout& layout() const noexcept { return l_; }
  /// Bytes a GEMM reads (weights_layout::bytes).
  std::size_t bytes() const noexcept { return l_.bytes(); }

  /// The codes section: padded_rows * ld codes in the interleaved order.
  std::span<Code> codes() const noexcept { return {codes_, l_.padded_rows * l_.ld}; }
  /// Code (r, c), r < padded_rows, c < ld (codes past cols and rows past rows are zero).
  Code& at(std::size_t r, std::size_t c) const noexcept { return codes_[l_.offset(r, c)]; }
  /// The codes of block b (rows [4b, 4b + 4)): 4 * ld codes.
  Code* block(std::size_t b) const noexcept { return codes_ + b * block_rows * l_.ld; }
  /// One scale per row.
  std::span<maybe_const<float>> scales() const noexcept { return {scales_, l_.rows}; }
  /// Per row, sum_c q_w[r, c].
  std::span<maybe_const<std::int32_t>> row_sums() const noexcept { return {sums_, l_.rows}; }
  /// The same over padded_rows (zeros past rows), what the kernels read.
  maybe_const<float>* padded_scales() const noexcept { return scales_; }
  maybe_const<std::int32_t>* padded_sums() const noexcept { return sums_; }

 private:
  weights_layout l_{};
  Code* codes_ = nullptr;
  maybe_const<float>* scales_ = nullptr;
  maybe_const<std::int32_t>* sums_ = nullptr;
};

using const_weights_view = weights_view<const std::int8_t>;

/// Owning W8A8 weights (one 64-byte-aligned buffer); copies are deep, moves leave it empty.
class weights {
 public:
  weights() = default;
  /// Zero-filled rows x cols weights.
  weights(std::size_t rows, std::size_t cols) {
    const weights_layout l = weights_storage(rows, cols);
    allocate(l.buffer_bytes);
    view_ = weights_view<std::int8_t>::bind({buf_.get(), size_}, rows, cols);
  }
  weights(const weights& o) : weights() {
    if (o.size_ == 0) return;
    allocate(o.size_);
    std::memcpy(buf_.get(), o.buf_.get(), size_);
    view_ = weights_view<std::int8_t>::bind({buf_.get(), size_}, o.rows(), o.cols());
  }
  weights(weights&& o) noexcept
      : buf_(std::move(o.buf_)), size_(std::exchange(o.size_, 0)), view_(std::exchange(o.view_, {})) {}
  weights& operator=(const weights& o) {
    if (this != &o) *this = weights(o);
    return *this;
  }
  weights& operator=(weights&& o) noexcept {
    buf_ = std::move(o.buf_);
    size_ = std::exchange(o.size_, 0);
    view_ = std::exchange(o.view_, {});
    return *this;
  }
  ~weights() = default;

  weights_view<std::int8_t> view() noexcept { return view_; }
  const_weights_view view() const noexcept { return view_; }
  const_weights_view cview() const noexcept { return view_; }
  operator const_weights_view() const noexcept { return view_; }  // NOLINT: implicit

  bool empty() const noexcept { return size_ == 0; }
  std::size_t rows() const noexcept { return view_.rows(); }
  std::size_t cols() const noexcept { return view_.cols(); }
  std::size_t bytes() const noexcept { return view_.bytes(); }

 private:
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{64}); }
  };
  void allocate(std::size_t n) {
    buf_.reset(static_cast<std::byte*>(::operator new[](n, std::align_val_t{64})));
    std::memset(buf_.get(), 0, n);
    size_ = n;
  }
  std::unique_ptr<std::byte[], aligned_delete> buf_;
  std::size_t size_ = 0;
  weights_view<std::int8_t> view_{};
};

/// Activations already quantized to int8 (tokens x cols codes in [-127, 127], one scale per token),
/// as quantize_activations writes them.
struct quantized_activations {
  matrix_view<const std::int8_t> q;
  std::span<const float> scales;
};

// ------------------------------------------------------------------------------------------------
// Element rules, shared by every tier and by the tests' references

namespace detail {
using quant::detail::fail;

/// The float output of one integer dot product.
QUANT_ALWAYS_INLINE float output(std::int32_t dot, float sw, float sx) noexcept {
  return static_cast<float>(dot) * (sw * sx);
}

/// The activation code of x with the token scale s (s = 0: 0).
QUANT_ALWAYS_INLINE std::int8_t activation_code(float x, float s) noexcept {
  if (s == 0.0f) return 0;
  float v = std::nearbyint(x / s);
  v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
  return static_cast<std::int8_t>(v);
}

/// Quantizes row r of w (times mult[c] when mult is not null) into out: codes, zero padding, scale
/// and code sum. quant's symmetric int8 rule: the codes of quant::quantize<int8, per_channel<>>.
inline void quantize_row(const float* w, const float* mult, std::size_t cols, const weights_view<std::int8_t>& out,
                         std::size_t r) noexcept {
  auto value = [&](std::size_t c) { return mult ? w[c] * mult[c] : w[c]; };
  float lo = value(0), hi = lo;
  for (std::size_t c = 1; c < cols; ++c) {
    const float v = value(c);
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  const float s = quant::detail::params_for_range<int8, false, float>(lo, hi).scale;
  std::int32_t total = 0;
  for (std::size_t c0 = 0; c0 < out.ld(); c0 += row_align) {
    std::int8_t* piece = &out.at(r, c0);
    const std::size_t n = std::min(row_align, cols > c0 ? cols - c0 : 0);
    for (std::size_t c = 0; c < n; ++c) {
      const auto q = static_cast<std::int8_t>(quant::detail::quantize_value<int8, false>(value(c0 + c), s, 0));
      piece[c] = q;
      total += q;
    }
    for (std::size_t c = n; c < row_align; ++c) piece[c] = 0;
  }
  out.padded_scales()[r] = s;
  out.padded_sums()[r] = total;
}

/// Zeroes the padding rows of the last block (codes, scales, sums).
inline void clear_padding_rows(const weights_view<std::int8_t>& out) noexcept {
  for (std::size_t r = out.rows(); r < out.layout().padded_rows; ++r) {
    for (std::size_t c0 = 0; c0 < out.ld(); c0 += row_align) std::memset(&out.at(r, c0), 0, row_align);
    out.padded_scales()[r] = 0.0f;
    out.padded_sums()[r] = 0;
  }
}

/// Which ranges an executor gets: at least 8 rows and 32K weights each, at most 64.
inline std::size_t task_count(std::size_t rows, std::size_t cols) noexcept {
  const std::size_t min_rows = std::max<std::size_t>(8, 32768 / std::max<std::size_t>(cols, 1));
  return std::clamp<std::size_t>(rows / min_rows, 1, 64);
}

// ------------------------------------------------------------------------------------------------
// Activation quantization kernels

#if defined(QUANT_ISA_AVX512)
// GCC 12 warns inside its _mm512_reduce_* (bug 105593): through memory instead.
QUANT_ALWAYS_INLINE float hmax512(__m512 v) noexcept {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float m = t[0];
  for (int i = 1; i < 16; ++i) m = t[i] > m ? t[i] : m;
  return m;
}
#endif
#if defined(QUANT_ISA_AVX2)
QUANT_ALWAYS_INLINE float hmax256(__m256 v) noexcept {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float m = t[0];
  for (int i = 1; i < 8; ++i) m = t[i] > m ? t[i] : m;
  return m;
}
#endif

/// One token: s = max|x| / 127, q[c] = activation_code(x[c], s) for c < n. The same bits on
/// every tier: the vector division is IEEE's, and vcvtps2dq rounds in the current mode as
/// std::nearbyint does (|x / s| is about 127 at most, and s = 0 is handled apart).
template <class Isa>
float quantize_token(const float* x, std::size_t n, std::int8_t* q) noexcept {
  std::size_t c = 0;
  float amax = 0.0f;
#if defined(QUANT_ISA_AVX512)
  if constexpr (Isa::id >= isa::avx512) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 m = _mm512_setzero_ps();
    for (; c + 16 <= n; c += 16) m = _mm512_max_ps(m, _mm512_andnot_ps(sign, _mm512_loadu_ps(x + c)));
    amax = hmax512(m);
  }
#endif
#if defined(QUANT_ISA_AVX2)
  if constexpr (Isa::id == isa::avx2) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (; c + 8 <= n; c += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + c)));
    amax = hmax256(m);
  }
#endif
  for (; c < n; ++c) amax = std::fabs(x[c]) > amax ? std::fabs(x[c]) : amax;
  const float s = amax / 127.0f;
  if (s == 0.0f) {
    std::memset(q, 0, n);
    return s;
  }
  c = 0;
#if defined(QUANT_ISA_AVX512)
  if constexpr (Isa::id >= isa::avx512) {
    const __m512 vs = _mm512_set1_ps(s);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (; c + 16 <= n; c += 16) {
      __m512i v = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x + c), vs));
      v = _mm512_min_epi32(_mm512_max_epi32(v, lo), hi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), _mm512_cvtepi32_epi8(v));
    }
  }
#endif
#if defined(QUANT_ISA_AVX2)
  if constexpr (Isa::id == isa::avx2) {
    const __m256 vs = _mm256_set1_ps(s);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    for (; c + 16 <= n; c += 16) {
      __m256i a = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + c), vs));
      __m256i b = _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(x + c + 8), vs));
      a = _mm256_min_epi32(_mm256_max_epi32(a, lo), hi);
      b = _mm256_min_epi32(_mm256_max_epi32(b, lo), hi);
      // packs keep the order within 128-bit lanes: a0-3 b0-3 a4-7 b4-7; the permute restores it
      const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
      const __m128i p = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), p);
    }
  }
#endif
  for (; c < n; ++c) q[c] = activation_code(x[c], s);
  return s;
}

// ------------------------------------------------------------------------------------------------
// The GEMM kernel

/// The activations as the kernel reads them: tokens rows of ld bytes (zero codes past cols),
/// offset to u8 (q + 128) on the VNNI tier, signed int8 otherwise.
struct prepared {
  const std::uint8_t* x = nullptr;
  std::size_t tokens = 0, ld = 0;
  const float* scales = nullptr;
};

/// Keeps a loaded vector in a register: without it GCC 12 folds the weight loads into every
/// vpdpbusd that uses them (R x TT loads per step instead of R; 20% slower at 16 tokens).
template <class V>
QUANT_ALWAYS_INLINE void in_register([[maybe_unused]] V& v) noexcept {
#if defined(__GNUC__) && !defined(__clang__)
  asm("" : "+v"(v));
#endif
}

/// The loop of one tile: R <= 4 rows times TT <= 4 tokens, accumulated over columns [c0, c1) in
/// steps of `step` into res[i][j]. prep(c, i) loads row i's weights at column c (in the form the
/// tier's dot wants), loadx(c, j) token j's activations, dot(acc, x, prepared w) accumulates.
/// The accumulators are named variables rather than an array: GCC 12 keeps an array of them in
/// registers too, but copies every one of them twice per iteration.
template <std::size_t R, std::size_t TT, class V, class Prep, class LoadX, class Dot>
QUANT_ALWAYS_INLINE void tile_loop(std::size_t c0, std::size_t c1, std::size_t step, V zero, Prep&& prep, LoadX&& loadx,
                                   Dot&& dot, V (&res)[R][TT]) noexcept {
  static_assert(R >= 1 && R <= 4 && TT >= 1 && TT <= 4);
  V a00 = zero, a01 = zero, a02 = zero, a03 = zero, a10 = zero, a11 = zero, a12 = zero, a13 = zero;
  V a20 = zero, a21 = zero, a22 = zero, a23 = zero, a30 = zero, a31 = zero, a32 = zero, a33 = zero;
  for (std::size_t c = c0; c < c1; c += step) {
    // rows past R load row 0 again; their values are never used and the loads disappear
    const auto p0 = prep(c, 0), p1 = prep(c, R > 1 ? 1 : 0), p2 = prep(c, R > 2 ? 2 : 0), p3 = prep(c, R > 3 ? 3 : 0);
    auto token = [&](std::size_t j, V& b0, V& b1, V& b2, V& b3) {
      const V xv = loadx(c, j);
      b0 = dot(b0, xv, p0);
      if constexpr (R > 1) b1 = dot(b1, xv, p1);
      if constexpr (R > 2) b2 = dot(b2, xv, p2);
      if constexpr (R > 3) b3 = dot(b3, xv, p3);
    };
    token(0, a00, a10, a20, a30);
    if constexpr (TT > 1) token(1, a01, a11, a21, a31);
    if constexpr (TT > 2) token(2, a02, a12, a22, a32);
    if constexpr (TT > 3) token(3, a03, a13, a23, a33);
  }
  const V all[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
  for (std::size_t i = 0; i < R; ++i)
    for (std::size_t j = 0; j < TT; ++j) res[i][j] = all[i][j];
}

template <class Isa>
struct kernel {
#if defined(QUANT_ISA_AVX512_VNNI)
  static constexpr bool vnni = Isa::id == isa::avx512_vnni;
#else
  static constexpr bool vnni = false;
#endif
#if defined(QUANT_ISA_AVX512)
  static constexpr bool avx512 = Isa::id == isa::avx512;
#else
  static constexpr bool avx512 = false;
#endif
#if defined(QUANT_ISA_AVX2)
  static constexpr bool avx2 = Isa::id == isa::avx2;
#else
  static constexpr bool avx2 = false;
#endif
  /// The activations are stored as q + 128.
  static constexpr bool offset = vnni;
  /// Tokens per tile (AVX2 has 16 registers: 8 accumulators and 8 for the 4 rows' codes).
  static constexpr std::size_t token_tile = avx2 ? 2 : 4;
  static constexpr std::size_t R = block_rows;
  /// How far ahead in the weight stream the kernels prefetch, in bytes. The hardware prefetchers
  /// alone fall behind once a tile has 4 tokens: at 4 and 8 tokens on 4096 x 4096, 4096 bytes
  /// ahead took the GEMM from 950-1570 us to 550-640 us (1024: no gain, 8192: no better).
  static constexpr std::size_t prefetch_distance = 4096;

  /// The tier this kernel runs as (the generic code serves generic and sse4_2).
  static constexpr isa tier() noexcept {
    return vnni ? isa::avx512_vnni : avx512 ? isa::avx512 : avx2 ? isa::avx2 : isa::generic;
  }

  /// Prefetches the 4 lines of the weight stream prefetch_distance bytes past column c of a block
  /// (the blocks are contiguous, so past a block's end this is the next block's start; the
  /// address is formed as an integer: it may lie past the buffer, where a prefetch does nothing).
  static QUANT_ALWAYS_INLINE void prefetch_ahead(const std::int8_t* blk, std::size_t c) noexcept {
#if defined(QUANT_ISA_AVX2)
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(blk) + c * block_rows + prefetch_distance;
    for (std::size_t l = 0; l < block_rows; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(a + l * row_align), _MM_HINT_T0);
#else
    (void)blk, (void)c;
#endif
  }

  /// Row i of a block at column c (c a multiple of the step: 64, or 32 on AVX2).
  static QUANT_ALWAYS_INLINE const std::int8_t* at(const std::int8_t* blk, std::size_t i, std::size_t c) noexcept {
    return blk + (c & ~(row_align - 1)) * block_rows + i * row_align + (c & (row_align - 1));
  }

  /// out[i][j] = sum over columns [c0, c1) of row i of the block times token j of x (TT tokens).
  template <std::size_t TT>
  static QUANT_ALWAYS_INLINE void tile(const std::int8_t* blk, const std::uint8_t* x, std::size_t ldx, std::size_t c0,
                                       std::size_t c1, std::int32_t (&out)[R][4]) noexcept {
#if defined(QUANT_ISA_AVX512)
    if constexpr (vnni || avx512) {
      __m512i acc[R][TT];
      auto loadx = [&](std::size_t c, std::size_t j) { return _mm512_load_si512(x + j * ldx + c); };
      if constexpr (vnni) {
#if defined(QUANT_ISA_AVX512_VNNI)
        tile_loop<R, TT>(
            c0, c1, 64, _mm512_setzero_si512(),
            [&](std::size_t c, std::size_t i) {
              if (i == 0) prefetch_ahead(blk, c);
              __m512i v = _mm512_load_si512(at(blk, i, c));
              in_register(v);
              return v;
            },
            loadx, [](__m512i a, __m512i xv, __m512i wv) { return _mm512_dpbusd_epi32(a, xv, wv); }, acc);
#endif
      } else {
        struct signed_w {
          __m512i abs;
          __mmask64 neg;
        };
        const __m512i ones = _mm512_set1_epi16(1);
        tile_loop<R, TT>(
            c0, c1, 64, _mm512_setzero_si512(),
            [&](std::size_t c, std::size_t i) {
              if (i == 0) prefetch_ahead(blk, c);
              const __m512i v = _mm512_load_si512(at(blk, i, c));
              return signed_w{_mm512_abs_epi8(v), _mm512_movepi8_mask(v)};
            },
            loadx,
            [&](__m512i a, __m512i xv, const signed_w& wv) {
              const __m512i sx = _mm512_mask_sub_epi8(xv, wv.neg, _mm512_setzero_si512(), xv);
              return _mm512_add_epi32(a, _mm512_madd_epi16(_mm512_maddubs_epi16(wv.abs, sx), ones));
            },
            acc);
      }
      const __m512i z = _mm512_setzero_si512();
      for (std::size_t i = 0; i < R; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[i]),
                         reduce4(acc[i][0], TT > 1 ? acc[i][TT > 1 ? 1 : 0] : z, TT > 2 ? acc[i][TT > 2 ? 2 : 0] : z,
                                 TT > 3 ? acc[i][TT > 3 ? 3 : 0] : z));
      return;
    }
#endif
#if defined(QUANT_ISA_AVX2)
    if constexpr (avx2) {
      struct signed_w {
        __m256i w, abs;
      };
      __m256i acc[R][TT];
      const __m256i ones = _mm256_set1_epi16(1);
      tile_loop<R, TT>(
          c0, c1, 32, _mm256_setzero_si256(),
          [&](std::size_t c, std::size_t i) {
            if (i == 0 && c % row_align == 0) prefetch_ahead(blk, c);
            const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(at(blk, i, c)));
            return signed_w{v, _mm256_abs_epi8(v)};
          },
          [&](std::size_t c, std::size_t j) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(x + j * ldx + c)); },
          [&](__m256i a, __m256i xv, const signed_w& wv) {
            const __m256i p = _mm256_maddubs_epi16(wv.abs, _mm256_sign_epi8(xv, wv.w));
            return _mm256_add_epi32(a, _mm256_madd_epi16(p, ones));
          },
          acc);
      const __m256i z = _mm256_setzero_si256();
      for (std::size_t i = 0; i < R; ++i)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[i]),
                         reduce4(acc[i][0], TT > 1 ? acc[i][TT > 1 ? 1 : 0] : z, TT > 2 ? acc[i][TT > 2 ? 2 : 0] : z,
                                 TT > 3 ? acc[i][TT > 3 ? 3 : 0] : z));
      return;
    }
#endif
    // Plain C++: pieces of 64 columns (a fixed trip count the compiler vectorizes).
    for (std::size_t i = 0; i < R; ++i)
      for (std::size_t j = 0; j < TT; ++j) out[i][j] = 0;
    for (std::size_t k = c0; k < c1; k += row_align)
      for (std::size_t i = 0; i < R; ++i) {
        const std::int8_t* wr = at(blk, i, k);
        for (std::size_t j = 0; j < TT; ++j) {
          const auto* xr = reinterpret_cast<const std::int8_t*>(x + j * ldx + k);
          std::int32_t s = 0;
          for (std::size_t c = 0; c < row_align; ++c)
            s += static_cast<std::int32_t>(wr[c]) * static_cast<std::int32_t>(xr[c]);
          out[i][j] += s;
        }
      }
  }

#if defined(QUANT_ISA_AVX512)
  /// The sums of the 16 lanes of a, b, c and d, in that order.
  static QUANT_ALWAYS_INLINE __m128i reduce4(__m512i a, __m512i b, __m512i c, __m512i d) noexcept {
    const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
    const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
    const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  }
#endif
#if defined(QUANT_ISA_AVX2)
  static QUANT_ALWAYS_INLINE __m128i reduce4(__m256i a, __m256i b, __m256i c, __m256i d) noexcept {
    const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
    const __m256i s = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
    return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  }
#endif

  /// Block b against tokens [t0, t1) (at most max_batch): store(row, token, dot) for the rows of
  /// the block inside [r0, r1). (Passing over the columns in pieces of 1024, so that the block's
  /// piece and the tokens' stay in L1 for every token tile, was measured no faster at 16 tokens.)
  template <class Store>
  static QUANT_ALWAYS_INLINE void block_run(const const_weights_view& w, const prepared& x, std::size_t b,
                                            std::size_t r0, std::size_t r1, std::size_t t0, std::size_t t1,
                                            Store& store) {
    const std::int8_t* blk = w.block(b);
    const std::size_t rb = b * R, i0 = r0 > rb ? r0 - rb : 0, i1 = std::min(R, r1 - rb), nt = t1 - t0;
    std::uint32_t sum[R][max_batch];  // mod 2^32: the VNNI sums may wrap before the correction
    for (std::size_t i = 0; i < R; ++i)
      for (std::size_t j = 0; j < nt; ++j) sum[i][j] = 0;
    auto add = [&](std::size_t t, std::size_t tt, const std::int32_t (&out)[R][4]) {
      for (std::size_t i = 0; i < R; ++i)
        for (std::size_t j = 0; j < tt; ++j) sum[i][t - t0 + j] += static_cast<std::uint32_t>(out[i][j]);
    };
    std::int32_t out[R][4];
    const std::size_t n = w.ld();
    std::size_t t = t0;
    for (; t + token_tile <= t1; t += token_tile) {
      tile<token_tile>(blk, x.x + t * x.ld, x.ld, 0, n, out);
      add(t, token_tile, out);
    }
    switch (t1 - t) {
      case 1: tile<1>(blk, x.x + t * x.ld, x.ld, 0, n, out), add(t, 1, out); break;
      case 2: tile<2>(blk, x.x + t * x.ld, x.ld, 0, n, out), add(t, 2, out); break;
      case 3: tile<3>(blk, x.x + t * x.ld, x.ld, 0, n, out), add(t, 3, out); break;
      default: break;
    }
    for (std::size_t i = i0; i < i1; ++i) {
      const std::uint32_t corr = offset ? static_cast<std::uint32_t>(w.padded_sums()[rb + i]) << 7 : 0u;  // 128 * sum
      for (std::size_t j = 0; j < nt; ++j) store(rb + i, t0 + j, static_cast<std::int32_t>(sum[i][j] - corr));
    }
  }

  /// Every token against rows [r0, r1): store(row, token, int32 dot). Batches of max_batch tokens;
  /// within a batch, each block of rows meets every token before the next block is read.
  template <class Store>
  static void rows(const const_weights_view& w, const prepared& x, std::size_t r0, std::size_t r1, Store&& store) {
    if (r0 >= r1) return;
    for (std::size_t t0 = 0; t0 < x.tokens; t0 += max_batch) {
      const std::size_t t1 = std::min(t0 + max_batch, x.tokens);
      for (std::size_t b = r0 / R; b * R < r1; ++b) block_run(w, x, b, r0, r1, t0, t1, store);
    }
  }

  /// Finishes the prepared rows in place: zero codes past cols, then the u8 offset on VNNI.
  static void finish_rows(std::uint8_t* buf, std::size_t tokens, std::size_t cols, std::size_t ld) noexcept {
    for (std::size_t t = 0; t < tokens; ++t) {
      std::uint8_t* row = buf + t * ld;
      std::memset(row + cols, 0, ld - cols);
      if constexpr (offset)
        for (std::size_t c = 0; c < ld; c += 8) {  // ld is a multiple of 64
          std::uint64_t v;
          std::memcpy(&v, row + c, 8);
          v ^= 0x8080808080808080ull;
          std::memcpy(row + c, &v, 8);
        }
    }
  }

  /// Quantizes x (tokens x cols) into buf (tokens rows of ld bytes) and scales.
  static void prepare(matrix_view<const float> x, std::size_t ld, std::uint8_t* buf, float* scales) noexcept {
    for (std::size_t t = 0; t < x.rows(); ++t)
      scales[t] = quantize_token<Isa>(&x(t, 0), x.cols(), reinterpret_cast<std::int8_t*>(buf + t * ld));
    finish_rows(buf, x.rows(), x.cols(), ld);
  }
  /// Copies int8 codes into buf (the caller checked them).
  static void prepare(matrix_view<const std::int8_t> q, std::size_t ld, std::uint8_t* buf) noexcept {
    for (std::size_t t = 0; t < q.rows(); ++t) std::memcpy(buf + t * ld, &q(t, 0), q.cols());
    finish_rows(buf, q.rows(), q.cols(), ld);
  }
};

/// The workspace: prepared activations (tokens rows of ld bytes) and token scales.
inline std::size_t workspace_bytes(std::size_t ld, std::size_t tokens) noexcept {
  quant::detail::workspace_carver c{nullptr};
  c.take<std::uint8_t>(tokens * ld);
  c.take<float>(tokens);
  return c.used;
}

inline void check_weights(const const_weights_view& w, const char* who) {
  if (w.empty()) fail(who, ": w is empty");
}

inline void check_workspace(std::span<std::byte> ws, std::size_t need, const char* who) {
  if (ws.size() < need) fail(who, ": workspace has ", ws.size(), " bytes, needs ", need, " (w8a8::gemm_workspace_size)");
  if (reinterpret_cast<std::uintptr_t>(ws.data()) % 64 != 0) fail(who, ": workspace is not aligned to 64 bytes");
}

inline void check_range(row_range rr, std::size_t rows, const char* who) {
  if (rr.begin > rr.end || rr.end > rows)
    fail(who, ": row range [", rr.begin, ", ", rr.end, ") is not inside [0, ", rows, ")");
}

template <class T>
void check_output(const const_weights_view& w, std::size_t tokens, matrix_view<T> y, const char* who) {
  if (y.rows() != tokens || y.cols() != w.rows())
    fail(who, ": y is ", y.rows(), " x ", y.cols(), ", expected tokens x rows = ", tokens, " x ", w.rows());
}

/// Checks float activations against w and y (y must not overlap x).
inline void check_float_args(const const_weights_view& w, matrix_view<const float> x, matrix_view<float> y,
                             const char* who) {
  check_weights(w, who);
  if (x.rows() == 0) fail(who, ": x has no tokens (0 rows)");
  if (x.cols() != w.cols()) fail(who, ": x has ", x.cols(), " columns, expected w.cols() = ", w.cols());
  check_output(w, x.rows(), y, who);
  const float* xb = x.data();
  const float* xe = xb + (x.rows() - 1) * x.ld() + x.cols();
  const float* yb = y.data();
  const float* ye = yb + (y.rows() - 1) * y.ld() + y.cols();
  if (xb < ye && yb < xe) fail(who, ": y overlaps x; Y = X W^T needs separate buffers");
  if (!quant::detail::all_finite<default_isa>(x))
    for (std::size_t t = 0; t < x.rows(); ++t)
      for (std::size_t c = 0; c < x.cols(); ++c)
        if (!std::isfinite(x(t, c))) fail(who, ": x(", t, ", ", c, ") = ", x(t, c), "; activations must be finite");
}

/// Checks pre-quantized activations against w.
inline void check_quantized(const const_weights_view& w, const quantized_activations& a, const char* who,
                            bool need_scales) {
  check_weights(w, who);
  if (a.q.rows() == 0) fail(who, ": q has no tokens (0 rows)");
  if (a.q.cols() != w.cols()) fail(who, ": q has ", a.q.cols(), " columns, expected w.cols() = ", w.cols());
  if (need_scales) {
    if (a.scales.size() != a.q.rows())
      fail(who, ": scales has ", a.scales.size(), " elements, expected one per token = ", a.q.rows());
    for (std::size_t t = 0; t < a.scales.size(); ++t)
      if (!(a.scales[t] >= 0.0f) || !std::isfinite(a.scales[t]))
        fail(who, ": scales[", t, "] = ", a.scales[t], "; token scales must be finite and >= 0");
  }
  for (std::size_t t = 0; t < a.q.rows(); ++t)
    for (std::size_t c = 0; c < a.q.cols(); ++c)
      if (a.q(t, c) == -128) fail(who, ": q(", t, ", ", c, ") = -128; activation codes are symmetric, in [-127, 127]");
}

/// Carves the workspace; returns the prepared activations' view after calling fill(buf, scales).
template <class Fill>
prepared carve(std::byte* ws, std::size_t ld, std::size_t tokens, Fill&& fill) {
  quant::detail::workspace_carver c{ws};
  auto* buf = c.take<std::uint8_t>(tokens * ld);
  auto* sc = c.take<float>(tokens);
  const float* s = fill(buf, sc);
  return prepared{buf, tokens, ld, s};
}

/// Runs rows of the prepared activations on the executor (tasks over row ranges).
template <class Isa, class Exec, class Store>
void run_tasks(const const_weights_view& w, const prepared& p, Exec& exec, Store&& store) {
  const std::size_t rows = w.rows();
  const std::size_t tasks = task_count(rows, w.cols());
  exec(tasks, [&](std::size_t i) {
    const auto [r0, r1] = quant::detail::split_rows(rows, tasks, i, block_rows);
    kernel<Isa>::rows(w, p, r0, r1, store);
  });
}

/// The float output functor: y(t, r) = output(dot, s_w[r], s_x[t]).
struct float_store {
  float* y;
  std::size_t ldy;
  const float* sw;
  const float* sx;
  QUANT_ALWAYS_INLINE void operator()(std::size_t r, std::size_t t, std::int32_t dot) const noexcept {
    y[t * ldy + r] = output(dot, sw[r], sx[t]);
  }
};
struct int_store {
  std::int32_t* y;
  std::size_t ldy;
  QUANT_ALWAYS_INLINE void operator()(std::size_t r, std::size_t t, std::int32_t dot) const noexcept {
    y[t * ldy + r] = dot;
  }
};

/// The whole float-activation GEMM on tier Isa (arguments checked), rows [r0, r1) or all on exec.
template <class Isa, class Exec>
void gemm_float(const const_weights_view& w, matrix_view<const float> x, matrix_view<float> y, std::byte* ws,
                Exec& exec, row_range rr, bool use_exec) {
  const prepared p = carve(ws, w.ld(), x.rows(), [&](std::uint8_t* buf, float* sc) {
    kernel<Isa>::prepare(x, w.ld(), buf, sc);
    return static_cast<const float*>(sc);
  });
  const float_store st{y.data(), y.ld(), w.padded_scales(), p.scales};
  if (use_exec) run_tasks<Isa>(w, p, exec, st);
  else kernel<Isa>::rows(w, p, rr.begin, rr.end, st);
}

template <class Isa, class Exec, class Store>
void gemm_quantized(const const_weights_view& w, const quantized_activations& a, Store st, std::byte* ws, Exec& exec,
                    row_range rr, bool use_exec) {
  const prepared p = carve(ws, w.ld(), a.q.rows(), [&](std::uint8_t* buf, float*) {
    kernel<Isa>::prepare(a.q, w.ld(), buf);
    return a.scales.data();
  });
  if (use_exec) run_tasks<Isa>(w, p, exec, st);
  else kernel<Isa>::rows(w, p, rr.begin, rr.end, st);
}

}  // namespace detail

// ------------------------------------------------------------------------------------------------
// Weights

/// The tier the W8A8 kernels of this translation unit run on.
constexpr isa kernel_isa() noexcept { return detail::kernel<default_isa>::tier(); }

/// Quantizes w (rows x cols, finite) into out (same shape): per row, quant's symmetric int8 scale
/// and codes, zero padding to ld, the code sum. Rows are split over exec. Nothing is written if
/// an argument is rejected.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void quantize_weights(matrix_view<const float> w, weights_view<std::int8_t> out, Exec&& exec = {}) {
  const char* who = "quant::w8a8::quantize_weights";
  if (w.empty()) detail::fail(who, ": w is empty (", w.rows(), " x ", w.cols(), ")");
  quant::detail::check_same_shape(w.rows(), w.cols(), out.rows(), out.cols(), who, "w", "out");
  if (!quant::detail::all_finite<default_isa>(w)) quant::detail::check_finite(w, who);
  const std::size_t tasks = detail::task_count(w.rows(), w.cols());
  exec(tasks, [&](std::size_t i) {
    const auto [r0, r1] = quant::detail::split_rows(w.rows(), tasks, i, 1);
    for (std::size_t r = r0; r < r1; ++r) detail::quantize_row(&w(r, 0), nullptr, w.cols(), out, r);
  });
  detail::clear_padding_rows(out);
}

/// Allocating convenience: new W8A8 weights of w.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
weights quantize_weights(matrix_view<const float> w, Exec&& exec = {}) {
  if (w.empty()) detail::fail("quant::w8a8::quantize_weights: w is empty (", w.rows(), " x ", w.cols(), ")");
  weights q(w.rows(), w.cols());
  quantize_weights(w, q.view(), exec);
  return q;
}

/// Copies an int8 per-channel symmetric tensor (natural column order) into out: the same codes,
/// the decoded scales, zero padding and code sums.
template <class Scale>
void convert(tensor_view<const int8, per_channel<symmetric, Scale>> t, weights_view<std::int8_t> out) {
  const char* who = "quant::w8a8::convert";
  quant::detail::check_tensor(t, who, "t");
  quant::detail::check_same_shape(t.rows(), t.cols(), out.rows(), out.cols(), who, "t", "out");
  if (t.permuted()) detail::fail(who, ": t has a permuted column order; W8A8 weights are in natural order");
  for (std::size_t r = 0; r < t.rows(); ++r) {
    const std::uint8_t* src = reinterpret_cast<const std::uint8_t*>(t.row_codes(r));
    std::int32_t sum = 0;
    for (std::size_t c = 0; c < out.ld(); ++c) sum += out.at(r, c) = c < t.cols() ? static_cast<std::int8_t>(src[c]) : 0;
    out.scales()[r] = t.scale(t.grid().index(r, 0));
    out.row_sums()[r] = sum;
  }
  detail::clear_padding_rows(out);
}

// ------------------------------------------------------------------------------------------------
// Activations

/// Per-token dynamic quantization of x (tokens x cols, finite) into q (same shape; its row stride
/// may be larger, the columns past cols are not touched) and scales (one per token).
inline void quantize_activations(matrix_view<const float> x, matrix_view<std::int8_t> q, std::span<float> scales) {
  const char* who = "quant::w8a8::quantize_activations";
  if (x.empty()) detail::fail(who, ": x is empty (", x.rows(), " x ", x.cols(), ")");
  quant::detail::check_same_shape(x.rows(), x.cols(), q.rows(), q.cols(), who, "x", "q");
  if (scales.size() != x.rows())
    detail::fail(who, ": scales has ", scales.size(), " elements, expected one per token = ", x.rows());
  if (!quant::detail::all_finite<default_isa>(x))
    for (std::size_t t = 0; t < x.rows(); ++t)
      for (std::size_t c = 0; c < x.cols(); ++c)
        if (!std::isfinite(x(t, c)))
          detail::fail(who, ": x(", t, ", ", c, ") = ", x(t, c), "; activations must be finite");
  for (std::size_t t = 0; t < x.rows(); ++t) scales[t] = detail::quantize_token<default_isa>(&x(t, 0), x.cols(), &q(t, 0));
}

// ------------------------------------------------------------------------------------------------
// GEMM: Y (tokens x rows) = X (tokens x cols) W^T, W8A8

/// Bytes of workspace gemm needs for `tokens` tokens (64-byte aligned; O(tokens * cols)).
inline std::size_t gemm_workspace_size(const_weights_view w, std::size_t tokens) {
  detail::check_weights(w, "quant::w8a8::gemm_workspace_size");
  return detail::workspace_bytes(w.ld(), tokens);
}

/// Y = X W^T with float activations, quantized per token into the workspace (gemm_workspace_size
/// bytes, 64-byte aligned); rows split over exec. Allocates nothing.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemm(const_weights_view w, matrix_view<const float> x, matrix_view<float> y, std::span<std::byte> workspace,
          Exec&& exec = {}) {
  const char* who = "quant::w8a8::gemm";
  detail::check_float_args(w, x, y, who);
  detail::check_workspace(workspace, detail::workspace_bytes(w.ld(), x.rows()), who);
  detail::gemm_float<default_isa>(w, x, y, workspace.data(), exec, {}, true);
}

/// The same with its workspace on the heap.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemm(const_weights_view w, matrix_view<const float> x, matrix_view<float> y, Exec&& exec = {}) {
  const char* who = "quant::w8a8::gemm";
  detail::check_float_args(w, x, y, who);
  quant::detail::heap_workspace ws(detail::workspace_bytes(w.ld(), x.rows()));
  detail::gemm_float<default_isa>(w, x, y, ws.p, exec, {}, true);
}

/// Rows [rows.begin, rows.end) of every token's output (other columns of y are not touched): one
/// range of a caller's own partition. Allocates the workspace.
inline void gemm(const_weights_view w, matrix_view<const float> x, matrix_view<float> y, row_range rows) {
  const char* who = "quant::w8a8::gemm";
  detail::check_float_args(w, x, y, who);
  detail::check_range(rows, w.rows(), who);
  quant::detail::heap_workspace ws(detail::workspace_bytes(w.ld(), x.rows()));
  inline_executor none;
  detail::gemm_float<default_isa>(w, x, y, ws.p, none, rows, false);
}

/// Y = X W^T with pre-quantized activations (quantize_activations' q and scales).
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemm(const_weights_view w, const quantized_activations& a, matrix_view<float> y, std::span<std::byte> workspace,
          Exec&& exec = {}) {
  const char* who = "quant::w8a8::gemm";
  detail::check_quantized(w, a, who, true);
  detail::check_output(w, a.q.rows(), y, who);
  detail::check_workspace(workspace, detail::workspace_bytes(w.ld(), a.q.rows()), who);
  const detail::float_store st{y.data(), y.ld(), w.padded_scales(), a.scales.data()};
  detail::gemm_quantized<default_isa>(w, a, st, workspace.data(), exec, {}, true);
}
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemm(const_weights_view w, const quantized_activations& a, matrix_view<float> y, Exec&& exec = {}) {
  const char* who = "quant::w8a8::gemm";
  detail::check_quantized(w, a, who, true);
  detail::check_output(w, a.q.rows(), y, who);
  quant::detail::heap_workspace ws(detail::workspace_bytes(w.ld(), a.q.rows()));
  const detail::float_store st{y.data(), y.ld(), w.padded_scales(), a.scales.data()};
  detail::gemm_quantized<default_isa>(w, a, st, ws.p, exec, {}, true);
}
inline void gemm(const_weights_view w, const quantized_activations& a, matrix_view<float> y, row_range rows) {
  const char* who = "quant::w8a8::gemm";
  detail::check_quantized(w, a, who, true);
  detail::check_output(w, a.q.rows(), y, who);
  detail::check_range(rows, w.rows(), who);
  quant::detail::heap_workspace ws(detail::workspace_bytes(w.ld(), a.q.rows()));
  const detail::float_store st{y.data(), y.ld(), w.padded_scales(), a.scales.data()};
  inline_executor none;
  detail::gemm_quantized<default_isa>(w, a, st, ws.p, none, rows, false);
}

/// The integer part alone: out(t, r) = sum_c q_w[r, c] * q(t, c), exactly (tokens x rows int32).
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemm_int32(const_weights_view w, matrix_view<const std::int8_t> q, matrix_view<std::int32_t> out,
                Exec&& exec = {}) {
  const char* who = "quant::w8a8::gemm_int32";
  const quantized_activations a{q, {}};
  detail::check_quantized(w, a, who, false);
  detail::check_output(w, q.rows(), out, who);
  quant::detail::heap_workspace ws(detail::workspace_bytes(w.ld(), q.rows()));
  detail::gemm_quantized<default_isa>(w, a, detail::int_store{out.data(), out.ld()}, ws.p, exec, {}, true);
}

/// y = W x for one token (a 1-token gemm).
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemv(const_weights_view w, std::span<const float> x, std::span<float> y, Exec&& exec = {}) {
  const char* who = "quant::w8a8::gemv";
  if (w.empty()) detail::fail(who, ": w is empty");
  if (x.size() != w.cols()) detail::fail(who, ": x has ", x.size(), " elements, expected cols = ", w.cols());
  if (y.size() != w.rows()) detail::fail(who, ": y has ", y.size(), " elements, expected rows = ", w.rows());
  gemm(w, matrix_view<const float>(x.data(), 1, x.size()), matrix_view<float>(y.data(), 1, y.size()), exec);
}

}  // namespace w8a8
QUANT_NAMESPACE_END
