#include "train/trainer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "convert/moe_layout.h"
#include "model/checkpoint.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/safetensors.h"
#include "model/status_macros.h"
#include "moe/moe_model.h"
#include "nlohmann/json.hpp"
#include "train/data_loader.h"
#include "train/progress.h"
#include "train/sharded_adamw.h"

namespace llama_moe {
namespace {

using json = nlohmann::json;

double LearningRate(const TrainConfig& c, int64_t step) {
  // step is 0-based; linear warm-up to lr, then cosine down to min_lr_ratio * lr.
  if (c.warmup_steps() > 0 && step < c.warmup_steps()) return c.lr() * (step + 1) / c.warmup_steps();
  const int64_t decay = std::max<int64_t>(1, c.steps() - c.warmup_steps());
  const double progress = std::min(1.0, static_cast<double>(step - c.warmup_steps()) / decay);
  const double min_lr = c.lr() * c.min_lr_ratio();
  return min_lr + 0.5 * (c.lr() - min_lr) * (1 + std::cos(M_PI * progress));
}

int64_t PeakRssBytes() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

std::string StepDirName(int64_t step) { return absl::StrFormat("step-%06d", step); }

// Sum over ranks of a small vector of doubles (losses, counts, loads).
absl::StatusOr<std::vector<double>> SumOverRanks(Communicator& comm, const std::vector<double>& v) {
  at::Tensor t = at::tensor(v, at::TensorOptions().dtype(at::kDouble));
  RETURN_IF_ERROR(comm.AllReduceSum({t}));
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

// Held-out loss over the first `max_windows` windows of the held-out split (spread over ranks).
absl::StatusOr<std::pair<double, int64_t>> HeldoutLoss(LlamaForCausalLM& model, std::shared_ptr<const TokenStream> heldout,
                                                       int64_t seq_len, int64_t batch, int64_t max_windows,
                                                       Communicator& comm, const std::vector<MoeFeedForward*>& moe_layers) {
  ASSIGN_OR_RETURN(EvalIterator it, EvalIterator::Create(heldout, seq_len, batch, comm.rank(), comm.world_size()));
  double nll = 0;
  int64_t count = 0, windows = 0;
  const int64_t my_windows = (max_windows + comm.world_size() - 1) / comm.world_size();
  while (windows < my_windows) {
    std::optional<EvalBatch> b = it.Next();
    if (!b) break;
    at::Tensor tokens = b->tokens, mask = b->target_mask;
    if (windows + tokens.size(0) > my_windows) {
      tokens = tokens.narrow(0, 0, my_windows - windows);
      mask = mask.narrow(0, 0, my_windows - windows);
    }
    windows += tokens.size(0);
    ForwardOptions fo;
    const at::Tensor logits = model.ForwardUnchecked(tokens.narrow(1, 0, seq_len), fo);
    const at::Tensor targets = tokens.narrow(1, 1, seq_len).to(logits.device());
    const at::Tensor ce = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
                                                 {}, at::Reduction::None);
    const at::Tensor m = mask.reshape({-1}).to(logits.device());
    nll += (ce * m).sum().item<double>();
    count += m.sum().item<int64_t>();
  }
  // Evaluation must not feed the balancing statistics of the training step.
  for (MoeFeedForward* l : moe_layers) l->TakeRoutingStats();
  ASSIGN_OR_RETURN(std::vector<double> s, SumOverRanks(comm, {nll, static_cast<double>(count)}));
  return std::make_pair(s[0], static_cast<int64_t>(s[1]));
}

struct SaveContext {
  std::string output_dir;
  std::string source_dir;  // model directory the run started from (its side files are copied)
  std::map<std::string, DType> storage_dtype;  // per tensor, from the source checkpoint
  std::string config_json;
};

absl::Status WriteLatest(const std::string& output_dir, const std::string& name) {
  const std::string tmp = JoinPath(output_dir, ".latest.tmp");
  RETURN_IF_ERROR(WriteStringToFile(tmp, name + "\n"));
  if (std::rename(tmp.c_str(), JoinPath(output_dir, "latest").c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot update '", JoinPath(output_dir, "latest"), "'"));
  }
  return absl::OkStatus();
}

// Writes output_dir/step-N atomically; every rank contributes its optimizer shard.
absl::StatusOr<std::string> SaveCheckpoint(const SaveContext& ctx, int64_t step, LlamaForCausalLM& model,
                                           const ShardedAdamW& opt, Communicator& comm, const json& state) {
  const std::string name = StepDirName(step);
  const std::string final_dir = JoinPath(ctx.output_dir, name);
  const std::string staging = JoinPath(ctx.output_dir, ".staging-" + name);
  if (comm.rank() == 0) {
    RETURN_IF_ERROR(RemoveAll(staging));
    if (::mkdir(staging.c_str(), 0755) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("cannot create '", staging, "'"));
    }
  }
  RETURN_IF_ERROR(comm.Barrier());
  const std::string shard_name = absl::StrFormat("optimizer-rank-%05d-of-%05d.safetensors", comm.rank(), comm.world_size());
  std::vector<std::pair<std::string, at::Tensor>> opt_state;
  for (auto& [k, v] : opt.State()) opt_state.emplace_back(k, v);
  absl::Status mine = WriteSafetensorsFile(JoinPath(staging, shard_name), opt_state);
  ASSIGN_OR_RETURN(std::vector<double> ok, SumOverRanks(comm, {mine.ok() ? 0.0 : 1.0}));
  if (!mine.ok()) return mine;
  if (ok[0] > 0) return absl::UnavailableError("another rank failed to write its optimizer shard");

  absl::Status status = absl::OkStatus();
  if (comm.rank() == 0) {
    status = [&]() -> absl::Status {
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (const auto& item : model.named_parameters(true)) tensors.emplace_back(item.key(), item.value());
      for (const auto& item : model.named_buffers(true)) tensors.emplace_back(item.key(), item.value());
      std::vector<TensorSpec> specs;
      for (const auto& [n, t] : tensors) {
        auto it = ctx.storage_dtype.find(n);
        if (it == ctx.storage_dtype.end()) return absl::InternalError(absl::StrCat("no storage dtype for '", n, "'"));
        specs.push_back({n, it->second, t.sizes().vec()});
      }
      CheckpointWriterOptions wo;
      wo.max_shard_bytes = 2'000'000'000ull;
      wo.overwrite = true;
      wo.metadata["llama_moe"] = "trained";
      ASSIGN_OR_RETURN(std::unique_ptr<CheckpointWriter> w, CheckpointWriter::Create(final_dir, specs, wo));
      for (size_t i = 0; i < tensors.size(); ++i) {
        RETURN_IF_ERROR(w->Write(specs[i].name, tensors[i].second.detach().to(at::kCPU, ToScalarType(specs[i].dtype))));
      }
      RETURN_IF_ERROR(w->AddFile(kConfigFile, ctx.config_json));
      RETURN_IF_ERROR(w->AddFile("trainer_state.json", state.dump(2) + "\n"));
      RETURN_IF_ERROR(w->CopySideFiles(ctx.source_dir));
      for (int r = 0; r < comm.world_size(); ++r) {
        const std::string s = absl::StrFormat("optimizer-rank-%05d-of-%05d.safetensors", r, comm.world_size());
        if (std::rename(JoinPath(staging, s).c_str(), JoinPath(w->temp_dir(), s).c_str()) != 0) {
          return absl::InternalError(absl::StrCat("cannot move optimizer shard '", s, "' into the checkpoint"));
        }
      }
      RETURN_IF_ERROR(w->Commit());
      RETURN_IF_ERROR(RemoveAll(staging));
      return WriteLatest(ctx.output_dir, name);
    }();
  }
  ASSIGN_OR_RETURN(std::vector<double> failed, SumOverRanks(comm, {status.ok() ? 0.0 : 1.0}));
  if (!status.ok()) return status;
  if (failed[0] > 0) return absl::UnavailableError("rank 0 failed to write the checkpoint");
  return final_dir;
}

}  // namespace

absl::StatusOr<TrainConfig> LoadTrainConfig(const std::string& path, const std::string& overrides) {
  // Syntax errors become one Status naming the source, line and column (instead of protobuf's
  // own log lines on stderr).
  class Collect : public google::protobuf::io::ErrorCollector {
   public:
    void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
      if (first.empty()) first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ", message);
    }
    std::string first;
  };
  auto parse = [](const std::string& text, const std::string& source, TrainConfig* out) -> absl::Status {
    google::protobuf::TextFormat::Parser parser;
    Collect errors;
    parser.RecordErrorsTo(&errors);
    if (!parser.ParseFromString(text, out)) {
      return absl::InvalidArgumentError(absl::StrCat(source, " is not a valid TrainConfig: ", errors.first));
    }
    return absl::OkStatus();
  };
  TrainConfig cfg;
  if (!path.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
    RETURN_IF_ERROR(parse(text, absl::StrCat("training config '", path, "'"), &cfg));
  }
  if (!overrides.empty()) {
    TrainConfig over;
    RETURN_IF_ERROR(parse(overrides, "--set", &over));
    cfg.MergeFrom(over);
  }
  return cfg;
}

