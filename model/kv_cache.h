// Key/value cache for incremental decoding of a batch of left-padded sequences.
//
// Every layer keeps K and V of shape [B, kv_heads, capacity, D] in the compute dtype, filled slot
// by slot: a forward pass over T new tokens writes slots [length, length + T) of every layer and
// then advances `length`. Sequence b is left-padded by `left_pad[b]` slots: its slot s holds
// position s - left_pad[b], and its padding slots are masked out of attention forever, so a
// sequence in a batch attends to exactly what it would attend to alone.
//
// Example:
//   ASSIGN_OR_RETURN(std::shared_ptr<LlamaForCausalLM> model, LoadLlamaFromDir("/models/llama3-8b", {}));
//   ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(model->config(), /*capacity=*/512, {0, 3}, model->options()));
//   ForwardOptions opts;
//   opts.cache = &cache;
//   const at::Tensor prompt = at::tensor({128000, 9906, 1917, 0, 128000, 0, 0, 0}, at::kLong).reshape({2, 4});
//   ASSIGN_OR_RETURN(at::Tensor logits, model->Forward(prompt, opts));  // [B,T,V]; row 1 left-padded by 3
//   ASSIGN_OR_RETURN(logits, model->Forward(at::tensor({13, 13}, at::kLong).reshape({2, 1}), opts));  // one slot more
#ifndef LLAMA_MOE_MODEL_KV_CACHE_H_
#define LLAMA_MOE_MODEL_KV_CACHE_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama_config.h"

namespace llama_moe {

class KvCache {
 public:
  // `options` gives the compute dtype and device. `left_pad` has one entry per sequence (B).
  static absl::StatusOr<KvCache> Create(const LlamaConfig& cfg, int64_t capacity,
                                        std::vector<int64_t> left_pad,
                                        const at::TensorOptions& options);

  int64_t batch_size() const { return static_cast<int64_t>(left_pad_.size()); }
  int64_t capacity() const { return capacity_; }
  int64_t length() const { return length_; }  // slots filled, e.g. prompt length after prefill
  const std::vector<int64_t>& left_pad() const { return left_pad_; }
  int64_t num_layers() const { return static_cast<int64_t>(keys_.size()); }

  // Writes k, v [B,kv_heads,T,D] of `layer` into slots [length, length+T) and returns the views
  // of slots [0, length+T) for attention. The caller advances after all layers (Advance).
  std::pair<at::Tensor, at::Tensor> Update(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  // Marks `tokens` more slots as filled.
  void Advance(int64_t tokens) { length_ += tokens; }
  // Approximate memory of the cache in bytes.
  int64_t nbytes() const;

 private:
  std::vector<at::Tensor> keys_;    // per layer [B, kv_heads, capacity, D]
  std::vector<at::Tensor> values_;  // per layer [B, kv_heads, capacity, D]
  std::vector<int64_t> left_pad_;
  int64_t capacity_ = 0;
  int64_t length_ = 0;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_MODEL_KV_CACHE_H_
