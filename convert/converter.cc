#include "convert/converter.h"

#include <ATen/ATen.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "convert/learned_init.h"
#include "convert/calibration.h"
#include "convert/partition.h"
#include "convert/random_streams.h"
#include "convert/recipe.h"
#include "convert/router_init.h"
#include "model/checkpoint.h"
#include "model/llama_layout.h"
#include "model/model_format.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "moe/moe_config.h"
#include "moe/moe_layout.h"
#include "nlohmann/json.hpp"

namespace llama_moe {
namespace {

std::string HexDigest(const unsigned char* d, unsigned n) {
  std::string s;
  for (unsigned i = 0; i < n; ++i) absl::StrAppendFormat(&s, "%02x", d[i]);
  return s;
}

// The SHA-256 of every source shard (~0.35 GB/s on CPUs without SHA extensions: ~45 s for
// 16 GB), computed on a thread of its own while the layers convert; destroying it stops and
// joins the thread.
class SourceHashes {
 public:
  explicit SourceHashes(std::vector<std::string> paths) : paths_(std::move(paths)) {
    future_ = std::async(std::launch::async, [this]() -> absl::StatusOr<std::vector<std::string>> {
      std::vector<std::string> out;
      for (const std::string& p : paths_) {
        ASSIGN_OR_RETURN(std::string digest, Sha256File(p, &stop_));
        out.push_back(std::move(digest));
      }
      return out;
    });
  }
  ~SourceHashes() {
    if (future_.valid()) {
      stop_ = true;
      future_.wait();
    }
  }
  // {shard file name: hex digest}, once the thread is done.
  absl::StatusOr<nlohmann::json> Get() {
    ASSIGN_OR_RETURN(std::vector<std::string> digests, future_.get(), "hashing the source shards");
    nlohmann::json out;
    for (size_t i = 0; i < paths_.size(); ++i) out[paths_[i].substr(paths_[i].find_last_of('/') + 1)] = digests[i];
    return out;
  }

 private:
  const std::vector<std::string> paths_;
  std::atomic<bool> stop_{false};
  std::future<absl::StatusOr<std::vector<std::string>>> future_;
};

// One reused allocation for tensors of a recurring size. A fresh tensor of hundreds of MB is
// mapped anew by the allocator each time, and page-faulting it in cost the conversion more than
// the arithmetic on it. A tensor from Like() or Contiguous() is valid until the next call.
class Scratch {
 public:
  // A tensor with `like`'s sizes and, when `like` is dense, its strides (what `like.to(type)`
  // allocates); otherwise contiguous.
  at::Tensor Like(const at::Tensor& like, at::ScalarType type) {
    if (!like.is_non_overlapping_and_dense()) return Contiguous(like.sizes(), type);
    return At(like.sizes(), like.strides(), type);
  }
  at::Tensor Contiguous(at::IntArrayRef sizes, at::ScalarType type) {
    std::vector<int64_t> strides(sizes.size());
    int64_t s = 1;
    for (size_t d = sizes.size(); d-- > 0;) {
      strides[d] = s;
      s *= std::max<int64_t>(sizes[d], 1);
    }
    return At(sizes, strides, type);
  }

 private:
  // Dense strides only: the tensor covers exactly numel elements from the buffer's start.
  at::Tensor At(at::IntArrayRef sizes, at::IntArrayRef strides, at::ScalarType type) {
    int64_t numel = 1;
    for (int64_t n : sizes) numel *= n;
    const int64_t bytes = std::max<int64_t>(numel, 1) * static_cast<int64_t>(c10::elementSize(type));
    if (!bytes_.defined() || bytes_.numel() < bytes) {
      bytes_ = at::Tensor();  // the old buffer goes before the larger one is allocated
      bytes_ = at::empty({bytes}, at::kByte);
    }
    return at::from_blob(bytes_.data_ptr(), sizes, strides, at::TensorOptions().dtype(type));
  }

