#include "tests/proxy/server/proxy_test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "common/log/json_log.h"
#include "gtest/gtest.h"

namespace trellis::proxy::testing {

bool WaitUntil(const std::function<bool()>& predicate, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (predicate()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return predicate();
}

char Pattern(uint64_t i) { return static_cast<char>((i * 2654435761u) >> 13); }

// === Backend ===

struct Backend::Conn {
  UniqueFd fd;
  FdToken token = 0;
  std::string buf;  // echo: bytes read, not yet written
  size_t offset = 0;
  uint64_t sent = 0;
  bool eof = false;
};

Backend::Backend(Mode mode, size_t send_bytes) : mode_(mode), send_bytes_(send_bytes) {
  loop_ = *EpollLoop::Create();
  listen_fd_.Reset(socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), len), 0);
  EXPECT_EQ(listen(listen_fd_.get(), 8192), 0);
  getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  EXPECT_TRUE(loop_->AddFd(listen_fd_.get(), [this](uint32_t) { OnAccept(); }).ok());
  thread_ = std::thread([this] { loop_->Run(); });
}

Backend::~Backend() {
  loop_->Post([this] {
    conns_.clear();
    loop_->Stop();
  });
  thread_.join();
}

void Backend::Resume() {
  loop_->Post([this] {
    resumed_ = true;
    for (auto& c : conns_) {
      if (c->fd.valid()) Service(c.get());
    }
  });
}

void Backend::OnAccept() {
  for (;;) {
    const int fd = accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    accepted_.fetch_add(1);
    auto conn = std::make_unique<Conn>();
    conn->fd.Reset(fd);
    Conn* raw = conn.get();
    conn->token = *loop_->AddFd(fd, [this, raw](uint32_t) { Service(raw); });
    conns_.push_back(std::move(conn));
    Service(raw);
  }
}

void Backend::Close(Conn* conn) {
  loop_->RemoveFd(conn->token);
  conn->fd.Reset();
}

void Backend::Service(Conn* c) {
  if (!c->fd.valid()) return;
  char tmp[65536];
  if (mode_ == Mode::kSendAndClose) {
    while (c->sent < send_bytes_) {
      const size_t n = std::min<uint64_t>(sizeof(tmp), send_bytes_ - c->sent);
      for (size_t i = 0; i < n; ++i) tmp[i] = Pattern(c->sent + i);
      const ssize_t w = send(c->fd.get(), tmp, n, MSG_NOSIGNAL);
      if (w <= 0) {
        if (errno == EAGAIN) return;
        Close(c);
        return;
      }
      c->sent += w;
    }
    Close(c);
    return;
  }
  if (mode_ == Mode::kStall) {
    if (!resumed_) return;
    for (;;) {
      const ssize_t r = recv(c->fd.get(), tmp, sizeof(tmp), 0);
      if (r > 0) {
        sunk_.fetch_add(r);
        continue;
      }
      if (r < 0 && errno == EAGAIN) return;
      sink_done_.store(true);
      Close(c);
      return;
    }
  }
  // Echo with a bounded buffer, so that a client that does not read pushes back.
  for (;;) {
    bool progress = false;
    if (c->offset < c->buf.size()) {
      const ssize_t w =
          send(c->fd.get(), c->buf.data() + c->offset, c->buf.size() - c->offset, MSG_NOSIGNAL);
      if (w > 0) {
        c->offset += w;
        progress = true;
        if (c->offset == c->buf.size()) {
          c->buf.clear();
          c->offset = 0;
        }
      } else if (errno != EAGAIN) {
        Close(c);
        return;
      }
    }
    if (!c->eof && c->buf.size() < sizeof(tmp)) {
      const ssize_t r = recv(c->fd.get(), tmp, sizeof(tmp) - c->buf.size(), 0);
      if (r > 0) {
        c->buf.append(tmp, r);
        progress = true;
      } else if (r == 0) {
        c->eof = true;
        progress = true;
      } else if (errno != EAGAIN) {
        Close(c);
        return;
      }
    }
    if (c->eof && c->buf.empty()) {
      Close(c);
      return;
    }
    if (!progress) return;
  }
}

// === Clients ===

