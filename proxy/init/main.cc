// trellis-init: installs (or removes) the Trellis sidecar's nat rules in the current network
// namespace. The rules come from iptables_rules.h (pure); this file finds the iptables tools,
// checks privileges, reads `iptables-save -t nat` and feeds one iptables-restore --noflush batch
// per IP family.
//
// Exit codes: 0 success, 1 failure (no privilege, iptables missing or refusing), 2 usage error.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "proxy/init/iptables_rules.h"

namespace trellis::proxy::init {
namespace {

struct CommandResult {
  int exit_code = 0;
  std::string out;
  std::string err;
};

// Finds `name` on $PATH, then in /usr/sbin and /sbin (init containers and sh_tests often run
// with a PATH without the sbin directories). Returns "" when absent.
std::string FindTool(const std::string& name) {
  std::string path = getenv("PATH") != nullptr ? getenv("PATH") : "";
  absl::StrAppend(&path, ":/usr/sbin:/sbin:/usr/bin:/bin");
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    const std::string candidate = absl::StrCat(dir, "/", name);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Runs argv with `input` on stdin and collects stdout and stderr.
absl::StatusOr<CommandResult> Run(const std::vector<std::string>& argv, const std::string& input) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  CommandResult result;
  size_t written = 0;
  int in_fd = in[1];
  if (input.empty()) {
    close(in_fd);
    in_fd = -1;
  }
  bool out_open = true, err_open = true;
  char buf[4096];
  while (out_open || err_open || in_fd >= 0) {
    pollfd fds[3] = {{out_open ? out[0] : -1, POLLIN, 0},
                     {err_open ? err[0] : -1, POLLIN, 0},
                     {in_fd, POLLOUT, 0}};
    if (poll(fds, 3, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        (i == 0 ? out_open : err_open) = false;
      }
    }
    if (in_fd >= 0 && fds[2].revents != 0) {
      const ssize_t n = write(in_fd, input.data() + written, input.size() - written);
      if (n > 0) written += static_cast<size_t>(n);
      if ((n < 0 && errno != EINTR && errno != EAGAIN) || written == input.size()) {
        close(in_fd);
        in_fd = -1;
      }
    }
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (result.exit_code == 127 && result.err.empty()) {
    result.err = absl::StrCat("could not execute ", argv[0]);
  }
  return result;
}

// True if this process has CAP_NET_ADMIN (bit 12) in its effective set.
bool HasNetAdmin() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "CapEff:")) continue;
    uint64_t caps = 0;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(rest), &caps)) return geteuid() == 0;
    return (caps & (uint64_t{1} << 12)) != 0;
  }
  return geteuid() == 0;
}

std::string Describe(const CommandResult& r) {
  std::string text(absl::StripAsciiWhitespace(r.err.empty() ? r.out : r.err));
  return text.empty() ? absl::StrCat("exit ", r.exit_code) : text;
}

struct Family {
  IpFamily family;
  const char* label;
  std::string save;
  std::string restore;
};

// Applies (or, with --dry-run, prints) one family's batch.
absl::Status ApplyFamily(const InitOptions& options, const Family& f, bool privileged) {
  std::string current;
  if (privileged) {
    absl::StatusOr<CommandResult> saved = Run({f.save, "-t", "nat"}, "");
    if (!saved.ok()) return saved.status();
    if (saved->exit_code != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(f.save, " -t nat failed: ", Describe(*saved)));
    }
    current = saved->out;
  }
  const std::string batch = options.action == Action::kCleanup
                                ? RenderCleanup(current)
                                : RenderInstall(options, f.family, current);
  if (options.dry_run) {
    if (!privileged) {
      std::cout << "# " << f.label
                << ": current rules not read (not privileged); assuming none are installed\n";
    }
    std::cout << (batch.empty() ? absl::StrCat("# ", f.label, ": nothing to remove\n") : batch);
    return absl::OkStatus();
  }
  if (batch.empty()) {
    std::cerr << "trellis-init: " << f.label << ": no Trellis rules installed, nothing to remove\n";
    return absl::OkStatus();
  }
  absl::StatusOr<CommandResult> restored = Run({f.restore, "--noflush"}, batch);
  if (!restored.ok()) return restored.status();
  if (restored->exit_code != 0) {
    return absl::InternalError(absl::StrCat(f.restore, " --noflush refused the batch: ",
                                            Describe(*restored), "\nThe batch was:\n", batch));
  }
  std::cerr << "trellis-init: " << f.label << ": "
            << (options.action == Action::kCleanup ? "removed the Trellis rules"
                                                   : "installed the Trellis rules")
            << "\n";
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  absl::StatusOr<InitOptions> options = ParseArgs(std::vector<std::string>(argv + 1, argv + argc));
  if (!options.ok()) {
    std::cerr << "trellis-init: " << options.status().message() << "\n\n" << kUsage;
    return 2;
  }
  if (options->help) {
    std::cout << kUsage;
    return 0;
  }
  const bool privileged = HasNetAdmin();
  if (!privileged && !options->dry_run) {
    std::cerr << "trellis-init: needs root or CAP_NET_ADMIN in the pod's network namespace "
                 "(running as UID "
              << geteuid()
              << " without it); in Kubernetes add NET_ADMIN (and NET_RAW) to the init "
                 "container's securityContext.capabilities.add, or use --dry-run to print the "
                 "rules\n";
    return 1;
  }

  std::vector<Family> families;
  Family v4{IpFamily::kIpv4, "IPv4", FindTool("iptables-save"), FindTool("iptables-restore")};
  if (v4.save.empty() || v4.restore.empty()) {
    if (!options->dry_run) {
      std::cerr << "trellis-init: iptables-save/iptables-restore not found on PATH, /usr/sbin "
                   "or /sbin: install the Debian package 'iptables' (apt-get install iptables)\n";
      return 1;
    }
  }
  families.push_back(v4);
  if (options->ipv6 != InitOptions::Ipv6Mode::kOff) {
    Family v6{IpFamily::kIpv6, "IPv6", FindTool("ip6tables-save"), FindTool("ip6tables-restore")};
    if (v6.save.empty() || v6.restore.empty()) {
      if (options->ipv6 == InitOptions::Ipv6Mode::kOn && !options->dry_run) {
        std::cerr << "trellis-init: --ipv6=on but ip6tables-save/ip6tables-restore not found: "
                     "install the Debian package 'iptables'\n";
        return 1;
      }
      std::cerr << "trellis-init: IPv6: ip6tables-restore not found, IPv6 rules not installed\n";
    } else {
      families.push_back(v6);
    }
  }

  for (const Family& f : families) {
    absl::Status status = ApplyFamily(*options, f, privileged && !f.save.empty());
    if (!status.ok()) {
      // IPv6 in auto mode is best-effort: a kernel without ip6 nat must not stop the pod.
      if (f.family == IpFamily::kIpv6 && options->ipv6 == InitOptions::Ipv6Mode::kAuto) {
        std::cerr << "trellis-init: IPv6 rules not installed (--ipv6=on makes this fatal): "
                  << status.message() << "\n";
        continue;
      }
      std::cerr << "trellis-init: " << f.label << ": " << status.message() << "\n";
      if (absl::StrContains(status.message(), "ermission denied")) {
        std::cerr << "trellis-init: the kernel refused: trellis-init needs CAP_NET_ADMIN\n";
      }
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace trellis::proxy::init

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return trellis::proxy::init::Main(argc, argv);
}
