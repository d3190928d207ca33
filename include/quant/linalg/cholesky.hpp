// quant/linalg/cholesky.hpp: the dense fp32 factorizations GPTQ needs: a lower Cholesky
// factorization, the inverse of an upper-triangular matrix, and GPTQ's factor U (U^T U = H^-1).
// Row-major, in place, float32 arithmetic (as the original GPTQ); the diagonal square roots in
// double. Nothing is allocated on the heap.
//
// cholesky_lower: left-looking, in blocks of nb = 128 columns. For block column J = [j0, j1):
//   1. A[j0:n, J] -= L[j0:n, 0:j0] L[J, 0:j0]^T, one gemm (NN, the whole tall panel at once,
//      through exec). Its B operand, L[J, 0:j0]^T, is read from the strict upper triangle, where
//      every earlier step left the transpose of its panel: the upper triangle is free (only the
//      lower one is input) and holding L^T there turns every update into a plain NN product.
//   2. The w x w diagonal block is factored unblocked on a stack copy (row-oriented, vector dot
//      products); a pivot that is not positive and finite stops the factorization there.
//   3. The panel below it, L21 = A21 L11^-T, is solved as L11 Y = A21^T with Y = L21^T: chunks of
//      4 vectors' worth of rows of A21 are transposed (8 x 8 register tiles) into a stack buffer,
//      forward substitution runs on whole vectors (4 rows of Y at a time with AVX-512, 2 below:
//      16 or 8 independent FMA chains), and the result goes to both L21 (lower) and L21^T (upper,
//      for step 1 of the later blocks). Chunks run through exec.
//   The strict upper triangle is zeroed at the end. Flops: n^3/3, all but ~1.5 nb/n of them in gemm.
//
// invert_upper: bottom-up in row blocks I = [i0, i1) of nb rows. With X = U^-1 already computed
// for rows and columns [i1, n):  X[I, i1:n] = -X[I,I] U[I, i1:n] X[i1:n, i1:n].
//   1. X[I,I] = U[I,I]^-1 on a stack copy (row by row, vector axpys).
//   2. R' = -X[I,I] U[I, i1:n] by column chunks through exec (vector FMAs along the rows of a
//      stack copy), written transposed into the strict lower triangle (rows i1.., columns 0..w):
//      free space, and the transposed layout makes step 3 a TN product whose operands never
//      overlap its output.
//   3. X[I, i1:n] = R' X[i1:n, i1:n], one gemm (TN) per diagonal block column of the right part,
//      each with k up to the end of that block only (X is upper triangular; the strict lower parts
//      of the diagonal blocks are zeroed first so that they read as zeros), run through exec.
//   The strict lower triangle is zeroed at the end. Flops: n^3/3.
//
// inverse_upper_factor: with J the index reversal, J H J = M M^T (lower Cholesky); V = J M J is
// upper and H = V V^T, so H^-1 = V^-T V^-1 and U = V^-1 is the upper factor with U^T U = H^-1
// (positive diagonal: the same U as GPTQ's chol -> cholesky_inverse -> chol(upper)). The
// reversals are index arithmetic: the lower triangle of J H J is the upper triangle of H read
// backwards (copied into the lower triangle), and V is the lower triangle of M read backwards
// (copied into the upper one). One Cholesky and one triangular inverse: 2n^3/3 flops.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../kernels/isa.hpp"
#include "../kernels/threading.hpp"
#include "gemm.hpp"

QUANT_NAMESPACE_BEGIN