UniqueFd ConnectTo(uint16_t port, absl::Duration timeout) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  timeval tv{};
  tv.tv_sec = absl::ToInt64Seconds(timeout);
  tv.tv_usec = absl::ToInt64Microseconds(timeout) % 1000000;
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return UniqueFd();
  return fd;
}

std::string ReadAll(int fd, bool* eof) {
  std::string out;
  char buf[65536];
  *eof = false;
  for (;;) {
    const ssize_t r = recv(fd, buf, sizeof(buf), 0);
    if (r > 0) {
      out.append(buf, r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    *eof = r == 0;
    return out;
  }
}

bool WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t w = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return false;
    }
    off += w;
  }
  return true;
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr);
}
Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Sha256::Update(const char* data, size_t n) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n);
}
std::string Sha256::Hex() {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

// === Logs and stats ===

LogCapture::LogCapture() {
  const char* dir = std::getenv("TEST_TMPDIR");
  path_ = std::string(dir != nullptr ? dir : "/tmp") + "/proxy_log_XXXXXX";
  const int fd = mkstemp(path_.data());
  log::SetComponent("trellis-proxy");
  log::SetOutputFd(fd);  // kept open for the process's life
}

std::string LogCapture::Text() const {
  std::ifstream in(path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool LogCapture::WaitForLine(const std::vector<std::string>& parts, absl::Duration timeout) const {
  return WaitUntil(
      [&] {
        for (absl::string_view line : absl::StrSplit(Text(), '\n')) {
          bool all = true;
          for (const std::string& p : parts) all = all && absl::StrContains(line, p);
          if (all) return true;
        }
        return false;
      },
      timeout);
}

uint64_t HandshakeFailures(const ProxyServer& server, Direction d, tls::FailureReason reason) {
  return SumHandshakeFailures(server.worker_stats(), d, reason);
}

uint64_t ConnectionFailures(const ProxyServer& server, Direction d, ConnectionFailure failure) {
  uint64_t total = 0;
  for (const WorkerStats* w : server.worker_stats()) {
    total += w->connection_failures[static_cast<size_t>(d)][static_cast<size_t>(failure)].load();
  }
  return total;
}

// === Mesh and proxy pair ===

TestMesh::TestMesh()
    : root(trellis::testing::MakeRoot()),
      client_leaf(trellis::testing::MakeLeaf(root, kClientId)),
      server_leaf(trellis::testing::MakeLeaf(root, kServerId)) {}

Credentials TestMesh::CredentialsFor(const trellis::testing::TestLeaf& leaf) const {
  return Credentials{leaf.chain, leaf.key, trellis::testing::BundleOf({&root}), {}};
}

ListenerConfig Explicit(ListenerConfig::Kind kind, const std::string& name, uint16_t upstream_port,
                        std::vector<std::string> peers) {
  ListenerConfig l;
  l.kind = kind;
  l.name = name;
  l.bind_host = "127.0.0.1";
  l.upstream_host = "127.0.0.1";
  l.upstream_port = upstream_port;
  l.peers = trellis::testing::Patterns(peers);
  return l;
}

ProxyPair::ProxyPair(const TestMesh& mesh, uint16_t backend_port,
                     const std::function<void(ProxyOptions&)>& tweak,
                     std::vector<std::string> inbound_peers,
                     std::vector<std::string> outbound_peers) {
  EXPECT_TRUE(out_store.Update(mesh.CredentialsFor(mesh.client_leaf)).ok());
  EXPECT_TRUE(in_store.Update(mesh.CredentialsFor(mesh.server_leaf)).ok());
  ProxyOptions in_options;
  in_options.workers = 2;
  in_options.listeners = {
      Explicit(ListenerConfig::Kind::kExplicitInbound, "in", backend_port, inbound_peers)};
  if (tweak) tweak(in_options);
  inbound = *ProxyServer::Create(in_options, &in_store);
  EXPECT_TRUE(inbound->Start().ok());
  ProxyOptions out_options;
  out_options.workers = 2;
  out_options.listeners = {Explicit(ListenerConfig::Kind::kExplicitOutbound, "out",
                                    inbound->BoundPort("in"), outbound_peers)};
  if (tweak) tweak(out_options);
  outbound = *ProxyServer::Create(out_options, &out_store);
  EXPECT_TRUE(outbound->Start().ok());
}

}  // namespace trellis::proxy::testing
