// quant/linalg/gemm.hpp: dense fp32 matrix products, C = alpha op(A) B + beta C, for the
// algorithms (GPTQ's Hessian accumulation and block updates, the factorizations of
// linalg/cholesky.hpp). Row-major throughout; op(A) is A (NN) or A^T (TN).
//
// Method: Goto/BLIS-style blocking into a register-blocked microkernel.
//   k blocks     k is cut into blocks of kc <= 128 of equal size, from k alone.
//   B            per k block and column block of nc <= 128 columns, the kc x nc slice of B is packed
//                into micro-panels of NR columns (kc x NR contiguous, zero padded): 64 KiB, read
//                from L2 by the kernels of every row of the task.
//   A            NN: MR rows of A copied as they are (one panel, rows at a padded stride; the kernel
//                broadcasts from the MR rows); TN: 32 columns of op(A) at a time, i.e. kc rows of
//                32 contiguous floats of the stored A, turned into k-major MR-wide panels (whole
//                cache lines per row of A, which matters when its stride is a large power of two).
//   microkernel  an MR x NR tile of C in vector accumulators; per k step one aligned load per
//                vector of B, one broadcast per row of A, MR * NV fused multiply-adds:
//                  AVX-512 (QUANT_ISA_AVX512)  8 x 32, 16 zmm accumulators
//                  AVX2    (QUANT_ISA_AVX2)    6 x 16, 12 ymm accumulators
//                  other tiers                 6 x 2w on xsimd batches of the build's arch (w lanes)
//   prefetch     the next A block's cache lines, one per k step spread over the current block's
//                kernels; C's tile to L2 when a kernel starts and to L1 24 steps before its
//                epilogue; the packing loops prefetch the rows they will copy next.
// Edge tiles (fewer than MR rows or NR columns) run the same kernel on a copy in a stack tile, so
// every element of C is computed by the same operations wherever it lies: the sum over each k
// block in order, then C = alpha * acc + beta * C for the first block (beta == 0: C is not read)
// and C = alpha * acc + C for the next ones. An element's value depends on k and the tier only,
// never on how the work is split.
//
// Threads: gemm(p, exec) cuts C into a grid of tasks (at most 32, of at least ~16 MFLOP, parts of
// at least 256 rows and nc columns, or smaller ones for at least 4 tasks unless exec is known to
// run one task at a time) choosing the grid that re-reads the least (a column part packs its rows
// of A once per column block, a row part its columns of B once per k block), and runs them
// through exec (any quant::executor). Nothing is allocated on the heap: each call or task uses
// 81 KiB of stack for its packing buffers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>

#include "../config.hpp"
#include "../core/error.hpp"
#include "../kernels/isa.hpp"
#include "../kernels/threading.hpp"

#if defined(QUANT_ISA_AVX2) || defined(QUANT_ISA_AVX512)
#include <immintrin.h>
#endif

QUANT_NAMESPACE_BEGIN

