// bitsandbytes_cuda._C: a thin pybind11 layer over the C ABI of libbitsandbytes_cuda.
//
// Tensors arrive as raw addresses (tensor.data_ptr()) with sizes, dtype codes and the address of
// the caller's CUDA stream (torch.cuda.current_stream(device).cuda_stream); the Python glue has
// already validated shapes, dtypes and devices. This layer releases the GIL around each call and
// turns a failing status into a Python exception carrying the library's message.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bnb/bnb_c_api.h"

// The ROCm platform builds this file once per ROCm major, as bitsandbytes_rocm._C_rocm<major>.
#ifndef BNB_PY_MODULE
#define BNB_PY_MODULE _C
#endif
#ifndef BNB_PY_PACKAGE
#define BNB_PY_PACKAGE "bitsandbytes_cuda"
#endif

namespace py = pybind11;

namespace {

void raise_for(int32_t status, const char* function) {
  if (status == BNB_OK) return;
  const std::string msg =
      std::string(BNB_PY_PACKAGE ": ") + function + ": " + bnb_status_string(status) + ": " + bnb_last_error();
  switch (status) {
    case BNB_ERR_UNSUPPORTED_DTYPE:
      throw py::type_error(msg);
    case BNB_ERR_NULL_POINTER:
    case BNB_ERR_INVALID_ARGUMENT:
    case BNB_ERR_INVALID_BLOCKSIZE:
    case BNB_ERR_UNSUPPORTED_QUANT_TYPE:
      throw py::value_error(msg);
    default:
      throw std::runtime_error(msg);
  }
}

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

bnb_stream stream_of(std::uintptr_t address) { return reinterpret_cast<bnb_stream>(address); }

// Runs `call` without the GIL and raises on failure.
template <typename F>
void run(const char* name, F&& call) {
  int32_t s;
  {
    py::gil_scoped_release release;
    s = call();
  }
  raise_for(s, name);
}

using u = std::uintptr_t;

}  // namespace

