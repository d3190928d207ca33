// Tests of quant/layout/packing.hpp: the canonical little-endian bit stream of codes.
//
// The packed bytes are checked against a bit-by-bit construction written here from the layout's
// definition (code i occupies stream bits [i*bits, (i+1)*bits), LSB first; stream bit k is bit
// k % 8 of byte k / 8) and against examples worked out by hand. Buffers are sized exactly, so
// the sanitizers catch any access past the last byte.
#include <doctest/doctest.h>

#include <quant/quant.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace {

using bytes = std::vector<std::uint8_t>;

std::uint8_t low_bits(unsigned bits) { return static_cast<std::uint8_t>((1u << bits) - 1u); }

/// The stream, built one bit at a time from the definition.
bytes reference_pack(const bytes& codes, unsigned bits) {
  bytes out((codes.size() * bits + 7) / 8, 0);
  for (std::size_t i = 0; i < codes.size(); ++i)
    for (unsigned j = 0; j < bits; ++j)
      if ((codes[i] >> j) & 1u) {
        const std::size_t k = i * bits + j;
        out[k / 8] = static_cast<std::uint8_t>(out[k / 8] | (1u << (k % 8)));
      }
  return out;
}

bool stream_bit(const bytes& s, std::size_t k) { return (s[k / 8] >> (k % 8)) & 1u; }

bytes random_codes(std::mt19937& rng, std::size_t n, unsigned bits) {
  bytes c(n);
  for (auto& x : c) x = static_cast<std::uint8_t>(rng() & low_bits(bits));
  return c;
}

bytes pack(const bytes& codes, unsigned bits) {
  bytes out(quant::packed_bytes(codes.size(), bits));
  quant::pack_codes(codes, bits, out.data());
  return out;
}

}  // namespace

static_assert(quant::packed_bytes(0, 4) == 0);
static_assert(quant::packed_bytes(9, 1) == 2);

TEST_CASE("packed_bytes") {
  CHECK(quant::packed_bytes(0, 1) == 0);
  CHECK(quant::packed_bytes(0, 8) == 0);
  CHECK(quant::packed_bytes(1, 1) == 1);
  CHECK(quant::packed_bytes(8, 1) == 1);
  CHECK(quant::packed_bytes(9, 1) == 2);
  CHECK(quant::packed_bytes(1, 4) == 1);
  CHECK(quant::packed_bytes(2, 4) == 1);
  CHECK(quant::packed_bytes(3, 4) == 2);
  CHECK(quant::packed_bytes(3, 3) == 2);  // 9 bits
  CHECK(quant::packed_bytes(8, 3) == 3);  // 24 bits
  CHECK(quant::packed_bytes(11, 3) == 5);  // 33 bits
  CHECK(quant::packed_bytes(7, 7) == 7);  // 49 bits
  CHECK(quant::packed_bytes(5, 8) == 5);
  CHECK(quant::packed_bytes(4096, 2) == 1024);
  CHECK(quant::packed_bytes(4097, 6) == 3073);  // 24582 bits
}

TEST_CASE("pack_codes: worked examples") {
  struct Example {
    unsigned bits;
    bytes codes;
    bytes packed;
  };
  const Example examples[] = {
      // 4 bits: code 2j in the low nibble of byte j, code 2j+1 in the high nibble.
      {4, {1, 2, 3, 4}, {0x21, 0x43}},
      {4, {0xA, 0xB, 0xC}, {0xBA, 0x0C}},
      // 3 bits: 5 = 101 | 3 = 011 << 3 | low two bits of 6 = 110 << 6 -> 1001'1101 = 0x9D;
      // byte 1: high bit of 6 | 1 << 1 | 7 << 4 | low bit of 2 = 010 << 7 -> 0111'0011 = 0x73;
      // byte 2: high bits of 2 (01) | 4 << 2 | 0 << 5 -> 0001'0001 = 0x11.
      {3, {5, 3, 6, 1, 7, 2, 4, 0}, {0x9D, 0x73, 0x11}},
      {3, {5, 3, 6}, {0x9D, 0x01}},  // code 2 straddles bytes 0 and 1
      // 1 bit: 1,0,1,1,0,0,0,1 -> bits 0, 2, 3, 7 -> 0x8D; the ninth code is bit 0 of byte 1.
      {1, {1, 0, 1, 1, 0, 0, 0, 1, 1}, {0x8D, 0x01}},
      // 2 bits: 1 | 2 << 2 | 3 << 4 | 0 << 6 = 0x39.
      {2, {1, 2, 3, 0, 3}, {0x39, 0x03}},
      // 5 bits: code 2 (10101) lands on bits 10-14, i.e. bits 2-6 of byte 1.
      {5, {0x1F, 0x00, 0x15}, {0x1F, 0x54}},
      // 6 bits: 0x2A | low two bits of 0x15 (01) << 6 = 0x6A; the rest of 0x15 is 0x05.
      {6, {0x2A, 0x15}, {0x6A, 0x05}},
      // 7 bits: the LSB of code 1 is the top bit of byte 0.
      {7, {0x7F, 0x01}, {0xFF, 0x00}},
      {7, {0x00, 0x7F}, {0x80, 0x3F}},
      {8, {0x12, 0xFF, 0x00}, {0x12, 0xFF, 0x00}},
  };
  for (const Example& e : examples) {
    INFO("bits " << e.bits << ", " << e.codes.size() << " codes");
    const bytes got = pack(e.codes, e.bits);
    CHECK(got == e.packed);
    CHECK(reference_pack(e.codes, e.bits) == e.packed);  // the reference agrees with the hand work
    bytes back(e.codes.size());
    quant::unpack_codes(e.packed.data(), e.bits, back);
    CHECK(back == e.codes);
    for (std::size_t i = 0; i < e.codes.size(); ++i) CHECK(quant::read_code(e.packed.data(), i, e.bits) == e.codes[i]);
  }
}

