#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace trellis::proxy {

// Fixed-size blocks for the relay buffers of one worker: one thread, so no lock. A relay buffer
// holds a block only while it holds bytes, which in the common case (everything read is written
// at once) is for the duration of one pump; the block then returns here and serves the next
// connection, warm in cache. Steady-state memory is therefore proportional to the connections
// that have bytes in flight, not to the connections open (an idle keepalive pool costs no relay
// memory), and no block is allocated per read once the pool has warmed up.
class BufferPool {
 public:
  // `max_free`: empty blocks kept for reuse; a block given back beyond that is freed.
  // `allocated_bytes`, if given, tracks the bytes of all blocks that exist (a metric); it is
  // written only when a block is allocated or freed, never on reuse.
  BufferPool(size_t block_size, size_t max_free, std::atomic<int64_t>* allocated_bytes = nullptr);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  size_t block_size() const { return block_size_; }
  // A block of block_size() bytes: a free one if any, else a new one.
  std::unique_ptr<char[]> Acquire();
  void Give(std::unique_ptr<char[]> block);

  size_t free_blocks() const { return free_.size(); }
  // Blocks handed out and not given back.
  size_t blocks_in_use() const { return in_use_; }

 private:
  void Count(int64_t blocks);

  const size_t block_size_;
  const size_t max_free_;
  std::atomic<int64_t>* const allocated_bytes_;
  size_t in_use_ = 0;
  std::vector<std::unique_ptr<char[]>> free_;
};

// A bounded byte buffer for one relay direction, backed by a BufferPool block while it holds
// bytes. It never grows: its capacity is the pool's block size.
//
// Data lives in [begin, end) of the block; reads append at `end`, writes consume from `begin`.
// When the data is consumed entirely the block goes back to the pool, so the common
// read-then-write cycle never moves bytes; Compact() moves the tail down only when the free space
// is at the end.
class RelayBuffer {
 public:
  // `pool` must outlive the buffer.
  explicit RelayBuffer(BufferPool* pool) : pool_(pool) {}
  RelayBuffer(RelayBuffer&& other) noexcept;
  RelayBuffer& operator=(RelayBuffer&&) = delete;
  ~RelayBuffer();

  size_t capacity() const { return pool_->block_size(); }
  size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  bool full() const { return size() == capacity(); }
  bool allocated() const { return data_ != nullptr; }

  // Contiguous free space to read into; takes a block on first use and compacts when needed.
  // Call only when !full(); WritableBytes() is valid right after it.
  char* WritePtr();
  size_t WritableBytes() const { return capacity() - end_; }
  // Marks `n` bytes after WritePtr() as filled.
  void Commit(size_t n) { end_ += n; }

  const char* ReadPtr() const { return data_.get() + begin_; }
  // Drops `n` bytes from the front; an emptied buffer gives its block back.
  void Consume(size_t n);

  // Gives the block back if the buffer is empty (e.g. a read into it found nothing); returns
  // whether it did.
  bool Release();

 private:
  BufferPool* const pool_;
  std::unique_ptr<char[]> data_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace trellis::proxy
