#include "control-plane/inject/inject.h"

#include <arpa/inet.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace trellis::control_plane::inject {
namespace {

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// Annotation value as a string, or "" when absent. Non-string values are an error.
absl::StatusOr<std::string> Annotation(const Json& pod, const char* key) {
  if (!pod.contains("metadata")) return std::string();
  const Json& metadata = pod["metadata"];
  if (!metadata.is_object()) return Invalid("metadata", "must be an object");
  if (!metadata.contains("annotations") || metadata["annotations"].is_null()) {
    return std::string();
  }
  const Json& annotations = metadata["annotations"];
  if (!annotations.is_object()) return Invalid("metadata.annotations", "must be an object");
  if (!annotations.contains(key)) return std::string();
  if (!annotations[key].is_string()) {
    return Invalid(absl::StrCat("metadata.annotations[\"", key, "\"]"), "must be a string");
  }
  return annotations[key].get<std::string>();
}

void SetAnnotation(Json& pod, const std::string& key, const std::string& value) {
  Json& metadata = pod["metadata"];
  if (!metadata.contains("annotations") || !metadata["annotations"].is_object()) {
    metadata["annotations"] = Json::object();
  }
  metadata["annotations"][key] = value;
}

Json EnvFieldRef(const char* name, const char* field) {
  return Json{{"name", name}, {"valueFrom", {{"fieldRef", {{"fieldPath", field}}}}}};
}

Json AdminProbe(const char* path, int period, int failure_threshold) {
  return Json{{"httpGet", {{"path", path}, {"port", kAdminPort}}},
              {"periodSeconds", period},
              {"failureThreshold", failure_threshold}};
}

// The list field `key` of `spec` (absent or null -> empty); an error unless it is an array of
// objects each with a string "name".
absl::Status CheckContainerList(const Json& spec, const char* key, bool required) {
  const std::string path = absl::StrCat("spec.", key);
  if (!spec.contains(key) || spec[key].is_null()) {
    if (required) return Invalid(path, "is required (a list of containers)");
    return absl::OkStatus();
  }
  const Json& list = spec[key];
  if (!list.is_array()) return Invalid(path, "must be a list");
  if (required && list.empty()) return Invalid(path, "must not be empty");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item = absl::StrCat(path, "[", i, "]");
    if (!list[i].is_object()) return Invalid(item, "must be an object");
    if (!list[i].contains("name") || !list[i]["name"].is_string()) {
      return Invalid(absl::StrCat(item, ".name"), "must be a string");
    }
    const std::string name = list[i]["name"].get<std::string>();
    if (name == kProxyContainerName || name == kInitContainerName) {
      return Invalid(item, absl::StrCat("a container is already named \"", name,
                                        "\" but the pod has no ", kInjectedAnnotation,
                                        " annotation; rename it"));
    }
    for (const char* field : {"env", "volumeMounts", "ports"}) {
      if (list[i].contains(field) && !list[i][field].is_null() && !list[i][field].is_array()) {
        return Invalid(absl::StrCat(item, ".", field), "must be a list");
      }
    }
  }
  return absl::OkStatus();
}

// Resolves a probe's httpGet port (number or the name of a container port) to a number.
absl::StatusOr<int> ResolvePort(const Json& container, const Json& port, const std::string& path) {
  if (port.is_number_integer()) {
    const int64_t p = port.get<int64_t>();
    if (p < 1 || p > 65535) return Invalid(path, "must be a port number 1-65535");
    return static_cast<int>(p);
  }
  if (!port.is_string()) return Invalid(path, "must be a port number or a port name");
  const std::string name = port.get<std::string>();
  int numeric = 0;
  if (absl::SimpleAtoi(name, &numeric)) {
    if (numeric < 1 || numeric > 65535) return Invalid(path, "must be a port number 1-65535");
    return numeric;
  }
  if (container.contains("ports") && container["ports"].is_array()) {
    for (const Json& p : container["ports"]) {
      if (p.is_object() && p.contains("name") && p["name"] == name && p.contains("containerPort") &&
          p["containerPort"].is_number_integer()) {
        return p["containerPort"].get<int>();
      }
    }
  }
  return Invalid(path, absl::StrCat("names port \"", name, "\", which the container does not declare"));
}

struct ProbeRewrite {
  std::string path;  // /app-health/<container>/<kind>
  Json original;     // the httpGet handler, numeric port, plus timeoutSeconds
};

