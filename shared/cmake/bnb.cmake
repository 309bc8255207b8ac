# CMake helpers shared by every platform library.

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)

get_filename_component(BNB_INCLUDE_DIR "${CMAKE_CURRENT_LIST_DIR}/../include" ABSOLUTE)

# BNB_ABI_VERSION: the C ABI version, read from the one place it is defined (bnb_c_api.h).
file(STRINGS "${BNB_INCLUDE_DIR}/bnb/bnb_c_api.h" _bnb_abi_line REGEX "^#define BNB_ABI_VERSION [0-9]+")
string(REGEX REPLACE "^#define BNB_ABI_VERSION ([0-9]+).*" "\\1" BNB_ABI_VERSION "${_bnb_abi_line}")

# bnb_read_version(<file> <out-var>): the __version__ string of a _version.py file.
function(bnb_read_version file out_var)
  file(STRINGS "${file}" _line REGEX "^__version__ *= *\"[^\"]+\"")
  if(NOT _line)
    message(FATAL_ERROR "bitsandbytes: no __version__ found in ${file}")
  endif()
  string(REGEX REPLACE "^__version__ *= *\"([^\"]+)\".*" "\\1" _version "${_line}")
  set(${out_var} "${_version}" PARENT_SCOPE)
endfunction()

# bnb_configure_kernel_library(<target>): include path, hidden visibility (only BNB_API
# symbols are exported), warnings.
function(bnb_configure_kernel_library target)
  target_include_directories(${target} PUBLIC "$<BUILD_INTERFACE:${BNB_INCLUDE_DIR}>")
  set_target_properties(${target} PROPERTIES CXX_VISIBILITY_PRESET hidden C_VISIBILITY_PRESET hidden
                                             VISIBILITY_INLINES_HIDDEN ON POSITION_INDEPENDENT_CODE ON)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -ffp-contract=off>)
  endif()
endfunction()

# bnb_set_origin_rpath(<target>): find sibling shared libraries next to the module.
function(bnb_set_origin_rpath target)
  if(APPLE)
    set_target_properties(${target} PROPERTIES INSTALL_RPATH "@loader_path")
  elseif(UNIX)
    set_target_properties(${target} PROPERTIES INSTALL_RPATH "$ORIGIN")
  endif()
endfunction()

# ---- Configure-time checks: each failure is one line naming what is missing and how to get it ----

# bnb_fail(<text>): stop configuring with one unwrapped line (CMake leaves a message line that
# starts with a space as it is, instead of re-wrapping it at 80 columns).
function(bnb_fail text)
  message(FATAL_ERROR " ${text}")
endfunction()

# The platforms a build can target; each is a folder platforms/<name> with its own project.
set(BNB_KNOWN_PLATFORMS cpu cuda rocm xpu hpu mps)

# bnb_check_platform(<name>): <name> must be a known platform, and a -DBNB_PLATFORM=<p> given to
# this folder must name it (a packager who asks the cpu folder for rocm gets told where rocm is).
function(bnb_check_platform name)
  if(NOT name IN_LIST BNB_KNOWN_PLATFORMS)
    bnb_fail("bitsandbytes: unknown platform '${name}'; known platforms: ${BNB_KNOWN_PLATFORMS}")
  endif()
  if(DEFINED BNB_PLATFORM AND NOT BNB_PLATFORM STREQUAL "" AND NOT BNB_PLATFORM STREQUAL name)
    if(NOT BNB_PLATFORM IN_LIST BNB_KNOWN_PLATFORMS)
      string(REPLACE ";" ", " _known "${BNB_KNOWN_PLATFORMS}")
      bnb_fail("bitsandbytes: unknown platform '${BNB_PLATFORM}' (BNB_PLATFORM); choose one of ${_known}")
    endif()
    bnb_fail("bitsandbytes: this folder builds '${name}', not '${BNB_PLATFORM}'; configure platforms/${BNB_PLATFORM} instead")
  endif()
endfunction()

# bnb_require_language(<lang> <how-to-get-it>): enable <lang> (C, CXX, CUDA, HIP) or stop with one line.
# A macro: enable_language must run in the directory's scope.
macro(bnb_require_language lang hint)
  include(CheckLanguage)
  check_language(${lang})
  if(NOT CMAKE_${lang}_COMPILER)
    bnb_fail("bitsandbytes: no working ${lang} compiler found; install ${hint}")
  endif()
  enable_language(${lang})
endmacro()

