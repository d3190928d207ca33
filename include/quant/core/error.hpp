// quant/core/error.hpp: the one exception type the library throws, and the helpers that build
// its messages.
//
// Every rejected input throws quant::error (an std::invalid_argument) whose message names the
// function, the argument and the values involved, e.g.
//   "quant::gemv: x has 63 elements, expected cols = 64".
// Functions validate everything before they write anything, so a caller's output buffer is
// untouched when an error is thrown.
#pragma once

#include <charconv>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "../config.hpp"

QUANT_NAMESPACE_BEGIN

/// Thrown for every invalid argument: shapes, buffer sizes, group sizes, non-finite weights,
/// unknown on-disk ids. The message names the argument and the values involved.
class error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

inline void append_piece(std::string& s, std::string_view v) { s.append(v); }
inline void append_piece(std::string& s, const char* v) { s.append(v); }
inline void append_piece(std::string& s, const std::string& v) { s.append(v); }
inline void append_piece(std::string& s, char c) { s.push_back(c); }

template <class T>
  requires(std::is_arithmetic_v<T> && !std::is_same_v<T, char> && !std::is_same_v<T, bool>)
void append_piece(std::string& s, T v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  s.append(buf, r.ptr);
}

/// Concatenates strings and numbers into an error message.
template <class... Args>
std::string message(const Args&... args) {
  std::string s;
  (append_piece(s, args), ...);
  return s;
}

/// Throws quant::error with the concatenation of args.
template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw error(message(args...));
}

}  // namespace detail

QUANT_NAMESPACE_END