  at::Tensor bytes_;
};

// Tasks (writes, releases of source pages) run in order on a thread of their own, so that the
// disk takes the output while the next tensors are computed: a conversion writes far more than it
// computes. Enqueue returns a ticket; Wait(ticket) returns once that task and every earlier one
// are done, with the first error of any task so far (the tasks after a failure are skipped).
// WaitBelow(bytes) bounds the memory that queued tasks hold. Destroying the queue skips what has
// not started and joins the thread.
class TaskQueue {
 public:
  using Task = std::function<absl::Status()>;
  TaskQueue() : thread_([this] { Run(); }) {}
  TaskQueue(const TaskQueue&) = delete;
  TaskQueue& operator=(const TaskQueue&) = delete;
  ~TaskQueue() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    work_.notify_all();
    thread_.join();
  }

  // `bytes`: the memory the task holds until it is done.
  uint64_t Enqueue(Task task, uint64_t bytes = 0) {
    std::lock_guard<std::mutex> l(mu_);
    tasks_.push_back({std::move(task), bytes});
    queued_bytes_ += bytes;
    work_.notify_all();
    return ++enqueued_;
  }
  absl::Status Wait(uint64_t ticket) {
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return done_ >= ticket || !status_.ok(); });
    return status_;
  }
  absl::Status WaitAll() {
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return done_ >= enqueued_ || !status_.ok(); });
    return status_;
  }
  absl::Status WaitBelow(uint64_t bytes) {
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return queued_bytes_ <= bytes || !status_.ok(); });
    return status_;
  }

 private:
  struct Item {
    Task task;
    uint64_t bytes;
  };
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      work_.wait(l, [&] { return stop_ || !tasks_.empty(); });
      if (stop_) return;
      Item item = std::move(tasks_.front());
      tasks_.pop_front();
      const bool skip = !status_.ok();
      l.unlock();
      absl::Status s;
      if (!skip) {
        try {
          s = item.task();
        } catch (const std::exception& e) {
          s = absl::InternalError(e.what());
        }
      }
      item.task = nullptr;  // its tensors are freed before the task counts as done
      l.lock();
      if (status_.ok()) status_ = s;
      queued_bytes_ -= item.bytes;
      ++done_;
      done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable work_, done_cv_;
  std::deque<Item> tasks_;
  uint64_t enqueued_ = 0, done_ = 0, queued_bytes_ = 0;
  absl::Status status_;
  bool stop_ = false;
  std::thread thread_;  // last: starts once the members it uses exist
};

// One conversion in progress: the source, the resolved recipe and the output writer, with the
// byte counts of what went through.
class Conversion {
 public:
  // `activations`: per layer, the calibration statistics a data-driven partition needs (else empty).
  Conversion(const Checkpoint& in, const ConversionRecipe& recipe, const MoeConfig& moe, DType out_dtype,
             ModelWriter& out, ConvertStats& stats, const std::vector<at::Tensor>& activations)
      : in_(in),
        recipe_(recipe),
        moe_(moe),
        out_type_(ToScalarType(out_dtype)),
        out_(out),
        stats_(stats),
        activations_(activations) {}

  // A tensor that the conversion keeps as it is (embeddings, attention, norms, head); written
  // before it returns.
  absl::Status Copy(const std::string& name) {
    ASSIGN_OR_RETURN(at::Tensor t, Read(name));
    ASSIGN_OR_RETURN(const uint64_t ticket, Write(name, t));
    RETURN_IF_ERROR(queue_.Wait(ticket));
    in_.Release(name);
    return absl::OkStatus();
  }

