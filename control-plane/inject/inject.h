// Sidecar injection: ONE pure code path, on JSON, shared by the mutating admission webhook
// (webhook.h) and `trellisctl inject` (cli/inject.cc).
//
// InjectPod() takes a Pod or a pod template ({"metadata": ..., "spec": ...}) and returns the
// injected copy; InjectObject() finds the pod template of a workload kind (Pod, Deployment,
// StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List) and injects it.
// Nothing here does I/O, so every rule is unit-tested (tests/control-plane/inject/).
//
// Rules (annotations are read from the pod / pod template metadata):
//   trellis.io/inject: "false"            the pod is left exactly as it is
//   trellis.io/injected                   marker set on injection; a marked pod is not touched
//                                         again, so injecting twice changes nothing
//   spec.hostNetwork: true                skipped: annotation trellis.io/inject-skipped says why
//   trellis.io/sidecar-mode: classic      the proxy is a classic container (default: native
//                                         sidecar, an init container with restartPolicy Always)
//   trellis.io/exclude-inbound-ports      "8080,9090": trellis-init leaves these inbound ports
//   trellis.io/exclude-outbound-ports     "5432": trellis-init leaves these outbound ports
//   trellis.io/exclude-outbound-cidrs     "10.0.0.0/8,fd00::/8"
//   trellis.io/rewrite-app-probes: "false" keep HTTP probes as they are
// HTTP liveness/readiness/startup probes of app containers are rewritten to
// GET /app-health/<container>/{livez,readyz,startupz} on the proxy's admin port 15000; the
// originals are recorded in annotation trellis.io/original-probes and env TRELLIS_APP_PROBES of
// the proxy (a JSON object: rewritten path -> original probe handler with a numeric port).

#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace trellis::control_plane::inject {

// Key order is kept, so `trellisctl inject` output reads like its input.
using Json = nlohmann::ordered_json;

inline constexpr char kInjectAnnotation[] = "trellis.io/inject";
inline constexpr char kInjectedAnnotation[] = "trellis.io/injected";
inline constexpr char kSkippedAnnotation[] = "trellis.io/inject-skipped";
inline constexpr char kSidecarModeAnnotation[] = "trellis.io/sidecar-mode";
inline constexpr char kExcludeInboundPortsAnnotation[] = "trellis.io/exclude-inbound-ports";
inline constexpr char kExcludeOutboundPortsAnnotation[] = "trellis.io/exclude-outbound-ports";
inline constexpr char kExcludeOutboundCidrsAnnotation[] = "trellis.io/exclude-outbound-cidrs";
inline constexpr char kRewriteProbesAnnotation[] = "trellis.io/rewrite-app-probes";
inline constexpr char kOriginalProbesAnnotation[] = "trellis.io/original-probes";

inline constexpr char kProxyContainerName[] = "trellis-proxy";
inline constexpr char kInitContainerName[] = "trellis-init";
inline constexpr char kTokenVolumeName[] = "trellis-token";
inline constexpr char kMeshVolumeName[] = "trellis-mesh";

inline constexpr int kProxyUid = 1337;
inline constexpr int kAdminPort = 15000;
inline constexpr int kOutboundCapturePort = 15001;
inline constexpr int kInboundCapturePort = 15006;

struct InjectOptions {
  std::string proxy_image = "ghcr.io/trellis-mesh/trellis-proxy:latest";
  std::string init_image = "ghcr.io/trellis-mesh/trellis-init:latest";
  // Classic sidecar for every pod (clusters older than 1.29); the annotation can also ask for it.
  bool classic = false;
  std::string control_plane_address = "trellis-control-plane.trellis-system.svc:15012";
  std::string control_plane_name = "trellis-control-plane.trellis-system.svc";
  // The ConfigMap with the mesh root bundle (key roots.crt), in the pod's namespace.
  std::string mesh_configmap = "trellis-mesh";
  std::string token_audience = "trellis";
  int token_expiration_seconds = 3600;
  std::string proxy_cpu_request = "100m";
  std::string proxy_memory_request = "64Mi";
  std::string proxy_memory_limit = "256Mi";
};

enum class Outcome {
  kInjected,         // the pod now has trellis-init and trellis-proxy
  kOptedOut,         // trellis.io/inject: "false": unchanged
  kAlreadyInjected,  // marker present: unchanged
  kSkipped,          // not injectable (hostNetwork): only the skip annotation added
  kNotAPod,          // InjectObject: a kind without a pod template, passed through unchanged
};

const char* OutcomeName(Outcome outcome);

struct InjectResult {
  Json object;  // the (possibly) modified copy
  Outcome outcome = Outcome::kNotAPod;
  // Why a pod was skipped or opted out, for CLI messages and admission warnings.
  std::vector<std::string> warnings;
};

// Injects one Pod or pod template ({"metadata": {...}, "spec": {...}}). InvalidArgument naming
// the field (e.g. "spec.containers[1].livenessProbe.httpGet.port") when the input is not a
// well-formed pod or an annotation is malformed; the input is never modified.
absl::StatusOr<InjectResult> InjectPod(const Json& pod, const InjectOptions& options);

// Injects the pod template(s) of any workload object: Pod, Deployment, StatefulSet, DaemonSet,
// ReplicaSet, ReplicationController, Job, CronJob (spec.jobTemplate.spec.template), and each item
// of a List. Other kinds come back unchanged with Outcome::kNotAPod. Errors name the path of
// the bad field from the object's root. For a List, outcome is kInjected if any item was.
absl::StatusOr<InjectResult> InjectObject(const Json& object, const InjectOptions& options);

// Parses a comma-separated port list ("" -> empty); InvalidArgument naming `what` otherwise.
absl::StatusOr<std::vector<int>> ParsePortList(const std::string& value, const std::string& what);
// Parses a comma-separated CIDR list (IPv4 or IPv6, with prefix length).
absl::StatusOr<std::vector<std::string>> ParseCidrList(const std::string& value,
                                                       const std::string& what);

}  // namespace trellis::control_plane::inject
