#include "proxy/identity/context_store.h"

namespace trellis::proxy {

absl::Status ContextStore::Update(Credentials credentials) {
  return Publish(std::move(credentials));
}

absl::Status ContextStore::UpdateTrust(identity::TrustBundle bundle, tls::DenyList deny_list) {
  std::optional<Credentials> current = this->credentials();
  if (!current.has_value()) {
    return absl::FailedPreconditionError("no certificate yet; trust updates apply after the first");
  }
  current->bundle = std::move(bundle);
  current->deny_list = std::move(deny_list);
  return Publish(*std::move(current));
}

absl::Status ContextStore::Publish(Credentials credentials) {
  // Build both contexts before taking the lock: a failure leaves everything as it was.
  auto build = [&](tls::TlsRole role) {
    tls::TlsContextOptions options;
    options.role = role;
    options.chain = credentials.chain;
    options.key = credentials.key;
    options.bundle = credentials.bundle;
    options.deny_list = credentials.deny_list;
    options.alpn = options_.alpn;
    options.clock = options_.clock;
    return tls::TlsContext::Create(std::move(options));
  };
  absl::StatusOr<std::shared_ptr<const tls::TlsContext>> server = build(tls::TlsRole::kServer);
  if (!server.ok()) return server.status();
  absl::StatusOr<std::shared_ptr<const tls::TlsContext>> client = build(tls::TlsRole::kClient);
  if (!client.ok()) return client.status();
  {
    absl::MutexLock lock(&mu_);
    server_ = *std::move(server);
    client_ = *std::move(client);
    credentials_ = credentials;
    ++generation_;
  }
  for (const auto& callback : callbacks_) callback(credentials);
  return absl::OkStatus();
}

std::shared_ptr<const tls::TlsContext> ContextStore::server_context() const {
  absl::ReaderMutexLock lock(&mu_);
  return server_;
}

std::shared_ptr<const tls::TlsContext> ContextStore::client_context() const {
  absl::ReaderMutexLock lock(&mu_);
  return client_;
}

std::optional<Credentials> ContextStore::credentials() const {
  absl::ReaderMutexLock lock(&mu_);
  return credentials_;
}

uint64_t ContextStore::generation() const {
  absl::ReaderMutexLock lock(&mu_);
  return generation_;
}

void ContextStore::OnPublish(std::function<void(const Credentials&)> callback) {
  callbacks_.push_back(std::move(callback));
}

}  // namespace trellis::proxy
