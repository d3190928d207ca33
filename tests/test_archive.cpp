// quant/io/archive.hpp, quant's own file format, and examples/llama2c/save.hpp, a quantized llama2c
// model saved to it and loaded back without the fp32 checkpoint.
//
// Asserted: bit-exact round trips (every section byte, the descriptor, gemv outputs) for every
// built-in format and granularity kind, static and run-time group sizes, the four scale types, a
// permuted act-order tensor from quant::gptq and user formats, in memory, through files and as
// in-place views; reads into the wrong type and run-time dispatch; writer errors and the
// temporary-then-rename save; hostile files: truncation at every byte, every single-byte change of
// a small file, and lying sizes, offsets, counts, ids and versions with valid checksums, each a
// quant::error; the test vector tests/data/archive_v1.qar (container version 1) read and
// reproduced byte for byte. Models: every report format, fp32, W8A8 and quantized classifiers
// saved and loaded with bit-identical logits; with the shared models folder, stories260K at RTN
// int4 g32 asym over a few hundred tokens, and its truncated and corrupted files.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <llama2c/calibrate.hpp>
#include <llama2c/llama2c.hpp>
#include <llama2c/save.hpp>
#include <quant/algorithms/gptq.hpp>
#include <quant/io/archive.hpp>
#include <quant/quant.hpp>
#include <report/formats.hpp>

#include "test_support.hpp"
#include "user_formats.hpp"

namespace {

namespace fs = std::filesystem;
namespace ar = quant::archive;
using bytes = std::vector<std::byte>;

/// A format whose id is below 0x80000000 without being a built-in: the writer must refuse it.
struct bad_id_format {};
}  // namespace

template <>
struct quant::format_traits<bad_id_format> : quant::integer_traits<4> {
  static constexpr std::string_view name = "bad4";
  static constexpr std::uint32_t id = 0x55;
  static constexpr std::uint32_t layout_version = 1;
};

namespace {

/// A unique temporary path, removed (file or folder) at scope exit.
struct temp_path {
  fs::path path;
  explicit temp_path(const std::string& stem) {
    static std::atomic<unsigned> counter{0};
    path = fs::temp_directory_path() /
           (stem + "_" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) + "_" +
            std::to_string(counter++));
  }
  ~temp_path() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

/// writer::add accepts a T.
template <class T>
concept can_add = requires(ar::writer& w, T&& t) { w.add("x", std::forward<T>(t)); };

bytes copy_of(std::span<const std::byte> s) { return bytes(s.begin(), s.end()); }
ar::buffer to_buffer(const bytes& b) {
  ar::buffer out(b.size());
  if (!b.empty()) std::memcpy(out.data(), b.data(), b.size());
  return out;
}
bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  bytes b(c.size());
  if (!c.empty()) std::memcpy(b.data(), c.data(), c.size());
  return b;
}
void write_file(const fs::path& p, std::span<const std::byte> b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

/// The message of the quant::error f throws ("" and a failed check when it throws nothing or
/// something else).
template <class Fn>
std::string error_of(Fn&& f) {
  try {
    f();
  } catch (const quant::error& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected quant::error, got another exception: ", e.what());
    return {};
  }
  FAIL("expected quant::error, nothing was thrown");
  return {};
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

template <class Gran>
  requires(Gran::kind != quant::granularity_kind::group)
std::size_t group_of(const Gran&) {
  return 0;
}
template <class Gran>
  requires(Gran::kind == quant::granularity_kind::group)
std::size_t group_of(const Gran& g) {
  return g.group_size();
}

template <class F, class Gran>
void check_same(quant::tensor_view<const F, Gran> a, quant::tensor_view<const F, Gran> b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  CHECK(a.permuted() == b.permuted());
  CHECK(group_of(a.granularity()) == group_of(b.granularity()));
  auto same = [](auto x, auto y) {
    return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size_bytes()) == 0);
  };
  CHECK(same(a.codes(), b.codes()));
  CHECK(same(a.scales(), b.scales()));
  CHECK(same(a.zeros(), b.zeros()));
  CHECK(same(a.input_columns(), b.input_columns()));
}
/// y = W x of the tensor (exact mode) for a realistic activation vector.
template <class F, class Gran>
std::vector<float> gemv_of(quant::tensor_view<const F, Gran> t) {
  const auto x = qt::activations(1, t.cols(), 99);
  std::vector<float> y(t.rows());
  quant::gemv(t, x, y);
  return y;
}

/// Writes t (with another record before it and metadata after), reads it back in three ways
/// (an owned buffer, a file, a borrowed span) and checks every byte, the descriptor and gemv.
template <class F, class Gran>
void round_trip(const quant::tensor<F, Gran>& t) {
  const std::string type = ar::type_name<F, Gran>();
  CAPTURE(type);
  const std::vector<float> other = qt::gaussian(7 * 5, 3);
  ar::writer w;
  w.add_array("other", other, 7, 5);
  w.add("t", t);
  w.add_metadata("what", ar::type_name<F, Gran>());
  const ar::buffer buf = w.to_buffer();
  REQUIRE(buf.size() == w.file_bytes());
  const ar::reader r(buf.span());  // borrowed, 64-byte aligned
  const ar::record_info& info = r.at("t");
  CHECK(info.kind == ar::record_kind::tensor);
  CHECK(info.tensor == ar::descriptor_of(t.cview()));
  CHECK(info.tensor.group_size == group_of(t.cview().granularity()));
  CHECK(r.holds<F, Gran>("t"));
  const quant::tensor<F, Gran> back = r.read<F, Gran>("t");
  check_same(t.cview(), back.cview());
  check_same(t.cview(), r.view<F, Gran>("t"));
  const auto y0 = gemv_of(t.cview()), y1 = gemv_of(back.cview());
  CHECK(std::memcmp(y0.data(), y1.data(), y0.size() * sizeof(float)) == 0);
  CHECK(r.read_array("other") == other);
  CHECK(r.metadata("what") == ar::type_name<F, Gran>());
  // through a file
  temp_path p("quant_archive_rt");
  w.save(p.path);
  CHECK(read_file(p.path) == copy_of(buf.span()));
  check_same(t.cview(), ar::reader::open(p.path).read<F, Gran>("t").cview());
}

template <class F, class Gran>
quant::tensor<F, Gran> quantized(std::size_t rows, std::size_t cols, const Gran& gran = {}, std::uint64_t seed = 1) {
  const auto w = qt::heavy_tailed(rows, cols, seed);
  return quant::quantize<F>(quant::matrix_view<const float>(w.data(), rows, cols), gran);
}