namespace linalg {
namespace detail {

#if defined(__GNUC__) || defined(__clang__)
#define QUANT_LA_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define QUANT_LA_NOINLINE __declspec(noinline)
#else
#define QUANT_LA_NOINLINE
#endif

/// Block size of the factorizations.
inline constexpr std::size_t fact_nb = 128;
/// Row stride of the stack copies of diagonal blocks.
inline constexpr std::size_t fact_ldt = fact_nb + 4;
/// Vectors per chunk of the panel kernels (a chunk is pv * lanes rows or columns).
inline constexpr std::size_t fact_pv = 4;
/// Tasks of the panel steps: at most this many.
inline constexpr std::size_t fact_max_tasks = 64;

/// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (8 x 8 tiles in registers with AVX2).
inline void transpose_copy(const float* src, std::size_t lds, float* dst, std::size_t ldd, std::size_t rows,
                           std::size_t cols) noexcept {
  std::size_t r = 0;
#if defined(QUANT_ISA_AVX2)
  for (; r + 8 <= rows; r += 8) {
    std::size_t c = 0;
    for (; c + 8 <= cols; c += 8) {
      const float* s = src + r * lds + c;
      const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds), r2 = _mm256_loadu_ps(s + 2 * lds),
                   r3 = _mm256_loadu_ps(s + 3 * lds), r4 = _mm256_loadu_ps(s + 4 * lds),
                   r5 = _mm256_loadu_ps(s + 5 * lds), r6 = _mm256_loadu_ps(s + 6 * lds),
                   r7 = _mm256_loadu_ps(s + 7 * lds);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
                   t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                   t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                   u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                   u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                   u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = dst + c * ldd + r;
      _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (; c < cols; ++c)
      for (std::size_t i = r; i < r + 8; ++i) dst[c * ldd + i] = src[i * lds + c];
  }
#endif
  for (; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

struct fact_kernels {
  using V = gemm_default::V;
  using f = typename V::f;
  static constexpr std::size_t W = V::n, PV = fact_pv, RC = PV * W;

  /// sum_{i < n} a[i] b[i], in float.
  static float dot(const float* a, const float* b, std::size_t n) noexcept {
    f s0 = V::zero(), s1 = V::zero();
    std::size_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      s0 = V::fmadd(V::load(a + i), V::load(b + i), s0);
      s1 = V::fmadd(V::load(a + i + W), V::load(b + i + W), s1);
    }
    if (i + W <= n) s0 = V::fmadd(V::load(a + i), V::load(b + i), s0), i += W;
    alignas(64) float t[W];
    V::store(t, s0);
    alignas(64) float u[W];
    V::store(u, s1);
    float s = 0.0f;
    for (std::size_t l = 0; l < W; ++l) s += t[l] + u[l];
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }

  /// y[i] -= s * x[i] for i < n.
  static void axpy_sub(float* y, const float* x, float s, std::size_t n) noexcept {
    const f vs = V::set1(s);
    std::size_t i = 0;
    for (; i + W <= n; i += W) V::store(y + i, V::fnmadd(vs, V::load(x + i), V::load(y + i)));
    for (; i < n; ++i) y[i] -= s * x[i];
  }

  /// Rows of Y (or columns of a panel) solved or multiplied together: G * PV accumulators.
  static constexpr std::size_t G = W >= 16 ? 4 : 2;

  /// Rows c .. c+R-1 of the forward substitution L11 Y = Y (rows of RC floats, rows < c final).
  template <std::size_t R>
  static QUANT_ALWAYS_INLINE void forward_rows(std::size_t c, const float* l11, std::size_t ld, const float* inv,
                                               float* y) noexcept {
    f acc[R][PV];
    const float* l[R];
    static_for<R>([&](auto g) QUANT_LA_INLINE_LAMBDA {
      l[g] = l11 + (c + g) * ld;
      static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { acc[g][v] = V::load_aligned(y + (c + g) * RC + v * W); });
    });
    QUANT_LA_NO_UNROLL
    for (std::size_t p = 0; p < c; ++p) {
      const float* yp = y + p * RC;
      f yv[PV];
      static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { yv[v] = V::load_aligned(yp + v * W); });
      static_for<R>([&](auto g) QUANT_LA_INLINE_LAMBDA {
        const f b = V::set1(l[g][p]);
        static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { acc[g][v] = V::fnmadd(b, yv[v], acc[g][v]); });
      });
    }
    // The R x R triangle: row g takes the final rows c .. c+g-1.
    static_for<R>([&](auto g) QUANT_LA_INLINE_LAMBDA {
      static_for<decltype(g)::value>([&](auto h) QUANT_LA_INLINE_LAMBDA {
        const f b = V::set1(l[g][c + h]);
        static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { acc[g][v] = V::fnmadd(b, acc[h][v], acc[g][v]); });
      });
      const f iv = V::set1(inv[c + g]);
      static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA {
        acc[g][v] = V::mul(acc[g][v], iv);
        V::store(y + (c + g) * RC + v * W, acc[g][v]);
      });
    });
  }

  /// Rows i .. i+R-1 of R' = -X Z in place (rows of RC floats; rows >= i still hold Z; X's strict
  /// lower part is zero in memory).
  template <std::size_t R>
  static QUANT_ALWAYS_INLINE void trmm_rows(std::size_t i, std::size_t w, const float* x, std::size_t ld,
                                            float* z) noexcept {
    f acc[R][PV];
    const float* xr[R];
    static_for<R>([&](auto g) QUANT_LA_INLINE_LAMBDA {
      xr[g] = x + (i + g) * ld;
      static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { acc[g][v] = V::zero(); });
    });
    QUANT_LA_NO_UNROLL
    for (std::size_t k = i; k < w; ++k) {
      const float* zk = z + k * RC;
      f zv[PV];
      static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { zv[v] = V::load_aligned(zk + v * W); });
      static_for<R>([&](auto g) QUANT_LA_INLINE_LAMBDA {
        const f b = V::set1(xr[g][k]);
        static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { acc[g][v] = V::fnmadd(b, zv[v], acc[g][v]); });
      });
    }
    static_for<R>([&](auto g) QUANT_LA_INLINE_LAMBDA {
      static_for<PV>([&](auto v) QUANT_LA_INLINE_LAMBDA { V::store(z + (i + g) * RC + v * W, acc[g][v]); });
    });
  }

  /// Lower Cholesky of the w x w block d (row stride ld; lower triangle read). On success the lower
  /// triangle holds L, the strict upper one L^T, and w is returned; otherwise the index of the
  /// first pivot that is not positive and finite.
  QUANT_LA_NOINLINE static std::size_t factor_diag(std::size_t w, float* d, std::size_t ld) noexcept {
    alignas(64) float t[fact_nb * fact_ldt];
    for (std::size_t i = 0; i < w; ++i) std::memcpy(t + i * fact_ldt, d + i * ld, (i + 1) * sizeof(float));
    for (std::size_t i = 0; i < w; ++i) {
      float* ti = t + i * fact_ldt;
      for (std::size_t j = 0; j < i; ++j) ti[j] = (ti[j] - dot(ti, t + j * fact_ldt, j)) / t[j * fact_ldt + j];
      const float s = ti[i] - dot(ti, ti, i);
      if (!(s > 0.0f) || !std::isfinite(s)) return i;
      ti[i] = static_cast<float>(std::sqrt(static_cast<double>(s)));
    }
    for (std::size_t i = 0; i < w; ++i) {
      float* di = d + i * ld;
      std::memcpy(di, t + i * fact_ldt, (i + 1) * sizeof(float));
      for (std::size_t j = i + 1; j < w; ++j) di[j] = t[j * fact_ldt + i];
    }
    return w;
  }

  /// Panel of the Cholesky: rows [0, rows) of a21 (row stride ld, w columns) become L21 = A21 L11^-T,
  /// and u (row stride ld) gets L21^T: u[c * ld + i] = L21[i][c]. l11: the factored diagonal block
  /// (lower triangle), inv[c] = 1 / l11[c][c]. rows <= RC.
  QUANT_LA_NOINLINE static void chol_panel(std::size_t w, const float* l11, const float* inv, float* a21,
                                           std::size_t rows, float* u, std::size_t ld) noexcept {
    alignas(64) float y[fact_nb * RC];
    for (std::size_t c = 0; c < w; ++c) std::memset(y + c * RC + rows, 0, (RC - rows) * sizeof(float));
    transpose_copy(a21, ld, y, RC, rows, w);
    // Forward substitution L11 Y = A21^T on rows of Y (vectors across the chunk's rows), G rows of
    // Y at a time: G * PV independent accumulators.
    std::size_t c = 0;
    for (; c + G <= w; c += G) forward_rows<G>(c, l11, ld, inv, y);
    for (; c < w; ++c) forward_rows<1>(c, l11, ld, inv, y);
    for (std::size_t cc = 0; cc < w; ++cc) std::memcpy(u + cc * ld, y + cc * RC, rows * sizeof(float));
    transpose_copy(y, RC, a21, ld, w, rows);
  }

  /// In-place inverse of the w x w upper-triangular block d (row stride ld); the strict lower part
  /// is neither read nor written.
  QUANT_LA_NOINLINE static void invert_diag(std::size_t w, float* d, std::size_t ld) noexcept {
    alignas(64) float t[fact_nb * fact_ldt];
    alignas(64) float x[fact_nb];
    for (std::size_t i = 0; i < w; ++i) std::memcpy(t + i * fact_ldt + i, d + i * ld + i, (w - i) * sizeof(float));
    // Row i of X solves x U = e_i: x_k = (e_ik - sum_{j<k} x_j U_jk) / U_kk, as axpys on rows of U.
    for (std::size_t i = 0; i < w; ++i) {
      std::fill(x + i, x + w, 0.0f);
      x[i] = 1.0f;
      for (std::size_t k = i; k < w; ++k) {
        const float* tk = t + k * fact_ldt;
        x[k] /= tk[k];
        axpy_sub(x + k + 1, tk + k + 1, x[k], w - k - 1);
      }
      std::memcpy(t + i * fact_ldt + i, x + i, (w - i) * sizeof(float));
    }
    for (std::size_t i = 0; i < w; ++i) std::memcpy(d + i * ld + i, t + i * fact_ldt + i, (w - i) * sizeof(float));
  }

  /// Step 2 of invert_upper on columns [0, cols) (cols <= RC) of the w-row block r (row stride ld):
  /// R' = -X R with X the w x w upper block x (strict lower part zero in memory), written
  /// transposed to s: s[t * ld + i] = R'[i][t].
  QUANT_LA_NOINLINE static void trmm_panel(std::size_t w, const float* x, const float* r, std::size_t cols,
                                           float* s, std::size_t ld) noexcept {
    alignas(64) float z[fact_nb * RC];
    for (std::size_t i = 0; i < w; ++i) {
      std::memcpy(z + i * RC, r + i * ld, cols * sizeof(float));
      std::memset(z + i * RC + cols, 0, (RC - cols) * sizeof(float));
    }
    // Top-down, G rows at a time: rows i.. i+G-1 read rows >= i of z, which are still R.
    std::size_t i = 0;
    for (; i + G <= w; i += G) trmm_rows<G>(i, w, x, ld, z);
    for (; i < w; ++i) trmm_rows<1>(i, w, x, ld, z);
    transpose_copy(z, RC, s, ld, w, cols);
  }
};

