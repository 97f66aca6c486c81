// AdamW with float32 master weights, optimizer state and gradients sharded across
// data-parallel ranks (ZeRO stage 2).
//
// The trainable parameters (any compute dtype, e.g. bfloat16) are viewed as one flat vector of
// N elements, padded to a multiple of the world size W. Rank r owns the slice
// [r*N/W, (r+1)*N/W): only there does it keep float32 master weights, the two moments and the
// float32 gradient, so every per-element float32 buffer falls as 1/W and no tensor of all N
// elements in float32 exists on any rank. The flat vector is moved in buckets: bucket b is the
// b-th chunk of every rank's slice (about bucket_bytes in all), so that one reduce-scatter (or,
// where the backend has none, an all-reduce of which each rank keeps its chunk) brings every
// rank its part. A step is:
//   AccumulateGradients()  after each micro-batch: bucket by bucket, the parameters' gradients
//                          are converted to float32, summed over ranks, and each rank adds its
//                          chunk into its float32 gradient slice; the parameter grads are freed;
//   GradientNorm()         the global L2 norm of the summed gradient;
//   Step(lr, clip, norm)   updates this rank's slice, then gathers the updated slices bucket by
//                          bucket into the compute-dtype parameters.
// Decoupled weight decay applies to matrices (dim >= 2) only, never to norms or biases.
//
// Example:
//   at::Tensor w = at::randn({4, 8}).requires_grad_();
//   ASSIGN_OR_RETURN(auto comm, Communicator::Create(DistEnv(), c10::kCPU, std::chrono::seconds(60)));
//   ShardedAdamW opt({{"w", w}}, comm.get(), AdamWOptions());
//   for (int micro = 0; micro < 2; ++micro) {
//     (w * w).sum().backward();
//     RETURN_IF_ERROR(opt.AccumulateGradients());
//   }
//   ASSIGN_OR_RETURN(double norm, opt.GradientNorm());
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
  int64_t bucket_bytes = 25 << 20;  // float32 bytes moved per collective, all ranks' chunks, e.g. 25 MiB
};

class ShardedAdamW {
 public:
  // `params` in a fixed order that every rank shares (name, parameter).
  // `lr_scales` (optional, one per parameter) multiplies the learning rate of that parameter,
  // e.g. 0.1 for router weights.
  ShardedAdamW(std::vector<std::pair<std::string, at::Tensor>> params, Communicator* comm,
               const AdamWOptions& options, const std::vector<double>& lr_scales = {});

  // Sums every parameter's .grad() over ranks into this rank's float32 gradient slice (bucket by
  // bucket) and clears the grads. Called after each micro-batch's backward, on every rank.
  absl::Status AccumulateGradients();
  // The global L2 norm of the accumulated gradient.
  absl::StatusOr<double> GradientNorm();
  // One AdamW step with learning rate `lr` on gradients clipped to `max_norm` (<= 0: no
  // clipping) given their norm; zeroes the gradient slice.
  absl::Status Step(double lr, double max_norm, double grad_norm);

  int64_t num_elements() const { return numel_; }
  int64_t shard_elements() const { return shard_; }
  int64_t step() const { return step_; }
  // Bytes of optimizer state held by this rank (master + two moments).
  int64_t state_bytes() const { return 3 * shard_ * 4; }
  // Bytes of this rank's float32 buffers that live as long as the optimizer: the state, the
  // gradient slice, and the per-element weight-decay mask and learning-rate scale.
  int64_t resident_bytes() const { return 6 * shard_ * 4; }
  // Bytes of the largest transient buffer of a collective (one bucket of all ranks' chunks).
  int64_t bucket_bytes() const { return comm_->world_size() * chunk_ * 4; }

  // This rank's state for checkpoints: "master", "exp_avg", "exp_avg_sq" [shard] float32 and
  // "step" [1] int64; restored with LoadState (same parameters and world size).
  std::map<std::string, at::Tensor> State() const;
  absl::Status LoadState(const std::map<std::string, at::Tensor>& state);

 private:
  // Elements of the slice one step of the update handles at a time.
  static constexpr int64_t kStepChunk = int64_t{1} << 22;

  // Calls fn(parameter index, offset in the parameter, offset in [lo, hi), count) for every
  // parameter piece inside the flat range [lo, hi).
  template <typename F>
  void ForEachPiece(int64_t lo, int64_t hi, const F& fn) const;
  // Elements of bucket b's chunk (the last one may be shorter).
  int64_t ChunkLength(int64_t b) const;
  // Gathers every rank's master slice into the parameters, bucket by bucket.
  absl::Status GatherMasterIntoParams();

  std::vector<std::pair<std::string, at::Tensor>> params_;
  std::vector<int64_t> offsets_;  // start of each parameter in the flat vector; then numel_
  Communicator* comm_;
  AdamWOptions options_;
  int64_t numel_ = 0, padded_ = 0, shard_ = 0, begin_ = 0, step_ = 0;
  int64_t chunk_ = 0;    // elements of a rank's slice per bucket
  int64_t buckets_ = 0;  // buckets per step
  at::Tensor grad_;      // [shard] float32: this rank's slice of the summed gradient
  at::Tensor master_, m_, v_;  // [shard] float32
  at::Tensor decay_mask_;  // [shard] float32: 1 where weight decay applies
  at::Tensor lr_scale_;    // [shard] float32: per-element learning-rate factor
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_SHARDED_ADAMW_H_