// ---- the small archive of the test vector and the hostile-input tests ---------------------------

/// Two tensors given byte by byte (the int4 per_group<4, asym, f16> example of doc/formats.md
/// section 8, and a permuted fp4 e2m1 tensor with run-time groups of 4 and e8m0 scales), a 2 x 3
/// array and two metadata strings, one empty.
struct vector_records {
  using doc_tensor = quant::tensor<quant::int4, quant::per_group<4, quant::asymmetric, quant::fp16>>;
  using fp4_gran = quant::per_group<quant::dynamic_group, quant::symmetric, quant::e8m0>;
  using fp4_tensor = quant::tensor<quant::fp4_e2m1, fp4_gran>;
  doc_tensor a{2, 10};
  fp4_tensor b{2, 8, fp4_gran{4}, quant::column_order::permuted};
  std::vector<float> array{1.5f, -2.0f, 0.25f, 3.0f, -0.0f, 1e-3f};

  vector_records() {
    const std::uint8_t codes[10] = {0x40, 0xf9, 0x42, 0xf8, 0xa0, 0x60, 0xfa, 0x50, 0xf7, 0x00};
    const std::uint16_t scales[6] = {0x3000, 0x3400, 0x3800, 0x3000, 0x3400, 0x0000};
    const std::uint8_t zeros[3] = {0x04, 0x8f, 0x03};
    std::memcpy(a.view().codes().data(), codes, 10);
    for (int i = 0; i < 6; ++i) a.view().scales()[i] = quant::fp16{scales[i]};
    std::memcpy(a.view().zeros().data(), zeros, 3);
    const std::uint8_t fcodes[8] = {0x21, 0x43, 0x65, 0x87, 0xa9, 0xcb, 0xed, 0x0f};
    std::memcpy(b.view().codes().data(), fcodes, 8);
    const std::uint8_t fscales[4] = {127, 126, 128, 0};
    for (int i = 0; i < 4; ++i) b.view().scales()[i] = quant::e8m0{fscales[i]};
    const std::uint32_t order[8] = {3, 0, 7, 1, 6, 2, 5, 4};
    std::memcpy(b.view().input_columns().data(), order, sizeof order);
  }
  ar::writer writer() const {
    ar::writer w;
    w.add("doc/int4-g4-asym", a);
    w.add("fp4-permuted", b);
    w.add_array("array", array, 2, 3);
    w.add_metadata("note", "quant archive test vector");
    w.add_metadata("empty", "");
    return w;
  }
};

/// tests/data/archive_v1.qar, next to this file.
fs::path vector_path() { return fs::path(__FILE__).parent_path() / "data" / "archive_v1.qar"; }

// Field helpers for patching a file: entry i starts at 64 + 168 i.
std::size_t entry_at(std::size_t i) { return ar::header_bytes + i * ar::entry_bytes; }
template <class T>
void put(bytes& f, std::size_t off, T v) {
  std::memcpy(f.data() + off, &v, sizeof v);
}
template <class T>
T get(const bytes& f, std::size_t off) {
  T v;
  std::memcpy(&v, f.data() + off, sizeof v);
  return v;
}
/// Recomputes the directory checksum (when the directory field stays inside the file) and the
/// header checksum, so that only the validation can find a lie.
void refresh(bytes& f) {
  const auto dir = get<std::uint64_t>(f, 32);
  if (dir <= f.size() - ar::header_bytes)
    put<std::uint32_t>(f, 56, ar::crc32c(std::span<const std::byte>(f.data() + ar::header_bytes, dir)));
  put<std::uint32_t>(f, 60, ar::crc32c(std::span<const std::byte>(f.data(), 60)));
}
/// Recomputes the checksum of section s of entry i (its range must be inside the file).
void refresh_section(bytes& f, std::size_t i, std::size_t s) {
  const std::size_t e = entry_at(i) + 72 + 24 * s;
  const auto off = get<std::uint64_t>(f, e), n = get<std::uint64_t>(f, e + 8);
  put<std::uint32_t>(f, e + 16, ar::crc32c(std::span<const std::byte>(f.data() + off, n)));
}

// ---- llama2c models ---------------------------------------------------------------------------

/// Synthetic llama2c weights (grouped-query attention, an FFN width of 172 as stories260K's, so
/// groups of 32 and 128 end short): heavy-tailed linears, norms around 1.
llama2c::weights synthetic_weights(bool shared_classifier, std::uint64_t seed) {
  llama2c::weights w;
  llama2c::config& c = w.cfg;
  c.dim = 64, c.hidden_dim = 172, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 96, c.seq_len = 32;
  c.shared_classifier = shared_classifier;
  w.token_embedding = qt::gaussian(c.vocab_size * c.dim, seed, 0.5);
  auto norm = [&](std::size_t n, std::uint64_t s) {
    auto v = qt::gaussian(n, s, 0.1);
    for (auto& x : v) x += 1.0f;
    return v;
  };
  w.rms_att = norm(c.n_layers * c.dim, seed + 1);
  w.rms_ffn = norm(c.n_layers * c.dim, seed + 2);
  w.rms_final = norm(c.dim, seed + 3);
  for (llama2c::kind k : llama2c::all_kinds)
    w.linear[static_cast<std::size_t>(k)] = qt::heavy_tailed(c.n_layers * llama2c::rows_of(c, k),
                                                             llama2c::cols_of(c, k), seed + 10 + static_cast<std::uint64_t>(k), 0.08);
  if (!shared_classifier) w.wcls = qt::gaussian(c.vocab_size * c.dim, seed + 20, 0.1);
  return w;
}

/// Every logit of a teacher-forced pass over tokens.
std::vector<float> logits_of(const llama2c::model& m, const std::vector<int>& tokens) {
  llama2c::state s(m.cfg());
  std::vector<float> out;
  for (std::size_t pos = 0; pos < tokens.size(); ++pos) {
    const auto l = llama2c::forward(m, s, tokens[pos], pos);
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}
std::vector<int> synthetic_tokens(const llama2c::config& c) {
  std::vector<int> t(c.seq_len);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int>((i * 37 + 5) % c.vocab_size);
  return t;
}
bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}
/// The loaded model runs the same linears (types, modes, bytes) and gives bit-identical logits.
void check_same_model(const llama2c::model& a, const llama2c::model& b) {
  for (std::size_t l = 0; l < a.cfg().n_layers; ++l)
    for (llama2c::kind k : llama2c::all_kinds) CHECK(a.get(l, k).describe() == b.get(l, k).describe());
  CHECK(a.classifier().describe() == b.classifier().describe());
  CHECK(a.linear_bytes() == b.linear_bytes());
  const auto t = synthetic_tokens(a.cfg());
  CHECK(bit_identical(logits_of(a, t), logits_of(b, t)));
}

}  // namespace

