// The nat rules trellis-init installs, as pure functions: flags in, iptables-restore text out.
// Nothing here runs a process or touches the kernel, so every case is unit-tested
// (tests/proxy/init/rules_test.cc); main.cc runs iptables-save / iptables-restore around it.
//
// Chains (table nat), all owned by Trellis and rebuilt whole on every run:
//   OUTPUT     -p tcp -j TRELLIS_OUTPUT        (jump added once)
//   PREROUTING -p tcp -j TRELLIS_INBOUND       (jump added once)
//   TRELLIS_OUTPUT: RETURN for the proxy's UID, -o lo, loopback destinations, excluded
//                   CIDRs and ports; everything else -> TRELLIS_REDIRECT (REDIRECT to 15001).
//   TRELLIS_INBOUND: RETURN for the proxy's own ports and excluded ports; included ports
//                   (or all) -> TRELLIS_IN_REDIRECT (REDIRECT to 15006).

#ifndef TRELLIS_PROXY_INIT_IPTABLES_RULES_H_
#define TRELLIS_PROXY_INIT_IPTABLES_RULES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace trellis::proxy::init {

enum class IpFamily { kIpv4, kIpv6 };

enum class Action { kInstall, kCleanup };

// What trellis-init was asked to do, validated.
struct InitOptions {
  uint32_t proxy_uid = 1337;
  uint16_t outbound_port = 15001;
  uint16_t inbound_port = 15006;
  uint16_t admin_port = 15000;
  std::vector<uint16_t> exclude_outbound_ports;
  std::vector<uint16_t> exclude_inbound_ports;
  // CIDRs as given (normalised: "10.0.0.0/8", "fd00::/8"); each applies to its own family.
  std::vector<std::string> exclude_outbound_cidrs;
  // Empty with include_all_inbound false: inbound traffic is not redirected at all.
  bool include_all_inbound = true;
  std::vector<uint16_t> include_inbound_ports;
  bool dry_run = false;
  Action action = Action::kInstall;
  // "auto": IPv6 rules when ip6tables-restore exists; "on": required; "off": IPv4 only.
  enum class Ipv6Mode { kAuto, kOn, kOff } ipv6 = Ipv6Mode::kAuto;
  bool help = false;
};

// The chain names, in the order they are declared.
inline constexpr const char* kTrellisChains[] = {"TRELLIS_OUTPUT", "TRELLIS_REDIRECT",
                                                 "TRELLIS_INBOUND", "TRELLIS_IN_REDIRECT"};

// The usage text printed by --help and after a usage error.
extern const char kUsage[];

// Parses the command line (without argv[0]). Accepts "--flag=value" and "--flag value".
// Refuses unknown flags, bad ports, bad UIDs and bad CIDRs with a message naming the flag.
absl::StatusOr<InitOptions> ParseArgs(const std::vector<std::string>& args);

// Parses a comma-separated port list ("" is empty). `flag` names the flag in errors.
absl::StatusOr<std::vector<uint16_t>> ParsePortList(absl::string_view flag, absl::string_view text);

// Parses and normalises one CIDR ("10.1.0.0/16", "fd00::/8", a bare address = /32 or /128).
absl::StatusOr<std::string> NormalizeCidr(absl::string_view text);

// True if the normalised CIDR is IPv6.
bool IsIpv6Cidr(absl::string_view cidr);

// The inbound ports never redirected: the proxy's own ports plus --exclude-inbound-ports,
// sorted and de-duplicated.
std::vector<uint16_t> EffectiveInboundExclusions(const InitOptions& options);

// The iptables-restore --noflush input that installs the rules. `current_nat` is the output of
// `iptables-save -t nat` (or "" when unknown): jump rules already present in OUTPUT/PREROUTING are
// not added again, so running twice leaves one copy. Declaring the TRELLIS_* chains flushes them,
// so their contents are rebuilt whole.
std::string RenderInstall(const InitOptions& options, IpFamily family,
                          absl::string_view current_nat);

// The iptables-restore --noflush input that removes every rule and chain trellis-init added, given
// `iptables-save -t nat` output. Returns "" when there is nothing to remove.
std::string RenderCleanup(absl::string_view current_nat);

// The jump rules (as iptables-save prints them, without "-A ") that hook the Trellis chains in.
std::vector<std::string> JumpRules();

}  // namespace trellis::proxy::init

#endif  // TRELLIS_PROXY_INIT_IPTABLES_RULES_H_
