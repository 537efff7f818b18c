#include "proxy/conn/relay_buffer.h"

#include <cstring>

#include "gtest/gtest.h"

namespace trellis::proxy {
namespace {

TEST(RelayBufferTest, AllocatesOnceReusesAndReleasesWhenEmpty) {
  RelayBuffer buffer(16);
  EXPECT_FALSE(buffer.allocated());
  char* first = buffer.WritePtr();
  EXPECT_TRUE(buffer.allocated());
  EXPECT_EQ(buffer.WritableBytes(), 16u);
  std::memcpy(first, "0123456789", 10);
  buffer.Commit(10);
  EXPECT_EQ(buffer.size(), 10u);
  EXPECT_FALSE(buffer.Release()) << "never frees data";
  buffer.Consume(10);
  EXPECT_TRUE(buffer.empty());
  EXPECT_EQ(buffer.WritePtr(), first) << "the same block is reused";
  EXPECT_TRUE(buffer.Release());
  EXPECT_FALSE(buffer.allocated());
}

TEST(RelayBufferTest, CompactsWhenFreeSpaceIsAtTheFront) {
  RelayBuffer buffer(8);
  std::memcpy(buffer.WritePtr(), "abcdefgh", 8);
  buffer.Commit(8);
  EXPECT_TRUE(buffer.full());
  buffer.Consume(5);
  char* at = buffer.WritePtr();
  EXPECT_EQ(buffer.WritableBytes(), 5u);
  std::memcpy(at, "12345", 5);
  buffer.Commit(5);
  EXPECT_EQ(std::string(buffer.ReadPtr(), buffer.size()), "fgh12345");
}

}  // namespace
}  // namespace trellis::proxy
