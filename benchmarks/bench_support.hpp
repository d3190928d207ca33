// benchmarks/bench_support.hpp: the small harness shared by the benchmark programs.
//
//   timing          measure(f, options): warm-up calls, then timed calls until both a minimum
//                   count and a minimum total time are reached; median and min per call.
//   memory          aligned_array<T>, region lists (the byte ranges of a quantized tensor),
//                   cold_set<T> (N deep copies cycled call by call so that every call reads
//                   from DRAM), l3_bytes() / cold_threshold().
//   read sweep      read_sweep(...): a read-only pass over exactly the given bytes with the widest
//                   loads the build allows; the bandwidth bound a GEMV over the same bytes can at
//                   best reach. Single-threaded, or split over an executor (the same pool the
//                   quant kernels use, so thread start-up is not measured for either).
//   fp32 GEMV       sgemv(...): our own AVX-512 / AVX2 / scalar y = W x (4 rows at a time), and
//                   OpenBLAS cblas_sgemv when QUANT_BENCH_HAVE_OPENBLAS is defined.
//   OpenBLAS setup  ensure_openblas_coretype(argv): OpenBLAS (DYNAMIC_ARCH) reads OPENBLAS_CORETYPE
//                   when it is loaded, before main; so that the kernels do not depend on its CPU
//                   detection (which varies between versions and CPUs: 0.3.21 picks Cooperlake on
//                   this Zen 4), the program sets SkylakeX on AVX-512 CPUs and re-executes itself.
//   misc            a fast random generator, command-line list parsing, CPU description.
//
// Everything here is for the benchmark programs of this folder; nothing is part of quant.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__unix__)
#include <unistd.h>
#endif

#include <quant/quant.hpp>
#include <xsimd/xsimd.hpp>

#ifdef QUANT_BENCH_HAVE_OPENBLAS
#include <cblas.h>
#endif

namespace bench {

// ------------------------------------------------------------------------------------------------
// OpenBLAS core type and re-exec

/// Environment variable set before the re-exec, so the new process can say that it happened.
inline constexpr const char* reexec_marker = "QUANT_BENCH_REEXEC";

/// Call first thing in main. When the program links OpenBLAS, OPENBLAS_CORETYPE is not set and
/// the CPU has AVX-512, sets OPENBLAS_CORETYPE=SkylakeX and re-executes /proc/self/exe with the
/// same argv (OpenBLAS has already chosen its kernels by the time main runs). Returns normally
/// otherwise, or when the exec fails (with a message on stderr).
inline void ensure_openblas_coretype([[maybe_unused]] char** argv) {
#if defined(QUANT_BENCH_HAVE_OPENBLAS) && defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  if (!__builtin_cpu_supports("avx512f")) return;  // SkylakeX kernels would not run
  ::setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  ::setenv(reexec_marker, "1", 1);
  std::fprintf(stderr, "OPENBLAS_CORETYPE was not set: re-executing with OPENBLAS_CORETYPE=SkylakeX\n");
  std::fflush(stderr);
  ::execv("/proc/self/exe", argv);
  std::perror("execv(/proc/self/exe) failed; OpenBLAS keeps the core type it detected");
  ::unsetenv(reexec_marker);
#endif
}

/// One line on the OpenBLAS build and core in use, or why there is none.
inline std::string openblas_description() {
#ifdef QUANT_BENCH_HAVE_OPENBLAS
  std::string s = "OpenBLAS core ";
  s += openblas_get_corename();
  s += " (";
  s += openblas_get_config();
  s += ")";
  if (const char* ct = std::getenv("OPENBLAS_CORETYPE")) {
    s += ", OPENBLAS_CORETYPE=";
    s += ct;
    if (std::getenv(reexec_marker) != nullptr) s += " set by this program (re-executed itself)";
  }
  return s;
#else
  return "OpenBLAS: not found at configure time (no cblas_sgemv comparison)";
#endif
}

inline constexpr bool have_openblas() noexcept {
#ifdef QUANT_BENCH_HAVE_OPENBLAS
  return true;
#else
  return false;
#endif
}

// ------------------------------------------------------------------------------------------------
// Timing

using clock = std::chrono::steady_clock;

inline double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }

struct timing_options {
  double min_time = 0.2;          ///< seconds of timed calls at least (after warm-up)
  std::size_t min_reps = 5;       ///< timed calls at least
  std::size_t max_reps = 100000;  ///< timed calls at most
  std::size_t warmup = 2;         ///< untimed calls first
};

struct timing {
  double median = 0, min = 0, mean = 0;  ///< seconds per call
  std::size_t reps = 0;
};

/// Times f() call by call: options.warmup untimed calls, then timed ones until at least min_reps
/// calls and min_time seconds (at most max_reps calls).
template <class F>
timing measure(F&& f, const timing_options& options) {
  for (std::size_t i = 0; i < options.warmup; ++i) f();
  std::vector<double> t;
  t.reserve(std::min<std::size_t>(options.max_reps, 4096));
  double total = 0;
  while ((t.size() < options.min_reps || total < options.min_time) && t.size() < options.max_reps) {
    const auto t0 = clock::now();
    f();
    const double dt = seconds_since(t0);
    t.push_back(dt);
    total += dt;
  }
  timing r;
  r.reps = t.size();
  if (t.empty()) return r;
  std::sort(t.begin(), t.end());
  const std::size_t n = t.size();
  r.median = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
  r.min = t.front();
  r.mean = total / static_cast<double>(n);
  return r;
}

/// Keeps a value alive so that the computation producing it cannot be dropped.
inline std::atomic<std::uint64_t> sink{0};
inline void consume(std::uint64_t v) noexcept { sink.fetch_xor(v, std::memory_order_relaxed); }

// ------------------------------------------------------------------------------------------------
// Memory

inline constexpr std::size_t cache_line = 64;

/// A 64-byte-aligned heap array; copies are deep.
template <class T>
class aligned_array {
 public:
  aligned_array() = default;
  explicit aligned_array(std::size_t n) : size_(n) {
    if (n == 0) return;
    data_.reset(static_cast<T*>(::operator new[](n * sizeof(T), std::align_val_t{cache_line})));
    std::memset(static_cast<void*>(data_.get()), 0, n * sizeof(T));
  }
  aligned_array(const aligned_array& o) : aligned_array(o.size_) {
    if (size_) std::memcpy(static_cast<void*>(data_.get()), o.data_.get(), size_ * sizeof(T));
  }
  aligned_array(aligned_array&&) noexcept = default;
  aligned_array& operator=(const aligned_array& o) {
    if (this != &o) *this = aligned_array(o);
    return *this;
  }
  aligned_array& operator=(aligned_array&&) noexcept = default;
  ~aligned_array() = default;

  T* data() noexcept { return data_.get(); }
  const T* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  std::size_t bytes() const noexcept { return size_ * sizeof(T); }
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  std::span<T> span() noexcept { return {data(), size_}; }
  std::span<const T> span() const noexcept { return {data(), size_}; }

 private:
  struct deleter {
    void operator()(T* p) const noexcept { ::operator delete[](p, std::align_val_t{cache_line}); }
  };
  std::unique_ptr<T, deleter> data_;
  std::size_t size_ = 0;
};

/// A byte range that a read sweep covers.
struct region {
  const std::byte* data = nullptr;
  std::size_t size = 0;
};

inline std::size_t total_bytes(std::span<const region> rs) noexcept {
  std::size_t n = 0;
  for (const auto& r : rs) n += r.size;
  return n;
}

/// A few regions held by value (no allocation per call).
struct region_list {
  std::array<region, 3> items{};
  std::size_t count = 0;
  void push_back(region r) { items.at(count++) = r; }
  operator std::span<const region>() const noexcept { return {items.data(), count}; }
};

/// The payload of a quantized tensor (codes, scales, zero points): exactly t.bytes() bytes.
template <class F, class G>
region_list regions_of(const quant::tensor<F, G>& t) {
  const auto v = t.cview();
  region_list out;
  const auto add = [&out](auto span) {
    const auto b = std::as_bytes(span);
    if (!b.empty()) out.push_back({b.data(), b.size()});
  };
  add(v.codes());
  add(v.scales());
  add(v.zeros());
  return out;
}
template <class T>
region_list regions_of(const aligned_array<T>& a) {
  region_list out;
  out.push_back({reinterpret_cast<const std::byte*>(a.data()), a.bytes()});
  return out;
}

