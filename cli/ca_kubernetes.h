#pragma once

// `trellisctl ca init --kubernetes`: the CA files as the two Kubernetes objects the install needs.
//
//   DIR/kubernetes/trellis-ca-secret.yaml      Secret trellis-ca (type Opaque): ca.crt, ca.key,
//                                              roots.crt (and chain.crt when DIR has one),
//                                              base64 in `data`; mode 0600. Never root.key.
//   DIR/kubernetes/trellis-mesh-configmap.yaml ConfigMap trellis-mesh: trust-domain,
//                                              control-plane-address, roots.crt (the keys of
//                                              k8s/configmap.yaml); mode 0644.
//
// The file contents are read back from DIR, i.e. exactly what the control plane would load.

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace trellis::cli {

inline constexpr char kKubernetesDir[] = "kubernetes";
inline constexpr char kCaSecretFile[] = "trellis-ca-secret.yaml";
inline constexpr char kMeshConfigMapFile[] = "trellis-mesh-configmap.yaml";
inline constexpr char kCaSecretName[] = "trellis-ca";
inline constexpr char kMeshConfigMapName[] = "trellis-mesh";

// InvalidArgument unless `ns` is a Kubernetes namespace name (a DNS-1123 label).
absl::Status ValidateNamespace(const std::string& ns);

// The manifests' paths under `ca_dir`, Secret first.
std::vector<std::string> KubernetesManifestPaths(const std::string& ca_dir);

// Writes both manifests from the CA files in `ca_dir` (creating DIR/kubernetes). Without
// `overwrite`, an existing manifest is refused with AlreadyExists.
absl::Status WriteKubernetesManifests(const std::string& ca_dir, const std::string& ns,
                                      const std::string& trust_domain, bool overwrite);

}  // namespace trellis::cli