// Rewrites the HTTP probes of one app container in place; appends what was rewritten.
absl::Status RewriteProbes(Json& container, const std::string& item_path,
                           std::vector<ProbeRewrite>* rewrites) {
  static const std::pair<const char*, const char*> kProbes[] = {
      {"livenessProbe", "livez"}, {"readinessProbe", "readyz"}, {"startupProbe", "startupz"}};
  const std::string name = container["name"].get<std::string>();
  for (const auto& [field, suffix] : kProbes) {
    if (!container.contains(field) || container[field].is_null()) continue;
    const std::string probe_path = absl::StrCat(item_path, ".", field);
    Json& probe = container[field];
    if (!probe.is_object()) return Invalid(probe_path, "must be an object");
    if (!probe.contains("httpGet")) continue;  // exec, tcpSocket, grpc: left as they are
    Json& http = probe["httpGet"];
    if (!http.is_object()) return Invalid(probe_path + ".httpGet", "must be an object");
    if (!http.contains("port")) return Invalid(probe_path + ".httpGet.port", "is required");
    absl::StatusOr<int> port = ResolvePort(container, http["port"], probe_path + ".httpGet.port");
    if (!port.ok()) return port.status();
    Json original = http;
    original["port"] = *port;
    if (!original.contains("path")) original["path"] = "/";
    if (probe.contains("timeoutSeconds")) original["timeoutSeconds"] = probe["timeoutSeconds"];
    const std::string path = absl::StrCat("/app-health/", name, "/", suffix);
    rewrites->push_back({path, std::move(original)});
    http = Json{{"path", path}, {"port", kAdminPort}, {"scheme", "HTTP"}};
  }
  return absl::OkStatus();
}

bool IsValidCidr(const std::string& cidr) {
  const std::vector<std::string> parts = absl::StrSplit(cidr, '/');
  if (parts.size() != 2) return false;
  int bits = 0;
  if (!absl::SimpleAtoi(parts[1], &bits) || parts[1].empty() || parts[1][0] == '+') return false;
  unsigned char buf[16];
  if (inet_pton(AF_INET, parts[0].c_str(), buf) == 1) return bits >= 0 && bits <= 32;
  if (inet_pton(AF_INET6, parts[0].c_str(), buf) == 1) return bits >= 0 && bits <= 128;
  return false;
}

// Adds `value` to the list `key` of `object`, creating it.
void Append(Json& object, const char* key, Json value) {
  if (!object.contains(key) || !object[key].is_array()) object[key] = Json::array();
  object[key].push_back(std::move(value));
}

}  // namespace

const char* OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kInjected: return "injected";
    case Outcome::kOptedOut: return "opted out";
    case Outcome::kAlreadyInjected: return "already injected";
    case Outcome::kSkipped: return "skipped";
    case Outcome::kNotAPod: return "not a workload";
  }
  return "unknown";
}

absl::StatusOr<std::vector<int>> ParsePortList(const std::string& value, const std::string& what) {
  std::vector<int> ports;
  for (absl::string_view raw : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    const std::string item(absl::StripAsciiWhitespace(raw));
    int port = 0;
    if (!absl::SimpleAtoi(item, &port) || port < 1 || port > 65535 || item[0] == '+') {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": \"", item, "\" is not a port number 1-65535 (expected e.g. \"8080,9090\")"));
    }
    ports.push_back(port);
  }
  return ports;
}

absl::StatusOr<std::vector<std::string>> ParseCidrList(const std::string& value,
                                                       const std::string& what) {
  std::vector<std::string> cidrs;
  for (absl::string_view raw : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    const std::string item(absl::StripAsciiWhitespace(raw));
    if (!IsValidCidr(item)) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": \"", item, "\" is not a CIDR (expected e.g. \"10.0.0.0/8,fd00::/8\")"));
    }
    cidrs.push_back(item);
  }
  return cidrs;
}