absl::StatusOr<TrainResult> Train(const TrainConfig& cfg, const TrainRunOptions& run) {
  if (cfg.model_dir().empty() || cfg.data_dir().empty() || cfg.output_dir().empty()) {
    return absl::InvalidArgumentError("model_dir, data_dir and output_dir must be set");
  }
  if (cfg.steps() < 1 || cfg.seq_len() < 1 || cfg.micro_batch() < 1 || cfg.global_batch() < 1) {
    return absl::InvalidArgumentError("steps, seq_len, micro_batch and global_batch must be positive");
  }
  if (cfg.activation_checkpointing() && (cfg.aux_loss_coef() > 0 || cfg.z_loss_coef() > 0)) {
    return absl::InvalidArgumentError("aux_loss_coef / z_loss_coef need activation_checkpointing off");
  }
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(run.device);
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("device '", run.device, "' is not a device name"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Communicator> comm,
                   Communicator::Create(run.env, device, std::chrono::seconds(cfg.timeout_seconds())));
  const bool lead = comm->rank() == 0;
  if (lead) {
    std::error_code ec;
    std::filesystem::create_directories(cfg.output_dir(), ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create '", cfg.output_dir(), "': ", ec.message()));
  }

  // Where to start: the given model, or the newest checkpoint of this output directory.
  std::string start_dir = cfg.model_dir();
  json resume_state;
  if (run.resume) {
    ASSIGN_OR_RETURN(std::string latest, ReadFileToString(JoinPath(cfg.output_dir(), "latest")),
                     "--resume needs a previous checkpoint");
    start_dir = JoinPath(cfg.output_dir(), std::string(absl::StripAsciiWhitespace(latest)));
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(JoinPath(start_dir, "trainer_state.json")));
    resume_state = json::parse(text, nullptr, false);
    if (!resume_state.is_object() || !resume_state.contains("step")) {
      return absl::DataLossError(absl::StrCat("'", start_dir, "/trainer_state.json' is unreadable"));
    }
    if (resume_state.value("world_size", 0) != comm->world_size()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint '", start_dir, "' was written by ",
                                                     resume_state.value("world_size", 0), " ranks; resume with the same number (",
                                                     comm->world_size(), " now)"));
    }
  }

  ModelLoadOptions mo;
  ASSIGN_OR_RETURN(mo.dtype, ParseFloatDTypeFlag(cfg.dtype()), "dtype");
  mo.device = device;
  mo.moe.mode = RoutingMode::kRouted;
  mo.moe.aux_loss_coef = cfg.aux_loss_coef();
  mo.moe.z_loss_coef = cfg.z_loss_coef();
  ASSIGN_OR_RETURN(LoadedModel loaded, LoadModel(start_dir, mo));
  LlamaForCausalLM& model = *loaded.model;

  SaveContext save;
  save.output_dir = cfg.output_dir();
  save.source_dir = start_dir;
  {
    ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> src, Checkpoint::Open(start_dir));
    for (const std::string& n : src->TensorNames()) save.storage_dtype[n] = src->Find(n)->first->dtype;
    ASSIGN_OR_RETURN(save.config_json, ReadFileToString(JoinPath(start_dir, kConfigFile)));
  }

  // What trains; everything else gets no gradient and no optimizer state.
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  for (auto& item : model.named_parameters(true)) {
    const std::string& n = item.key();
    bool train = false;
    if (absl::StrContains(n, kFrozenExperts)) {
      train = false;
    } else if (cfg.trainable() == TrainConfig::ALL) {
      train = true;
    } else {
      train = absl::StrContains(n, kLearnedExperts) || absl::EndsWith(n, "mlp.router.weight");
    }
    item.value().set_requires_grad(train);
    if (train) trainable.emplace_back(n, item.value());
  }
  if (trainable.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("nothing to train in '", start_dir,
                                                   "' with this 'trainable' setting (a dense model needs trainable: ALL)"));
  }

  ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> train_stream, TokenStream::Open(cfg.data_dir(), "train"));
  ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> heldout, TokenStream::Open(cfg.data_dir(), "heldout"));
  ASSIGN_OR_RETURN(ShardSetManifest manifest, ReadShardSetManifest(cfg.data_dir()));
  if (manifest.vocab_size > loaded.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("data '", cfg.data_dir(), "' has vocabulary ", manifest.vocab_size,
                                                   ", larger than the model's ", loaded.config.vocab_size));
  }
  DataLoaderOptions dlo;
  dlo.seq_len = cfg.seq_len();
  dlo.global_batch = cfg.global_batch();
  dlo.micro_batch = cfg.micro_batch();
  dlo.world_size = comm->world_size();
  dlo.seed = cfg.seed();
  ASSIGN_OR_RETURN(std::unique_ptr<DataLoader> loader, DataLoader::Create(train_stream, dlo));

  AdamWOptions ao;
  ao.beta1 = cfg.beta1();
  ao.beta2 = cfg.beta2();
  ao.eps = cfg.eps();
  ao.weight_decay = cfg.weight_decay();
  ao.bucket_bytes = static_cast<int64_t>(cfg.bucket_mb()) << 20;
  std::vector<double> lr_scales;
  for (const auto& [n, p] : trainable) lr_scales.push_back(absl::EndsWith(n, "mlp.router.weight") ? cfg.router_lr_scale() : 1.0);
  ShardedAdamW opt(trainable, comm.get(), ao, lr_scales);

  int64_t step = 0;
  if (run.resume) {
    step = resume_state["step"].get<int64_t>();
    ASSIGN_OR_RETURN(DataPosition pos, DataPosition::FromJson(resume_state["data_position"]));
    RETURN_IF_ERROR(loader->CheckPosition(pos), absl::StrCat("resuming from '", start_dir, "'"));
    const std::string shard = JoinPath(start_dir, absl::StrFormat("optimizer-rank-%05d-of-%05d.safetensors",
                                                                  comm->rank(), comm->world_size()));
    ASSIGN_OR_RETURN(auto state, ReadSafetensorsFile(shard));
    RETURN_IF_ERROR(opt.LoadState(state), absl::StrCat("resuming from '", shard, "'"));
  }

  const double bias_rate = cfg.bias_update_rate() > 0 ? cfg.bias_update_rate()
                                                      : (loaded.moe ? loaded.moe->bias_update_rate : 0.0);
  const int64_t tokens_per_step = static_cast<int64_t>(cfg.global_batch()) * cfg.seq_len();
  MetricsLog metrics;
  if (lead) RETURN_IF_ERROR(metrics.Open(JoinPath(cfg.output_dir(), "metrics.jsonl"), run.resume));
  Progress progress(step, cfg.steps(), run.tty && lead);
  if (lead) {
    progress.Note(absl::StrFormat(
        "training %s on %s: %d trainable tensors (%d parameters), %d rank(s) [%s], %d micro-steps of %d x %d tokens, "
        "optimizer state %.1f MB per rank, from step %d",
        start_dir, cfg.data_dir(), trainable.size(), opt.num_elements(), comm->world_size(), comm->backend(),
        loader->micro_steps(), cfg.micro_batch(), cfg.seq_len(), opt.state_bytes() / 1e6, step));
  }

  TrainResult result;
  result.first_step = step;
  const auto run_start = std::chrono::steady_clock::now();
  int64_t run_tokens = 0;
  const int64_t E = loaded.moe ? loaded.moe->num_experts() : 0;
  const int64_t L = loaded.config.num_hidden_layers;
  const int64_t stop_at = run.stop_after_steps > 0 ? std::min<int64_t>(cfg.steps(), step + run.stop_after_steps) : cfg.steps();

  auto make_state = [&](int64_t next_step) {
    json s;
    s["step"] = next_step;
    s["data_position"] = loader->PositionAt(next_step).ToJson();
    s["world_size"] = comm->world_size();
    std::string cfg_text;
    google::protobuf::TextFormat::PrintToString(cfg, &cfg_text);
    s["config"] = cfg_text;
    s["source_model"] = cfg.model_dir();
    // Training draws no random numbers: data order is a function of (seed, step), so the seed is
    // the whole random state.
    s["rng"] = {{"data_seed", cfg.seed()}};
    return s;
  };

  if (cfg.eval_every() > 0 && !run.resume && step == 0) {
    ASSIGN_OR_RETURN(auto ev, HeldoutLoss(model, heldout, cfg.seq_len(), cfg.micro_batch(), cfg.eval_sequences(),
                                          *comm, loaded.moe_layers));
    result.initial_heldout_loss = ev.second > 0 ? ev.first / ev.second : 0.0;
    if (lead) {
      const double hl = result.initial_heldout_loss;
      metrics.Write(json({{"step", 0}, {"heldout_loss", hl}, {"heldout_ppl", std::exp(hl)}, {"heldout_tokens", ev.second}}).dump());
      progress.Note(absl::StrFormat("step 0: held-out loss %.4f, perplexity %.2f (%d tokens)", hl, std::exp(hl), ev.second));
    }
  }

  while (step < stop_at) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = LearningRate(cfg, step);
    double loss_sum = 0;
    for (int64_t a = 0; a < loader->micro_steps(); ++a) {
      ASSIGN_OR_RETURN(at::Tensor batch, loader->Batch(step, a, comm->rank()));
      batch = batch.to(device);
      ForwardOptions fo;
      fo.enable_grad = true;
      fo.checkpoint_layers = cfg.activation_checkpointing();
      try {
        const at::Tensor logits = model.ForwardUnchecked(batch.narrow(1, 0, cfg.seq_len()), fo);
        const at::Tensor targets = batch.narrow(1, 1, cfg.seq_len()).reshape({-1});
        const at::Tensor ce = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets, {},
                                                     at::Reduction::Sum);
        // Scaled so that summing over micro-steps and ranks gives the global mean's gradient.
        at::Tensor loss = ce / static_cast<double>(tokens_per_step);
        for (MoeFeedForward* l : loaded.moe_layers) {
          at::Tensor aux = l->TakeAuxLoss();
          if (aux.defined()) loss = loss + aux / static_cast<double>(loader->micro_steps() * comm->world_size());
        }
        loss.backward();
        loss_sum += ce.item<double>();
      } catch (const c10::Error& e) {
        return absl::InternalError(absl::StrCat("step ", step + 1, ": ", e.what_without_backtrace()));
      }
      opt.AccumulateGradients();
    }
    // One all-reduce for the loss and every layer's expert loads of this step.
    std::vector<double> local = {loss_sum};
    std::vector<double> entropy(L, 0.0);
    std::vector<at::Tensor> loads;
    for (size_t l = 0; l < loaded.moe_layers.size(); ++l) {
      RoutingStats s = loaded.moe_layers[l]->TakeRoutingStats();
      loads.push_back(s.load);
      entropy[l] = s.tokens > 0 ? s.entropy_sum / s.tokens : 0.0;
      for (int64_t e = 0; e < E; ++e) local.push_back(static_cast<double>(s.load[e].item<int64_t>()));
    }
    for (double h : entropy) local.push_back(h / comm->world_size());
    ASSIGN_OR_RETURN(std::vector<double> global, SumOverRanks(*comm, local));
    const double loss = global[0] / tokens_per_step;
    if (!std::isfinite(loss)) {
      return absl::DataLossError(absl::StrCat(
          "step ", step + 1, ": training loss is ", loss, "; stopping without writing a checkpoint (the last good one is ",
          PathExists(JoinPath(cfg.output_dir(), "latest")) ? "named in " + JoinPath(cfg.output_dir(), "latest") : "none",
          ")"));
    }
    ASSIGN_OR_RETURN(double grad_norm, opt.ReduceGradients());
    RETURN_IF_ERROR(opt.Step(lr, cfg.grad_clip(), grad_norm));
    json layer_stats = json::array();
    for (size_t l = 0; l < loaded.moe_layers.size(); ++l) {
      at::Tensor load = at::tensor(std::vector<double>(global.begin() + 1 + l * E, global.begin() + 1 + (l + 1) * E),
                                   at::TensorOptions().dtype(at::kDouble));
      if (cfg.update_bias()) UpdateExpertBias(loaded.moe_layers[l]->router().expert_bias(), load, bias_rate);
      const double mean = load.mean().item<double>();
      layer_stats.push_back({{"layer", l},
                             {"max_over_mean_load", mean > 0 ? load.max().item<double>() / mean : 0.0},
                             {"router_entropy", global[1 + L * E + l]},
                             {"load", std::vector<double>(load.data_ptr<double>(), load.data_ptr<double>() + E)}});
    }
    ++step;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run_tokens += tokens_per_step;
    result.losses.push_back(loss);
    if (lead) {
      json m = {{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                {"tokens_per_s", tokens_per_step / seconds}, {"seconds", seconds}, {"layers", layer_stats}};
      metrics.Write(m.dump());
      if (cfg.log_every() > 0 && (step % cfg.log_every() == 0 || step == stop_at)) {
        progress.Update(step, loss, lr, tokens_per_step / seconds);
      }
    }
    const bool last = step == stop_at;
    if ((cfg.eval_every() > 0 && step % cfg.eval_every() == 0) || (last && step == cfg.steps())) {
      ASSIGN_OR_RETURN(auto ev, HeldoutLoss(model, heldout, cfg.seq_len(), cfg.micro_batch(), cfg.eval_sequences(),
                                            *comm, loaded.moe_layers));
      const double hl = ev.second > 0 ? ev.first / ev.second : 0.0;
      result.heldout_loss = hl;
      if (lead) {
        metrics.Write(json({{"step", step}, {"heldout_loss", hl}, {"heldout_ppl", std::exp(hl)}, {"heldout_tokens", ev.second}}).dump());
        progress.Note(absl::StrFormat("step %d: held-out loss %.4f, perplexity %.2f (%d tokens)", step, hl, std::exp(hl), ev.second));
      }
    }
    if ((cfg.checkpoint_every() > 0 && step % cfg.checkpoint_every() == 0) || last) {
      ASSIGN_OR_RETURN(result.final_checkpoint, SaveCheckpoint(save, step, model, opt, *comm, make_state(step)));
      if (lead) progress.Note(absl::StrCat("saved ", result.final_checkpoint));
    }
  }
  progress.Finish();
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  result.last_step = step;
  result.tokens_per_second = total > 0 ? run_tokens / total : 0;
  result.optimizer_state_bytes = opt.state_bytes();
  result.peak_rss_bytes = PeakRssBytes();
  for (MoeFeedForward* l : loaded.moe_layers) {
    const at::Tensor b = l->router().expert_bias().to(at::kCPU, at::kDouble);
    result.router_bias_checksum += (b * at::arange(1, b.numel() + 1, b.options())).sum().item<double>();
  }
  return result;
}

}  // namespace llama_moe