/// Appends the payload regions of t to out (for sweeps over many tensors).
template <class F, class G>
void append_regions(std::vector<region>& out, const quant::tensor<F, G>& t) {
  const region_list rs = regions_of(t);
  for (const region& r : std::span<const region>(rs)) out.push_back(r);
}

/// Size of the L3 cache of cpu0 as the kernel reports it (0 when unknown).
inline std::size_t l3_bytes() {
  std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
  std::string s;
  if (!(in >> s) || s.empty()) return 0;
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (...) {
    return 0;
  }
  const char unit = pos < s.size() ? s[pos] : 'B';
  switch (unit) {
    case 'K':
    case 'k':
      return static_cast<std::size_t>(v) << 10;
    case 'M':
    case 'm':
      return static_cast<std::size_t>(v) << 20;
    case 'G':
    case 'g':
      return static_cast<std::size_t>(v) << 30;
    default:
      return static_cast<std::size_t>(v);
  }
}

/// The L3 size assumed at least (CI machines may have 260 MiB of L3 in one domain).
inline constexpr std::size_t assumed_l3_floor = std::size_t{260} << 20;

/// A cold set must hold more than this many bytes: 2 x max(L3 of cpu0, 260 MiB).
inline std::size_t cold_threshold() { return 2 * std::max(l3_bytes(), assumed_l3_floor); }

/// Number of copies of `bytes` bytes that exceed `threshold` together (at least 2).
inline std::size_t cold_copies(std::size_t bytes, std::size_t threshold) {
  if (bytes == 0) return 2;
  return std::max<std::size_t>(2, threshold / bytes + 1);
}

/// N deep copies of a value, handed out round robin by next(): the copy returned is always the
/// least recently used one, so with N * bytes well above the caches every call reads from DRAM.
/// Use one cold_set (one cursor) for every kernel that runs on the same copies.
template <class T>
class cold_set {
 public:
  cold_set() = default;
  cold_set(const T& original, std::size_t copies) {
    copies_.reserve(copies);
    for (std::size_t i = 0; i < copies; ++i) copies_.push_back(original);
  }
  T& next() noexcept {
    T& t = copies_[cursor_];
    cursor_ = cursor_ + 1 == copies_.size() ? 0 : cursor_ + 1;
    return t;
  }
  std::size_t size() const noexcept { return copies_.size(); }
  bool empty() const noexcept { return copies_.empty(); }

 private:
  std::vector<T> copies_;
  std::size_t cursor_ = 0;
};

// ------------------------------------------------------------------------------------------------
// Executors

/// Splits [0, n) into `parts` contiguous ranges whose bounds are multiples of `align` (but n);
/// returns range i.
inline std::pair<std::size_t, std::size_t> split(std::size_t n, std::size_t parts, std::size_t i,
                                                 std::size_t align) noexcept {
  const std::size_t units = (n + align - 1) / align;
  const std::size_t per = units / parts, extra = units % parts;
  const std::size_t u0 = i * per + std::min(i, extra);
  const std::size_t u1 = u0 + per + (i < extra ? 1 : 0);
  return {std::min(n, u0 * align), std::min(n, u1 * align)};
}

/// The thread count of an executor: pool.size() for quant::thread_pool, 1 for inline execution.
inline std::size_t executor_threads(const quant::thread_pool& pool) noexcept { return pool.size(); }
inline std::size_t executor_threads(const quant::inline_executor&) noexcept { return 1; }

// ------------------------------------------------------------------------------------------------
// Read sweep

/// Name of the loads read_sweep and sgemv use in this build.
inline constexpr std::string_view simd_name() noexcept {
#if defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "AVX2+FMA";
#else
  return "scalar";
#endif
}

