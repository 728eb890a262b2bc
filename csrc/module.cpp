// pybind11 bindings of the native graph builder (tfllmer_fast._native).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "cooccurrence.h"

namespace py = pybind11;

namespace {

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owned = new std::vector<T>(std::move(values));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(owned->size()), owned->data(), free_when_done);
}

template <typename Item>
py::tuple build(py::array_t<int64_t, py::array::c_style> indptr, py::array_t<Item, py::array::c_style> items,
                int64_t num_items, int64_t window, int64_t top_k) {
  if (indptr.ndim() != 1 || indptr.shape(0) < 1) throw std::invalid_argument("indptr must be 1-D and non-empty");
  if (window < 1) throw std::invalid_argument("window must be >= 1");
  if (num_items >= (int64_t{1} << 31) - 1) throw std::invalid_argument("num_items must fit in int32");
  const int64_t num_sequences = indptr.shape(0) - 1;
  const int64_t* ip = indptr.data();
  const Item* it = items.data();
  tfllmer::CsrGraph graph;
  {
    py::gil_scoped_release release;
    graph = tfllmer::build_cooccurrence<Item>(ip, num_sequences, it, num_items, window, top_k);
  }
  return py::make_tuple(to_numpy(std::move(graph.indptr)), to_numpy(std::move(graph.indices)),
                        to_numpy(std::move(graph.data)));
}

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "Native (C++) graph construction for tfllmer_fast";
  m.def("cooccurrence_csr", &build<int32_t>, py::arg("indptr"), py::arg("items"), py::arg("num_items"),
        py::arg("window"), py::arg("top_k"));
  m.def("cooccurrence_csr", &build<int64_t>, py::arg("indptr"), py::arg("items"), py::arg("num_items"),
        py::arg("window"), py::arg("top_k"));
  m.def("has_openmp", &has_openmp);
}
