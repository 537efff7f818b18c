#include "common/process/grpc_logs.h"

#include <grpc/support/log.h>

#include "common/log/json_log.h"

namespace trellis::process {
namespace {

void GrpcLog(gpr_log_func_args* args) {
  const log::Level level = args->severity == GPR_LOG_SEVERITY_ERROR  ? log::Level::kError
                           : args->severity == GPR_LOG_SEVERITY_INFO ? log::Level::kInfo
                                                                     : log::Level::kDebug;
  log::Log(level, args->message != nullptr ? args->message : "",
           {{"source", "grpc"},
            {"file", args->file != nullptr ? args->file : ""},
            {"line", args->line}});
}

}  // namespace

void RouteGrpcLogsToJson() { gpr_set_log_function(GrpcLog); }

}  // namespace trellis::process