namespace linalg {

/// Whether the A operand of gemm is used as stored or transposed.
enum class transpose : bool { no = false, yes = true };

/// One product C = alpha * op(A) * B + beta * C, all row-major.
///  op(A) is m x k: A itself (m x k, row stride lda) or, with ta = transpose::yes, the transpose of
///  A stored k x m (row stride lda). B is k x n (row stride ldb), C is m x n (row stride ldc).
///  beta == 0 means C is not read (it may hold NaN).
struct gemm_problem {
  transpose ta;
  std::size_t m, n, k;
  float alpha;
  const float* a;
  std::size_t lda;
  const float* b;
  std::size_t ldb;
  float beta;
  float* c;
  std::size_t ldc;
};

/// A caller-supplied replacement for gemm (e.g. a BLAS); when non-empty, algorithms call it
/// instead of linalg::gemm.
using gemm_hook = std::function<void(const gemm_problem&)>;

/// Throws quant::error, prefixed by `who`, when a row stride is smaller than its matrix's row
/// length or a pointer is null while its matrix has elements.
inline void check(const gemm_problem& p, const char* who) {
  const bool ta = p.ta == transpose::yes;
  const std::size_t arows = ta ? p.k : p.m, acols = ta ? p.m : p.k;
  const char* ashape = ta ? " (a is stored k x m = " : " (a is m x k = ";
  if (arows != 0 && acols != 0) {
    if (p.a == nullptr) quant::detail::fail(who, ": a is null", ashape, arows, " x ", acols, ")");
    if (p.lda < acols)
      quant::detail::fail(who, ": lda = ", p.lda, " is less than the row length ", acols, " of a", ashape, arows, " x ",
                          acols, ")");
  }
  if (p.k != 0 && p.n != 0) {
    if (p.b == nullptr) quant::detail::fail(who, ": b is null (b is k x n = ", p.k, " x ", p.n, ")");
    if (p.ldb < p.n)
      quant::detail::fail(who, ": ldb = ", p.ldb, " is less than the row length ", p.n, " of b (k x n = ", p.k, " x ",
                          p.n, ")");
  }
  if (p.m != 0 && p.n != 0) {
    if (p.c == nullptr) quant::detail::fail(who, ": c is null (c is m x n = ", p.m, " x ", p.n, ")");
    if (p.ldc < p.n)
      quant::detail::fail(who, ": ldc = ", p.ldc, " is less than the row length ", p.n, " of c (m x n = ", p.m, " x ",
                          p.n, ")");
  }
}

namespace detail {

// ------------------------------------------------------------------------------------------------
// Lane policies: the vector operations the kernels use, per tier.

#if defined(QUANT_ISA_AVX512)
struct la_lanes512 {
  using f = __m512;
  static constexpr std::size_t n = 16;
  static QUANT_ALWAYS_INLINE f zero() noexcept { return _mm512_setzero_ps(); }
  static QUANT_ALWAYS_INLINE f set1(float v) noexcept { return _mm512_set1_ps(v); }
  static QUANT_ALWAYS_INLINE f load(const float* p) noexcept { return _mm512_loadu_ps(p); }
  static QUANT_ALWAYS_INLINE f load_aligned(const float* p) noexcept { return _mm512_load_ps(p); }
  static QUANT_ALWAYS_INLINE void store(float* p, f v) noexcept { _mm512_storeu_ps(p, v); }
  static QUANT_ALWAYS_INLINE f mul(f a, f b) noexcept { return _mm512_mul_ps(a, b); }
  static QUANT_ALWAYS_INLINE f fmadd(f a, f b, f c) noexcept { return _mm512_fmadd_ps(a, b, c); }
  static QUANT_ALWAYS_INLINE f fnmadd(f a, f b, f c) noexcept { return _mm512_fnmadd_ps(a, b, c); }
};
#endif
#if defined(QUANT_ISA_AVX2)
struct la_lanes256 {
  using f = __m256;
  static constexpr std::size_t n = 8;
  static QUANT_ALWAYS_INLINE f zero() noexcept { return _mm256_setzero_ps(); }
  static QUANT_ALWAYS_INLINE f set1(float v) noexcept { return _mm256_set1_ps(v); }
  static QUANT_ALWAYS_INLINE f load(const float* p) noexcept { return _mm256_loadu_ps(p); }
  static QUANT_ALWAYS_INLINE f load_aligned(const float* p) noexcept { return _mm256_load_ps(p); }
  static QUANT_ALWAYS_INLINE void store(float* p, f v) noexcept { _mm256_storeu_ps(p, v); }
  static QUANT_ALWAYS_INLINE f mul(f a, f b) noexcept { return _mm256_mul_ps(a, b); }
  static QUANT_ALWAYS_INLINE f fmadd(f a, f b, f c) noexcept { return _mm256_fmadd_ps(a, b, c); }
  static QUANT_ALWAYS_INLINE f fnmadd(f a, f b, f c) noexcept { return _mm256_fnmadd_ps(a, b, c); }
};
#endif
/// Any tier: xsimd batches of the architecture (fused multiply-add where it exists).
template <class Arch>
struct la_lanes_xsimd {
  using f = xsimd::batch<float, Arch>;
  static constexpr std::size_t n = f::size;
  static QUANT_ALWAYS_INLINE f zero() noexcept { return f(0.0f); }
  static QUANT_ALWAYS_INLINE f set1(float v) noexcept { return f(v); }
  static QUANT_ALWAYS_INLINE f load(const float* p) noexcept { return f::load_unaligned(p); }
  static QUANT_ALWAYS_INLINE f load_aligned(const float* p) noexcept { return f::load_aligned(p); }
  static QUANT_ALWAYS_INLINE void store(float* p, f v) noexcept { v.store_unaligned(p); }
  static QUANT_ALWAYS_INLINE f mul(f a, f b) noexcept { return a * b; }
  static QUANT_ALWAYS_INLINE f fmadd(f a, f b, f c) noexcept { return xsimd::fma(a, b, c); }
  static QUANT_ALWAYS_INLINE f fnmadd(f a, f b, f c) noexcept { return xsimd::fnma(a, b, c); }
};

/// The lanes and the register tile of a tier: MR rows of C by NV vectors.
template <class Isa>
struct la_config {
  using lanes = la_lanes_xsimd<typename Isa::arch>;
  static constexpr std::size_t mr = 6, nv = 2;
};
#if defined(QUANT_ISA_AVX2)
template <>
struct la_config<isa_avx2> {
  using lanes = la_lanes256;
  static constexpr std::size_t mr = 6, nv = 2;
};
#endif
#if defined(QUANT_ISA_AVX512)
template <>
struct la_config<isa_avx512> {
  using lanes = la_lanes512;
  static constexpr std::size_t mr = 8, nv = 2;
};
template <>
struct la_config<isa_avx512_vnni> : la_config<isa_avx512> {};
#endif

#if defined(__GNUC__) || defined(__clang__)
#define QUANT_LA_INLINE_LAMBDA __attribute__((always_inline))
#else
#define QUANT_LA_INLINE_LAMBDA
#endif
// The k loops of the kernels are already unrolled across the register tile; unrolling them over k
// as well makes clang spill accumulators.
#if defined(__clang__)
#define QUANT_LA_NO_UNROLL _Pragma("clang loop unroll(disable)")
#else
#define QUANT_LA_NO_UNROLL
#endif

/// Calls f(std::integral_constant<std::size_t, i>{}) for i = 0 .. N-1, unrolled.
template <std::size_t N, class F>
QUANT_ALWAYS_INLINE void static_for(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) QUANT_LA_INLINE_LAMBDA {
    (f(std::integral_constant<std::size_t, I>{}), ...);
  }(std::make_index_sequence<N>{});
}

QUANT_ALWAYS_INLINE void prefetch_read(const void* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}
QUANT_ALWAYS_INLINE void prefetch_l2(const void* p) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 2);
#else
  (void)p;
