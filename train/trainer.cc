#include "train/trainer.h"

#include <ATen/ATen.h>
#include <google/protobuf/text_format.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/checkpoint.h"
#include "model/checkpoint_writer.h"
#include "model/file_util.h"
#include "model/status_macros.h"
#include "moe/moe_layout.h"
#include "moe/moe_model.h"
#include "nlohmann/json.hpp"
#include "train/data_loader.h"
#include "train/distill.h"
#include "train/lm_loss.h"
#include "train/memory_plan.h"
#include "train/progress.h"
#include "train/sharded_adamw.h"
#include "train/train_checkpoint.h"
#include "train/train_config.h"
#include "train/trainable.h"

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

// Sum over ranks of a small vector of doubles.
// What one optimizer step measured, summed (loads) or averaged (entropy) over ranks.
struct StepStats {
  struct Layer {
    std::vector<double> load;  // [E] (token, slot) pairs per expert
    double entropy = 0;        // mean router entropy per token (nats)
  };
  double loss_sum = 0;     // summed cross-entropy of the step's loss targets
  double distill_sum = 0;  // summed KL(dense || model) at those targets, when distilling
  int64_t targets = 0;     // the step's loss targets over all ranks (G x L without a loss mask)
  std::vector<Layer> layers;

  // All ranks' statistics: one all-reduce of the packed values.
  absl::StatusOr<StepStats> SumOverRanks(Communicator& comm) const {
    std::vector<double> v = {loss_sum, distill_sum};
    for (const Layer& l : layers) {
      v.insert(v.end(), l.load.begin(), l.load.end());
      v.push_back(l.entropy / comm.world_size());
    }
    ASSIGN_OR_RETURN(std::vector<double> sum, comm.SumValues(v));
    StepStats out = *this;
    size_t i = 0;
    out.loss_sum = sum[i++];
    out.distill_sum = sum[i++];
    for (Layer& l : out.layers) {
      for (double& x : l.load) x = sum[i++];
      l.entropy = sum[i++];
    }
    return out;
  }
};

// One training run: what the setup builds and every step uses.
struct TrainingRun {
  TrainConfig cfg;
  TrainRunOptions options;
  c10::Device device = c10::Device(c10::kCPU);
  std::unique_ptr<Communicator> comm;
  std::optional<ResumePoint> resume;
  LoadedModel loaded;
  CheckpointContext checkpoints;
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  std::shared_ptr<const TokenStream> heldout;
  std::unique_ptr<DataLoader> loader;
  std::unique_ptr<ShardedAdamW> opt;
  MetricsLog metrics;
  std::unique_ptr<Progress> progress;
  int64_t step = 0;             // optimizer steps done
  int64_t stop_at = 0;          // this run stops after this step
  int64_t tokens_per_step = 0;  // global batch x sequence length
  std::string run_id;           // shared by the ranks of this run
  MemoryPlan plan;              // per rank, computed before anything is allocated
  bool created_output_dir = false;  // this run made output_dir (removed again if set-up fails)
  double bias_rate = 0;         // balancing update rate

  bool lead() const { return comm->rank() == 0; }
  Router& router(size_t layer) { return loaded.moe_layers[layer]->router(); }
};

// What trains (frozen experts never; by default learned experts and routers), with each
// tensor's learning-rate factor; everything else gets no gradient and no optimizer state.
std::vector<double> SelectTrainable(TrainingRun& t) {
  std::vector<double> lr_scales;
  for (auto& item : t.loaded.model->named_parameters(true)) {
    const MoeTensorRole role = MoeTensorRoleOf(item.key());
    const bool train = Trains(role, t.cfg.trainable());
    item.value().set_requires_grad(train);
    if (!train) continue;
    t.trainable.emplace_back(item.key(), item.value());
    lr_scales.push_back(role == MoeTensorRole::kRouterWeight ? t.cfg.router_lr_scale() : 1.0);
  }
  return lr_scales;
}

