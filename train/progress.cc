#include "train/progress.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace llama_moe {

Progress::Progress(int64_t first_step, int64_t total_steps, bool tty)
    : first_(first_step), total_(total_steps), tty_(tty), start_(std::chrono::steady_clock::now()) {}

void Progress::Update(int64_t step, double loss, double lr, double tokens_per_s) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t done = step - first_;
  const double eta = done > 0 ? elapsed / done * (total_ - step) : 0;
  const std::string stats = absl::StrFormat("step %d/%d loss %.4f lr %.2e %.0f tok/s ETA %dm%02ds", step, total_,
                                            loss, lr, tokens_per_s, static_cast<int>(eta) / 60,
                                            static_cast<int>(eta) % 60);
  if (tty_) {
    const int width = 30;
    const int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
    std::fprintf(stderr, "\r[%s%s] %s\033[K", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), stats.c_str());
    std::fflush(stderr);
    bar_shown_ = true;
  } else {
    std::fprintf(stderr, "%s\n", stats.c_str());
  }
}

void Progress::Note(const std::string& line) {
  if (tty_ && bar_shown_) std::fprintf(stderr, "\n");
  bar_shown_ = false;
  std::fprintf(stderr, "%s\n", line.c_str());
}

void Progress::Finish() {
  if (tty_ && bar_shown_) std::fprintf(stderr, "\n");
  bar_shown_ = false;
}

MetricsLog::~MetricsLog() {
  if (f_ != nullptr) std::fclose(f_);
}

absl::Status MetricsLog::Open(const std::string& path, bool append) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (f_ == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat("cannot open '", path, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

void MetricsLog::Write(const std::string& json_line) {
  if (f_ == nullptr) return;
  std::fprintf(f_, "%s\n", json_line.c_str());
  std::fflush(f_);
}

}  // namespace llama_moe
