#include "moe/expert_offload.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/llama_layout.h"
#include "model/safetensors.h"
#include "model/safetensors_header.h"
#include "model/status_macros.h"
#include "moe/dispatch.h"
#include "moe/moe_layout.h"
#include "moe/router_factory.h"

namespace llama_moe {

absl::StatusOr<OffloadSource> ParseOffloadSource(const std::string& name) {
  if (name == "mmap") return OffloadSource::kMmap;
  if (name == "ram") return OffloadSource::kRam;
  return absl::InvalidArgumentError(absl::StrCat("unknown expert source '", name, "' (expected mmap or ram)"));
}

const char* OffloadSourceName(OffloadSource source) {
  return source == OffloadSource::kMmap ? "mmap" : "ram";
}

ExpertCacheStats& ExpertCacheStats::operator+=(const ExpertCacheStats& o) {
  hits += o.hits;
  misses += o.misses;
  prefetches += o.prefetches;
  evictions += o.evictions;
  return *this;
}

// ---------------------------------------------------------------------------------------------
// ExpertLruCache

ExpertLruCache::ExpertLruCache(int64_t capacity, Allocator allocate, Loader load)
    : capacity_(capacity), allocate_(std::move(allocate)), load_(std::move(load)) {}

ExpertWeights ExpertLruCache::Get(int64_t expert) {
  auto it = entries_.find(expert);
  if (it != entries_.end()) {
    ++stats_.hits;
    order_.splice(order_.begin(), order_, it->second.position);  // now most recent
    return it->second.weights;
  }
  ++stats_.misses;
  return Insert(expert);
}

void ExpertLruCache::Prefetch(int64_t expert) {
  auto it = entries_.find(expert);
  if (it != entries_.end()) {
    order_.splice(order_.begin(), order_, it->second.position);
    return;
  }
  ++stats_.prefetches;
  Insert(expert);
}

const ExpertWeights& ExpertLruCache::Insert(int64_t expert) {
  // Slots are written in place whether the caller is in inference mode (a forward's expert loop)
  // or not (prefetch): always in inference mode, so that the slots are inference tensors and
  // every in-place write to them is allowed.
  c10::InferenceMode guard;
  ExpertWeights slot;
  if (static_cast<int64_t>(entries_.size()) >= capacity_) {
    auto victim = entries_.find(order_.back());
    slot = std::move(victim->second.weights);
    entries_.erase(victim);
    order_.pop_back();
    ++stats_.evictions;
  } else {
    slot = allocate_();
  }
  load_(expert, slot);
  order_.push_front(expert);
  return entries_.emplace(expert, Entry{std::move(slot), order_.begin()}).first->second.weights;
}

// ---------------------------------------------------------------------------------------------
// ExpertProvider

absl::StatusOr<std::shared_ptr<ExpertProvider>> ExpertProvider::Create(std::shared_ptr<const Checkpoint> ckpt,
                                                                        const LlamaConfig& cfg, const MoeConfig& moe,
                                                                        const ExpertOffloadOptions& options,
                                                                        const at::TensorOptions& compute) {
  if (options.cache_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the expert cache must hold at least 1 expert per layer, got ", options.cache_experts));
  }
  std::shared_ptr<ExpertProvider> p(new ExpertProvider());
  p->ckpt_ = ckpt;
  p->moe_ = moe;
  p->hidden_ = cfg.hidden_size;
  p->options_ = options;
  p->compute_ = compute;
  const int64_t H = cfg.hidden_size, ie = moe.expert_intermediate_size;
  // Host copies (ram source) are pinned for a CUDA device so that the on-demand copies can run
  // asynchronously and at full bus speed; pinning needs the CUDA runtime, so only then.
  const at::TensorOptions host = at::TensorOptions()
                                     .dtype(compute.dtype())
                                     .device(at::kCPU)
                                     .pinned_memory(compute.device().is_cuda());
  auto locate = [&](int64_t layer, const std::string& group, int64_t n) -> absl::StatusOr<StackSource> {
    StackSource s;
    for (int k = 0; k < 3; ++k) {
      const std::string name = ExpertTensorName(layer, group, kFfnProjections[k]);
      ASSIGN_OR_RETURN(auto found, ckpt->Find(name), absl::StrCat("checkpoint '", ckpt->dir(), "'"));
      const TensorEntry& e = *found.first;
      const std::vector<int64_t> want = k < 2 ? std::vector<int64_t>{n, ie, H} : std::vector<int64_t>{n, H, ie};
      if (e.shape != want) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint '", ckpt->dir(), "': tensor '", name,
                                                       "' has shape ", ShapeString(e.shape), ", expected ",
                                                       ShapeString(want)));
      }
      if (!at::isFloatingType(ToScalarType(e.dtype))) {
        return absl::InvalidArgumentError(
            absl::StrCat("checkpoint '", ckpt->dir(), "': tensor '", name, "' is not floating point"));
      }
      s.file[k] = found.second;
      s.entry[k] = e;
      if (options.source == OffloadSource::kRam) {
        try {
          s.host[k] = at::empty(e.shape, host);
          s.host[k].copy_(found.second->Get(e));
        } catch (const c10::Error& err) {
          return absl::ResourceExhaustedError(absl::StrCat("reading '", name, "' into host memory: ",
                                                           err.what_without_backtrace()));
        }
        found.second->Release(e);  // the host copy is what stays resident
      }
    }
    return s;
  };
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    ASSIGN_OR_RETURN(StackSource f, locate(l, kFrozenExperts, moe.num_frozen_experts));
    p->frozen_.push_back(std::move(f));
    if (moe.num_learned_experts > 0) {
      ASSIGN_OR_RETURN(StackSource s, locate(l, kLearnedExperts, moe.num_learned_experts));
      p->learned_.push_back(std::move(s));
    }
  }
  p->caches_.reserve(cfg.num_hidden_layers);
  ExpertProvider* raw = p.get();  // the caches live inside the provider: no ownership cycle
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    p->caches_.emplace_back(
        options.cache_experts, [raw] { return raw->Allocate(); },
        [raw, l](int64_t e, ExpertWeights& slot) { raw->LoadInto(l, e, slot); });
  }
  return p;
}