#endif
}

// ------------------------------------------------------------------------------------------------
// Blocking constants

/// k blocks of at most this many (equal sizes).
inline constexpr std::size_t gemm_kc_max = 128;
/// Floats of the packing buffer (80 KiB): B's kc x nc slice, then A's packed block.
inline constexpr std::size_t gemm_buf = 20480;
/// Row stride of the packed A panel in the NN layout (padded so that its rows do not share cache
/// sets).
inline constexpr std::size_t gemm_a_stride = gemm_kc_max + 16;
/// B gets 16384 floats (kc = 128: nc = 128). NN packs one MR-row panel of A at a time; TN packs
/// blocks of 32 columns (128 contiguous bytes of each row of the stored A, whole cache lines
/// however large its row stride).
inline constexpr std::size_t gemm_bbuf = 16384, gemm_tn_mc = 32;
/// Tasks: at most this many, of at least this many flops, of at least this many rows.
inline constexpr std::size_t gemm_max_tasks = 32;
inline constexpr double gemm_task_flops = 16.0e6;
inline constexpr std::size_t gemm_min_task_rows = 256;

/// Cache lines to prefetch: `total` lines in rows (row stride ld) of per_row lines each, spread
/// over the kernels of a block, per_kernel lines each; slice(i) is kernel i's share (base at its
/// first row, line its first line in that row, count its number of lines).
struct prefetch_plan {
  const float* base = nullptr;
  std::size_t ld = 0, per_row = 1, total = 0, per_kernel = 0, line = 0, count = 0;
  prefetch_plan slice(std::size_t i) const noexcept {
    prefetch_plan s = *this;
    const std::size_t q = i * per_kernel;
    if (base == nullptr || q >= total) {
      s.count = 0;
      return s;
    }
    s.base = base + q / per_row * ld;
    s.line = q % per_row;
    s.count = std::min(per_kernel, total - q);
    return s;
  }
};

