// quant/io/archive.hpp: quant's own file format ("quant archive"), a self-describing container of
// named quantized tensors, fp32 arrays and string metadata, written and read back bit for bit.
//
// A record is a quantized tensor (any tensor<F, Gran> / tensor_view<const F, Gran>, permuted
// column order and run-time group sizes included), an fp32 array (rows x cols) or a metadata
// string (key = name). A tensor record keeps everything needed to rebuild the tensor and to refuse
// a mismatch: the format's id, layout version and bits (format_traits), the scheme, the
// granularity kind and group size, the scale type, the shape and the column order. Every section
// (the tensor's codes, scales, zero points and column order; an array's floats; a metadata value)
// has its byte size and a CRC-32C, and starts at a 64-byte-aligned file offset, so a file read or
// memory-mapped at a 64-byte-aligned address binds as tensor_views without a copy (reader::view).
//
// The reader treats its input as hostile: before anything is used it checks the magic, the
// version, the header and directory checksums, every field of every record (known ids and kinds,
// sizes recomputed from the shape and compared, offsets aligned and inside the file, no two
// sections overlapping, every byte outside the sections zero), every section's checksum and that a
// column order is a permutation. Offset arithmetic is overflow-checked and nothing is allocated
// from a size that was not first bounded by the file's real size. Any failure is a quant::error
// naming what is wrong; a reader that was constructed holds a fully verified file.
// A file of an older container version is read (every version up to container_version); a newer
// one is refused with an error saying so. Writing goes to memory (writer::write, to_buffer) or to
// a file through a temporary name renamed at the end (writer::save), so a failed write never
// leaves a partial file under the target name.
//
// Byte layout, container version 1. All integers little-endian (the header requires a
// little-endian host: sections are mapped as is, and their scales and column indices are native
// words, as doc/formats.md section 4 says).
//
//   offset 0, the header (64 bytes)
//      0  8  magic 89 51 41 52 0D 0A 1A 0A ("\x89QAR\r\n\x1a\n": catches text-mode transfers)
//      8  4  u32 container version (1)
//     12  4  u32 header bytes (64)
//     16  8  u64 file bytes (the exact size of the file)
//     24  8  u64 directory offset (64: the directory follows the header)
//     32  8  u64 directory bytes (= entry count * entry bytes + name table bytes)
//     40  4  u32 entry count
//     44  4  u32 entry bytes (168)
//     48  8  u64 name table bytes
//     56  4  u32 CRC-32C of the directory
//     60  4  u32 CRC-32C of header bytes [0, 60)
//   offset 64, the directory: entry count entries of 168 bytes, then the name table (the record
//   names, UTF-8, no terminator, each 1 to max_name_bytes bytes, unique)
//      0  4  u32 kind: 1 quantized tensor, 2 fp32 array, 3 metadata
//      4  4  u32 name bytes
//      8  8  u64 name offset in the name table
//     16  4  u32 format id          (tensor; 0 otherwise)        format_traits<F>::id
//     20  4  u32 format layout version                           format_traits<F>::layout_version
//     24  4  u32 bits                                            format_traits<F>::bits
//     28  4  u32 scheme             0 symmetric, 1 asymmetric
//     32  4  u32 granularity        0 per-tensor, 1 per-channel, 2 per-group
//     36  4  u32 scale type         1 float, 2 fp16, 3 bf16, 4 e8m0 (scale_id)
//     40  8  u64 group size         per-group: G (1 .. 2^31); 0 otherwise
//     48  8  u64 rows               tensor, array: >= 1; metadata: 0
//     56  8  u64 cols               tensor, array: >= 1; metadata: 0
//     64  4  u32 column order       0 natural, 1 permuted (tensor; 0 otherwise)
//     68  4  u32 reserved, 0
//     72 96  4 sections of 24 bytes: u64 file offset, u64 bytes, u32 CRC-32C, u32 reserved 0.
//            tensor: codes, scales, zero points, column order, with exactly the sizes of
//            storage<F, Gran>(rows, cols, gran, order) (doc/formats.md section 8: code bytes,
//            scale bytes, zero bytes, order bytes); an empty section has offset 0 and CRC 0.
//            array: section 0 the rows * cols floats, row-major; metadata: section 0 the value
//            bytes. A non-empty section starts at a multiple of 64 at or after the directory's
//            end, ends inside the file and overlaps no other.
//   after the directory: the sections, every other byte (alignment padding) zero. The writer
//   places them in record order, each at the next multiple of 64; the file ends with the last.
//   Unused fields are zero. CRC-32C is the Castagnoli CRC (reflected polynomial 0x82F63B78,
//   initial value and final XOR 0xFFFFFFFF; crc32c("123456789") = 0xE3069283), our own
//   implementation: slicing-by-8 tables, or the SSE4.2 crc32 instruction when the build has it.
//
// Not included by quant/quant.hpp (like io/fmt.hpp); does not include {fmt}.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE4_2__) && defined(__x86_64__)
#include <nmmintrin.h>
#define QUANT_ARCHIVE_CRC32C_SSE42 1
#endif

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/scalar_types.hpp"
#include "../formats/format_traits.hpp"
#include "../formats/integer.hpp"
#include "../formats/lut.hpp"
#include "../formats/minifloat.hpp"
#include "../scheme/granularity.hpp"
#include "../tensor/storage.hpp"
#include "../tensor/tensor.hpp"
#include "../tensor/tensor_view.hpp"

