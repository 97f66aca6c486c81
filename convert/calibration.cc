#include "convert/calibration.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/llama_config.h"
#include "model/llama_model.h"
#include "model/status_macros.h"
#include "model/tokenizer.h"

namespace llama_moe {
namespace {

// The dense SwiGLU (same parameter names, same result) that also keeps each call's neuron
// activation magnitudes.
class RecordingSwiGlu : public FeedForward {
 public:
  RecordingSwiGlu(int64_t hidden, int64_t intermediate, const at::TensorOptions& options, std::vector<at::Tensor>* sink)
      : sink_(sink) {
    gate_ = register_module("gate_proj", std::make_shared<LinearNoBias>(hidden, intermediate, options));
    up_ = register_module("up_proj", std::make_shared<LinearNoBias>(hidden, intermediate, options));
    down_ = register_module("down_proj", std::make_shared<LinearNoBias>(intermediate, hidden, options));
  }
  at::Tensor forward(const at::Tensor& x) override {
    const at::Tensor a = at::silu(gate_->forward(x)) * up_->forward(x);
    sink_->push_back(a.abs().reshape({-1, a.size(-1)}).to(at::kFloat));
    return down_->forward(a);
  }

 private:
  std::vector<at::Tensor>* sink_;
  std::shared_ptr<LinearNoBias> gate_, up_, down_;
};

constexpr int64_t kSequenceTokens = 512;

}  // namespace

absl::StatusOr<std::vector<at::Tensor>> NeuronActivations(const std::string& dense_dir, const std::string& text_path,
                                                          int64_t max_tokens) {
  const std::string tokenizer_path = JoinPath(dense_dir, "tokenizer.json");
  if (!std::filesystem::exists(tokenizer_path)) {
    return absl::NotFoundError(absl::StrCat("'", tokenizer_path,
                                            "' does not exist: the calibration text is tokenized with the model's "
                                            "tokenizer.json"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::FromFile(tokenizer_path));
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(text_path, kMaxCalibrationTextBytes), "calibration_text");
  std::vector<int32_t> ids = tok->Encode(text);
  if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat("calibration text '", text_path, "' has no tokens"));
  if (static_cast<int64_t>(ids.size()) > max_tokens) ids.resize(max_tokens);

  // One sink per layer, sized before the layers take pointers into it.
  ASSIGN_OR_RETURN(const LlamaConfig cfg, LoadLlamaConfig(JoinPath(dense_dir, "config.json")));
  std::vector<std::vector<at::Tensor>> sinks(cfg.num_hidden_layers);
  LlamaLoadOptions load;
  load.map_weights = true;
  load.ffn = [&sinks](const LlamaConfig& c, int64_t layer, const at::TensorOptions& options) {
    return std::static_pointer_cast<FeedForward>(
        std::make_shared<RecordingSwiGlu>(c.hidden_size, c.intermediate_size, options, &sinks.at(layer)));
  };
  ASSIGN_OR_RETURN(std::shared_ptr<LlamaForCausalLM> model, LoadLlamaFromDir(dense_dir, load),
                   "loading the dense model for calibration");
  const at::Tensor all = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong);
  ForwardOptions f;
  f.hidden_states_only = true;
  c10::NoGradGuard no_grad;
  for (int64_t begin = 0; begin < all.numel(); begin += kSequenceTokens) {
    const at::Tensor seq = all.narrow(0, begin, std::min(kSequenceTokens, all.numel() - begin)).unsqueeze(0);
    ASSIGN_OR_RETURN(at::Tensor unused, model->Forward(seq, f), "calibration forward");
  }
  std::vector<at::Tensor> out;
  for (auto& sink : sinks) out.push_back(at::cat(sink, 0).t().contiguous());  // [I, N]
  return out;
}

}  // namespace llama_moe
