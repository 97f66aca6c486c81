#include "train/memory_plan.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/llama_layout.h"
#include "moe/moe_layout.h"
#include "train/distill.h"
#include "train/trainable.h"

#if defined(LLAMA_MOE_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

namespace llama_moe {
namespace {

int64_t Numel(const TensorSpec& s) {
  int64_t n = 1;
  for (int64_t d : s.shape) n *= d;
  return n;
}

std::string Gib(int64_t bytes) { return absl::StrFormat("%.2f GiB", bytes / double(int64_t{1} << 30)); }

// Bytes one decoder layer keeps for its backward, for B sequences of T tokens (N = B*T) in a
// compute dtype of c bytes: what each op saves (see model/llama_model.cc and moe/dispatch.cc).
int64_t LayerActivations(const LlamaConfig& cfg, const std::optional<MoeConfig>& moe, int64_t B, int64_t T, int64_t c) {
  const int64_t N = B * T, H = cfg.hidden_size, D = cfg.head_dim;
  const int64_t nh = cfg.num_attention_heads, nkv = cfg.num_key_value_heads;
  // Two RMSNorms: the float32 input and the normed output.
  int64_t bytes = 2 * N * H * (4 + c);
  // Attention: grouped queries (a copy), keys and values after RoPE, the merged output; the
  // float32 softmax and its compute-dtype copy over [B, heads, T, T].
  bytes += c * N * D * (2 * nh + 2 * nkv) + B * nh * T * T * (4 + c);
  if (!moe) return bytes + 4 * N * cfg.intermediate_size * c;  // gate, silu, up, product
  // MoE: the router's float32 logits and scores, the dispatch's gate/up pre-activations of every
  // (token, slot) pair, its permutation and the sorted gate weights.
  const int64_t E = moe->num_experts(), K = moe->top_k, Ie = moe->expert_intermediate_size;
  return bytes + 3 * N * E * 4 + 2 * N * K * Ie * c + N * K * (8 + 8 + 4);
}

}  // namespace

MemoryPlan PlanTrainingMemory(const LlamaConfig& cfg, const std::optional<MoeConfig>& moe, const TrainConfig& train,
                              int world_size, int64_t resident_bytes) {
  const int64_t c = train.dtype() == "float32" ? 4 : 2;
  MemoryPlan p;
  p.resident = resident_bytes;
  const std::vector<TensorSpec> specs = moe ? MoeTensorSpecs(cfg, *moe, DType::kBF16) : LlamaTensorSpecs(cfg, DType::kBF16);
  int64_t largest = 0;
  for (const TensorSpec& s : specs) {
    const MoeTensorRole role = MoeTensorRoleOf(s.name);
    p.parameters += Numel(s) * (role == MoeTensorRole::kRouterBias ? 4 : c);
    largest = std::max(largest, Numel(s) * c);
    if (Trains(role, train.trainable())) p.trainable_elements += Numel(s);
  }
  const int64_t W = std::max(1, world_size);
  const int64_t slice = (p.trainable_elements + W - 1) / W;
  p.gradients = p.trainable_elements * c;
  const int64_t bucket = std::min<int64_t>(int64_t{train.bucket_mb()} << 20, slice * W * 4);
  p.gradient_slice = slice * 4 + bucket;
  p.optimizer = 5 * slice * 4;

  const int64_t B = train.micro_batch(), T = train.seq_len(), N = B * T, L = cfg.num_hidden_layers;
  const int64_t layer = LayerActivations(cfg, moe, B, T, c);
  const int64_t final_norm = N * cfg.hidden_size * (4 + c);
  const int64_t shared = B * T * T * 4;  // the float32 attention mask
  p.activations_full = L * layer + final_norm + shared;
  p.activations_checkpointed = L * N * cfg.hidden_size * c + layer + final_norm + shared;
  p.activations = train.activation_checkpointing() ? p.activations_checkpointed : p.activations_full;
  // The loss: float32 logits, their log-softmax and its gradient, and that gradient in the
  // compute dtype, all [N, V]; or, if larger, one layer's attention scores in flight (the
  // compute-dtype product, its float32 copy, the scaled and the masked scores).
  const int64_t V = cfg.vocab_size;
  // Distillation adds the teacher's float32 logits and log-probabilities and the KL's terms.
  const int64_t distill = Distills(train) ? 12 : 0;
  p.temporaries = std::max(N * V * (12 + c + distill), B * cfg.num_attention_heads * T * T * (c + 12));

  // Loading (the model and one tensor's file pages), the end of the forward pass (every
  // activation, the loss) or the end of the backward pass (every gradient, the last layer's
  // activations still alive).
  const int64_t load = p.parameters + largest;
  const int64_t forward = p.activations + p.temporaries;
  const int64_t backward = p.gradients + layer;
  p.loading = load;
  p.peak = p.resident + std::max(load, p.parameters + p.optimizer + p.gradient_slice + std::max(forward, backward));
  return p;
}

std::string MemoryPlan::Report() const {
  std::string s;
  auto line = [&](const char* what, int64_t bytes, const std::string& note) {
    absl::StrAppendFormat(&s, "  %-26s %16d bytes  %10s  %s\n", what, bytes, Gib(bytes), note);
  };
  line("process before the model", resident, "");
  line("parameters", parameters, "the whole model, compute dtype");
  line("gradients", gradients, absl::StrCat(trainable_elements, " trainable elements, compute dtype"));
  line("gradient slice + bucket", gradient_slice, "float32, this rank's slice");
  line("optimizer state", optimizer, "float32 master, 2 moments, mask, scale: this rank's slice");
  line("activations (full)", activations_full, "per micro-batch");
  line("activations (checkpointed)", activations_checkpointed, "per micro-batch");
  line("largest temporaries", temporaries, "logits/log-probs/gradient over the vocabulary");
  line("loading", loading, "the model and one tensor's file pages");
  absl::StrAppendFormat(&s, "plan: peak per rank %d bytes (%s)\n", peak, Gib(peak));
  return s;
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

absl::StatusOr<int64_t> PeakDeviceBytes(int device_index) {
#if defined(LLAMA_MOE_WITH_CUDA)
  try {
    // allocated_bytes[0] is the aggregate over the small and large pools (StatType::AGGREGATE,
    // whose namespace moved between LibTorch 1.x and 2.x).
    return static_cast<int64_t>(c10::cuda::CUDACachingAllocator::getDeviceStats(device_index).allocated_bytes[0].peak);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return absl::UnavailableError(absl::StrCat("cannot read the memory statistics of cuda:", device_index, ": ",
                                               what.substr(0, what.find('\n'))));
  }
#else
  return absl::UnimplementedError(absl::StrCat("cuda:", device_index, ": GPU memory needs a CUDA build of LibTorch"));
#endif
}

absl::StatusOr<int64_t> AvailableMemory(bool cuda, int device_index, int ranks_per_host) {
  if (cuda) {
#if defined(LLAMA_MOE_WITH_CUDA)
    size_t free_bytes = 0, total = 0;
    if (cudaSetDevice(device_index) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
      return absl::UnavailableError(absl::StrCat("cannot read the free memory of cuda:", device_index));
    }
    return static_cast<int64_t>(free_bytes);
#else
    return absl::UnimplementedError("GPU memory needs a CUDA build of LibTorch");
#endif
  }
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024 / std::max(1, ranks_per_host);
  }
  return absl::UnavailableError("cannot read MemAvailable from /proc/meminfo");
}

absl::Status CheckPlanFits(const MemoryPlan& plan, int64_t available, const TrainConfig& train, int world_size) {
  if (plan.peak <= available) return absl::OkStatus();
  std::string knobs;
  if (train.micro_batch() > 1) absl::StrAppend(&knobs, " a smaller micro_batch (activations scale with it);");
  if (!train.activation_checkpointing() && plan.activations_checkpointed < plan.activations_full) {
    absl::StrAppend(&knobs, " activation_checkpointing: true (activations ", Gib(plan.activations_full), " -> ",
                    Gib(plan.activations_checkpointed), ");");
  }
  absl::StrAppend(&knobs, " more ranks (optimizer state and gradient slice, ", Gib(plan.optimizer + plan.gradient_slice),
                  " now on ", world_size, ", fall as 1/ranks);");
  if (train.dtype() == "float32") absl::StrAppend(&knobs, " dtype: \"bfloat16\" (halves parameters and activations);");
  return absl::ResourceExhaustedError(absl::StrCat(
      "the memory plan needs ", Gib(plan.peak), " per rank, ", Gib(available), " is available; try", knobs,
      " (train --plan prints the plan)"));
}

}  // namespace llama_moe
