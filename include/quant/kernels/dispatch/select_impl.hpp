// quant/kernels/dispatch/select_impl.hpp: the selector of the runtime-dispatch library, compiled
// with the program's baseline flags. It picks, once, the best tier the CPU supports among those
// the library was built with (QUANT_DISPATCH_HAVE_<TIER> = 1).
#pragma once

#include "../../quant.hpp"
#include "abi.hpp"

namespace quant_dispatch_v0 {
#if QUANT_DISPATCH_HAVE_AVX512_VNNI
tier_entries tier_avx512_vnni() noexcept;
#endif
#if QUANT_DISPATCH_HAVE_AVX512
tier_entries tier_avx512() noexcept;
#endif
#if QUANT_DISPATCH_HAVE_AVX2
tier_entries tier_avx2() noexcept;
#endif
#if QUANT_DISPATCH_HAVE_SSE4_2
tier_entries tier_sse4_2() noexcept;
#endif
tier_entries tier_generic() noexcept;

tier_entries select_tier() noexcept {
  static const tier_entries chosen = [] {
    using quant::isa;
    using quant::detail::cpu_supports;
#if QUANT_DISPATCH_HAVE_AVX512_VNNI
    if (cpu_supports(isa::avx512_vnni)) return tier_avx512_vnni();
#endif
#if QUANT_DISPATCH_HAVE_AVX512
    if (cpu_supports(isa::avx512)) return tier_avx512();
#endif
#if QUANT_DISPATCH_HAVE_AVX2
    if (cpu_supports(isa::avx2)) return tier_avx2();
#endif
#if QUANT_DISPATCH_HAVE_SSE4_2
    if (cpu_supports(isa::sse4_2)) return tier_sse4_2();
#endif
    return tier_generic();
  }();
  return chosen;
}
}  // namespace quant_dispatch_v0
