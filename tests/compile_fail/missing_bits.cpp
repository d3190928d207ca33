// EXPECT: must declare 'static constexpr unsigned bits'
// A format_traits specialization without `bits` names that member.
#include <quant/quant.hpp>
struct my_fmt {};
template <>
struct quant::format_traits<my_fmt> {
  static constexpr std::string_view name = "mine";
  static constexpr std::uint32_t id = 0x80000000;
  static constexpr std::uint32_t layout_version = 1;
  static std::uint8_t encode(float) { return 0; }
  static float decode(std::uint8_t) { return 0.0f; }
};
static_assert(quant::check_format<my_fmt>());
int main() {}
