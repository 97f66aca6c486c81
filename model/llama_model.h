// The dense Llama 3 decoder (LlamaForCausalLM) as LibTorch modules whose parameter names are the
// Hugging Face checkpoint keys, and its loader.
//
// Dimensions: B batch, T new tokens, S attended slots (cache length + T), H hidden, D head_dim,
// V vocab. Computation follows HF's eager implementation: RMSNorm in float32 cast back to the
// compute dtype, RoPE in rotate_half layout (model/rope.h), grouped-query attention where query
// head h reads kv head h / (heads / kv_heads), softmax in float32, and a feed-forward block behind
// the FeedForward interface so that a Mixture-of-Experts layer can take the dense SwiGLU's slot
// ("model.layers.N.mlp") without touching the rest of the model.
//
// Example:
//   ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open("/models/llama3-8b"));
//   ASSIGN_OR_RETURN(LlamaConfig cfg, ckpt->LoadConfig());
//   ASSIGN_OR_RETURN(std::shared_ptr<LlamaForCausalLM> model, LoadLlamaForCausalLM(*ckpt, cfg, {}));
//   ASSIGN_OR_RETURN(at::Tensor logits, model->Forward(at::tensor({128000, 9906}, at::kLong)));  // [T] -> [T,V]
#ifndef LLAMA_MOE_MODEL_LLAMA_MODEL_H_
#define LLAMA_MOE_MODEL_LLAMA_MODEL_H_

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/kv_cache.h"
#include "model/llama_config.h"
#include "model/rope.h"
#include "model/safetensors_header.h"

namespace llama_moe {

// The slot of a decoder layer's feed-forward block: the dense SwiGLU here, a Mixture of Experts
// in moe/. Implementations register their parameters under HF names relative to
// "model.layers.N.mlp".
class FeedForward : public torch::nn::Module {
 public:
  // x [T,H] or [B,T,H] in the compute dtype -> same shape.
  virtual at::Tensor forward(const at::Tensor& x) = 0;
};

// A bias-free linear layer with parameter "weight" [out, in] (HF's nn.Linear(bias=False)).
class LinearNoBias : public torch::nn::Module {
 public:
  LinearNoBias(int64_t in_features, int64_t out_features, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);
  const at::Tensor& weight() const { return weight_; }

 private:
  at::Tensor weight_;
};

// x * rsqrt(mean(x^2) + eps) * weight, the statistics in float32 as HF does.
class RmsNorm : public torch::nn::Module {
 public:
  RmsNorm(int64_t hidden, double eps, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x);

 private:
  at::Tensor weight_;
  double eps_;
};

// down_proj(silu(gate_proj(x)) * up_proj(x)).
class SwiGluFeedForward : public FeedForward {
 public:
  SwiGluFeedForward(int64_t hidden, int64_t intermediate, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) override;

 private:
  std::shared_ptr<LinearNoBias> gate_proj_, up_proj_, down_proj_;
};

// Shared by all layers of one forward pass.
struct AttentionContext {
  RopeTables rope;        // cos/sin [B,1,T,D]
  at::Tensor mask_bias;   // float32 [B,1,1,T,S]: 0 where a query may attend, -inf elsewhere
  KvCache* cache = nullptr;
  // Recompute each decoder layer in the backward pass instead of keeping its activations.
  bool checkpoint_layers = false;
};

// True while a checkpointed layer is being recomputed for the backward pass: stateful blocks
// (an MoE layer's load counters) must not count that second forward.
bool InActivationRecompute();

class LlamaAttention : public torch::nn::Module {
 public:
  LlamaAttention(const LlamaConfig& cfg, int64_t layer, const at::TensorOptions& options);
  // x [B,T,H] -> [B,T,H].
  at::Tensor forward(const at::Tensor& x, const AttentionContext& ctx);

