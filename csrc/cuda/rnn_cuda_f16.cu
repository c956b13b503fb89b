// Instantiates the recurrence launchers for __half storage (one file per type: parallel builds).
#include "cuda/rnn_launch.cuh"

FUSEDRNN_INSTANTIATE_CUDA(__half)