absl::StatusOr<InjectResult> InjectPod(const Json& pod, const InjectOptions& options) {
  if (!pod.is_object()) return Invalid("(pod)", "must be an object");
  if (!pod.contains("spec") || !pod["spec"].is_object()) {
    return Invalid("spec", "is required (an object)");
  }
  if (pod.contains("metadata") && !pod["metadata"].is_null() && !pod["metadata"].is_object()) {
    return Invalid("metadata", "must be an object");
  }
  InjectResult result;
  result.object = pod;
  if (!result.object.contains("metadata") || result.object["metadata"].is_null()) {
    // Never add metadata to an input that had none unless something is injected.
  }

  absl::StatusOr<std::string> opt = Annotation(pod, kInjectAnnotation);
  if (!opt.ok()) return opt.status();
  const std::string inject = absl::AsciiStrToLower(*opt);
  if (!inject.empty() && inject != "true" && inject != "false" && inject != "enabled" &&
      inject != "disabled") {
    return Invalid(absl::StrCat("metadata.annotations[\"", kInjectAnnotation, "\"]"),
                   absl::StrCat("\"", *opt, "\" must be \"true\" or \"false\""));
  }
  if (inject == "false" || inject == "disabled") {
    result.outcome = Outcome::kOptedOut;
    result.warnings.push_back(absl::StrCat("not injected: ", kInjectAnnotation, " is \"", *opt, "\""));
    return result;
  }
  absl::StatusOr<std::string> marker = Annotation(pod, kInjectedAnnotation);
  if (!marker.ok()) return marker.status();
  if (!marker->empty()) {
    result.outcome = Outcome::kAlreadyInjected;
    return result;
  }

  const Json& spec = pod["spec"];
  if (spec.contains("hostNetwork") && !spec["hostNetwork"].is_null() &&
      !spec["hostNetwork"].is_boolean()) {
    return Invalid("spec.hostNetwork", "must be a boolean");
  }
  if (spec.contains("hostNetwork") && spec["hostNetwork"] == true) {
    const std::string reason =
        "hostNetwork pods share the node's network namespace, where trellis-init's iptables "
        "rules would capture the node's traffic; not injected";
    SetAnnotation(result.object, kSkippedAnnotation, reason);
    result.outcome = Outcome::kSkipped;
    result.warnings.push_back(reason);
    return result;
  }

  if (absl::Status s = CheckContainerList(spec, "containers", true); !s.ok()) return s;
  if (absl::Status s = CheckContainerList(spec, "initContainers", false); !s.ok()) return s;
  if (spec.contains("volumes") && !spec["volumes"].is_null()) {
    if (!spec["volumes"].is_array()) return Invalid("spec.volumes", "must be a list");
    for (size_t i = 0; i < spec["volumes"].size(); ++i) {
      const Json& v = spec["volumes"][i];
      if (!v.is_object() || !v.contains("name") || !v["name"].is_string()) {
        return Invalid(absl::StrCat("spec.volumes[", i, "].name"), "must be a string");
      }
      if (v["name"] == kTokenVolumeName || v["name"] == kMeshVolumeName) {
        return Invalid(absl::StrCat("spec.volumes[", i, "]"),
                       absl::StrCat("a volume is already named ", v["name"].dump(), "; rename it"));
      }
    }
  }

  // Annotations that tune the injection, all validated before anything changes.
  absl::StatusOr<std::string> mode = Annotation(pod, kSidecarModeAnnotation);
  if (!mode.ok()) return mode.status();
  if (!mode->empty() && *mode != "classic" && *mode != "native") {
    return Invalid(absl::StrCat("metadata.annotations[\"", kSidecarModeAnnotation, "\"]"),
                   absl::StrCat("\"", *mode, "\" must be \"native\" or \"classic\""));
  }
  const bool classic = *mode == "classic" || (mode->empty() && options.classic);

  std::vector<std::string> init_args = {
      absl::StrCat("--proxy-uid=", kProxyUid),
      absl::StrCat("--outbound-port=", kOutboundCapturePort),
      absl::StrCat("--inbound-port=", kInboundCapturePort),
      absl::StrCat("--admin-port=", kAdminPort),
  };
  struct ListAnnotation {
    const char* key;
    const char* flag;
    bool cidr;
  };
  for (const ListAnnotation& a :
       {ListAnnotation{kExcludeInboundPortsAnnotation, "--exclude-inbound-ports", false},
        ListAnnotation{kExcludeOutboundPortsAnnotation, "--exclude-outbound-ports", false},
        ListAnnotation{kExcludeOutboundCidrsAnnotation, "--exclude-outbound-cidrs", true}}) {
    absl::StatusOr<std::string> value = Annotation(pod, a.key);
    if (!value.ok()) return value.status();
    if (value->empty()) continue;
    const std::string what = absl::StrCat("metadata.annotations[\"", a.key, "\"]");
    std::string joined;
    if (a.cidr) {
      absl::StatusOr<std::vector<std::string>> cidrs = ParseCidrList(*value, what);
      if (!cidrs.ok()) return cidrs.status();
      joined = absl::StrJoin(*cidrs, ",");
    } else {
      absl::StatusOr<std::vector<int>> ports = ParsePortList(*value, what);
      if (!ports.ok()) return ports.status();
      joined = absl::StrJoin(*ports, ",");
    }
    if (!joined.empty()) init_args.push_back(absl::StrCat(a.flag, "=", joined));
  }
  absl::StatusOr<std::string> rewrite = Annotation(pod, kRewriteProbesAnnotation);
  if (!rewrite.ok()) return rewrite.status();
  const bool rewrite_probes = absl::AsciiStrToLower(*rewrite) != "false";

  Json& out_spec = result.object["spec"];

  // Probe rewrite of the app containers.
  std::vector<ProbeRewrite> rewrites;
  if (rewrite_probes) {
    for (size_t i = 0; i < out_spec["containers"].size(); ++i) {
      if (absl::Status s = RewriteProbes(out_spec["containers"][i],
                                         absl::StrCat("spec.containers[", i, "]"), &rewrites);
          !s.ok()) {
        return s;
      }
    }
  }
  Json probes = Json::object();
  for (const ProbeRewrite& r : rewrites) probes[r.path] = r.original;

  // trellis-init: installs the nat rules, then exits.
  Json init = {
      {"name", kInitContainerName},
      {"image", options.init_image},
      {"args", init_args},
      {"resources",
       {{"requests", {{"cpu", "10m"}, {"memory", "16Mi"}}}, {"limits", {{"memory", "64Mi"}}}}},
      {"securityContext",
       {{"runAsUser", 0},
        {"runAsNonRoot", false},
        {"allowPrivilegeEscalation", false},
        {"privileged", false},
        {"capabilities", {{"add", {"NET_ADMIN"}}, {"drop", {"ALL"}}}}}},
  };

  // trellis-proxy.
  Json env = Json::array({EnvFieldRef("POD_NAME", "metadata.name"),
                          EnvFieldRef("POD_NAMESPACE", "metadata.namespace"),
                          EnvFieldRef("SERVICE_ACCOUNT", "spec.serviceAccountName")});
  if (!rewrites.empty()) env.push_back(Json{{"name", "TRELLIS_APP_PROBES"}, {"value", probes.dump()}});
  Json proxy = {
      {"name", kProxyContainerName},
      {"image", options.proxy_image},
      {"args",
       {absl::StrCat("--control_plane_address=", options.control_plane_address),
        absl::StrCat("--control_plane_name=", options.control_plane_name),
        "--root_file=/etc/trellis/mesh/roots.crt",
        "--token_file=/var/run/secrets/trellis/tokens/token",
        absl::StrCat("--outbound_capture_port=", kOutboundCapturePort),
        absl::StrCat("--inbound_capture_port=", kInboundCapturePort),
        absl::StrCat("--admin_address=0.0.0.0:", kAdminPort)}},
      {"env", env},
      {"resources",
       {{"requests", {{"cpu", options.proxy_cpu_request}, {"memory", options.proxy_memory_request}}},
        {"limits", {{"memory", options.proxy_memory_limit}}}}},
      {"securityContext",
       {{"runAsUser", kProxyUid},
        {"runAsGroup", kProxyUid},
        {"runAsNonRoot", true},
        {"readOnlyRootFilesystem", true},
        {"allowPrivilegeEscalation", false},
        {"privileged", false},
        {"capabilities", {{"drop", {"ALL"}}}}}},
      {"volumeMounts",
       {{{"name", kTokenVolumeName}, {"mountPath", "/var/run/secrets/trellis/tokens"},
         {"readOnly", true}},
        {{"name", kMeshVolumeName}, {"mountPath", "/etc/trellis/mesh"}, {"readOnly", true}}}},
      {"readinessProbe", AdminProbe("/ready", 2, 3)},
  };
  if (!classic) {
    proxy["restartPolicy"] = "Always";
    // Kubelet starts the app containers only once this passes: the mesh is up before the app.
    proxy["startupProbe"] = AdminProbe("/ready", 1, 300);
  }

  Json init_containers = Json::array({init});
  if (!classic) init_containers.push_back(proxy);
  if (out_spec.contains("initContainers") && out_spec["initContainers"].is_array()) {
    for (const Json& c : out_spec["initContainers"]) init_containers.push_back(c);
  }
  out_spec["initContainers"] = init_containers;
  if (classic) {
    Json containers = Json::array({proxy});
    for (const Json& c : out_spec["containers"]) containers.push_back(c);
    out_spec["containers"] = containers;
  }

  Json token_source = Json::object();
  token_source["serviceAccountToken"] = Json{{"audience", options.token_audience},
                                             {"expirationSeconds", options.token_expiration_seconds},
                                             {"path", "token"}};
  Json token_volume = Json::object();
  token_volume["name"] = kTokenVolumeName;
  token_volume["projected"] = Json::object();
  token_volume["projected"]["sources"] = Json::array({token_source});
  Append(out_spec, "volumes", std::move(token_volume));
  Append(out_spec, "volumes",
         Json{{"name", kMeshVolumeName}, {"configMap", {{"name", options.mesh_configmap}}}});

  SetAnnotation(result.object, kInjectedAnnotation, classic ? "classic" : "native");
  if (!rewrites.empty()) SetAnnotation(result.object, kOriginalProbesAnnotation, probes.dump());
  result.outcome = Outcome::kInjected;
  return result;
}