# bnb_check_cuda_major(<major>): after enable_language(CUDA), the toolkit's major version must be
# the one the distribution is named for (bitsandbytes-cuda<major>x).
function(bnb_check_cuda_major major)
  string(REGEX MATCH "^[0-9]+" _found "${CMAKE_CUDA_COMPILER_VERSION}")
  if(NOT _found STREQUAL "${major}")
    bnb_fail("bitsandbytes: BNB_CUDA_MAJOR=${major} but ${CMAKE_CUDA_COMPILER} is CUDA ${CMAKE_CUDA_COMPILER_VERSION}; install CUDA ${major}.x and set CUDACXX (or -DCMAKE_CUDA_COMPILER) to its nvcc")
  endif()
endfunction()

# ---- Reusing one kernel library for every Python version ----

# bnb_import_kernel_library(<name> <prefix> <version> <out-target>): find the kernel library a C-only
# build installed under <prefix> (its CMake package) and check it has this very version.
function(bnb_import_kernel_library name prefix version out_var)
  find_package(${name} CONFIG QUIET PATHS "${prefix}" NO_DEFAULT_PATH)
  if(NOT ${name}_FOUND)
    bnb_fail("bitsandbytes: BNB_KERNEL_LIBRARY_DIR=${prefix} holds no ${name} CMake package; build it first: cmake -S <platform> -B <build> -DBNB_BUILD_PYTHON=OFF && cmake --build <build> && cmake --install <build> --prefix ${prefix}")
  endif()
  if(NOT ${name}_BNB_VERSION STREQUAL version)
    bnb_fail("bitsandbytes: the kernel library in ${prefix} is version ${${name}_BNB_VERSION}, this build is ${version}; rebuild it")
  endif()
  message(STATUS "bitsandbytes: linking the prebuilt kernel library bitsandbytes::${name} from ${prefix}")
  set(${out_var} "bitsandbytes::${name}" PARENT_SCOPE)
endfunction()

# bnb_install_kernel_library_in_package(<target> <package>): the kernel library into the Python
# package's folder, beside the pybind11 module: installed as built here, or, for one imported from
# a C-only build (BNB_KERNEL_LIBRARY_DIR / _DIRS, bnb_import_kernel_library), its file as it is.
function(bnb_install_kernel_library_in_package target package)
  get_target_property(_imported ${target} IMPORTED)
  if(_imported)
    install(FILES "$<TARGET_FILE:${target}>" DESTINATION ${package})
  else()
    install(TARGETS ${target} LIBRARY DESTINATION ${package} RUNTIME DESTINATION ${package})
  endif()
endfunction()

# bnb_install_kernel_library(<target> <version> <description>): the C-only install of a platform:
# the library, include/bnb/bnb_c_api.h, lib/cmake/<target>/ (exported target bitsandbytes::<target>)
# and lib/pkgconfig/<target>.pc. Both package files are relocatable: a staging prefix works.
function(bnb_install_kernel_library target version description)
  include(GNUInstallDirs)
  include(CMakePackageConfigHelpers)
  target_include_directories(${target} INTERFACE "$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>")
  install(TARGETS ${target} EXPORT ${target}Targets
          LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
          RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  install(FILES "${BNB_INCLUDE_DIR}/bnb/bnb_c_api.h" DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/bnb)

  set(_cmakedir "${CMAKE_INSTALL_LIBDIR}/cmake/${target}")
  install(EXPORT ${target}Targets NAMESPACE bitsandbytes:: DESTINATION "${_cmakedir}")
  file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/${target}Config.cmake" @ONLY CONTENT
"# CMake package of @target@ (bitsandbytes @version@): the imported target bitsandbytes::@target@.
include(\"\${CMAKE_CURRENT_LIST_DIR}/@target@Targets.cmake\")
set(@target@_BNB_VERSION \"@version@\")
")
  # CMake versions are numeric: 1.0.0.dev0 is published as 1.0.0 (the exact one is <target>_BNB_VERSION).
  string(REGEX MATCH "^[0-9]+(\\.[0-9]+)*" _numeric "${version}")
  write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/${target}ConfigVersion.cmake"
                                   VERSION ${_numeric} COMPATIBILITY SameMajorVersion)
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/${target}Config.cmake"
                "${CMAKE_CURRENT_BINARY_DIR}/${target}ConfigVersion.cmake" DESTINATION "${_cmakedir}")

  file(RELATIVE_PATH _up "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
  string(REGEX REPLACE "/$" "" _up "${_up}")
  file(CONFIGURE OUTPUT "${CMAKE_CURRENT_BINARY_DIR}/${target}.pc" @ONLY CONTENT
"prefix=\${pcfiledir}/@_up@
libdir=\${prefix}/@CMAKE_INSTALL_LIBDIR@
includedir=\${prefix}/@CMAKE_INSTALL_INCLUDEDIR@

Name: @target@
Description: @description@
Version: @version@
Libs: -L\${libdir} -l@target@
Cflags: -I\${includedir}
")
  install(FILES "${CMAKE_CURRENT_BINARY_DIR}/${target}.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
endfunction()