/// Runs fn(begin, end) over [0, total) in chunks of `chunk` items, grouped into at most
/// fact_max_tasks tasks (one task: on the calling thread).
template <class Exec, class Fn>
void for_chunks(Exec& exec, std::size_t total, std::size_t chunk, Fn&& fn) {
  if (total == 0) return;
  const std::size_t chunks = (total + chunk - 1) / chunk;
  const std::size_t tasks = std::min(chunks, fact_max_tasks);
  const auto run = [&](std::size_t t) {
    const auto [c0, c1] = quant::detail::split_rows(chunks, tasks, t, 1);
    for (std::size_t c = c0; c < c1; ++c) fn(c * chunk, std::min(total, (c + 1) * chunk));
  };
  if (tasks == 1) return run(0);
  exec(tasks, run);
}

/// dst[t] = src[-t] for t in [0, count) (a reversed copy; the ranges do not overlap).
inline void reverse_copy(const float* src, float* dst, std::size_t count) noexcept {
  std::size_t t = 0;
#if defined(QUANT_ISA_AVX512)
  const __m512i rev = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; t + 16 <= count; t += 16) _mm512_storeu_ps(dst + t, _mm512_permutexvar_ps(rev, _mm512_loadu_ps(src - t - 15)));
#elif defined(QUANT_ISA_AVX2)
  const __m256i rev = _mm256_set_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; t + 8 <= count; t += 8)
    _mm256_storeu_ps(dst + t, _mm256_permutevar8x32_ps(_mm256_loadu_ps(src - t - 7), rev));
