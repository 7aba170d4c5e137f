// Text <-> ids for exactly the tokenizer.json shapes latentcache ships with, matching the HF `tokenizers`
// library id for id: byte-level BPE (GPT-2 / SmolLM2: ByteLevel pre-tokenizer with the GPT-2 split
// pattern, ByteLevel decoder) and WordLevel with a per-character Split pre-tokenizer and Fuse decoder
// (the tests' tiny tokenizers). Anything else is refused at load with a one-line error naming it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace latentcache {

class Tokenizer {
public:
    explicit Tokenizer(const std::string& tokenizerJsonPath);
    ~Tokenizer();
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    // `tokenizers`' Tokenizer.encode(text, add_special_tokens).ids
    std::vector<int64_t> encode(const std::string& text, bool addSpecialTokens = true) const;
    // `tokenizers`' Tokenizer.decode(ids, skip_special_tokens=True); unknown ids are dropped, as there.
    std::string decode(const std::vector<int64_t>& ids) const;
    // token_to_id (vocabulary and added tokens); -1 when absent
    int64_t tokenToId(const std::string& token) const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace latentcache
