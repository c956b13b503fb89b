// Instantiates the recurrence launchers for float storage (one file per type: parallel builds).
#include "cuda/rnn_launch.cuh"

FUSEDRNN_INSTANTIATE_CUDA(float)
