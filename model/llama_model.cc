#include "model/llama_model.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/decode_attention.h"
#include "model/decode_linear.h"
#include "model/decode_norm.h"
#include "model/file_util.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "model/torch_features.h"

namespace llama_moe {
namespace {

std::string TensorShapeString(const at::Tensor& t) {
  return ShapeString(std::vector<int64_t>(t.sizes().begin(), t.sizes().end()));
}

// Slot i = start + t of sequence b may attend to slot j when j is a real token of b (j >=
// left_pad[b]) not after i. A padding query attends to itself only, so that its softmax row
// is not all -inf (NaN); real queries never read padding rows.
at::Tensor MaskBias(int64_t start, int64_t t, const at::Tensor& left_pad /*[B] int64*/) {
  const auto opts = left_pad.options();
  const at::Tensor j = at::arange(start + t, opts).view({1, 1, -1});    // [1,1,S]
  const at::Tensor i = at::arange(start, start + t, opts).view({1, -1, 1});  // [1,T,1]
  const at::Tensor pad = left_pad.view({-1, 1, 1});                      // [B,1,1]
  const at::Tensor allowed = at::logical_or(at::logical_and(j <= i, j >= pad), j == i);  // [B,T,S]
  at::Tensor bias = at::zeros(allowed.sizes(), opts.dtype(at::kFloat));
  bias.masked_fill_(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  return bias.unsqueeze(1).unsqueeze(1);  // [B,1,1,T,S]
}

}  // namespace

LinearNoBias::LinearNoBias(int64_t in_features, int64_t out_features,
                           const at::TensorOptions& options) {
  weight_ = register_parameter("weight", at::empty({out_features, in_features}, options),
                               /*requires_grad=*/false);
}

at::Tensor LinearNoBias::forward(const at::Tensor& x) {
  // A decode step's few rows: one pass over the weights (model/decode_linear.h).
  return ModelLinear(x, weight_);
}

RmsNorm::RmsNorm(int64_t hidden, double eps, const at::TensorOptions& options) : eps_(eps) {
  weight_ = register_parameter("weight", at::empty({hidden}, options), /*requires_grad=*/false);
}

at::Tensor RmsNorm::forward(const at::Tensor& x) {
  if (CanDecodeRmsNorm(x, weight_)) return DecodeRmsNorm(x, weight_, eps_);
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight_ * normed.to(x.scalar_type());
}

SwiGluFeedForward::SwiGluFeedForward(int64_t hidden, int64_t intermediate,
                                     const at::TensorOptions& options) {
  gate_proj_ = register_module("gate_proj", std::make_shared<LinearNoBias>(hidden, intermediate, options));
  up_proj_ = register_module("up_proj", std::make_shared<LinearNoBias>(hidden, intermediate, options));
  down_proj_ = register_module("down_proj", std::make_shared<LinearNoBias>(intermediate, hidden, options));
}

at::Tensor SwiGluFeedForward::forward(const at::Tensor& x) {
  return down_proj_->forward(at::silu(gate_proj_->forward(x)) * up_proj_->forward(x));
}

LlamaAttention::LlamaAttention(const LlamaConfig& cfg, int64_t layer, const at::TensorOptions& options)
    : layer_(layer),
      heads_(cfg.num_attention_heads),
      kv_heads_(cfg.num_key_value_heads),
      head_dim_(cfg.head_dim) {
  const int64_t h = cfg.hidden_size;
  q_proj_ = register_module("q_proj", std::make_shared<LinearNoBias>(h, heads_ * head_dim_, options));
  k_proj_ = register_module("k_proj", std::make_shared<LinearNoBias>(h, kv_heads_ * head_dim_, options));
  v_proj_ = register_module("v_proj", std::make_shared<LinearNoBias>(h, kv_heads_ * head_dim_, options));
  o_proj_ = register_module("o_proj", std::make_shared<LinearNoBias>(heads_ * head_dim_, h, options));
}

at::Tensor LlamaAttention::forward(const at::Tensor& x, const AttentionContext& ctx) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t group = heads_ / kv_heads_;
  // [B,T,heads*D] -> [B,heads,T,D]
  at::Tensor q = q_proj_->forward(x).view({b, t, heads_, head_dim_}).transpose(1, 2);
  at::Tensor k = k_proj_->forward(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  at::Tensor v = v_proj_->forward(x).view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  q = ApplyRope(q, ctx.rope);
  k = ApplyRope(k, ctx.rope);
  if (ctx.cache != nullptr) std::tie(k, v) = ctx.cache->Update(layer_, k, v);  // [B,kv,S,D]
  const int64_t s = k.size(2);
#if LLAMA_MOE_HAS_SDPA_GQA
  // On a GPU the fused kernel: no float32 scores or probabilities in memory, grouped-query heads
  // read their kv head without copies. The mask is the same additive bias in the compute dtype.
  if (x.is_cuda()) {
    const at::Tensor mask = ctx.mask_bias.squeeze(2).to(q.scalar_type());  // [B,1,T,S]
    const at::Tensor out = at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false,
                                                            /*scale=*/std::nullopt, /*enable_gqa=*/true);
    return o_proj_->forward(out.transpose(1, 2).reshape({b, t, heads_ * head_dim_}));
  }
#endif
  // A decode step's few positions: one call instead of ATen's matmuls, softmax and copies.
  if (CanDecodeAttention(q, k, v)) {
    return o_proj_->forward(DecodeAttention(q, k, v, ctx.mask_bias, 1.0 / std::sqrt(static_cast<double>(head_dim_))));
  }
  // Query head h = kv * group + g reads kv head h / group: group the query heads per kv head
  // instead of repeating K and V `group` times.
  const at::Tensor qg = q.reshape({b, kv_heads_, group * t, head_dim_});
  at::Tensor scores = at::matmul(qg, k.transpose(2, 3)).to(at::kFloat);  // [B,kv,group*T,S]
  scores = scores.view({b, kv_heads_, group, t, s}) * (1.0 / std::sqrt(static_cast<double>(head_dim_)));
  const at::Tensor probs = at::softmax(scores + ctx.mask_bias, -1).to(x.scalar_type());
  const at::Tensor out = at::matmul(probs.view({b, kv_heads_, group * t, s}), v);  // [B,kv,group*T,D]
  // [B,kv,group,T,D] -> [B,T,kv,group,D] -> [B,T,heads*D]
  const at::Tensor merged = out.view({b, kv_heads_, group, t, head_dim_})
                                .permute({0, 3, 1, 2, 4})
                                .reshape({b, t, heads_ * head_dim_});
  return o_proj_->forward(merged);
}

LlamaDecoderLayer::LlamaDecoderLayer(const LlamaConfig& cfg, int64_t layer,
                                     const at::TensorOptions& options, const FeedForwardFactory& ffn) {
  input_layernorm_ = register_module(
      "input_layernorm", std::make_shared<RmsNorm>(cfg.hidden_size, cfg.rms_norm_eps, options));
  self_attn_ = register_module("self_attn", std::make_shared<LlamaAttention>(cfg, layer, options));
  post_attention_layernorm_ = register_module(
      "post_attention_layernorm", std::make_shared<RmsNorm>(cfg.hidden_size, cfg.rms_norm_eps, options));
  std::shared_ptr<FeedForward> mlp =
      ffn ? ffn(cfg, layer, options)
          : std::make_shared<SwiGluFeedForward>(cfg.hidden_size, cfg.intermediate_size, options);
  mlp_ = register_module("mlp", std::move(mlp));
}

at::Tensor LlamaDecoderLayer::forward(const at::Tensor& x, const AttentionContext& ctx) {
  const at::Tensor h = x + self_attn_->forward(input_layernorm_->forward(x), ctx);
  return h + mlp_->forward(post_attention_layernorm_->forward(h));
}

namespace {
// "layers.N" naming without a dot in a module name: a plain container, like nn::ModuleList.
class LayerList : public torch::nn::Module {
 public:
  void Add(std::shared_ptr<torch::nn::Module> m) {
    register_module(std::to_string(count_++), std::move(m));
  }

