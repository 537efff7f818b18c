#pragma once

// One-line JSON logs for operators: every line is a JSON object with "ts" (RFC 3339, UTC),
// "level", "component", "msg" and the event's own fields, e.g.
//   {"ts":"2026-11-23T23:40:01.123Z","level":"warn","component":"control-plane",
//    "msg":"issuance refused","reason":"wrong_audience","peer":"10.0.0.7:51234",...}
// Lines are written with one write(2) each, so concurrent threads never interleave them.
// Never pass a private key, a token or a CSR's bytes as a field.

#include <nlohmann/json.hpp>

#include "absl/strings/string_view.h"

namespace trellis::log {

enum class Level { kDebug, kInfo, kWarning, kError };

// Process-wide settings; call once at start-up, before other threads log.
void SetComponent(absl::string_view component);
void SetMinLevel(Level level);
// Parses "debug", "info", "warn" or "error".
bool ParseLevel(absl::string_view text, Level* level);
// Writes to `fd` instead of stderr (tests).
void SetOutputFd(int fd);

// True if a line at `level` would be written: lets a hot path skip building fields nobody reads.
bool Enabled(Level level);

// Logs `msg` with `fields` (a JSON object; other JSON values are ignored) at `level`.
void Log(Level level, absl::string_view msg, const nlohmann::json& fields = nlohmann::json::object());

inline void Info(absl::string_view msg, const nlohmann::json& f = nlohmann::json::object()) {
  Log(Level::kInfo, msg, f);
}
inline void Warn(absl::string_view msg, const nlohmann::json& f = nlohmann::json::object()) {
  Log(Level::kWarning, msg, f);
}
inline void Error(absl::string_view msg, const nlohmann::json& f = nlohmann::json::object()) {
  Log(Level::kError, msg, f);
}
inline void Debug(absl::string_view msg, const nlohmann::json& f = nlohmann::json::object()) {
  Log(Level::kDebug, msg, f);
}

}  // namespace trellis::log
