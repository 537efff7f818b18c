#include "proxy/conn/relay_buffer.h"

#include <cstring>
#include <utility>

namespace trellis::proxy {

BufferPool::BufferPool(size_t block_size, size_t max_free, std::atomic<int64_t>* allocated_bytes)
    : block_size_(block_size), max_free_(max_free), allocated_bytes_(allocated_bytes) {
  free_.reserve(max_free);
}

BufferPool::~BufferPool() { Count(-static_cast<int64_t>(free_.size())); }

void BufferPool::Count(int64_t blocks) {
  if (allocated_bytes_ != nullptr) {
    allocated_bytes_->fetch_add(blocks * static_cast<int64_t>(block_size_),
                                std::memory_order_relaxed);
  }
}

std::unique_ptr<char[]> BufferPool::Acquire() {
  ++in_use_;
  if (free_.empty()) {
    Count(1);
    return std::make_unique<char[]>(block_size_);
  }
  std::unique_ptr<char[]> block = std::move(free_.back());
  free_.pop_back();
  return block;
}

void BufferPool::Give(std::unique_ptr<char[]> block) {
  if (block == nullptr) return;
  --in_use_;
  if (free_.size() < max_free_) {
    free_.push_back(std::move(block));
  } else {
    Count(-1);  // `block` is freed on return
  }
}

RelayBuffer::RelayBuffer(RelayBuffer&& other) noexcept
    : pool_(other.pool_),
      data_(std::move(other.data_)),
      begin_(std::exchange(other.begin_, 0)),
      end_(std::exchange(other.end_, 0)) {}

RelayBuffer::~RelayBuffer() { pool_->Give(std::move(data_)); }

char* RelayBuffer::WritePtr() {
  if (data_ == nullptr) {
    data_ = pool_->Acquire();
    begin_ = end_ = 0;
  } else if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (end_ == capacity() && begin_ > 0) {
    std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  return data_.get() + end_;
}

void RelayBuffer::Consume(size_t n) {
  begin_ += n;
  if (begin_ == end_) Release();
}

bool RelayBuffer::Release() {
  if (!empty() || data_ == nullptr) return false;
  pool_->Give(std::move(data_));
  begin_ = end_ = 0;
  return true;
}

}  // namespace trellis::proxy