/// Reads every byte of [p, p + n) once, with the widest loads available; returns a checksum.
inline std::uint64_t sweep_bytes(const std::byte* p, std::size_t n) noexcept {
  std::uint64_t acc = 0;
  while (n != 0 && reinterpret_cast<std::uintptr_t>(p) % cache_line != 0) {
    acc += static_cast<std::uint8_t>(*p++);
    --n;
  }
#if defined(__AVX512F__)
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (; n >= 256; p += 256, n -= 256) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(reinterpret_cast<const void*>(p)));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(reinterpret_cast<const void*>(p + 64)));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(reinterpret_cast<const void*>(p + 128)));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(reinterpret_cast<const void*>(p + 192)));
  }
  for (; n >= 64; p += 64, n -= 64) a0 = _mm512_add_epi64(a0, _mm512_load_si512(reinterpret_cast<const void*>(p)));
  a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
  // (not _mm512_reduce_add_epi64: GCC 12 warns -Wmaybe-uninitialized inside it)
  alignas(64) std::uint64_t lanes[8];
  _mm512_store_si512(reinterpret_cast<void*>(lanes), a0);
  for (const std::uint64_t l : lanes) acc += l;
#elif defined(__AVX2__)
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (; n >= 128; p += 128, n -= 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 96)));
  }
  for (; n >= 32; p += 32, n -= 32) a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
  a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) std::uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a0);
  acc += lanes[0] + lanes[1] + lanes[2] + lanes[3];
#else
  std::uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (; n >= 32; p += 32, n -= 32) {
    std::uint64_t w[4];
    std::memcpy(w, p, 32);
    s0 += w[0];
    s1 += w[1];
    s2 += w[2];
    s3 += w[3];
  }
  acc += s0 + s1 + s2 + s3;
#endif
  for (; n != 0; --n) acc += static_cast<std::uint8_t>(*p++);
  return acc;
}

/// Sweeps the bytes [b0, b1) of the concatenation of the regions.
inline std::uint64_t sweep_range(std::span<const region> rs, std::size_t b0, std::size_t b1) noexcept {
  std::uint64_t acc = 0;
  std::size_t base = 0;
  for (const auto& r : rs) {
    const std::size_t lo = std::max(b0, base), hi = std::min(b1, base + r.size);
    if (lo < hi) acc += sweep_bytes(r.data + (lo - base), hi - lo);
    base += r.size;
    if (base >= b1) break;
  }
  return acc;
}

/// Single-threaded read sweep over exactly `bytes` bytes.
inline std::uint64_t read_sweep(const std::byte* p, std::size_t bytes) noexcept {
  const std::uint64_t s = sweep_bytes(p, bytes);
  consume(s);
  return s;
}
inline std::uint64_t read_sweep(std::span<const region> rs) noexcept {
  const std::uint64_t s = sweep_range(rs, 0, total_bytes(rs));
  consume(s);
  return s;
}

/// Read sweep over the regions, split in executor_threads(exec) contiguous byte ranges (cache-line
/// bounds), one task each.
template <class Exec>
std::uint64_t read_sweep(std::span<const region> rs, Exec& exec) {
  const std::size_t parts = executor_threads(exec);
  if (parts <= 1) return read_sweep(rs);
  const std::size_t total = total_bytes(rs);
  std::vector<std::uint64_t> partial(parts * 8, 0);  // one cache line per task
  exec(parts, [&](std::size_t i) {
    const auto [b0, b1] = split(total, parts, i, cache_line);
    partial[i * 8] = sweep_range(rs, b0, b1);
  });
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < parts; ++i) s += partial[i * 8];
  consume(s);
  return s;
}
template <class Exec>
std::uint64_t read_sweep(const std::byte* p, std::size_t bytes, Exec& exec) {
  const region r{p, bytes};
  return read_sweep(std::span<const region>(&r, 1), exec);
}

// ------------------------------------------------------------------------------------------------
// fp32 GEMV baseline: y = W x, W row-major rows x cols with row stride ld