QUANT_NAMESPACE_BEGIN
namespace archive {

static_assert(std::endian::native == std::endian::little,
              "quant/io/archive.hpp: archives are little-endian and mapped as is; this host is not");

/// The container version this header writes, and the newest it reads.
inline constexpr std::uint32_t container_version = 1;
/// The file's first 8 bytes.
inline constexpr std::array<unsigned char, 8> magic = {0x89, 'Q', 'A', 'R', 0x0D, 0x0A, 0x1A, 0x0A};
inline constexpr std::size_t header_bytes = 64;   ///< the header's size
inline constexpr std::size_t entry_bytes = 168;   ///< one directory entry's size
inline constexpr std::size_t alignment = 64;      ///< sections start at multiples of this
inline constexpr std::size_t max_name_bytes = 4096;
inline constexpr std::uint64_t max_group_size = std::uint64_t{1} << 31;
/// Ids at or above this are user formats (doc/formats.md section 1); below, built-ins only.
inline constexpr std::uint32_t first_user_format_id = 0x80000000u;

/// What a record holds.
enum class record_kind : std::uint32_t { tensor = 1, array = 2, metadata = 3 };
/// The on-disk id of a scale type.
enum class scale_id : std::uint32_t { f32 = 1, f16 = 2, bf16 = 3, e8m0 = 4 };

/// The scale id of scale type S (float, fp16, bf16, e8m0).
template <class S>
constexpr scale_id scale_id_of() noexcept {
  if constexpr (std::is_same_v<S, float>) return scale_id::f32;
  else if constexpr (std::is_same_v<S, fp16>) return scale_id::f16;
  else if constexpr (std::is_same_v<S, bf16>) return scale_id::bf16;
  else {
    static_assert(std::is_same_v<S, e8m0>, "quant::archive: unknown scale type");
    return scale_id::e8m0;
  }
}
/// Bytes per scale and name ("f32", "f16", "bf16", "e8m0") of a scale id.
constexpr std::size_t scale_bytes(scale_id s) noexcept { return s == scale_id::f32 ? 4 : s == scale_id::e8m0 ? 1 : 2; }
constexpr std::string_view scale_name(scale_id s) noexcept {
  switch (s) {
    case scale_id::f32: return scale_traits<float>::name;
    case scale_id::f16: return scale_traits<fp16>::name;
    case scale_id::bf16: return scale_traits<bf16>::name;
    case scale_id::e8m0: return scale_traits<e8m0>::name;
  }
  return "?";
}

/// A built-in format as the reader knows it without its type.
struct builtin_format {
  std::uint32_t id, layout_version, bits;
  bool integer;
  std::string_view name;
};
namespace detail {
template <class F>
constexpr builtin_format builtin() noexcept {
  using T = format_traits<F>;
  return {T::id, T::layout_version, T::bits, is_integer_format_v<F>, T::name};
}
}  // namespace detail
/// Every built-in format: the ids below first_user_format_id that a file may use.
inline constexpr std::array<builtin_format, 8> builtin_formats = {
    detail::builtin<int8>(),     detail::builtin<int4>(),     detail::builtin<int3>(),     detail::builtin<int2>(),
    detail::builtin<nf4>(),      detail::builtin<fp8_e4m3>(), detail::builtin<fp8_e5m2>(), detail::builtin<fp4_e2m1>()};
/// The built-in format with this id, or null.
constexpr const builtin_format* find_builtin(std::uint32_t id) noexcept {
  for (const auto& f : builtin_formats)
    if (f.id == id) return &f;
  return nullptr;
}

// ---- CRC-32C ----------------------------------------------------------------------------------

namespace detail {
using table8 = std::array<std::array<std::uint32_t, 256>, 8>;
constexpr table8 make_crc32c_tables() noexcept {
  table8 t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
  return t;
}
inline constexpr table8 crc32c_tables = make_crc32c_tables();

/// The CRC register after the bytes (no initial or final inversion): slicing-by-8.
inline std::uint32_t crc32c_portable(std::uint32_t c, const unsigned char* p, std::size_t n) noexcept {
  const auto& t = crc32c_tables;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= c;
    c = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^ t[4][(w >> 24) & 0xFF] ^
        t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^ t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
  }
  for (; n > 0; --n, ++p) c = (c >> 8) ^ t[0][(c ^ *p) & 0xFFu];
  return c;
}
#if defined(QUANT_ARCHIVE_CRC32C_SSE42)
/// The same with the SSE4.2 crc32 instruction (it computes exactly this CRC).
inline std::uint32_t crc32c_sse42(std::uint32_t c, const unsigned char* p, std::size_t n) noexcept {
  std::uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
  }
  c = static_cast<std::uint32_t>(c64);
  for (; n > 0; --n, ++p) c = _mm_crc32_u8(c, *p);
  return c;
}
#endif
}  // namespace detail

/// The CRC-32C of data, continuing a previous checksum (crc32c(b, crc32c(a)) is the checksum of a
/// followed by b; 0 starts afresh).
inline std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
#if defined(QUANT_ARCHIVE_CRC32C_SSE42)
  return ~detail::crc32c_sse42(~crc, p, data.size());
#else
  return ~detail::crc32c_portable(~crc, p, data.size());
#endif
}

// ---- descriptors ------------------------------------------------------------------------------

/// Everything a tensor record says about its tensor.
struct tensor_descriptor {
  std::uint32_t format_id = 0, layout_version = 0, bits = 0;
  bool asymmetric = false;
  granularity_kind granularity = granularity_kind::tensor;
  std::size_t group_size = 0;  ///< per-group: G; 0 otherwise
  scale_id scale = scale_id::f32;
  std::size_t rows = 0, cols = 0;
  column_order order = column_order::natural;
  friend bool operator==(const tensor_descriptor&, const tensor_descriptor&) = default;
};

namespace detail {
using quant::detail::fail;
using quant::detail::message;

inline std::string hex(std::uint64_t v, int digits = 2) {
  static constexpr char d[] = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), d[v & 15]);
    v >>= 4;
  } while (v != 0 || static_cast<int>(s.size()) < digits);
  return "0x" + s;
}
inline std::string gran_name(granularity_kind k, bool asym, std::string_view scale, std::string_view group) {
  const std::string_view sym = asym ? asymmetric::name : symmetric::name;
  if (k == granularity_kind::tensor) return message("per_tensor<", sym, ", ", scale, ">");
  if (k == granularity_kind::channel) return message("per_channel<", sym, ", ", scale, ">");
  return message("per_group<", group, ", ", sym, ", ", scale, ">");
}
inline std::string format_name(std::uint32_t id, std::uint32_t bits) {
  if (const builtin_format* b = find_builtin(id)) return std::string(b->name);
  return message("user format ", hex(id, 8), " (", bits, " bits)");
}
}  // namespace detail

/// E.g. "int4 per_group<32, asym, f16> [64 x 172], permuted columns (format id 0x02, layout 1)".
inline std::string describe(const tensor_descriptor& d) {
  return detail::message(detail::format_name(d.format_id, d.bits), ' ',
                         detail::gran_name(d.granularity, d.asymmetric, scale_name(d.scale),
                                           detail::message(d.group_size)),
                         " [", d.rows, " x ", d.cols, "]", d.order == column_order::permuted ? ", permuted columns" : "",
                         " (format id ", detail::hex(d.format_id), ", layout ", d.layout_version, ")");
}

/// The type tensor<F, Gran> as a string, e.g. "nf4 per_group<64, sym, f16>" (a run-time group
/// size shows as "dynamic").
template <class F, class Gran>
std::string type_name() {
  const std::string group = Gran::static_group_size == dynamic_group ? std::string("dynamic")
                                                                     : detail::message(Gran::static_group_size);
  return detail::message(format_traits<F>::name, ' ',
                         detail::gran_name(Gran::kind, Gran::is_asymmetric,
                                           scale_traits<typename Gran::scale_type>::name, group));
}