// =================================================================================================

TEST_CASE("crc32c: the Castagnoli check value, table and instruction paths agree, chaining") {
  const std::string_view check = "123456789";
  CHECK(ar::crc32c(std::as_bytes(std::span(check.data(), check.size()))) == 0xE3069283u);
  CHECK(ar::crc32c({}) == 0u);
  const auto data = qt::gaussian(1000, 5);
  const auto all = std::as_bytes(std::span(data));
  for (std::size_t n : {0, 1, 7, 8, 9, 63, 64, 65, 1000, 3999, 4000}) {
    const auto part = all.first(n);
    const std::uint32_t table = ~ar::detail::crc32c_portable(~0u, reinterpret_cast<const unsigned char*>(part.data()), n);
    CHECK(ar::crc32c(part) == table);
    // a bitwise reference, one bit at a time
    std::uint32_t c = ~0u;
    for (std::byte b : part) {
      c ^= static_cast<std::uint8_t>(b);
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    CHECK(ar::crc32c(part) == ~c);
    for (std::size_t cut : {std::size_t{0}, n / 3, n})
      CHECK(ar::crc32c(part.subspan(cut), ar::crc32c(part.first(cut))) == ar::crc32c(part));
  }
}

TEST_CASE("archive round trips every built-in format and granularity kind bit for bit") {
  using namespace quant;
  // int8: per-tensor, per-channel (both schemes), groups; float, bf16 scales
  round_trip(quantized<int8, per_tensor<symmetric>>(24, 172));
  round_trip(quantized<int8, per_channel<asymmetric>>(24, 172));
  round_trip(quantized<int8, per_channel<symmetric, bf16>>(24, 172));
  round_trip(quantized<int8, per_group<64, asymmetric, fp16>>(24, 172));
  // int4: static groups (sym, asym), a run-time group size, per-channel
  round_trip(quantized<int4, per_group<32, symmetric, fp16>>(24, 172));
  round_trip(quantized<int4, per_group<32, asymmetric, fp16>>(24, 172));
  round_trip(quantized<int4>(24, 172, per_group<dynamic_group, asymmetric, bf16>{48}));
  round_trip(quantized<int4, per_channel<asymmetric>>(24, 172));
  // int3, int2
  round_trip(quantized<int3, per_group<128, asymmetric, fp16>>(24, 172));
  round_trip(quantized<int3, per_channel<symmetric>>(24, 172));
  round_trip(quantized<int2, per_group<32, asymmetric, fp16>>(24, 172));
  round_trip(quantized<int2, per_tensor<asymmetric, bf16>>(24, 172));
  // nf4
  round_trip(quantized<nf4, per_group<64, symmetric, fp16>>(24, 172));
  round_trip(quantized<nf4, per_channel<symmetric>>(24, 172));
  // fp8 e4m3 / e5m2, MXFP8
  round_trip(quantized<fp8_e4m3, per_channel<symmetric>>(24, 172));
  round_trip(quantized<fp8_e4m3, per_group<32, symmetric, e8m0>>(24, 172));
  round_trip(quantized<fp8_e5m2, per_channel<symmetric, bf16>>(24, 172));
  round_trip(quantized<fp8_e5m2, per_tensor<symmetric, fp16>>(24, 172));
  // fp4 e2m1: MXFP4, fp16 scales, a run-time group size
  round_trip(quantized<fp4_e2m1, per_group<32, symmetric, e8m0>>(24, 172));
  round_trip(quantized<fp4_e2m1, per_group<32, symmetric, fp16>>(24, 172));
  round_trip(quantized<fp4_e2m1>(24, 172, per_group<dynamic_group, symmetric, e8m0>{16}));
  // user formats (ids >= 0x80000000): a code table and an asymmetric 6-bit integer
  round_trip(quantized<user::nf3, per_group<32, symmetric, fp16>>(24, 172));
  round_trip(quantized<user::int6, per_group<32, asymmetric, fp16>>(24, 172));
}

TEST_CASE("archive round trips a permuted act-order tensor made by quant::gptq") {
  using namespace quant;
  const std::size_t rows = 48, cols = 256, tokens = 1024;
  const auto w = qt::heavy_tailed(rows, cols, 11);
  const auto x = qt::activations(tokens, cols, 12);
  gptq::hessian_accumulator h(cols);
  h.add(matrix_view<const float>(x.data(), tokens, cols));
  gptq::options o;
  o.act_order = true;
  const auto t = gptq::quantize<int4>(matrix_view<const float>(w.data(), rows, cols), h.matrix(),
                                      per_group<32, asymmetric, fp16>{}, o);
  REQUIRE(t.permuted());
  bool identity = true;
  for (std::size_t j = 0; j < cols; ++j) identity = identity && t.cview().input_columns()[j] == j;
  REQUIRE_FALSE(identity);
  round_trip(t);
  // the same with a run-time group size
  const auto td = gptq::quantize<int3>(matrix_view<const float>(w.data(), rows, cols), h.matrix(),
                                       per_group<dynamic_group, asymmetric, fp16>{64}, o);
  REQUIRE(td.permuted());
  round_trip(td);
}

TEST_CASE("archive: records, lookups, metadata, arrays, views of unaligned bytes") {
  using namespace quant;
  const auto t = quantized<int4, per_group<32, asymmetric, fp16>>(16, 96);
  const auto n = quantized<nf4, per_group<64, symmetric, fp16>>(8, 128, {}, 2);
  const std::vector<float> emb = qt::gaussian(12 * 4, 9), vec = qt::gaussian(5, 10);
  ar::writer w;
  w.add("layers.0.wq", t);
  w.add("layers.0.wk", n.cview());
  w.add_array("emb", emb, 12, 4);
  w.add_array("vec", vec);
  w.add_metadata("model", "test");
  w.add_metadata("empty", "");
  w.add_metadata("binary", std::string_view("a\0b\xff", 4));
  CHECK(w.size() == 7);
  CHECK(w.contains("emb"));
  CHECK_FALSE(w.contains("nope"));
  const ar::reader r(w.to_buffer(), "memory");
  CHECK(r.version() == ar::container_version);
  REQUIRE(r.records().size() == 7);
  CHECK(r.records()[0].name == "layers.0.wq");  // file order
  CHECK(r.records()[6].name == "binary");
  CHECK(r.find("nope") == nullptr);
  CHECK(r.at("emb").rows == 12);
  CHECK(r.at("emb").cols == 4);
  CHECK(r.at("vec").rows == 1);
  CHECK(r.read_array("emb") == emb);
  const auto av = r.array_view("vec");
  CHECK(std::vector<float>(av.begin(), av.end()) == vec);
  CHECK(r.metadata("model") == "test");
  CHECK(r.metadata("empty").empty());
  CHECK(r.metadata("binary") == std::string_view("a\0b\xff", 4));
  CHECK_FALSE(r.find_metadata("emb").has_value());  // an array, not metadata
  // every section at a multiple of 64
  for (const auto& rec : r.records())
    for (const auto& s : rec.sections) CHECK(s.offset % 64 == 0);
  CHECK(contains(error_of([&] { (void)r.read_array("nope"); }), "memory: no record named 'nope'"));
  CHECK(contains(error_of([&] { (void)r.read_array("layers.0.wq"); }), "record 'layers.0.wq' is a tensor, not an array"));
  CHECK(contains(error_of([&] { (void)r.read<int4, per_group<32, asymmetric, fp16>>("emb"); }), "is an array, not a tensor"));
  CHECK(contains(error_of([&] { (void)r.metadata("vec"); }), "no metadata key 'vec'"));

  // bytes at an odd address: reads copy, views refuse
  const ar::buffer good = w.to_buffer();
  ar::buffer shifted(good.size() + 1);
  std::memcpy(shifted.data() + 1, good.data(), good.size());
  const ar::reader ru(shifted.span().subspan(1));
  check_same(t.cview(), ru.read<int4, per_group<32, asymmetric, fp16>>("layers.0.wq").cview());
  CHECK(ru.read_array("emb") == emb);
  CHECK(contains(error_of([&] { (void)ru.view<int4, per_group<32, asymmetric, fp16>>("layers.0.wq"); }), "aligned"));
  CHECK(contains(error_of([&] { (void)ru.array_view("emb"); }), "aligned"));
}

TEST_CASE("archive: reading into the wrong type names both; run-time dispatch over candidate types") {
  using namespace quant;
  const auto t = quantized<int4, per_group<32, asymmetric, fp16>>(16, 96);
  ar::writer w;
  w.add("t", t);
  const ar::reader r(w.to_buffer());
  const std::string rec = "int4 per_group<32, asym, f16> [16 x 96] (format id 0x02, layout 1)";
  auto wrong = [&](auto read, const std::string& type) {
    const std::string e = error_of(read);
    CHECK(contains(e, "quant::archive::reader::read: record 't' is " + rec));
    CHECK(contains(e, "not " + type + " as requested"));
  };
  wrong([&] { (void)r.read<int4, per_group<32, symmetric, fp16>>("t"); }, "int4 per_group<32, sym, f16>");
  wrong([&] { (void)r.read<int4, per_group<64, asymmetric, fp16>>("t"); }, "int4 per_group<64, asym, f16>");
  wrong([&] { (void)r.read<int4, per_group<32, asymmetric, float>>("t"); }, "int4 per_group<32, asym, f32>");
  wrong([&] { (void)r.read<int4, per_channel<asymmetric, fp16>>("t"); }, "int4 per_channel<asym, f16>");
  wrong([&] { (void)r.read<int3, per_group<32, asymmetric, fp16>>("t"); }, "int3 per_group<32, asym, f16>");
  wrong([&] { (void)r.read<nf4, per_group<32, symmetric, fp16>>("t"); }, "nf4 per_group<32, sym, f16>");
  wrong([&] { (void)r.read<user::int6, per_group<32, asymmetric, fp16>>("t"); }, "int6 per_group<32, asym, f16>");
  CHECK_FALSE(r.holds<int4, per_group<64, asymmetric, fp16>>("t"));
  CHECK(contains(error_of([&] { (void)r.view<int8, per_channel<symmetric>>("t"); }), "not int8 per_channel<sym, f32>"));
  // a run-time group size reads any group size of the right format, scheme and scale type
  const auto d = r.read<int4, per_group<dynamic_group, asymmetric, fp16>>("t");
  CHECK(d.cview().granularity().group_size() == 32);
  CHECK(std::memcmp(d.cview().codes().data(), t.cview().codes().data(), t.cview().codes().size()) == 0);

  // visit: the first matching candidate
  using c1 = tensor<nf4, per_group<64, symmetric, fp16>>;
  using c2 = tensor<int4, per_group<128, asymmetric, fp16>>;
  using c3 = tensor<int4, per_group<32, asymmetric, fp16>>;
  using c4 = tensor<int4, per_group<dynamic_group, asymmetric, fp16>>;
  const std::string got = r.visit<c1, c2, c3, c4>("t", []<class F, class Gran>(tensor<F, Gran>&& x) {
    return ar::type_name<F, Gran>() + " " + std::to_string(x.rows());
  });
  CHECK(got == "int4 per_group<32, asym, f16> 16");
  CHECK(r.visit<c1, c4>("t", [](auto&& x) { return x.cview().granularity().group_size(); }) == 32);
  const std::string none = error_of([&] { (void)r.visit<c1, c2>("t", [](auto&&) { return 0; }); });
  CHECK(contains(none, "record 't' is " + rec));
  CHECK(contains(none, "none of the candidate types (nf4 per_group<64, sym, f16>, int4 per_group<128, asym, f16>)"));
}

TEST_CASE("archive writer: bad names, empty or mis-sized data, reserved ids; write leaves a wrong buffer alone") {
  using namespace quant;
  const auto t = quantized<int4, per_group<32, asymmetric, fp16>>(8, 64);
  ar::writer w;
  w.add("t", t);
  CHECK(contains(error_of([&] { w.add("t", t); }), "a record named 't' was already added"));
  CHECK(contains(error_of([&] { w.add_metadata("t", "x"); }), "a record named 't' was already added"));
  CHECK(contains(error_of([&] { w.add_metadata("", "x"); }), "the record name is empty"));
  CHECK(contains(error_of([&] { w.add_metadata(std::string(ar::max_name_bytes + 1, 'n'), "x"); }), "more than max_name_bytes"));
  CHECK(contains(error_of([&] { w.add_metadata(std::string_view("a\0b", 3), "x"); }), "NUL"));
  using t4 = tensor<int4, per_group<32, asymmetric, fp16>>;
  static_assert(!can_add<t4>, "a temporary tensor would dangle: add(name, tensor&&) is deleted");
  static_assert(can_add<const t4&>);
  const tensor<int4, per_group<32, asymmetric, fp16>> empty;
  CHECK(contains(error_of([&] { w.add("empty", empty); }), "tensor 'empty' is empty"));
  const std::vector<float> v(10);
  CHECK(contains(error_of([&] { w.add_array("a", v, 3, 3); }), "has 10 elements for a 3 x 3 shape"));
  CHECK(contains(error_of([&] { w.add_array("a", std::span<const float>()); }), "has 0 elements"));
  const auto bad = quantized<bad_id_format, per_channel<symmetric>>(4, 16);
  CHECK(contains(error_of([&] { w.add("bad", bad); }), "reserved for built-in formats"));
  CHECK(w.size() == 1);  // nothing was added by the failed calls
  std::vector<std::byte> out(w.file_bytes() + 1, std::byte{0xAB});
  CHECK(contains(error_of([&] { w.write(out); }), "out has"));
  CHECK(std::all_of(out.begin(), out.end(), [](std::byte b) { return b == std::byte{0xAB}; }));
  out.pop_back();
  w.write(out);
  CHECK(ar::reader(out).read<int4, per_group<32, asymmetric, fp16>>("t").rows() == 8);
}

TEST_CASE("archive writer::save goes through a temporary file; a failed save leaves the target alone") {
  using namespace quant;
  const auto t = quantized<int4, per_group<32, asymmetric, fp16>>(8, 64);
  ar::writer w;
  w.add("t", t);
  temp_path dir("quant_archive_save");
  fs::create_directories(dir.path);
  // replaces an existing file
  const fs::path target = dir.path / "model.qar";
  write_file(target, std::as_bytes(std::span("old contents", 12)));
  w.save(target);
  CHECK(read_file(target) == copy_of(w.to_buffer().span()));
  // a folder that does not exist: nothing is created
  const fs::path missing = dir.path / "no" / "such" / "dir.qar";
  CHECK(contains(error_of([&] { w.save(missing); }), "cannot create"));
  CHECK_FALSE(fs::exists(missing.parent_path()));
  // the target is a non-empty folder: the rename fails, the folder and its file stay, no temporary is left
  const fs::path busy = dir.path / "busy.qar";
  fs::create_directories(busy);
  write_file(busy / "keep", std::as_bytes(std::span("x", 1)));
  CHECK(contains(error_of([&] { w.save(busy); }), "cannot rename"));
  CHECK(fs::is_directory(busy));
  CHECK(fs::exists(busy / "keep"));
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) files += e.is_regular_file();
  CHECK(files == 1);  // model.qar only
  CHECK(contains(error_of([&] { (void)ar::reader::open(dir.path / "absent.qar"); }), "absent.qar: cannot open"));
}

