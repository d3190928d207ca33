# Third-party dependencies. Each is looked up with find_package() first; only if that fails is the
# pinned release downloaded with FetchContent (FetchContent_Declare(... FIND_PACKAGE_ARGS ...)).
# Fetched dependencies are marked SYSTEM so that warnings in their headers are not ours.
include(FetchContent)

# xsimd: the one dependency of quant::quant.
#
# xsimd's package version files use SameMajorVersion, so `find_package(xsimd 8.1)` would reject
# every newer major release (12.x, 13.x, as shipped by current distributions and by the fallback
# below). Any installed version is therefore accepted here and the minimum checked afterwards;
# quantConfig.cmake does the same.
set(QUANT_XSIMD_MIN_VERSION 8.1)
FetchContent_Declare(xsimd
  GIT_REPOSITORY https://github.com/xtensor-stack/xsimd.git
  GIT_TAG 13.2.0
  GIT_SHALLOW TRUE
  SYSTEM
  FIND_PACKAGE_ARGS)
set(quant_dependencies xsimd)

# {fmt} and doctest: only for the project's own programs. (quant/io/fmt.hpp uses {fmt}, but its
# users link fmt::fmt themselves; see cmake/quantConfig.cmake.in.)
if(QUANT_BUILD_TESTS OR QUANT_BUILD_EXAMPLES OR QUANT_BUILD_BENCHMARKS)
  set(FMT_INSTALL OFF) # a fetched {fmt} must not end up in quant's install tree
  FetchContent_Declare(fmt
    GIT_REPOSITORY https://github.com/fmtlib/fmt.git
    GIT_TAG 10.2.1
    GIT_SHALLOW TRUE
    SYSTEM
    FIND_PACKAGE_ARGS 9.1)
  list(APPEND quant_dependencies fmt)
endif()
if(QUANT_BUILD_TESTS)
  set(DOCTEST_NO_INSTALL ON) # a fetched doctest must not end up in quant's install tree
  FetchContent_Declare(doctest
    GIT_REPOSITORY https://github.com/doctest/doctest.git
    GIT_TAG v2.4.11
    GIT_SHALLOW TRUE
    SYSTEM
    FIND_PACKAGE_ARGS)
  list(APPEND quant_dependencies doctest)
endif()

FetchContent_MakeAvailable(${quant_dependencies})

# xsimd_FOUND is set only when find_package() found an installed xsimd (not a fetched one).
if(xsimd_FOUND AND xsimd_VERSION VERSION_LESS QUANT_XSIMD_MIN_VERSION)
  message(FATAL_ERROR "quant needs xsimd >= ${QUANT_XSIMD_MIN_VERSION}; found ${xsimd_VERSION} "
                      "in ${xsimd_DIR}. Point xsimd_DIR to a newer one, or set "
                      "CMAKE_DISABLE_FIND_PACKAGE_xsimd=ON to download xsimd instead.")
endif()
include(${CMAKE_CURRENT_LIST_DIR}/quantFixDebianXsimd.cmake)
