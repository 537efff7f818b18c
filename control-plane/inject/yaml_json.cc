#include "control-plane/inject/yaml_json.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <regex>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace trellis::control_plane::inject {
namespace {

bool IsSeparator(absl::string_view line) {
  if (!absl::StartsWith(line, "---")) return false;
  absl::string_view rest = line.substr(3);
  return rest.empty() || rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\r';
}

// Plain scalar -> JSON per the rules in the header.
Json ResolvePlain(const std::string& s) {
  static const std::regex kInt(R"([-+]?(0|[1-9][0-9]*))");
  static const std::regex kOctal(R"([-+]?0o?[0-7]+)");
  static const std::regex kHex(R"([-+]?0x[0-9a-fA-F]+)");
  static const std::regex kFloat(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  auto as_int = [&](const std::string& digits, int base) -> Json {
    errno = 0;
    const long long v = std::strtoll(digits.c_str(), nullptr, base);
    if (errno == ERANGE) return s;
    return v;
  };
  if (std::regex_match(s, kInt)) return as_int(s, 10);
  if (std::regex_match(s, kHex)) return as_int(s, 16);
  if (std::regex_match(s, kOctal)) {
    std::string digits = s;
    const size_t o = digits.find('o');
    if (o != std::string::npos) digits.erase(o, 1);
    return as_int(digits, 8);
  }
  if (std::regex_match(s, kFloat)) {
    const double d = std::strtod(s.c_str(), nullptr);
    if (std::isfinite(d)) return d;
  }
  return s;
}

absl::StatusOr<Json> Convert(const YAML::Node& node, int first_line) {
  switch (node.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null:
      return Json(nullptr);
    case YAML::NodeType::Scalar: {
      const std::string& tag = node.Tag();
      if (tag == "!" || tag == "tag:yaml.org,2002:str") return Json(node.Scalar());
      return ResolvePlain(node.Scalar());
    }
    case YAML::NodeType::Sequence: {
      Json out = Json::array();
      for (const YAML::Node& item : node) {
        absl::StatusOr<Json> v = Convert(item, first_line);
        if (!v.ok()) return v.status();
        out.push_back(*std::move(v));
      }
      return out;
    }
    case YAML::NodeType::Map: {
      Json out = Json::object();
      for (const auto& kv : node) {
        if (!kv.first.IsScalar()) {
          return absl::InvalidArgumentError(
              absl::StrCat("line ", kv.first.Mark().line + first_line,
                           ": a mapping key must be a scalar"));
        }
        absl::StatusOr<Json> v = Convert(kv.second, first_line);
        if (!v.ok()) return v.status();
        out[kv.first.Scalar()] = *std::move(v);
      }
      return out;
    }
  }
  return Json(nullptr);
}

// Would a YAML 1.1 or 1.2 reader take this plain scalar for something other than a string?
bool NeedsQuotes(const std::string& s) {
  if (s.empty() || s.find('\n') != std::string::npos) return true;
  if (!ResolvePlain(s).is_string()) return true;
  static const char* const kYaml11[] = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
                                        "on", "On", "ON", "off", "Off", "OFF", ".inf", ".Inf",
                                        "-.inf", ".nan", ".NaN", "<<", "="};
  for (const char* word : kYaml11) {
    if (s == word) return true;
  }
  // Numbers in forms this reader keeps as strings but others may not (1_000, 1e5 variants).
  const char c = s[0];
  if ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.') {
    bool numeric_like = true;
    for (char ch : s) {
      if (!(absl::ascii_isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' ||
            ch == '+' || ch == '-' || ch == ':')) {
        numeric_like = false;
      }
    }
    if (numeric_like) return true;
  }
  return false;
}

void Emit(YAML::Emitter& out, const Json& value) {
  switch (value.type()) {
    case Json::value_t::object:
      if (value.empty()) {
        out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
        return;
      }
      out << YAML::BeginMap;
      for (auto it = value.begin(); it != value.end(); ++it) {
        out << YAML::Key;
        if (NeedsQuotes(it.key())) {
          out << YAML::DoubleQuoted << it.key();
        } else {
          out << it.key();
        }
        out << YAML::Value;
        Emit(out, it.value());
      }
      out << YAML::EndMap;
      return;
    case Json::value_t::array:
      if (value.empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        return;
      }
      out << YAML::BeginSeq;
      for (const Json& item : value) Emit(out, item);
      out << YAML::EndSeq;
      return;
    case Json::value_t::string: {
      const std::string& s = value.get_ref<const std::string&>();
      if (NeedsQuotes(s)) {
        out << YAML::DoubleQuoted << s;
      } else {
        out << s;
      }
      return;
    }
    case Json::value_t::null:
      out << YAML::Null;
      return;
    default:  // booleans and numbers: JSON's spelling is also YAML's
      out << value.dump();
      return;
  }
}

}  // namespace

std::vector<YamlDocument> SplitYamlDocuments(const std::string& stream) {
  std::vector<YamlDocument> docs;
  YamlDocument current;
  int line_no = 0;
  absl::string_view body = stream;
  if (!body.empty() && body.back() == '\n') body.remove_suffix(1);  // no phantom last line
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    ++line_no;
    if (IsSeparator(line)) {
      docs.push_back(std::move(current));
      current = YamlDocument();
      current.first_line = line_no + 1;
      // "--- {a: 1}": content after the marker belongs to the next document.
      absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(3));
      if (!rest.empty() && rest[0] != '#') {
        current.text = absl::StrCat(std::string(line.size() - rest.size(), ' '), rest, "\n");
        current.first_line = line_no;
      }
      continue;
    }
    absl::StrAppend(&current.text, line, "\n");
  }
  docs.push_back(std::move(current));
  // A leading "---" leaves an empty first document; drop empties at the edges only when blank.
  return docs;
}

absl::StatusOr<Json> YamlToJson(const std::string& text, int first_line) {
  try {
    YAML::Node node = YAML::Load(text);
    return Convert(node, first_line);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid YAML at line ", e.mark.line + first_line,
                                                   ", column ", e.mark.column + 1, ": ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("invalid YAML: ", e.what()));
  }
}

std::string JsonToYaml(const Json& value) {
  YAML::Emitter out;
  out.SetOutputCharset(YAML::EmitNonAscii);
  out.SetIndent(2);
  out.SetSeqFormat(YAML::Block);
  out.SetMapFormat(YAML::Block);
  Emit(out, value);
  std::string s = out.c_str();
  if (s.empty() || s.back() != '\n') s += "\n";
  return s;
}

}  // namespace trellis::control_plane::inject