namespace detail {

// Software prefetch distance in bytes ahead of the current column, per row (0 = none). Measured on
// Zen 4: the hardware prefetchers keep up with four row streams, prefetching does not help.
inline constexpr std::size_t sgemv_prefetch = 0;

#if defined(__AVX512F__)
// Through memory: GCC 12 warns -Wmaybe-uninitialized inside _mm512_reduce_add_ps and the 512 -> 256
// extract and cast intrinsics (their _mm256_undefined source). Once per row, so the cost is nil.
inline float hsum(__m512 v) noexcept {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  const __m128 a = _mm_add_ps(_mm_load_ps(t), _mm_load_ps(t + 4));
  const __m128 b = _mm_add_ps(_mm_load_ps(t + 8), _mm_load_ps(t + 12));
  const __m128 s = _mm_add_ps(a, b);
  const __m128 u = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

inline void sgemv4(const float* w, std::size_t ld, const float* x, std::size_t cols, float* y) noexcept {
  const float *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  std::size_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    if constexpr (sgemv_prefetch != 0) {
      constexpr std::size_t d = sgemv_prefetch / sizeof(float);
      _mm_prefetch(reinterpret_cast<const char*>(w0 + c + d), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w1 + c + d), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w2 + c + d), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w3 + c + d), _MM_HINT_T0);
    }
    const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + c), x0, a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + c), x0, a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + c), x0, a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + c), x0, a3);
    b0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + c + 16), x1, b0);
    b1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + c + 16), x1, b1);
    b2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + c + 16), x1, b2);
    b3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + c + 16), x1, b3);
  }
  for (; c < cols; c += 16) {
    const __mmask16 m = cols - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (cols - c)) - 1);
    const __m512 x0 = _mm512_maskz_loadu_ps(m, x + c);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w0 + c), x0, a0);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w1 + c), x0, a1);
    a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w2 + c), x0, a2);
    a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w3 + c), x0, a3);
  }
  y[0] = hsum(_mm512_add_ps(a0, b0));
  y[1] = hsum(_mm512_add_ps(a1, b1));
  y[2] = hsum(_mm512_add_ps(a2, b2));
  y[3] = hsum(_mm512_add_ps(a3, b3));
}

inline float sdot(const float* w, const float* x, std::size_t cols) noexcept {
  __m512 a = _mm512_setzero_ps(), b = a;
  std::size_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    a = _mm512_fmadd_ps(_mm512_loadu_ps(w + c), _mm512_loadu_ps(x + c), a);
    b = _mm512_fmadd_ps(_mm512_loadu_ps(w + c + 16), _mm512_loadu_ps(x + c + 16), b);
  }
  for (; c < cols; c += 16) {
    const __mmask16 m = cols - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (cols - c)) - 1);
    a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_maskz_loadu_ps(m, x + c), a);
  }
  return hsum(_mm512_add_ps(a, b));
}

#elif defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) noexcept {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

inline void sgemv4(const float* w, std::size_t ld, const float* x, std::size_t cols, float* y) noexcept {
  const float *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  std::size_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), x0, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), x0, a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), x0, a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), x0, a3);
    b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c + 8), x1, b0);
    b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c + 8), x1, b1);
    b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c + 8), x1, b2);
    b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c + 8), x1, b3);
  }
  float t0 = hsum(_mm256_add_ps(a0, b0)), t1 = hsum(_mm256_add_ps(a1, b1));
  float t2 = hsum(_mm256_add_ps(a2, b2)), t3 = hsum(_mm256_add_ps(a3, b3));
  for (; c < cols; ++c) {
    t0 += w0[c] * x[c];
    t1 += w1[c] * x[c];
    t2 += w2[c] * x[c];
    t3 += w3[c] * x[c];
  }
  y[0] = t0;
  y[1] = t1;
  y[2] = t2;
  y[3] = t3;
}

inline float sdot(const float* w, const float* x, std::size_t cols) noexcept {
  __m256 a = _mm256_setzero_ps(), b = a;
  std::size_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    a = _mm256_fmadd_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(x + c), a);
    b = _mm256_fmadd_ps(_mm256_loadu_ps(w + c + 8), _mm256_loadu_ps(x + c + 8), b);
  }
  float t = hsum(_mm256_add_ps(a, b));
  for (; c < cols; ++c) t += w[c] * x[c];
  return t;
}