PYBIND11_MODULE(BNB_PY_MODULE, m) {
  m.doc() = "Bindings of the bitsandbytes C ABI for the CUDA platform";
  m.def("abi_version", &bnb_abi_version);
  m.def("build_info", [] { return std::string(bnb_build_info()); });

  m.def("quantize_4bit", [](u A, int32_t dtype, int64_t n, int64_t bs, int32_t qt, u packed, u absmax, u stream) {
    run("quantize_4bit", [&] {
      return bnb_quantize_4bit(ptr<const void>(A), dtype, n, bs, qt, ptr<uint8_t>(packed), ptr<float>(absmax),
                               stream_of(stream));
    });
  });
  m.def("dequantize_4bit",
        [](u packed, u absmax, int64_t n, int64_t bs, int32_t qt, u out, int32_t out_dtype, u stream) {
          run("dequantize_4bit", [&] {
            return bnb_dequantize_4bit(ptr<const uint8_t>(packed), ptr<const float>(absmax), n, bs, qt, ptr<void>(out),
                                       out_dtype, stream_of(stream));
          });
        });
  m.def("quantize_blockwise", [](u A, int32_t dtype, u code, int64_t n, int64_t bs, u out, u absmax, u stream) {
    run("quantize_blockwise", [&] {
      return bnb_quantize_blockwise(ptr<const void>(A), dtype, ptr<const float>(code), n, bs, ptr<uint8_t>(out),
                                    ptr<float>(absmax), stream_of(stream));
    });
  });
  m.def("dequantize_blockwise", [](u A, u code, u absmax, int64_t n, int64_t bs, u out, int32_t out_dtype, u stream) {
    run("dequantize_blockwise", [&] {
      return bnb_dequantize_blockwise(ptr<const uint8_t>(A), ptr<const float>(code), ptr<const float>(absmax), n, bs,
                                      ptr<void>(out), out_dtype, stream_of(stream));
    });
  });
  m.def("gemm_4bit", [](u A, int32_t dtype, int64_t m_, int64_t n, int64_t k, u B, u absmax, u code, int64_t bs, u bias,
                        u out, u stream) {
    run("gemm_4bit", [&] {
      return bnb_gemm_4bit(ptr<const void>(A), dtype, m_, n, k, ptr<const uint8_t>(B), ptr<const float>(absmax),
                           ptr<const float>(code), bs, ptr<const void>(bias), ptr<void>(out), stream_of(stream));
    });
  });
  m.def("int8_vectorwise_quant", [](u A, int32_t dtype, int64_t rows, int64_t cols, float threshold, u out, u row_stats,
                                    u outlier_cols, u stream) {
    run("int8_vectorwise_quant", [&] {
      return bnb_int8_vectorwise_quant(ptr<const void>(A), dtype, rows, cols, threshold, ptr<int8_t>(out),
                                       ptr<float>(row_stats), ptr<uint8_t>(outlier_cols), stream_of(stream));
    });
  });
  m.def("int8_linear_matmul", [](u A, u B, int64_t m_, int64_t n, int64_t k, u C, u stream) {
    run("int8_linear_matmul", [&] {
      return bnb_int8_linear_matmul(ptr<const int8_t>(A), ptr<const int8_t>(B), m_, n, k, ptr<int32_t>(C),
                                    stream_of(stream));
    });
  });
  m.def("int8_mm_dequant", [](u C, u row_stats, u col_stats, int64_t m_, int64_t n, u bias, int32_t bias_dtype, u out,
                              int32_t out_dtype, u stream) {
    run("int8_mm_dequant", [&] {
      return bnb_int8_mm_dequant(ptr<const int32_t>(C), ptr<const float>(row_stats), ptr<const float>(col_stats), m_, n,
                                 ptr<const void>(bias), bias_dtype, ptr<void>(out), out_dtype, stream_of(stream));
    });
  });

  // Local to this module: another build of these bindings in the same process (a ROCm and a CUDA
  // wheel's, or the host harness's) registers its own.
  py::class_<bnb_optimizer_hparams>(m, "OptimizerHparams", py::module_local())
      .def(py::init([](double beta1, double beta2, double beta3, double alpha, double eps, double weight_decay,
                       double lr, double gnorm_scale, double max_unorm, double param_norm, int64_t step,
                       bool skip_zeros) {
             return bnb_optimizer_hparams{beta1, beta2,       beta3,     alpha,      eps,  weight_decay,
                                          lr,    gnorm_scale, max_unorm, param_norm, step, skip_zeros ? 1 : 0};
           }),
           py::arg("beta1"), py::arg("beta2"), py::arg("beta3"), py::arg("alpha"), py::arg("eps"),
           py::arg("weight_decay"), py::arg("lr"), py::arg("gnorm_scale"), py::arg("max_unorm"), py::arg("param_norm"),
           py::arg("step"), py::arg("skip_zeros"));

  m.def("optimizer_update_32bit", [](int32_t opt, u g, u p, int32_t dtype, u s1, u s2, u unorm, int64_t n,
                                     const bnb_optimizer_hparams& h, u stream) {
    run("optimizer_update_32bit", [&] {
      return bnb_optimizer_update_32bit(opt, ptr<const void>(g), ptr<void>(p), dtype, ptr<float>(s1), ptr<float>(s2),
                                        ptr<float>(unorm), n, &h, stream_of(stream));
    });
  });
  m.def("optimizer_update_8bit_blockwise", [](int32_t opt, u g, u p, int32_t dtype, u s1, u s2, u qmap1, u qmap2,
                                              u absmax1, u absmax2, int64_t n, const bnb_optimizer_hparams& h,
                                              u stream) {
    run("optimizer_update_8bit_blockwise", [&] {
      return bnb_optimizer_update_8bit_blockwise(opt, ptr<const void>(g), ptr<void>(p), dtype, ptr<uint8_t>(s1),
                                                 ptr<uint8_t>(s2), ptr<const float>(qmap1), ptr<const float>(qmap2),
                                                 ptr<float>(absmax1), ptr<float>(absmax2), n, &h, stream_of(stream));
    });
  });

  m.def("paged_alloc", [](int64_t bytes) {
    void* out = nullptr;
    run("paged_alloc", [&] { return bnb_paged_alloc(bytes, &out); });
    return reinterpret_cast<u>(out);
  });
  m.def("paged_free", [](u p) { run("paged_free", [&] { return bnb_paged_free(ptr<void>(p)); }); });
  m.def("paged_prefetch", [](u p, int64_t bytes, int32_t device, u stream) {
    run("paged_prefetch", [&] { return bnb_paged_prefetch(ptr<void>(p), bytes, device, stream_of(stream)); });
  });
}