/// The descriptor of a tensor view.
template <class F, class Gran>
tensor_descriptor descriptor_of(const tensor_view<F, Gran>& t) {
  using T = format_traits<std::remove_const_t<F>>;
  tensor_descriptor d;
  d.format_id = T::id, d.layout_version = T::layout_version, d.bits = T::bits;
  d.asymmetric = Gran::is_asymmetric;
  d.granularity = Gran::kind;
  if constexpr (Gran::kind == granularity_kind::group) d.group_size = t.granularity().group_size();
  d.scale = scale_id_of<typename Gran::scale_type>();
  d.rows = t.rows(), d.cols = t.cols();
  d.order = t.permuted() ? column_order::permuted : column_order::natural;
  return d;
}

/// True when a record with descriptor d can be read as tensor<F, Gran>: the same format id,
/// layout version and bits, scheme, granularity kind, scale type, and group size (any, for a
/// run-time group size). Shape and column order come from the record.
template <class F, class Gran>
bool matches(const tensor_descriptor& d) noexcept {
  using T = format_traits<F>;
  if (d.format_id != T::id || d.layout_version != T::layout_version || d.bits != T::bits) return false;
  if (d.asymmetric != Gran::is_asymmetric || d.granularity != Gran::kind) return false;
  if (d.scale != scale_id_of<typename Gran::scale_type>()) return false;
  if constexpr (Gran::kind == granularity_kind::group)
    if (Gran::static_group_size != dynamic_group && d.group_size != Gran::static_group_size) return false;
  return true;
}

/// One section of a record in the file.
struct section {
  std::uint64_t offset = 0, bytes = 0;
  std::uint32_t crc = 0;
};

/// A record of an archive, as its directory entry says.
struct record_info {
  std::string name;
  record_kind kind = record_kind::metadata;
  tensor_descriptor tensor;        ///< kind tensor
  std::size_t rows = 0, cols = 0;  ///< tensor and array: the shape; metadata: 0
  /// tensor: codes, scales, zero points, column order; array and metadata: [0] the data
  std::array<section, 4> sections{};
};

// ---- a 64-byte-aligned byte buffer ------------------------------------------------------------

/// Owned, 64-byte-aligned, zero-initialized bytes (what to_buffer returns and open reads into, so
/// that views bind without copying). Move-only.
class buffer {
 public:
  buffer() = default;
  explicit buffer(std::size_t n) : size_(n) {
    if (n == 0) return;
    p_.reset(static_cast<std::byte*>(::operator new[](n, std::align_val_t{alignment})));
    std::memset(p_.get(), 0, n);
  }
  std::byte* data() noexcept { return p_.get(); }
  const std::byte* data() const noexcept { return p_.get(); }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> span() noexcept { return {p_.get(), size_}; }
  std::span<const std::byte> span() const noexcept { return {p_.get(), size_}; }

 private:
  struct aligned_delete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, std::align_val_t{alignment}); }
  };
  std::unique_ptr<std::byte[], aligned_delete> p_;
  std::size_t size_ = 0;
};

namespace detail {
inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const std::string& who) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a) fail(who, ": sizes overflow 64 bits (", a, " + ", b, ")");
  return a + b;
}
inline std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& who) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
    fail(who, ": sizes overflow 64 bits (", a, " x ", b, ")");
  return a * b;
}
inline std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) noexcept { return a / b + (a % b != 0); }
inline std::uint64_t round_up(std::uint64_t n, const std::string& who) {
  return checked_add(n, (alignment - n % alignment) % alignment, who);
}

/// The section sizes of a tensor with descriptor d (codes, scales, zeros, order), computed
/// without its type and overflow-checked (doc/formats.md section 8).
inline std::array<std::uint64_t, 4> tensor_section_bytes(const tensor_descriptor& d, const std::string& who) {
  const std::uint64_t row_bytes = ceil_div(checked_mul(d.cols, d.bits, who), 8);
  const std::uint64_t groups = d.granularity == granularity_kind::group ? ceil_div(d.cols, d.group_size) : 1;
  const std::uint64_t count = d.granularity == granularity_kind::tensor ? 1 : checked_mul(d.rows, groups, who);
  return {checked_mul(d.rows, row_bytes, who), checked_mul(count, scale_bytes(d.scale), who),
          d.asymmetric ? ceil_div(checked_mul(count, d.bits, who), 8) : 0,
          d.order == column_order::permuted ? checked_mul(d.cols, 4, who) : 0};
}

template <class T>
void put(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);
}
template <class T>
T get(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Checks a record name (or metadata key): 1 to max_name_bytes bytes, no NUL.
inline void check_name(std::string_view name, const char* who) {
  if (name.empty()) fail(who, ": the record name is empty");
  if (name.size() > max_name_bytes)
    fail(who, ": the record name has ", name.size(), " bytes, more than max_name_bytes = ", max_name_bytes);
  if (name.find('\0') != std::string_view::npos) fail(who, ": the record name contains a NUL byte");
}

template <class T>
struct tensor_type;
template <class F, class Gran>
struct tensor_type<tensor<F, Gran>> {
  using format = F;
  using granularity = Gran;
};
}  // namespace detail

// ---- writing ----------------------------------------------------------------------------------

/// Collects records and writes them as one archive. The writer keeps views of tensor and array
/// data (they must stay alive and unchanged until the last write) and copies names and metadata.
/// Every add validates its arguments and throws quant::error for an empty tensor or array, an
/// invalid or duplicate name, or a format id the reader would refuse; nothing is added then.
class writer {
 public:
  /// Adds a quantized tensor (a view, mutable or const, or a tensor, which must outlive the writer).
  template <class F, class Gran>
  void add(std::string_view name, tensor_view<F, Gran> t) {
    using Fmt = std::remove_const_t<F>;
    const char* who = "quant::archive::writer::add";
    if (t.rows() == 0) detail::fail(who, ": tensor '", name, "' is empty");
    constexpr std::uint32_t id = format_traits<Fmt>::id;
    if (id < first_user_format_id) {
      const builtin_format* b = find_builtin(id);
      if (!b || b->bits != format_traits<Fmt>::bits || b->layout_version != format_traits<Fmt>::layout_version)
        detail::fail(who, ": tensor '", name, "' has format ", format_traits<Fmt>::name, " with id ", detail::hex(id),
                     ", layout ", format_traits<Fmt>::layout_version, ", which is not a built-in format; ids below ",
                     detail::hex(first_user_format_id, 8), " are reserved for built-in formats");
    }
    item it{std::string(name), record_kind::tensor, descriptor_of(t), t.rows(), t.cols(), {}, {}};
    it.data = {std::as_bytes(t.codes()), std::as_bytes(t.scales()), std::as_bytes(t.zeros()),
               std::as_bytes(t.input_columns())};
    push(std::move(it), who);
  }
  template <class F, class Gran>
  void add(std::string_view name, const tensor<F, Gran>& t) {
    if (t.empty()) detail::fail("quant::archive::writer::add: tensor '", name, "' is empty");
    add(name, t.cview());
  }
  /// A temporary tensor would dangle: keep it alive and pass it by reference.
  template <class F, class Gran>
  void add(std::string_view name, tensor<F, Gran>&& t) = delete;

