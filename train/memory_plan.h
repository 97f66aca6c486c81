// The memory a training run needs per rank, computed from the configs alone, before anything is
// allocated: the trainer refuses a run whose plan exceeds the memory it has, and `train --plan`
// prints it.
//
// Per rank: the whole model in the compute dtype (data parallel), the trainable tensors'
// gradients (the compute-dtype .grad tensors autograd fills, and this rank's float32 slice of
// their sum), the optimizer's float32 slices (master weights, two moments, decay mask, lr scale),
// the activations one micro-batch keeps for its backward (all layers', or with activation
// checkpointing each layer's input and one layer's full set), and the largest transients (the
// float32 logits, log-probabilities and their gradient over the vocabulary; one layer's
// attention scores). The peak is the largest of loading, the end of the forward pass
// (activations and logits) and the end of the backward pass (every gradient at once), over what
// the process already holds.
//
// Example:
//   TrainConfig train;
//   train.set_seq_len(2048);
//   train.set_micro_batch(1);
//   MemoryPlan plan = PlanTrainingMemory(LlamaConfig(), MoeConfig(), train, /*world_size=*/8,
//                                        /*resident_bytes=*/0);
//   std::cout << plan.Report();  // ... "plan: peak per rank N bytes"
#ifndef LLAMA_MOE_TRAIN_MEMORY_PLAN_H_
#define LLAMA_MOE_TRAIN_MEMORY_PLAN_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/llama_config.h"
#include "moe/moe_config.h"
#include "train/train_config.pb.h"

namespace llama_moe {

struct MemoryPlan {
  int64_t resident = 0;             // what the process holds before the model (libraries, ...)
  int64_t parameters = 0;           // every parameter and buffer, compute dtype
  int64_t trainable_elements = 0;   // elements of the trainable tensors
  int64_t gradients = 0;            // compute-dtype .grad of the trainable tensors
  int64_t gradient_slice = 0;       // float32 slice of the summed gradient, plus one bucket
  int64_t optimizer = 0;            // float32 master, moments, decay mask and lr scale of the slice
  int64_t activations = 0;          // per micro-batch, as configured
  int64_t activations_full = 0;     // per micro-batch without activation checkpointing
  int64_t activations_checkpointed = 0;  // per micro-batch with it
  int64_t temporaries = 0;          // the largest transient tensors
  int64_t loading = 0;              // while loading: the model and one tensor's file pages
  int64_t peak = 0;                 // per rank

  // One line per term, then "plan: peak per rank N bytes".
  std::string Report() const;
};

// The plan of `train` on `world_size` ranks for a model of `cfg` (and `moe`, for an MoE model);
// `resident_bytes` is what the process holds already.
MemoryPlan PlanTrainingMemory(const LlamaConfig& cfg, const std::optional<MoeConfig>& moe, const TrainConfig& train,
                              int world_size, int64_t resident_bytes);

// This process's resident set now, in bytes.
int64_t ResidentBytes();

// The most memory the caching allocator of GPU `device_index` has held in tensors since the process
// started (what the plan's peak predicts on a GPU); an error without a CUDA build.
absl::StatusOr<int64_t> PeakDeviceBytes(int device_index);

// Memory one rank may use: on the CPU the host's available memory shared by `ranks_per_host`
// ranks; on a GPU the device's free memory.
absl::StatusOr<int64_t> AvailableMemory(bool cuda, int device_index, int ranks_per_host);

// An error naming the plan, the memory there is and the knobs that would make it fit when
// plan.peak exceeds `available`.
absl::Status CheckPlanFits(const MemoryPlan& plan, int64_t available, const TrainConfig& train, int world_size);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_MEMORY_PLAN_H_
