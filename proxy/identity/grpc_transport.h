#pragma once

#include <memory>

#include "proxy/identity/control_plane_transport.h"

namespace trellis::proxy {

// ControlPlaneTransport over gRPC with TLS (trellis.identity.v1.Identity).
std::unique_ptr<ControlPlaneTransport> NewGrpcTransport(const TransportOptions& options);

}  // namespace trellis::proxy
