/* drain.c -- download clients for the sendfile workloads of bench/sockets.py.
 *
 *   drain -p PORT [-H 127.0.0.1] [-c CONNS] -n BYTES
 *
 * Opens CONNS TCP connections to HOST:PORT, then reads every one of them
 * until end of file and prints one JSON line:
 *
 *   {"conns", "bytes", "short", "errors", "duration_s"}
 *
 * "short" counts connections that ended with a byte count other than
 * BYTES, "errors" those that failed (reset, say); "duration_s" runs from
 * the first byte received to the last end of file.
 *
 * The client must never be the limit, so it reads with MSG_TRUNC: on TCP
 * the kernel then drops the received bytes instead of copying them out
 * (tcp_recvmsg skips the copy), and a read costs the client no memory
 * bandwidth. Only the count is checked: the server's sendfile(2) or
 * write() calls are what the workload measures, and a wrong count still
 * fails the run. One thread, one level-triggered epoll set.
 *
 * Exit status: 0 (the JSON line says whether the counts were right), 1 on
 * bad usage, 2 when a connection could not be opened.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { kMaxConns = 1024, kReadSize = 1 << 20 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(void) {
  fprintf(stderr, "usage: drain -p PORT [-H HOST] [-c CONNS] -n BYTES\n");
  exit(1);
}

int main(int argc, char** argv) {
  const char* host = "127.0.0.1";
  int port = 0, conns = 10, opt;
  long long expect = -1;
  while ((opt = getopt(argc, argv, "p:H:c:n:")) != -1) {
    switch (opt) {
      case 'p': port = atoi(optarg); break;
      case 'H': host = optarg; break;
      case 'c': conns = atoi(optarg); break;
      case 'n': expect = atoll(optarg); break;
      default: usage();
    }
  }
  if (port <= 0 || conns <= 0 || conns > kMaxConns || expect < 0) usage();

  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) usage();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  static long long got[kMaxConns];
  for (int i = 0; i < conns; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&addr, sizeof addr) < 0) {
      perror("drain: connect");
      return 2;
    }
    /* Blocking for connect(); every recv() below is MSG_DONTWAIT. */
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)i << 32) | (uint32_t)fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }

  static char scratch[kReadSize];  /* MSG_TRUNC leaves it untouched */
  long long total = 0;
  int open_conns = conns, errors = 0, shortc = 0;
  double first = 0, last = 0;
  struct epoll_event evs[64];
  while (open_conns > 0) {
    int k = epoll_wait(ep, evs, 64, -1);
    if (k < 0) {
      if (errno == EINTR) continue;
      perror("drain: epoll_wait");
      return 2;
    }
    for (int j = 0; j < k; j++) {
      int i = (int)(evs[j].data.u64 >> 32), fd = (int)(uint32_t)evs[j].data.u64;
      ssize_t r = recv(fd, scratch, kReadSize, MSG_TRUNC | MSG_DONTWAIT);
      if (r > 0) {
        if (!first) first = now();
        got[i] += r;
        total += r;
        continue;
      }
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r < 0) errors++;
      else if (got[i] != expect) shortc++;
      last = now();
      epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
      close(fd);
      open_conns--;
    }
  }
  printf("{\"conns\": %d, \"bytes\": %lld, \"short\": %d, \"errors\": %d, \"duration_s\": %.6f}\n",
         conns, total, shortc, errors, first ? last - first : 0.0);
  return 0;
}
