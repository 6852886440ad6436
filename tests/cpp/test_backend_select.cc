// test_backend_select.cc — loop::make_backend(): names, "auto", named
// backends (backend_select.h's rules). A named io_uring that cannot run is
// tested from Python, where a seccomp filter makes it so
// (tests/python/test_backend.py).
#include <catch2/catch.hpp>

#include <map>
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

TEST_CASE("io_uring runs with the options it was made with; libuv has none", "[backend]") {
  std::string err;
  BackendOptions opts;
  opts.kind = BackendKind::kLibuv;
  REQUIRE(uvpy::loop::make_backend(opts, &err)->settings().empty());

  opts.kind = BackendKind::kIoUring;
  opts.uring.completion_accepts = false;
  opts.uring.buf_count = 64;
  opts.uring.buf_size = 4096;
  auto u = uvpy::loop::make_backend(opts, &err);
  if (!u) {
    WARN("io_uring unavailable: " << err);
    return;
  }
  std::map<std::string, unsigned long> got;
  for (const auto& s : u->settings()) got[s.name] = s.text ? 1 : s.value;
  REQUIRE(got.count("setup") == 1);
  REQUIRE(got.at("completion_accepts") == 0);  // asked off: off whatever the kernel has
  if (got.at("completion")) {  // the buffer ring is the one asked for
    REQUIRE(got.at("buf_count") == 64);
    REQUIRE(got.at("buf_size") == 4096);
  }
  opts.uring.completion = false;  // the master switch: every completion feature off
  u = uvpy::loop::make_backend(opts, &err);
  REQUIRE(u);
  for (const auto& s : u->settings())
    if (!s.text) REQUIRE(s.value == 0);
}
