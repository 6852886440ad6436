/* echod_uring.c -- echod.c's twin on io_uring: a minimal single-threaded
 * TCP echo server that does everything through one ring, the io_uring
 * floor for the echo suite. Beside echod (the epoll floor) it answers
 * "how far below epoll can a completion loop go on this kernel", which is
 * what the io_uring issue's 0.8x-uvloop target needs to be measured against.
 *
 *   echod_uring [-a CPU] [-s]
 *                          listens on 127.0.0.1 (an ephemeral port; the
 *                          port is the first line on stdout). -s: reply
 *                          with a send() syscall straight from the recv
 *                          completion (the ring only for a partial send's
 *                          rest), as a loop whose write() sends at once.
 *
 * Control on stdin as echod: "start"/"stop" take getrusage() marks, "stop"
 * prints {"user_s": ..., "sys_s": ...}; end of stdin exits.
 *
 * The ring: SINGLE_ISSUER | DEFER_TASKRUN, one io_uring_submit_and_wait per
 * iteration carrying every SQE queued while handling the last batch.
 *   - one multishot accept on the listener (no address: this server never
 *     looks at it);
 *   - one multishot recv per connection into a provided-buffer ring of
 *     kBufs x kBufSize;
 *   - the echo is sent straight out of the provided buffer it arrived in
 *     (no copy): one send in flight per connection, so bytes never reorder;
 *     buffers that arrive meanwhile queue and go out together in one
 *     sendmsg. A buffer goes back to the ring when its bytes are sent.
 * With the ring out of buffers a recv ends with -ENOBUFS and is re-armed
 * once a send returns some.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "echod_common.h"

enum { kBufs = 4096, kBufSize = 16384, kGroup = 1, kMaxIov = 64, kEntries = 4096 };
enum { kAccept = 1, kRecv, kSend, kStdin };

struct conn {
  int fd;
  int closing;       /* recv ended for good: close once no send is in flight */
  int recv_armed;
  int send_armed;
  int starved;       /* recv ended with -ENOBUFS */
  /* queued buffers: bid[head..tail), off into the first one */
  unsigned short bid[kMaxIov * 4];
  unsigned len[kMaxIov * 4];
  unsigned head, tail, off;
  unsigned in_flight;  /* buffers covered by the send in flight */
  struct iovec iov[kMaxIov];
  struct msghdr msg;
  struct conn* next_starved;
};

static struct io_uring ring;
static int sync_send; /* -s: send() at once from the recv CQE, the ring only for what is left */
static struct io_uring_buf_ring* br;
static char* bufs;
static struct conn* starved;
static char ctl[256];

static void die(const char* what, int err) {
  fprintf(stderr, "echod_uring: %s: %s\n", what, strerror(err));
  exit(1);
}

static struct io_uring_sqe* sqe_get(void) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  if (!sqe) {
    io_uring_submit(&ring);
    sqe = io_uring_get_sqe(&ring);
    if (!sqe) die("io_uring_get_sqe", EBUSY);
  }
  return sqe;
}

static void tag(struct io_uring_sqe* sqe, void* p, int kind) {
  io_uring_sqe_set_data64(sqe, (unsigned long long)(uintptr_t)p | (unsigned)kind);
}

static void recycle(unsigned short bid) {
  io_uring_buf_ring_add(br, bufs + (size_t)bid * kBufSize, kBufSize, bid,
                        io_uring_buf_ring_mask(kBufs), 0);
  io_uring_buf_ring_advance(br, 1);
}

static void arm_recv(struct conn* c) {
  struct io_uring_sqe* sqe = sqe_get();
  io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = kGroup;
  tag(sqe, c, kRecv);
  c->recv_armed = 1;
}

static void arm_send(struct conn* c) {
  unsigned n = 0;
  for (unsigned i = c->head; i != c->tail && n < kMaxIov; ++i, ++n) {
    unsigned k = i % (kMaxIov * 4);
    unsigned skip = (i == c->head) ? c->off : 0;
    c->iov[n].iov_base = bufs + (size_t)c->bid[k] * kBufSize + skip;
    c->iov[n].iov_len = c->len[k] - skip;
  }
  struct io_uring_sqe* sqe = sqe_get();
  if (n == 1) {
    io_uring_prep_send(sqe, c->fd, c->iov[0].iov_base, c->iov[0].iov_len, MSG_NOSIGNAL);
  } else {
    memset(&c->msg, 0, sizeof c->msg);
    c->msg.msg_iov = c->iov;
    c->msg.msg_iovlen = n;
    io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
  }
  tag(sqe, c, kSend);
  c->send_armed = 1;
  c->in_flight = n;
}

static void maybe_close(struct conn* c) {
  if (!c->closing || c->send_armed || c->recv_armed) return;
  while (c->head != c->tail) recycle(c->bid[c->head++ % (kMaxIov * 4)]);
  close(c->fd);
  free(c);
}

static void on_accept(int lfd, int res, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) { /* the multishot ended: re-arm */
    struct io_uring_sqe* sqe = sqe_get();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    tag(sqe, NULL, kAccept);
  }
  if (res < 0) return;
  int one = 1;
  setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct conn* c = calloc(1, sizeof *c);
  if (!c) die("calloc", ENOMEM);
  c->fd = res;
  arm_recv(c);
}

