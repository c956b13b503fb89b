// Instantiates the recurrence launchers for __nv_bfloat16 storage (one file per type: parallel
// builds).
#include "cuda/rnn_launch.cuh"

FUSEDRNN_INSTANTIATE_CUDA(__nv_bfloat16)
