# CMake helpers shared by every platform library.

if(NOT CMAKE_BUILD_TYPE AND NOT CMAKE_CONFIGURATION_TYPES)
  set(CMAKE_BUILD_TYPE Release CACHE STRING "Build type" FORCE)
endif()
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(CMAKE_CXX_EXTENSIONS OFF)

get_filename_component(BNB_INCLUDE_DIR "${CMAKE_CURRENT_LIST_DIR}/../include" ABSOLUTE)

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
  target_include_directories(${target} PUBLIC "${BNB_INCLUDE_DIR}")
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