// The device, the communicator, the output directory and, with --resume, where to continue.
absl::Status SetUpRun(TrainingRun& t) {
  ASSIGN_OR_RETURN(t.device, ParseDevice(t.options.device));
  ASSIGN_OR_RETURN(t.comm,
                   Communicator::Create(t.options.env, t.device, std::chrono::seconds(t.cfg.timeout_seconds())));
  if (t.lead()) {
    std::error_code ec;
    t.created_output_dir = !std::filesystem::exists(t.cfg.output_dir(), ec);
    std::filesystem::create_directories(t.cfg.output_dir(), ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create '", t.cfg.output_dir(), "': ", ec.message()));
  }
  if (t.options.resume) {
    ASSIGN_OR_RETURN(t.resume, ReadResumePoint(t.cfg.output_dir(), t.comm->world_size()));
  }
  // A run id every rank shares, so that this run's checkpoint signals are its own.
  at::Tensor run_id = at::full({1}, static_cast<int64_t>(std::random_device()() >> 1),
                               at::TensorOptions().dtype(at::kLong).device(t.device));
  RETURN_IF_ERROR(t.comm->Broadcast(run_id, 0));
  t.run_id = std::to_string(run_id.item<int64_t>());
  return absl::OkStatus();
}

// The memory plan of this run, from the configs alone; a run that does not fit is refused here,
// before the model is loaded.
absl::Status PlanMemory(TrainingRun& t, const std::string& start_dir) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(start_dir));
  ASSIGN_OR_RETURN(LlamaConfig model_cfg, ckpt->LoadConfig());
  ASSIGN_OR_RETURN(std::optional<MoeConfig> moe, MoeConfigFromLlama(model_cfg), absl::StrCat("config of '", start_dir, "'"));
  const int world = t.options.plan_world_size > 0 ? t.options.plan_world_size : t.comm->world_size();
  t.plan = PlanTrainingMemory(model_cfg, moe, t.cfg, world, ResidentBytes());
  if (t.options.plan_only || t.options.ignore_memory_plan) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int64_t available,
                   AvailableMemory(t.device.is_cuda(), t.device.has_index() ? t.device.index() : 0,
                                   t.device.is_cuda() ? 1 : t.options.env.local_world_size));
  return CheckPlanFits(t.plan, available, t.cfg, t.comm->world_size());
}

// The model from `start_dir` in routed mode, the checkpoints' context, and what trains.
absl::StatusOr<std::vector<double>> SetUpModel(TrainingRun& t, const std::string& start_dir) {
  ModelLoadOptions mo;
  ASSIGN_OR_RETURN(mo.dtype, ParseFloatDTypeFlag(t.cfg.dtype()), "dtype");
  mo.device = t.device;
  mo.moe.mode = RoutingMode::kRouted;
  mo.moe.aux_loss_coef = t.cfg.aux_loss_coef();
  mo.moe.z_loss_coef = t.cfg.z_loss_coef();
  mo.release_pages = true;  // the copies train; the file pages need not stay resident beside them
  ASSIGN_OR_RETURN(t.loaded, LoadModel(start_dir, mo));
  if (Distills(t.cfg) && !t.loaded.moe) {
    return absl::InvalidArgumentError(absl::StrCat(
        "distill_weight needs an MoE model (its teacher is the identity routing); '", start_dir, "' is dense"));
  }
  ASSIGN_OR_RETURN(t.checkpoints, MakeCheckpointContext(t.cfg.output_dir(), start_dir));
  t.checkpoints.keep = t.cfg.keep_checkpoints();
  t.checkpoints.write_timeout = std::chrono::seconds(t.cfg.checkpoint_timeout_seconds());
  t.checkpoints.run_id = t.run_id;
  if (t.cfg.seq_len() > t.loaded.config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len ", t.cfg.seq_len(), " is longer than the context of '",
                                                   start_dir, "' (max_position_embeddings ",
                                                   t.loaded.config.max_position_embeddings, ")"));
  }
  std::vector<double> lr_scales = SelectTrainable(t);
  if (t.trainable.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "nothing to train in '", start_dir, "' with trainable: ", TrainConfig::Trainable_Name(t.cfg.trainable()),
        " (a dense model needs ALL; the LORA settings need a model converted with lora_rank)"));
  }
  return lr_scales;
}

