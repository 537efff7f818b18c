// A main() for fuzz targets built without libFuzzer (g++, --config=asan): it runs
// LLVMFuzzerTestOneInput once over every file named on the command line or found (recursively)
// in a directory named there, so that any fuzz target doubles as a corpus regression test.
//
//   bazel run //tests/fuzz:spiffe_id_fuzz -- tests/fuzz/corpus/spiffe_id crash-1234
//
// Relative paths are resolved against the directory `bazel run` was started from, then against
// the current directory (the runfiles tree, in `bazel test`). Arguments starting with '-' are
// libFuzzer flags and are ignored. Exits non-zero if a path is missing or unreadable, or if no
// input was found at all, so that a misspelt corpus path cannot pass silently. A failing input
// aborts inside the target; the driver prints each file name before running it so the log names
// the culprit.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

namespace fs = std::filesystem;

fs::path Resolve(const fs::path& path) {
  const char* working_dir = std::getenv("BUILD_WORKING_DIRECTORY");
  if (path.is_relative() && working_dir != nullptr) {
    fs::path candidate = fs::path(working_dir) / path;
    std::error_code ec;
    if (fs::exists(candidate, ec)) {
      return candidate;
    }
  }
  return path;
}

// Appends the regular files at `path` (the file itself, or every file below a directory) in a
// stable order. Returns false if `path` does not exist.
bool CollectFiles(const fs::path& path, std::vector<fs::path>* files) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    files->push_back(path);
    return true;
  }
  if (!fs::is_directory(path, ec)) {
    return false;
  }
  std::vector<fs::path> found;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      found.push_back(it->path());
    }
  }
  if (ec) {
    return false;
  }
  std::sort(found.begin(), found.end());
  files->insert(files->end(), found.begin(), found.end());
  return true;
}

// Runs one input from an exactly sized heap buffer, so AddressSanitizer catches reads past it.
bool RunFile(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    return false;
  }
  std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) {
    return false;
  }
  std::unique_ptr<uint8_t[]> data(new uint8_t[std::max<size_t>(contents.size(), 1)]);
  std::copy(contents.begin(), contents.end(), data.get());
  std::fprintf(stderr, "Running %s (%zu bytes)\n", file.c_str(), contents.size());
  LLVMFuzzerTestOneInput(data.get(), contents.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) {
    LLVMFuzzerInitialize(&argc, &argv);
  }
  std::vector<fs::path> files;
  int errors = 0;
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] == '-') {
      std::fprintf(stderr, "Ignoring libFuzzer flag %s\n", argv[i]);
      continue;
    }
    if (!CollectFiles(Resolve(argv[i]), &files)) {
      std::fprintf(stderr, "ERROR: cannot read %s\n", argv[i]);
      ++errors;
    }
  }
  for (const fs::path& file : files) {
    if (!RunFile(file)) {
      std::fprintf(stderr, "ERROR: cannot read %s\n", file.c_str());
      ++errors;
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "ERROR: no inputs; usage: %s FILE_OR_DIR...\n", argv[0]);
    return 1;
  }
  std::fprintf(stderr, "Ran %zu inputs, %d errors\n", files.size(), errors);
  return errors == 0 ? 0 : 1;
}