ExpertWeights ExpertProvider::Allocate() const {
  const int64_t ie = moe_.expert_intermediate_size;
  return {at::empty({ie, hidden_}, compute_), at::empty({ie, hidden_}, compute_), at::empty({hidden_, ie}, compute_)};
}

ExpertWeights ExpertProvider::Load(int64_t layer, int64_t expert) const {
  ExpertWeights w = Allocate();
  LoadInto(layer, expert, w);
  return w;
}

void ExpertProvider::LoadInto(int64_t layer, int64_t expert, ExpertWeights& slot) const {
  const int64_t nf = moe_.num_frozen_experts;
  TORCH_CHECK(expert >= 0 && expert < moe_.num_experts(), "expert ", expert, " out of range");
  const StackSource& s = expert < nf ? frozen_[layer] : learned_[layer];
  const int64_t i = expert < nf ? expert : expert - nf;
  at::Tensor* dst[3] = {&slot.gate, &slot.up, &slot.down};
  for (int k = 0; k < 3; ++k) {
    if (options_.source == OffloadSource::kRam) {
      // Host (pinned for CUDA) to device; a CUDA build would pass non_blocking on a copy stream.
      dst[k]->copy_(s.host[k][i]);
      continue;
    }
    // Expert i's contiguous byte range of the stack [N, a, b]: read only that (a zero-copy view
    // of the mapping), convert it into the slot, then drop its pages so that RSS holds the cache,
    // not the file.
    const TensorEntry& stack = s.entry[k];
    const uint64_t bytes = stack.nbytes() / stack.shape[0];
    TensorEntry slice;
    slice.name = stack.name;
    slice.dtype = stack.dtype;
    slice.shape = {stack.shape[1], stack.shape[2]};
    slice.begin = stack.begin + static_cast<uint64_t>(i) * bytes;
    slice.end = slice.begin + bytes;
    dst[k]->copy_(s.file[k]->Get(slice));
    s.file[k]->Release(slice);
  }
}

ExpertCacheStats ExpertProvider::stats() const {
  ExpertCacheStats total;
  for (const ExpertLruCache& c : caches_) total += c.stats();
  return total;
}

void ExpertProvider::ResetStats() {
  for (ExpertLruCache& c : caches_) c.ResetStats();
}

int64_t ExpertProvider::expert_bytes() const {
  return 3 * moe_.expert_intermediate_size * hidden_ * static_cast<int64_t>(c10::elementSize(compute_.dtype().toScalarType()));
}

// ---------------------------------------------------------------------------------------------
// OffloadedMoeFeedForward

OffloadedMoeFeedForward::OffloadedMoeFeedForward(int64_t hidden, const MoeConfig& moe, int64_t layer,
                                                 std::shared_ptr<ExpertProvider> experts,
                                                 const at::TensorOptions& options)
    : moe_(moe), layer_(layer), experts_(std::move(experts)) {
  router_ = register_module(kRouter, MakeRouter(hidden, moe, options));
}

