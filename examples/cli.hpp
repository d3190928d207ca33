// cli.hpp: what the example programs share on their command lines: counts and the folder of the
// sample models.
#pragma once

#include <cstddef>
#include <exception>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace cli {

/// A non-negative count given to flag, e.g. "--calib-stories 32"; anything else (empty, signed,
/// trailing characters, out of range) throws std::invalid_argument naming the flag and the value.
inline std::size_t parse_count(const std::string& v, const std::string& flag) {
  std::size_t used = 0;
  unsigned long long n = 0;
  try {
    n = std::stoull(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v.empty() || used != v.size() || v[0] == '-') throw std::invalid_argument(flag + ": expected a count, got '" + v + "'");
  return static_cast<std::size_t>(n);
}

/// The sample models: QUANT_EXAMPLE_MODELS_DIR (set by examples/CMakeLists.txt to
/// ../shared/models of the source tree), else ../shared/models of the working directory.
inline std::filesystem::path models_dir() {
#ifdef QUANT_EXAMPLE_MODELS_DIR
  return QUANT_EXAMPLE_MODELS_DIR;
#else
  return "../shared/models";
#endif
}

}  // namespace cli
