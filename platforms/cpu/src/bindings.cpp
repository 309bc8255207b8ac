// bitsandbytes_cpu._C: a thin pybind11 layer over the C ABI of libbitsandbytes_cpu.
//
// Tensors arrive as raw addresses (tensor.data_ptr()) with sizes and dtype codes; the Python
// glue has already validated shapes, dtypes and devices. This layer releases the GIL around each
// kernel and turns a failing status into a Python exception carrying the library's message.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bnb/bnb_c_api.h"

namespace py = pybind11;

namespace {

void raise_for(int32_t status, const char* function) {
  if (status == BNB_OK) return;
  const std::string msg =
      std::string("bitsandbytes_cpu: ") + function + ": " + bnb_status_string(status) + ": " + bnb_last_error();
  switch (status) {
    case BNB_ERR_UNSUPPORTED_DTYPE:
      throw py::type_error(msg);
    case BNB_ERR_NOT_IMPLEMENTED:
      throw std::runtime_error(msg);
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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Bindings of the bitsandbytes C ABI for the CPU platform";
  m.def("abi_version", &bnb_abi_version);
  m.def("build_info", [] { return std::string(bnb_build_info()); });

  m.def(
      "quantize_4bit",
      [](std::uintptr_t A, int32_t dtype, int64_t n, int64_t blocksize, int32_t quant_type, std::uintptr_t packed,
         std::uintptr_t absmax) {
        int32_t s;
        {
          py::gil_scoped_release release;
          s = bnb_quantize_4bit(ptr<const void>(A), dtype, n, blocksize, quant_type, ptr<uint8_t>(packed),
                                ptr<float>(absmax), nullptr);
        }
        raise_for(s, "quantize_4bit");
      },
      py::arg("A"), py::arg("dtype"), py::arg("n"), py::arg("blocksize"), py::arg("quant_type"), py::arg("packed"),
      py::arg("absmax"));

  m.def(
      "dequantize_4bit",
      [](std::uintptr_t packed, std::uintptr_t absmax, int64_t n, int64_t blocksize, int32_t quant_type,
         std::uintptr_t out, int32_t out_dtype) {
        int32_t s;
        {
          py::gil_scoped_release release;
          s = bnb_dequantize_4bit(ptr<const uint8_t>(packed), ptr<const float>(absmax), n, blocksize, quant_type,
                                  ptr<void>(out), out_dtype, nullptr);
        }
        raise_for(s, "dequantize_4bit");
      },
      py::arg("packed"), py::arg("absmax"), py::arg("n"), py::arg("blocksize"), py::arg("quant_type"), py::arg("out"),
      py::arg("out_dtype"));

  m.def(
      "quantize_blockwise",
      [](std::uintptr_t A, int32_t dtype, std::uintptr_t code, int64_t n, int64_t blocksize, std::uintptr_t out,
         std::uintptr_t absmax) {
        int32_t s;
        {
          py::gil_scoped_release release;
          s = bnb_quantize_blockwise(ptr<const void>(A), dtype, ptr<const float>(code), n, blocksize, ptr<uint8_t>(out),
                                     ptr<float>(absmax), nullptr);
        }
        raise_for(s, "quantize_blockwise");
      },
      py::arg("A"), py::arg("dtype"), py::arg("code"), py::arg("n"), py::arg("blocksize"), py::arg("out"),
      py::arg("absmax"));

  m.def(
      "dequantize_blockwise",
      [](std::uintptr_t A, std::uintptr_t code, std::uintptr_t absmax, int64_t n, int64_t blocksize, std::uintptr_t out,
         int32_t out_dtype) {
        int32_t s;
        {
          py::gil_scoped_release release;
          s = bnb_dequantize_blockwise(ptr<const uint8_t>(A), ptr<const float>(code), ptr<const float>(absmax), n,
                                       blocksize, ptr<void>(out), out_dtype, nullptr);
        }
        raise_for(s, "dequantize_blockwise");
      },
      py::arg("A"), py::arg("code"), py::arg("absmax"), py::arg("n"), py::arg("blocksize"), py::arg("out"),
      py::arg("out_dtype"));
}