  // Layer `layer`'s dense FFN into the MoE block, as the recipe says: partition the neurons into
  // the frozen slices, initialise the learned experts from them, initialise the router. Returns
  // with writes still queued; Finish() waits for them.
  absl::Status ConvertFfn(int64_t layer, int64_t hidden) {
    DenseFfnWeights dense;
    at::Tensor* parts[3] = {&dense.gate, &dense.up, &dense.down};
    for (int k = 0; k < 3; ++k) {
      ASSIGN_OR_RETURN(*parts[k], Read(DenseFfnName(layer, kFfnProjections[k])));
    }
    const ExpertStackWeights frozen =
        PartitionNeurons(dense, moe_.num_frozen_experts, recipe_, layer,
                         activations_.empty() ? at::Tensor() : activations_.at(static_cast<size_t>(layer)));
    const at::Tensor stacks[3] = {frozen.gate, frozen.up, frozen.down};
    for (int k = 0; k < 3; ++k) {
      // The learned stack first: it reads the source pages that the frozen stack's write (often
      // straight from them) is the last to read before they are released.
      if (moe_.num_learned_experts > 0) RETURN_IF_ERROR(WriteLearned(layer, k, stacks[k]));
      RETURN_IF_ERROR(WriteFrozen(layer, k, stacks[k]));
      const std::string source = DenseFfnName(layer, kFfnProjections[k]);
      queue_.Enqueue([this, source]() {
        in_.Release(source);
        return absl::OkStatus();
      });
    }
    const RouterInitWeights router = InitRouter(recipe_, moe_, hidden, layer);
    RETURN_IF_ERROR(Write(RouterWeightName(layer), router.weight));
    RETURN_IF_ERROR(Write(RouterBiasName(layer), router.bias, at::kFloat));  // always float32
    if (moe_.lora_rank > 0) {
      const int64_t nf = moe_.num_frozen_experts, r = moe_.lora_rank, ie = moe_.expert_intermediate_size;
      for (int k = 0; k < 3; ++k) {
        const int64_t in = k < 2 ? hidden : ie, out = k < 2 ? ie : hidden;
        at::Generator gen = ConversionStream(recipe_.seed(), layer, StreamPurpose::kLoraA, k);
        const double bound = 1.0 / std::sqrt(static_cast<double>(in));
        RETURN_IF_ERROR(Write(LoraTensorName(layer, kFfnProjections[k], "lora_A"),
                              at::empty({nf, r, in}, at::kFloat).uniform_(-bound, bound, gen)));
        RETURN_IF_ERROR(Write(LoraTensorName(layer, kFfnProjections[k], "lora_B"), at::zeros({nf, out, r}, at::kFloat)));
      }
    }
    return absl::OkStatus();
  }

  // Waits for every queued write; the first error of any.
  absl::Status Finish() { return queue_.WaitAll(); }

 private:
  // Memory that queued writes may hold beyond the reused buffers: about two expert stacks of
  // Llama 3 8B, enough to keep the disk busy while the next stack is computed.
  static constexpr uint64_t kMaxQueuedBytes = uint64_t{256} << 20;

  absl::StatusOr<at::Tensor> Read(const std::string& name) {
    ASSIGN_OR_RETURN(at::Tensor t, in_.Get(name));
    stats_.bytes_read += static_cast<uint64_t>(t.numel()) * t.element_size();
    return t;
  }

  // Queues the writing of `t` in the output dtype (or `type`); `t`'s memory must stay unchanged
  // until the ticket is done. Returns the ticket once the queue holds at most kMaxQueuedBytes, or
  // the first failure of a queued task.
  absl::StatusOr<uint64_t> Write(const std::string& name, const at::Tensor& t, std::optional<at::ScalarType> type = {}) {
    at::Tensor stored = t.to(type.value_or(out_type_));
    const uint64_t bytes = static_cast<uint64_t>(stored.numel()) * stored.element_size();
    stats_.bytes_written += bytes;
    const uint64_t ticket =
        queue_.Enqueue([this, name, stored = std::move(stored)]() { return out_.Write(name, stored); }, bytes);
    RETURN_IF_ERROR(queue_.WaitBelow(kMaxQueuedBytes));
    return ticket;
  }

  // The frozen stack as it is when it can be written straight from the source, else through a
  // reused contiguous buffer in the output dtype.
  absl::Status WriteFrozen(int64_t layer, int k, const at::Tensor& stack) {
    const std::string name = ExpertTensorName(layer, kFrozenExperts, kFfnProjections[k]);
    if (stack.is_contiguous() && stack.scalar_type() == out_type_) return Write(name, stack).status();
    RETURN_IF_ERROR(queue_.Wait(frozen_out_ticket_));
    const at::Tensor stored = frozen_out_.Contiguous(stack.sizes(), out_type_);
    stored.copy_(stack);
    ASSIGN_OR_RETURN(frozen_out_ticket_, Write(name, stored));
    return absl::OkStatus();
  }

