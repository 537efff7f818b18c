#include "proxy/identity/grpc_transport.h"

#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "proto/time_convert.h"
#include "trellis/identity/v1/identity.grpc.pb.h"

namespace trellis::proxy {
namespace {

namespace v1 = trellis::identity::v1;

using ::trellis::proto::DurationToProto;
using ::trellis::proto::FromProto;

absl::Status ToAbsl(const grpc::Status& status) {
  // absl and gRPC share the canonical code numbers.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

// Whether a failed call says the connection itself is in trouble (the control plane went away or
// does not answer): the next call should not wait for that connection's reconnect backoff.
bool ConnectionSuspect(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnavailable ||
         status.code() == absl::StatusCode::kDeadlineExceeded;
}

class GrpcWatchStream final : public WatchStream {
 public:
  GrpcWatchStream(std::unique_ptr<v1::Identity::Stub> stub, uint64_t known_version,
                  std::function<void()> on_connection_failure)
      : stub_(std::move(stub)), on_connection_failure_(std::move(on_connection_failure)) {
    v1::WatchRequest request;
    request.set_known_version(known_version);
    reader_ = stub_->Watch(&context_, request);
  }

  bool Next(WatchSnapshot* snapshot) override {
    v1::WatchResponse response;
    if (!reader_->Read(&response)) return false;
    *snapshot = WatchSnapshot();
    snapshot->version = response.version();
    snapshot->bundle_der.assign(response.trust_bundle_der().begin(),
                                response.trust_bundle_der().end());
    for (const v1::DeniedEntry& entry : response.denied()) {
      if (entry.has_serial_hex()) snapshot->denied_serials.push_back(entry.serial_hex());
      if (entry.has_spiffe_id()) snapshot->denied_spiffe_ids.push_back(entry.spiffe_id());
    }
    if (response.has_renew_before()) snapshot->renew_before = FromProto(response.renew_before());
    return true;
  }

  absl::Status Finish() override {
    absl::Status status = ToAbsl(reader_->Finish());
    if (ConnectionSuspect(status) && on_connection_failure_) on_connection_failure_();
    return status;
  }

  void Cancel() override { context_.TryCancel(); }

 private:
  std::unique_ptr<v1::Identity::Stub> stub_;
  std::function<void()> on_connection_failure_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::WatchResponse>> reader_;
};

class GrpcTransport final : public ControlPlaneTransport {
 public:
  explicit GrpcTransport(TransportOptions options) : options_(std::move(options)) {}

  IssueOutcome Issue(const ChannelCredentials& credentials, const IssueCall& call) override {
    v1::IssueCertificateRequest request;
    request.set_csr_der(call.csr_der);
    if (call.requested_ttl > absl::ZeroDuration()) {
      *request.mutable_requested_ttl() = DurationToProto(call.requested_ttl);
    }
    if (!call.kubernetes_token.empty()) {
      request.set_kubernetes_token(call.kubernetes_token);
    } else if (!call.join_token.empty()) {
      request.set_join_token(call.join_token);
    }
    std::shared_ptr<grpc::Channel> channel = ChannelFor(credentials);
    std::unique_ptr<v1::Identity::Stub> stub = v1::Identity::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         absl::ToChronoMilliseconds(call.timeout));
    v1::IssueCertificateResponse response;
    IssueOutcome outcome;
    outcome.status = ToAbsl(stub->IssueCertificate(&context, request, &response));
    if (!outcome.status.ok()) {
      if (ConnectionSuspect(outcome.status)) Forget(channel.get());
      const auto& trailers = context.GetServerTrailingMetadata();
      if (auto it = trailers.find("retry-after-ms"); it != trailers.end()) {
        int64_t ms = 0;
        if (absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &ms)) {
          outcome.retry_after = absl::Milliseconds(ms);
        }
      }
      return outcome;
    }
    IssueReply& reply = outcome.reply;
    reply.chain_der.assign(response.cert_chain_der().begin(), response.cert_chain_der().end());
    reply.bundle_der.assign(response.trust_bundle_der().begin(), response.trust_bundle_der().end());
    reply.spiffe_id = response.spiffe_id();
    if (response.has_valid_for()) reply.valid_for = FromProto(response.valid_for());
    if (response.has_refresh_in()) reply.refresh_in = FromProto(response.refresh_in());
    if (response.has_refresh_after()) reply.refresh_after = FromProto(response.refresh_after());
    return outcome;
  }

