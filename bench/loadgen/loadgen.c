/* loadgen.c -- a closed-loop TCP echo load generator for uvpy's benchmarks.
 *
 *   loadgen -p PORT [-H 127.0.0.1] [-c CONNS] [-s SIZE] [-d SECONDS]
 *           [-w WARMUP_SECONDS] [-t THREADS] [-a CPU[,CPU...]] [-v] [-i] [-r]
 *   loadgen -U PATH ...                  (the same over a Unix stream socket)
 *
 * Each of CONNS connections sends SIZE bytes and waits until it has read
 * SIZE bytes back before it sends again (one message in flight per
 * connection: closed loop). Connections are spread over THREADS threads,
 * each with its own epoll set (level-triggered; EPOLLOUT only while a send
 * is partial). After WARMUP seconds the generator prints "start" on stdout,
 * counts for SECONDS, prints "stop", then one JSON line:
 *
 *   {"conns", "size", "threads", "duration_s", "round_trips",
 *    "round_trips_per_s", "bytes", "errors", "connect_errors",
 *    "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"}
 *
 * "start"/"stop" let the server under test read its own CPU time over
 * exactly the measured window. The warm-up starts once every connection
 * has completed one round trip (the server has accepted them all; at most
 * 30 s). A round trip counts when its last byte
 * arrives inside the window; its latency is from the first send() call to
 * that arrival. Latencies go into a log-linear histogram (64 sub-buckets
 * per power of two: under 1.6% error), merged over the threads.
 *
 * It must never be the bottleneck: one prebuilt send buffer shared by all
 * connections, one receive scratch buffer per thread, no allocation after
 * setup, and a send is tried at once after the previous reply completes
 * (no epoll round trip in between). -v checks every echoed byte.
 *
 * -r ("reconnect"): every round trip on a fresh connection. When a reply
 * is complete the connection is closed with SO_LINGER 0 (a reset, so the
 * client leaves no TIME_WAIT behind and the ephemeral ports last) and a new
 * non-blocking connect() starts; its message is sent once it connects, and
 * the round trip's latency runs from the connect() call. CONNS connections
 * are in progress at any time: the server's accept path is the load.
 *
 * -i ("idle"): connect CONNS connections, print one JSON line
 * {"connected": N, "connect_errors": E}, then hold them until stdin closes.
 *
 * Connections are opened at most kConnectBatch at a time so that a small
 * listen backlog is not overrun. A connection that fails mid-run (reset,
 * EOF) is counted in "errors" and closed; the run goes on.
 *
 * Exit status: 0, 1 on bad usage, 2 when no connection could be opened.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { kSub = 64, kBuckets = 64 * kSub, kMaxEvents = 512, kConnectBatch = 256 };
enum { PHASE_WARMUP = 0, PHASE_MEASURE = 1, PHASE_STOP = 2 };
static const uint64_t kDrainNs = 2000000000u;
static const uint64_t kReadyWaitNs = 30000000000u;

struct conn {
  int fd;
  int out_armed;      /* EPOLLOUT in the interest set */
  int busy;           /* a message is in flight */
  int seen;           /* completed (or lost) its first round trip */
  int connecting;     /* -r: a connect() in progress */
  size_t sent, recvd; /* of the current message */
  uint64_t t0;        /* first send() of the current message, ns */
};

struct worker {
  pthread_t tid;
  struct conn* conns;
  int nconns;
  int ep;
  char* scratch;
  int inflight; /* messages sent whose reply is not complete */
  uint64_t rts, bytes, errors, lat_sum;
  uint64_t hist[kBuckets];
};

static size_t g_size = 1024;
static int g_verify;
static int g_reconnect;
static struct sockaddr_storage g_addr; /* AF_INET, or AF_UNIX with -U */
static socklen_t g_addrlen;
static char* g_msg;
static size_t g_scratch = 256 * 1024;
static atomic_int g_phase;
static atomic_int g_ready; /* connections that completed a round trip or failed */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char* what) {
  perror(what);
  exit(1);
}

