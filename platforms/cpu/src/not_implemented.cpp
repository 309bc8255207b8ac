// Entry points of the common C ABI that the CPU library does not implement yet: each is exported
// and answers BNB_ERR_NOT_IMPLEMENTED, so the symbol set is the same on every platform.
#include "bnb/bnb_c_api.h"
#include "status.h"

#define BNB_CPU_NOT_IMPLEMENTED(name) \
  return ::bnb_cpu::fail(BNB_ERR_NOT_IMPLEMENTED, "%s is not implemented by the CPU library", name)

extern "C" {

int32_t bnb_gemm_4bit(const void*, int32_t, int64_t, int64_t, int64_t, const uint8_t*, const float*, const float*,
                      int64_t, const void*, void*, bnb_stream) {
  BNB_CPU_NOT_IMPLEMENTED("bnb_gemm_4bit");
}

int32_t bnb_int8_vectorwise_quant(const void*, int32_t, int64_t, int64_t, float, int8_t*, float*, uint8_t*,
                                  bnb_stream) {
  BNB_CPU_NOT_IMPLEMENTED("bnb_int8_vectorwise_quant");
}

int32_t bnb_int8_linear_matmul(const int8_t*, const int8_t*, int64_t, int64_t, int64_t, int32_t*, bnb_stream) {
  BNB_CPU_NOT_IMPLEMENTED("bnb_int8_linear_matmul");
}

int32_t bnb_int8_mm_dequant(const int32_t*, const float*, const float*, int64_t, int64_t, const void*, int32_t, void*,
                            int32_t, bnb_stream) {
  BNB_CPU_NOT_IMPLEMENTED("bnb_int8_mm_dequant");
}

int32_t bnb_optimizer_update_32bit(int32_t, const void*, void*, int32_t, float*, float*, float*, int64_t,
                                   const bnb_optimizer_hparams*, bnb_stream) {
  BNB_CPU_NOT_IMPLEMENTED("bnb_optimizer_update_32bit");
}

int32_t bnb_optimizer_update_8bit_blockwise(int32_t, const void*, void*, int32_t, uint8_t*, uint8_t*, const float*,
                                            const float*, float*, float*, int64_t, const bnb_optimizer_hparams*,
                                            bnb_stream) {
  BNB_CPU_NOT_IMPLEMENTED("bnb_optimizer_update_8bit_blockwise");
}

// The CPU has no managed memory: paged optimizers keep ordinary host tensors.
int32_t bnb_paged_alloc(int64_t, void**) { BNB_CPU_NOT_IMPLEMENTED("bnb_paged_alloc"); }

int32_t bnb_paged_free(void*) { BNB_CPU_NOT_IMPLEMENTED("bnb_paged_free"); }

int32_t bnb_paged_prefetch(void*, int64_t, int32_t, bnb_stream) { BNB_CPU_NOT_IMPLEMENTED("bnb_paged_prefetch"); }

}  // extern "C"
