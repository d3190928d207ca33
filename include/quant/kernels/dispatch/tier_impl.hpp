// quant/kernels/dispatch/tier_impl.hpp: the body of one per-ISA translation unit of the
// runtime-dispatch library. The CMake helper quant_add_dispatch_library() compiles it once per
// tier, with that tier's -m flags and
//   -DQUANT_ABI_TAG=v0_<tier> -DQUANT_DISPATCH_TIER_FN=tier_<tier>
// Every built-in format with every scheme and scale type is instantiated for both modes.
#pragma once

#if !defined(QUANT_ABI_TAG) || !defined(QUANT_DISPATCH_TIER_FN)
#error "tier_impl.hpp is compiled by quant_add_dispatch_library() with QUANT_ABI_TAG and QUANT_DISPATCH_TIER_FN"
#endif

#include <new>

#include "../../quant.hpp"
#include "abi.hpp"

namespace quant_dispatch_v0 {
namespace {

using namespace quant;

template <class Fmt, bool Asym, class Scale>
bool run_gemv(const call& c) {
  const detail::gemv_problem m{c.codes, c.row_bytes, c.scales, c.zeros,
                               scale_grid{c.rows, c.cols, c.group, c.groups_per_row, c.single}};
  auto go = [&](auto k) {
    using K = decltype(k);
    detail::heap_workspace ws(K::workspace_bytes(m.grid));
    const detail::gemv_prepared p = K::prepare(m.grid, c.x, ws.p);
    K::rows(m, p, c.out, c.r0, c.r1);
  };
  if (c.fast) go(detail::gemv_kernel<Fmt, Asym, Scale, default_isa, true>{});
  else go(detail::gemv_kernel<Fmt, Asym, Scale, default_isa, false>{});
  return true;
}

template <class Fmt, bool Asym, class Scale>
bool run_dequantize(const call& c) {
  const detail::gemv_problem m{c.codes, c.row_bytes, c.scales, c.zeros,
                               scale_grid{c.rows, c.cols, c.group, c.groups_per_row, c.single}};
  detail::dequantize_kernel<Fmt, Asym, Scale, default_isa>::rows(m, c.out, c.ld, c.r0, c.r1);
  return true;
}

template <bool Gemv, class Fmt, bool Asym>
bool by_scale(const call& c) {
  switch (c.scales_type) {
    case scale_kind::f32: return Gemv ? run_gemv<Fmt, Asym, float>(c) : run_dequantize<Fmt, Asym, float>(c);
    case scale_kind::f16: return Gemv ? run_gemv<Fmt, Asym, fp16>(c) : run_dequantize<Fmt, Asym, fp16>(c);
    case scale_kind::bf16: return Gemv ? run_gemv<Fmt, Asym, bf16>(c) : run_dequantize<Fmt, Asym, bf16>(c);
    case scale_kind::e8m0: return Gemv ? run_gemv<Fmt, Asym, e8m0>(c) : run_dequantize<Fmt, Asym, e8m0>(c);
  }
  return false;
}

template <bool Gemv, class Fmt>
bool by_scheme(const call& c) {
  if constexpr (is_integer_format_v<Fmt>)
    if (c.asymmetric) return by_scale<Gemv, Fmt, true>(c);
  if (c.asymmetric) return false;
  return by_scale<Gemv, Fmt, false>(c);
}

// One switch per call, outside every loop.
template <bool Gemv>
bool by_format(const call& c) {
  switch (c.format_id) {
    case format_traits<int8>::id: return by_scheme<Gemv, int8>(c);
    case format_traits<int4>::id: return by_scheme<Gemv, int4>(c);
    case format_traits<int3>::id: return by_scheme<Gemv, int3>(c);
    case format_traits<int2>::id: return by_scheme<Gemv, int2>(c);
    case format_traits<nf4>::id: return by_scheme<Gemv, nf4>(c);
    case format_traits<fp8_e4m3>::id: return by_scheme<Gemv, fp8_e4m3>(c);
    case format_traits<fp8_e5m2>::id: return by_scheme<Gemv, fp8_e5m2>(c);
    case format_traits<fp4_e2m1>::id: return by_scheme<Gemv, fp4_e2m1>(c);
    default: return false;
  }
}

}  // namespace

tier_entries QUANT_DISPATCH_TIER_FN() noexcept {
  return {&by_format<true>, &by_format<false>, static_cast<unsigned>(default_isa::id)};
}

}  // namespace quant_dispatch_v0
