// The memory-frugal MoE mode: running a converted model without holding all experts on the
// compute device (or, with the mmap source, anywhere in RAM).
//
// An ExpertProvider serves expert e of layer L (its gate [Ie,H], up [Ie,H] and down [H,Ie]) from
//   mmap  the model's safetensors files: only expert e's byte range of each stack is read (one
//         contiguous range per projection, moe/moe_layout.h), copied to the compute device and
//         dtype, and its file pages are dropped again (madvise), so resident memory is the cache,
//         not the file;
//   ram   host memory holding every expert in the compute dtype (pinned when the device is CUDA),
//         copied to the device on demand. On a GPU this keeps experts off the device; on CPU it is
//         the baseline the mmap source is compared with.
// Each layer keeps an LRU cache of `cache_experts` experts on the compute device, with hit, miss,
// prefetch and eviction counters. Its slots are allocated once and overwritten in place on a miss:
// no allocation per load, so the allocator cannot fragment (freeing and reallocating 3 MB
// expert buffers made glibc keep 200-450 MB of freed heap resident in the benchmark) and a
// CUDA build has a fixed device pool.
// While layer L runs, the provider can prefetch layer L+1's likely experts: layer L+1's router
// applied to layer L's FFN input (the residual stream changes little between adjacent layers;
// Mixtral-offloading's speculative loading). The prefetch is synchronous (plain copies) but is
// issued before layer L's own experts compute, so that a CUDA build can turn it into copies on a
// side stream that overlap that compute.
//
// OffloadedMoeFeedForward takes MoeFeedForward's slot for routed-mode inference: same router
// parameters ("router.weight", "router.expert_bias"), no expert parameters, and the same dispatch
// ops in the same order as SparseMoeForward (moe/dispatch.cc), so its outputs equal the in-memory
// layer's bit for bit and greedy generation matches token for token. Inference only: no
// gradients, no routing statistics. Not thread-safe: one forward at a time per model.
//
// Example:
//   OffloadLoadOptions o;
//   o.offload.source = OffloadSource::kMmap;
//   o.offload.cache_experts = 2;  // experts per layer on the device
//   ASSIGN_OR_RETURN(OffloadedModel m, LoadOffloadedModel("/models/llama3-8b-moe", o));
//   ASSIGN_OR_RETURN(at::Tensor logits, m.model->Forward(at::tensor({128000, 9906}, at::kLong)));
//   const double hit_rate = m.experts->stats().HitRate();
#ifndef LLAMA_MOE_MOE_EXPERT_OFFLOAD_H_
#define LLAMA_MOE_MOE_EXPERT_OFFLOAD_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/llama_config.h"
#include "model/llama_model.h"
#include "moe/expert_bank.h"
#include "moe/moe_config.h"
#include "moe/router.h"

namespace llama_moe {

enum class OffloadSource { kMmap, kRam };
// "mmap" or "ram".
absl::StatusOr<OffloadSource> ParseOffloadSource(const std::string& name);
const char* OffloadSourceName(OffloadSource source);

struct ExpertCacheStats {
  int64_t hits = 0;        // demand lookups found in the cache (prefetched ones included)
  int64_t misses = 0;      // demand lookups that loaded the expert
  int64_t prefetches = 0;  // loads issued by prefetch (not counted as hits or misses)
  int64_t evictions = 0;   // experts dropped to make room

  double HitRate() const { return hits + misses > 0 ? static_cast<double>(hits) / (hits + misses) : 0.0; }
  ExpertCacheStats& operator+=(const ExpertCacheStats& o);
};

// A least-recently-used cache of one layer's experts in at most `capacity` slots. `allocate`
// makes an empty slot (called at most `capacity` times); `load` writes an expert into a slot in
// place. Loads run in inference mode, so slots are inference tensors: read them anywhere, write
// them only through the cache.
class ExpertLruCache {
 public:
  using Allocator = std::function<ExpertWeights()>;
  using Loader = std::function<void(int64_t expert, ExpertWeights& slot)>;
  ExpertLruCache(int64_t capacity, Allocator allocate, Loader load);

  // The expert, loading it on a miss; it becomes the most recently used. The tensors alias the
  // cache slot: they hold this expert until a later load reuses the slot (at the earliest after
  // `capacity` - 1 further misses or prefetches), so use them before fetching more experts.
  ExpertWeights Get(int64_t expert);
  // Loads the expert if absent (counted as a prefetch) and makes it the most recently used.
  void Prefetch(int64_t expert);
  bool Contains(int64_t expert) const { return entries_.count(expert) > 0; }
  // Resident experts, most recently used first.
  std::vector<int64_t> Resident() const { return {order_.begin(), order_.end()}; }
  int64_t capacity() const { return capacity_; }
  const ExpertCacheStats& stats() const { return stats_; }
  void ResetStats() { stats_ = ExpertCacheStats(); }

 private:
  struct Entry {
    ExpertWeights weights;
    std::list<int64_t>::iterator position;  // in order_
  };
  // Loads `expert` into a free slot, or the least recent one's when full; it becomes most recent.
  const ExpertWeights& Insert(int64_t expert);

