// quant/config.hpp: the one place for compiler- and platform-specific switches.
//
// Everything in the library lives in the versioned inline namespace `quant::v0`, so that two
// incompatible versions linked into one program cannot silently share symbols. Headers open it
// with QUANT_NAMESPACE_BEGIN / QUANT_NAMESPACE_END.
#pragma once

#include "version.hpp"

#define QUANT_NAMESPACE_BEGIN \
  namespace quant {           \
  inline namespace v0 {
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
