// loadgen: open-loop fixed-rate HTTP/1.1 load generator over keepalive connections, and an
// idle-connection holder. Built by bench/proxy/run.sh with g++ directly (no Bazel).
//
//   loadgen rate  HOST PORT RATE SECONDS CONNS [WARMUP_SECONDS]
//     Sends request i at its intended time t0 + i/RATE on a free keepalive connection (one request in
//     flight per connection). If no connection is free the request waits in a queue; its latency is still
//     measured from its intended send time, so a stall shows up in the percentiles (no coordinated
//     omission). Prints one JSON object: p50/p90/p99/p999/max in microseconds, achieved rate, errors, and
//     how late the generator itself was in sending (send_lag_p99_us) so its own accuracy is visible.
//   loadgen idle  HOST PORT N
//     Opens N connections, sends one GET on each and reads the reply (so the whole path, both proxies and
//     the backend, is established), prints "READY <n>" and holds them idle until stdin closes.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

const char kRequest[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

int Connect(const char* host, int port, bool nonblock) {
  int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, host, &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 && errno != EINPROGRESS) {
    close(fd);
    return -1;
  }
  return fd;
}

// Returns the length of one complete HTTP response at the start of buf, or 0 if incomplete.
size_t ResponseLength(const std::string& buf) {
  size_t h = buf.find("\r\n\r\n");
  if (h == std::string::npos) return 0;
  size_t cl = 0;
  size_t p = buf.find("Content-Length:");
  if (p == std::string::npos) p = buf.find("content-length:");
  if (p != std::string::npos && p < h) cl = strtoul(buf.c_str() + p + 15, nullptr, 10);
  size_t total = h + 4 + cl;
  return buf.size() >= total ? total : 0;
}

struct Conn {
  int fd = -1;
  bool busy = false;
  int64_t intended = 0;  // intended send time of the request in flight
  std::string in;
};

double Pct(std::vector<int64_t>& v, double q) {
  if (v.empty()) return 0;
  size_t i = std::min(v.size() - 1, size_t(q * (v.size() - 1) + 0.5));
  return v[i] / 1000.0;
}

