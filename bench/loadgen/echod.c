/* echod.c -- a minimal single-threaded epoll TCP echo server in C: the
 * floor for the echo suite. No event loop can spend less CPU per round trip
 * than this on the same kernel, since it makes the same system calls (one
 * recv, one send per message, one epoll_wait per wakeup) with no other work.
 * bench/echo_floor.py drives it with loadgen and reports its CPU per round
 * trip next to the loops'.
 *
 *   echod [-a CPU]       listens on 127.0.0.1 (an ephemeral port; the port
 *                        is the first line on stdout)
 *
 * Control on stdin, one word a line: "start" and "stop" take getrusage()
 * marks; "stop" prints {"user_s": ..., "sys_s": ...} for the window.
 * End of stdin exits.
 *
 * Level-triggered epoll, EPOLLOUT only while a send is partial; reads go
 * into one 256 KiB buffer and are sent back before the next read, so a
 * connection never holds more than one unsent buffer.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "echod_common.h"

enum { kBuf = 256 * 1024, kMaxEvents = 512 };

struct conn {
  int fd;
  char* pending; /* unsent bytes (own allocation) */
  size_t off, len;
};

static int ep;
static char buf[kBuf];
static struct conn listener_tag, stdin_tag;

static void die(const char* what) {
  perror(what);
  exit(1);
}

static void close_conn(struct conn* c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->pending);
  free(c);
}

static void set_events(struct conn* c, unsigned events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Sends c->pending; 0 when all went, 1 when some is left, -1 on error. */
static int flush(struct conn* c) {
  while (c->off < c->len) {
    ssize_t n = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
    if (n > 0) {
      c->off += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return 1;
    } else {
      return -1;
    }
  }
  free(c->pending);
  c->pending = NULL;
  c->off = c->len = 0;
  return 0;
}

static void on_readable(struct conn* c) {
  ssize_t n = recv(c->fd, buf, sizeof buf, 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {
    close_conn(c);
    return;
  }
  ssize_t sent = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
  if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
    close_conn(c);
    return;
  }
  if (sent < 0) sent = 0;
  if (sent < n) { /* keep the rest; stop reading until it is out */
    c->len = (size_t)(n - sent);
    c->off = 0;
    c->pending = malloc(c->len);
    if (!c->pending) die("malloc");
    memcpy(c->pending, buf + sent, c->len);
    set_events(c, EPOLLOUT);
  }
}

static void on_writable(struct conn* c) {
  int rc = flush(c);
  if (rc < 0) close_conn(c);
  else if (rc == 0) set_events(c, EPOLLIN);
}

static void on_accept(int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn* c = calloc(1, sizeof *c);
    if (!c) die("calloc");
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
  }
}

/* Returns 0 at end of stdin. */
static int on_control(void) {
  char line[256];
  ssize_t n = read(0, line, sizeof line - 1);
  if (n <= 0) return 0;
  line[n] = 0;
  echod_control(line);
  return 1;
}

int main(int argc, char** argv) {
  int opt;
  while ((opt = getopt(argc, argv, "a:")) != -1) {
    if (opt == 'a') {
      echod_pin("echod", optarg);
    } else {
      fprintf(stderr, "usage: echod [-a CPU]\n");
      return 1;
    }
  }
  echod_setup();
  int port;
  int lfd = echod_listen(SOCK_NONBLOCK, &port);
  if (lfd < 0) die("listen");
  printf("%d\n", port);
  fflush(stdout);

  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listener_tag};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  ev.data.ptr = &stdin_tag;
  epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);

  struct epoll_event evs[kMaxEvents];
  for (;;) {
    int n = epoll_wait(ep, evs, kMaxEvents, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      void* p = evs[i].data.ptr;
      if (p == &listener_tag) {
        on_accept(lfd);
      } else if (p == &stdin_tag) {
        if (!on_control()) return 0;
      } else {
        struct conn* c = p;
        if (c->pending) on_writable(c);
        else on_readable(c);
      }
    }
  }
}
