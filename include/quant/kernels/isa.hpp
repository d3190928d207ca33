// quant/kernels/isa.hpp: the instruction-set tiers the kernels are written for, which one this
// translation unit was compiled for, and which ones the CPU running it has.
//
// The kernels are templates on an ISA tag. Each tag names the xsimd architecture its generic code
// runs on and whether the tier's hand-written overrides (AVX2, AVX-512 with VNNI) exist:
//
//   isa_generic      xsimd::default_arch of the build (SSE2 on a plain x86-64 build, NEON on ARM)
//   isa_sse4_2       xsimd::sse4_2
//   isa_avx2         xsimd::fma3<xsimd::avx2>, plus the AVX2 integer and float overrides
//   isa_avx512       xsimd::avx512bw (F, BW, DQ, VL), plus the AVX-512 overrides
//   isa_avx512_vnni  the same with vpdpbusd for the fast-mode integer dot products
//
// Header-only mode (the default) uses default_isa, the best tier the compiler flags allow
// (-march=native gives the best this CPU has). Every translation unit of a program that includes
// quant must then be compiled with the same -m flags, as with Eigen or xsimd. Binaries that must
// run on several CPUs use the runtime-dispatch mode instead (kernels/dispatch.hpp), whose per-ISA
// translation units share no symbol with the rest of the program.
#pragma once

#include <cstdint>
#include <string_view>

#include <xsimd/xsimd.hpp>

#include "../config.hpp"

QUANT_NAMESPACE_BEGIN

/// The tiers, in increasing order of capability.
enum class isa : unsigned { generic = 0, sse4_2 = 1, avx2 = 2, avx512 = 3, avx512_vnni = 4 };

constexpr std::string_view isa_name(isa i) noexcept {
  switch (i) {
    case isa::generic: return "generic";
    case isa::sse4_2: return "sse4_2";
    case isa::avx2: return "avx2";
    case isa::avx512: return "avx512";
    case isa::avx512_vnni: return "avx512_vnni";
  }
  return "unknown";
}

struct isa_generic {
  static constexpr isa id = isa::generic;
  using arch = xsimd::default_arch;
};
struct isa_sse4_2 {
  static constexpr isa id = isa::sse4_2;
  using arch = xsimd::sse4_2;
};
struct isa_avx2 {
  static constexpr isa id = isa::avx2;
  using arch = xsimd::fma3<xsimd::avx2>;
};
struct isa_avx512 {
  static constexpr isa id = isa::avx512;
  using arch = xsimd::avx512bw;
};
struct isa_avx512_vnni {
  static constexpr isa id = isa::avx512_vnni;
  using arch = xsimd::avx512bw;
};

// The compile-time tier of this translation unit. A tier's overrides are compiled only when the
// flags enable every instruction they use, so a translation unit never contains code its flags
// forbid.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__)
#define QUANT_ISA_AVX512_VNNI 1
#define QUANT_ISA_AVX512 1
#define QUANT_ISA_AVX2 1
using default_isa = isa_avx512_vnni;
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define QUANT_ISA_AVX512 1
#define QUANT_ISA_AVX2 1
using default_isa = isa_avx512;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QUANT_ISA_AVX2 1
using default_isa = isa_avx2;
#elif defined(__SSE4_2__)
using default_isa = isa_sse4_2;
#else
using default_isa = isa_generic;
#endif

// AVX-512 BF16 (vdpbf16ps) is not a tier of its own: the fp8 e4m3 fast GEMV uses it when the
// translation unit's flags enable it (-march=native on Zen 4, Sapphire Rapids...), in the kernels
// of the translation unit's own tier.
#if defined(QUANT_ISA_AVX512) && defined(__AVX512BF16__)
#define QUANT_ISA_AVX512_BF16 1
#endif

/// True when the tag's code can be compiled in this translation unit.
template <class Isa>
inline constexpr bool isa_compiled_v = static_cast<unsigned>(Isa::id) <= static_cast<unsigned>(default_isa::id);

/// The tier header-only calls in this translation unit run on.
constexpr isa compiled_isa() noexcept { return default_isa::id; }

namespace detail {
/// True when the running CPU (and OS) support tier i.
inline bool cpu_supports(isa i) noexcept {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  switch (i) {
    case isa::generic: return true;
    case isa::sse4_2: return __builtin_cpu_supports("sse4.2");
    case isa::avx2:
      // F16C is not queried (clang's builtin does not know it): every AVX2 CPU has it.
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && cpu_supports(isa::avx2);
    case isa::avx512_vnni: return cpu_supports(isa::avx512) && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  const auto a = xsimd::available_architectures();
  switch (i) {
    case isa::generic: return true;
    case isa::sse4_2: return a.sse4_2;
    case isa::avx2: return a.avx2 && a.fma3_avx2;
    case isa::avx512: return a.avx512bw && a.avx512dq;
    case isa::avx512_vnni: return false;
  }
  return false;
#endif
}
}  // namespace detail

/// The best tier this CPU supports (whatever this translation unit was compiled for).
inline isa best_cpu_isa() noexcept {
  for (unsigned i = static_cast<unsigned>(isa::avx512_vnni); i > 0; --i)
    if (detail::cpu_supports(static_cast<isa>(i))) return static_cast<isa>(i);
  return isa::generic;
}

QUANT_NAMESPACE_END
