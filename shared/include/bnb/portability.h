// Host/device annotations so the same header compiles with a C++ compiler, nvcc and hipcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BNB_HD __host__ __device__
#else
#define BNB_HD
#endif

#define BNB_INLINE inline
