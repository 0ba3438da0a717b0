// CPU stand-in for MLX's device utils.cuh, included by the generated CUDA kernel text:
// the harness runs that text unchanged with g++ on top of cuda_shim.h.
#pragma once
#include "cuda_shim.h"
