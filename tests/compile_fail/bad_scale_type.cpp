// EXPECT: the scale type must be float, quant::fp16, quant::bf16 or quant::e8m0
// Scales are stored as one of the four scale types.
#include <quant/quant.hpp>
int main() { quant::per_channel<quant::symmetric, double> g; (void)g; }