/// How C = epilogue(acc) is written: C = alpha acc (C not read), C = alpha acc + beta C, or
/// C = alpha acc + C.
enum class epilogue : int { assign = 0, scale = 1, add = 2 };

/// The blocks of a product: kc from k and the layout alone (blocks of equal size), mc rows of A
/// packed at a time, nc columns of B.
struct gemm_blocking {
  std::size_t kc, mc, nc;
};
template <std::size_t MR, std::size_t NR>
constexpr gemm_blocking blocking_for(std::size_t k, bool ta) noexcept {
  const std::size_t blocks = k == 0 ? 1 : (k + gemm_kc_max - 1) / gemm_kc_max;
  const std::size_t kc = k == 0 ? 1 : (k + blocks - 1) / blocks;
  const std::size_t mc = ta ? gemm_tn_mc / MR * MR : MR;
  const std::size_t nc = std::min<std::size_t>(std::max(gemm_bbuf / kc / NR * NR, NR), 4096);
  return {kc, mc, nc};
}

// ------------------------------------------------------------------------------------------------
// The microkernel: C[0:MR, 0:NR] (row stride ldc) from a packed A panel and a packed B panel.

template <class Isa>
struct gemm_kernels {
  using cfg = la_config<Isa>;
  using V = typename cfg::lanes;
  using f = typename V::f;
  static constexpr std::size_t W = V::n, MR = cfg::mr, NV = cfg::nv, NR = NV * W;
  static constexpr std::size_t AS = gemm_a_stride;

  /// acc += a(:, p) b(p, :).
  template <bool KMajor>
  static QUANT_ALWAYS_INLINE void step(f (&acc)[MR][NV], const float* QUANT_RESTRICT a, const float* QUANT_RESTRICT b,
                                       std::size_t p) noexcept {
    f bv[NV];
    static_for<NV>([&](auto j) QUANT_LA_INLINE_LAMBDA { bv[j] = V::load_aligned(b + p * NR + j * W); });
    static_for<MR>([&](auto i) QUANT_LA_INLINE_LAMBDA {
      const f av = V::set1(KMajor ? a[p * MR + i] : a[i * AS + p]);
      static_for<NV>([&](auto j) QUANT_LA_INLINE_LAMBDA { acc[i][j] = V::fmadd(av, bv[j], acc[i][j]); });
    });
  }