namespace {

// Where the pod template of `kind` lives, as JSON object keys from the root; empty if none.
std::vector<std::string> TemplatePath(const std::string& kind) {
  if (kind == "Pod") return {};
  if (kind == "Deployment" || kind == "StatefulSet" || kind == "DaemonSet" ||
      kind == "ReplicaSet" || kind == "ReplicationController" || kind == "Job") {
    return {"spec", "template"};
  }
  if (kind == "CronJob") return {"spec", "jobTemplate", "spec", "template"};
  return {"-"};
}

}  // namespace

absl::StatusOr<InjectResult> InjectObject(const Json& object, const InjectOptions& options) {
  if (!object.is_object()) return Invalid("(document)", "must be a Kubernetes object (a mapping)");
  InjectResult result;
  result.object = object;
  if (!object.contains("kind") || !object["kind"].is_string()) {
    return Invalid("kind", "is required (a string)");
  }
  const std::string kind = object["kind"].get<std::string>();
  if (kind == "List" || (absl::EndsWith(kind, "List") && object.contains("items"))) {
    if (!object.contains("items") || object["items"].is_null()) return result;
    if (!object["items"].is_array()) return Invalid("items", "must be a list");
    for (size_t i = 0; i < object["items"].size(); ++i) {
      absl::StatusOr<InjectResult> item = InjectObject(object["items"][i], options);
      if (!item.ok()) {
        return absl::Status(item.status().code(),
                            absl::StrCat("items[", i, "].", item.status().message()));
      }
      result.object["items"][i] = item->object;
      if (item->outcome != Outcome::kNotAPod &&
          (result.outcome == Outcome::kNotAPod || item->outcome == Outcome::kInjected)) {
        result.outcome = item->outcome;
      }
      for (const std::string& w : item->warnings) {
        result.warnings.push_back(absl::StrCat("items[", i, "]: ", w));
      }
    }
    return result;
  }
  const std::vector<std::string> path = TemplatePath(kind);
  if (path.size() == 1 && path[0] == "-") return result;  // not a workload: unchanged
  std::string prefix;
  const Json* node = &object;
  for (const std::string& key : path) {
    prefix += key + ".";
    if (!node->contains(key) || !(*node)[key].is_object()) {
      return Invalid(prefix.substr(0, prefix.size() - 1), "is required (an object)");
    }
    node = &(*node)[key];
  }
  absl::StatusOr<InjectResult> injected = InjectPod(*node, options);
  if (!injected.ok()) {
    return absl::Status(injected.status().code(),
                        absl::StrCat(prefix, injected.status().message()));
  }
  Json* target = &result.object;
  for (const std::string& key : path) target = &(*target)[key];
  *target = std::move(injected->object);
  result.outcome = injected->outcome;
  result.warnings = std::move(injected->warnings);
  return result;
}

}  // namespace trellis::control_plane::inject
