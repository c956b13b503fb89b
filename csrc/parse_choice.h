// Parsing of the string arguments the Python bindings (bindings.cpp, cuda/bindings_cuda.cpp)
// take for an enum: one rule and one error message for all of them.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <utility>

namespace fusedrnn {

// The enum value named by `s` among `choices`, or std::invalid_argument (ValueError in
// Python) naming the argument, the choices and what was given, e.g.
// "nonlinearity: expected 'tanh' or 'relu', got 'gelu'".
template <typename E, std::size_t N>
E parse_choice(const char* arg, const std::string& s,
               const std::pair<const char*, E> (&choices)[N]) {
  for (const auto& [name, value] : choices) {
    if (s == name) return value;
  }
  std::string expected;
  for (std::size_t i = 0; i < N; ++i) {
    expected += i == 0 ? "'" : (i + 1 == N ? " or '" : ", '");
    expected += std::string(choices[i].first) + "'";
  }
  throw std::invalid_argument(std::string(arg) + ": expected " + expected + ", got '" + s + "'");
}

}  // namespace fusedrnn
