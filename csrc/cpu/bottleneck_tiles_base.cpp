// The bottleneck block's tile kernels for the baseline instruction set of the build.
#define MESRGAN_CPU_NS base
#include "bottleneck_tiles.h"
