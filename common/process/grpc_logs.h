#pragma once

namespace trellis::process {

// Sends gRPC core's own log lines through common/log, so every line on stderr is one JSON object
// (with "source":"grpc"). Call first in main(). Its own library, so that a binary that does not
// link gRPC (trellis-proxy, see proxy/identity/transport_loader.h) need not.
void RouteGrpcLogsToJson();

}  // namespace trellis::process
