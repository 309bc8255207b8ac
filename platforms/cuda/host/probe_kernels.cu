// Kernels that test the CUDA host harness itself (compiled into the harness module only, never
// into a wheel): one correct block reduction, and launches a GPU would run into undefined
// behaviour or refuse. tests/test_cuda_host_harness.py calls bnb_cuda_host_probe through ctypes
// and expects each misuse to fail its launch with a status and a message, as a kernel fault
// reaches a caller of the C ABI on a GPU (check_launch).
#include "common.cuh"

namespace bnb_cuda {
namespace {

// Correct: the block's max |x| through the shared reduction (warp shuffles and shared memory).
__global__ void absmax_kernel(const float* x, int n, float* out) {
  __shared__ float scratch[1024 / bnb::kWarpSize];
  float m = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) m = bnb::nan_max_abs(m, x[i]);
  m = bnb::block_absmax(m, scratch);
  if (threadIdx.x == 0) *out = m;
}

// A barrier that only some threads reach.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 5) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// A warp reduction in control flow that splits the warp.
__global__ void divergent_shuffle_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % bnb::kWarpSize < 3) v = bnb::warp_sum(v);
  out[threadIdx.x] = v;
}

// Reads shared memory that another block or launch wrote (block 0 writes when write != 0):
// undefined on a GPU. out[b]: what block b read.
__global__ void stale_shared_kernel(int write, float* out) {
  __shared__ float cell[4];
  if (write && blockIdx.x == 0 && threadIdx.x == 0) cell[1] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) out[blockIdx.x] = cell[1];
}

// A write and a read of shared memory by two threads with no barrier between (a missing
// __syncthreads): thread `writer` writes, thread `reader` reads. out[b]: what block b read.
__global__ void missing_barrier_kernel(unsigned int writer, unsigned int reader, float* out) {
  __shared__ float cell[1];
  if (threadIdx.x == writer) cell[0] = 2.0f;
  if (threadIdx.x == reader) out[blockIdx.x] = cell[0];
}

// Writes element `at` of a thread's local array of 4 after a barrier and a shuffle (the thread
// has been suspended and resumed twice): out of bounds for at >= 4, which AddressSanitizer must
// report as it would on a thread's own stack. out[t]: the element read back.
__global__ void local_array_kernel(int at, float* out) {
  volatile float local[4] = {0.0f, 1.0f, 2.0f, 3.0f};
  __syncthreads();
  const float v = bnb::shfl_xor(local[1], 1);
  __syncthreads();
  volatile float* slot = local + at;
  asm("" : "+r"(slot));  // hides the array from UBSan's bounds and object-size checks: ASan's to find
  if (threadIdx.x == 1) *slot = v;
  out[threadIdx.x] = local[at < 4 ? at : 0];
}

// Each block takes a ticket from a counter: out[b] is block b's place in the launch's order.
__global__ void block_order_kernel(float* counter, float* out) {
  if (threadIdx.x == 0) out[blockIdx.x] = atomicAdd(counter, 1.0f);
}

// Two warps: each thread reads the slot of its counterpart in the other warp, passes a shuffle
// with its own warp, then overwrites its own slot, with no barrier between the other warp's read
// and this write (a missing __syncthreads). A warp that runs ahead through the shuffle overwrites
// before the other warp reads. out[block * blockDim.x + t]: what thread t of the block read.
__global__ void warp_run_ahead_kernel(float* out) {
  __shared__ float slot[2 * bnb::kWarpSize];
  const unsigned int other = (threadIdx.x + bnb::kWarpSize) % (2 * bnb::kWarpSize);
  slot[threadIdx.x] = 1.0f;
  __syncthreads();
  const float seen = slot[other];
  const float passed = bnb::shfl_xor(seen, 1);  // a point the warp passes together, not a barrier
  slot[threadIdx.x] = 2.0f;
  out[blockIdx.x * blockDim.x + threadIdx.x] = passed == seen ? seen : -1.0f;
}

// Writes element threadIdx.x of a __shared__ array of 32 through a pointer (as the kernels' helpers
// take their scratch): past it for a block of more threads.
__global__ void shared_overflow_kernel(float* out) {
  __shared__ float cell[32];
  float* slot = cell + threadIdx.x;
  asm("" : "+r"(slot));  // hides the array from UBSan's bounds check: ASan's to find
  *slot = 1.0f;
  __syncthreads();
  out[threadIdx.x] = cell[threadIdx.x % 32];
}