static void on_recv(struct conn* c, int res, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) c->recv_armed = 0;
  if (res > 0) {
    unsigned short bid = (unsigned short)(flags >> IORING_CQE_BUFFER_SHIFT);
    if (c->tail - c->head == kMaxIov * 4) die("send queue overflow", ENOSPC);
    if (sync_send && !c->send_armed && c->head == c->tail) {
      ssize_t n = send(c->fd, bufs + (size_t)bid * kBufSize, (size_t)res, MSG_NOSIGNAL);
      if (n == res) {
        recycle(bid);
        goto rearm;
      }
      if (n < 0) n = 0;
      c->off = (unsigned)n;
    }
    unsigned k = c->tail++ % (kMaxIov * 4);
    c->bid[k] = bid;
    c->len[k] = (unsigned)res;
    if (!c->send_armed) arm_send(c);
  } else if (res == -ENOBUFS) {
    if (!c->starved) {
      c->starved = 1;
      c->next_starved = starved;
      starved = c;
    }
    return;
  } else {
    c->closing = 1; /* EOF or an error */
  }
rearm:
  if (!c->recv_armed && !c->closing) arm_recv(c);
  maybe_close(c);
}

static void on_send(struct conn* c, int res) {
  c->send_armed = 0;
  if (res < 0) {
    c->closing = 1;
  } else {
    unsigned left = (unsigned)res;
    while (left > 0 && c->head != c->tail) {
      unsigned k = c->head % (kMaxIov * 4);
      unsigned avail = c->len[k] - c->off;
      if (left < avail) {
        c->off += left;
        break;
      }
      left -= avail;
      c->off = 0;
      recycle(c->bid[k]);
      c->head++;
    }
  }
  if (!c->closing && c->head != c->tail) arm_send(c);
  /* buffers came back: re-arm the recvs that ran dry */
  while (starved) {
    struct conn* s = starved;
    starved = s->next_starved;
    s->starved = 0;
    if (!s->recv_armed && !s->closing) arm_recv(s);
  }
  maybe_close(c);
}

static void arm_stdin(void) {
  struct io_uring_sqe* sqe = sqe_get();
  io_uring_prep_read(sqe, 0, ctl, sizeof ctl - 1, 0);
  tag(sqe, NULL, kStdin);
}

/* Returns 0 at end of stdin. */
static int on_control(int res) {
  if (res <= 0) return 0;
  ctl[res] = 0;
  echod_control(ctl);
  arm_stdin();
  return 1;
}

static void setup_buffers(void) {
  size_t ring_bytes = kBufs * sizeof(struct io_uring_buf);
  void* mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  bufs = mmap(NULL, (size_t)kBufs * kBufSize, PROT_READ | PROT_WRITE,
              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED || bufs == MAP_FAILED) die("mmap", errno);
  struct io_uring_buf_reg reg = {.ring_addr = (unsigned long long)(uintptr_t)mem,
                                 .ring_entries = kBufs, .bgid = kGroup};
  int rc = io_uring_register_buf_ring(&ring, &reg, 0);
  if (rc < 0) die("io_uring_register_buf_ring", -rc);
  br = mem;
  io_uring_buf_ring_init(br);
  for (unsigned i = 0; i < kBufs; ++i)
    io_uring_buf_ring_add(br, bufs + (size_t)i * kBufSize, kBufSize, (unsigned short)i,
                          io_uring_buf_ring_mask(kBufs), (int)i);
  io_uring_buf_ring_advance(br, kBufs);
}

int main(int argc, char** argv) {
  int opt;
  while ((opt = getopt(argc, argv, "a:s")) != -1) {
    if (opt == 's') {
      sync_send = 1;
    } else if (opt == 'a') {
      echod_pin("echod_uring", optarg);
    } else {
      fprintf(stderr, "usage: echod_uring [-a CPU] [-s]\n");
      return 1;
    }
  }
  echod_setup();
  int port;
  int lfd = echod_listen(0, &port);
  if (lfd < 0) die("listen", errno);

  struct io_uring_params p = {0};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
  p.cq_entries = kEntries * 4;
  int rc = io_uring_queue_init_params(kEntries, &ring, &p);
  if (rc < 0) die("io_uring_queue_init_params", -rc);
  setup_buffers();
  printf("%d\n", port);
  fflush(stdout);

  struct io_uring_sqe* sqe = sqe_get();
  io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  tag(sqe, NULL, kAccept);
  arm_stdin();
  for (;;) {
    rc = io_uring_submit_and_wait(&ring, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) die("io_uring_enter", -rc);
    struct io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      unsigned long long ud = cqe->user_data;
      void* ptr = (void*)(uintptr_t)(ud & ~7ULL);
      switch ((int)(ud & 7)) {
        case kAccept: on_accept(lfd, cqe->res, cqe->flags); break;
        case kRecv: on_recv(ptr, cqe->res, cqe->flags); break;
        case kSend: on_send(ptr, cqe->res); break;
        case kStdin:
          if (!on_control(cqe->res)) return 0;
          break;
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
}