  /// Adds an fp32 array of rows x cols (row-major, data.size() == rows * cols, both >= 1).
  void add_array(std::string_view name, std::span<const float> data, std::size_t rows, std::size_t cols) {
    const char* who = "quant::archive::writer::add_array";
    if (rows == 0 || cols == 0 || rows > data.size() || data.size() / rows != cols || data.size() % rows != 0)
      detail::fail(who, ": array '", name, "' has ", data.size(), " elements for a ", rows, " x ", cols,
                   " shape (both >= 1, data.size() == rows * cols)");
    item it{std::string(name), record_kind::array, {}, rows, cols, {}, {}};
    it.data[0] = std::as_bytes(data);
    push(std::move(it), who);
  }
  /// A vector: 1 x data.size().
  void add_array(std::string_view name, std::span<const float> data) { add_array(name, data, 1, data.size()); }

  /// Adds a metadata string (copied); any bytes, possibly empty.
  void add_metadata(std::string_view key, std::string_view value) {
    item it{std::string(key), record_kind::metadata, {}, 0, 0, {}, std::string(value)};
    push(std::move(it), "quant::archive::writer::add_metadata");
  }

  /// Records so far, and whether one is named name.
  std::size_t size() const noexcept { return items_.size(); }
  bool contains(std::string_view name) const noexcept {
    return std::any_of(items_.begin(), items_.end(), [&](const item& i) { return i.name == name; });
  }

  /// The size of the file write() / save() produce.
  std::size_t file_bytes() const { return plan("quant::archive::writer::file_bytes").size; }

  /// Writes the archive into out, whose size must be file_bytes() (nothing is written otherwise).
  void write(std::span<std::byte> out) const {
    const char* who = "quant::archive::writer::write";
    const layout l = plan(who);
    if (out.size() != l.size) detail::fail(who, ": out has ", out.size(), " bytes, the archive needs ", l.size);
    std::memset(out.data(), 0, out.size());
    std::memcpy(out.data(), l.head.data(), l.head.size());
    for (const auto& s : l.pieces)
      if (!s.data.empty()) std::memcpy(out.data() + s.offset, s.data.data(), s.data.size());
  }
  /// The archive in a new 64-byte-aligned buffer.
  buffer to_buffer() const {
    buffer b(file_bytes());
    write(b.span());
    return b;
  }
  /// Writes the archive to path: to a temporary file next to it, renamed to path once complete
  /// (replacing an existing file). On any failure the temporary is removed, path is untouched and
  /// quant::error names the file.
  void save(const std::filesystem::path& path) const {
    const char* who = "quant::archive::writer::save";
    const layout l = plan(who);
    static std::atomic<unsigned> counter{0};
    std::filesystem::path tmp = path;
    tmp += detail::message(".tmp-", std::chrono::steady_clock::now().time_since_epoch().count(), '-', counter++);
    std::error_code ec;
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out) detail::fail(who, ": cannot create ", tmp.string());
      std::uint64_t at = l.head.size();
      out.write(reinterpret_cast<const char*>(l.head.data()), static_cast<std::streamsize>(l.head.size()));
      static constexpr char zeros[alignment] = {};
      for (const auto& s : l.pieces) {
        if (s.data.empty()) continue;
        out.write(zeros, static_cast<std::streamsize>(s.offset - at));
        out.write(reinterpret_cast<const char*>(s.data.data()), static_cast<std::streamsize>(s.data.size()));
        at = s.offset + s.data.size();
      }
      out.close();
      if (!out) {
        std::filesystem::remove(tmp, ec);
        detail::fail(who, ": writing ", tmp.string(), " failed (disk full or I/O error); ", path.string(),
                     " is unchanged");
      }
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
      std::error_code ec2;
      std::filesystem::remove(tmp, ec2);
      detail::fail(who, ": cannot rename ", tmp.string(), " to ", path.string(), " (", ec.message(), "); ",
                   path.string(), " is unchanged");
    }
  }

 private:
  struct item {
    std::string name;
    record_kind kind;
    tensor_descriptor desc;
    std::size_t rows, cols;
    std::array<std::span<const std::byte>, 4> data;
    std::string value;  // metadata
  };
  struct piece {
    std::uint64_t offset;
    std::span<const std::byte> data;
  };
  struct layout {
    std::vector<std::byte> head;  // header + directory
    std::vector<piece> pieces;    // sections in file order
    std::size_t size = 0;
  };

  void push(item it, const char* who) {
    detail::check_name(it.name, who);
    if (contains(it.name)) detail::fail(who, ": a record named '", it.name, "' was already added");
    items_.push_back(std::move(it));
  }

  layout plan(const char* who_c) const {
    const std::string who = who_c;
    if (items_.size() > std::numeric_limits<std::uint32_t>::max()) detail::fail(who, ": too many records");
    std::uint64_t names = 0;
    for (const auto& it : items_) names = detail::checked_add(names, it.name.size(), who);
    const std::uint64_t dir_bytes = detail::checked_add(items_.size() * std::uint64_t{entry_bytes}, names, who);
    layout l;
    l.head.resize(static_cast<std::size_t>(header_bytes + dir_bytes));
    std::byte* const h = l.head.data();
    std::uint64_t at = header_bytes + dir_bytes, name_at = 0;
    for (std::size_t i = 0; i < items_.size(); ++i) {
      const item& it = items_[i];
      std::byte* e = h + header_bytes + i * entry_bytes;
      detail::put<std::uint32_t>(e, static_cast<std::uint32_t>(it.kind));
      detail::put<std::uint32_t>(e + 4, static_cast<std::uint32_t>(it.name.size()));
      detail::put<std::uint64_t>(e + 8, name_at);
      std::memcpy(h + header_bytes + items_.size() * entry_bytes + name_at, it.name.data(), it.name.size());
      name_at += it.name.size();
      if (it.kind == record_kind::tensor) {
        const tensor_descriptor& d = it.desc;
        detail::put<std::uint32_t>(e + 16, d.format_id);
        detail::put<std::uint32_t>(e + 20, d.layout_version);
        detail::put<std::uint32_t>(e + 24, d.bits);
        detail::put<std::uint32_t>(e + 28, d.asymmetric ? 1u : 0u);
        detail::put<std::uint32_t>(e + 32, static_cast<std::uint32_t>(d.granularity));
        detail::put<std::uint32_t>(e + 36, static_cast<std::uint32_t>(d.scale));
        detail::put<std::uint64_t>(e + 40, d.group_size);
        detail::put<std::uint32_t>(e + 64, d.order == column_order::permuted ? 1u : 0u);
      }
      detail::put<std::uint64_t>(e + 48, it.rows);
      detail::put<std::uint64_t>(e + 56, it.cols);
      for (std::size_t s = 0; s < 4; ++s) {
        const std::span<const std::byte> data =
            it.kind == record_kind::metadata && s == 0 ? std::as_bytes(std::span(it.value)) : it.data[s];
        if (data.empty()) continue;
        at = detail::round_up(at, who);
        detail::put<std::uint64_t>(e + 72 + 24 * s, at);
        detail::put<std::uint64_t>(e + 80 + 24 * s, data.size());
        detail::put<std::uint32_t>(e + 88 + 24 * s, crc32c(data));
        l.pieces.push_back({at, data});
        at = detail::checked_add(at, data.size(), who);
      }
    }
    if (at > std::numeric_limits<std::size_t>::max()) detail::fail(who, ": the archive would have ", at, " bytes");
    l.size = static_cast<std::size_t>(at);
    std::memcpy(h, magic.data(), magic.size());
    detail::put<std::uint32_t>(h + 8, container_version);
    detail::put<std::uint32_t>(h + 12, header_bytes);
    detail::put<std::uint64_t>(h + 16, at);
    detail::put<std::uint64_t>(h + 24, header_bytes);
    detail::put<std::uint64_t>(h + 32, dir_bytes);
    detail::put<std::uint32_t>(h + 40, static_cast<std::uint32_t>(items_.size()));
    detail::put<std::uint32_t>(h + 44, entry_bytes);
    detail::put<std::uint64_t>(h + 48, names);
    detail::put<std::uint32_t>(h + 56, crc32c(std::span<const std::byte>(h + header_bytes, dir_bytes)));
    detail::put<std::uint32_t>(h + 60, crc32c(std::span<const std::byte>(h, 60)));
    return l;
  }

  std::vector<item> items_;
};

