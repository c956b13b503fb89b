// Instantiates the recurrence launchers for double storage (one file per type: parallel builds).
#include "cuda/rnn_launch.cuh"

FUSEDRNN_INSTANTIATE_CUDA(double)
