// AdamW with float32 master weights and optimizer state sharded across data-parallel ranks
// (ZeRO stage 1).
//
// The trainable parameters (any compute dtype, e.g. bfloat16) are viewed as one flat float32
// vector of N elements, padded to a multiple of the world size W. Each rank owns the slice
// [r*N/W, (r+1)*N/W): only there does it keep master weights and the two moments, so optimizer
// memory per rank falls as 1/W. A step is:
//   AccumulateGradients()  after each micro-batch: parameter grads are added into a float32
//                          flat buffer (accumulation in float32 even for bfloat16 compute);
//   ReduceGradients()      all-reduces that buffer in buckets and returns the global L2 norm;
//   Step(lr, clip)         updates this rank's slice, all-gathers the updated master slices and
//                          copies them into the parameters.
// Decoupled weight decay applies to matrices (dim >= 2) only, never to norms or biases.
//
// Example:
//   at::Tensor w = at::randn({4, 8}).requires_grad_();
//   ASSIGN_OR_RETURN(auto comm, Communicator::Create(DistEnv(), c10::kCPU, std::chrono::seconds(60)));
//   ShardedAdamW opt({{"w", w}}, comm.get(), AdamWOptions());
//   for (int micro = 0; micro < 2; ++micro) {
//     (w * w).sum().backward();
//     opt.AccumulateGradients();
//   }
//   ASSIGN_OR_RETURN(double norm, opt.ReduceGradients());
//   RETURN_IF_ERROR(opt.Step(/*lr=*/1e-4, /*max_norm=*/1.0, norm));
#ifndef LLAMA_MOE_TRAIN_SHARDED_ADAMW_H_
#define LLAMA_MOE_TRAIN_SHARDED_ADAMW_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "train/distributed.h"

namespace llama_moe {

struct AdamWOptions {
  double beta1 = 0.9;          // e.g. 0.9
  double beta2 = 0.95;         // e.g. 0.95
  double eps = 1e-8;           // e.g. 1e-8
  double weight_decay = 0.1;   // decoupled, matrices only, e.g. 0.1
  int64_t bucket_bytes = 25 << 20;  // gradient all-reduce bucket, e.g. 25 MiB
};

class ShardedAdamW {
 public:
  // `params` in a fixed order that every rank shares (name, parameter).
  // `lr_scales` (optional, one per parameter) multiplies the learning rate of that parameter,
  // e.g. 0.1 for router weights.
  ShardedAdamW(std::vector<std::pair<std::string, at::Tensor>> params, Communicator* comm,
               const AdamWOptions& options, const std::vector<double>& lr_scales = {});

  // Adds every parameter's .grad() into the float32 flat buffer and clears the grads.
  void AccumulateGradients();
  // Sums the flat gradient over ranks (bucketed) and returns its global L2 norm.
  absl::StatusOr<double> ReduceGradients();
  // One AdamW step with learning rate `lr` on gradients clipped to `max_norm` (<= 0: no
  // clipping) given their norm; zeroes the gradient buffer.
  absl::Status Step(double lr, double max_norm, double grad_norm);

  int64_t num_elements() const { return numel_; }
  int64_t shard_elements() const { return shard_; }
  int64_t step() const { return step_; }
  // Bytes of optimizer state held by this rank (master + two moments).
  int64_t state_bytes() const { return 3 * shard_ * 4; }

  // This rank's state for checkpoints: "master", "exp_avg", "exp_avg_sq" [shard] float32 and
  // "step" [1] int64; restored with LoadState (same parameters and world size).
  std::map<std::string, at::Tensor> State() const;
  absl::Status LoadState(const std::map<std::string, at::Tensor>& state);

 private:
  // All-gathers the master slices and copies them into the parameters.
  absl::Status GatherMasterIntoParams();

  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<int64_t> offsets_;  // start of each parameter in the flat vector
  Communicator* comm_;
  AdamWOptions options_;
  int64_t numel_ = 0, padded_ = 0, shard_ = 0, begin_ = 0, step_ = 0;
  at::Tensor grad_;        // [padded] float32, full (all-reduced) gradient
  at::Tensor master_, m_, v_;  // [shard] float32
  at::Tensor decay_mask_;  // [shard] float32: 1 where weight decay applies
  at::Tensor lr_scale_;    // [shard] float32: per-element learning-rate factor
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_SHARDED_ADAMW_H_
