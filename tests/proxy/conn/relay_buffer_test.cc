#include "proxy/conn/relay_buffer.h"

#include <cstring>
#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace trellis::proxy {
namespace {

TEST(RelayBufferTest, HoldsABlockOnlyWhileItHoldsBytes) {
  BufferPool pool(16, 4);
  RelayBuffer buffer(&pool);
  EXPECT_FALSE(buffer.allocated());
  EXPECT_EQ(buffer.capacity(), 16u);
  char* first = buffer.WritePtr();
  EXPECT_TRUE(buffer.allocated());
  EXPECT_EQ(pool.blocks_in_use(), 1u);
  EXPECT_EQ(buffer.WritableBytes(), 16u);
  std::memcpy(first, "0123456789", 10);
  buffer.Commit(10);
  EXPECT_EQ(buffer.size(), 10u);
  EXPECT_FALSE(buffer.Release()) << "never gives back a block with data in it";
  buffer.Consume(4);
  EXPECT_TRUE(buffer.allocated());
  EXPECT_EQ(std::string(buffer.ReadPtr(), buffer.size()), "456789");
  buffer.Consume(6);
  EXPECT_TRUE(buffer.empty());
  EXPECT_FALSE(buffer.allocated()) << "an emptied buffer returns its block at once";
  EXPECT_EQ(pool.blocks_in_use(), 0u);
  EXPECT_EQ(pool.free_blocks(), 1u);
  EXPECT_EQ(buffer.WritePtr(), first) << "the pooled block is reused, not reallocated";
  EXPECT_TRUE(buffer.Release()) << "a read that found nothing gives the block back";
  EXPECT_FALSE(buffer.allocated());
}

TEST(RelayBufferTest, CompactsWhenFreeSpaceIsAtTheFront) {
  BufferPool pool(8, 4);
  RelayBuffer buffer(&pool);
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

TEST(RelayBufferTest, BuffersShareThePoolsBlocks) {
  BufferPool pool(32, 1);
  RelayBuffer a(&pool);
  RelayBuffer b(&pool);
  char* block = a.WritePtr();
  a.Commit(1);
  b.WritePtr();
  b.Commit(1);
  EXPECT_EQ(pool.blocks_in_use(), 2u) << "two buffers with data hold two blocks";
  a.Consume(1);
  EXPECT_EQ(pool.free_blocks(), 1u);
  b.Consume(1);
  EXPECT_EQ(pool.free_blocks(), 1u) << "beyond max_free a returned block is freed";
  EXPECT_EQ(pool.blocks_in_use(), 0u);
  RelayBuffer c(&pool);
  EXPECT_EQ(c.WritePtr(), block) << "the most recently returned block is handed out first";
}

TEST(RelayBufferTest, DestroyingABufferWithDataReturnsItsBlock) {
  BufferPool pool(16, 4);
  {
    RelayBuffer buffer(&pool);
    buffer.WritePtr();
    buffer.Commit(3);
    RelayBuffer moved(std::move(buffer));
    EXPECT_FALSE(buffer.allocated());
    EXPECT_EQ(moved.size(), 3u);
    EXPECT_EQ(pool.blocks_in_use(), 1u);
  }
  EXPECT_EQ(pool.blocks_in_use(), 0u);
  EXPECT_EQ(pool.free_blocks(), 1u);
}

}  // namespace
}  // namespace trellis::proxy
