// test_backend_select.cc — loop::make_backend(): names, "auto", named
// backends (backend_select.h's rules). A named io_uring that cannot run is
// tested from Python, where a seccomp filter makes it so
// (tests/python/test_backend.py).
#include <catch2/catch.hpp>

#include <string>

#include "backend_select.h"

using uvpy::loop::BackendKind;
using uvpy::loop::BackendOptions;

TEST_CASE("backend names parse both ways, and nothing else does", "[backend]") {
  for (BackendKind k : {BackendKind::kAuto, BackendKind::kLibuv, BackendKind::kIoUring}) {
    BackendKind got = BackendKind::kAuto;
    REQUIRE(uvpy::loop::parse_backend(uvpy::loop::backend_name(k), &got));
    REQUIRE(got == k);
  }
  BackendKind untouched = BackendKind::kLibuv;
  for (const char* bad : {"", "uring", "LIBUV", "io_uring ", "epoll"}) {
    REQUIRE_FALSE(uvpy::loop::parse_backend(bad, &untouched));
    REQUIRE(untouched == BackendKind::kLibuv);
  }
}

TEST_CASE("auto and libuv give libuv; io_uring gives io_uring or says why not", "[backend]") {
  std::string err;
  BackendOptions opts;
  auto a = uvpy::loop::make_backend(opts, &err);
  REQUIRE(a);
  REQUIRE(std::string(a->name()) == "libuv");  // rule 2: libuv first

  opts.kind = BackendKind::kLibuv;
  auto l = uvpy::loop::make_backend(opts, &err);
  REQUIRE(l);
  REQUIRE(std::string(l->name()) == "libuv");

  opts.kind = BackendKind::kIoUring;
  err.clear();
  auto u = uvpy::loop::make_backend(opts, &err);
  if (u) {
    REQUIRE(std::string(u->name()) == "io_uring");
    REQUIRE(err.empty());
  } else {  // rule 1: no silent switch to libuv
    REQUIRE(err.rfind("the io_uring backend is unavailable: ", 0) == 0);
  }
}
