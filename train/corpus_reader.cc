#include "train/corpus_reader.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "model/file_util.h"
#include "model/json_util.h"
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
  if (name == "chat") return CorpusFormat::kChat;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown input format '", name, "' (expected text, brown or chat)"));
}

const char* CorpusFormatName(CorpusFormat format) {
  switch (format) {
    case CorpusFormat::kBrown:
      return "brown";
    case CorpusFormat::kChat:
      return "chat";
    case CorpusFormat::kText:
      break;
  }
  return "text";
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
  if (format == CorpusFormat::kChat) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is chat data: read it with ReadConversations"));
  }
  ASSIGN_OR_RETURN(const std::string content, ReadFileToString(path));
  if (format == CorpusFormat::kText) return SplitTextDocuments(content);
  std::string text = BrownToText(content);
  std::vector<std::string> documents;
  if (!text.empty()) documents.push_back(std::move(text));
  return documents;
}

absl::StatusOr<std::vector<std::vector<ChatMessage>>> ParseChatJsonl(absl::string_view content,
                                                                     absl::string_view path) {
  std::vector<std::vector<ChatMessage>> conversations;
  size_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(content, '\n')) {
    ++line_number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    const std::string where = absl::StrCat("chat data '", path, "' line ", line_number);
    ASSIGN_OR_RETURN(const nlohmann::json json, ParseJson(line, where));
    auto error = [&where](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", parts...));
    };
    if (!json.is_object()) return error("not a JSON object");
    auto messages = json.find("messages");
    if (messages == json.end() || !messages->is_array()) return error("no \"messages\" array");
    std::vector<ChatMessage> conversation;
    bool has_assistant = false;
    for (size_t i = 0; i < messages->size(); ++i) {
      const nlohmann::json& m = (*messages)[i];
      if (!m.is_object()) return error("message ", i, " is not an object");
      auto role = m.find("role");
      auto text = m.find("content");
      if (role == m.end() || !role->is_string()) return error("message ", i, " has no string \"role\"");
      if (text == m.end() || !text->is_string()) return error("message ", i, " has no string \"content\"");
      ChatMessage message{role->get<std::string>(), text->get<std::string>()};
      if (message.role != "system" && message.role != "user" && message.role != "assistant" &&
          message.role != "ipython") {
        return error("message ", i, " has role '", absl::CHexEscape(message.role),
                     "' (expected system, user, assistant or ipython)");
      }
      has_assistant |= message.role == "assistant";
      conversation.push_back(std::move(message));
    }
    if (!has_assistant) return error("the conversation has no assistant turn, so nothing in it is learned");
    conversations.push_back(std::move(conversation));
  }
  return conversations;
}

absl::StatusOr<std::vector<std::vector<ChatMessage>>> ReadConversations(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string content, ReadFileToString(path));
  return ParseChatJsonl(content, path);
}

}  // namespace llama_moe
