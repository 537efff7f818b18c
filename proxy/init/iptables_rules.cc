#include "proxy/init/iptables_rules.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace trellis::proxy::init {

const char kUsage[] = R"(Usage: trellis-init [FLAGS]

Installs the Trellis sidecar's nat rules (iptables-restore --noflush, one atomic batch per IP
family): outbound TCP from the pod goes to the proxy's outbound port, inbound TCP to its inbound
port. Needs root or CAP_NET_ADMIN in the pod's network namespace. Running it again rebuilds the
TRELLIS_* chains and adds nothing twice.

Flags (--flag=value or --flag value):
  --proxy-uid UID                 UID the proxy runs as; its traffic is never redirected. Default 1337
  --outbound-port PORT            Proxy port for redirected outbound TCP. Default 15001
  --inbound-port PORT             Proxy port for redirected inbound TCP. Default 15006
  --admin-port PORT               Proxy admin port, never redirected inbound. Default 15000
  --exclude-outbound-ports LIST   Comma-separated destination ports not redirected outbound
  --exclude-inbound-ports LIST    Comma-separated ports not redirected inbound (the proxy's own
                                  ports 15000/15001/15006 and --admin-port always are)
  --exclude-outbound-cidrs LIST   Comma-separated destination CIDRs not redirected outbound
                                  (IPv4 and IPv6 CIDRs each go to their own family)
  --include-inbound-ports LIST    '*' (default): every inbound port; or a comma-separated list;
                                  '' : no inbound redirection
  --ipv6 auto|on|off              auto (default): also install IPv6 rules when ip6tables-restore
                                  exists; on: require it; off: IPv4 only
  --dry-run                       Print the iptables-restore input and change nothing
  --cleanup                       Remove every rule and chain trellis-init added
  --help                          This text
)";

namespace {

constexpr char kOutput[] = "TRELLIS_OUTPUT";
constexpr char kRedirect[] = "TRELLIS_REDIRECT";
constexpr char kInbound[] = "TRELLIS_INBOUND";
constexpr char kInRedirect[] = "TRELLIS_IN_REDIRECT";

constexpr char kOutboundJump[] = "OUTPUT -p tcp -j TRELLIS_OUTPUT";
constexpr char kInboundJump[] = "PREROUTING -p tcp -j TRELLIS_INBOUND";

absl::StatusOr<uint16_t> ParsePort(absl::string_view flag, absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  int port = 0;
  if (!absl::SimpleAtoi(text, &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": \"", text, "\" is not a port number (1-65535)"));
  }
  return static_cast<uint16_t>(port);
}

// The jump rules (without "-A ") in `current_nat` that target a Trellis chain.
std::vector<std::string> ExistingJumps(absl::string_view current_nat) {
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(current_nat, '\n')) {
    line = absl::StripTrailingAsciiWhitespace(line);
    if (!absl::ConsumePrefix(&line, "-A ")) continue;
    if (!absl::StartsWith(line, "OUTPUT ") && !absl::StartsWith(line, "PREROUTING ")) continue;
    if (absl::EndsWith(line, absl::StrCat("-j ", kOutput)) ||
        absl::EndsWith(line, absl::StrCat("-j ", kInbound))) {
      out.emplace_back(line);
    }
  }
  return out;
}

// The Trellis chains declared in `current_nat` (":TRELLIS_OUTPUT - [0:0]").
std::set<std::string> ExistingChains(absl::string_view current_nat) {
  std::set<std::string> out;
  for (absl::string_view line : absl::StrSplit(current_nat, '\n')) {
    if (!absl::ConsumePrefix(&line, ":")) continue;
    const std::string name(line.substr(0, line.find(' ')));
    for (const char* chain : kTrellisChains) {
      if (name == chain) out.insert(name);
    }
  }
  return out;
}

void SortUnique(std::vector<uint16_t>* ports) {
  std::sort(ports->begin(), ports->end());
  ports->erase(std::unique(ports->begin(), ports->end()), ports->end());
}

}  // namespace

absl::StatusOr<std::vector<uint16_t>> ParsePortList(absl::string_view flag,
                                                    absl::string_view text) {
  std::vector<uint16_t> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    absl::StatusOr<uint16_t> port = ParsePort(flag, item);
    if (!port.ok()) return port.status();
    out.push_back(*port);
  }
  SortUnique(&out);
  return out;
}