  /// kc steps of acc += a(:, p) b(p, :); then the epilogue. KMajor: a[p * MR + i] (TN panel),
  /// else a[i * AS + p] (NN panel). b: kc rows of NR floats, 64-byte aligned. pf: cache lines to
  /// prefetch, one per k step.
  template <bool KMajor>
  static void tile(std::size_t kc, const float* QUANT_RESTRICT a, const float* QUANT_RESTRICT b, float* c,
                   std::size_t ldc, float alpha, float beta, epilogue e, prefetch_plan pf = {}) noexcept {
    f acc[MR][NV];
    static_for<MR>([&](auto i) { static_for<NV>([&](auto j) { acc[i][j] = V::zero(); }); });
    // C's lines: to L2 now, to L1 shortly before the epilogue (with a large power-of-two ldc the
    // tile's rows share one L1 set and would not survive the k loop there).
    const bool read_c = e != epilogue::assign;
    if (read_c)
      static_for<MR>([&](auto i) QUANT_LA_INLINE_LAMBDA {
        prefetch_l2(c + i * ldc);
        prefetch_l2(c + i * ldc + NR - 1);
      });
    const std::size_t c_at = read_c ? (kc > 24 ? kc - 24 : 0) : kc;
    const std::size_t pf_steps = std::min(kc, pf.count);
    const float* pf_row = pf.base;
    std::size_t pf_line = pf.line;
    QUANT_LA_NO_UNROLL
    for (std::size_t p = 0; p < kc; ++p) {
      if (p < pf_steps) {
        prefetch_read(pf_row + pf_line * 16);
        if (++pf_line == pf.per_row) pf_line = 0, pf_row += pf.ld;
      }
      if (p == c_at)
        static_for<MR>([&](auto i) QUANT_LA_INLINE_LAMBDA {
          prefetch_read(c + i * ldc);
          prefetch_read(c + i * ldc + NR - 1);
        });
      step<KMajor>(acc, a, b, p);
    }
    const f va = V::set1(alpha);
    if (e == epilogue::assign) {
      static_for<MR>([&](auto i) {
        static_for<NV>([&](auto j) { V::store(c + i * ldc + j * W, V::mul(acc[i][j], va)); });
      });
    } else if (e == epilogue::scale) {
      const f vb = V::set1(beta);
      static_for<MR>([&](auto i) {
        static_for<NV>([&](auto j) {
          float* cp = c + i * ldc + j * W;
          V::store(cp, V::fmadd(acc[i][j], va, V::mul(V::load(cp), vb)));
        });
      });
    } else {
      static_for<MR>([&](auto i) {
        static_for<NV>([&](auto j) {
          float* cp = c + i * ldc + j * W;
          V::store(cp, V::fmadd(acc[i][j], va, V::load(cp)));
        });
      });
    }
  }

  /// kc x nc of B (row stride ldb) into micro-panels of NR columns: dst[(j / NR) * kc * NR + p * NR +
  /// j % NR], columns past nc zero.
  static void pack_b(std::size_t kc, std::size_t nc, const float* b, std::size_t ldb, float* dst) noexcept {
    constexpr std::size_t ahead = 8;
    const std::size_t full = nc / NR * NR;
    for (std::size_t p = 0; p < kc; ++p) {
      if (p + ahead < kc) {
        const float* r = b + (p + ahead) * ldb;
        for (std::size_t c = 0; c < nc; c += 16) prefetch_read(r + c);
        prefetch_read(r + nc - 1);
      }
      const float* src = b + p * ldb;
      std::size_t j = 0;
      for (; j < full; j += NR) {
        float* d = dst + j * kc + p * NR;
        static_for<NV>([&](auto v) { V::store(d + v * W, V::load(src + j + v * W)); });
      }
      if (j < nc) {
        float* d = dst + j * kc + p * NR;
        std::size_t t = 0;
        for (; t < nc - j; ++t) d[t] = src[j + t];
        for (; t < NR; ++t) d[t] = 0.0f;
      }
    }
  }

  /// NN: the kc-deep slice of MR rows of A at a (A(i0, p0), row stride lda; mr valid, the rest
  /// zero) into dst[i * AS + p], rows copied as they are.
  static void pack_a_nn(std::size_t kc, std::size_t mr, const float* a, std::size_t lda, float* dst) noexcept {
    for (std::size_t i = 0; i < mr; ++i) std::memcpy(dst + i * AS, a + i * lda, kc * sizeof(float));
    for (std::size_t i = mr; i < MR; ++i) std::memset(dst + i * AS, 0, kc * sizeof(float));
  }

  /// Rows pack_a_tn prefetches ahead of the one it copies.
  static constexpr std::size_t pack_ahead = 32;