// The training and held-out token streams and the data loader.
absl::Status SetUpData(TrainingRun& t) {
  const TrainConfig& cfg = t.cfg;
  ASSIGN_OR_RETURN(std::shared_ptr<const TokenStream> train_stream, TokenStream::Open(cfg.data_dir(), "train"));
  ASSIGN_OR_RETURN(t.heldout, TokenStream::Open(cfg.data_dir(), "heldout"));
  ASSIGN_OR_RETURN(ShardSetManifest manifest, ReadShardSetManifest(cfg.data_dir()));
  if (manifest.vocab_size > t.loaded.config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("data '", cfg.data_dir(), "' has vocabulary ", manifest.vocab_size,
                                                   ", larger than the model's ", t.loaded.config.vocab_size));
  }
  DataLoaderOptions dlo;
  dlo.seq_len = cfg.seq_len();
  dlo.global_batch = cfg.global_batch();
  dlo.micro_batch = cfg.micro_batch();
  dlo.world_size = t.comm->world_size();
  dlo.seed = cfg.seed();
  ASSIGN_OR_RETURN(t.loader, DataLoader::Create(train_stream, dlo));
  return absl::OkStatus();
}

// Sharded AdamW over the trainable tensors; on resume, its state, the step and the data
// position from the checkpoint in `start_dir`.
absl::Status SetUpOptimizer(TrainingRun& t, const std::vector<double>& lr_scales, const std::string& start_dir) {
  AdamWOptions ao;
  ao.beta1 = t.cfg.beta1();
  ao.beta2 = t.cfg.beta2();
  ao.eps = t.cfg.eps();
  ao.weight_decay = t.cfg.weight_decay();
  ao.bucket_bytes = static_cast<int64_t>(t.cfg.bucket_mb()) << 20;
  t.opt = std::make_unique<ShardedAdamW>(t.trainable, t.comm.get(), ao, lr_scales);
  if (!t.resume) return absl::OkStatus();
  t.step = t.resume->state["step"].get<int64_t>();
  ASSIGN_OR_RETURN(DataPosition pos, DataPosition::FromJson(t.resume->state["data_position"]));
  RETURN_IF_ERROR(t.loader->CheckPosition(pos), absl::StrCat("resuming from '", start_dir, "'"));
  const std::string shard = JoinPath(start_dir, OptimizerShardName(t.comm->rank(), t.comm->world_size()));
  ASSIGN_OR_RETURN(auto state, MapOptimizerShard(shard));
  RETURN_IF_ERROR(t.opt->LoadState(state), absl::StrCat("resuming from '", shard, "'"));
  return absl::OkStatus();
}

// Everything after SetUpRun, in order: the memory plan, the model, the data, the optimizer,
// metrics and progress.
absl::Status SetUpAfterRun(TrainingRun& t) {
  const TrainConfig& cfg = t.cfg;
  const TrainRunOptions& options = t.options;
  const std::string start_dir = t.resume ? t.resume->dir : cfg.model_dir();
  RETURN_IF_ERROR(PlanMemory(t, start_dir));
  if (options.plan_only) return absl::OkStatus();
  ASSIGN_OR_RETURN(const std::vector<double> lr_scales, SetUpModel(t, start_dir));
  RETURN_IF_ERROR(SetUpData(t));
  RETURN_IF_ERROR(SetUpOptimizer(t, lr_scales, start_dir));
  t.bias_rate = cfg.bias_update_rate() > 0 ? cfg.bias_update_rate()
                                            : (t.loaded.moe ? t.loaded.moe->bias_update_rate : 0.0);
  t.tokens_per_step = static_cast<int64_t>(cfg.global_batch()) * cfg.seq_len();
  t.stop_at = options.stop_after_steps > 0 ? std::min<int64_t>(cfg.steps(), t.step + options.stop_after_steps)
                                            : cfg.steps();
  if (t.lead()) RETURN_IF_ERROR(t.metrics.Open(JoinPath(cfg.output_dir(), "metrics.jsonl"), options.resume));
  t.progress = std::make_unique<Progress>(t.step, cfg.steps(), options.tty && t.lead());
  if (t.lead()) {
    t.progress->Note(absl::StrFormat(
        "training %s on %s: %d trainable tensors (%d parameters), %d rank(s) [%s], %d micro-steps of %d x %d tokens, "
        "optimizer state %.1f MB per rank, from step %d",
        start_dir, cfg.data_dir(), t.trainable.size(), t.opt->num_elements(), t.comm->world_size(),
        t.comm->backend(), t.loader->micro_steps(), cfg.micro_batch(), cfg.seq_len(), t.opt->state_bytes() / 1e6,
        t.step));
  }
  return absl::OkStatus();
}