/* --- histogram ------------------------------------------------------------ */

static int bucket_of(uint64_t v) {
  if (v < 2 * kSub) return (int)v;
  int msb = 63 - __builtin_clzll(v);
  int shift = msb - 6; /* v >> shift in [64, 127] */
  int idx = (shift + 1) * kSub + (int)((v >> shift) - kSub);
  return idx < kBuckets ? idx : kBuckets - 1;
}

static double bucket_value(int idx) { /* the middle of the bucket */
  if (idx < 2 * kSub) return idx;
  int shift = idx / kSub - 1;
  uint64_t lo = ((uint64_t)(idx % kSub) + kSub) << shift;
  return (double)lo + (double)(1ull << shift) / 2.0;
}

static double percentile(const uint64_t* hist, uint64_t total, double q) {
  if (total == 0) return 0.0;
  uint64_t rank = (uint64_t)(q * (double)total);
  if (rank >= total) rank = total - 1;
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += hist[i];
    if (seen > rank) return bucket_value(i);
  }
  return bucket_value(kBuckets - 1);
}

/* --- connections ---------------------------------------------------------- */

static void set_out(struct worker* w, struct conn* c, int on) {
  if (c->out_armed == on) return;
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
  if (epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
  c->out_armed = on;
}

/* A non-blocking stream socket of g_addr's family (TCP_NODELAY on TCP). */
static int new_socket(void) {
  int fd = socket(g_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0 && g_addr.ss_family == AF_INET) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

static void drop(struct worker* w, struct conn* c) {
  if (c->fd < 0) return;
  if (c->busy) w->inflight--;
  c->busy = 0;
  if (!c->seen) {
    c->seen = 1;
    atomic_fetch_add_explicit(&g_ready, 1, memory_order_relaxed);
  }
  epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  w->errors++;
}

/* Sends what the kernel takes of the current message. 0, or -1 after drop(). */
static int pump_send(struct worker* w, struct conn* c) {
  while (c->sent < g_size) {
    ssize_t n = send(c->fd, g_msg + c->sent, g_size - c->sent, MSG_NOSIGNAL);
    if (n > 0) {
      c->sent += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      set_out(w, c, 1);
      return 0;
    }
    drop(w, c);
    return -1;
  }
  set_out(w, c, 0);
  return 0;
}

static int start_message(struct worker* w, struct conn* c, uint64_t t) {
  w->inflight++;
  c->busy = 1;
  c->sent = c->recvd = 0;
  c->t0 = t;
  return pump_send(w, c);
}

static int reconnect(struct worker* w, struct conn* c, uint64_t t);

static void on_readable(struct worker* w, struct conn* c) {
  for (;;) {
    /* Never read past the message: the server may only echo what we sent. */
    size_t want = c->sent - c->recvd;
    if (want == 0) {
      /* Data we did not send (or EOF): peek to tell them apart. */
      char b;
      ssize_t n = recv(c->fd, &b, 1, MSG_PEEK);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      drop(w, c);
      return;
    }
    if (want > g_scratch) want = g_scratch;
    ssize_t n = recv(c->fd, w->scratch, want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      drop(w, c);
      return;
    }
    if (n == 0) {
      drop(w, c);
      return;
    }
    if (g_verify && memcmp(w->scratch, g_msg + c->recvd, (size_t)n) != 0) {
      fprintf(stderr, "loadgen: echoed bytes differ at offset %zu\n", c->recvd);
      drop(w, c);
      return;
    }
    c->recvd += (size_t)n;
    if (c->recvd < g_size) {
      if ((size_t)n < want) return; /* drained the socket */
      continue;
    }
    w->inflight--;
    c->busy = 0;
    if (!c->seen) {
      c->seen = 1;
      atomic_fetch_add_explicit(&g_ready, 1, memory_order_relaxed);
    }
    uint64_t t = now_ns();
    int phase = atomic_load_explicit(&g_phase, memory_order_relaxed);
    if (phase == PHASE_MEASURE) {
      uint64_t lat = t - c->t0;
      w->rts++;
      w->bytes += g_size;
      w->lat_sum += lat;
      w->hist[bucket_of(lat)]++;
    } else if (phase == PHASE_STOP) {
      return;
    }
    if (g_reconnect) {
      reconnect(w, c, t);
      return;
    }
    if (start_message(w, c, t) < 0) return;
    return; /* the reply cannot be here yet */
  }
}

/* -r: closes c (a reset) and starts a fresh connect in its place. 0, or
 * -1 after drop(). */
static int reconnect(struct worker* w, struct conn* c, uint64_t t) {
  struct linger lg = {1, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = new_socket();
  if (c->fd < 0) die("socket");
  w->inflight++;
  c->busy = 1;
  c->sent = c->recvd = 0;
  c->t0 = t;
  c->out_armed = 1;
  c->connecting = 1;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
  if (connect(c->fd, (const struct sockaddr*)&g_addr, g_addrlen) < 0 && errno != EINPROGRESS) {
    drop(w, c);
    return -1;
  }
  return 0;
}

/* -r: the connect ended (EPOLLOUT): send, or drop it on an error. */
static void on_connected(struct worker* w, struct conn* c) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  c->connecting = 0;
  if (err != 0) {
    drop(w, c);
    return;
  }
  pump_send(w, c);
}

static void* worker_main(void* arg) {
  struct worker* w = arg;
  struct epoll_event evs[kMaxEvents];
  uint64_t t = now_ns();
  for (int i = 0; i < w->nconns; ++i)
    if (w->conns[i].fd >= 0) start_message(w, &w->conns[i], t);
  /* After "stop" no new message starts; the replies in flight are still
   * read (for up to kDrainNs), so that closing never resets a connection
   * with an echo on its way and the server sees a clean end of stream. */
  uint64_t drain_deadline = 0;
  for (;;) {
    if (atomic_load_explicit(&g_phase, memory_order_relaxed) == PHASE_STOP) {
      uint64_t t_now = now_ns();
      if (drain_deadline == 0) drain_deadline = t_now + kDrainNs;
      if (w->inflight <= 0 || t_now > drain_deadline) break;
    }
    int n = epoll_wait(w->ep, evs, kMaxEvents, 20);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      struct conn* c = evs[i].data.ptr;
      if (c->fd < 0) continue;
      if (c->connecting) {
        if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(w, c);
        continue;
      }
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(w, c);
      if (c->fd >= 0 && (evs[i].events & EPOLLOUT) && c->sent < g_size) pump_send(w, c);
    }
  }
  return NULL;
}

/* Opens n non-blocking connections, at most kConnectBatch in progress at a
 * time. conns[i].fd is -1 for each that failed. Returns the failures. */
static int connect_all(struct conn* conns, int n) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  int next = 0, pending = 0, failed = 0;
  struct epoll_event evs[kMaxEvents];
  while (next < n || pending > 0) {
    while (next < n && pending < kConnectBatch) {
      struct conn* c = &conns[next++];
      memset(c, 0, sizeof *c);
      c->fd = new_socket();
      if (c->fd < 0) {
        perror("loadgen: socket");
        failed++;
        continue;
      }
      if (connect(c->fd, (const struct sockaddr*)&g_addr, g_addrlen) < 0 && errno != EINPROGRESS) {
        perror("loadgen: connect");
        close(c->fd);
        c->fd = -1;
        failed++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
      if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
      pending++;
    }
    int k = epoll_wait(ep, evs, kMaxEvents, 10000);
    if (k < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    if (k == 0) {
      fprintf(stderr, "loadgen: connecting timed out (%d pending)\n", pending);
      break;
    }
    for (int i = 0; i < k; ++i) {
      struct conn* c = evs[i].data.ptr;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
      pending--;
      if (err != 0) {
        fprintf(stderr, "loadgen: connect: %s\n", strerror(err));
        close(c->fd);
        c->fd = -1;
        failed++;
      }
    }
  }
  if (pending > 0) { /* timed out: give those up */
    for (int i = 0; i < next; ++i) {
      struct epoll_event probe = {.events = EPOLLOUT, .data.ptr = &conns[i]};
      if (conns[i].fd >= 0 && epoll_ctl(ep, EPOLL_CTL_MOD, conns[i].fd, &probe) == 0) {
        close(conns[i].fd);
        conns[i].fd = -1;
        failed++;
      }
    }
  }
  close(ep);
  return failed;
}

static void sleep_until(uint64_t deadline) {
  struct timespec ts = {(time_t)(deadline / 1000000000u), (long)(deadline % 1000000000u)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
  }
}

static void raise_nofile(int need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
  if (rl.rlim_cur < (rlim_t)need) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (rlim_t)need ? (rlim_t)need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static void pin(const char* list) {
  cpu_set_t set;
  CPU_ZERO(&set);
  char* copy = strdup(list);
  for (char* tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) CPU_SET(atoi(tok), &set);
  free(copy);
  if (sched_setaffinity(0, sizeof set, &set) < 0) perror("loadgen: sched_setaffinity");
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen {-p PORT [-H HOST] | -U PATH} [-c CONNS] [-s SIZE] [-d SECONDS]\n"
          "               [-w SECONDS]"
          " [-t THREADS] [-a CPU,...] [-v] [-i] [-r]\n");
  exit(1);
}

int main(int argc, char** argv) {
  const char* host = "127.0.0.1";
  const char* unix_path = NULL;
  int port = 0, nconns = 10, nthreads = 1, idle = 0;
  double duration = 5.0, warmup = 1.0;
  const char* cpus = NULL;
  int opt;
  while ((opt = getopt(argc, argv, "H:p:U:c:s:d:w:t:a:vir")) != -1) {
    switch (opt) {
      case 'H': host = optarg; break;
      case 'p': port = atoi(optarg); break;
      case 'U': unix_path = optarg; break;
      case 'c': nconns = atoi(optarg); break;
      case 's': g_size = (size_t)strtoull(optarg, NULL, 10); break;
      case 'd': duration = atof(optarg); break;
      case 'w': warmup = atof(optarg); break;
      case 't': nthreads = atoi(optarg); break;
      case 'a': cpus = optarg; break;
      case 'v': g_verify = 1; break;
      case 'i': idle = 1; break;
      case 'r': g_reconnect = 1; break;
      default: usage();
    }
  }
  if ((port <= 0) == !unix_path || nconns <= 0 || g_size == 0 || nthreads <= 0 || duration <= 0 || warmup < 0) usage();
  if (nthreads > nconns) nthreads = nconns;
  signal(SIGPIPE, SIG_IGN);
  if (cpus) pin(cpus);
  raise_nofile(nconns + 64);

  if (unix_path) {
    struct sockaddr_un* un = (struct sockaddr_un*)&g_addr;
    if (strlen(unix_path) >= sizeof un->sun_path) usage();
    un->sun_family = AF_UNIX;
    strcpy(un->sun_path, unix_path);
    g_addrlen = sizeof *un;
  } else {
    struct sockaddr_in* in = (struct sockaddr_in*)&g_addr;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
      struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res;
      if (getaddrinfo(host, NULL, &hints, &res) != 0) {
        fprintf(stderr, "loadgen: cannot resolve %s\n", host);
        return 1;
      }
      in->sin_addr = ((struct sockaddr_in*)res->ai_addr)->sin_addr;
      freeaddrinfo(res);
    }
    g_addrlen = sizeof *in;
  }
  struct conn* conns = calloc((size_t)nconns, sizeof *conns);
  if (!conns) die("calloc");
  int connect_errors = connect_all(conns, nconns);
  if (connect_errors == nconns) {
    fprintf(stderr, "loadgen: no connection could be opened\n");
    return 2;
  }
  if (idle) {
    printf("{\"connected\": %d, \"connect_errors\": %d}\n", nconns - connect_errors, connect_errors);
    fflush(stdout);
    char b[256];
    while (read(0, b, sizeof b) > 0) {
    }
    return 0;
  }

  g_msg = malloc(g_size);
  if (!g_msg) die("malloc");
  for (size_t i = 0; i < g_size; ++i) g_msg[i] = (char)('a' + (i * 7 + i / 251) % 26);
  if (g_scratch > g_size) g_scratch = g_size;

  struct worker* ws = calloc((size_t)nthreads, sizeof *ws);
  if (!ws) die("calloc");
  int per = nconns / nthreads, extra = nconns % nthreads, at = 0;
  for (int i = 0; i < nthreads; ++i) {
    struct worker* w = &ws[i];
    w->nconns = per + (i < extra);
    w->conns = conns + at;
    at += w->nconns;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->scratch = malloc(g_scratch);
    if (w->ep < 0 || !w->scratch) die("setup");
    for (int j = 0; j < w->nconns; ++j) {
      struct conn* c = &w->conns[j];
      if (c->fd < 0) continue;
      struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
      if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
  }

  atomic_store(&g_phase, PHASE_WARMUP);
  for (int i = 0; i < nthreads; ++i)
    if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) die("pthread_create");
  /* The warm-up starts once every connection has been served once: a
   * server may still be accepting long after the kernel completed the
   * handshakes (at most kReadyWaitNs). */
  int live = nconns - connect_errors;
  uint64_t t_connected = now_ns();
  while (atomic_load(&g_ready) < live && now_ns() - t_connected < kReadyWaitNs) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  uint64_t t_begin = now_ns();
  sleep_until(t_begin + (uint64_t)(warmup * 1e9));
  uint64_t t_start = now_ns();
  atomic_store(&g_phase, PHASE_MEASURE);
  fputs("start\n", stdout);
  fflush(stdout);
  sleep_until(t_start + (uint64_t)(duration * 1e9));
  atomic_store(&g_phase, PHASE_STOP);
  uint64_t t_stop = now_ns();
  fputs("stop\n", stdout);
  fflush(stdout);
  for (int i = 0; i < nthreads; ++i) pthread_join(ws[i].tid, NULL);

  static uint64_t hist[kBuckets];
  uint64_t rts = 0, bytes = 0, errors = 0, lat_sum = 0;
  for (int i = 0; i < nthreads; ++i) {
    rts += ws[i].rts;
    bytes += ws[i].bytes;
    errors += ws[i].errors;
    lat_sum += ws[i].lat_sum;
    for (int b = 0; b < kBuckets; ++b) hist[b] += ws[i].hist[b];
  }
  double secs = (double)(t_stop - t_start) / 1e9;
  uint64_t max_lat = 0;
  for (int b = kBuckets - 1; b >= 0; --b)
    if (hist[b]) {
      max_lat = (uint64_t)bucket_value(b);
      break;
    }
  printf(
      "{\"conns\": %d, \"size\": %zu, \"threads\": %d, \"duration_s\": %.6f, "
      "\"round_trips\": %llu, \"round_trips_per_s\": %.3f, \"bytes\": %llu, "
      "\"errors\": %llu, \"connect_errors\": %d, \"p50_us\": %.3f, \"p90_us\": %.3f, "
      "\"p99_us\": %.3f, \"p999_us\": %.3f, \"max_us\": %.3f, \"mean_us\": %.3f}\n",
      nconns, g_size, nthreads, secs, (unsigned long long)rts, secs > 0 ? (double)rts / secs : 0.0,
      (unsigned long long)bytes, (unsigned long long)errors, connect_errors,
      percentile(hist, rts, 0.50) / 1e3, percentile(hist, rts, 0.90) / 1e3,
      percentile(hist, rts, 0.99) / 1e3, percentile(hist, rts, 0.999) / 1e3, (double)max_lat / 1e3,
      rts ? (double)lat_sum / (double)rts / 1e3 : 0.0);
  fflush(stdout);
  for (int i = 0; i < nconns; ++i)
    if (conns[i].fd >= 0) close(conns[i].fd);
  return 0;
}