 private:
  int64_t layer_, heads_, kv_heads_, head_dim_;
  std::shared_ptr<LinearNoBias> q_proj_, k_proj_, v_proj_, o_proj_;
};

// Builds the feed-forward block of `layer`; the default is SwiGluFeedForward.
using FeedForwardFactory = std::function<std::shared_ptr<FeedForward>(
    const LlamaConfig& cfg, int64_t layer, const at::TensorOptions& options)>;

class LlamaDecoderLayer : public torch::nn::Module {
 public:
  LlamaDecoderLayer(const LlamaConfig& cfg, int64_t layer, const at::TensorOptions& options,
                    const FeedForwardFactory& ffn);
  at::Tensor forward(const at::Tensor& x, const AttentionContext& ctx);
  FeedForward& mlp() { return *mlp_; }

 private:
  std::shared_ptr<RmsNorm> input_layernorm_, post_attention_layernorm_;
  std::shared_ptr<LlamaAttention> self_attn_;
  std::shared_ptr<FeedForward> mlp_;
};

struct ForwardOptions {
  // With a cache, the tokens fill slots [cache->length(), +T) and attend to earlier slots; the
  // cache's left padding applies. Without one, the tokens are slots [0, T).
  KvCache* cache = nullptr;
  // Without a cache: per-sequence left padding (empty: none). Padded slots are never attended
  // to by real tokens; their own outputs are meaningless.
  std::vector<int64_t> left_pad;
  // Only the logits of the last slot ([B,1,V]): generation needs no more, and the head is a
  // large matmul (V = 128256).
  bool last_position_only = false;
  // The final-normed hidden states [B,T,H] in the compute dtype instead of logits; Logits()
  // then applies the head to as many positions at a time as memory allows (at V = 128256 the
  // float32 logits of 2048 positions are 1 GiB).
  bool hidden_states_only = false;
  // Record the autograd graph (training). Inference leaves it off: no graph, less memory.
  bool enable_grad = false;
  // With enable_grad: activation checkpointing per decoder layer.
  bool checkpoint_layers = false;
};

using TensorRemap = std::function<absl::StatusOr<std::optional<at::Tensor>>(const std::string& name)>;

struct LlamaLoadOptions {
  // Compute dtype (float32 or bfloat16); unset: the checkpoint's torch_dtype (float16
  // checkpoints compute in float32: CPU float16 matmul is not supported).
  std::optional<DType> dtype;
  c10::Device device = c10::Device(c10::kCPU);
  FeedForwardFactory ffn;  // unset: dense SwiGLU
  // Checkpoint tensors that no parameter takes because something else serves them (an
  // offloaded model's expert stacks); any other unused tensor is an error.
  std::vector<std::string> served_elsewhere;
  // Drop each tensor's file pages once it is copied, so that the mapping does not stay resident
  // next to the copy (for loads that keep the checkpoint open afterwards).
  bool release_pages = false;
  // Inference on the CPU: a parameter stored in the compute dtype becomes a view of the file's
  // copy-on-write mapping instead of a copy. Nothing is read until used, and pages stay
  // evictable page cache, so a model larger than RAM runs (at disk speed), and one that fits
  // loads at once.
  bool map_weights = false;
  // Read every parameter into memory while loading (PrefaultMemory), so that a mapped model's
  // page faults are paid here and not by the first forward pass: for tools that time their
  // forward passes (llama.cpp populates its mappings the same way by default).
  bool prefault_weights = false;
  // A checkpoint that stores some parameters under other names or split differently (a Mixtral
  // directory's per-expert matrices for an MoE layer's expert stacks): given a parameter's name,
  // `remap` returns its value, or nullopt to read the name from the checkpoint. Checkpoint tensors
  // it reads are listed in `served_elsewhere`.
  TensorRemap remap;
};

// The embedding and decoder stack, registered as "model" in LlamaForCausalLM.
class LlamaBackbone : public torch::nn::Module {
 public:
  LlamaBackbone(const LlamaConfig& cfg, const at::TensorOptions& options, const FeedForwardFactory& ffn);
  // tokens [B,T] -> final-normed hidden states [B,T,H].
  at::Tensor forward(const at::Tensor& tokens, const AttentionContext& ctx);
  const at::Tensor& embed_weight() const { return embed_tokens_->weight(); }
  LlamaDecoderLayer& layer(int64_t i) { return *layers_[i]; }

