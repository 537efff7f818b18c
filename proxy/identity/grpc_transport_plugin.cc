// The entry point of libtrellis-proxy-grpc.so (see transport_loader.h).
#include "proxy/identity/grpc_transport.h"

extern "C" __attribute__((visibility("default"))) const trellis::proxy::TransportPlugin*
trellis_proxy_transport_plugin() {
  static const trellis::proxy::TransportPlugin plugin{trellis::proxy::kTransportPluginAbiVersion,
                                                      &trellis::proxy::NewGrpcTransport};
  return &plugin;
}