#else
inline void sgemv4(const float* w, std::size_t ld, const float* x, std::size_t cols, float* y) noexcept {
  const float *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
  float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
  for (std::size_t c = 0; c < cols; ++c) {
    t0 += w0[c] * x[c];
    t1 += w1[c] * x[c];
    t2 += w2[c] * x[c];
    t3 += w3[c] * x[c];
  }
  y[0] = t0;
  y[1] = t1;
  y[2] = t2;
  y[3] = t3;
}
inline float sdot(const float* w, const float* x, std::size_t cols) noexcept {
  float t = 0;
  for (std::size_t c = 0; c < cols; ++c) t += w[c] * x[c];
  return t;
}
#endif

}  // namespace detail

/// y[r0, r1) = W[r0, r1) x.
inline void sgemv_rows(const float* w, std::size_t ld, std::size_t cols, const float* x, float* y, std::size_t r0,
                       std::size_t r1) noexcept {
  std::size_t r = r0;
  for (; r + 4 <= r1; r += 4) detail::sgemv4(w + r * ld, ld, x, cols, y + r);
  for (; r < r1; ++r) y[r] = detail::sdot(w + r * ld, x, cols);
}

/// y = W x on the calling thread.
inline void sgemv(const float* w, std::size_t rows, std::size_t cols, const float* x, float* y) noexcept {
  sgemv_rows(w, cols, cols, x, y, 0, rows);
}

/// y = W x over executor_threads(exec) row ranges (multiples of 4 rows), one task each.
template <class Exec>
void sgemv(const float* w, std::size_t rows, std::size_t cols, const float* x, float* y, Exec& exec) {
  const std::size_t parts = executor_threads(exec);
  if (parts <= 1) return sgemv(w, rows, cols, x, y);
  exec(parts, [&](std::size_t i) {
    const auto [r0, r1] = split(rows, parts, i, 4);
    sgemv_rows(w, cols, cols, x, y, r0, r1);
  });
}

#ifdef QUANT_BENCH_HAVE_OPENBLAS
/// OpenBLAS y = W x (row-major) on `threads` OpenBLAS threads.
inline void openblas_sgemv(const float* w, std::size_t rows, std::size_t cols, const float* x, float* y) noexcept {
  cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols), 1.0f, w,
              static_cast<int>(cols), x, 1, 0.0f, y, 1);
}
inline void openblas_threads(std::size_t threads) noexcept { openblas_set_num_threads(static_cast<int>(threads)); }
#endif

// ------------------------------------------------------------------------------------------------
// Random numbers

/// splitmix64: fast, good enough for benchmark data.
class rng {
 public:
  explicit rng(std::uint64_t seed) noexcept : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1).
  float uniform() noexcept { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }
  /// Roughly N(0, 1): the sum of four uniforms, centred and scaled to unit variance.
  float gaussian() noexcept {
    const std::uint64_t a = next(), b = next();
    const float s = static_cast<float>((a & 0xFFFFFFFFu) >> 8) + static_cast<float>(a >> 40) +
                    static_cast<float>((b & 0xFFFFFFFFu) >> 8) + static_cast<float>(b >> 40);
    return (s * 0x1.0p-24f - 2.0f) * 1.7320508f;
  }

 private:
  std::uint64_t s_;
};

inline void fill_gaussian(std::span<float> out, std::uint64_t seed, float stddev) {
  rng g(seed);
  for (auto& v : out) v = stddev * g.gaussian();
}

// ------------------------------------------------------------------------------------------------
// Command line and description

/// Concatenates string pieces (appends; GCC 12 gives false -Wrestrict warnings on chains of +).
template <class... Parts>
std::string message(const Parts&... parts) {
  std::string s;
  (s.append(std::string_view(parts)), ...);
  return s;
}

/// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_list(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const std::size_t comma = s.find(',');
    const std::string_view item = s.substr(0, comma);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  return out;
}

inline std::size_t parse_size(const std::string& s, const char* what) {
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != s.size()) throw std::invalid_argument(message(what, ": not a number: '", s, "'"));
  return static_cast<std::size_t>(v);
}

inline double parse_double(const std::string& s, const char* what) {
  std::size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (...) {
    pos = 0;
  }
  if (pos == 0 || pos != s.size()) throw std::invalid_argument(message(what, ": not a number: '", s, "'"));
  return v;
}