void OffloadedMoeFeedForward::PrefetchFor(const at::Tensor& x) {
  const RouterOutput r = router_->forward(x);
  const at::Tensor counts = at::bincount(r.expert.reshape({-1}), {}, moe_.num_experts()).to(at::kCPU);
  const int64_t* c = counts.data_ptr<int64_t>();
  std::vector<int64_t> predicted;
  for (int64_t e = 0; e < counts.numel(); ++e) {
    if (c[e] > 0) predicted.push_back(e);
  }
  // Most selected first (ties: lower id); only as many as the cache holds, or the prefetch would
  // evict its own predictions.
  std::stable_sort(predicted.begin(), predicted.end(), [c](int64_t a, int64_t b) { return c[a] > c[b]; });
  const int64_t n = std::min<int64_t>(predicted.size(), experts_->cache(layer_).capacity());
  // Least likely first, so that the most likely ends up most recently used. Synchronous here;
  // a CUDA build would issue these copies on a side stream (pinned host memory for ram) and
  // record an event that the consuming Get waits on.
  for (int64_t j = n - 1; j >= 0; --j) experts_->Prefetch(layer_, predicted[j]);
}

at::Tensor OffloadedMoeFeedForward::forward(const at::Tensor& x_in) {
  c10::NoGradGuard no_grad;  // inference only: the experts are not parameters
  const auto shape = x_in.sizes().vec();
  const at::Tensor x = x_in.reshape({-1, shape.back()});  // [T,H]
  const RouterOutput r = router_->forward(x);
  // Issued before this layer's experts run so that an asynchronous copy would overlap them.
  if (next_ != nullptr && experts_->options().prefetch) next_->PrefetchFor(x);

  // The in-memory layer's dispatch with the experts fetched from the cache: equal results.
  // Each expert is fetched right before use and used before the next fetch, which may reuse
  // its slot.
  const at::Tensor out = SparseMoeForwardWith(x, r.expert, r.weight, moe_.num_experts(), moe_.expert_intermediate_size,
                                              [this](int64_t e) { return experts_->Get(layer_, e); });
  return out.reshape(shape);
}

// ---------------------------------------------------------------------------------------------
// Loading

absl::StatusOr<OffloadedModel> LoadOffloadedModel(const std::string& dir, const OffloadLoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> opened, Checkpoint::Open(dir));
  std::shared_ptr<const Checkpoint> ckpt(std::move(opened));
  OffloadedModel out;
  ASSIGN_OR_RETURN(out.config, ckpt->LoadConfig());
  const LlamaConfig& cfg = out.config;
  RETURN_IF_ERROR(ValidateLlamaConfig(cfg), absl::StrCat("config of '", dir, "'"));
  ASSIGN_OR_RETURN(std::optional<MoeConfig> moe, MoeConfigFromLlama(cfg), absl::StrCat("config of '", dir, "'"));
  if (!moe) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", dir, "' is a dense model (config.json has no \"moe\" block): expert offloading needs a converted "
        "MoE model"));
  }
  if (moe->lora_rank > 0) {
    // The offloaded layer reads expert weights one at a time and has no place for adapters.
    return absl::InvalidArgumentError(absl::StrCat(
        "'", dir, "' has LoRA adapters on its frozen experts (lora_rank ", moe->lora_rank,
        "), which expert offloading does not apply; run it without offloading"));
  }
  out.moe = *moe;
  ASSIGN_OR_RETURN(c10::ScalarType dtype, ResolveComputeDType(cfg, options.dtype));
  const at::TensorOptions compute = at::TensorOptions().dtype(dtype).device(options.device);
  ASSIGN_OR_RETURN(out.experts, ExpertProvider::Create(ckpt, cfg, out.moe, options.offload, compute),
                   absl::StrCat("experts of '", dir, "'"));

  // The model with offloaded layers in the FFN slots; the expert stacks stay with the provider.
  LlamaLoadOptions lo;
  lo.dtype = options.dtype;
  lo.device = options.device;
  lo.release_pages = true;
  const MoeConfig moe_cfg = out.moe;
  std::shared_ptr<ExpertProvider> experts = out.experts;
  lo.ffn = [moe_cfg, experts](const LlamaConfig& c, int64_t layer, const at::TensorOptions& o) {
    return std::static_pointer_cast<FeedForward>(
        std::make_shared<OffloadedMoeFeedForward>(c.hidden_size, moe_cfg, layer, experts, o));
  };
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    for (const char* proj : kFfnProjections) {
      lo.served_elsewhere.push_back(ExpertTensorName(l, kFrozenExperts, proj));
      if (out.moe.num_learned_experts > 0) lo.served_elsewhere.push_back(ExpertTensorName(l, kLearnedExperts, proj));
    }
  }
  ASSIGN_OR_RETURN(out.model, LoadLlamaForCausalLM(*ckpt, cfg, lo));

  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    auto* layer = dynamic_cast<OffloadedMoeFeedForward*>(&out.model->backbone().layer(l).mlp());
    if (layer == nullptr) return absl::InternalError("offload factory produced another feed-forward type");
    if (!out.layers.empty()) out.layers.back()->set_next(layer);
    out.layers.push_back(layer);
  }
  return out;
}

}  // namespace llama_moe
