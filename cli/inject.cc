// `trellisctl inject -f FILE|-`: the offline front end of sidecar injection. Reads a
// multi-document YAML stream, injects every workload's pod template with the SAME code the
// admission webhook runs (control-plane/inject/inject.h), and writes the stream to stdout.
// Documents that need no change are written back byte for byte (comments kept).

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "control-plane/inject/inject.h"
#include "control-plane/inject/yaml_json.h"

namespace trellis::cli {
namespace {

namespace inj = control_plane::inject;

constexpr char kInjectUsage[] = R"(Usage: trellisctl inject -f FILE|- [FLAGS]

Adds the Trellis sidecar to every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
ReplicationController, Job and CronJob (and the items of a List) in a multi-document YAML
stream and writes the result to stdout; other kinds pass through unchanged. The same code as the
injection webhook, for clusters without it:
  trellisctl inject -f app.yaml | kubectl apply -f -

Per-pod annotations (on the pod template): trellis.io/inject: "false" (opt out),
trellis.io/sidecar-mode: classic, trellis.io/exclude-inbound-ports, trellis.io/exclude-outbound-ports,
trellis.io/exclude-outbound-cidrs, trellis.io/rewrite-app-probes: "false".
Injecting an injected stream changes nothing. hostNetwork pods are skipped (with a warning).

Flags:
  -f, --filename FILE       The YAML to read; - reads stdin. Required.
  --classic                 Classic sidecar container (clusters before 1.29) instead of a native
                            sidecar (an init container with restartPolicy: Always).
  --proxy-image IMAGE       Default: ghcr.io/trellis-mesh/trellis-proxy:latest
  --init-image IMAGE        Default: ghcr.io/trellis-mesh/trellis-init:latest
  --control-plane-address HOST:PORT
                            Default: trellis-control-plane.trellis-system.svc:15012
  --mesh-configmap NAME     ConfigMap with the mesh roots (roots.crt). Default: trellis-mesh
  -h, --help                Show this help.

Exit codes: 0 success, 1 a document could not be read or injected (the message names it; nothing
is written), 2 usage error.
)";

std::string Describe(size_t index, int line, const inj::Json& doc) {
  std::string kind = "unknown kind";
  std::string name;
  if (doc.is_object()) {
    if (doc.contains("kind") && doc["kind"].is_string()) kind = doc["kind"].get<std::string>();
    if (doc.contains("metadata") && doc["metadata"].is_object() &&
        doc["metadata"].contains("name") && doc["metadata"]["name"].is_string()) {
      name = doc["metadata"]["name"].get<std::string>();
    }
  }
  return absl::StrCat("document ", index, " (line ", line, ", ", kind,
                      name.empty() ? "" : absl::StrCat(" \"", name, "\""), ")");
}

bool IsBlank(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (!l.empty() && l[0] != '#') return false;
  }
  return true;
}

}  // namespace

int InjectCommand(const std::vector<std::string>& raw_args) {
  std::vector<std::string> args;
  for (const std::string& a : raw_args) args.push_back(a == "-f" ? "--filename" : a);
  ParsedArgs flags;
  if (absl::Status s = ParseArgs(args,
                                 {"--filename", "--proxy-image", "--init-image",
                                  "--control-plane-address", "--mesh-configmap"},
                                 {"--classic"}, &flags);
      !s.ok()) {
    return UsageError(absl::StrCat("inject: ", s.message()), kInjectUsage);
  }
  if (flags.help) {
    std::cout << kInjectUsage;
    return kExitOk;
  }
  const std::string file = flags.Get("--filename");
  if (file.empty()) return UsageError("inject: -f FILE (or -f - for stdin) is required", kInjectUsage);

  inj::InjectOptions options;
  options.classic = flags.Has("--classic");
  options.proxy_image = flags.Get("--proxy-image", options.proxy_image);
  options.init_image = flags.Get("--init-image", options.init_image);
  options.control_plane_address =
      flags.Get("--control-plane-address", options.control_plane_address);
  options.mesh_configmap = flags.Get("--mesh-configmap", options.mesh_configmap);

  std::string input;
  if (file == "-") {
    input.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      std::cerr << "trellisctl: inject: cannot read \"" << file << "\"\n";
      return kExitFailure;
    }
    input.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  std::vector<std::string> outputs;
  std::vector<std::string> warnings;
  size_t index = 0;
  int injected = 0;
  for (const inj::YamlDocument& doc : inj::SplitYamlDocuments(input)) {
    if (IsBlank(doc.text)) continue;
    ++index;
    absl::StatusOr<inj::Json> json = inj::YamlToJson(doc.text, doc.first_line);
    if (!json.ok()) {
      std::cerr << "trellisctl: inject: document " << index << " (line " << doc.first_line
                << "): " << json.status().message() << "\n";
      return kExitFailure;
    }
    if (json->is_null()) continue;
    absl::StatusOr<inj::InjectResult> result = inj::InjectObject(*json, options);
    if (!result.ok()) {
      std::cerr << "trellisctl: inject: " << Describe(index, doc.first_line, *json) << ": "
                << result.status().message() << "\n";
      return kExitFailure;
    }
    for (const std::string& w : result->warnings) {
      warnings.push_back(absl::StrCat(Describe(index, doc.first_line, *json), ": ", w));
    }
    if (result->outcome == inj::Outcome::kInjected) ++injected;
    if (result->object == *json) {
      std::string text = doc.text;
      while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
      outputs.push_back(text + "\n");
    } else {
      outputs.push_back(inj::JsonToYaml(result->object));
    }
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (i > 0) std::cout << "---\n";
    std::cout << outputs[i];
  }
  std::cout.flush();
  for (const std::string& w : warnings) std::cerr << "trellisctl: inject: warning: " << w << "\n";
  std::cerr << "trellisctl: inject: injected " << injected << " workload(s) in " << index
            << " document(s)\n";
  return std::cout ? kExitOk : kExitFailure;
}

}  // namespace trellis::cli
