// quant/layout/packing.hpp: the canonical bit packing of codes (scalar reference).
//
// Codes of `bits` bits are packed as one little-endian bit stream: code i occupies stream bits
// [i*bits, (i+1)*bits), stream bit k is bit (k % 8) of byte k / 8, and the code's least
// significant bit comes first. For 4-bit codes this puts code 2j in the low nibble of byte j and
// code 2j+1 in the high nibble; 3-bit codes straddle bytes (code 2 uses bits 6-7 of byte 0 and
// bit 0 of byte 1). Unused high bits of a stream's last byte are zero. Each row of a tensor is
// its own stream starting on a byte boundary (doc/formats.md draws it). These functions are the
// oracle for the SIMD pack/unpack kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "../config.hpp"

QUANT_NAMESPACE_BEGIN

/// Bytes that n codes of `bits` bits occupy in the canonical stream.
constexpr std::size_t packed_bytes(std::size_t n, unsigned bits) noexcept { return (n * bits + 7) / 8; }

/// Reads code i from a stream of `bits`-bit codes.
inline std::uint8_t read_code(const std::uint8_t* stream, std::size_t i, unsigned bits) noexcept {
  const std::size_t bit = i * bits;
  const std::size_t byte = bit / 8;
  const unsigned shift = static_cast<unsigned>(bit % 8);
  unsigned window = stream[byte];
  if (shift + bits > 8) window |= static_cast<unsigned>(stream[byte + 1]) << 8;
  return static_cast<std::uint8_t>((window >> shift) & ((1u << bits) - 1u));
}

/// Writes code i (its low `bits` bits) into a stream, leaving the other codes' bits unchanged.
inline void write_code(std::uint8_t* stream, std::size_t i, unsigned bits, std::uint8_t code) noexcept {
  const std::size_t bit = i * bits;
  const std::size_t byte = bit / 8;
  const unsigned shift = static_cast<unsigned>(bit % 8);
  const unsigned mask = ((1u << bits) - 1u) << shift;
  const unsigned value = (static_cast<unsigned>(code) << shift) & mask;
  stream[byte] = static_cast<std::uint8_t>((stream[byte] & ~mask) | value);
  if (shift + bits > 8)
    stream[byte + 1] = static_cast<std::uint8_t>((stream[byte + 1] & ~(mask >> 8)) | (value >> 8));
}

/// Packs codes (one per byte, low `bits` bits used) into out, which must hold
/// packed_bytes(codes.size(), bits) bytes; the unused tail bits of the last byte are zeroed.
inline void pack_codes(std::span<const std::uint8_t> codes, unsigned bits, std::uint8_t* out) noexcept {
  const std::size_t n = packed_bytes(codes.size(), bits);
  for (std::size_t b = 0; b < n; ++b) out[b] = 0;
  for (std::size_t i = 0; i < codes.size(); ++i) write_code(out, i, bits, codes[i]);
}

/// Unpacks out.size() codes from a stream, one per byte.
inline void unpack_codes(const std::uint8_t* stream, unsigned bits, std::span<std::uint8_t> out) noexcept {
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = read_code(stream, i, bits);
}

QUANT_NAMESPACE_END
