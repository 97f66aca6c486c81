// libFuzzer target over conversion recipes (text protos), resolved against Llama 3 8B's shapes.
// Built and run by tools/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <string>

#include "convert/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<llama_moe::ConversionRecipe> r = llama_moe::ParseRecipe(text, "fuzz.textproto");
  if (!r.ok()) return 0;
  // The recorded text of a recipe parses back to the same recipe.
  absl::StatusOr<llama_moe::ConversionRecipe> back = llama_moe::ParseRecipe(llama_moe::RecipeToText(*r), "round trip");
  if (!back.ok()) __builtin_trap();
  llama_moe::ConversionRecipe resolved = *r;
  absl::StatusOr<llama_moe::MoeConfig> moe = llama_moe::ResolveRecipe(llama_moe::LlamaConfig(), &resolved);
  // A resolved recipe is a valid MoE block for the model it was resolved against.
  if (moe.ok() && !llama_moe::ValidateMoeConfig(*moe, llama_moe::LlamaConfig()).ok()) __builtin_trap();
  return 0;
}
