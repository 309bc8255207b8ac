# Compiles libbitsandbytes_rocm<major>.so from ${BNB_CUDA_DIR}/src with hipcc (included by
# CMakeLists.txt). Sets _bnb_majors, _bnb_kernel_<major> and _bnb_build_info_<major>.
#
# hipcc is driven through custom commands rather than CMake's HIP language: that needs the
# hip-lang CMake package at <rocm>/lib/cmake, which distributions (Debian's ROCm 5.2 puts it under
# lib/<multiarch>/cmake) and pip-style ROCm layouts do not always have. hipcc alone works everywhere.

# ---- the compiler and its ROCm --------------------------------------------------------------
if(NOT BNB_HIPCC)
  set(_bnb_hints)
  if(DEFINED ENV{ROCM_PATH})
    list(APPEND _bnb_hints "$ENV{ROCM_PATH}/bin")
  endif()
  list(APPEND _bnb_hints /opt/rocm/bin)
  find_program(_bnb_found_hipcc hipcc HINTS ${_bnb_hints})
  if(NOT _bnb_found_hipcc)
    bnb_fail("bitsandbytes-rocm: hipcc not found; install ROCm (https://rocm.docs.amd.com; Debian/Ubuntu: apt install hipcc) or pass -DBNB_HIPCC=/path/to/hipcc")
  endif()
  set(BNB_HIPCC "${_bnb_found_hipcc}" CACHE FILEPATH "hipcc" FORCE)
endif()
get_filename_component(_bnb_hip_bin "${BNB_HIPCC}" DIRECTORY)
get_filename_component(_bnb_rocm_root "${_bnb_hip_bin}/.." ABSOLUTE)
find_path(BNB_HIP_INCLUDE_DIR hip/hip_version.h HINTS "${_bnb_rocm_root}/include" NO_DEFAULT_PATH)
if(NOT BNB_HIP_INCLUDE_DIR)
  find_path(BNB_HIP_INCLUDE_DIR hip/hip_version.h)
endif()
if(NOT BNB_HIP_INCLUDE_DIR)
  bnb_fail("bitsandbytes-rocm: hip/hip_version.h not found beside ${BNB_HIPCC}; install the HIP development headers (Debian/Ubuntu: apt install libamdhip64-dev)")
endif()
file(STRINGS "${BNB_HIP_INCLUDE_DIR}/hip/hip_version.h" _bnb_hip_lines REGEX "^#define HIP_VERSION_(MAJOR|MINOR|PATCH) ")
foreach(_part MAJOR MINOR PATCH)
  string(REGEX MATCH "HIP_VERSION_${_part} ([0-9]+)" _match "${_bnb_hip_lines}")
  set(_bnb_hip_${_part} "${CMAKE_MATCH_1}")
endforeach()
set(_bnb_hip_version "${_bnb_hip_MAJOR}.${_bnb_hip_MINOR}.${_bnb_hip_PATCH}")
set(_bnb_major "${_bnb_hip_MAJOR}")
if(_bnb_major LESS 5)
  bnb_fail("bitsandbytes-rocm: needs ROCm 5 or newer, found HIP ${_bnb_hip_version} (${BNB_HIPCC})")
endif()
find_library(BNB_AMDHIP64 amdhip64 HINTS "${_bnb_rocm_root}/lib" "${_bnb_rocm_root}/lib64")
if(NOT BNB_AMDHIP64)
  bnb_fail("bitsandbytes-rocm: libamdhip64 not found beside ${BNB_HIPCC}; install the HIP runtime (Debian/Ubuntu: apt install libamdhip64-dev)")
endif()
# hipcc also drives nvcc (HIP on NVIDIA); this build is for AMD GPUs whatever else is installed.
set(_bnb_hipcc_env "${CMAKE_COMMAND}" -E env HIP_PLATFORM=amd)