 private:
  // Holds "weight" [V,H]; a LinearNoBias has the same single parameter.
  std::shared_ptr<LinearNoBias> embed_tokens_;
  std::vector<std::shared_ptr<LlamaDecoderLayer>> layers_;
  std::shared_ptr<RmsNorm> norm_;
};

class LlamaForCausalLM : public torch::nn::Module {
 public:
  // Parameters are allocated uninitialised (at::empty) with `options`: load or fill them next.
  LlamaForCausalLM(const LlamaConfig& cfg, const at::TensorOptions& options,
                   const FeedForwardFactory& ffn = {});

  const LlamaConfig& config() const { return cfg_; }
  c10::ScalarType dtype() const { return options_.dtype().toScalarType(); }
  c10::Device device() const { return options_.device(); }
  const at::TensorOptions& options() const { return options_; }
  LlamaBackbone& backbone() { return *model_; }

  // tokens [B,T] or [T] integer ids (any device) -> float32 logits [B,T,V] or [T,V] (T = 1 with
  // last_position_only). Checks ids against the vocabulary, positions against
  // max_position_embeddings and the cache's capacity; c10 errors become Status.
  absl::StatusOr<at::Tensor> Forward(const at::Tensor& tokens, const ForwardOptions& options = {});

  // The same without the checks; throws c10::Error. For code that already validated its input.
  at::Tensor ForwardUnchecked(const at::Tensor& tokens, const ForwardOptions& options);

  // float32 logits [..., V] of final-normed hidden states [..., H] (hidden_states_only).
  at::Tensor Logits(const at::Tensor& hidden);

 private:
  LlamaConfig cfg_;
  at::TensorOptions options_;
  at::Tensor inv_freq_;  // [D/2] float32 on the compute device
  std::shared_ptr<LlamaBackbone> model_;
  std::shared_ptr<LinearNoBias> lm_head_;  // null when the head is tied to the embedding
};

// "cpu", "cuda", "cuda:1", ... as a device; an error naming the flag otherwise.
absl::StatusOr<c10::Device> ParseDevice(const std::string& name, const std::string& flag = "--device");

// The compute dtype for `cfg` given an optional request (see LlamaLoadOptions::dtype).
absl::StatusOr<c10::ScalarType> ResolveComputeDType(const LlamaConfig& cfg, std::optional<DType> requested);

// Copies every parameter and buffer of `module` (named as checkpoint keys) from `ckpt`,
// converting dtype and device. Missing tensors and shape mismatches are errors naming the tensor
// and both shapes; checkpoint tensors that no parameter takes are errors too, except `ignored`
// names. With `release_pages`, each tensor's file pages are dropped after its copy; with
// `map_weights`, CPU tensors stored in their parameter's dtype are mapped, not copied (see
// LlamaLoadOptions).
// A `remap` (see LlamaLoadOptions) supplies the parameters the checkpoint stores differently.
absl::Status LoadParameters(torch::nn::Module& module, const Checkpoint& ckpt,
                            const std::vector<std::string>& ignored = {}, bool release_pages = false,
                            bool map_weights = false, const TensorRemap& remap = nullptr);

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadLlamaForCausalLM(
    const Checkpoint& ckpt, const LlamaConfig& cfg, const LlamaLoadOptions& options);

// Opens `dir`, reads its config.json and loads the model.
absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadLlamaFromDir(const std::string& dir,
                                                                   const LlamaLoadOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_LLAMA_MODEL_H_
