/* echod_common.h -- what the two floor servers (echod.c on epoll,
 * echod_uring.c on io_uring) share: -a CPU pinning, the process setup, the
 * loopback listener and the start/stop control protocol on stdin. Included
 * by each (bench/_loadgen.py rebuilds them when it changes). */
#ifndef UVPY_BENCH_ECHOD_COMMON_H
#define UVPY_BENCH_ECHOD_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* -a CPU: pins this process to one CPU. */
static void echod_pin(const char* name, const char* cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(atoi(cpu), &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) {
    fprintf(stderr, "%s: ", name);
    perror("sched_setaffinity");
  }
}

/* No SIGPIPE (a peer's reset is a send error), and every fd the hard limit
 * allows. */
static void echod_setup(void) {
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/* A listener on 127.0.0.1 (an ephemeral port, backlog 4096) with the extra
 * socket() flags given; *port gets its port. -1 (errno set) on failure. */
static int echod_listen(int flags, int* port) {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
  if (lfd < 0) return -1;
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof addr;
  if (bind(lfd, (struct sockaddr*)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0 ||
      getsockname(lfd, (struct sockaddr*)&addr, &alen) < 0)
    return -1;
  *port = ntohs(addr.sin_port);
  return lfd;
}

static double echod_secs(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* Control lines in text (NUL-terminated, modified): "start" takes a
 * getrusage() mark, "stop" prints {"user_s": ..., "sys_s": ...} since it. */
static void echod_control(char* text) {
  static struct rusage mark;
  for (char* tok = strtok(text, "\n"); tok; tok = strtok(NULL, "\n")) {
    if (strcmp(tok, "start") == 0) {
      getrusage(RUSAGE_SELF, &mark);
    } else if (strcmp(tok, "stop") == 0) {
      struct rusage now;
      getrusage(RUSAGE_SELF, &now);
      printf("{\"user_s\": %.6f, \"sys_s\": %.6f}\n",
             echod_secs(now.ru_utime) - echod_secs(mark.ru_utime),
             echod_secs(now.ru_stime) - echod_secs(mark.ru_stime));
      fflush(stdout);
    }
  }
}

#endif