TEST_CASE("archive test vector: tests/data/archive_v1.qar reads as written and the writer reproduces it") {
  // The vector was produced by this test: QUANT_ARCHIVE_WRITE_VECTOR=1 ./test_archive writes
  // vector_records().writer() to tests/data/archive_v1.qar (container version 1). A change of the
  // layout makes the byte comparison fail; a new container version gets a new file next to this
  // one, and the old file must keep reading.
  const vector_records v;
  const ar::writer w = v.writer();
  const ar::buffer now = w.to_buffer();
  if (std::getenv("QUANT_ARCHIVE_WRITE_VECTOR")) {
    fs::create_directories(vector_path().parent_path());
    w.save(vector_path());
    MESSAGE("wrote ", vector_path().string());
  }
  REQUIRE_MESSAGE(fs::exists(vector_path()), vector_path().string(), " is missing");
  const bytes file = read_file(vector_path());
  CHECK(file.size() == 1433);
  CHECK(file == copy_of(now.span()));
  const ar::reader r = ar::reader::open(vector_path());
  CHECK(r.version() == 1);
  REQUIRE(r.records().size() == 5);
  const auto a = r.read<quant::int4, quant::per_group<4, quant::asymmetric, quant::fp16>>("doc/int4-g4-asym");
  // the worked example of doc/formats.md section 8
  CHECK(a.cview().value(1, 5) == 0.5f);
  CHECK(a.cview().value(0, 0) == -0.5f);
  CHECK(a.cview().value(0, 9) == 0.5f * (10 - 15));
  CHECK(a.cview().value(1, 9) == 0.0f);
  const std::uint8_t doc_codes[10] = {0x40, 0xf9, 0x42, 0xf8, 0xa0, 0x60, 0xfa, 0x50, 0xf7, 0x00};
  CHECK(std::memcmp(a.cview().codes().data(), doc_codes, 10) == 0);
  const auto b = r.read<quant::fp4_e2m1, vector_records::fp4_gran>("fp4-permuted");
  CHECK(b.permuted());
  CHECK(b.cview().granularity().group_size() == 4);
  CHECK(b.cview().input_columns()[2] == 7u);
  CHECK(b.cview().value(0, 0) == 1.0f * 0.5f);   // code 1 (0.5) x 2^0
  CHECK(b.cview().value(0, 4) == 3.0f * 0.5f);   // code 5 (3.0) x 2^-1
  CHECK(r.read_array("array") == v.array);
  CHECK(r.metadata("note") == "quant archive test vector");
  CHECK(r.metadata("empty").empty());
}