// Everything a run needs; on failure, no output directory of its own left behind.
absl::StatusOr<std::unique_ptr<TrainingRun>> SetUp(const TrainConfig& cfg, const TrainRunOptions& options) {
  RETURN_IF_ERROR(ValidateTrainConfig(cfg));
  auto t = std::make_unique<TrainingRun>();
  t->cfg = cfg;
  t->options = options;
  RETURN_IF_ERROR(SetUpRun(*t));
  const absl::Status status = SetUpAfterRun(*t);
  // A refused run leaves nothing behind: the output directory goes again if this run made it
  // and nothing was written into it (remove() leaves a non-empty directory alone).
  if ((!status.ok() || options.plan_only) && t->created_output_dir) {
    std::error_code ec;
    std::filesystem::remove(cfg.output_dir(), ec);
  }
  if (!status.ok()) return status;
  return t;
}

// Forward, backward and gradient accumulation over the step's micro-batches; the routing
// statistics they gathered. Returns this rank's statistics.
absl::StatusOr<StepStats> ForwardBackward(TrainingRun& t) {
  StepStats s;
  const int64_t micro_steps = t.loader->micro_steps(), world = t.comm->world_size();
  const double distill = DistillWeight(t.cfg, t.step);
  // The loss is the mean over the step's targets, whatever share of them a micro-batch holds.
  ASSIGN_OR_RETURN(s.targets, t.loader->StepTargets(t.step));
  const double denominator = static_cast<double>(std::max<int64_t>(s.targets, 1));
  for (int64_t a = 0; a < micro_steps; ++a) {
    ASSIGN_OR_RETURN(at::Tensor batch, t.loader->Batch(t.step, a, t.comm->rank()));
    ASSIGN_OR_RETURN(at::Tensor target_mask, t.loader->TargetMask(t.step, a, t.comm->rank()));
    batch = batch.to(t.device);
    if (target_mask.defined()) target_mask = target_mask.to(t.device);
    ForwardOptions fo;
    fo.enable_grad = true;
    fo.checkpoint_layers = t.cfg.activation_checkpointing();
    try {
      const at::Tensor inputs = batch.narrow(1, 0, t.cfg.seq_len());
      at::Tensor teacher;
      if (distill > 0) {
        // The dense model: identity routing of the frozen slices without the adapters, and without
        // gradients or statistics.
        t.loaded.SetRouting(RoutingMode::kIdentity);
        t.loaded.SetLoraEnabled(false);
        teacher = t.loaded.model->ForwardUnchecked(inputs, ForwardOptions{});
        t.loaded.SetLoraEnabled(true);
        t.loaded.SetRouting(RoutingMode::kRouted);
      }
      const at::Tensor logits = t.loaded.model->ForwardUnchecked(inputs, fo);
      const at::Tensor ce = NextTokenLoss(logits, batch.narrow(1, 1, t.cfg.seq_len()), target_mask);
      // Scaled so that summing over micro-steps and ranks gives the global mean's gradient.
      at::Tensor loss = ce / denominator;
      if (teacher.defined()) {
        const at::Tensor kl = DistillationLoss(logits, teacher, target_mask);
        loss = loss + kl * (distill / denominator);
        s.distill_sum += kl.item<double>();
      }
      for (MoeFeedForward* l : t.loaded.moe_layers) {
        at::Tensor aux = l->TakeAuxLoss();
        if (aux.defined()) loss = loss + aux / static_cast<double>(micro_steps * world);
      }
      loss.backward();
      s.loss_sum += ce.item<double>();
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("step ", t.step + 1, ": ", e.what_without_backtrace()));
    }
    RETURN_IF_ERROR(t.opt->AccumulateGradients(), absl::StrCat("step ", t.step + 1));
  }
  for (RoutingSummary& r : TakeRoutingSummaries(t.loaded.moe_layers)) {
    s.layers.push_back({std::move(r.load), r.entropy_mean});
  }
  return s;
}