#endif
  for (; t < count; ++t) dst[t] = src[-static_cast<std::ptrdiff_t>(t)];
}

/// The triangle opposite `from` becomes the `from` triangle of J A J read backwards:
/// from_upper: a[i][j] = a[n-1-i][n-1-j] for j < i (upper -> lower); else the reverse. The diagonal
/// is reversed. Rows run through exec.
template <class Exec>
void mirror_reversed(std::size_t n, float* a, std::size_t lda, bool from_upper, Exec& exec) {
  for_chunks(exec, n, 64, [&](std::size_t r0, std::size_t r1) {
    for (std::size_t i = r0; i < r1; ++i) {
      // Row i of the destination triangle reads row n-1-i of the source triangle, backwards.
      const std::size_t src_row = n - 1 - i;
      if (from_upper) reverse_copy(a + src_row * lda + (n - 1), a + i * lda, i);  // cols [0, i) <- [n-1 .. n-i]
      else reverse_copy(a + src_row * lda + (n - 2 - i), a + i * lda + i + 1, n - 1 - i);  // (i, n) <- [n-2-i .. 0]
    }
  });
  for (std::size_t i = 0; i < n / 2; ++i) std::swap(a[i * lda + i], a[(n - 1 - i) * lda + (n - 1 - i)]);
}