TEST_CASE("archive hostile input: every truncation and every single-byte change is a quant::error") {
  const ar::buffer good = vector_records().writer().to_buffer();
  const bytes f = copy_of(good.span());
  REQUIRE(f.size() > 1000);
  CHECK_NOTHROW(ar::reader{f});
  std::size_t truncations = 0, changes = 0;
  for (std::size_t n = 0; n < f.size(); ++n) {
    const ar::buffer cut = to_buffer(bytes(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(n)));
    bool thrown = false;
    try {
      ar::reader r(cut.span());
    } catch (const quant::error&) {
      thrown = true;
    }
    truncations += thrown;
  }
  CHECK(truncations == f.size());
  bytes longer = f;
  longer.push_back(std::byte{0});
  CHECK(contains(error_of([&] { ar::reader r(longer); }), "truncated or has bytes appended"));

  ar::buffer work = to_buffer(f);
  std::size_t tried = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    for (unsigned x = 1; x < 256; ++x) {
      work.data()[i] = f[i] ^ static_cast<std::byte>(x);
      ++tried;
      try {
        ar::reader r(work.span());
        FAIL_CHECK("byte ", i, " ^ ", x, " was not detected");
      } catch (const quant::error&) {
        ++changes;
      }
    }
    work.data()[i] = f[i];
  }
  CHECK(changes == tried);
  CHECK(contains(error_of([&] {
                   bytes g = f;
                   g[get<std::uint64_t>(f, entry_at(0) + 72) + 3] ^= std::byte{4};  // a code of the doc tensor
                   ar::reader r(g);
                 }),
                 "record 'doc/int4-g4-asym': checksum mismatch in section 0"));
  CHECK(contains(error_of([&] {
                   bytes g = f;
                   g[get<std::uint64_t>(f, entry_at(0) + 72) + 40] = std::byte{1};  // padding after the codes
                   ar::reader r(g);
                 }),
                 "padding outside every section and must be 0"));
}

