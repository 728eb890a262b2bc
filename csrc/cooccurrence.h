// Item co-occurrence graph builder: counts, per-row top-k, max(A, A^T).
#pragma once

#include <cstdint>
#include <vector>

namespace tfllmer {

struct CsrGraph {
  std::vector<int64_t> indptr;
  std::vector<int32_t> indices;
  std::vector<float> data;
};

// indptr (num_sequences + 1) delimits each sequence in items; item ids lie in
// 1..num_items (0 is padding, already removed). top_k < 0 keeps every edge.
template <typename Item>
CsrGraph build_cooccurrence(const int64_t* indptr, int64_t num_sequences, const Item* items,
                            int64_t num_items, int64_t window, int64_t top_k);

}  // namespace tfllmer
