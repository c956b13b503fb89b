# Per-file instruction-set flags for the CPU kernels (included by the top-level
# CMakeLists.txt after target _C exists). Never -march=native: the module must load and
# run on any x86-64 (run-time dispatch in kernels_generic.cpp) and build on ARM.
set(_fusedrnn_cpu_dir ${CMAKE_CURRENT_LIST_DIR})
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|x86|i[3-6]86)$")
  set_source_files_properties(${_fusedrnn_cpu_dir}/kernels_avx512.cpp PROPERTIES
    COMPILE_OPTIONS "-mavx512f;-mavx512dq;-mavx512vl;-mavx512bw;-mavx2;-mfma;-Wno-maybe-uninitialized")
  set_source_files_properties(${_fusedrnn_cpu_dir}/kernels_avx2.cpp PROPERTIES
    COMPILE_OPTIONS "-mavx2;-mfma")
  # The bfloat16 table (AVX512_BF16 dot products): GCC >= 10 and Clang >= 9 have the flag;
  # with an older compiler the table is left out and bfloat16 layers compute in float32.
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag("-mavx512bf16" FUSEDRNN_HAVE_AVX512BF16_FLAG)
  if(FUSEDRNN_HAVE_AVX512BF16_FLAG)
    set_source_files_properties(${_fusedrnn_cpu_dir}/kernels_avx512bf16.cpp PROPERTIES
      COMPILE_OPTIONS
        "-mavx512f;-mavx512dq;-mavx512vl;-mavx512bw;-mavx512bf16;-mavx2;-mfma;-Wno-maybe-uninitialized")
  else()
    set_source_files_properties(${_fusedrnn_cpu_dir}/kernels_avx512bf16.cpp
      ${_fusedrnn_cpu_dir}/kernels_generic.cpp PROPERTIES COMPILE_DEFINITIONS FUSEDRNN_NO_BF16=1)
  endif()
endif()
# Contraction would turn the generic kernel's a*b+c into fma in some copies and not in
# others; keep every copy of an element's computation the same.
set_source_files_properties(${_fusedrnn_cpu_dir}/kernels_generic.cpp PROPERTIES
  COMPILE_OPTIONS "-ffp-contract=off")

# thread_team.cpp looks up the OpenMP runtime already loaded in the process (dlopen with
# RTLD_NOLOAD, never a second copy): needs libdl where it is not part of libc.
if(TARGET _C)
  target_link_libraries(_C PRIVATE ${CMAKE_DL_LIBS})
endif()
