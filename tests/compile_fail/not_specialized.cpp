// EXPECT: format_traits<F> is not specialized for this type
// Using a type nobody declared a format for names the missing specialization.
#include <quant/quant.hpp>
struct not_a_format {};
int main() { quant::tensor<not_a_format, quant::per_channel<>> t; }
