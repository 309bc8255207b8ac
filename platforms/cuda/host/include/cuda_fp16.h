// Stand-in for the CUDA toolkit header of the same name in the CUDA host harness (see ../cuda_host.h).
#pragma once

#include "cuda_host.h"