int RunRate(const char* host, int port, double rate, double seconds, int nconns, double warmup) {
  prctl(PR_SET_TIMERSLACK, 1UL);
  int ep = epoll_create1(0);
  std::vector<Conn> conns(nconns);
  for (int i = 0; i < nconns; i++) {
    conns[i].fd = Connect(host, port, false);  // blocking connect, then nonblocking I/O
    if (conns[i].fd < 0) { fprintf(stderr, "connect failed\n"); return 1; }
    fcntl(conns[i].fd, F_SETFL, O_NONBLOCK);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
  }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  epoll_event tev{};
  tev.events = EPOLLIN;
  tev.data.u32 = 0xffffffff;
  epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

  const double interval_ns = 1e9 / rate;
  const int64_t t0 = NowNs() + 20000000;  // start in 20 ms
  const int64_t warm_end = t0 + int64_t(warmup * 1e9);
  const int64_t end = warm_end + int64_t(seconds * 1e9);
  int64_t next_index = 0;
  std::deque<int64_t> queue;   // intended times of requests waiting for a free connection
  std::vector<int> free_list;  // free connection indexes
  for (int i = nconns - 1; i >= 0; i--) free_list.push_back(i);
  std::vector<int64_t> lat, lag;
  lat.reserve(size_t(rate * seconds * 1.1) + 16);
  lag.reserve(lat.capacity());
  int64_t errors = 0, sent_measured = 0, outstanding = 0;

  auto arm = [&](int64_t when) {
    itimerspec its{};
    its.it_value.tv_sec = when / 1000000000;
    its.it_value.tv_nsec = when % 1000000000;
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, nullptr);
  };
  auto dispatch = [&]() {
    while (!queue.empty() && !free_list.empty()) {
      int ci = free_list.back();
      free_list.pop_back();
      Conn& c = conns[ci];
      c.busy = true;
      c.intended = queue.front();
      queue.pop_front();
      int64_t now = NowNs();
      if (c.intended >= warm_end) lag.push_back(now - c.intended);
      ssize_t n = send(c.fd, kRequest, sizeof kRequest - 1, MSG_NOSIGNAL);
      if (n != ssize_t(sizeof kRequest - 1)) { errors++; c.busy = false; }
      else outstanding++;
    }
  };
  arm(t0);
  epoll_event evs[256];
  bool sending = true;
  while (sending || outstanding > 0) {
    int64_t now = NowNs();
    if (!sending && now > end + 2000000000LL) break;  // give stragglers 2 s
    int n = epoll_wait(ep, evs, 256, 100);
    for (int k = 0; k < n; k++) {
      uint32_t id = evs[k].data.u32;
      if (id == 0xffffffff) {
        uint64_t exp;
        (void)!read(tfd, &exp, sizeof exp);
        now = NowNs();
        // enqueue every request whose intended time has come
        for (;;) {
          int64_t t = t0 + int64_t(next_index * interval_ns);
          if (t > now) break;
          if (t >= end) { sending = false; break; }
          queue.push_back(t);
          if (t >= warm_end) sent_measured++;
          next_index++;
        }
        if (sending) arm(t0 + int64_t(next_index * interval_ns));
        dispatch();
        continue;
      }
      Conn& c = conns[id];
      char buf[16384];
      for (;;) {
        ssize_t r = recv(c.fd, buf, sizeof buf, 0);
        if (r > 0) { c.in.append(buf, r); continue; }
        if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
          fprintf(stderr, "connection %u closed\n", id);
          epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
          close(c.fd);
          bool was_busy = c.busy;
          if (c.busy) { errors++; outstanding--; }
          c.busy = false;
          c.fd = Connect(host, port, false);
          if (c.fd >= 0) {
            fcntl(c.fd, F_SETFL, O_NONBLOCK);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u32 = id;
            epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev);
            if (was_busy) free_list.push_back(id);
          }
          c.in.clear();
        }
        break;
      }
      size_t len;
      while (c.busy && (len = ResponseLength(c.in)) > 0) {
        int64_t done = NowNs();
        if (c.in.compare(0, 12, "HTTP/1.1 200") != 0) errors++;
        if (c.intended >= warm_end) lat.push_back(done - c.intended);
        c.in.erase(0, len);
        c.busy = false;
        outstanding--;
        free_list.push_back(id);
      }
    }
    dispatch();
  }
  std::sort(lat.begin(), lat.end());
  std::sort(lag.begin(), lag.end());
  printf("{\"target_rate\": %.0f, \"seconds\": %.1f, \"conns\": %d, \"sent\": %lld, \"completed\": %zu, "
         "\"errors\": %lld, \"achieved_rate\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
         "\"p999_us\": %.1f, \"max_us\": %.1f, \"send_lag_p50_us\": %.1f, \"send_lag_p99_us\": %.1f}\n",
         rate, seconds, nconns, (long long)sent_measured, lat.size(), (long long)errors,
         lat.size() / seconds, Pct(lat, 0.5), Pct(lat, 0.9), Pct(lat, 0.99), Pct(lat, 0.999),
         lat.empty() ? 0.0 : lat.back() / 1000.0, Pct(lag, 0.5), Pct(lag, 0.99));
  return 0;
}

int RunIdle(const char* host, int port, int n) {
  std::vector<int> fds;
  int ok = 0, failed = 0;
  // Open in batches of 64 so no listen backlog overflows; each connection is used once, then held.
  for (int start = 0; start < n; start += 64) {
    std::vector<int> batch;
    for (int i = start; i < std::min(n, start + 64); i++) {
      int fd = Connect(host, port, false);
      if (fd < 0) { failed++; continue; }
      timeval tv{10, 0};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      if (send(fd, kRequest, sizeof kRequest - 1, MSG_NOSIGNAL) < 0) { failed++; close(fd); continue; }
      batch.push_back(fd);
    }
    for (int fd : batch) {
      std::string in;
      char buf[4096];
      bool good = false;
      for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r <= 0) break;
        in.append(buf, r);
        if (ResponseLength(in) > 0) { good = in.compare(0, 12, "HTTP/1.1 200") == 0; break; }
      }
      if (good) { ok++; fds.push_back(fd); } else { failed++; close(fd); }
    }
  }
  printf("READY %d %d\n", ok, failed);
  fflush(stdout);
  char c;
  while (read(0, &c, 1) > 0) {}
  for (int fd : fds) close(fd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 7 && strcmp(argv[1], "rate") == 0)
    return RunRate(argv[2], atoi(argv[3]), atof(argv[4]), atof(argv[5]), atoi(argv[6]),
                   argc > 7 ? atof(argv[7]) : 1.0);
  if (argc == 5 && strcmp(argv[1], "idle") == 0) return RunIdle(argv[2], atoi(argv[3]), atoi(argv[4]));
  fprintf(stderr, "usage: loadgen rate HOST PORT RATE SECONDS CONNS [WARMUP] | loadgen idle HOST PORT N\n");
  return 2;
}