  std::unique_ptr<WatchStream> Watch(const ChannelCredentials& credentials,
                                     uint64_t known_version) override {
    std::shared_ptr<grpc::Channel> channel = ChannelFor(credentials);
    grpc::Channel* raw = channel.get();
    return std::make_unique<GrpcWatchStream>(v1::Identity::NewStub(std::move(channel)),
                                             known_version, [this, raw] { Forget(raw); });
  }

 private:
  // The channel for `credentials`: the last one made, when they have not changed since. In token
  // mode every call (issuance and Watch alike) presents no client certificate, so renewals ride
  // the Watch stream's connection and cost the control plane no TLS handshake (about 1-3 ms of its
  // CPU each, several times the issuance itself). A renewal with a certificate, or new roots
  // after a rotation, changes the credentials and gets a new connection.
  std::shared_ptr<grpc::Channel> ChannelFor(const ChannelCredentials& credentials) {
    absl::MutexLock lock(&mu_);
    if (channel_ == nullptr || credentials.roots_pem != channel_credentials_.roots_pem ||
        credentials.key_pem != channel_credentials_.key_pem ||
        credentials.chain_pem != channel_credentials_.chain_pem) {
      channel_ = MakeChannel(credentials);
      channel_credentials_ = credentials;
    }
    return channel_;
  }

  // After a call failed for want of a connection, the next call dials afresh instead of failing
  // fast until the shared channel's own backoff ends: near expiry, every second counts.
  void Forget(const grpc::Channel* channel) {
    absl::MutexLock lock(&mu_);
    if (channel_.get() == channel) channel_.reset();
  }

  std::shared_ptr<grpc::Channel> MakeChannel(const ChannelCredentials& credentials) const {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = credentials.roots_pem;
    ssl.pem_private_key = credentials.key_pem;
    ssl.pem_cert_chain = credentials.chain_pem;
    grpc::ChannelArguments args;
    // Dial whatever address we were given, but insist on the control plane's DNS name.
    args.SetSslTargetNameOverride(options_.server_name);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    // Our own retry schedule decides when to try again: do not share a global subchannel (and
    // its reconnect backoff, up to 2 minutes) with earlier channels to the same address.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    return grpc::CreateCustomChannel(options_.address, grpc::SslCredentials(ssl), args);
  }

  const TransportOptions options_;
  absl::Mutex mu_;
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
  ChannelCredentials channel_credentials_ ABSL_GUARDED_BY(mu_);
};

std::atomic<TransportLogSink> log_sink{nullptr};

void ForwardGrpcLog(gpr_log_func_args* args) {
  const TransportLogSink sink = log_sink.load();
  if (sink == nullptr) return;
  const int severity = args->severity == GPR_LOG_SEVERITY_ERROR  ? 2
                       : args->severity == GPR_LOG_SEVERITY_INFO ? 1
                                                                 : 0;
  sink(severity, args->file != nullptr ? args->file : "", args->line,
       args->message != nullptr ? args->message : "");
}

}  // namespace

std::unique_ptr<ControlPlaneTransport> NewGrpcTransport(const TransportOptions& options) {
  if (options.log_sink != nullptr) {
    log_sink.store(options.log_sink);
    gpr_set_log_function(ForwardGrpcLog);
  }
  return std::make_unique<GrpcTransport>(options);
}

}  // namespace trellis::proxy
