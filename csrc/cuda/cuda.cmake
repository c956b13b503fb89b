# fusedrnn._C_cuda: the CUDA recurrence kernels as their own Python extension module, so
# the CPU module fusedrnn._C never depends on CUDA libraries. Included by the top-level
# CMakeLists.txt after check_language(CUDA) found a compiler.
#
# The CUDA runtime is linked statically: the module needs only the driver (libcuda, loaded
# at run time), so `import fusedrnn._C_cuda` works without a CUDA toolkit, and on a machine
# without a driver the kernel calls raise RuntimeError instead of the import failing.

# Fixed default architectures (never `native`: the build machine may have no GPU):
# sm_80 code (A100, and the sm_86/89 cards run it), sm_90 code (H100/H200), and compute_90
# PTX for newer GPUs to JIT. Set CMAKE_CUDA_ARCHITECTURES or CUDAARCHS to override.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "80-real;90-real;90-virtual")
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
set(CMAKE_CUDA_EXTENSIONS OFF)

set(FUSEDRNN_CUDA_SOURCES
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/bindings_cuda.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/rnn_cuda.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/rnn_cuda_f32.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/rnn_cuda_f64.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/rnn_cuda_bf16.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/rnn_cuda_f16.cu)
pybind11_add_module(_C_cuda MODULE WITH_SOABI ${FUSEDRNN_CUDA_SOURCES})
target_include_directories(_C_cuda PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
set_target_properties(_C_cuda PROPERTIES
  CUDA_RUNTIME_LIBRARY Static
  CUDA_SEPARABLE_COMPILATION OFF
  POSITION_INDEPENDENT_CODE ON)

# built_archs() reports what this module holds; commas, since ';' would split the define.
string(REPLACE ";" "," FUSEDRNN_CUDA_ARCHS_STRING "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_definitions(_C_cuda PRIVATE FUSEDRNN_CUDA_ARCHS="${FUSEDRNN_CUDA_ARCHS_STRING}")

# Host code: the project's warnings. Device code: nvcc's own warnings, and ptxas reports
# spills and local-memory use (a spilling persistent kernel is a performance bug).
# No --use_fast_math: the kernels are tested against float64 references. (Not
# missing-launch-bounds: nvcc 13.0 reports it for every template kernel, bounds or not.)
target_compile_options(_C_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:${FUSEDRNN_WARNINGS}>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-warn-spills,-warn-lmem-usage>
  $<$<COMPILE_LANGUAGE:CUDA>:--Werror=default-stream-launch,cross-execution-space-call>)
if(FUSEDRNN_WERROR)
  target_compile_options(_C_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:--Werror=all-warnings>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xptxas=-Werror>)
endif()

install(TARGETS _C_cuda DESTINATION fusedrnn)
message(STATUS "fusedrnn: CUDA architectures ${CMAKE_CUDA_ARCHITECTURES}")
