// Control: a complete user format compiles and passes check_format, so the failures above come
// from the member each one leaves out.
#include <quant/quant.hpp>
struct my_fmt {};
template <>
struct quant::format_traits<my_fmt> {
  static constexpr std::string_view name = "mine";
  static constexpr unsigned bits = 4;
  static constexpr std::uint32_t id = 0x80000000;
  static constexpr std::uint32_t layout_version = 1;
  static std::uint8_t encode(float) { return 0; }
  static float decode(std::uint8_t) { return 0.0f; }
};
static_assert(quant::check_format<my_fmt>());
int main() { quant::tensor_view<my_fmt, quant::per_group<32>> v; (void)v; }
