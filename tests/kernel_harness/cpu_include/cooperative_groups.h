// CPU stand-in for <cooperative_groups.h>: the generated CUDA kernel text aliases the namespace
// (`namespace cg = cooperative_groups;`); the shipped kernels use nothing from it.
#pragma once
namespace cooperative_groups {}
