// A grow-only, 4 KB-aligned scratch buffer, kept by a thread across calls: allocating
// and first-touching megabytes per call would cost more than a short sequence's work.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace fusedrnn {
namespace cpu {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(ptr_); }

  // At least n bytes; the contents are not kept when it grows.
  void* get(size_t n) {
    if (n > bytes_) {
      std::free(ptr_);
      n = (n + 4095) / 4096 * 4096;
      ptr_ = std::aligned_alloc(4096, n);
      if (!ptr_) throw std::bad_alloc();
      bytes_ = n;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace cpu
}  // namespace fusedrnn
