// Runs the injection webhook handler on an AdmissionReview read from stdin and prints its answer
// (the body) to stdout; exit status 0 for HTTP 200, 1 otherwise. For the offline k8s tests.
//   admission_review_tool [--failure-policy=Ignore] < review.json
#include <iostream>
#include <iterator>
#include <string>

#include "control-plane/inject/webhook.h"

int main(int argc, char** argv) {
  trellis::control_plane::inject::WebhookOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--failure-policy=Ignore") {
      options.failure_policy = trellis::control_plane::inject::FailurePolicy::kIgnore;
    } else if (arg == "--classic") {
      options.inject.classic = true;
    } else {
      std::cerr << "usage: admission_review_tool [--failure-policy=Ignore] [--classic] < review.json\n";
      return 2;
    }
  }
  const std::string body((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  const auto response = trellis::control_plane::inject::HandleAdmissionReview(body, options);
  std::cout << response.body;
  return response.http_status == 200 ? 0 : 1;
}