// ---- reading ----------------------------------------------------------------------------------

/// A verified archive: the constructor checks everything (see the top of this header) and throws
/// quant::error on the first problem. Reads copy into owning tensors and vectors; view() and
/// array_view() bind the archive's bytes without copying. Copies share the bytes.
class reader {
 public:
  /// Verifies bytes (kept by reference: they must outlive the reader and every view from it);
  /// `source` names them in error messages (e.g. the file name).
  explicit reader(std::span<const std::byte> bytes, std::string source = {}) : source_(std::move(source)) {
    parse(bytes);
  }
  /// Takes a buffer (e.g. writer::to_buffer()) and verifies it.
  explicit reader(buffer b, std::string source = {}) : source_(std::move(source)) {
    auto owned = std::make_shared<const buffer>(std::move(b));
    parse(owned->span());
    owned_ = std::move(owned);
  }
  /// Reads the whole file at path into a 64-byte-aligned buffer and verifies it.
  static reader open(const std::filesystem::path& path) {
    std::string who = "quant::archive::reader::open: ";
    who += path.string();
    std::error_code ec;
    const std::uintmax_t n = std::filesystem::file_size(path, ec);
    if (ec) detail::fail(who, ": cannot open (", ec.message(), ")");
    if (n > std::numeric_limits<std::size_t>::max() || n > static_cast<std::uintmax_t>(std::numeric_limits<std::streamsize>::max()))
      detail::fail(who, ": ", n, " bytes do not fit in memory");
    buffer b(static_cast<std::size_t>(n));
    std::ifstream in(path, std::ios::binary);
    if (!in || !in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(n)))
      detail::fail(who, ": read error");
    return reader(std::move(b), path.string());
  }

  /// The container version of the data, the archive's bytes, and every record in file order.
  std::uint32_t version() const noexcept { return version_; }
  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  const std::vector<record_info>& records() const noexcept { return records_; }

  /// The record named name, or null.
  const record_info* find(std::string_view name) const noexcept {
    const auto it = std::lower_bound(sorted_.begin(), sorted_.end(), name,
                                     [&](std::size_t i, std::string_view n) { return records_[i].name < n; });
    return it != sorted_.end() && records_[*it].name == name ? &records_[*it] : nullptr;
  }
  /// The record named name; throws quant::error when there is none.
  const record_info& at(std::string_view name) const {
    const record_info* r = find(name);
    if (!r) detail::fail(prefix("quant::archive::reader"), "no record named '", name, "'");
    return *r;
  }

  /// True when name is a tensor record that reads as tensor<F, Gran> (see matches).
  template <class F, class Gran>
  bool holds(std::string_view name) const noexcept {
    const record_info* r = find(name);
    return r && r->kind == record_kind::tensor && matches<F, Gran>(r->tensor);
  }
  /// Reads tensor record name into a new tensor<F, Gran>. Throws quant::error naming the record's
  /// descriptor and F/Gran when they do not match exactly (matches), or when there is no such
  /// tensor record. A run-time group size comes from the record.
  template <class F, class Gran>
  tensor<F, Gran> read(std::string_view name) const {
    return read_record<F, Gran>(typed<F, Gran>(name, "quant::archive::reader::read"));
  }
  /// The same as a view of the archive's bytes (no copy; the bytes must be 64-byte aligned).
  template <class F, class Gran>
  tensor_view<const F, Gran> view(std::string_view name) const {
    const char* who = "quant::archive::reader::view";
    const record_info& r = typed<F, Gran>(name, who);
    check_aligned(who);
    using S = typename Gran::scale_type;
    const auto& s = r.sections;
    const auto* codes = reinterpret_cast<const std::uint8_t*>(bytes_.data() + s[0].offset);
    const std::span<const S> scales(reinterpret_cast<const S*>(bytes_.data() + s[1].offset), s[1].bytes / sizeof(S));
    const std::span<const std::uint8_t> zeros(reinterpret_cast<const std::uint8_t*>(bytes_.data() + s[2].offset),
                                              s[2].bytes);
    const Gran gran = make_gran<Gran>(r.tensor.group_size);
    if (r.tensor.order == column_order::permuted)
      return tensor_view<const F, Gran>({codes, s[0].bytes}, scales, zeros,
                                        {reinterpret_cast<const std::uint32_t*>(bytes_.data() + s[3].offset), r.cols},
                                        r.rows, r.cols, gran);
    return tensor_view<const F, Gran>({codes, s[0].bytes}, scales, zeros, r.rows, r.cols, gran);
  }

  /// Run-time dispatch over candidate types: reads tensor record name as the first of Tensors
  /// (each a quant::tensor<F, Gran>) that it matches and returns fn(tensor&&). fn must return the
  /// same type for every candidate. Throws quant::error listing the record and the candidates
  /// when none matches.
  template <class... Tensors, class Fn>
  decltype(auto) visit(std::string_view name, Fn&& fn) const {
    static_assert(sizeof...(Tensors) > 0, "quant::archive::reader::visit: give at least one candidate type");
    const record_info& r = tensor_record(name, "quant::archive::reader::visit");
    const auto candidates = [] {
      std::string names;
      ((names += names.empty() ? "" : ", ",
        names += type_name<typename detail::tensor_type<Tensors>::format, typename detail::tensor_type<Tensors>::granularity>()),
       ...);
      return names;
    };
    return visit_next<Tensors...>(r, fn, candidates);
  }

  /// Reads fp32 array name (rows * cols floats, row-major; the shape is in at(name)).
  std::vector<float> read_array(std::string_view name) const {
    const record_info& r = array_record(name, "quant::archive::reader::read_array");
    std::vector<float> v(r.rows * r.cols);
    if (!v.empty()) std::memcpy(v.data(), bytes_.data() + r.sections[0].offset, v.size() * sizeof(float));
    return v;
  }
  /// The same without a copy (the bytes must be 64-byte aligned).
  std::span<const float> array_view(std::string_view name) const {
    const char* who = "quant::archive::reader::array_view";
    const record_info& r = array_record(name, who);
    check_aligned(who);
    return {reinterpret_cast<const float*>(bytes_.data() + r.sections[0].offset), r.rows * r.cols};
  }

  /// The value of metadata key, or nullopt; metadata() throws when there is no such key.
  std::optional<std::string_view> find_metadata(std::string_view key) const noexcept {
    const record_info* r = find(key);
    if (!r || r->kind != record_kind::metadata) return std::nullopt;
    return std::string_view(reinterpret_cast<const char*>(bytes_.data() + r->sections[0].offset),
                            static_cast<std::size_t>(r->sections[0].bytes));
  }
  std::string_view metadata(std::string_view key) const {
    const auto v = find_metadata(key);
    if (!v) detail::fail(prefix("quant::archive::reader::metadata"), "no metadata key '", key, "'");
    return *v;
  }

 private:
  std::string prefix(const char* who) const { return source_.empty() ? std::string(who) + ": " : std::string(who) + ": " + source_ + ": "; }

  template <class Gran>
  static Gran make_gran(std::size_t group) {
    if constexpr (Gran::static_group_size == dynamic_group) return Gran{group};
    else return Gran{};
  }

  const record_info& kind_record(std::string_view name, record_kind k, const char* what, const char* who) const {
    const record_info* r = find(name);
    if (!r) detail::fail(prefix(who), "no record named '", name, "'");
    if (r->kind != k)
      detail::fail(prefix(who), "record '", name, "' is ",
                   r->kind == record_kind::tensor ? "a tensor" : r->kind == record_kind::array ? "an array" : "metadata",
                   ", not ", what);
    return *r;
  }
  const record_info& tensor_record(std::string_view name, const char* who) const {
    return kind_record(name, record_kind::tensor, "a tensor", who);
  }
  const record_info& array_record(std::string_view name, const char* who) const {
    return kind_record(name, record_kind::array, "an array", who);
  }
  template <class F, class Gran>
  const record_info& typed(std::string_view name, const char* who) const {
    static_assert(!std::is_const_v<F>, "quant::archive::reader: name the format without const");
    const record_info& r = tensor_record(name, who);
    if (!matches<F, Gran>(r.tensor))
      detail::fail(prefix(who), "record '", name, "' is ", describe(r.tensor), ", not ", type_name<F, Gran>(),
                   " as requested");
    return r;
  }
  void check_aligned(const char* who) const {
    if (reinterpret_cast<std::uintptr_t>(bytes_.data()) % alignment != 0)
      detail::fail(prefix(who), "the archive's bytes are not ", alignment,
                   "-byte aligned, so sections cannot be viewed in place; read a copy instead");
  }

  template <class F, class Gran>
  tensor<F, Gran> read_record(const record_info& r) const {
    tensor<F, Gran> t(r.rows, r.cols, make_gran<Gran>(r.tensor.group_size), r.tensor.order);
    auto v = t.view();
    const std::array<std::span<std::byte>, 4> dst = {std::as_writable_bytes(v.codes()), std::as_writable_bytes(v.scales()),
                                                     std::as_writable_bytes(v.zeros()),
                                                     std::as_writable_bytes(v.input_columns())};
    for (std::size_t s = 0; s < 4; ++s) {
      if (dst[s].size() != r.sections[s].bytes)  // cannot happen after parse(); kept as a guard
        detail::fail(prefix("quant::archive::reader::read"), "record '", r.name, "' section ", s, " has ",
                     r.sections[s].bytes, " bytes, ", type_name<F, Gran>(), " needs ", dst[s].size());
      if (!dst[s].empty()) std::memcpy(dst[s].data(), bytes_.data() + r.sections[s].offset, dst[s].size());
    }
    return t;
  }

  template <class T, class... Rest, class Fn, class Names>
  decltype(auto) visit_next(const record_info& r, Fn& fn, const Names& candidates) const {
    using F = typename detail::tensor_type<T>::format;
    using Gran = typename detail::tensor_type<T>::granularity;
    if (matches<F, Gran>(r.tensor)) return fn(read_record<F, Gran>(r));
    if constexpr (sizeof...(Rest) > 0) {
      return visit_next<Rest...>(r, fn, candidates);
    } else {
      detail::fail(prefix("quant::archive::reader::visit"), "record '", r.name, "' is ", describe(r.tensor),
                   ", none of the candidate types (", candidates(), ")");
    }
  }

  void parse(std::span<const std::byte> b);

  std::string source_;
  std::shared_ptr<const buffer> owned_;
  std::span<const std::byte> bytes_;
  std::uint32_t version_ = 0;
  std::vector<record_info> records_;
  std::vector<std::size_t> sorted_;  // record indices by name
};