TEST_CASE("archive hostile input: lying sizes, offsets, counts, ids and versions behind valid checksums") {
  const bytes f = copy_of(vector_records().writer().to_buffer().span());
  // entries: 0 doc/int4-g4-asym (tensor), 1 fp4-permuted (tensor, permuted), 2 array, 3 note, 4 empty
  const std::size_t e0 = entry_at(0), e1 = entry_at(1), e2 = entry_at(2), e3 = entry_at(3);
  const auto codes0 = get<std::uint64_t>(f, e0 + 72);
  struct lie {
    const char* what;
    std::function<void(bytes&)> patch;
    const char* expect;
  };
  const std::uint64_t huge = ~std::uint64_t{0};
  const std::vector<lie> lies = {
      {"entry count", [](bytes& g) { put<std::uint32_t>(g, 40, 0xFFFFFFFFu); }, "entries of 168 bytes, more than"},
      {"name table size", [&](bytes& g) { put<std::uint64_t>(g, 48, huge / 2); }, "sizes inconsistent"},
      {"directory size", [&](bytes& g) { put<std::uint64_t>(g, 32, get<std::uint64_t>(g, 32) + 1); }, "sizes inconsistent"},
      {"file size", [&](bytes& g) { put<std::uint64_t>(g, 16, g.size() + 64); }, "the header says the archive has"},
      {"header size", [](bytes& g) { put<std::uint32_t>(g, 12, 128); }, "must be 64, 168 and 64"},
      {"directory offset", [](bytes& g) { put<std::uint64_t>(g, 24, 128); }, "must be 64, 168 and 64"},
      {"newer version", [](bytes& g) { put<std::uint32_t>(g, 8, 2); }, "container version 2 is newer than this reader"},
      {"version 0", [](bytes& g) { put<std::uint32_t>(g, 8, 0); }, "container version 0 is invalid"},
      {"magic", [](bytes& g) { g[1] = std::byte{'X'}; }, "not a quant archive: it starts with 89 58 41 52"},
      {"section past the end", [&](bytes& g) { put<std::uint64_t>(g, e0 + 72, (g.size() + 63) / 64 * 64); }, "end of the file"},
      {"section offset overflow", [&](bytes& g) { put<std::uint64_t>(g, e0 + 72, huge - 63); }, "end of the file"},
      {"misaligned section", [&](bytes& g) { put<std::uint64_t>(g, e0 + 72, codes0 + 1); }, "-byte-aligned range"},
      {"section in the directory", [&](bytes& g) { put<std::uint64_t>(g, e0 + 72, 64); }, "directory's end"},
      {"overlapping sections", [&](bytes& g) { put<std::uint64_t>(g, e1 + 72, codes0); }, "overlaps section 0 of record"},
      {"metadata value size", [&](bytes& g) { put<std::uint64_t>(g, e3 + 80, huge - 8); }, "end of the file"},
      {"rows overflow", [&](bytes& g) { put<std::uint64_t>(g, e0 + 48, std::uint64_t{1} << 62); }, "overflow 64 bits"},
      {"cols overflow", [&](bytes& g) { put<std::uint64_t>(g, e0 + 56, std::uint64_t{1} << 63); }, "overflow 64 bits"},
      {"rows", [&](bytes& g) { put<std::uint64_t>(g, e0 + 48, 3); }, "codes section has 10 bytes, the record's descriptor implies 15"},
      {"zero rows", [&](bytes& g) { put<std::uint64_t>(g, e0 + 48, 0); }, "shape 0 x 10"},
      {"array shape", [&](bytes& g) { put<std::uint64_t>(g, e2 + 48, huge); }, "overflow 64 bits"},
      {"group 0", [&](bytes& g) { put<std::uint64_t>(g, e0 + 40, 0); }, "group size 0"},
      {"huge group", [&](bytes& g) { put<std::uint64_t>(g, e0 + 40, huge); }, "group size 18446744073709551615"},
      {"name outside the table", [&](bytes& g) { put<std::uint64_t>(g, e0 + 8, get<std::uint64_t>(g, 48)); }, "name table"},
      {"empty name", [&](bytes& g) { put<std::uint32_t>(g, e0 + 4, 0); }, "has a name of 0 bytes"},
      {"duplicate names",
       [&](bytes& g) {
         put<std::uint64_t>(g, e1 + 8, get<std::uint64_t>(g, e0 + 8));
         put<std::uint32_t>(g, e1 + 4, get<std::uint32_t>(g, e0 + 4));
       },
       "directory entries 0 and 1 are both named 'doc/int4-g4-asym'"},
      {"unknown format id", [&](bytes& g) { put<std::uint32_t>(g, e0 + 16, 0x37); }, "unknown format id 0x37"},
      {"layout version", [&](bytes& g) { put<std::uint32_t>(g, e0 + 20, 2); }, "int4 with layout version 2, which this reader does not implement"},
      {"bits", [&](bytes& g) { put<std::uint32_t>(g, e0 + 24, 3); }, "format int4 with 3 bits; it has 4"},
      {"bits 9", [&](bytes& g) { put<std::uint32_t>(g, e0 + 24, 9); }, "9 bits per code"},
      {"asymmetric fp4", [&](bytes& g) { put<std::uint32_t>(g, e1 + 28, 1); }, "asymmetric scheme over fp4_e2m1"},
      {"record kind", [&](bytes& g) { put<std::uint32_t>(g, e0, 9); }, "record kind 9"},
      {"scale type", [&](bytes& g) { put<std::uint32_t>(g, e0 + 36, 7); }, "scale type 7"},
      {"granularity", [&](bytes& g) { put<std::uint32_t>(g, e0 + 32, 3); }, "granularity 3"},
      {"column order", [&](bytes& g) { put<std::uint32_t>(g, e0 + 64, 2); }, "column order 2"},
      {"array with a format id", [&](bytes& g) { put<std::uint32_t>(g, e2 + 16, 1); }, "must be 0"},
      {"reserved field", [&](bytes& g) { put<std::uint32_t>(g, e0 + 68, 1); }, "reserved field at entry byte 68"},
      {"empty section with an offset", [&](bytes& g) { put<std::uint64_t>(g, e0 + 72 + 24 * 3, 64); }, "the empty section 3"},
      {"order not a permutation",
       [&](bytes& g) {
         const auto order = get<std::uint64_t>(g, e1 + 72 + 24 * 3);
         put<std::uint32_t>(g, order, get<std::uint32_t>(g, order + 4));
         refresh_section(g, 1, 3);
       },
       "column order entry 1 = 0 is repeated"},
      {"order outside the columns",
       [&](bytes& g) {
         put<std::uint32_t>(g, get<std::uint64_t>(g, e1 + 72 + 24 * 3) + 8, 99);
         refresh_section(g, 1, 3);
       },
       "column order entry 2 = 99 is not a column"},
  };
  for (const lie& l : lies) {
    CAPTURE(l.what);
    bytes g = f;
    l.patch(g);
    refresh(g);
    const std::string e = error_of([&] { ar::reader r(g, "lie.qar"); });
    CHECK_MESSAGE(contains(e, l.expect), e);
    CHECK(contains(e, "quant::archive::reader: lie.qar: "));
  }
  // the same newer-version file through open(): the error names the file
  temp_path p("quant_archive_newer");
  bytes g = f;
  put<std::uint32_t>(g, 8, 7);
  refresh(g);
  write_file(p.path, g);
  CHECK(contains(error_of([&] { (void)ar::reader::open(p.path); }), p.path.string() + ": container version 7 is newer"));
}