  /// TN: the kc x mc block of the stored k x m matrix at a (row stride lda) into ceil(mc / MR)
  /// k-major panels of psize floats (columns past mc zero). Row by row, whole cache lines, with the
  /// rows `ahead` further on prefetched: with a large power-of-two stride the rows share a few
  /// cache sets and lines prefetched long before would be evicted before use.
  static void pack_a_tn(std::size_t kc, std::size_t mc, const float* a, std::size_t lda, float* dst,
                        std::size_t psize) noexcept {
    constexpr std::size_t ahead = pack_ahead;
    const std::size_t full = mc / MR;
    for (std::size_t p = 0; p < kc; ++p) {
      if (p + ahead < kc) {
        const float* r = a + (p + ahead) * lda;
        for (std::size_t c = 0; c < mc; c += 16) prefetch_read(r + c);
        prefetch_read(r + mc - 1);
      }
      const float* src = a + p * lda;
      for (std::size_t q = 0; q < full; ++q) std::memcpy(dst + q * psize + p * MR, src + q * MR, MR * sizeof(float));
      if (full * MR < mc) {
        float* d = dst + full * psize + p * MR;
        std::size_t i = 0;
        for (; i < mc - full * MR; ++i) d[i] = src[full * MR + i];
        for (; i < MR; ++i) d[i] = 0.0f;
      }
    }
  }

  /// Floats of one packed A panel.
  static constexpr std::size_t panel_floats(bool ta, std::size_t kc) noexcept { return ta ? MR * kc : MR * AS; }

  /// The whole product on the calling thread.
  template <bool TA>
  static void run(const gemm_problem& p, gemm_blocking bl) noexcept {
    alignas(64) float buf[gemm_buf];
    alignas(64) float ctile[MR * NR];
    static_assert(gemm_buf >= gemm_bbuf + gemm_kc_max * gemm_tn_mc && gemm_buf >= gemm_bbuf + MR * AS);
    float* const bbuf = buf;
    float* const abuf = buf + gemm_bbuf;
    const std::size_t m = p.m, n = p.n, k = p.k;
    // Column blocks: the NR-wide panels of C shared out evenly, at most nc / NR per block.
    const std::size_t panels = (n + NR - 1) / NR, per_block = bl.nc / NR;
    const std::size_t blocks = (panels + per_block - 1) / per_block;
    for (std::size_t pc = 0; pc < k; pc += bl.kc) {
      const std::size_t kc = std::min(bl.kc, k - pc);
      const epilogue e = pc != 0 || p.beta == 1.0f ? epilogue::add
                         : p.beta == 0.0f          ? epilogue::assign
                                                   : epilogue::scale;
      const std::size_t psize = panel_floats(TA, kc);
      for (std::size_t jb = 0; jb < blocks; ++jb) {
        const auto [jp0, jp1] = quant::detail::split_rows(panels, blocks, jb, 1);
        const std::size_t jc = jp0 * NR, nc = std::min(n, jp1 * NR) - jc, jpanels = jp1 - jp0;
        pack_b(kc, nc, p.b + pc * p.ldb + jc, p.ldb, bbuf);
        for (std::size_t ic = 0; ic < m; ic += bl.mc) {
          const std::size_t mc = std::min(bl.mc, m - ic);
          const std::size_t ipanels = (mc + MR - 1) / MR;
          if constexpr (TA) {
            pack_a_tn(kc, mc, p.a + pc * p.lda + ic, p.lda, abuf, psize);
          } else {
            for (std::size_t ir = 0; ir < mc; ir += MR)
              pack_a_nn(kc, std::min(MR, mc - ir), p.a + (ic + ir) * p.lda + pc, p.lda, abuf + ir / MR * psize);
          }
          // The next A block's first cache lines, prefetched over this block's kernels: NN, its MR
          // rows of kc floats; TN, the rows pack_a_tn reads before its own prefetches arrive.
          prefetch_plan pf{};
          if (ic + mc < m) {
            const std::size_t next_mc = std::min(bl.mc, m - ic - mc);
            pf.base = TA ? p.a + pc * p.lda + ic + mc : p.a + (ic + mc) * p.lda + pc;
            pf.ld = p.lda;
            pf.per_row = TA ? (next_mc + 15) / 16 : (kc + 15) / 16;
            const std::size_t kernels = ipanels * jpanels;
            pf.total = (TA ? std::min(kc, pack_ahead) : next_mc) * pf.per_row;
            pf.per_kernel = (pf.total + kernels - 1) / kernels;
          }
          std::size_t kernel_index = 0;
          for (std::size_t ir = 0; ir < mc; ir += MR) {
            const std::size_t mr = std::min(MR, mc - ir);
            const float* ap = abuf + ir / MR * psize;
            for (std::size_t jr = 0; jr < nc; jr += NR, ++kernel_index) {
              const std::size_t nr = std::min(NR, nc - jr);
              float* cp = p.c + (ic + ir) * p.ldc + jc + jr;
              const float* bp = bbuf + jr * kc;
              const prefetch_plan kpf = pf.slice(kernel_index);
              if (mr == MR && nr == NR) {
                tile<TA>(kc, ap, bp, cp, p.ldc, p.alpha, p.beta, e, kpf);
              } else {  // edge: the same kernel on a copy
                if (e != epilogue::assign)
                  for (std::size_t i = 0; i < mr; ++i) std::memcpy(ctile + i * NR, cp + i * p.ldc, nr * sizeof(float));
                tile<TA>(kc, ap, bp, ctile, NR, p.alpha, p.beta, e, kpf);
                for (std::size_t i = 0; i < mr; ++i) std::memcpy(cp + i * p.ldc, ctile + i * NR, nr * sizeof(float));
              }
            }
          }
        }
      }
    }
  }
};

