// report/mixed.hpp: the bit allocation of mixed-precision quantization. Every layer starts in the
// narrow format; layers are widened one at a time while the total stays within the budget.
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace report {

/// A layer's sensitivity (the loss increase when it alone is in the narrow format) and its size
/// in the narrow and the wide format.
struct layer_cost {
  double sensitivity = 0.0;
  std::size_t narrow_bytes = 0, wide_bytes = 0;
};

/// Widens layers in `order` while the total bytes stay within budget_bytes (a layer that does not
/// fit is skipped, later smaller ones may still fit). Returns which layers are wide.
inline std::vector<bool> allocate_in(const std::vector<layer_cost>& layers, const std::vector<std::size_t>& order,
                                     std::size_t budget_bytes) {
  std::size_t total = 0;
  for (const auto& l : layers) {
    if (l.wide_bytes < l.narrow_bytes) throw std::invalid_argument("report::allocate: a wide format smaller than the narrow one");
    total += l.narrow_bytes;
  }
  if (total > budget_bytes)
    throw std::invalid_argument("report::allocate: the budget (" + std::to_string(budget_bytes) +
                                " bytes) is below the all-narrow size (" + std::to_string(total) + " bytes)");
  std::vector<bool> wide(layers.size(), false);
  for (std::size_t i : order) {
    const std::size_t extra = layers.at(i).wide_bytes - layers[i].narrow_bytes;
    if (!wide[i] && total + extra <= budget_bytes) wide[i] = true, total += extra;
  }
  return wide;
}

/// The layers by decreasing sensitivity per extra byte (ties keep their order).
inline std::vector<std::size_t> by_sensitivity(const std::vector<layer_cost>& layers) {
  std::vector<std::size_t> order(layers.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  auto value = [&](std::size_t i) {
    return layers[i].sensitivity / static_cast<double>(layers[i].wide_bytes - layers[i].narrow_bytes + 1);
  };
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return value(a) > value(b); });
  return order;
}

/// The sensitivity-guided allocation and the uninformed one (widening in model order), both
/// within the same budget.
inline std::vector<bool> allocate_by_sensitivity(const std::vector<layer_cost>& layers, std::size_t budget_bytes) {
  return allocate_in(layers, by_sensitivity(layers), budget_bytes);
}
inline std::vector<bool> allocate_in_model_order(const std::vector<layer_cost>& layers, std::size_t budget_bytes) {
  std::vector<std::size_t> order(layers.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  return allocate_in(layers, order, budget_bytes);
}

}  // namespace report