// ---- llama2c models -----------------------------------------------------------------------------

TEST_CASE("llama2c save/load: every report format, bit-identical logits without the fp32 weights") {
  const llama2c::weights w = synthetic_weights(true, 100);
  const auto formats = report::all_formats();
  for (const auto& f : formats.entries) {
    CAPTURE(f.key);
    llama2c::model m{llama2c::weights(w)};
    std::size_t i = 0;
    for (std::size_t l = 0; l < m.cfg().n_layers; ++l)
      for (llama2c::kind k : llama2c::all_kinds) {  // exact and fast GEMV modes mixed
        const auto mode = i++ % 3 == 1 ? llama2c::gemv_mode::fast : llama2c::gemv_mode::exact;
        m.set(l, k, f.rtn(m.source(l, k), mode, {}));
      }
    const llama2c::model_archive a(m);
    const llama2c::model back = llama2c::load_model(ar::reader(a.to_buffer()));
    CHECK_FALSE(back.has_source());
    check_same_model(m, back);
  }
}

TEST_CASE("llama2c save/load: fp32, W8A8, quantized and separate classifiers; files; a resave is identical") {
  using namespace quant;
  for (const bool shared : {true, false}) {
    CAPTURE(shared);
    const llama2c::weights w = synthetic_weights(shared, 200);
    llama2c::model m{llama2c::weights(w)};
    const auto& c = m.cfg();
    using K = llama2c::kind;
    llama2c::quantize_all<int3, per_group<128, asymmetric, fp16>>(m);  // layer 1, then layer 0 gets a mix
    m.set_fp32(1, K::wo);  // back to the model's fp32 view of its source
    m.set(0, K::wq, llama2c::make_quantized<int4, per_group<32, asymmetric, fp16>>(m.source(0, K::wq)));
    m.set(0, K::wk, std::make_unique<llama2c::w8a8_linear>(m.source(0, K::wk)));
    std::vector<float> s(c.dim);
    for (std::size_t j = 0; j < s.size(); ++j) s[j] = 0.5f + static_cast<float>(j % 7) * 0.25f;
    m.set(0, K::wv, std::make_unique<llama2c::w8a8_linear>(m.source(0, K::wv), s));  // divides its input by s
    m.set_fp32(0, K::wo);
    const auto w1 = m.source(0, K::w1);
    std::vector<float> own(w1.data(), w1.data() + w1.size());
    for (auto& v : own) v *= 0.9f;
    m.set_fp32(0, K::w1, std::move(own));  // fp32 weights the model keeps
    m.set(0, K::w2, llama2c::make_quantized<nf4, per_group<64, symmetric, fp16>>(m.source(0, K::w2), llama2c::gemv_mode::fast));
    m.set(0, K::w3, llama2c::make_quantized<fp4_e2m1, per_group<32, symmetric, e8m0>>(m.source(0, K::w3)));
    if (!shared) m.set_classifier(llama2c::make_quantized<int8, per_channel<symmetric>>(w.classifier()));
    CHECK(m.fp32_classifier() == shared);
    CHECK(m.fp32_weights(0, K::w1).data() != m.source(0, K::w1).data());
    CHECK(m.fp32_weights(1, K::wo).data() == m.source(1, K::wo).data());
    CHECK(m.fp32_weights(1, K::wq).empty());

    temp_path p("quant_llama2c_model");
    llama2c::save_model(m, p.path);
    const llama2c::model back = llama2c::load_model(p.path);
    check_same_model(m, back);
    CHECK(back.get(0, K::wv).describe().find("input / s") != std::string::npos);
    CHECK_FALSE(back.fp32_weights(0, K::wo).empty());
    CHECK(back.fp32_classifier() == shared);
    // the loaded model resaves to the same bytes
    CHECK(copy_of(llama2c::model_archive(back).to_buffer().span()) == read_file(p.path));
    // it has no fp32 sources
    CHECK_THROWS_AS((void)back.source(0, K::wq), llama2c::error);
    llama2c::model moved = llama2c::load_model(p.path);
    CHECK_THROWS_AS(moved.reset_fp32(), llama2c::error);
  }
}