# ---- architectures --------------------------------------------------------------------------
set(_bnb_default_archs gfx90a gfx942 gfx950 gfx1100 gfx1101 gfx1200 gfx1201)
set(_bnb_probe "${CMAKE_CURRENT_BINARY_DIR}/arch_probe.hip")
file(WRITE "${_bnb_probe}" "#include <hip/hip_runtime.h>\n__global__ void bnb_probe(float* x) { x[threadIdx.x] = 1.0f; }\n")
# bnb_arch_known(<arch> <out>): hipcc compiles device code for <arch> (compiler and device libraries).
function(bnb_arch_known arch out_var)
  execute_process(COMMAND ${_bnb_hipcc_env} "${BNB_HIPCC}" -x hip --offload-arch=${arch} --cuda-device-only
                          -fsyntax-only "${_bnb_probe}" RESULT_VARIABLE _rc OUTPUT_QUIET ERROR_QUIET)
  if(_rc EQUAL 0)
    set(${out_var} TRUE PARENT_SCOPE)
  else()
    set(${out_var} FALSE PARENT_SCOPE)
  endif()
endfunction()

if(BNB_ROCM_ARCHS STREQUAL "")
  set(_bnb_archs "")
  set(_bnb_dropped "")
  foreach(_a IN LISTS _bnb_default_archs)
    bnb_arch_known(${_a} _known)
    if(_known)
      list(APPEND _bnb_archs ${_a})
    else()
      list(APPEND _bnb_dropped ${_a})
    endif()
  endforeach()
  if(_bnb_dropped)
    message(STATUS "bitsandbytes: HIP ${_bnb_hip_version} does not know ${_bnb_dropped}; left out of the default list")
  endif()
  if(NOT _bnb_archs)
    bnb_fail("bitsandbytes-rocm: ${BNB_HIPCC} (HIP ${_bnb_hip_version}) knows none of the default targets ${_bnb_default_archs}; pass -DBNB_ROCM_ARCHS=<gfx...> (e.g. gfx90a;gfx1030)")
  endif()
else()
  string(REPLACE "," ";" _bnb_archs "${BNB_ROCM_ARCHS}")
  foreach(_a IN LISTS _bnb_archs)
    if(NOT _a MATCHES "^gfx[0-9a-f]+(:[a-z]+[+-])*$")
      bnb_fail("bitsandbytes-rocm: BNB_ROCM_ARCHS entry '${_a}' is not a gfx target like gfx90a")
    endif()
    bnb_arch_known(${_a} _known)
    if(NOT _known)
      bnb_fail("bitsandbytes-rocm: ${BNB_HIPCC} (HIP ${_bnb_hip_version}) cannot compile for ${_a}; use a newer ROCm or drop it from BNB_ROCM_ARCHS")
    endif()
  endforeach()
endif()
list(REMOVE_DUPLICATES _bnb_archs)
message(STATUS "bitsandbytes: rocm${_bnb_major}, HIP ${_bnb_hip_version} (${BNB_HIPCC}), architectures ${_bnb_archs}")

# ---- the kernel library ---------------------------------------------------------------------
set(_bnb_target bitsandbytes_rocm${_bnb_major})
set(_bnb_gen "${CMAKE_CURRENT_BINARY_DIR}/generated_rocm${_bnb_major}")
set(_bnb_arch_flags "")
set(_bnb_arch_json "")
foreach(_a IN LISTS _bnb_archs)
  list(APPEND _bnb_arch_flags "--offload-arch=${_a}")
  if(_bnb_arch_json)
    string(APPEND _bnb_arch_json ", ")
  endif()
  string(APPEND _bnb_arch_json "\"${_a}\"")
endforeach()
if(CMAKE_BUILD_TYPE STREQUAL "Debug")
  set(_bnb_opt -O0 -g)
else()
  set(_bnb_opt -O3 -DNDEBUG)