  absl::Status WriteLearned(int64_t layer, int k, const at::Tensor& stack) {
    const std::string name = ExpertTensorName(layer, kLearnedExperts, kFfnProjections[k]);
    if (recipe_.learned_init() != ConversionRecipe::NOISY_SLICE) {
      return Write(name, InitLearnedExperts(stack.to(at::kFloat), moe_.num_learned_experts, recipe_, k, layer)).status();
    }
    // The statistics come from the stack's float32 copy in the stack's own layout (what
    // `to(kFloat)` makes), the noisy copies from a contiguous one in the same buffer.
    at::Tensor f32 = frozen_f32_.Like(stack, at::kFloat);
    f32.copy_(stack);
    const double noise_std = NoisySliceStd(f32, recipe_);
    if (!f32.is_contiguous()) {
      f32 = frozen_f32_.Contiguous(stack.sizes(), at::kFloat);
      f32.copy_(stack);
    }
    std::vector<int64_t> sizes = stack.sizes().vec();
    sizes[0] = moe_.num_learned_experts;
    // Two buffers in turn: one is written while the next is filled.
    next_learned_ ^= 1;
    RETURN_IF_ERROR(queue_.Wait(learned_ticket_[next_learned_]));
    const at::Tensor learned = learned_[next_learned_].Contiguous(sizes, out_type_);
    NoisySliceInitInto(f32, noise_std, recipe_.seed(), layer, NoisePurpose(k), learned);
    ASSIGN_OR_RETURN(learned_ticket_[next_learned_], Write(name, learned));
    return absl::OkStatus();
  }

  const Checkpoint& in_;
  const ConversionRecipe& recipe_;
  const MoeConfig& moe_;
  const at::ScalarType out_type_;
  ModelWriter& out_;
  ConvertStats& stats_;
  const std::vector<at::Tensor>& activations_;
  // Every layer's expert stacks have the same shapes, so their buffers are allocated once.
  Scratch frozen_out_, frozen_f32_, learned_[2];
  int next_learned_ = 0;
  // The tickets of the last writes that read each written buffer.
  uint64_t frozen_out_ticket_ = 0, learned_ticket_[2] = {0, 0};
  // Last: it is stopped and joined before the buffers its tasks read are freed.
  TaskQueue queue_;
};

}  // namespace

absl::StatusOr<std::string> Sha256File(const std::string& path, const std::atomic<bool>* stop) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "' for hashing"));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(8 << 20);
  while (in) {
    if (stop != nullptr && stop->load()) return absl::CancelledError(absl::StrCat("hashing '", path, "' stopped"));
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading '", path, "'"));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  return HexDigest(digest, len);
}