TEST_CASE("llama2c save: linears the saver cannot read; load: archives that are not a model") {
  using namespace quant;
  const llama2c::weights w = synthetic_weights(true, 300);
  {
    llama2c::model m{llama2c::weights(w)};
    m.set(1, llama2c::kind::w3, std::make_unique<llama2c::dense_linear>(m.source(1, llama2c::kind::w3)));
    try {
      llama2c::model_archive a(m);
      FAIL("a dense_linear installed with set() was saved");
    } catch (const llama2c::error& e) {
      CHECK(contains(e.what(), "layers.1.w3"));
      CHECK(contains(e.what(), "model::set_fp32()"));
    }
    m.set(1, llama2c::kind::w3, llama2c::make_quantized<int4, per_group<64, symmetric, fp16>>(m.source(1, llama2c::kind::w3)));
    try {
      llama2c::model_archive a(m);
      FAIL("a linear of an unknown type was saved");
    } catch (const llama2c::error& e) {
      CHECK(contains(e.what(), "int4 per_group<64, sym, f16>"));
      CHECK(contains(e.what(), "not a linear type the saver knows"));
    }
  }
  {
    // assembling a model from parts checks counts and sizes
    llama2c::weights base = w;
    for (auto& v : base.linear) v.clear();
    auto parts = [&](std::size_t n) {
      std::vector<llama2c::model::part> p(n);
      for (std::size_t i = 0; i < n; ++i) {
        const llama2c::kind k = llama2c::all_kinds[i % 7];
        p[i].fp32.assign(llama2c::rows_of(base.cfg, k) * llama2c::cols_of(base.cfg, k), 0.01f);
      }
      return p;
    };
    CHECK_NOTHROW(llama2c::model(llama2c::weights(base), parts(14)));
    CHECK_THROWS_WITH_AS(llama2c::model(llama2c::weights(base), parts(13)),
                         "llama2c::model: 13 linears given, the config needs n_layers x 7 = 14", llama2c::error);
    auto short_part = parts(14);
    short_part[3].fp32.pop_back();
    CHECK_THROWS_WITH_AS(llama2c::model(llama2c::weights(base), std::move(short_part)),
                         "llama2c::model::set_fp32: wo.0 has 4095 weights, expected 64 x 64", llama2c::error);
    llama2c::weights separate = base;
    separate.cfg.shared_classifier = false;  // an fp32 classifier needs wcls
    CHECK_THROWS_WITH_AS(llama2c::model(std::move(separate), parts(14)),
                         "llama2c::model: tensor wcls has 0 elements, the config needs 6144", llama2c::error);
  }
  auto load_error = [](const ar::writer& wr) -> std::string {
    try {
      (void)llama2c::load_model(ar::reader(wr.to_buffer()));
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  {
    const vector_records recs;  // the writer views its tensors
    const ar::writer vec = recs.writer();
    CHECK(contains(load_error(vec), "not a saved llama2c model (metadata model = '(absent)')"));
  }
  {
    ar::writer wr;
    wr.add_metadata("model", "llama2c");
    wr.add_metadata("llama2c.layout", "2");
    CHECK(contains(load_error(wr), "saved with layout 2; this loader reads layout 1"));
  }
  {
    ar::writer wr;
    wr.add_metadata("model", "llama2c");
    wr.add_metadata("llama2c.layout", "1");
    wr.add_metadata("config.dim", "6x4");
    CHECK(contains(load_error(wr), "config.dim = '6x4' is not a count"));
  }
  {
    // a valid model whose wq.0 record has the wrong shape
    llama2c::model m{llama2c::weights(w)};
    llama2c::quantize_all<int8, per_channel<symmetric>>(m);
    const bytes good = copy_of(llama2c::model_archive(m).to_buffer().span());
    const ar::reader r(good);
    CHECK(r.at("layers.0.wq").rows == 64);
    CHECK(r.metadata("layers.0.wq.type") == "quantized exact");
    CHECK(r.metadata("classifier.type") == "fp32");
    CHECK_FALSE(r.find("classifier"));  // shared fp32 classifier: the embedding
    ar::writer wr;
    for (const auto& rec : r.records()) {
      if (rec.kind == ar::record_kind::metadata) wr.add_metadata(rec.name, r.metadata(rec.name));
    }
    CHECK(contains(load_error(wr), "no record named 'token_embedding'"));
  }
}

TEST_CASE("llama2c save/load on stories260K: RTN int4 g32 asym, bit-identical logits; damaged files") {
  const fs::path dir = qt::models_dir();
  const fs::path model = dir / "stories260K.bin", tok = dir / "tok512.bin", text = dir / "tinystories_valid.txt";
  for (const auto& f : {model, tok, text})
    if (!fs::exists(f)) {
      MESSAGE("skipped: ", f.string(), " not found (the shared models folder is absent)");
      return;
    }
  using namespace quant;
  llama2c::model m = llama2c::model::load(model);
  llama2c::quantize_all<int4, per_group<32, asymmetric, fp16>>(m);
  temp_path p("quant_stories260K_int4");
  llama2c::save_model(m, p.path);
  const auto size = fs::file_size(p.path);
  CHECK(size < fs::file_size(model) / 3);  // 4.6 bits per linear weight, the rest fp32
  const llama2c::model back = llama2c::load_model(p.path);
  CHECK_FALSE(back.has_source());
  // a few hundred tokens of held-out text, every logit compared
  const llama2c::tokenizer t(tok, m.cfg().vocab_size);
  const auto stories = llama2c::split_stories(llama2c::read_text(text));
  std::size_t tokens = 0, positions = 0;
  for (std::size_t i = 0; tokens < 300; ++i) {
    auto ids = t.encode(stories.at(i), true);
    if (ids.size() > m.cfg().seq_len) ids.resize(m.cfg().seq_len);
    const auto a = logits_of(m, ids), b = logits_of(back, ids);
    CHECK(bit_identical(a, b));
    tokens += ids.size(), positions += a.size() / m.cfg().vocab_size;
  }
  CHECK(positions == tokens);
  MESSAGE("stories260K int4 g32 asym: ", size, " bytes saved, ", tokens, " tokens with bit-identical logits");

  const bytes file = read_file(p.path);
  temp_path bad("quant_stories260K_damaged");
  write_file(bad.path, std::span(file).first(file.size() / 2));
  CHECK(contains(error_of([&] { (void)llama2c::load_model(bad.path); }), "truncated"));
  bytes corrupt = file;
  const ar::reader r(file);
  corrupt[r.at("layers.2.w1").sections[0].offset + 100] ^= std::byte{0x10};  // a code of w1.2
  write_file(bad.path, corrupt);
  const std::string e = error_of([&] { (void)llama2c::load_model(bad.path); });
  CHECK(contains(e, bad.path.string()));
  CHECK(contains(e, "record 'layers.2.w1': checksum mismatch in section 0"));
}
