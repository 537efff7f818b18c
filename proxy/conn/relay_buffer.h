#pragma once

#include <cstddef>
#include <memory>

namespace trellis::proxy {

// A fixed-capacity byte buffer for one relay direction. Memory is allocated on first use and
// then reused for every read; it is never grown. Release() frees it while the buffer is empty
// (an idle connection), and the next read allocates it again.
//
// Data lives in [begin, end) of the block; reads append at `end`, writes consume from `begin`.
// When the data is consumed entirely both offsets return to 0, so the common read-then-write
// cycle never moves bytes; Compact() moves the tail down only when the free space is at the end.
class RelayBuffer {
 public:
  explicit RelayBuffer(size_t capacity) : capacity_(capacity) {}

  size_t capacity() const { return capacity_; }
  size_t size() const { return end_ - begin_; }
  bool empty() const { return begin_ == end_; }
  bool full() const { return size() == capacity_; }
  bool allocated() const { return data_ != nullptr; }

  // Contiguous free space to read into; allocates on first use and compacts when needed.
  // Call only when !full(); WritableBytes() is valid right after it.
  char* WritePtr();
  size_t WritableBytes() const { return capacity_ - end_; }
  // Marks `n` bytes after WritePtr() as filled.
  void Commit(size_t n) { end_ += n; }

  const char* ReadPtr() const { return data_.get() + begin_; }
  // Drops `n` bytes from the front.
  void Consume(size_t n);

  // Frees the memory if the buffer is empty; returns whether it did.
  bool Release();

 private:
  const size_t capacity_;
  std::unique_ptr<char[]> data_;
  size_t begin_ = 0;
  size_t end_ = 0;
};

}  // namespace trellis::proxy
