#include "cooccurrence.h"

#include "bucket.h"

#include <algorithm>
#include <numeric>

namespace tfllmer {
namespace {

struct Edge {
  int32_t col;
  int32_t weight;
};

// Heavier first; equal weights keep the smaller id, so every backend keeps the
// same neighbours.
inline bool heavier(const Edge& a, const Edge& b) {
  return a.weight > b.weight || (a.weight == b.weight && a.col < b.col);
}

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

// Exclusive prefix sum of counts[0..n) into offsets[0..n].
std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

// Row r's first counts[r] edges, stored from in_offset[r], as CSR.
CsrGraph compact(const std::vector<Edge>& edges, const std::vector<int64_t>& in_offset,
                 const std::vector<int64_t>& counts) {
  const int64_t rows = static_cast<int64_t>(counts.size());
  CsrGraph out;
  out.indptr = offsets_of(counts);
  out.indices.resize(out.indptr[rows]);
  out.data.resize(out.indptr[rows]);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const Edge* in = edges.data() + in_offset[r];
    for (int64_t i = 0; i < counts[r]; ++i) {
      out.indices[out.indptr[r] + i] = in[i].col;
      out.data[out.indptr[r] + i] = static_cast<float>(in[i].weight);
    }
  }
  return out;
}

}  // namespace

// All per-row work happens in place inside flat arrays addressed by row
// offsets (no per-row allocation); rows are independent, so OpenMP splits them.
template <typename Item>
CsrGraph build_cooccurrence(const int64_t* indptr, int64_t num_sequences, const Item* items,
                            int64_t num_items, int64_t window, int64_t top_k) {
  const int64_t size = num_items + 1;

  // 1. Every co-occurrence, both directions, bucketed by row.
  std::vector<int64_t> raw_offset;
  std::vector<int32_t> raw;
  bucket_by_row<int32_t>(
      size,
      [&](int t, int tasks, auto&& visit) {
        const auto [begin, end] = share(num_sequences, t, tasks);
        for_each_pair(indptr + begin, end - begin, items, window, [&](int32_t a, int32_t b) {
          visit(a, b);
          visit(b, a);
        });
      },
      raw_offset, raw);

  // 2. Per row: count neighbours with a dense per-thread tally (O(degree), no
  // sort), write (col, count) into `edges` at the row's offset, keep top_k.
  std::vector<Edge> edges(raw.size());
  std::vector<int64_t> kept(size, 0);
#pragma omp parallel
  {
    std::vector<int32_t> tally(size, 0);
#pragma omp for schedule(dynamic, 512)
    for (int64_t r = 0; r < size; ++r) {
      Edge* out = edges.data() + raw_offset[r];
      int64_t distinct = 0;
      for (int64_t i = raw_offset[r]; i < raw_offset[r + 1]; ++i) {
        if (tally[raw[i]]++ == 0) out[distinct++].col = raw[i];
      }
      for (int64_t i = 0; i < distinct; ++i) {
        out[i].weight = tally[out[i].col];
        tally[out[i].col] = 0;
      }
      if (top_k >= 0 && distinct > top_k) {
        std::partial_sort(out, out + top_k, out + distinct, heavier);
        distinct = top_k;
      } else if (top_k < 0) {
        std::sort(out, out + distinct, [](const Edge& a, const Edge& b) { return a.col < b.col; });
      }
      kept[r] = distinct;
    }
  }
  std::vector<int32_t>().swap(raw);

  if (top_k < 0) return compact(edges, raw_offset, kept);  // every edge kept: already symmetric

  // 3. max(A, A^T): every kept edge also enters its column's row; duplicates
  // (kept from both ends) keep the larger weight.
  std::vector<int64_t> sym_offset;
  std::vector<Edge> sym;
  bucket_by_row<Edge>(
      size,
      [&](int t, int tasks, auto&& visit) {
        const auto [begin, end] = share(size, t, tasks);
        for (int64_t r = begin; r < end; ++r) {
          for (int64_t i = 0; i < kept[r]; ++i) {
            const Edge e = edges[raw_offset[r] + i];
            visit(r, e);
            visit(e.col, Edge{static_cast<int32_t>(r), e.weight});
          }
        }
      },
      sym_offset, sym);
  std::vector<Edge>().swap(edges);
  std::vector<int64_t> distinct(size, 0);
#pragma omp parallel for schedule(dynamic, 512)
  for (int64_t r = 0; r < size; ++r) {
    Edge* first = sym.data() + sym_offset[r];
    Edge* last = sym.data() + sym_offset[r + 1];
    std::sort(first, last, [](const Edge& a, const Edge& b) {
      return a.col < b.col || (a.col == b.col && a.weight > b.weight);
    });
    distinct[r] = std::unique(first, last, [](const Edge& a, const Edge& b) { return a.col == b.col; }) - first;
  }

  return compact(sym, sym_offset, distinct);
}

template CsrGraph build_cooccurrence<int32_t>(const int64_t*, int64_t, const int32_t*, int64_t, int64_t, int64_t);
template CsrGraph build_cooccurrence<int64_t>(const int64_t*, int64_t, const int64_t*, int64_t, int64_t, int64_t);

}  // namespace tfllmer