absl::StatusOr<ConvertStats> ConvertDenseToMoe(const ConvertOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  auto cancelled = [&]() { return o.cancel != nullptr && o.cancel->load(); };
  const absl::Status kCancelled = absl::CancelledError("conversion cancelled; no output written");

  // The source, the recipe resolved against it, and the output's config.
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> in, Checkpoint::Open(o.input_dir), "reading the dense model");
  ASSIGN_OR_RETURN(LlamaConfig cfg, in->LoadConfig());
  ASSIGN_OR_RETURN(std::optional<MoeConfig> already, MoeConfigFromLlama(cfg));
  if (already) {
    return absl::InvalidArgumentError(absl::StrCat("'", o.input_dir, "' is already an MoE model (config has a 'moe' block)"));
  }
  RETURN_IF_ERROR(VerifyLlamaCheckpoint(*in, cfg, /*read_data=*/false), "the dense model");
  ConversionRecipe recipe = o.recipe;
  ASSIGN_OR_RETURN(MoeConfig moe, ResolveRecipe(cfg, &recipe));
  DType out_dtype;
  if (recipe.dtype().empty()) {
    ASSIGN_OR_RETURN(out_dtype, ConfigDType(cfg));
  } else {
    ASSIGN_OR_RETURN(out_dtype, ParseFloatDTypeFlag(recipe.dtype()));
  }
  LlamaConfig out_cfg = cfg;
  out_cfg.torch_dtype = std::string(TorchDTypeName(out_dtype));
  SetMoeConfig(moe, &out_cfg);
  if (cancelled()) return kCancelled;
  std::vector<at::Tensor> activations;
  if (recipe.partition() == ConversionRecipe::COACTIVATION_CLUSTERS) {
    log(absl::StrFormat("calibration: up to %d tokens of %s through the dense model", recipe.calibration_tokens(),
                        recipe.calibration_text()));
    ASSIGN_OR_RETURN(activations, NeuronActivations(o.input_dir, recipe.calibration_text(), recipe.calibration_tokens()),
                     "partition COACTIVATION_CLUSTERS");
    if (cancelled()) return kCancelled;
  }

  std::vector<std::string> shard_paths;
  for (const auto& shard : in->shards()) shard_paths.push_back(shard->path());
  SourceHashes hashes(shard_paths);
  ModelWriterOptions wo;
  wo.max_shard_bytes = static_cast<uint64_t>(recipe.max_shard_bytes());
  wo.overwrite = o.overwrite;
  wo.metadata["llama_moe"] = "converted";
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> w,
                   CreateModelWriter(ModelFormat::kHfSafetensors, o.output_dir, MoeTensorSpecs(out_cfg, moe, out_dtype), wo));
  ConvertStats stats;
  stats.num_shards = w->num_weight_files();
  log(absl::StrFormat("converting %s -> %s: %d layers, %d frozen + %d learned experts of %d, top-%d, %s",
                      o.input_dir, o.output_dir, cfg.num_hidden_layers, moe.num_frozen_experts,
                      moe.num_learned_experts, moe.expert_intermediate_size, moe.top_k, DTypeName(out_dtype)));

  // Every tensor outside the FFNs as it is, then the FFNs layer by layer.
  Conversion conversion(*in, recipe, moe, out_dtype, *w, stats, activations);
  try {
    // Each step first asks for the next step's source pages, which the kernel then reads from
    // disk while this one computes and writes.
    const std::vector<TensorSpec> kept =
        LlamaTensorSpecs(cfg, out_dtype, /*ffn=*/[](int64_t) { return std::vector<TensorSpec>(); });
    for (size_t i = 0; i < kept.size(); ++i) {
      if (cancelled()) return kCancelled;
      if (i + 1 < kept.size()) {
        in->Prefetch(kept[i + 1].name);
      } else {
        for (const char* proj : kFfnProjections) in->Prefetch(DenseFfnName(0, proj));
      }
      RETURN_IF_ERROR(conversion.Copy(kept[i].name));
    }
    for (int64_t layer = 0; layer < cfg.num_hidden_layers; ++layer) {
      if (cancelled()) return kCancelled;
      for (const char* proj : kFfnProjections) in->Prefetch(DenseFfnName(layer + 1, proj));
      RETURN_IF_ERROR(conversion.ConvertFfn(layer, cfg.hidden_size));
      log(absl::StrFormat("layer %d/%d done", layer + 1, cfg.num_hidden_layers));
    }
    RETURN_IF_ERROR(conversion.Finish());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("conversion failed: ", e.what_without_backtrace()));
  }

  // Provenance: the recipe as resolved and a hash of every source file that carries weights.
  nlohmann::json extra = nlohmann::json::parse(out_cfg.extra_json);
  extra["conversion"]["recipe"] = RecipeToText(recipe);
  ASSIGN_OR_RETURN(extra["conversion"]["source_sha256"], hashes.Get());
  out_cfg.extra_json = extra.dump();
  // Side files first, so that this conversion's recipe replaces any the source carried.
  RETURN_IF_ERROR(w->CopySideFiles(o.input_dir));
  RETURN_IF_ERROR(w->AddFile(kConfigFile, LlamaConfigToJson(out_cfg)));
  RETURN_IF_ERROR(w->AddFile("recipe.textproto", RecipeToText(recipe)));
  if (cancelled()) return kCancelled;
  RETURN_IF_ERROR(w->Commit());
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace llama_moe
