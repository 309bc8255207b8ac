// CPU-only extensions of the C ABI (bnb_cpu_*), exported by libbitsandbytes_cpu beside the common
// functions of bnb/bnb_c_api.h: the instruction-set, AMX and thread-count settings, and the
// matmuls against a weight kept quantized. Declared once here for the library's users in this
// folder (the pybind11 module and the native test drivers); isa_dispatch.cpp, threading.cpp,
// api_matmul.cpp and api_quantize.cpp define them.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

const char* bnb_cpu_get_isa(void);
int32_t bnb_cpu_set_isa(const char* name);
const char* bnb_cpu_isa_env_error(void);
const char* bnb_cpu_usable_isas(void);
void bnb_cpu_set_num_threads(int32_t n);
int32_t bnb_cpu_get_num_threads(void);
int32_t bnb_cpu_amx_usable(void);
int32_t bnb_cpu_amx_int8_usable(void);
void bnb_cpu_set_amx(int32_t on);
int32_t bnb_cpu_panel_usable(void);
int32_t bnb_cpu_panel_dots(void);
void bnb_cpu_set_panel_dots(int32_t force);
int32_t bnb_cpu_optimizer_gathers(void);
void bnb_cpu_set_optimizer_gathers(int32_t mode);
int32_t bnb_cpu_int8_linear_matmul_gather(const int8_t* A, const int8_t* B, int64_t m, int64_t n, int64_t k, int32_t* C,
                                          const int64_t* cols, int64_t ncols, int8_t* Bcols);
int32_t bnb_cpu_int8_weight_matmul(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                   const float* SCB, const void* bias, int32_t bias_dtype, void* out);
int32_t bnb_cpu_int8_expand(const int8_t* src, int64_t n, void* out, int32_t dtype);
int32_t bnb_cpu_expand_columns(const int8_t* CB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                               int64_t blocksize, int64_t n, int64_t k, int64_t c0, int64_t c1, void* out,
                               int32_t dtype);
int32_t bnb_cpu_weight_matmul_t(const void* A, int32_t dtype, int64_t m, int64_t n, int64_t k, const int8_t* CB,
                                const float* SCB, const uint8_t* B4, const float* absmax, int32_t quant_type,
                                int64_t blocksize, void* out);
int32_t bnb_cpu_weight_matmul_amx(const void* A, int64_t m, int64_t n, int64_t k, const int8_t* CB, const float* SCB,
                                  const uint8_t* B4, const float* absmax, int32_t quant_type, int64_t blocksize,
                                  const void* bias, int32_t bias_dtype, void* out);
int32_t bnb_cpu_weight_matmul_t_amx(const void* G, int64_t m, int64_t n, int64_t k, const int8_t* CB, const float* SCB,
                                    const uint8_t* B4, const float* absmax, int32_t quant_type, int64_t blocksize,
                                    void* out);

#ifdef __cplusplus
}
#endif
