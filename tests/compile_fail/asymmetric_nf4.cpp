// EXPECT: asymmetric schemes need an integer format
// Code-table and minifloat formats are symmetric: an asymmetric nf4 tensor does not compile.
#include <quant/quant.hpp>
int main() { quant::tensor<quant::nf4, quant::per_group<64, quant::asymmetric>> t; (void)t; }
