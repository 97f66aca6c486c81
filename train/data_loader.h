// Training and evaluation batches from a token shard set, deterministic and resumable.
//
// Names: N tokens in a split, L = seq_len, S sequences, G = global batch (sequences per optimizer
// step, summed over ranks and micro-steps), M = micro batch per rank, W = data-parallel ranks,
// A = G / (W * M) micro-steps (gradient accumulation) per optimizer step.
//
// Packing. A split is one token stream (its shards in manifest order; documents stay separated by
// EOS and sequences run across document boundaries). Sequence i is the L + 1 tokens starting at
// i * L: inputs are its first L tokens, targets its last L, so consecutive sequences share one
// token and every token but the first is a target exactly once. S = (N - 1) / L.
//
// Order. Epoch e visits the sequences in a Fisher-Yates permutation P_e of [0, S) drawn from
// SplitMix64(MixSeed(seed, e)) (train/random.h): the same on every machine. An epoch has
// floor(S / G) steps; the last S mod G entries of P_e are skipped that epoch (a different set each
// epoch). Global step s is step k = s mod steps_per_epoch of epoch e = s / steps_per_epoch, and
// its batch is P_e[k*G .. k*G + G).
//
// Ranks. Entry j of a step's batch goes to micro-step a, rank r, row m with
//   j = (a * W + r) * M + m,
// so each micro-step covers a contiguous block of W * M entries, split between ranks in order.
// Hence the union over ranks (and micro-steps) of one step is the same G sequences for any W, and
// with W = 2 rank r's micro-step a is exactly the W = 1 run's micro-step 2a + r: a 2-process run
// sees the batches of a 1-process run with twice the accumulation.
//
// Loss masks. A split written from chat data marks which tokens are targets (assistant turns).
// TargetMask gives the mask of a batch's targets, StepTargets their count over the whole step
// (the loss's denominator), and EvalIterator's target_mask leaves the others out, so held-out
// loss on such a split is the loss on assistant tokens.
//
// Resume. Batch(step, micro, rank) is a pure function of the step, so the loader's whole state is
// the DataPosition {epoch, step} saved with a checkpoint; CheckPosition rejects a position that
// does not fit this loader (another dataset or global batch).
//
// Example:
//   ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> train, TokenStream::Open("/data/brown", "train"));
//   DataLoaderOptions o;  // L = 256, G = 32, M = 4, W = 2: A = 4 micro-steps per step
//   o.seq_len = 256;
//   o.global_batch = 32;
//   o.micro_batch = 4;
//   o.world_size = 2;
//   ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> loader, DataLoader::Create(train, o));
//   const int rank = 0;
//   for (int64_t a = 0; a < loader->micro_steps(); ++a) {
//     ASSIGN_OR_RETURN(at::Tensor tokens, loader->Batch(/*step=*/0, a, rank));  // int64 [M, L+1]
//     at::Tensor inputs = tokens.narrow(1, 0, o.seq_len), targets = tokens.narrow(1, 1, o.seq_len);
//   }
//   DataPosition saved = loader->PositionAt(/*step=*/1);  // {epoch, step}; ToJson() into the checkpoint
//
//   ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> heldout, TokenStream::Open("/data/brown", "heldout"));
//   ASSIGN_OR_RETURN(EvalIterator eval, EvalIterator::Create(heldout, /*seq_len=*/256, /*batch_size=*/8,
//                                                            rank, /*world_size=*/2));
//   while (std::optional<EvalBatch> b = eval.Next()) {
//     at::Tensor window = b->tokens, mask = b->target_mask;
//   }
#ifndef LLAMA_MOE_TRAIN_DATA_LOADER_H_
#define LLAMA_MOE_TRAIN_DATA_LOADER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "train/token_shards.h"

namespace llama_moe {

// A split's shards as one read-only token stream with random access across shard boundaries.
class TokenStream {
 public:
  // Opens split `split` of the shard set in `dir` (manifest checked, payloads verified).
  static absl::StatusOr<std::shared_ptr<const TokenStream>> Open(const std::string& dir, const std::string& split);
  // An in-memory stream (tests, small tools); `eos_id` is used for evaluation padding only. With
  // `loss_mask` (one entry per token, non-zero: a loss target) the stream carries a loss mask.
  static std::shared_ptr<const TokenStream> FromTokens(std::vector<uint32_t> tokens, uint32_t eos_id,
                                                       const std::vector<uint8_t>* loss_mask = nullptr);

  uint64_t size() const { return size_; }  // N
  uint32_t eos_id() const { return eos_id_; }
  const std::string& name() const { return name_; }  // "dir:split", for messages
  // Copies tokens [offset, offset + out.size()) as int64 into `out`; the range must be in bounds.
  void Read(uint64_t offset, absl::Span<int64_t> out) const;
  // Whether the split has a loss mask (chat data); without one every token is a target.
  bool has_loss_mask() const { return has_loss_mask_; }
  // out[i] = whether token offset + i counts as a loss target (all true without a mask).
  void ReadLossMask(uint64_t offset, absl::Span<bool> out) const;

 private:
  TokenStream() = default;
  // Calls visit(words, n, done) for consecutive runs of the stored words of [offset, offset + count).
  template <typename Visit>
  void VisitRange(uint64_t offset, uint64_t count, Visit visit) const;

