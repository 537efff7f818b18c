// YAML <-> JSON for `trellisctl inject`, on yaml-cpp (Debian libyaml-cpp-dev).
//
// Scalars are resolved like Kubernetes' own reader (sigs.k8s.io/yaml) for everything a manifest
// uses: quoted -> string; plain null/~/empty -> null, true/false -> bool, decimal, 0x hex and
// 0-prefixed octal (defaultMode: 0400) integers, floats -> numbers; everything else -> string.
// The writer double-quotes every string that a YAML 1.1 or 1.2 reader could take for something
// else (yes/no/on/off, numbers, null, ...), so what it writes reads back as the same JSON.

#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "control-plane/inject/inject.h"

namespace trellis::control_plane::inject {

struct YamlDocument {
  std::string text;    // the document's lines, without the "---" separator
  int first_line = 1;  // 1-based line of its first line in the whole stream
};

// Splits a multi-document stream on "---" separator lines (as kubectl does).
std::vector<YamlDocument> SplitYamlDocuments(const std::string& stream);

// Parses one document. InvalidArgument "line L, column C: ..." (lines of the whole stream when
// `first_line` is given) for bad YAML. An empty document is null.
absl::StatusOr<Json> YamlToJson(const std::string& text, int first_line = 1);

// Block-style YAML for a JSON value, ending in a newline.
std::string JsonToYaml(const Json& value);

}  // namespace trellis::control_plane::inject