/// "1,2" -> {1, 2}; every entry >= 1.
inline std::vector<std::size_t> parse_threads(std::string_view s) {
  std::vector<std::size_t> out;
  for (const auto& item : split_list(s)) {
    const std::size_t n = parse_size(item, "--threads");
    if (n == 0) throw std::invalid_argument("--threads: thread counts must be >= 1");
    out.push_back(n);
  }
  if (out.empty()) throw std::invalid_argument("--threads: empty list");
  return out;
}

/// Only the names from `allowed`, in their order; throws naming an unknown one.
inline std::vector<std::string> parse_choices(std::string_view s, std::span<const std::string_view> allowed,
                                              const char* what) {
  std::vector<std::string> out;
  for (const auto& item : split_list(s)) {
    if (std::find(allowed.begin(), allowed.end(), item) == allowed.end()) {
      std::string msg = message(what, ": unknown '", item, "' (choose from");
      for (auto a : allowed) msg.append(" ").append(a);
      throw std::invalid_argument(msg.append(")"));
    }
    out.push_back(item);
  }
  if (out.empty()) throw std::invalid_argument(message(what, ": empty list"));
  return out;
}

inline bool contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

/// The CPU model from /proc/cpuinfo ("unknown CPU" if absent).
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown CPU";
}

/// True when every value is finite.
inline bool all_finite(std::span<const float> v) noexcept {
  for (const float f : v)
    if (!std::isfinite(f)) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Executors and the FMA peak

/// Thread pools, one per thread count > 1, shared by every measurement of a program so that each
/// runs on the same persistent threads.
class pools {
 public:
  quant::thread_pool& get(std::size_t threads) {
    auto& p = pools_[threads];
    if (!p) p = std::make_unique<quant::thread_pool>(threads);
    return *p;
  }

 private:
  std::map<std::size_t, std::unique_ptr<quant::thread_pool>> pools_;
};

/// Runs fn(exec) with exec = the inline executor for one thread, the pool otherwise.
template <class Fn>
decltype(auto) with_executor(pools& ps, std::size_t threads, Fn&& fn) {
  if (threads <= 1) {
    quant::inline_executor inl;
    return fn(inl);
  }
  return fn(ps.get(threads));
}

/// `iters` steps of 16 independent FMA chains on the build's widest float vectors, registers
/// only; returns a checksum.
__attribute__((noinline)) inline float fma_chains(std::size_t iters, float seed) {
  using batch = xsimd::batch<float>;
  constexpr std::size_t chains = 16;
  batch acc[chains];
  for (std::size_t i = 0; i < chains; ++i) acc[i] = batch(seed + 1e-3f * static_cast<float>(i));
  const batch x(0.999999f), y(1e-7f);
  for (std::size_t it = 0; it < iters; ++it)
    for (std::size_t i = 0; i < chains; ++i) acc[i] = xsimd::fma(acc[i], x, y);
  batch s = acc[0];
  for (std::size_t i = 1; i < chains; ++i) s = xsimd::fma(acc[i], x, s);
  return xsimd::hadd(s);
}

/// fp32 FMA peak in GFLOP/s of `threads` threads running fma_chains at once (best of `runs` runs
/// of >= 0.1 s): what "fraction of peak" divides by.
inline double fma_peak(pools& ps, std::size_t threads, int runs = 4) {
  const double flops_per_iter = 16.0 * 2.0 * static_cast<double>(xsimd::batch<float>::size);
  static std::size_t iters = 1u << 20;  // grown until a run lasts 0.1 s, then kept
  double best = 0.0;
  for (int run = 0; run < runs; ++run) {
    std::vector<float> out(threads * 16, 0.0f);
    const auto t0 = clock::now();
    with_executor(ps, threads, [&](auto& exec) {
      exec(threads, [&](std::size_t i) { out[i * 16] = fma_chains(iters, 1.0f + static_cast<float>(i)); });
    });
    const double dt = seconds_since(t0);
    float s = 0.0f;
    for (const float v : out) s += v;
    consume(static_cast<std::uint64_t>(s));
    if (dt < 0.1) {
      iters *= 2;
      --run;  // too short to count
      continue;
    }
    best = std::max(best, flops_per_iter * static_cast<double>(iters) * static_cast<double>(threads) / dt / 1e9);
  }
  return best;
}

}  // namespace bench