  std::string name_;
  uint32_t eos_id_ = 0;
  bool has_loss_mask_ = false;
  std::vector<std::unique_ptr<TokenShard>> shards_;  // owns the mappings behind pieces_
  std::vector<uint32_t> owned_;                      // FromTokens storage
  std::vector<absl::Span<const uint32_t>> pieces_;   // non-empty, in order
  std::vector<uint64_t> starts_;                     // stream offset of each piece
  uint64_t size_ = 0;
};

struct DataLoaderOptions {
  int64_t seq_len = 0;       // L, e.g. 2048
  int64_t global_batch = 0;  // G sequences per optimizer step, e.g. 64
  int64_t micro_batch = 0;   // M sequences per rank per micro-step, e.g. 4
  int64_t world_size = 1;    // W data-parallel ranks
  uint64_t seed = 0;         // order of sequences; independent of the held-out split's seed
};

// Where training is in the data: the next optimizer step to run and its epoch.
struct DataPosition {
  int64_t epoch = 0;
  int64_t step = 0;  // global optimizer step, counted from 0 across epochs

  nlohmann::json ToJson() const;
  static absl::StatusOr<DataPosition> FromJson(const nlohmann::json& json);
  bool operator==(const DataPosition& o) const { return epoch == o.epoch && step == o.step; }
};

class DataLoader {
 public:
  // Fails when G is not a multiple of W * M, or the stream holds fewer than G sequences.
  static absl::StatusOr<std::unique_ptr<DataLoader>> Create(std::shared_ptr<const TokenStream> stream,
                                                            const DataLoaderOptions& options);

  int64_t num_sequences() const { return num_sequences_; }      // S
  int64_t steps_per_epoch() const { return steps_per_epoch_; }  // floor(S / G)
  int64_t micro_steps() const { return micro_steps_; }          // A = G / (W * M)
  const DataLoaderOptions& options() const { return options_; }
  bool has_loss_mask() const { return stream_->has_loss_mask(); }

  // The sequence indices of (step, micro-step, rank): M entries of the step's batch (see above).
  absl::StatusOr<std::vector<int64_t>> SequenceIds(int64_t step, int64_t micro, int64_t rank) const;
  // Those sequences as int64 [M, L + 1] on the CPU.
  absl::StatusOr<at::Tensor> Batch(int64_t step, int64_t micro, int64_t rank) const;
  // With a loss mask: bool [M, L], true where the batch's target (tokens[:, 1:]) counts in the
  // loss; an undefined tensor when the stream has no mask (every target counts).
  absl::StatusOr<at::Tensor> TargetMask(int64_t step, int64_t micro, int64_t rank) const;
  // How many targets of step `step` count, over all its micro-steps and ranks: G * L without a
  // mask. Every rank computes it alone from the data, so the loss is normalised without a collective.
  absl::StatusOr<int64_t> StepTargets(int64_t step) const;
  // Sequence `index` (< S): tokens [index * L, index * L + L + 1).
  void ReadSequence(int64_t index, absl::Span<int64_t> out) const;
  // P_e, the order of epoch `epoch` (a permutation of [0, S)).
  std::vector<uint32_t> EpochOrder(int64_t epoch) const;

  DataPosition PositionAt(int64_t step) const;
  // OK when `position` could have come from this loader: epoch == step / steps_per_epoch.
  absl::Status CheckPosition(const DataPosition& position) const;

 private:
  DataLoader(std::shared_ptr<const TokenStream> stream, const DataLoaderOptions& options);
  // P_e, computed once per epoch and kept while that epoch is being read.
  std::shared_ptr<const std::vector<uint32_t>> CachedOrder(int64_t epoch) const;

  std::shared_ptr<const TokenStream> stream_;
  DataLoaderOptions options_;
  int64_t num_sequences_ = 0;
  int64_t steps_per_epoch_ = 0;
  int64_t micro_steps_ = 0;
  mutable absl::Mutex mu_;
  mutable int64_t cached_epoch_ ABSL_GUARDED_BY(mu_) = -1;
  mutable std::shared_ptr<const std::vector<uint32_t>> cached_order_ ABSL_GUARDED_BY(mu_);
};

// One evaluation batch: B windows of the held-out stream, in order.
struct EvalBatch {
  at::Tensor tokens;       // int64 [B, L + 1]; positions past the stream's end hold EOS
  at::Tensor target_mask;  // bool [B, L]: true where tokens[:, 1:] is a real target (and in the loss mask)
  int64_t num_targets = 0;  // target_mask.sum()
  int64_t first_window = 0;  // index of row 0's window
};

// The held-out split in order, as non-overlapping prediction windows: window i holds tokens
// [i * L, min(i * L + L + 1, N)), so every token but the first is predicted exactly once and the
// last window may be short (masked). Rank r of W gets windows r, r + W, r + 2W, ...: sum the loss
// and target counts over batches and ranks, then divide, for the split's exact perplexity.
class EvalIterator {
 public:
  // Fails unless seq_len, batch_size > 0 and 0 <= rank < world_size.
  static absl::StatusOr<EvalIterator> Create(std::shared_ptr<const TokenStream> stream, int64_t seq_len,
                                             int64_t batch_size, int64_t rank = 0, int64_t world_size = 1);
  int64_t num_windows() const { return num_windows_; }  // over all ranks: ceil((N - 1) / L)
  // The next batch of this rank's windows (the last may have fewer than B rows); nullopt at the end.
  std::optional<EvalBatch> Next();
  void Reset() { next_ = rank_; }

 private:
  EvalIterator() = default;
  std::shared_ptr<const TokenStream> stream_;
  int64_t seq_len_ = 0, batch_size_ = 0, rank_ = 0, world_size_ = 1;
  int64_t num_windows_ = 0;
  int64_t next_ = 0;  // next window index of this rank
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_DATA_LOADER_H_