// Held-out loss (nats per token) over the first eval_sequences windows, spread over ranks.
absl::StatusOr<std::pair<double, int64_t>> HeldoutLoss(TrainingRun& t) {
  Communicator& comm = *t.comm;
  const int64_t seq_len = t.cfg.seq_len();
  ASSIGN_OR_RETURN(EvalIterator it,
                   EvalIterator::Create(t.heldout, seq_len, t.cfg.micro_batch(), comm.rank(), comm.world_size()));
  double nll = 0;
  int64_t count = 0, windows = 0;
  const int64_t my_windows = (t.cfg.eval_sequences() + comm.world_size() - 1) / comm.world_size();
  while (windows < my_windows) {
    std::optional<EvalBatch> b = it.Next();
    if (!b) break;
    at::Tensor tokens = b->tokens, mask = b->target_mask;
    if (windows + tokens.size(0) > my_windows) {
      tokens = tokens.narrow(0, 0, my_windows - windows);
      mask = mask.narrow(0, 0, my_windows - windows);
    }
    windows += tokens.size(0);
    const at::Tensor logits = t.loaded.model->ForwardUnchecked(tokens.narrow(1, 0, seq_len), ForwardOptions());
    const at::Tensor targets = tokens.narrow(1, 1, seq_len).to(logits.device());
    const at::Tensor ce = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}), {},
                                                 at::Reduction::None);
    const at::Tensor m = mask.reshape({-1}).to(logits.device());
    nll += (ce * m).sum().item<double>();
    count += m.sum().item<int64_t>();
  }
  // Evaluation must not feed the balancing statistics of the training step.
  for (MoeFeedForward* l : t.loaded.moe_layers) l->TakeRoutingStats();
  ASSIGN_OR_RETURN(std::vector<double> s, comm.SumValues({nll, static_cast<double>(count)}));
  return std::make_pair(s[1] > 0 ? s[0] / s[1] : 0.0, static_cast<int64_t>(s[1]));
}

// The held-out loss at the current step, logged and returned.
absl::StatusOr<double> Evaluate(TrainingRun& t) {
  ASSIGN_OR_RETURN(auto ev, HeldoutLoss(t));
  const auto [loss, tokens] = ev;
  if (t.lead()) {
    t.metrics.Write(
        json({{"step", t.step}, {"heldout_loss", loss}, {"heldout_ppl", std::exp(loss)}, {"heldout_tokens", tokens}})
            .dump());
    t.progress->Note(absl::StrFormat("step %d: held-out loss %.4f, perplexity %.2f (%d %stokens)", t.step, loss,
                                     std::exp(loss), tokens, t.heldout->has_loss_mask() ? "assistant " : ""));
  }
  return loss;
}

