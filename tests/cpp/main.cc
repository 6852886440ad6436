// The Catch2 runner. With UVPY_BACKEND=io_uring on a machine where io_uring
// cannot run (old kernel, seccomp, sysctl), the whole run is skipped with
// exit code 77, which ctest reports as skipped, not failed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "support.h"

int main(int argc, char** argv) {
  std::string err;
  if (!uvpy::test::make_backend(&err)) {
    std::fprintf(stderr, "backend %s unavailable: %s\n", uvpy::test::backend_under_test().c_str(),
                 err.c_str());
    return uvpy::test::backend_under_test() == "io_uring" ? 77 : 1;
  }
  return Catch::Session().run(argc, argv);
}
