// Parallel counting sort of (row, value) pairs into CSR buckets.
#pragma once

#include <cstdint>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tfllmer {

inline int worker_count() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// emit(task, tasks, visit) calls visit(row, value) for every pair of its share
// of the input. Two passes over the input: per-task row counts, then each task
// scatters into its own reserved range of every row, so the layout is the same
// whatever the scheduling (task t's values follow task t-1's within a row).
template <typename Value, typename Emit>
void bucket_by_row(int64_t rows, Emit&& emit, std::vector<int64_t>& offset, std::vector<Value>& values) {
  const int tasks = worker_count();
  std::vector<std::vector<int32_t>> slot(tasks, std::vector<int32_t>(rows, 0));
#pragma omp parallel for schedule(static, 1)
  for (int t = 0; t < tasks; ++t) {
    std::vector<int32_t>& count = slot[t];
    emit(t, tasks, [&count](int64_t row, const Value&) { ++count[row]; });
  }
  offset.assign(rows + 1, 0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    int32_t running = 0;
    for (int t = 0; t < tasks; ++t) {
      const int32_t here = slot[t][r];
      slot[t][r] = running;  // becomes task t's first position within row r
      running += here;
    }
    offset[r + 1] = running;
  }
  std::partial_sum(offset.begin(), offset.end(), offset.begin());
  values.resize(offset[rows]);
#pragma omp parallel for schedule(static, 1)
  for (int t = 0; t < tasks; ++t) {
    std::vector<int32_t>& cursor = slot[t];
    emit(t, tasks, [&](int64_t row, const Value& v) { values[offset[row] + cursor[row]++] = v; });
  }
}

// [begin, end) of task t's share of n items.
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int tasks) {
  return {n * t / tasks, n * (t + 1) / tasks};
}

}  // namespace tfllmer