/// Zeroes the strict upper (upper = true) or lower triangle. Rows run through exec.
template <class Exec>
void zero_triangle(std::size_t n, float* a, std::size_t lda, bool upper, Exec& exec) {
  for_chunks(exec, n, 64, [&](std::size_t r0, std::size_t r1) {
    for (std::size_t i = r0; i < r1; ++i) {
      if (upper) std::memset(a + i * lda + i + 1, 0, (n - 1 - i) * sizeof(float));
      else std::memset(a + i * lda, 0, i * sizeof(float));
    }
  });
}

/// cholesky_lower without the argument check; zero_upper: clear the strict upper triangle (it
/// holds L^T otherwise).
template <class Exec>
std::size_t cholesky_lower_impl(std::size_t n, float* a, std::size_t lda, bool zero_upper, Exec& exec) {
  using FK = fact_kernels;
  for (std::size_t j0 = 0; j0 < n; j0 += fact_nb) {
    const std::size_t w = std::min(fact_nb, n - j0), j1 = j0 + w;
    float* d = a + j0 * lda + j0;
    if (j0 > 0)  // A[j0:n, J] -= L[j0:n, 0:j0] (L[J, 0:j0])^T, the transpose read from the upper triangle
      gemm_run(gemm_problem{transpose::no, n - j0, w, j0, -1.0f, a + j0 * lda, lda, a + j0, lda, 1.0f, d, lda},
                       exec);
    const std::size_t r = FK::factor_diag(w, d, lda);
    if (r < w) return j0 + r;
    if (j1 < n) {
      float inv[fact_nb];
      for (std::size_t c = 0; c < w; ++c) inv[c] = static_cast<float>(1.0 / static_cast<double>(d[c * lda + c]));
      for_chunks(exec, n - j1, FK::RC, [&](std::size_t r0, std::size_t r1) {
        FK::chol_panel(w, d, inv, a + (j1 + r0) * lda + j0, r1 - r0, a + j0 * lda + j1 + r0, lda);
      });
    }
  }
  if (zero_upper) zero_triangle(n, a, lda, true, exec);
  return n;
}

