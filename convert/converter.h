// Streaming conversion of a dense Llama 3 model directory into a fine-grained MoE directory.
//
// Each layer's SwiGLU FFN is sliced along its intermediate dimension into Nf frozen experts
// (exact slices: their sum is the dense FFN) and Nl learned experts (initialised from the slices
// by the recipe), plus a router and a selection bias. Tensors are read through the memory
// mapping one at a time and written straight to their final offsets, and each layer's pages are
// released after use, so peak memory is about one layer's FFN whatever the model's size. The
// output is deterministic for a recipe seed and published atomically: a failed or cancelled run
// leaves no output directory.
//
// Example:
//   ConvertOptions o;
//   o.input_dir = "/models/llama3-8b";
//   o.output_dir = "/models/llama3-8b-moe";
//   ASSIGN_OR_RETURN(o.recipe, LoadRecipe("convert/recipes/default.textproto"));
//   ASSIGN_OR_RETURN(ConvertStats stats, ConvertDenseToMoe(o));
#ifndef LLAMA_MOE_CONVERT_CONVERTER_H_
#define LLAMA_MOE_CONVERT_CONVERTER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "convert/recipe.pb.h"

namespace llama_moe {

struct ConvertOptions {
  std::string input_dir;       // dense HF model directory
  std::string output_dir;      // MoE model directory to create
  ConversionRecipe recipe;     // automatic fields are resolved against the input's config
  bool overwrite = false;      // replace an existing output directory
  // Checked between tensors; when it becomes true the conversion stops with kCancelled and
  // removes its temporary output (a signal handler sets it).
  const std::atomic<bool>* cancel = nullptr;
  std::function<void(const std::string&)> log;  // progress lines; may be empty
};

struct ConvertStats {
  uint64_t bytes_read = 0;     // tensor bytes read from the input
  uint64_t bytes_written = 0;  // tensor bytes written to the output
  double seconds = 0;          // wall time, hashing included
  int num_shards = 0;          // output shards
};

absl::StatusOr<ConvertStats> ConvertDenseToMoe(const ConvertOptions& options);

// SHA-256 of a file as 64 hex digits; stops with kCancelled when *stop becomes true.
absl::StatusOr<std::string> Sha256File(const std::string& path, const std::atomic<bool>* stop = nullptr);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_CONVERTER_H_
