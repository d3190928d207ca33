# quant_add_dispatch_library(<name> [TIERS <tier>...])
#
# Builds a static library that runs quant's kernels on the best ISA tier of the CPU it runs on,
# for programs that must run on several CPUs. It compiles the kernels once per tier (generic,
# sse4_2, avx2, avx512, avx512_vnni by default) with that tier's flags, each inside its own
# inline namespace (QUANT_ABI_TAG), plus a selector compiled with the program's own flags.
# Linking <name> defines QUANT_RUNTIME_DISPATCH for its users, and quant::gemv / quant::dequantize
# on built-in formats then go through it; custom formats keep the header-only kernels.
# GCC or Clang on x86-64.
function(quant_add_dispatch_library name)
  cmake_parse_arguments(arg "" "" "TIERS" ${ARGN})
  if(NOT arg_TIERS)
    set(arg_TIERS sse4_2 avx2 avx512 avx512_vnni)
  endif()
  set(flags_generic "")
  set(flags_sse4_2 -msse4.2)
  set(flags_avx2 -mavx2 -mfma -mf16c)
  set(flags_avx512 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c)
  set(flags_avx512_vnni ${flags_avx512} -mavx512vnni)
  set(dir ${CMAKE_CURRENT_BINARY_DIR}/${name}_dispatch)
  set(sources "")
  set(have "")
  foreach(tier generic ${arg_TIERS})
    if(NOT DEFINED flags_${tier})
      message(FATAL_ERROR "quant_add_dispatch_library: unknown tier '${tier}'")
    endif()
    set(src ${dir}/tier_${tier}.cpp)
    file(CONFIGURE OUTPUT ${src} CONTENT "#include <quant/kernels/dispatch/tier_impl.hpp>\n")
    set_source_files_properties(${src} PROPERTIES
      COMPILE_OPTIONS "${flags_${tier}}"
      COMPILE_DEFINITIONS "QUANT_ABI_TAG=v0_${tier};QUANT_DISPATCH_TIER_FN=tier_${tier}")
    list(APPEND sources ${src})
    string(TOUPPER ${tier} up)
    list(APPEND have QUANT_DISPATCH_HAVE_${up}=1)
  endforeach()
  set(sel ${dir}/select.cpp)
  file(CONFIGURE OUTPUT ${sel} CONTENT "#include <quant/kernels/dispatch/select_impl.hpp>\n")
  set_source_files_properties(${sel} PROPERTIES COMPILE_DEFINITIONS "${have}")
  add_library(${name} STATIC ${sources} ${sel})
  target_link_libraries(${name} PUBLIC quant::quant)
  target_compile_definitions(${name} INTERFACE QUANT_RUNTIME_DISPATCH)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${name} PRIVATE -Wno-uninitialized -Wno-maybe-uninitialized)  # GCC bug 105593
  endif()
endfunction()
