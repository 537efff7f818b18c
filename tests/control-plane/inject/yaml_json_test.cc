#include "control-plane/inject/yaml_json.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace trellis::control_plane::inject {
namespace {

TEST(YamlJson, ScalarsResolveLikeKubernetes) {
  const Json j = *YamlToJson(R"(
a: 1
b: "1"
c: true
d: 'false'
e: 0400
f: 0x10
g: 1.5
h: ~
i:
j: yes
k: 10m
l: "multi
  word"
)");
  EXPECT_EQ(j["a"], 1);
  EXPECT_EQ(j["b"], "1");
  EXPECT_EQ(j["c"], true);
  EXPECT_EQ(j["d"], "false");
  EXPECT_EQ(j["e"], 256);
  EXPECT_EQ(j["f"], 16);
  EXPECT_EQ(j["g"], 1.5);
  EXPECT_TRUE(j["h"].is_null());
  EXPECT_TRUE(j["i"].is_null());
  EXPECT_EQ(j["j"], "yes");
  EXPECT_EQ(j["k"], "10m");
}

TEST(YamlJson, RoundTripKeepsTypesAndOrder) {
  const Json in = Json::parse(R"({"z": "yes", "a": ["1", 1, true, "true", null, "null", "",
      "0400", "1e3", "a: b", "- x", "#c", "multi\nline", {}, [], "ünï"], "m": {"k": 1.25}})");
  const std::string yaml = JsonToYaml(in);
  absl::StatusOr<Json> back = YamlToJson(yaml);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << yaml;
  EXPECT_EQ(*back, in) << yaml;
  EXPECT_EQ(yaml.substr(0, 2), "z:");
}

TEST(YamlJson, SplitsDocumentsAndReportsLines) {
  const std::vector<YamlDocument> docs = SplitYamlDocuments("a: 1\n---\nb: 2\n--- # c\nc: [\n");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[1].first_line, 3);
  EXPECT_EQ(docs[2].first_line, 5);
  absl::StatusOr<Json> bad = YamlToJson(docs[2].text, docs[2].first_line);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), ::testing::HasSubstr("line "));
}

}  // namespace
}  // namespace trellis::control_plane::inject
