// Prints the best quant ISA tier this CPU runs (0 generic .. 4 avx512_vnni); used by
// tests/CMakeLists.txt to register only the per-tier kernel tests this machine can execute.
#include <cstdio>
#include <quant/kernels/isa.hpp>

int main() { std::printf("%u\n", static_cast<unsigned>(quant::best_cpu_isa())); }