TEST_CASE("pack_codes / unpack_codes / read_code on random codes, bits 1..8") {
  std::mt19937 rng(0xb175);
  const std::size_t lengths[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 31, 33, 64, 100, 1001};
  for (unsigned bits = 1; bits <= 8; ++bits)
    for (std::size_t n : lengths) {
      INFO("bits " << bits << ", n " << n);
      const bytes codes = random_codes(rng, n, bits);
      const bytes packed = pack(codes, bits);
      REQUIRE(packed.size() == (n * bits + 7) / 8);
      CHECK(packed == reference_pack(codes, bits));

      bytes back(n, 0xEE);
      quant::unpack_codes(packed.data(), bits, back);
      CHECK(back == codes);
      for (std::size_t i = 0; i < n; ++i) {
        if (quant::read_code(packed.data(), i, bits) != codes[i]) {
          INFO("code " << i);
          CHECK(quant::read_code(packed.data(), i, bits) == codes[i]);
        }
      }
    }
}

TEST_CASE("pack_codes uses only the low bits of each code, zeroes the tail, writes nothing past the end") {
  std::mt19937 rng(0x7a11);
  for (unsigned bits = 1; bits <= 8; ++bits)
    for (std::size_t n = 1; n <= 20; ++n) {
      INFO("bits " << bits << ", n " << n);
      bytes dirty(n);  // codes with garbage above the low `bits` bits
      for (auto& c : dirty) c = static_cast<std::uint8_t>(rng());
      bytes clean = dirty;
      for (auto& c : clean) c &= low_bits(bits);

      const std::size_t size = quant::packed_bytes(n, bits);
      bytes out(size + 4, 0xFF);  // pre-filled: pack_codes must clear what it owns
      quant::pack_codes(dirty, bits, out.data());
      CHECK(bytes(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(size)) == reference_pack(clean, bits));
      const unsigned used = static_cast<unsigned>((n * bits) % 8);  // bits used in the last byte, 0 = all
      if (used != 0) CHECK((out[size - 1] >> used) == 0);
      for (std::size_t b = size; b < out.size(); ++b) CHECK(out[b] == 0xFF);
    }
}

TEST_CASE("write_code changes exactly the bits of its code") {
  std::mt19937 rng(0x3c0de);
  for (unsigned bits = 1; bits <= 8; ++bits) {
    const std::size_t n = 37;
    bytes stream(quant::packed_bytes(n, bits));
    for (auto& b : stream) b = static_cast<std::uint8_t>(rng());
    for (int round = 0; round < 4; ++round)
      for (std::size_t i = 0; i < n; ++i) {
        const auto code = static_cast<std::uint8_t>(rng());  // high bits must be ignored
        const bytes before = stream;
        quant::write_code(stream.data(), i, bits, code);
        INFO("bits " << bits << ", code index " << i << ", code " << static_cast<unsigned>(code));
        CHECK(quant::read_code(stream.data(), i, bits) == (code & low_bits(bits)));
        bool others_unchanged = true;
        for (std::size_t k = 0; k < stream.size() * 8; ++k) {
          const bool inside = k >= i * bits && k < (i + 1) * bits;
          if (inside)
            CHECK(stream_bit(stream, k) == (((code >> (k - i * bits)) & 1u) != 0));
          else
            others_unchanged = others_unchanged && stream_bit(stream, k) == stream_bit(before, k);
        }
        CHECK(others_unchanged);
      }
  }
}

TEST_CASE("writing codes one by one builds the same stream as pack_codes") {
  std::mt19937 rng(0x0b1);
  for (unsigned bits = 1; bits <= 8; ++bits) {
    INFO("bits " << bits);
    const bytes codes = random_codes(rng, 29, bits);
    bytes stream(quant::packed_bytes(codes.size(), bits), 0);
    // Write in a scrambled order: neighbours written later must not clobber earlier ones.
    for (std::size_t step = 0; step < codes.size(); ++step) {
      const std::size_t i = (step * 11) % codes.size();
      quant::write_code(stream.data(), i, bits, codes[i]);
    }
    CHECK(stream == reference_pack(codes, bits));
  }
}
