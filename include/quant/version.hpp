// quant/version.hpp: the library's version, as macros (for the preprocessor) and as values.
#pragma once

#define QUANT_VERSION_MAJOR 0
#define QUANT_VERSION_MINOR 1
#define QUANT_VERSION_PATCH 0
/// One number for comparisons: major * 10000 + minor * 100 + patch.
#define QUANT_VERSION (QUANT_VERSION_MAJOR * 10000 + QUANT_VERSION_MINOR * 100 + QUANT_VERSION_PATCH)

namespace quant {
inline namespace v0 {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
inline constexpr int version = QUANT_VERSION;
}  // namespace v0
}  // namespace quant
