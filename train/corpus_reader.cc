#include "train/corpus_reader.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/file_util.h"
#include "model/status_macros.h"

namespace llama_moe {
namespace {

bool IsBlank(absl::string_view line) { return absl::StripAsciiWhitespace(line).empty(); }

// Brown corpus file names: category letter pair and a two-digit number, e.g. "ca01", "cr09".
bool IsBrownFileName(absl::string_view name) {
  return name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'z' &&
         absl::ascii_isdigit(static_cast<unsigned char>(name[2])) &&
         absl::ascii_isdigit(static_cast<unsigned char>(name[3]));
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir, CorpusFormat format) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("cannot list input directory '", dir, "'"));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(d)) {
    const std::string name = entry->d_name;
    if (name.empty() || name[0] == '.') continue;
    if (format == CorpusFormat::kBrown && !IsBrownFileName(name)) continue;
    const std::string path = JoinPath(dir, name);
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) names.push_back(path);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

absl::StatusOr<CorpusFormat> ParseCorpusFormat(absl::string_view name) {
  if (name == "text") return CorpusFormat::kText;
  if (name == "brown") return CorpusFormat::kBrown;
  return absl::InvalidArgumentError(absl::StrCat("unknown input format '", name, "' (expected text or brown)"));
}

const char* CorpusFormatName(CorpusFormat format) {
  return format == CorpusFormat::kBrown ? "brown" : "text";
}

absl::StatusOr<std::vector<std::string>> ListInputFiles(const std::vector<std::string>& inputs,
                                                       CorpusFormat format) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    if (IsDirectory(input)) {
      ASSIGN_OR_RETURN(std::vector<std::string> listed, ListDirectory(input, format));
      if (listed.empty()) {
        return absl::NotFoundError(absl::StrCat("input directory '", input, "' holds no ",
                                                CorpusFormatName(format), " files"));
      }
      files.insert(files.end(), listed.begin(), listed.end());
    } else if (PathExists(input)) {
      files.push_back(input);
    } else {
      return absl::NotFoundError(absl::StrCat("input '", input, "' does not exist"));
    }
  }
  if (files.empty()) return absl::InvalidArgumentError("no input files given");
  return files;
}

std::vector<std::string> SplitTextDocuments(absl::string_view content) {
  std::vector<std::string> documents;
  std::string current;
  auto finish = [&] {
    if (!current.empty()) documents.push_back(std::move(current));
    current.clear();
  };
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    if (IsBlank(line)) {
      finish();
      continue;
    }
    if (!current.empty()) current += '\n';
    absl::StrAppend(&current, line);
  }
  finish();
  return documents;
}

std::string BrownToText(absl::string_view content) {
  std::string out;
  bool paragraph_break = false;  // a blank line was seen since the last sentence
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    if (IsBlank(line)) {
      paragraph_break = true;
      continue;
    }
    if (!out.empty()) out += paragraph_break ? "\n\n" : "\n";
    paragraph_break = false;
    bool glue_next = true;  // no space before the first word of a line, nor after an opening quote
    for (absl::string_view token : absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty())) {
      const size_t slash = token.rfind('/');
      // Every corpus token has a tag; a token without one (or with an empty word) is kept whole.
      const absl::string_view word = (slash == absl::string_view::npos || slash == 0) ? token : token.substr(0, slash);
      if (word == "``") {
        if (!glue_next) out += ' ';
        out += '"';
        glue_next = true;
      } else if (word == "''") {
        out += '"';
        glue_next = false;
      } else {
        if (!glue_next) out += ' ';
        absl::StrAppend(&out, word);
        glue_next = false;
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadDocuments(const std::string& path, CorpusFormat format) {
  ASSIGN_OR_RETURN(const std::string content, ReadFileToString(path));
  if (format == CorpusFormat::kText) return SplitTextDocuments(content);
  std::string text = BrownToText(content);
  std::vector<std::string> documents;
  if (!text.empty()) documents.push_back(std::move(text));
  return documents;
}

}  // namespace llama_moe