absl::StatusOr<std::string> NormalizeCidr(absl::string_view text) {
  text = absl::StripAsciiWhitespace(text);
  std::pair<absl::string_view, absl::string_view> parts =
      absl::StrSplit(text, absl::MaxSplits('/', 1));
  const std::string address(parts.first);
  const bool v6 = absl::StrContains(address, ':');
  const int max_prefix = v6 ? 128 : 32;
  std::array<unsigned char, 16> bytes{};
  if (address.empty() || inet_pton(v6 ? AF_INET6 : AF_INET, address.c_str(), bytes.data()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--exclude-outbound-cidrs: \"", text,
        "\" is not a CIDR (expected e.g. 10.96.0.0/12, 169.254.169.254/32 or fd00::/8)"));
  }
  int prefix = max_prefix;
  if (absl::StrContains(text, '/') &&
      (!absl::SimpleAtoi(parts.second, &prefix) || prefix < 0 || prefix > max_prefix)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--exclude-outbound-cidrs: \"", text, "\" has a bad prefix length (0-", max_prefix, ")"));
  }
  // Clear the host bits, as iptables itself would: 10.1.2.3/16 is 10.1.0.0/16.
  const int len = max_prefix / 8;
  for (int i = 0; i < len; ++i) {
    const int bits_here = std::clamp(prefix - 8 * i, 0, 8);
    bytes[i] &= static_cast<unsigned char>(0xff << (8 - bits_here));
  }
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof(buf));
  return absl::StrCat(buf, "/", prefix);
}

bool IsIpv6Cidr(absl::string_view cidr) { return absl::StrContains(cidr, ':'); }

absl::StatusOr<InitOptions> ParseArgs(const std::vector<std::string>& args) {
  InitOptions options;
  const std::set<std::string> valued = {"--proxy-uid",
                                        "--outbound-port",
                                        "--inbound-port",
                                        "--admin-port",
                                        "--exclude-outbound-ports",
                                        "--exclude-inbound-ports",
                                        "--exclude-outbound-cidrs",
                                        "--include-inbound-ports",
                                        "--ipv6"};
  std::map<std::string, std::string> values;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg;
    std::string value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    // Accept --proxy_uid as well as --proxy-uid.
    std::replace(name.begin() + 2, name.end(), '_', '-');
    if (name == "--dry-run" || name == "--cleanup" || name == "--help") {
      if (has_value) {
        return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
      }
      if (name == "--dry-run") options.dry_run = true;
      if (name == "--cleanup") options.action = Action::kCleanup;
      if (name == "--help") options.help = true;
      continue;
    }
    if (valued.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag \"", name, "\""));
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      }
      value = args[++i];
    }
    values[name] = value;
  }

  if (auto it = values.find("--proxy-uid"); it != values.end()) {
    uint32_t uid = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(it->second), &uid) || uid == 0 ||
        uid == 0xffffffffu) {
      return absl::InvalidArgumentError(
          absl::StrCat("--proxy-uid: \"", it->second,
                       "\" is not a non-root numeric UID (the proxy must not run as root)"));
    }
    options.proxy_uid = uid;
  }
  for (auto [flag, target] : {std::make_pair("--outbound-port", &options.outbound_port),
                              std::make_pair("--inbound-port", &options.inbound_port),
                              std::make_pair("--admin-port", &options.admin_port)}) {
    if (auto it = values.find(flag); it != values.end()) {
      absl::StatusOr<uint16_t> port = ParsePort(flag, it->second);
      if (!port.ok()) return port.status();
      *target = *port;
    }
  }
  if (options.outbound_port == options.inbound_port) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--outbound-port and --inbound-port must differ (both ", options.outbound_port, ")"));
  }
  for (auto [flag, target] :
       {std::make_pair("--exclude-outbound-ports", &options.exclude_outbound_ports),
        std::make_pair("--exclude-inbound-ports", &options.exclude_inbound_ports)}) {
    if (auto it = values.find(flag); it != values.end()) {
      absl::StatusOr<std::vector<uint16_t>> ports = ParsePortList(flag, it->second);
      if (!ports.ok()) return ports.status();
      *target = *std::move(ports);
    }
  }
  if (auto it = values.find("--exclude-outbound-cidrs"); it != values.end()) {
    std::set<std::string> seen;
    for (absl::string_view item : absl::StrSplit(it->second, ',', absl::SkipWhitespace())) {
      absl::StatusOr<std::string> cidr = NormalizeCidr(item);
      if (!cidr.ok()) return cidr.status();
      if (seen.insert(*cidr).second) options.exclude_outbound_cidrs.push_back(*cidr);
    }
  }
  if (auto it = values.find("--include-inbound-ports"); it != values.end()) {
    const absl::string_view text = absl::StripAsciiWhitespace(it->second);
    if (text == "*") {
      options.include_all_inbound = true;
    } else {
      options.include_all_inbound = false;
      absl::StatusOr<std::vector<uint16_t>> ports = ParsePortList("--include-inbound-ports", text);
      if (!ports.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(ports.status().message(), "; use '*' for every port or '' for none"));
      }
      options.include_inbound_ports = *std::move(ports);
    }
  }
  if (auto it = values.find("--ipv6"); it != values.end()) {
    const std::string mode = absl::AsciiStrToLower(it->second);
    if (mode == "auto") {
      options.ipv6 = InitOptions::Ipv6Mode::kAuto;
    } else if (mode == "on" || mode == "true") {
      options.ipv6 = InitOptions::Ipv6Mode::kOn;
    } else if (mode == "off" || mode == "false") {
      options.ipv6 = InitOptions::Ipv6Mode::kOff;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--ipv6: \"", it->second, "\" must be auto, on or off"));
    }
  }
  return options;
}

