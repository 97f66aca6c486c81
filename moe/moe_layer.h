// The MoE feed-forward block that takes the dense SwiGLU's slot ("model.layers.N.mlp").
//
// Modes:
//   identity      every frozen slice with weight 1: the dense FFN exactly (up to summation order);
//   learned_only  every learned expert with weight 1 (what the learned experts alone compute);
//   routed        production: the router picks K experts per token, sparse dispatch runs them.
// With LoRA adapters (moe.lora_rank > 0) the frozen experts carry them in identity and routed
// modes (moe/lora.h), unmerged.
// Frozen stacks never require gradients; learned stacks and the router weight do when training.
// In routed mode the layer counts expert loads and router statistics for the balancing update
// and for evaluation; TakeRoutingStats() returns and resets them.
//
// Example:
//   MoeConfig moe;
//   moe.num_frozen_experts = 2;
//   moe.num_learned_experts = 2;
//   moe.expert_intermediate_size = 8;
//   moe.top_k = 2;
//   MoeLayerOptions options;
//   options.mode = RoutingMode::kRouted;
//   MoeFeedForward layer(/*hidden=*/16, moe, options, at::TensorOptions().dtype(at::kFloat));
//   for (at::Tensor& p : layer.parameters()) p.data().normal_();
//   at::Tensor y = layer.forward(at::randn({3, 16}));
//   RoutingStats stats = layer.TakeRoutingStats();  // stats.load [4] sums to 3 * 2
//   LlamaLoadOptions load;
//   load.ffn = MoeFeedForwardFactory(moe, options);  // the layer in every decoder layer's FFN slot
#ifndef LLAMA_MOE_MOE_MOE_LAYER_H_
#define LLAMA_MOE_MOE_MOE_LAYER_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama_model.h"
#include "moe/expert_bank.h"
#include "moe/lora.h"
#include "moe/moe_config.h"
#include "moe/router.h"

namespace llama_moe {

enum class RoutingMode { kIdentity, kLearnedOnly, kRouted };
absl::StatusOr<RoutingMode> ParseRoutingMode(const std::string& name);  // "identity", ...
const char* RoutingModeName(RoutingMode mode);

// Holds "weight" [N, a, b] for one projection of an expert stack.
class ExpertProjection : public torch::nn::Module {
 public:
  ExpertProjection(int64_t n, int64_t a, int64_t b, const at::TensorOptions& options);
  // Holds `weight` itself (a view into storage shared with another stack, say).
  explicit ExpertProjection(at::Tensor weight);
  at::Tensor& weight() { return weight_; }

 private:
  at::Tensor weight_;
};

// "lora_A" [N, r, in] and "lora_B" [N, out, r] of one projection's adapters.
class LoraProjection : public torch::nn::Module {
 public:
  LoraProjection(int64_t n, int64_t rank, int64_t in, int64_t out, const at::TensorOptions& options);
  at::Tensor a, b;
};

// The frozen experts' adapters: "gate_proj", "up_proj", "down_proj" (moe/lora.h).
class LoraStack : public torch::nn::Module {
 public:
  LoraStack(int64_t n, int64_t rank, int64_t hidden, int64_t expert_intermediate, const at::TensorOptions& options);
  std::shared_ptr<LoraProjection> gate_proj, up_proj, down_proj;
};

// "gate_proj", "up_proj", "down_proj" of a stack of experts.
class ExpertStack : public torch::nn::Module {
 public:
  ExpertStack(int64_t n, int64_t hidden, int64_t expert_intermediate, const at::TensorOptions& options);
  ExpertStack(at::Tensor gate, at::Tensor up, at::Tensor down);
  std::shared_ptr<ExpertProjection> gate_proj, up_proj, down_proj;
};

// Per-layer routing statistics accumulated since the last TakeRoutingStats(). They stay on the
// layer's device: a forward pass never waits for the host to read them (on a GPU a per-layer read
// would be a synchronisation in every layer of every step); TakeRoutingSummaries() reads all
// layers in one copy.
struct RoutingStats {
  at::Tensor load;         // [E] int64 on the layer's device: (token, slot) pairs routed to each expert
  at::Tensor entropy_sum;  // float64 scalar on the layer's device: sum over tokens of the score entropy (nats)
  int64_t tokens = 0;
  at::Tensor aux_loss;     // scalar (graph attached) when aux losses are enabled; else undefined
};


struct MoeLayerOptions {
  RoutingMode mode = RoutingMode::kRouted;
  double aux_loss_coef = 0;  // Switch-style balance loss coefficient (0: off), for ablations
  double z_loss_coef = 0;    // router z-loss coefficient (0: off)
  // Whether the routed forward accumulates the load and router entropy that TakeRoutingStats
  // returns. Off where nothing reads them (generation): a dozen small tensor ops per layer and
  // decode step.
  bool routing_stats = true;
};

class MoeFeedForward : public FeedForward {
 public:
  MoeFeedForward(int64_t hidden, const MoeConfig& moe, const MoeLayerOptions& options,
                 const at::TensorOptions& tensor_options);
  at::Tensor forward(const at::Tensor& x) override;

  void set_mode(RoutingMode mode) { options_.mode = mode; }
  RoutingMode mode() const { return options_.mode; }
  Router& router() { return *router_; }
  ExpertBank experts() const;
  // The frozen experts' adapters; undefined without them (lora_rank 0).
  LoraAdapters lora() const;
  // Whether the adapters take part in the forward pass (default: yes, when there are any). Off,
  // the layer computes exactly what it would without them, in every mode.
  void set_lora_enabled(bool enabled) { lora_enabled_ = enabled; }
  bool lora_active() const { return lora_ != nullptr && lora_enabled_; }
  // When set, every forward appends its input [T,H] (detached) to `sink`: how a tool collects a
  // layer's real FFN inputs, e.g. for layer-wise distillation. nullptr stops it.
  void set_input_sink(std::vector<at::Tensor>* sink) { input_sink_ = sink; }
  const MoeConfig& moe() const { return moe_; }
  // Returns the statistics accumulated since the last call and resets them.
  RoutingStats TakeRoutingStats();
  // The auxiliary losses of the forward passes since the last call (undefined when disabled);
  // the trainer adds them to the loss before backward.
  at::Tensor TakeAuxLoss();

 private:
  MoeConfig moe_;
  MoeLayerOptions options_;
  std::shared_ptr<ExpertStack> frozen_, learned_;  // learned_ null when Nl = 0
  std::shared_ptr<LoraStack> lora_;                 // null when lora_rank = 0
  bool lora_enabled_ = true;
  std::vector<at::Tensor>* input_sink_ = nullptr;
  std::shared_ptr<Router> router_;
  RoutingStats stats_;
};

// One layer's statistics as the host reads them.
struct RoutingSummary {
  std::vector<double> load;  // [E] (token, slot) pairs per expert
  double entropy_mean = 0;   // mean score entropy per token (nats); 0 without tokens
  int64_t tokens = 0;
};

// Takes (and resets) the statistics of every layer, copying them to the host once for all layers.
std::vector<RoutingSummary> TakeRoutingSummaries(const std::vector<MoeFeedForward*>& layers);

// A FeedForwardFactory building MoeFeedForward layers.
FeedForwardFactory MoeFeedForwardFactory(const MoeConfig& moe, const MoeLayerOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_MOE_LAYER_H_
