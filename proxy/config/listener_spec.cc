#include "proxy/config/listener_spec.h"

#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace trellis::proxy {
namespace {

constexpr char kExample[] =
    "expected e.g. out:127.0.0.1:9000=>10.0.0.7:9443@spiffe://cluster.local/ns/shop/sa/checkout "
    "or in:0.0.0.0:9443=>127.0.0.1:8080@spiffe://cluster.local/ns/shop/*";

absl::Status Bad(absl::string_view spec, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("listener \"", spec, "\": ", what, "; ", kExample));
}

// Splits "host:port" or "[v6]:port".
bool ParseHostPort(absl::string_view text, std::string* host, uint16_t* port, bool allow_zero) {
  size_t colon;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return false;
    }
    *host = std::string(text.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == absl::string_view::npos) return false;
    *host = std::string(text.substr(0, colon));
    if (host->find(':') != std::string::npos) return false;  // bare IPv6 needs brackets
  }
  int value = 0;
  if (host->empty() || !absl::SimpleAtoi(text.substr(colon + 1), &value) || value < 0 ||
      value > 65535 || (value == 0 && !allow_zero)) {
    return false;
  }
  *port = static_cast<uint16_t>(value);
  return true;
}

}  // namespace

absl::StatusOr<ListenerSpec> ParseListenerSpec(absl::string_view text) {
  const absl::string_view spec = absl::StripAsciiWhitespace(text);
  absl::string_view rest = spec;
  ListenerSpec out;
  // Optional NAME= prefix (a name never contains ':').
  if (const size_t eq = rest.find('='); eq != absl::string_view::npos &&
                                        rest.substr(0, eq).find(':') == absl::string_view::npos &&
                                        (eq + 1 >= rest.size() || rest[eq + 1] != '>')) {
    out.name = std::string(rest.substr(0, eq));
    if (out.name.empty()) return Bad(spec, "empty listener name");
    rest.remove_prefix(eq + 1);
  }
  if (absl::ConsumePrefix(&rest, "out:")) {
    out.kind = ListenerSpec::Kind::kOutbound;
  } else if (absl::ConsumePrefix(&rest, "in:")) {
    out.kind = ListenerSpec::Kind::kInbound;
  } else {
    return Bad(spec, "must start with out: (plaintext in, mTLS out) or in: (mTLS in, plaintext out)");
  }
  absl::string_view peers;
  if (const size_t at = rest.find('@'); at != absl::string_view::npos) {
    peers = rest.substr(at + 1);
    rest = rest.substr(0, at);
    if (peers.empty()) return Bad(spec, "nothing after '@'");
  }
  const size_t arrow = rest.find("=>");
  if (arrow == absl::string_view::npos) return Bad(spec, "missing \"=>\" between the two addresses");
  if (!ParseHostPort(rest.substr(0, arrow), &out.bind_host, &out.bind_port, /*allow_zero=*/true)) {
    return Bad(spec, absl::StrCat("listen address \"", rest.substr(0, arrow),
                                  "\" is not host:port"));
  }
  if (!ParseHostPort(rest.substr(arrow + 2), &out.upstream_host, &out.upstream_port,
                     /*allow_zero=*/false)) {
    return Bad(spec, absl::StrCat("destination \"", rest.substr(arrow + 2),
                                  "\" is not host:port (port 1-65535)"));
  }
  if (!peers.empty()) {
    for (absl::string_view pattern : absl::StrSplit(peers, '|')) {
      absl::StatusOr<identity::SpiffeIdPattern> parsed = identity::SpiffeIdPattern::Parse(pattern);
      if (!parsed.ok()) return Bad(spec, parsed.status().message());
      out.peers.push_back(*std::move(parsed));
    }
  }
  if (out.name.empty()) {
    out.name = absl::StrCat(out.kind == ListenerSpec::Kind::kOutbound ? "out-" : "in-",
                            out.bind_port == 0 ? "auto" : absl::StrCat(out.bind_port));
  }
  return out;
}

absl::StatusOr<std::vector<ListenerSpec>> ParseListenerSpecs(absl::string_view text) {
  std::vector<ListenerSpec> out;
  std::set<std::string> names;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    absl::StatusOr<ListenerSpec> spec = ParseListenerSpec(part);
    if (!spec.ok()) return spec.status();
    if (!names.insert(spec->name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "two listeners are named \"", spec->name, "\"; give them names with NAME=..."));
    }
    out.push_back(*std::move(spec));
  }
  return out;
}

}  // namespace trellis::proxy