std::vector<uint16_t> EffectiveInboundExclusions(const InitOptions& options) {
  std::vector<uint16_t> out = options.exclude_inbound_ports;
  out.push_back(15000);
  out.push_back(15001);
  out.push_back(15006);
  out.push_back(options.admin_port);
  out.push_back(options.outbound_port);
  out.push_back(options.inbound_port);
  SortUnique(&out);
  return out;
}

std::vector<std::string> JumpRules() { return {kOutboundJump, kInboundJump}; }

std::string RenderInstall(const InitOptions& options, IpFamily family,
                          absl::string_view current_nat) {
  const bool v6 = family == IpFamily::kIpv6;
  std::vector<std::string> lines;
  lines.push_back(absl::StrCat("# Generated by trellis-init (", v6 ? "IPv6" : "IPv4",
                               "): iptables-restore --noflush"));
  lines.push_back("*nat");
  // With --noflush, declaring a chain creates it, or flushes it if it exists: the Trellis
  // chains are rebuilt whole, so a second run leaves exactly one copy.
  for (const char* chain : kTrellisChains) lines.push_back(absl::StrCat(":", chain, " - [0:0]"));

  // Outbound.
  lines.push_back(
      absl::StrCat("-A ", kRedirect, " -p tcp -j REDIRECT --to-ports ", options.outbound_port));
  lines.push_back(
      absl::StrCat("-A ", kOutput, " -m owner --uid-owner ", options.proxy_uid, " -j RETURN"));
  lines.push_back(absl::StrCat("-A ", kOutput, " -o lo -j RETURN"));
  lines.push_back(
      absl::StrCat("-A ", kOutput, " -d ", v6 ? "::1/128" : "127.0.0.0/8", " -j RETURN"));
  for (const std::string& cidr : options.exclude_outbound_cidrs) {
    if (IsIpv6Cidr(cidr) != v6) continue;
    lines.push_back(absl::StrCat("-A ", kOutput, " -d ", cidr, " -j RETURN"));
  }
  for (uint16_t port : options.exclude_outbound_ports) {
    lines.push_back(absl::StrCat("-A ", kOutput, " -p tcp -m tcp --dport ", port, " -j RETURN"));
  }
  lines.push_back(absl::StrCat("-A ", kOutput, " -p tcp -j ", kRedirect));

  // Inbound.
  lines.push_back(
      absl::StrCat("-A ", kInRedirect, " -p tcp -j REDIRECT --to-ports ", options.inbound_port));
  const std::vector<uint16_t> excluded = EffectiveInboundExclusions(options);
  if (options.include_all_inbound) {
    for (uint16_t port : excluded) {
      lines.push_back(absl::StrCat("-A ", kInbound, " -p tcp -m tcp --dport ", port, " -j RETURN"));
    }
    lines.push_back(absl::StrCat("-A ", kInbound, " -p tcp -j ", kInRedirect));
  } else {
    for (uint16_t port : options.include_inbound_ports) {
      if (std::binary_search(excluded.begin(), excluded.end(), port)) continue;
      lines.push_back(
          absl::StrCat("-A ", kInbound, " -p tcp -m tcp --dport ", port, " -j ", kInRedirect));
    }
  }

  // Hooks: exactly one canonical jump each. Others that target our chains (an older version's,
  // a hand-made copy) are removed; the canonical one is added only when missing.
  const std::vector<std::string> existing = ExistingJumps(current_nat);
  for (const std::string& jump : existing) {
    if (jump != kOutboundJump && jump != kInboundJump) lines.push_back(absl::StrCat("-D ", jump));
  }
  for (const char* jump : {kOutboundJump, kInboundJump}) {
    const auto count = std::count(existing.begin(), existing.end(), jump);
    for (int extra = 1; extra < count; ++extra) lines.push_back(absl::StrCat("-D ", jump));
    if (count == 0) lines.push_back(absl::StrCat("-A ", jump));
  }
  lines.push_back("COMMIT");
  return absl::StrCat(absl::StrJoin(lines, "\n"), "\n");
}

std::string RenderCleanup(absl::string_view current_nat) {
  const std::vector<std::string> jumps = ExistingJumps(current_nat);
  const std::set<std::string> chains = ExistingChains(current_nat);
  if (jumps.empty() && chains.empty()) return "";
  std::vector<std::string> lines = {"# Generated by trellis-init --cleanup", "*nat"};
  for (const std::string& jump : jumps) lines.push_back(absl::StrCat("-D ", jump));
  // Flush every chain before deleting any: TRELLIS_OUTPUT refers to TRELLIS_REDIRECT.
  for (const char* chain : kTrellisChains) {
    if (chains.count(chain) != 0) lines.push_back(absl::StrCat("-F ", chain));
  }
  for (const char* chain : kTrellisChains) {
    if (chains.count(chain) != 0) lines.push_back(absl::StrCat("-X ", chain));
  }
  lines.push_back("COMMIT");
  return absl::StrCat(absl::StrJoin(lines, "\n"), "\n");
}

}  // namespace trellis::proxy::init
