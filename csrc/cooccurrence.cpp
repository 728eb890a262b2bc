#include "cooccurrence.h"

#include <algorithm>
#include <numeric>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace tfllmer {
namespace {

struct Edge {
  int32_t col;
  int64_t weight;
};

// Heavier first; equal weights keep the smaller id, so every backend keeps the
// same neighbours.
inline bool heavier(const Edge& a, const Edge& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.col < b.col);
}

// Scatter (row, col) pairs into per-row buckets: offsets from a counting pass.
struct Buckets {
  std::vector<int64_t> offset;
  std::vector<int32_t> cols;
};

template <typename Item, typename Visit>
void for_each_pair(const int64_t* indptr, int64_t num_sequences, const Item* items, int64_t window,
                   Visit&& visit) {
  for (int64_t s = 0; s < num_sequences; ++s) {
    const int64_t end = indptr[s + 1];
    for (int64_t p = indptr[s]; p < end; ++p) {
      const int64_t stop = std::min(end, p + window + 1);
      for (int64_t q = p + 1; q < stop; ++q) {
        if (items[p] != items[q]) visit(static_cast<int32_t>(items[p]), static_cast<int32_t>(items[q]));
      }
    }
  }
}

}  // namespace

template <typename Item>
CsrGraph build_cooccurrence(const int64_t* indptr, int64_t num_sequences, const Item* items,
                            int64_t num_items, int64_t window, int64_t top_k) {
  const int64_t size = num_items + 1;

  // 1. Every co-occurrence, in both directions, bucketed by row.
  Buckets raw;
  raw.offset.assign(size + 1, 0);
  for_each_pair(indptr, num_sequences, items, window, [&](int32_t a, int32_t b) {
    ++raw.offset[a + 1];
    ++raw.offset[b + 1];
  });
  std::partial_sum(raw.offset.begin(), raw.offset.end(), raw.offset.begin());
  raw.cols.resize(raw.offset[size]);
  {
    std::vector<int64_t> cursor(raw.offset.begin(), raw.offset.end() - 1);
    for_each_pair(indptr, num_sequences, items, window, [&](int32_t a, int32_t b) {
      raw.cols[cursor[a]++] = b;
      raw.cols[cursor[b]++] = a;
    });
  }

  // 2. Per row: count duplicates, keep the top_k heaviest.
  std::vector<std::vector<Edge>> kept(size);
#pragma omp parallel for schedule(dynamic, 256)
  for (int64_t r = 0; r < size; ++r) {
    auto first = raw.cols.begin() + raw.offset[r];
    auto last = raw.cols.begin() + raw.offset[r + 1];
    if (first == last) continue;
    std::sort(first, last);
    std::vector<Edge>& row = kept[r];
    for (auto it = first; it != last;) {
      auto run_end = std::upper_bound(it, last, *it);
      row.push_back({*it, static_cast<int64_t>(run_end - it)});
      it = run_end;
    }
    if (top_k >= 0 && static_cast<int64_t>(row.size()) > top_k) {
      std::partial_sort(row.begin(), row.begin() + top_k, row.end(), heavier);
      row.resize(top_k);
    }
  }
  std::vector<int32_t>().swap(raw.cols);

  // 3. max(A, A^T): each kept edge goes to both of its rows; duplicates keep the max.
  std::vector<std::vector<Edge>> sym(size);
  if (top_k >= 0) {
    std::vector<int64_t> extra(size, 0);
    for (int64_t r = 0; r < size; ++r)
      for (const Edge& e : kept[r]) ++extra[e.col];
    for (int64_t r = 0; r < size; ++r) sym[r].reserve(kept[r].size() + extra[r]);
    for (int64_t r = 0; r < size; ++r) {
      for (const Edge& e : kept[r]) {
        sym[r].push_back(e);
        sym[e.col].push_back({static_cast<int32_t>(r), e.weight});
      }
    }
    kept.clear();
#pragma omp parallel for schedule(dynamic, 256)
    for (int64_t r = 0; r < size; ++r) {
      std::vector<Edge>& row = sym[r];
      std::sort(row.begin(), row.end(), [](const Edge& a, const Edge& b) {
        return a.col < b.col || (a.col == b.col && a.weight > b.weight);
      });
      row.erase(std::unique(row.begin(), row.end(), [](const Edge& a, const Edge& b) { return a.col == b.col; }),
                row.end());
    }
  } else {
    sym.swap(kept);
#pragma omp parallel for schedule(dynamic, 256)
    for (int64_t r = 0; r < size; ++r)
      std::sort(sym[r].begin(), sym[r].end(), [](const Edge& a, const Edge& b) { return a.col < b.col; });
  }

  // 4. Compact to CSR.
  CsrGraph out;
  out.indptr.assign(size + 1, 0);
  for (int64_t r = 0; r < size; ++r) out.indptr[r + 1] = out.indptr[r] + static_cast<int64_t>(sym[r].size());
  out.indices.resize(out.indptr[size]);
  out.data.resize(out.indptr[size]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < size; ++r) {
    int64_t at = out.indptr[r];
    for (const Edge& e : sym[r]) {
      out.indices[at] = e.col;
      out.data[at] = static_cast<float>(e.weight);
      ++at;
    }
  }
  return out;
}

template CsrGraph build_cooccurrence<int32_t>(const int64_t*, int64_t, const int32_t*, int64_t, int64_t, int64_t);
template CsrGraph build_cooccurrence<int64_t>(const int64_t*, int64_t, const int64_t*, int64_t, int64_t, int64_t);

}  // namespace tfllmer