inline void reader::parse(std::span<const std::byte> b) {
  using detail::fail;
  using detail::get;
  using detail::hex;
  using u32 = std::uint32_t;
  using u64 = std::uint64_t;
  const std::string who = prefix("quant::archive::reader");
  const u64 size = b.size();
  const std::byte* const h = b.data();
  auto bytes_hex = [](const void* p, std::size_t n) {
    std::string s;
    for (std::size_t i = 0; i < n; ++i) {  // appended piece by piece: GCC 12's -Wrestrict misfires on
      if (i) s += ' ';                      // `const char* + std::string&&` (GCC bug 105329)
      s += hex(static_cast<const unsigned char*>(p)[i]).substr(2);
    }
    return s;
  };
  if (size < magic.size())
    fail(who, "the data has ", size, " bytes, too short for a quant archive (", header_bytes, "-byte header)");
  if (std::memcmp(h, magic.data(), magic.size()) != 0)
    fail(who, "not a quant archive: it starts with ", bytes_hex(h, 8), ", the magic is ", bytes_hex(magic.data(), 8));
  if (size < header_bytes)
    fail(who, "the data has ", size, " bytes, less than the ", header_bytes, "-byte header: the file is truncated");
  const u32 version = get<u32>(h + 8);
  if (version == 0) fail(who, "container version 0 is invalid (versions start at 1): the file is corrupted");
  if (version > container_version)
    fail(who, "container version ", version, " is newer than this reader, which reads versions 1 to ", container_version,
         ": a newer quant wrote it (update quant to read it), or the file is corrupted");
  // Version 1, the only one so far. A later version branches here and keeps this path for old files.
  const u32 header_crc = get<u32>(h + 60), header_computed = crc32c(b.first(60));
  if (header_crc != header_computed)
    fail(who, "header checksum mismatch (stored ", hex(header_crc, 8), ", computed ", hex(header_computed, 8),
         "): the file is corrupted");
  if (get<u32>(h + 12) != header_bytes || get<u32>(h + 44) != entry_bytes || get<u64>(h + 24) != header_bytes)
    fail(who, "header size ", get<u32>(h + 12), ", entry size ", get<u32>(h + 44), " and directory offset ",
         get<u64>(h + 24), " must be ", header_bytes, ", ", entry_bytes, " and ", header_bytes, " in container version 1");
  const u64 file_bytes = get<u64>(h + 16);
  if (file_bytes != size)
    fail(who, "the header says the archive has ", file_bytes, " bytes, the data has ", size,
         ": the file is truncated or has bytes appended");
  const u64 dir_bytes = get<u64>(h + 32), names_bytes = get<u64>(h + 48), avail = size - header_bytes;
  const u32 count = get<u32>(h + 40);
  if (count > avail / entry_bytes)
    fail(who, "the directory would hold ", count, " entries of ", entry_bytes, " bytes, more than the ", avail,
         " bytes after the header");
  const u64 entries = u64{count} * entry_bytes;
  if (names_bytes > avail - entries || dir_bytes != entries + names_bytes)
    fail(who, "the directory is ", dir_bytes, " bytes with ", count, " entries and a ", names_bytes,
         "-byte name table (", size, "-byte file): sizes inconsistent");
  const u32 dir_crc = get<u32>(h + 56), dir_computed = crc32c(b.subspan(header_bytes, dir_bytes));
  if (dir_crc != dir_computed)
    fail(who, "directory checksum mismatch (stored ", hex(dir_crc, 8), ", computed ", hex(dir_computed, 8),
         "): the file is corrupted");
  const u64 dir_end = header_bytes + dir_bytes;
  const std::byte* const names = h + header_bytes + entries;

  struct span_ref {
    u64 begin, end;
    std::size_t record, section;
  };
  std::vector<record_info> recs;
  std::vector<span_ref> used;
  recs.reserve(count);
  used.reserve(std::size_t{count} * 4);
  static constexpr std::array<const char*, 4> tensor_sections = {"codes", "scales", "zero-point", "column-order"};
  for (std::size_t i = 0; i < count; ++i) {
    const std::byte* e = h + header_bytes + i * entry_bytes;
    record_info r;
    const u32 kind = get<u32>(e), name_len = get<u32>(e + 4);
    const u64 name_off = get<u64>(e + 8);
    if (kind < 1 || kind > 3)
      fail(who, "directory entry ", i, " has record kind ", kind, "; known kinds are 1 (tensor), 2 (array), 3 (metadata)");
    if (name_len == 0 || name_len > max_name_bytes || name_off > names_bytes || name_len > names_bytes - name_off)
      fail(who, "directory entry ", i, " has a name of ", name_len, " bytes at offset ", name_off, " of the ",
           names_bytes, "-byte name table (names are 1 to ", max_name_bytes, " bytes inside it)");
    r.name.assign(reinterpret_cast<const char*>(names + name_off), name_len);
    if (r.name.find('\0') != std::string::npos) fail(who, "directory entry ", i, " has a name with a NUL byte");
    r.kind = static_cast<record_kind>(kind);
    const std::string ctx = detail::message(who, "record '", r.name, "' (entry ", i, ")");
    const u64 rows = get<u64>(e + 48), cols = get<u64>(e + 56);
    std::array<u64, 4> expect{};
    if (r.kind == record_kind::tensor) {
      tensor_descriptor& d = r.tensor;
      d.format_id = get<u32>(e + 16), d.layout_version = get<u32>(e + 20), d.bits = get<u32>(e + 24);
      const u32 scheme = get<u32>(e + 28), gran = get<u32>(e + 32), scale = get<u32>(e + 36), order = get<u32>(e + 64);
      const u64 group = get<u64>(e + 40);
      if (d.bits < 1 || d.bits > 8) fail(ctx, ": ", d.bits, " bits per code; formats have 1 to 8");
      const builtin_format* bf = find_builtin(d.format_id);
      if (d.format_id < first_user_format_id) {
        std::string known;
        for (const auto& f : builtin_formats) known += detail::message(known.empty() ? "" : ", ", hex(f.id), " ", f.name);
        if (!bf)
          fail(ctx, ": unknown format id ", hex(d.format_id), " (built-in ids: ", known, "; user formats use ids >= ",
               hex(first_user_format_id, 8), ")");
        if (d.layout_version != bf->layout_version)
          fail(ctx, ": format ", bf->name, " with layout version ", d.layout_version,
               ", which this reader does not implement (it reads layout ", bf->layout_version, ")");
        if (d.bits != bf->bits) fail(ctx, ": format ", bf->name, " with ", d.bits, " bits; it has ", bf->bits);
      }
      if (scheme > 1) fail(ctx, ": scheme ", scheme, "; known schemes are 0 (symmetric), 1 (asymmetric)");
      d.asymmetric = scheme == 1;
      if (d.asymmetric && bf && !bf->integer)
        fail(ctx, ": an asymmetric scheme over ", bf->name, ", whose codes are not integers");
      if (gran > 2) fail(ctx, ": granularity ", gran, "; known are 0 (per-tensor), 1 (per-channel), 2 (per-group)");
      d.granularity = static_cast<granularity_kind>(gran);
      if (d.granularity == granularity_kind::group ? (group < 1 || group > max_group_size) : group != 0)
        fail(ctx, ": group size ", group, " (per-group: 1 to ", max_group_size, "; otherwise 0)");
      if (scale < 1 || scale > 4) fail(ctx, ": scale type ", scale, "; known are 1 (f32), 2 (f16), 3 (bf16), 4 (e8m0)");
      d.scale = static_cast<scale_id>(scale);
      if (order > 1) fail(ctx, ": column order ", order, "; known are 0 (natural), 1 (permuted)");
      d.order = order ? column_order::permuted : column_order::natural;
      if (rows == 0 || cols == 0 || rows > std::numeric_limits<std::size_t>::max() ||
          cols > std::numeric_limits<std::size_t>::max())
        fail(ctx, ": shape ", rows, " x ", cols, " (both from 1 to SIZE_MAX)");
      d.rows = static_cast<std::size_t>(rows), d.cols = static_cast<std::size_t>(cols);
      d.group_size = static_cast<std::size_t>(group);
      expect = detail::tensor_section_bytes(d, ctx);
    } else {
      for (std::size_t k = 16; k < 72; ++k)
        if (e[k] != std::byte{0} && !(r.kind == record_kind::array && k >= 48 && k < 64))
          fail(ctx, ": byte ", k, " of its directory entry is ", hex(static_cast<u32>(e[k])),
               "; fields an array or metadata record does not use must be 0");
      if (r.kind == record_kind::array) {
        if (rows == 0 || cols == 0) fail(ctx, ": array shape ", rows, " x ", cols, " (both must be >= 1)");
        expect[0] = detail::checked_mul(detail::checked_mul(rows, cols, ctx), sizeof(float), ctx);
      } else {
        expect[0] = get<u64>(e + 80);  // a metadata value has any size
      }
    }
    if (get<u32>(e + 68) != 0) fail(ctx, ": the reserved field at entry byte 68 is not 0");
    for (std::size_t s = 0; s < 4; ++s) {
      const std::byte* se = e + 72 + 24 * s;
      section& sec = r.sections[s];
      sec.offset = get<u64>(se), sec.bytes = get<u64>(se + 8), sec.crc = get<u32>(se + 16);
      const char* sname = r.kind == record_kind::tensor ? tensor_sections[s] : r.kind == record_kind::array ? "data" : "value";
      if (get<u32>(se + 20) != 0) fail(ctx, ": the reserved field of section ", s, " is not 0");
      if (sec.bytes != expect[s])
        fail(ctx, ": its ", sname, " section has ", sec.bytes, " bytes, the record's descriptor implies ", expect[s]);
      if (sec.bytes == 0) {
        if (sec.offset != 0 || sec.crc != 0)
          fail(ctx, ": the empty section ", s, " has offset ", sec.offset, " and checksum ", hex(sec.crc, 8),
               " (both must be 0)");
        continue;
      }
      if (sec.offset % alignment != 0 || sec.offset < dir_end || sec.offset > size || sec.bytes > size - sec.offset)
        fail(ctx, ": its ", sname, " section [", sec.offset, ", +", sec.bytes, ") is not a ", alignment,
             "-byte-aligned range between the directory's end (", dir_end, ") and the end of the file (", size, ")");
      used.push_back({sec.offset, sec.offset + sec.bytes, i, s});
    }
    r.rows = static_cast<std::size_t>(rows), r.cols = static_cast<std::size_t>(cols);
    recs.push_back(std::move(r));
  }

  std::vector<std::size_t> sorted(recs.size());
  for (std::size_t i = 0; i < sorted.size(); ++i) sorted[i] = i;
  std::sort(sorted.begin(), sorted.end(), [&](std::size_t x, std::size_t y) {
    return recs[x].name != recs[y].name ? recs[x].name < recs[y].name : x < y;
  });
  for (std::size_t i = 1; i < sorted.size(); ++i)
    if (recs[sorted[i - 1]].name == recs[sorted[i]].name)
      fail(who, "directory entries ", sorted[i - 1], " and ", sorted[i], " are both named '", recs[sorted[i]].name, "'");

  // The sections tile the file after the directory with zero padding only.
  std::sort(used.begin(), used.end(), [](const span_ref& x, const span_ref& y) { return x.begin < y.begin; });
  auto zero_gap = [&](u64 from, u64 to) {
    for (u64 k = from; k < to; ++k)
      if (h[k] != std::byte{0})
        fail(who, "byte ", k, " is ", hex(static_cast<u32>(h[k])),
             ", but it is padding outside every section and must be 0: the file is corrupted");
  };
  u64 at = dir_end;
  for (std::size_t k = 0; k < used.size(); ++k) {
    if (used[k].begin < at) {
      const span_ref& p = used[k - 1];  // k > 0: every section starts at or after dir_end
      fail(who, "section ", used[k].section, " of record '", recs[used[k].record].name, "' [", used[k].begin, ", ",
           used[k].end, ") overlaps section ", p.section, " of record '", recs[p.record].name, "' [", p.begin, ", ",
           p.end, ")");
    }
    zero_gap(at, used[k].begin);
    at = used[k].end;
  }
  zero_gap(at, size);

  for (const span_ref& u : used) {
    const record_info& r = recs[u.record];
    const u32 computed = crc32c(b.subspan(u.begin, u.end - u.begin));
    if (computed != r.sections[u.section].crc)
      fail(who, "record '", r.name, "': checksum mismatch in section ", u.section, " (stored ",
           hex(r.sections[u.section].crc, 8), ", computed ", hex(computed, 8), "): the file is corrupted");
  }
  for (const record_info& r : recs) {
    if (r.kind != record_kind::tensor || r.tensor.order != column_order::permuted) continue;
    std::vector<bool> seen(r.cols, false);
    for (std::size_t j = 0; j < r.cols; ++j) {
      const u32 c = get<u32>(h + r.sections[3].offset + 4 * j);
      if (c >= r.cols || seen[c])
        fail(who, "record '", r.name, "': column order entry ", j, " = ", c, " is ",
             c >= r.cols ? "not a column" : "repeated", "; it must be a permutation of [0, ", r.cols, ")");
      seen[c] = true;
    }
  }
  version_ = version;
  records_ = std::move(recs);
  sorted_ = std::move(sorted);
  bytes_ = b;
}

}  // namespace archive
QUANT_NAMESPACE_END
