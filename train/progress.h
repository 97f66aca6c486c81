// Progress and metrics output of the trainer: a progress bar with loss, lr, tokens/s and ETA on
// a terminal (plain lines otherwise), and metrics as JSON lines for plots and reports.
//
// Example:
//   Progress bar(/*first_step=*/0, /*total_steps=*/120, /*tty=*/isatty(2));
//   bar.Update(/*step=*/10, /*loss=*/4.76, /*lr=*/2e-3, /*tokens_per_s=*/3900);
//   MetricsLog log;
//   RETURN_IF_ERROR(log.Open("/tmp/run/metrics.jsonl", /*append=*/false));
//   log.Write(R"({"step": 1, "loss": 2.5})");
#ifndef LLAMA_MOE_TRAIN_PROGRESS_H_
#define LLAMA_MOE_TRAIN_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"

namespace llama_moe {

class Progress {
 public:
  Progress(int64_t first_step, int64_t total_steps, bool tty);
  // After optimizer step `step` (1-based).
  void Update(int64_t step, double loss, double lr, double tokens_per_s);
  // A line that must not be overwritten by the bar (evaluation results, checkpoints).
  void Note(const std::string& line);
  void Finish();

 private:
  int64_t first_, total_;
  bool tty_;
  bool bar_shown_ = false;
  std::chrono::steady_clock::time_point start_;
};

class MetricsLog {
 public:
  MetricsLog() = default;
  ~MetricsLog();
  absl::Status Open(const std::string& path, bool append);
  void Write(const std::string& json_line);

 private:
  std::FILE* f_ = nullptr;
};

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_PROGRESS_H_
