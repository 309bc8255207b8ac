// bitsandbytes_cpu._C: a thin pybind11 layer over the C ABI of libbitsandbytes_cpu.
//
// Tensors arrive as raw addresses (tensor.data_ptr()) with sizes and dtype codes; the Python
// glue has already validated shapes, dtypes and devices. This layer releases the GIL around each
// kernel and turns a failing status into a Python exception carrying the library's message.
// Every kernel takes `nthreads` (the glue passes torch.get_num_threads()): the library's pool then
// uses at most that many threads for this call.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bnb/bnb_c_api.h"
#include "cpu_extras.h"

namespace py = pybind11;

namespace {

void raise_for(int32_t status, const char* function) {
  if (status == BNB_OK) return;
  const std::string msg =
      std::string("bitsandbytes_cpu: ") + function + ": " + bnb_status_string(status) + ": " + bnb_last_error();
  switch (status) {
    case BNB_ERR_OUT_OF_MEMORY:
      PyErr_SetString(PyExc_MemoryError, msg.c_str());
      throw py::error_already_set();
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

// Runs `call` without the GIL with `nthreads` threads, then raises on failure.
template <typename Fn>
void run(const char* name, int32_t nthreads, Fn&& call) {
  int32_t s;
  {
    py::gil_scoped_release release;
    bnb_cpu_set_num_threads(nthreads);
    s = call();
  }
  raise_for(s, name);
}

bnb_optimizer_hparams hparams(double beta1, double beta2, double beta3, double alpha, double eps, double weight_decay,
                              double lr, double gnorm_scale, double max_unorm, double param_norm, int64_t step,
                              bool skip_zeros) {
  bnb_optimizer_hparams h;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.beta3 = beta3;
  h.alpha = alpha;
  h.eps = eps;
  h.weight_decay = weight_decay;
  h.lr = lr;
  h.gnorm_scale = gnorm_scale;
  h.max_unorm = max_unorm;
  h.param_norm = param_norm;
  h.step = step;
  h.skip_zeros = skip_zeros ? 1 : 0;
  return h;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  using u = std::uintptr_t;
  m.doc() = "Bindings of the bitsandbytes C ABI for the CPU platform";
  m.def("abi_version", &bnb_abi_version);
  m.def("build_info", [] { return std::string(bnb_build_info()); });
  m.def("get_isa", [] { return std::string(bnb_cpu_get_isa()); }, "The instruction set the kernels use now.");
  m.def("usable_isas", [] { return std::string(bnb_cpu_usable_isas()); });
  m.def("isa_env_error", [] { return std::string(bnb_cpu_isa_env_error()); });
  m.def(
      "set_isa", [](const std::string& name) { raise_for(bnb_cpu_set_isa(name.c_str()), "set_isa"); },
      "Force an instruction set: auto, scalar, avx2, avx512 or neon (ValueError if unknown or unusable).");
  m.def("get_num_threads", [] { return bnb_cpu_get_num_threads(); });

  m.def(
      "quantize_4bit",
      [](u A, int32_t dtype, int64_t n, int64_t blocksize, int32_t quant_type, u packed, u absmax, int32_t nthreads) {
        run("quantize_4bit", nthreads, [&] {
          return bnb_quantize_4bit(ptr<const void>(A), dtype, n, blocksize, quant_type, ptr<uint8_t>(packed),
                                   ptr<float>(absmax), nullptr);
        });
      },
      py::arg("A"), py::arg("dtype"), py::arg("n"), py::arg("blocksize"), py::arg("quant_type"), py::arg("packed"),
      py::arg("absmax"), py::arg("nthreads") = 0);
  m.def(
      "dequantize_4bit",
      [](u packed, u absmax, int64_t n, int64_t blocksize, int32_t quant_type, u out, int32_t out_dtype,
         int32_t nthreads) {
        run("dequantize_4bit", nthreads, [&] {
          return bnb_dequantize_4bit(ptr<const uint8_t>(packed), ptr<const float>(absmax), n, blocksize, quant_type,
                                     ptr<void>(out), out_dtype, nullptr);
        });
      },
      py::arg("packed"), py::arg("absmax"), py::arg("n"), py::arg("blocksize"), py::arg("quant_type"), py::arg("out"),
      py::arg("out_dtype"), py::arg("nthreads") = 0);
  m.def(
      "quantize_blockwise",
      [](u A, int32_t dtype, u code, int64_t n, int64_t blocksize, u out, u absmax, int32_t nthreads) {
        run("quantize_blockwise", nthreads, [&] {
          return bnb_quantize_blockwise(ptr<const void>(A), dtype, ptr<const float>(code), n, blocksize,
                                        ptr<uint8_t>(out), ptr<float>(absmax), nullptr);
        });
      },
      py::arg("A"), py::arg("dtype"), py::arg("code"), py::arg("n"), py::arg("blocksize"), py::arg("out"),
      py::arg("absmax"), py::arg("nthreads") = 0);
  m.def(
      "dequantize_blockwise",
      [](u A, u code, u absmax, int64_t n, int64_t blocksize, u out, int32_t out_dtype, int32_t nthreads) {
        run("dequantize_blockwise", nthreads, [&] {
          return bnb_dequantize_blockwise(ptr<const uint8_t>(A), ptr<const float>(code), ptr<const float>(absmax), n,
                                          blocksize, ptr<void>(out), out_dtype, nullptr);
        });
      },
      py::arg("A"), py::arg("code"), py::arg("absmax"), py::arg("n"), py::arg("blocksize"), py::arg("out"),
      py::arg("out_dtype"), py::arg("nthreads") = 0);
  m.def(
      "gemm_4bit",
      [](u A, int32_t dtype, int64_t rows, int64_t n, int64_t k, u B, u absmax, u code, int64_t blocksize, u bias,
         u out, int32_t nthreads) {
        run("gemm_4bit", nthreads, [&] {
          return bnb_gemm_4bit(ptr<const void>(A), dtype, rows, n, k, ptr<const uint8_t>(B), ptr<const float>(absmax),
                               ptr<const float>(code), blocksize, ptr<const void>(bias), ptr<void>(out), nullptr);
        });
      },
      py::arg("A"), py::arg("dtype"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("B"), py::arg("absmax"),
      py::arg("code"), py::arg("blocksize"), py::arg("bias"), py::arg("out"), py::arg("nthreads") = 0);
  m.def(
      "int8_vectorwise_quant",
      [](u A, int32_t dtype, int64_t rows, int64_t cols, float threshold, u out, u row_stats, u outlier_cols,
         int32_t nthreads) {
        run("int8_vectorwise_quant", nthreads, [&] {
          return bnb_int8_vectorwise_quant(ptr<const void>(A), dtype, rows, cols, threshold, ptr<int8_t>(out),
                                           ptr<float>(row_stats), ptr<uint8_t>(outlier_cols), nullptr);
        });
        // The number of outlier columns flagged, so that the caller looks for them only when any
        // (a decoding model's activations seldom have one).
        int64_t flagged = 0;
        if (outlier_cols != 0 && rows > 0) {
          const uint8_t* flags = ptr<const uint8_t>(outlier_cols);
          for (int64_t c = 0; c < cols; ++c) flagged += flags[c] != 0;
        }
        return flagged;
      },
      py::arg("A"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("threshold"), py::arg("out"),
      py::arg("row_stats"), py::arg("outlier_cols"), py::arg("nthreads") = 0);
  m.def(
      "int8_linear_matmul",
      [](u A, u B, int64_t rows, int64_t n, int64_t k, u C, int32_t nthreads) {
        run("int8_linear_matmul", nthreads, [&] {
          return bnb_int8_linear_matmul(ptr<const int8_t>(A), ptr<const int8_t>(B), rows, n, k, ptr<int32_t>(C),
                                        nullptr);
        });
      },
      py::arg("A"), py::arg("B"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("C"), py::arg("nthreads") = 0);
  m.def(
      "int8_linear_matmul_gather",
      [](u A, u B, int64_t rows, int64_t n, int64_t k, u C, u cols, int64_t ncols, u Bcols, int32_t nthreads) {
        run("int8_linear_matmul_gather", nthreads, [&] {
          return bnb_cpu_int8_linear_matmul_gather(ptr<const int8_t>(A), ptr<const int8_t>(B), rows, n, k,
                                                   ptr<int32_t>(C), ptr<const int64_t>(cols), ncols,
                                                   ptr<int8_t>(Bcols));
        });
      },
      py::arg("A"), py::arg("B"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("C"), py::arg("cols"),
      py::arg("ncols"), py::arg("Bcols"), py::arg("nthreads") = 0,
      "int8_linear_matmul that also copies the weight's columns `cols` (LLM.int8() outliers) into Bcols [n, ncols].");
  m.def(
      "int8_weight_matmul",
      [](u A, int32_t dtype, int64_t rows, int64_t n, int64_t k, u CB, u SCB, u bias, int32_t bias_dtype, u out,
         int32_t nthreads) {
        run("int8_weight_matmul", nthreads, [&] {
          return bnb_cpu_int8_weight_matmul(ptr<const void>(A), dtype, rows, n, k, ptr<const int8_t>(CB),
                                            ptr<const float>(SCB), ptr<const void>(bias), bias_dtype, ptr<void>(out));
        });
      },
      py::arg("A"), py::arg("dtype"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("CB"), py::arg("SCB"),
      py::arg("bias"), py::arg("bias_dtype"), py::arg("out"), py::arg("nthreads") = 0,
      "out [rows, n] = A [rows, k] @ (CB * SCB / 127)^T (+ bias), reading the int8 weight directly.");
  m.def(
      "amx_usable", [] { return bnb_cpu_amx_usable() != 0; },
      "Whether the AMX paths run: the CPU and the operating system allow the tile unit, the avx512 table is "
      "active and set_amx(False) has not turned them off.");
  m.def(
      "amx_int8_usable", [] { return bnb_cpu_amx_int8_usable() != 0; },
      "Whether the int8 GEMM (int8_linear_matmul, 8 rows and more, k a multiple of 64) runs on the AMX-INT8 tile "
      "unit: amx_usable() and the CPU has AMX-INT8.");
  m.def(
      "set_amx", [](bool on) { bnb_cpu_set_amx(on ? 1 : 0); }, py::arg("on"),
      "Turn the AMX paths on (the default where supported) or off; off also turns off the panel matmuls' "
      "dot-product form on CPUs without AMX.");
  m.def(
      "optimizer_gathers", [] { return bnb_cpu_optimizer_gathers() != 0; },
      "Whether the avx512 8-bit optimizer kernel uses gathers (off on AMD CPUs, where byte-plane lookups and "
      "the grid search are faster; the same bits).");
  m.def(
      "set_optimizer_gathers", [](int mode) { bnb_cpu_set_optimizer_gathers(mode); }, py::arg("mode"),
      "Force the 8-bit optimizer kernel's gathers on (1) or off (0), or back to the CPU's choice (-1).");
  m.def(
      "panel_usable", [] { return bnb_cpu_panel_usable() != 0; },
      "Whether the panel matmuls (weight_matmul_amx, weight_matmul_t_amx) run: on the AMX tile unit, or with "
      "AVX512-BF16 dot products on CPUs without AMX (avx512 table active, set_amx(False) not called).");
  m.def(
      "panel_dots", [] { return bnb_cpu_panel_dots() != 0; },
      "Whether the panel matmuls run with AVX512-BF16 dot products (no AMX, or set_panel_dots(True)).");
  m.def(
      "set_panel_dots", [](bool force) { bnb_cpu_set_panel_dots(force ? 1 : 0); }, py::arg("force"),
      "Force the panel matmuls' dot-product form where AMX runs too (tests), or back to the tile unit.");
  m.def(
      "weight_matmul_amx",
      [](u A, int64_t rows, int64_t n, int64_t k, u CB, u SCB, u B4, u absmax, int32_t quant_type, int64_t blocksize,
         u bias, int32_t bias_dtype, u out, int32_t nthreads) {
        run("weight_matmul_amx", nthreads, [&] {
          return bnb_cpu_weight_matmul_amx(ptr<const void>(A), rows, n, k, ptr<const int8_t>(CB), ptr<const float>(SCB),
                                           ptr<const uint8_t>(B4), ptr<const float>(absmax), quant_type, blocksize,
                                           ptr<const void>(bias), bias_dtype, ptr<void>(out));
        });
      },
      py::arg("A"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("CB"), py::arg("SCB"), py::arg("B4"),
      py::arg("absmax"), py::arg("quant_type"), py::arg("blocksize"), py::arg("bias"), py::arg("bias_dtype"),
      py::arg("out"), py::arg("nthreads") = 0,
      "out [rows, n] (bf16) = A [rows, k] (bf16) @ W^T (+ bias) on the AMX tile unit, W [n, k] kept as int8 rows (CB, "
      "SCB) or packed 4-bit (B4, absmax, quant_type, blocksize).");
  m.def(
      "weight_matmul_t_amx",
      [](u G, int64_t rows, int64_t n, int64_t k, u CB, u SCB, u B4, u absmax, int32_t quant_type, int64_t blocksize,
         u out, int32_t nthreads) {
        run("weight_matmul_t_amx", nthreads, [&] {
          return bnb_cpu_weight_matmul_t_amx(ptr<const void>(G), rows, n, k, ptr<const int8_t>(CB),
                                             ptr<const float>(SCB), ptr<const uint8_t>(B4), ptr<const float>(absmax),
                                             quant_type, blocksize, ptr<void>(out));
        });
      },
      py::arg("G"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("CB"), py::arg("SCB"), py::arg("B4"),
      py::arg("absmax"), py::arg("quant_type"), py::arg("blocksize"), py::arg("out"), py::arg("nthreads") = 0,
      "out [rows, k] (bf16) = G [rows, n] (bf16) @ W on the AMX tile unit, W [n, k] kept as int8 rows (CB, SCB) or "
      "packed 4-bit (B4, absmax, quant_type, blocksize).");
  m.def(
      "int8_expand",
      [](u src, int64_t n, u out, int32_t dtype, int32_t nthreads) {
        run("int8_expand", nthreads,
            [&] { return bnb_cpu_int8_expand(ptr<const int8_t>(src), n, ptr<void>(out), dtype); });
      },
      py::arg("src"), py::arg("n"), py::arg("out"), py::arg("dtype"), py::arg("nthreads") = 0,
      "out[i] = src[i] for n int8 values, as the float dtype code `dtype` (exact).");
  m.def(
      "expand_columns",
      [](u CB, u B4, u absmax, int32_t quant_type, int64_t blocksize, int64_t n, int64_t k, int64_t c0, int64_t c1,
         u out, int32_t dtype, int32_t nthreads) {
        run("expand_columns", nthreads, [&] {
          return bnb_cpu_expand_columns(ptr<const int8_t>(CB), ptr<const uint8_t>(B4), ptr<const float>(absmax),
                                        quant_type, blocksize, n, k, c0, c1, ptr<void>(out), dtype);
        });
      },
      py::arg("CB"), py::arg("B4"), py::arg("absmax"), py::arg("quant_type"), py::arg("blocksize"), py::arg("n"),
      py::arg("k"), py::arg("c0"), py::arg("c1"), py::arg("out"), py::arg("dtype"), py::arg("nthreads") = 0,
      "out [n, c1 - c0] = columns [c0, c1) of W [n, k] as the float dtype code `dtype`: int8 rows CB (scales not "
      "applied) or packed 4-bit (B4, absmax, quant_type, blocksize; k, c0 and c1 multiples of blocksize).");
  m.def(
      "weight_matmul_t",
      [](u A, int32_t dtype, int64_t rows, int64_t n, int64_t k, u CB, u SCB, u B4, u absmax, int32_t quant_type,
         int64_t blocksize, u out, int32_t nthreads) {
        run("weight_matmul_t", nthreads, [&] {
          return bnb_cpu_weight_matmul_t(ptr<const void>(A), dtype, rows, n, k, ptr<const int8_t>(CB),
                                         ptr<const float>(SCB), ptr<const uint8_t>(B4), ptr<const float>(absmax),
                                         quant_type, blocksize, ptr<void>(out));
        });
      },
      py::arg("A"), py::arg("dtype"), py::arg("rows"), py::arg("n"), py::arg("k"), py::arg("CB"), py::arg("SCB"),
      py::arg("B4"), py::arg("absmax"), py::arg("quant_type"), py::arg("blocksize"), py::arg("out"),
      py::arg("nthreads") = 0,
      "out [rows, k] = A [rows, n] @ W for W [n, k] kept as int8 rows (CB, SCB) or packed 4-bit (B4, absmax, "
      "quant_type).");
  m.def(
      "int8_mm_dequant",
      [](u C, u row_stats, u col_stats, int64_t rows, int64_t n, u bias, int32_t bias_dtype, u out, int32_t out_dtype,
         int32_t nthreads) {
        run("int8_mm_dequant", nthreads, [&] {
          return bnb_int8_mm_dequant(ptr<const int32_t>(C), ptr<const float>(row_stats), ptr<const float>(col_stats),
                                     rows, n, ptr<const void>(bias), bias_dtype, ptr<void>(out), out_dtype, nullptr);
        });
      },
      py::arg("C"), py::arg("row_stats"), py::arg("col_stats"), py::arg("rows"), py::arg("n"), py::arg("bias"),
      py::arg("bias_dtype"), py::arg("out"), py::arg("out_dtype"), py::arg("nthreads") = 0);
  m.def(
      "optimizer_update_32bit",
      [](int32_t optimizer, u g, u p, int32_t dtype, u state1, u state2, u unorm_vec, int64_t n, double beta1,
         double beta2, double beta3, double alpha, double eps, double weight_decay, double lr, double gnorm_scale,
         double max_unorm, double param_norm, int64_t step, bool skip_zeros, int32_t nthreads) {
        const bnb_optimizer_hparams h = hparams(beta1, beta2, beta3, alpha, eps, weight_decay, lr, gnorm_scale,
                                                max_unorm, param_norm, step, skip_zeros);
        run("optimizer_update_32bit", nthreads, [&] {
          return bnb_optimizer_update_32bit(optimizer, ptr<const void>(g), ptr<void>(p), dtype, ptr<float>(state1),
                                            ptr<float>(state2), ptr<float>(unorm_vec), n, &h, nullptr);
        });
      },
      py::arg("optimizer"), py::arg("g"), py::arg("p"), py::arg("dtype"), py::arg("state1"), py::arg("state2"),
      py::arg("unorm_vec"), py::arg("n"), py::arg("beta1"), py::arg("beta2"), py::arg("beta3"), py::arg("alpha"),
      py::arg("eps"), py::arg("weight_decay"), py::arg("lr"), py::arg("gnorm_scale"), py::arg("max_unorm"),
      py::arg("param_norm"), py::arg("step"), py::arg("skip_zeros"), py::arg("nthreads") = 0);
  m.def(
      "optimizer_update_8bit_blockwise",
      [](int32_t optimizer, u g, u p, int32_t dtype, u state1, u state2, u qmap1, u qmap2, u absmax1, u absmax2,
         int64_t n, double beta1, double beta2, double beta3, double alpha, double eps, double weight_decay, double lr,
         double gnorm_scale, int64_t step, bool skip_zeros, int32_t nthreads) {
        const bnb_optimizer_hparams h =
            hparams(beta1, beta2, beta3, alpha, eps, weight_decay, lr, gnorm_scale, 0.0, 0.0, step, skip_zeros);
        run("optimizer_update_8bit_blockwise", nthreads, [&] {
          return bnb_optimizer_update_8bit_blockwise(optimizer, ptr<const void>(g), ptr<void>(p), dtype,
                                                     ptr<uint8_t>(state1), ptr<uint8_t>(state2),
                                                     ptr<const float>(qmap1), ptr<const float>(qmap2),
                                                     ptr<float>(absmax1), ptr<float>(absmax2), n, &h, nullptr);
        });
      },
      py::arg("optimizer"), py::arg("g"), py::arg("p"), py::arg("dtype"), py::arg("state1"), py::arg("state2"),
      py::arg("qmap1"), py::arg("qmap2"), py::arg("absmax1"), py::arg("absmax2"), py::arg("n"), py::arg("beta1"),
      py::arg("beta2"), py::arg("beta3"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("lr"),
      py::arg("gnorm_scale"), py::arg("step"), py::arg("skip_zeros"), py::arg("nthreads") = 0);
}
