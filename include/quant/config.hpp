// quant/config.hpp: the one place for compiler- and platform-specific switches.
//
// Everything in the library lives in the versioned inline namespace `quant::v0`, so that two
// incompatible versions linked into one program cannot silently share symbols. Headers open it
// with QUANT_NAMESPACE_BEGIN / QUANT_NAMESPACE_END.
#pragma once

#include "version.hpp"

// The runtime-dispatch mode (kernels/dispatch.hpp) compiles the library once per ISA tier, each
// time with QUANT_ABI_TAG set (v0_avx2, ...): every symbol of such a translation unit then lives
// in its own inline namespace, so no inline function compiled with AVX-512 flags can be picked by
// the linker for code that must run on an older CPU.
#if defined(QUANT_ABI_TAG)
#define QUANT_NAMESPACE_BEGIN \
  namespace quant {           \
  inline namespace QUANT_ABI_TAG {
#else
#define QUANT_NAMESPACE_BEGIN \
  namespace quant {           \
  inline namespace v0 {
#endif
#define QUANT_NAMESPACE_END \
  }                         \
  }

#if defined(__GNUC__) || defined(__clang__)
#define QUANT_ALWAYS_INLINE inline __attribute__((always_inline))
#define QUANT_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define QUANT_ALWAYS_INLINE __forceinline
#define QUANT_RESTRICT __restrict
#else
#define QUANT_ALWAYS_INLINE inline
#define QUANT_RESTRICT
#endif