 private:
  int64_t count_ = 0;
};
}  // namespace

LlamaBackbone::LlamaBackbone(const LlamaConfig& cfg, const at::TensorOptions& options,
                             const FeedForwardFactory& ffn) {
  embed_tokens_ = register_module(
      "embed_tokens", std::make_shared<LinearNoBias>(cfg.hidden_size, cfg.vocab_size, options));
  auto list = register_module("layers", std::make_shared<LayerList>());
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    layers_.push_back(std::make_shared<LlamaDecoderLayer>(cfg, l, options, ffn));
    list->Add(layers_.back());
  }
  norm_ = register_module("norm", std::make_shared<RmsNorm>(cfg.hidden_size, cfg.rms_norm_eps, options));
}

namespace {

thread_local bool t_recompute = false;

// Activation checkpointing of one decoder layer: the forward runs without a graph and keeps only
// its input; the backward recomputes the layer with a graph and back-propagates through it
// (a re-entrant backward, as torch.utils.checkpoint's original implementation does).
struct LayerCheckpoint : public torch::autograd::Function<LayerCheckpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, at::Tensor cos, at::Tensor sin,
                            at::Tensor mask, int64_t layer_ptr) {
    auto* layer = reinterpret_cast<LlamaDecoderLayer*>(layer_ptr);
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["layer"] = layer_ptr;
    AttentionContext actx;
    actx.rope.cos = cos;
    actx.rope.sin = sin;
    actx.mask_bias = mask;
    c10::AutoGradMode no_grad(false);
    return layer->forward(x, actx);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    auto* layer = reinterpret_cast<LlamaDecoderLayer*>(ctx->saved_data["layer"].toInt());
    AttentionContext actx;
    actx.rope.cos = saved[1];
    actx.rope.sin = saved[2];
    actx.mask_bias = saved[3];
    at::Tensor x = saved[0].detach().requires_grad_(true);
    at::Tensor out;
    {
      c10::AutoGradMode grad(true);
      t_recompute = true;
      out = layer->forward(x, actx);
      t_recompute = false;
    }
    torch::autograd::backward({out}, {grad_out[0]});
    return {x.grad(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool InActivationRecompute() { return t_recompute; }

at::Tensor LlamaBackbone::forward(const at::Tensor& tokens, const AttentionContext& ctx) {
  at::Tensor x = at::embedding(embed_tokens_->weight(), tokens);
  const bool checkpoint = ctx.checkpoint_layers && at::GradMode::is_enabled() && ctx.cache == nullptr;
  // A checkpointed layer only gets a backward node when an input requires grad; with frozen
  // embeddings none does, so the chain is started here (the re-entrant checkpoint's known rule).
  if (checkpoint && !x.requires_grad()) x = x.detach().requires_grad_(true);
  for (auto& layer : layers_) {
    if (checkpoint) {
      x = LayerCheckpoint::apply(x, ctx.rope.cos, ctx.rope.sin, ctx.mask_bias,
                                 reinterpret_cast<int64_t>(layer.get()));
    } else {
      x = layer->forward(x, ctx);
    }
  }
  return norm_->forward(x);
}

LlamaForCausalLM::LlamaForCausalLM(const LlamaConfig& cfg, const at::TensorOptions& options,
                                   const FeedForwardFactory& ffn)
    : cfg_(cfg), options_(options) {
  inv_freq_ = RopeInverseFrequencies(cfg).to(options.device());
  model_ = register_module("model", std::make_shared<LlamaBackbone>(cfg, options, ffn));
  if (!cfg.tie_word_embeddings) {
    lm_head_ = register_module("lm_head",
                               std::make_shared<LinearNoBias>(cfg.hidden_size, cfg.vocab_size, options));
  }
}

at::Tensor LlamaForCausalLM::ForwardUnchecked(const at::Tensor& tokens_in, const ForwardOptions& options) {
  c10::AutoGradMode grad_mode(options.enable_grad);
  const bool one_d = tokens_in.dim() == 1;
  const at::Tensor tokens = (one_d ? tokens_in.unsqueeze(0) : tokens_in).to(device(), at::kLong);
  const int64_t b = tokens.size(0), t = tokens.size(1);
  const int64_t start = options.cache != nullptr ? options.cache->length() : 0;
  std::vector<int64_t> pad = options.cache != nullptr ? options.cache->left_pad() : options.left_pad;
  if (pad.empty()) pad.assign(b, 0);
  const at::Tensor pad_t = at::tensor(pad, at::TensorOptions().dtype(at::kLong)).to(device());

  AttentionContext ctx;
  ctx.cache = options.cache;
  const at::Tensor slots = at::arange(start, start + t, pad_t.options()).view({1, -1});
  const at::Tensor positions = (slots - pad_t.view({-1, 1})).clamp_min(0);  // [B,T]
  ctx.rope = MakeRopeTables(inv_freq_, positions, dtype());
  ctx.mask_bias = MaskBias(start, t, pad_t);
  ctx.checkpoint_layers = options.checkpoint_layers;

  at::Tensor h = model_->forward(tokens, ctx);
  if (options.cache != nullptr) options.cache->Advance(t);
  if (options.last_position_only) h = h.narrow(1, t - 1, 1);
  const at::Tensor out = options.hidden_states_only ? h : Logits(h);
  return one_d ? out.squeeze(0) : out;
}

at::Tensor LlamaForCausalLM::Logits(const at::Tensor& hidden) {
  if (lm_head_) return lm_head_->forward(hidden).to(at::kFloat);
  const at::Tensor& tied = model_->embed_weight();
  return (CanDecodeLinear(hidden, tied) ? DecodeLinear(hidden, tied) : at::linear(hidden, tied)).to(at::kFloat);
}

absl::StatusOr<at::Tensor> LlamaForCausalLM::Forward(const at::Tensor& tokens, const ForwardOptions& options) {
  try {
    if (tokens.dim() != 1 && tokens.dim() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokens must be [T] or [B,T], got shape ", TensorShapeString(tokens)));
    }
    if (at::isFloatingType(tokens.scalar_type()) || tokens.scalar_type() == at::kBool) {
      return absl::InvalidArgumentError("tokens must be an integer tensor");
    }
    const int64_t b = tokens.dim() == 2 ? tokens.size(0) : 1;
    const int64_t t = tokens.size(-1);
    if (t == 0 || b == 0) return absl::InvalidArgumentError("tokens are empty");
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= cfg_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", lo < 0 ? lo : hi, " is outside the vocabulary [0, ",
                       cfg_.vocab_size, ")"));
    }
    const std::vector<int64_t>& pad = options.cache ? options.cache->left_pad() : options.left_pad;
    if (!pad.empty() && static_cast<int64_t>(pad.size()) != b) {
      return absl::InvalidArgumentError(
          absl::StrCat("left padding has ", pad.size(), " entries for a batch of ", b));
    }
    int64_t min_pad = 0;
    if (!pad.empty()) min_pad = *std::min_element(pad.begin(), pad.end());
    const int64_t start = options.cache ? options.cache->length() : 0;
    if (options.cache && start + t > options.cache->capacity()) {
      return absl::OutOfRangeError(absl::StrCat("KV cache holds ", options.cache->capacity(),
                                                " slots; ", start, " used, ", t, " more requested"));
    }
    const int64_t last_position = start + t - 1 - min_pad;
    if (last_position >= cfg_.max_position_embeddings) {
      return absl::OutOfRangeError(
          absl::StrCat("sequence of ", last_position + 1, " tokens is longer than the context of ",
                       cfg_.max_position_embeddings, " tokens (max_position_embeddings)"));
    }
    return ForwardUnchecked(tokens, options);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("Llama forward: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<c10::Device> ParseDevice(const std::string& name, const std::string& flag) {
  try {
    return c10::Device(name);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", name, "' is not a device name (cpu, cuda, cuda:1, ...)"));
  }
}

absl::StatusOr<c10::ScalarType> ResolveComputeDType(const LlamaConfig& cfg, std::optional<DType> requested) {
  DType d;
  if (requested.has_value()) {
    d = *requested;
  } else {
    ASSIGN_OR_RETURN(DType stored, ParseFloatDTypeFlag(cfg.torch_dtype), "config torch_dtype");
    d = stored == DType::kF16 ? DType::kF32 : stored;
  }
  if (d != DType::kF32 && d != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("compute dtype ", DTypeName(d),
                                                   " is not supported; use float32 or bfloat16"));
  }
  return ToScalarType(d);
}

absl::Status LoadParameters(torch::nn::Module& module, const Checkpoint& ckpt,
                            const std::vector<std::string>& ignored, bool release_pages, bool map_weights,
                            const TensorRemap& remap) {
  try {
    c10::AutoGradMode no_grad(false);
    std::set<std::string> taken(ignored.begin(), ignored.end());
    // Buffers are state too (an MoE router's selection bias): loaded like parameters, each in
    // its own dtype.
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (auto& item : module.named_parameters(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
    for (auto& item : module.named_buffers(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
    for (auto& item : tensors) {
      const std::string& name = item.first;
      at::Tensor& param = item.second;
      if (remap) {
        ASSIGN_OR_RETURN(std::optional<at::Tensor> value, remap(name), absl::StrCat("checkpoint '", ckpt.dir(), "'"));
        if (value.has_value()) {
          if (value->sizes() != param.sizes()) {
            return absl::InvalidArgumentError(absl::StrCat("checkpoint '", ckpt.dir(), "': '", name, "' is assembled as ",
                                                           TensorShapeString(*value), ", expected ",
                                                           TensorShapeString(param)));
          }
          param.copy_(*value);
          continue;
        }
      }
      if (!ckpt.Has(name)) {
        return absl::NotFoundError(absl::StrCat("checkpoint '", ckpt.dir(), "' has no tensor '", name,
                                                "' (expected shape ", TensorShapeString(param), ")"));
      }
      ASSIGN_OR_RETURN(at::Tensor src, ckpt.Get(name), absl::StrCat("checkpoint '", ckpt.dir(), "'"));
      if (src.sizes() != param.sizes()) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint '", ckpt.dir(), "': tensor '", name, "' has shape ",
                         TensorShapeString(src), ", expected ", TensorShapeString(param)));
      }
      if (!at::isFloatingType(src.scalar_type())) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint '", ckpt.dir(), "': tensor '", name,
                                                       "' is not floating point"));
      }
      if (map_weights && param.is_cpu() && src.scalar_type() == param.scalar_type()) {
        param.set_data(src);  // a view of the copy-on-write mapping
      } else {
        param.copy_(src);  // converts dtype and device; peak memory: the model plus one tensor
        if (release_pages) ckpt.Release(name);
      }
      taken.insert(name);
    }
    for (const std::string& name : ckpt.TensorNames()) {
      if (taken.count(name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "checkpoint '", ckpt.dir(), "' has tensor '", name, "' that the model does not use"));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading '", ckpt.dir(), "': ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadLlamaForCausalLM(
    const Checkpoint& ckpt, const LlamaConfig& cfg, const LlamaLoadOptions& options) {
  RETURN_IF_ERROR(ValidateLlamaConfig(cfg), absl::StrCat("config of '", ckpt.dir(), "'"));
  // What this implementation computes, checked here even if the config validator allows more.
  if (cfg.head_dim % 2 != 0 || cfg.hidden_act != "silu" || cfg.attention_bias || cfg.mlp_bias) {
    return absl::UnimplementedError(absl::StrCat(
        "config of '", ckpt.dir(), "': only an even head_dim, hidden_act \"silu\" and no attention or MLP "
        "biases are supported (head_dim ", cfg.head_dim, ", hidden_act \"", cfg.hidden_act, "\")"));
  }
  ASSIGN_OR_RETURN(c10::ScalarType dtype, ResolveComputeDType(cfg, options.dtype));
  std::shared_ptr<LlamaForCausalLM> model;
  try {
    model = std::make_shared<LlamaForCausalLM>(
        cfg, at::TensorOptions().dtype(dtype).device(options.device), options.ffn);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("building the model of '", ckpt.dir(),
                                            "': ", e.what_without_backtrace()));
  }
  // Older HF checkpoints carry the RoPE buffer; tied checkpoints may still carry a head copy.
  std::vector<std::string> ignored;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    ignored.push_back(absl::StrCat("model.layers.", l, ".self_attn.rotary_emb.inv_freq"));
  }
  if (cfg.tie_word_embeddings) ignored.push_back("lm_head.weight");
  ignored.insert(ignored.end(), options.served_elsewhere.begin(), options.served_elsewhere.end());
  RETURN_IF_ERROR(LoadParameters(*model, ckpt, ignored, options.release_pages, options.map_weights, options.remap));
  if (options.prefault_weights) {
    for (const at::Tensor& t : model->parameters()) {
      if (t.is_cpu()) PrefaultMemory(t.data_ptr(), t.nbytes());
    }
  }
  return model;
}

absl::StatusOr<std::shared_ptr<LlamaForCausalLM>> LoadLlamaFromDir(const std::string& dir,
                                                                   const LlamaLoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  ASSIGN_OR_RETURN(LlamaConfig cfg, ckpt->LoadConfig());
  return LoadLlamaForCausalLM(*ckpt, cfg, options);
}

}  // namespace llama_moe
