// Scratch memory of the kernels. AlignedBuffer: a grow-only, aligned buffer, 4 KB-aligned
// when kept by a thread across calls (allocating and first-touching megabytes per call
// would cost more than a short sequence's work). Workspace: one call's scratch, from a
// thread's kept buffer up to kKeptBytes, beyond from a cache-line aligned buffer of its own,
// freed with it (so a thread holds no more than kKeptBytes per kind between calls).
//
// Why cache-line aligned for one call: in a training step, glibc gave the backward's
// per-call dP workspace (6.5 MB at B64-H256), asked for with 4 KB alignment, fresh pages on
// every call: ~1300 page faults per call, each page zeroed by the kernel (perf stat, C++
// driver). Asked for with 64-byte alignment, as torch asks for its tensors, the freed block
// came back from the heap: no faults after the first call. (A bare alloc/free loop reuses
// the block at either alignment: what differs in the real step is the heap around the
// request, not analysed further. docs/cpu_kernels.md, session 18.)
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

namespace fusedrnn {
namespace cpu {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t align) : align_(align) {}
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(ptr_); }

  // At least n bytes; the contents are not kept when it grows. When the larger block cannot
  // be had, throws std::bad_alloc and holds nothing: the next request allocates again (it
  // kept its old size with the old block freed, and a smaller request then got nullptr).
  void* get(size_t n) {
    if (n > bytes_) {
      std::free(ptr_);
      ptr_ = nullptr;
      bytes_ = 0;
      n = (n + align_ - 1) / align_ * align_;  // aligned_alloc wants a multiple
      void* p = std::aligned_alloc(align_, n);
      if (!p) throw std::bad_alloc();
      ptr_ = p;
      bytes_ = n;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  size_t align_ = 4096;
};

// Workspaces up to this size stay with the calling thread between calls (a small layer's
// backward would otherwise spend as long allocating its dP as computing it).
constexpr size_t kKeptBytes = size_t(1) << 20;

// One call's scratch: `kept` (a thread_local of the caller's, one per kind of workspace)
// up to kKeptBytes, else a buffer of this object's own.
class Workspace {
 public:
  explicit Workspace(AlignedBuffer& kept) : kept_(kept) {}
  void* get(size_t n) { return n <= kKeptBytes ? kept_.get(n) : own_.get(n); }

 private:
  AlignedBuffer& kept_;
  AlignedBuffer own_{64};
};

}  // namespace cpu
}  // namespace fusedrnn