endif()
# -ffp-contract=off: HIP's clang fuses a * b + c by default; the kernels' results are compared
# bit for bit with the reference, which rounds each operation (as nvcc does with __fmul_rn etc.).
# -Wno-unused-result: HIP marks hipError_t [[nodiscard]]; the sources drop cudaGetLastError()'s
# value on purpose where they only clear a sticky error.
set(_bnb_hip_flags -x hip -std=c++17 ${_bnb_opt} -fPIC -fvisibility=hidden -fvisibility-inlines-hidden
                   -ffp-contract=off -Wall -Werror -Wno-unused-command-line-argument
                   -Wno-unused-result -DBNB_HIP=1
                   ${_bnb_arch_flags} "-I${BNB_INCLUDE_DIR}" "-I${_bnb_gen}" "-I${BNB_CUDA_DIR}/src")
set(_bnb_objects "")
foreach(_src runtime quantize gemm_4bit int8 optimizer paged)
  set(_obj "${CMAKE_CURRENT_BINARY_DIR}/hip_objects/${_src}.o")
  add_custom_command(
    OUTPUT "${_obj}"
    COMMAND ${_bnb_hipcc_env} "${BNB_HIPCC}" ${_bnb_hip_flags} -MD -MF "${_obj}.d" -c "${BNB_CUDA_DIR}/src/${_src}.cu"
            -o "${_obj}"
    DEPENDS "${BNB_CUDA_DIR}/src/${_src}.cu"
    DEPFILE "${_obj}.d"
    COMMENT "hipcc ${_src}.cu (${_bnb_archs})"
    VERBATIM)
  list(APPEND _bnb_objects "${_obj}")
endforeach()
file(MAKE_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}/hip_objects")

add_library(${_bnb_target} SHARED "${BNB_SHARED_DIR}/src/status.cpp" "${BNB_CUDA_DIR}/src/build_info.cpp"
                                  "${CMAKE_CURRENT_SOURCE_DIR}/src/int8_blas.cpp" ${_bnb_objects})
set_source_files_properties(${_bnb_objects} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
bnb_configure_kernel_library(${_bnb_target})
target_include_directories(${_bnb_target} PRIVATE "${_bnb_gen}" "${BNB_CUDA_DIR}/src" "${BNB_HIP_INCLUDE_DIR}")
target_compile_definitions(${_bnb_target} PRIVATE BNB_HIP=1)
# The HIP runtime is linked dynamically and never bundled: a ROCm build of torch (or the ROCm
# install) provides libamdhip64.so.<major>.
target_link_libraries(${_bnb_target} PRIVATE "${BNB_AMDHIP64}" ${CMAKE_DL_LIBS})
target_link_options(${_bnb_target} PRIVATE "-Wl,--no-undefined")
set_target_properties(${_bnb_target} PROPERTIES INSTALL_RPATH "$ORIGIN;$ORIGIN/../torch/lib")

set(_bnb_build_info
    "{\"platform\": \"rocm\", \"version\": \"${BNB_VERSION}\", \"abi_version\": ${BNB_ABI_VERSION}, \"rocm_major\": ${_bnb_major}, \"hip_version\": \"${_bnb_hip_version}\", \"rocm_archs\": [${_bnb_arch_json}], \"library\": \"lib${_bnb_target}.so\", \"host_compiler\": \"${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}\", \"int8_matmul\": \"built-in kernel; the Python glue uses torch._int_mm (hipBLASLt) where it fits\", \"build_type\": \"${CMAKE_BUILD_TYPE}\"}"
)
string(REPLACE "\"" "\\\"" _bnb_build_info_c "${_bnb_build_info}")
file(WRITE "${CMAKE_CURRENT_BINARY_DIR}/build_info_rocm${_bnb_major}.json" "${_bnb_build_info}\n")
file(WRITE "${_bnb_gen}/bnb_build_info.h"
     "// Generated by platforms/rocm/cmake/kernels.cmake.\n#pragma once\n#define BNB_BUILD_INFO_JSON \"${_bnb_build_info_c}\"\n")

set(_bnb_majors ${_bnb_major})
set(_bnb_kernel_${_bnb_major} ${_bnb_target})
set(_bnb_build_info_${_bnb_major} "${CMAKE_CURRENT_BINARY_DIR}/build_info_rocm${_bnb_major}.json")
