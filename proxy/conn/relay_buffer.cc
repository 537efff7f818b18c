#include "proxy/conn/relay_buffer.h"

#include <cstring>

namespace trellis::proxy {

char* RelayBuffer::WritePtr() {
  if (data_ == nullptr) data_.reset(new char[capacity_]);
  if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (end_ == capacity_ && begin_ > 0) {
    std::memmove(data_.get(), data_.get() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  return data_.get() + end_;
}

void RelayBuffer::Consume(size_t n) {
  begin_ += n;
  if (begin_ == end_) begin_ = end_ = 0;
}

bool RelayBuffer::Release() {
  if (!empty() || data_ == nullptr) return false;
  data_.reset();
  begin_ = end_ = 0;
  return true;
}

}  // namespace trellis::proxy