using gemm_default = gemm_kernels<default_isa>;

/// C = beta * C (beta == 0: zeros, C not read).
inline void scale_c(const gemm_problem& p) noexcept {
  for (std::size_t i = 0; i < p.m; ++i) {
    float* c = p.c + i * p.ldc;
    if (p.beta == 0.0f) std::fill(c, c + p.n, 0.0f);
    else if (p.beta != 1.0f)
      for (std::size_t j = 0; j < p.n; ++j) c[j] *= p.beta;
  }
}

/// The product restricted to rows [i0, i1) and columns [j0, j1) of C.
inline gemm_problem sub_problem(const gemm_problem& p, std::size_t i0, std::size_t i1, std::size_t j0,
                                std::size_t j1) noexcept {
  gemm_problem s = p;
  s.m = i1 - i0;
  s.n = j1 - j0;
  s.a = p.ta == transpose::yes ? p.a + i0 : p.a + i0 * p.lda;
  s.b = p.b + j0;
  s.c = p.c + i0 * p.ldc + j0;
  return s;
}

/// The whole (valid, non-empty) product on the calling thread.
inline void gemm_serial(const gemm_problem& p) noexcept {
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0 || p.alpha == 0.0f) return scale_c(p);
  using K = gemm_default;
  const gemm_blocking bl = blocking_for<K::MR, K::NR>(p.k, p.ta == transpose::yes);
  if (p.ta == transpose::yes) K::run<true>(p, bl);
  else K::run<false>(p, bl);
}

