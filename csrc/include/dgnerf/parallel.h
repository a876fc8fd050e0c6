// CPU work sharing that survives a busy machine (docs/performance.md).
//
// at::parallel_for cuts [begin, end) into one fixed share per thread. When another process takes a core,
// the thread it descheduled still owns its whole share and every other thread waits for it at the end of
// the region. parallel_dynamic hands the range out in small chunks from a shared counter instead: a
// thread that runs takes the next chunk, a descheduled one holds up at most the chunk it is on.
//
// Use it only where the result of an item does not depend on which thread computes it or in which order
// (per-ray, per-point or per-tile outputs; per-task table rows): then it is as deterministic as the
// static split. Sums over items need fixed groups (see parallel_groups).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace dgnerf {

// Chunks per thread: enough that a late thread's last chunk is a small part of the work, few enough
// that the shared counter costs nothing next to a chunk.
constexpr int64_t kChunksPerThread = 8;

// fn(b, e) over chunks of [begin, end) of at least `grain` items, taken dynamically by ATen's threads.
template <typename F>
void parallel_dynamic(int64_t begin, int64_t end, int64_t grain, const F& fn) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t workers = std::min<int64_t>(threads, (n + grain - 1) / grain);
  if (workers <= 1) {
    fn(begin, end);
    return;
  }
  const int64_t chunk = std::max<int64_t>(grain, (n + workers * kChunksPerThread - 1) / (workers * kChunksPerThread));
  std::atomic<int64_t> next{begin};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(chunk, std::memory_order_relaxed); b < end;
         b = next.fetch_add(chunk, std::memory_order_relaxed)) {
      fn(b, std::min(b + chunk, end));
    }
  });
}

// For sums over items: [0, n) cut into `groups` fixed, contiguous groups (independent of the thread
// count), each taken whole by one thread: fn(group, b, e). A caller that accumulates per group and adds
// the groups in order gets the same bits whatever the thread count and scheduling.
template <typename F>
void parallel_groups(int64_t n, int64_t groups, const F& fn) {
  if (n <= 0) return;
  groups = std::max<int64_t>(1, std::min(groups, n));
  parallel_dynamic(0, groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) fn(g, n * g / groups, n * (g + 1) / groups);
  });
}

}  // namespace dgnerf
