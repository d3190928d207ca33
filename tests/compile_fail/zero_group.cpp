// EXPECT: the group size must not be zero
// A static group size of zero is a compile error (a run-time zero throws quant::error).
#include <quant/quant.hpp>
int main() { quant::per_group<0> g; (void)g; }