// Each block adds its index to *sum with a plain load and store (a missing atomicAdd), or with
// atomicAdd if `atomic`: blocks running at once lose updates on a GPU, which a run of one block
// after another never does.
__global__ void block_sum_kernel(int atomic, float* sum) {
  if (threadIdx.x != 0) return;
  if (atomic) {
    atomicAdd(sum, static_cast<float>(blockIdx.x));
  } else {
    *sum += static_cast<float>(blockIdx.x);
  }
}

// The NaN bits of the f32 intrinsics and of the f16 conversion, one thread: out[0] = x[0] * 1
// (x[0] a NaN with a payload), out[1] = x[1] - x[1] (x[1] infinite: an invalid operation), out[2]
// = the f16 bits of x[0] converted.
__global__ void nan_bits_kernel(const float* x, float* out) {
  out[0] = __fmul_rn(x[0], 1.0f);
  out[1] = __fsub_rn(x[1], x[1]);
  out[2] = static_cast<float>(__float2half_rn(x[0]).x);
}

}  // namespace
}  // namespace bnb_cuda

using namespace bnb_cuda;

// which: 0 the correct reduction over x[0..n) with `threads` threads (result in *out), 1 a
// divergent barrier, 2 a divergent warp shuffle, 3 the correct kernel with a block of `threads`
// threads (too many: an invalid configuration), 4 two blocks reading shared memory that block 0
// wrote if n != 0, 5 / 6 two blocks where thread 0 writes shared memory for the last thread (5)
// or the last for thread 0 (6) with no barrier between (out[b]: what block b read), 7 one block
// writing element n of a local array of 4 (out of bounds for n >= 4), 8 `threads` blocks of one
// thread taking tickets from x[0] (out[b]: block b's place in the order), 9 two blocks of
// threads / 2 threads (two warps) racing over shared memory across a shuffle (see
// warp_run_ahead_kernel; out: what each thread read), 10 one block of `threads` threads writing
// element threadIdx.x of a __shared__ array of 32 (past it for threads > 32), 11 `threads` blocks
// adding their indices to out[0], through atomicAdd if n != 0, else with a plain += (a race
// between blocks: ThreadSanitizer's to report), 12 the NaN bits of the intrinsics (see
// nan_bits_kernel; x: a NaN and an infinity). Returns the
// status the C ABI would return; bnb_last_error() holds the message.
extern "C" BNB_API int32_t bnb_cuda_host_probe(int32_t which, const float* x, int32_t n, int32_t threads, float* out) {
  switch (which) {
    case 0:
    case 3:
      absmax_kernel<<<1, threads>>>(x, n, out);
      break;
    case 1:
      divergent_barrier_kernel<<<1, threads>>>(out);
      break;
    case 2:
      divergent_shuffle_kernel<<<1, threads>>>(out);
      break;
    case 4:
      stale_shared_kernel<<<2, threads>>>(n, out);
      break;
    case 5:
      missing_barrier_kernel<<<2, threads>>>(0, threads - 1, out);
      break;
    case 6:
      missing_barrier_kernel<<<2, threads>>>(threads - 1, 0, out);
      break;
    case 7:
      local_array_kernel<<<1, threads>>>(n, out);
      break;
    case 8:
      block_order_kernel<<<threads, 1>>>(const_cast<float*>(x), out);
      break;
    case 9:
      if (threads != 4 * bnb::kWarpSize) return fail(BNB_ERR_INVALID_ARGUMENT, "probe 9 takes 4 warps of threads");
      warp_run_ahead_kernel<<<2, threads / 2>>>(out);
      break;
    case 10:
      shared_overflow_kernel<<<1, threads>>>(out);
      break;
    case 11:
      block_sum_kernel<<<threads, bnb::kWarpSize>>>(n, out);
      break;
    case 12:
      nan_bits_kernel<<<1, 1>>>(x, out);
      break;
    default:
      return fail(BNB_ERR_INVALID_ARGUMENT, "unknown probe %d", which);
  }
  return check_launch("bnb_cuda_host_probe");
}
