// Loading, validating and resolving conversion recipes (convert/recipe.proto).
//
// Example:
//   ASSIGN_OR_RETURN(ConversionRecipe r, LoadRecipe("convert/recipes/default.textproto"));
//   r.set_top_k(4);  // a flag override
//   LlamaConfig dense_cfg;  // e.g. Llama 3 8B
//   ASSIGN_OR_RETURN(MoeConfig moe, ResolveRecipe(dense_cfg, &r));  // fills the 0 = auto fields
#ifndef LLAMA_MOE_CONVERT_RECIPE_H_
#define LLAMA_MOE_CONVERT_RECIPE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "moe/moe_config.h"
#include "convert/recipe.pb.h"
#include "model/llama_config.h"

namespace llama_moe {

// Parses a text-format recipe; syntax errors name the file, line and column.
absl::StatusOr<ConversionRecipe> ParseRecipe(absl::string_view text, absl::string_view file_name);
absl::StatusOr<ConversionRecipe> LoadRecipe(const std::string& path);

// Text form with every field written out, defaults included, so a recorded recipe stays exact
// even if a default changes later.
std::string RecipeToText(const ConversionRecipe& recipe);

// Fills the automatic fields of `recipe` (expert_intermediate_size, gate_scale) from the dense
// config, checks everything against it, and returns the MoE block of the converted config.
absl::StatusOr<MoeConfig> ResolveRecipe(const LlamaConfig& dense, ConversionRecipe* recipe);

}  // namespace llama_moe

#endif  // LLAMA_MOE_CONVERT_RECIPE_H_