/// The task grid of a product: tn column parts (whole column blocks where possible) times tm row
/// parts.
struct gemm_split {
  std::size_t tm = 1, tn = 1, col_align = 1, row_align = 1;
  std::size_t tasks() const noexcept { return tm * tn; }
};
inline gemm_split split_for(const gemm_problem& p, bool parallel = true) noexcept {
  using K = gemm_default;
  gemm_split s;
  s.row_align = K::MR;
  s.col_align = K::NR;
  if (p.m == 0 || p.n == 0 || p.k == 0 || p.alpha == 0.0f) return s;
  const double m = static_cast<double>(p.m), n = static_cast<double>(p.n), k = static_cast<double>(p.k);
  const std::size_t want =
      static_cast<std::size_t>(std::clamp(2.0 * m * n * k / gemm_task_flops, 1.0, static_cast<double>(gemm_max_tasks)));
  if (want <= 1) return s;
  // Every task packs (reads) its rows of A once per column block and its columns of B once per
  // k block: tn column parts read A tn times, tm row parts read B tm times. Parts of at least
  // gemm_min_task_rows rows and nc columns (packing amortized over them), as many as `want`; when
  // those give fewer than min(want, 4) tasks and the executor may run them in parallel, parts down
  // to a quarter of that size, just enough of them for 4 tasks. Among the grids with the most
  // tasks up to that target, the one that reads the least.
  const gemm_blocking bl = blocking_for<K::MR, K::NR>(p.k, p.ta == transpose::yes);
  std::size_t row_max = std::max<std::size_t>(1, p.m / gemm_min_task_rows);
  std::size_t col_max = std::max<std::size_t>(1, p.n / bl.nc);
  std::size_t target = want;
  if (parallel && row_max * col_max < std::min<std::size_t>(want, 4)) {
    target = std::min<std::size_t>(want, 4);
    row_max = std::max<std::size_t>(1, p.m / (gemm_min_task_rows / 4));
    col_max = std::max<std::size_t>(1, p.n / std::max(bl.nc / 4, K::NR));
  }
  std::size_t best_tasks = 0;
  double best_cost = 0.0;
  for (std::size_t tn = 1; tn <= std::min(target, col_max); ++tn) {
    const std::size_t tm = std::min((target + tn - 1) / tn, row_max);
    const std::size_t tasks = std::min(tm * tn, target);
    const double cost = static_cast<double>(tn) * m * k + static_cast<double>(tm) * k * n;
    if (tasks > best_tasks || (tasks == best_tasks && cost < best_cost)) {
      best_tasks = tasks;
      best_cost = cost;
      s.tm = tm;
      s.tn = tn;
    }
  }
  return s;
}

/// Rows or columns [first, second) of part i of a split.
inline std::pair<std::size_t, std::size_t> part(std::size_t total, std::size_t parts, std::size_t i,
                                                std::size_t align) noexcept {
  return quant::detail::split_rows(total, parts, i, align);
}

/// False when exec certainly runs its tasks one after the other (the inline executor, a pool of
/// one thread).
template <class Exec>
bool may_run_parallel(const Exec& exec) noexcept {
  if constexpr (std::is_same_v<std::remove_cvref_t<Exec>, inline_executor>) return false;
  else if constexpr (requires { exec.size(); }) return exec.size() > 1;
  else return true;
}

/// gemm without the argument check.
template <class Exec>
void gemm_run(const gemm_problem& p, Exec& exec) {
  if (p.m == 0 || p.n == 0) return;
  const gemm_split s = split_for(p, may_run_parallel(exec));
  if (s.tasks() <= 1) return gemm_serial(p);
  exec(s.tasks(), [&](std::size_t t) {
    const auto [i0, i1] = part(p.m, s.tm, t % s.tm, s.row_align);
    const auto [j0, j1] = part(p.n, s.tn, t / s.tm, s.col_align);
    if (i0 < i1 && j0 < j1) gemm_serial(sub_problem(p, i0, i1, j0, j1));
  });
}

}  // namespace detail

/// C = alpha * op(A) * B + beta * C (see gemm_problem), split into tasks run through exec. The
/// result does not depend on the executor or the number of tasks. Throws quant::error for a row
/// stride below its row length or a null pointer (linalg::check).
template <class Exec = inline_executor>
  requires executor<std::remove_reference_t<Exec>>
void gemm(const gemm_problem& p, Exec&& exec = {}) {
  check(p, "quant::linalg::gemm");
  detail::gemm_run(p, exec);
}

}  // namespace linalg

QUANT_NAMESPACE_END