  int64_t capacity_;
  Allocator allocate_;
  Loader load_;
  std::list<int64_t> order_;  // most recently used first
  std::unordered_map<int64_t, Entry> entries_;
  ExpertCacheStats stats_;
};

struct ExpertOffloadOptions {
  OffloadSource source = OffloadSource::kMmap;
  int64_t cache_experts = 2;  // experts per layer held on the compute device, e.g. 2; at least 1
  // Prefetch layer L+1's predicted experts while layer L runs. Off by default: it pays only when
  // the copies overlap compute (an asynchronous CUDA copy stream). Synchronous, as here, it raised
  // the hit rate (0.00 -> 0.37 at 4 of 16 experts per layer, top-8) but added loads overall and cost
  // 5-14% of CPU decode speed in //benchmarks:offload_benchmark.
  bool prefetch = false;
};

// Serves the expert stacks of a converted checkpoint, one expert at a time, through per-layer
// LRU caches on the compute device.
class ExpertProvider {
 public:
  // Checks every expert stack's presence, dtype and shape ([Nf|Nl, Ie, H] / [.., H, Ie]) against
  // the configs; with the ram source reads all of them into host memory (file pages released
  // after each stack).
  static absl::StatusOr<std::shared_ptr<ExpertProvider>> Create(std::shared_ptr<const Checkpoint> ckpt,
                                                                const LlamaConfig& cfg, const MoeConfig& moe,
                                                                const ExpertOffloadOptions& options,
                                                                const at::TensorOptions& compute);

  // Expert e (frozen first, as the router numbers them) of `layer`, through the layer's cache.
  ExpertWeights Get(int64_t layer, int64_t expert) { return caches_[layer].Get(expert); }
  void Prefetch(int64_t layer, int64_t expert) { caches_[layer].Prefetch(expert); }
  // Reads expert e from the source into fresh tensors, bypassing the cache: the slow path tests
  // compare with.
  ExpertWeights Load(int64_t layer, int64_t expert) const;
  // Reads expert e from the source into `slot` (tensors of the expert's shapes on the device).
  void LoadInto(int64_t layer, int64_t expert, ExpertWeights& slot) const;
  // Uninitialised tensors for one expert on the compute device.
  ExpertWeights Allocate() const;

  const ExpertCacheStats& layer_stats(int64_t layer) const { return caches_[layer].stats(); }
  const ExpertLruCache& cache(int64_t layer) const { return caches_[layer]; }
  ExpertCacheStats stats() const;  // summed over layers
  void ResetStats();
  const ExpertOffloadOptions& options() const { return options_; }
  int64_t num_layers() const { return static_cast<int64_t>(caches_.size()); }
  // Bytes one expert occupies on the device.
  int64_t expert_bytes() const;

 private:
  // Where the three stacks of one (layer, group) live.
  struct StackSource {
    const SafetensorsFile* file[3] = {nullptr, nullptr, nullptr};  // gate, up, down
    TensorEntry entry[3];
    at::Tensor host[3];  // ram source: the whole stack in host memory
  };
  ExpertProvider() = default;

  std::shared_ptr<const Checkpoint> ckpt_;  // keeps the mappings alive
  MoeConfig moe_;
  int64_t hidden_ = 0;  // H
  ExpertOffloadOptions options_;
  at::TensorOptions compute_;
  std::vector<StackSource> frozen_, learned_;  // per layer; learned_ entries empty when Nl = 0
  std::vector<ExpertLruCache> caches_;         // per layer
};

// The routed MoE layer with its experts behind an ExpertProvider (see the file comment).
class OffloadedMoeFeedForward : public FeedForward {
 public:
  OffloadedMoeFeedForward(int64_t hidden, const MoeConfig& moe, int64_t layer,
                          std::shared_ptr<ExpertProvider> experts, const at::TensorOptions& options);
  at::Tensor forward(const at::Tensor& x) override;

  Router& router() { return *router_; }
  int64_t layer() const { return layer_; }
  // The layer whose experts this one prefetches (the next decoder layer); null for the last.
  void set_next(OffloadedMoeFeedForward* next) { next_ = next; }

 private:
  // Predicts this layer's experts from the previous layer's FFN input x [T,H] with this layer's
  // router and prefetches the most selected ones, at most the cache capacity.
  void PrefetchFor(const at::Tensor& x);

  MoeConfig moe_;
  int64_t layer_;
  std::shared_ptr<ExpertProvider> experts_;
  std::shared_ptr<Router> router_;
  OffloadedMoeFeedForward* next_ = nullptr;  // owned by the same model
};

struct OffloadLoadOptions {
  std::optional<DType> dtype;  // compute dtype; unset: the checkpoint's
  c10::Device device = c10::Device(c10::kCPU);
  ExpertOffloadOptions offload;
};

struct OffloadedModel {
  std::shared_ptr<LlamaForCausalLM> model;
  LlamaConfig config;
  MoeConfig moe;
  std::shared_ptr<ExpertProvider> experts;
  std::vector<OffloadedMoeFeedForward*> layers;  // one per decoder layer
};

// Builds the model with OffloadedMoeFeedForward layers and loads every tensor except the expert
// stacks (which stay in the files, or go to host memory with the ram source). Errors: a dense
// (non-MoE) directory, missing or misshapen tensors, checkpoint tensors the model does not use.
absl::StatusOr<OffloadedModel> LoadOffloadedModel(const std::string& dir, const OffloadLoadOptions& options);

}  // namespace llama_moe

#endif  // LLAMA_MOE_MOE_EXPERT_OFFLOAD_H_
