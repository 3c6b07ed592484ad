// The one way lq-train's C++ entry points report errors: run the body, catch every C++ exception, keep its
// message for lq_last_error (exported by dist.cpp) and return -1; 0 on success.
#pragma once
#include <exception>
#include <string>

namespace lq {

inline thread_local std::string last_error;

template <typename F>
int guard(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

}  // namespace lq
