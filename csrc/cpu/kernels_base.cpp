// The CPU kernels for the baseline instruction set of the build.
#define MESRGAN_CPU_NS base
#include "kernels.h"