// One optimizer step: forward/backward over the micro-batches, the all-reduces, clipping,
// sharded AdamW, the routers' balancing update; metrics and progress. Returns the step's loss.
absl::StatusOr<double> TrainStep(TrainingRun& t) {
  const auto t0 = std::chrono::steady_clock::now();
  const double lr = LearningRate(t.cfg, t.step);
  ASSIGN_OR_RETURN(StepStats local, ForwardBackward(t));
  ASSIGN_OR_RETURN(const StepStats stats, local.SumOverRanks(*t.comm));
  const double loss = stats.loss_sum / std::max<int64_t>(local.targets, 1);
  if (!std::isfinite(loss)) {
    const std::string latest = JoinPath(t.cfg.output_dir(), "latest");
    return absl::DataLossError(absl::StrCat("step ", t.step + 1, ": training loss is ", loss,
                                            "; stopping without writing a checkpoint (the last good one is ",
                                            PathExists(latest) ? "named in " + latest : "none", ")"));
  }
  ASSIGN_OR_RETURN(double grad_norm, t.opt->GradientNorm());
  RETURN_IF_ERROR(t.opt->Step(lr, t.cfg.grad_clip(), grad_norm));
  json layers = json::array();
  for (size_t l = 0; l < stats.layers.size(); ++l) {
    const at::Tensor load = at::tensor(stats.layers[l].load, at::TensorOptions().dtype(at::kDouble));
    if (t.cfg.update_bias() && RoutersTrain(t.cfg.trainable())) t.router(l).UpdateBalance(load, t.bias_rate);
    const double mean = load.mean().item<double>();
    layers.push_back({{"layer", l},
                      {"max_over_mean_load", mean > 0 ? load.max().item<double>() / mean : 0.0},
                      {"router_entropy", stats.layers[l].entropy},
                      {"load", stats.layers[l].load}});
  }
  ++t.step;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (t.lead()) {
    json line = {{"step", t.step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                 {"tokens_per_s", t.tokens_per_step / seconds}, {"seconds", seconds}, {"layers", layers}};
    if (t.loader->has_loss_mask()) line["loss_targets"] = local.targets;
    if (Distills(t.cfg)) {
      const double w = DistillWeight(t.cfg, t.step - 1);
      line["distill_weight"] = w;
      // A step of weight 0 skips the teacher: its KL is not measured.
      line["distill_kl"] = w > 0 ? json(stats.distill_sum / std::max<int64_t>(local.targets, 1)) : json(nullptr);
    }
    t.metrics.Write(line.dump());
    if (t.cfg.log_every() > 0 && (t.step % t.cfg.log_every() == 0 || t.step == t.stop_at)) {
      t.progress->Update(t.step, loss, lr, t.tokens_per_step / seconds);
    }
  }
  return loss;
}

// trainer_state.json of the checkpoint after `t.step` steps.
json TrainerState(const TrainingRun& t) {
  json s;
  s["step"] = t.step;
  s["data_position"] = t.loader->PositionAt(t.step).ToJson();
  s["world_size"] = t.comm->world_size();
  std::string cfg_text;
  google::protobuf::TextFormat::PrintToString(t.cfg, &cfg_text);
  s["config"] = cfg_text;
  s["source_model"] = t.cfg.model_dir();
  // Training draws no random numbers: data order is a function of (seed, step), so the seed is
  // the whole random state.
  s["rng"] = {{"data_seed", t.cfg.seed()}};
  return s;
}

// The run's totals, after its last step.
void Summarize(TrainingRun& t, double seconds, TrainResult& result) {
  result.last_step = t.step;
  result.tokens_per_second = seconds > 0 ? t.tokens_per_step * (t.step - result.first_step) / seconds : 0;
  result.optimizer_state_bytes = t.opt->state_bytes();
  result.peak_rss_bytes = PeakRssBytes();
  if (t.device.is_cuda()) {
    absl::StatusOr<int64_t> peak = PeakDeviceBytes(t.device.has_index() ? t.device.index() : 0);
    if (peak.ok()) result.peak_device_bytes = *peak;
  }
  for (size_t l = 0; l < t.loaded.moe_layers.size(); ++l) {
    const at::Tensor state = t.router(l).balance_state();
    if (!state.defined()) continue;
    const at::Tensor b = state.to(at::kCPU, at::kDouble);
    result.router_bias_checksum += (b * at::arange(1, b.numel() + 1, b.options())).sum().item<double>();
  }
}

}  // namespace

absl::StatusOr<TrainResult> Train(const TrainConfig& cfg, const TrainRunOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<TrainingRun> t, SetUp(cfg, options));
  TrainResult result;
  result.plan = t->plan.Report();
  if (options.plan_only) return result;
  result.first_step = t->step;
  const auto start = std::chrono::steady_clock::now();
  if (cfg.eval_every() > 0 && !t->resume) {
    ASSIGN_OR_RETURN(result.initial_heldout_loss, Evaluate(*t));
  }
  while (t->step < t->stop_at) {
    ASSIGN_OR_RETURN(const double loss, TrainStep(*t));
    result.losses.push_back(loss);
    const bool last = t->step == t->stop_at;
    if ((cfg.eval_every() > 0 && t->step % cfg.eval_every() == 0) || (last && t->step == cfg.steps())) {
      ASSIGN_OR_RETURN(result.heldout_loss, Evaluate(*t));
    }
    if ((cfg.checkpoint_every() > 0 && t->step % cfg.checkpoint_every() == 0) || last) {
      ASSIGN_OR_RETURN(result.final_checkpoint,
                       SaveCheckpoint(t->checkpoints, t->step, *t->loaded.model, *t->opt, *t->comm, TrainerState(*t)));
      if (t->lead()) t->progress->Note(absl::StrCat("saved ", result.final_checkpoint));
    }
  }
  t->progress->Finish();
  Summarize(*t, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), result);
  return result;
}

}  // namespace llama_moe