/// invert_upper without the argument check; the strict lower triangle is zero on return.
template <class Exec>
void invert_upper_impl(std::size_t n, float* a, std::size_t lda, Exec& exec) {
  using FK = fact_kernels;
  const std::size_t blocks = (n + fact_nb - 1) / fact_nb;
  // The diagonal blocks become exact triangles in memory: the products below read them whole.
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t b0 = i / fact_nb * fact_nb;
    std::memset(a + i * lda + b0, 0, (i - b0) * sizeof(float));
  }
  for (std::size_t b = blocks; b-- > 0;) {
    const std::size_t i0 = b * fact_nb, i1 = std::min(n, i0 + fact_nb), w = i1 - i0;
    float* d = a + i0 * lda + i0;
    FK::invert_diag(w, d, lda);
    if (i1 == n) continue;
    // R' = -X[I,I] U[I, i1:n], transposed into the strict lower triangle: s(c) = a[c][0:w], c >= i1.
    for_chunks(exec, n - i1, FK::RC, [&](std::size_t c0, std::size_t c1) {
      FK::trmm_panel(w, d, a + i0 * lda + i1 + c0, c1 - c0, a + (i1 + c0) * lda, lda);
    });
    // X[I, cb] = R'[:, i1:e] X[i1:e, cb] for each diagonal block column cb = [s, e) right of I,
    // the longest first.
    const std::size_t right = blocks - 1 - b;
    const auto task = [&](std::size_t t) {
      const std::size_t cb = blocks - 1 - t, s = cb * fact_nb, e = std::min(n, s + fact_nb);
      gemm_serial(gemm_problem{transpose::yes, w, e - s, e - i1, 1.0f, a + i1 * lda, lda, a + i1 * lda + s, lda, 0.0f,
                               a + i0 * lda + s, lda});
    };
    if (right == 1) task(0);
    else exec(right, task);
  }
  zero_triangle(n, a, lda, false, exec);
}

}  // namespace detail

/// Lower Cholesky factorization in place: a (n x n, row stride lda, symmetric; only the lower
/// triangle is read) becomes L with L L^T = A in its lower triangle, and the strict upper triangle
/// is set to zero. Returns n on success, or the index j of the first pivot that is not positive
/// and finite (a is then partially overwritten). Blocked, left-looking; the updates are gemm
/// products run through exec. Throws quant::error for lda < n or a null a with n > 0.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
std::size_t cholesky_lower(std::size_t n, float* a, std::size_t lda, Exec&& exec = {}) {
  const char* who = "quant::linalg::cholesky_lower";
  if (n == 0) return 0;
  if (a == nullptr) quant::detail::fail(who, ": a is null with n = ", n);
  if (lda < n) quant::detail::fail(who, ": lda = ", lda, " is less than n = ", n);
  return detail::cholesky_lower_impl(n, a, lda, true, exec);
}

/// In-place inverse of an upper-triangular matrix a (n x n, row stride lda; only the upper
/// triangle is read). On return the upper triangle holds the inverse and the strict lower triangle
/// is zero. A zero or non-finite diagonal gives infinities or NaN. Blocked; the updates are gemm
/// products run through exec. Throws quant::error for lda < n or a null a with n > 0.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void invert_upper(std::size_t n, float* a, std::size_t lda, Exec&& exec = {}) {
  const char* who = "quant::linalg::invert_upper";
  if (n == 0) return;
  if (a == nullptr) quant::detail::fail(who, ": a is null with n = ", n);
  if (lda < n) quant::detail::fail(who, ": lda = ", lda, " is less than n = ", n);
  detail::invert_upper_impl(n, a, lda, exec);
}

/// GPTQ's factor. h holds a symmetric positive-definite n x n matrix H (full, row stride ldh). On
/// success h is overwritten by the upper-triangular U with U^T U = H^-1 (positive diagonal, strict
/// lower triangle zero) and n is returned. Otherwise returns the index c (in H's order) of the
/// column whose pivot was not positive and finite: the factorization runs from the last column to
/// the first, so H[c:n, c:n] is the largest trailing block found not positive definite. h is
/// garbage then. Throws quant::error for ldh < n or a null h with n > 0.
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
std::size_t inverse_upper_factor(std::size_t n, float* h, std::size_t ldh, Exec&& exec = {}) {
  const char* who = "quant::linalg::inverse_upper_factor";
  if (n == 0) return 0;
  if (h == nullptr) quant::detail::fail(who, ": h is null with n = ", n);
  if (ldh < n) quant::detail::fail(who, ": ldh = ", ldh, " is less than n = ", n);
  detail::mirror_reversed(n, h, ldh, true, exec);  // lower triangle of J H J
  const std::size_t r = detail::cholesky_lower_impl(n, h, ldh, false, exec);
  if (r < n) return n - 1 - r;
  detail::mirror_reversed(n, h, ldh, false, exec);  // V = J M J in the upper triangle
  detail::invert_upper_impl(n, h, ldh, exec);
  return n;
}

}  // namespace linalg

QUANT_NAMESPACE_END
