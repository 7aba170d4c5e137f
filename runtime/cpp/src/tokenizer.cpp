#include "tokenizer.h"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "common.h"
#include "manifest.h"
#include "unicode.h"

namespace latentcache {

using json = nlohmann::json;

namespace {

[[noreturn]] void unsupported(const std::string& what) {
    throw Error("tokenizer.json: " + what + " is not supported by the native runtime (it handles byte-level BPE and "
                "per-character WordLevel tokenizers): use the Python runtime (`latentcache run`)");
}

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100 onwards.
struct ByteMap {
    std::string toChar[256];  // byte -> UTF-8 of its stand-in character
    std::unordered_map<uint32_t, unsigned char> toByte;
    ByteMap() {
        int next = 0;
        for (int b = 0; b < 256; ++b) {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + next++);
            appendUtf8(toChar[b], cp);
            toByte[cp] = static_cast<unsigned char>(b);
        }
    }
};
const ByteMap& byteMap() {
    static const ByteMap map;
    return map;
}

struct Piece {
    size_t begin, end;  // byte offsets into the segment
};

// The GPT-2 split pattern, hand-matched over code points with onig's backtracking semantics:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t gpt2Match(const std::vector<uint32_t>& cp, size_t i) {
    const size_t n = cp.size();
    if (cp[i] == '\'' && i + 1 < n) {
        uint32_t a = cp[i + 1], b = i + 2 < n ? cp[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    const auto isOther = [](uint32_t c) { return !isSpace(c) && !isLetter(c) && !isNumber(c); };
    for (auto cls : {+[](uint32_t c) { return isLetter(c); }, +[](uint32_t c) { return isNumber(c); }}) {
        size_t j = i + (cp[i] == ' ' && i + 1 < n && cls(cp[i + 1]) ? 1 : 0);
        if (cls(cp[j])) {
            while (j < n && cls(cp[j])) ++j;
            return j - i;
        }
    }
    size_t j = i + (cp[i] == ' ' && i + 1 < n && isOther(cp[i + 1]) ? 1 : 0);
    if (isOther(cp[j])) {
        while (j < n && isOther(cp[j])) ++j;
        return j - i;
    }
    size_t end = i;  // cp[i] is whitespace here
    while (end < n && isSpace(cp[end])) ++end;
    if (end < n && end - i >= 2) return end - 1 - i;  // \s+(?!\S): leave the last space to the next word
    return end - i;                                    // \s+ (or the run reaching the end)
}

// One pre-tokenizer step: splits every piece further (the `tokenizers` PreTokenizedString model).
struct PreTokenizer {
    enum class Kind { ByteLevel, SplitAnyChar, SplitLiteral } kind;
    bool addPrefixSpace = false, useRegex = true;
    std::string literal;
};

PreTokenizer parsePreTokenizer(const json& node) {
    const std::string type = node.value("type", "");
    PreTokenizer p{};
    if (type == "ByteLevel") {
        p.kind = PreTokenizer::Kind::ByteLevel;
        p.addPrefixSpace = node.value("add_prefix_space", false);
        p.useRegex = node.value("use_regex", true);
        return p;
    }
    if (type == "Split") {
        if (node.value("behavior", "") != "Isolated" || node.value("invert", false))
            unsupported("a Split pre-tokenizer with behavior " + node.value("behavior", "?") + (node.value("invert", false) ? " (inverted)" : ""));
        const json& pattern = node.at("pattern");
        if (pattern.contains("String")) {
            p.kind = PreTokenizer::Kind::SplitLiteral;
            p.literal = pattern["String"].get<std::string>();
            if (p.literal.empty()) unsupported("an empty Split pattern");
            return p;
        }
        if (pattern.value("Regex", "") == ".") {
            p.kind = PreTokenizer::Kind::SplitAnyChar;
            return p;
        }
        unsupported("the Split regex '" + pattern.value("Regex", "?") + "'");
    }
    unsupported("the pre-tokenizer '" + (type.empty() ? std::string("?") : type) + "'");
}

}  // namespace

struct Tokenizer::Impl {
    enum class Model { BPE, WordLevel } model = Model::BPE;
    enum class Decoder { ByteLevel, Fuse, None } decoder = Decoder::None;
    std::unordered_map<std::string, int64_t> vocab;
    std::unordered_map<int64_t, std::string> idToToken;
    std::unordered_map<uint64_t, std::pair<int, int64_t>> merges;  // (left id, right id) -> (rank, merged id)
    int64_t unkId = -1;
    struct Added {
        std::string content;
        int64_t id;
        bool special;
    };
    std::vector<Added> added;
    std::unordered_set<int64_t> specialIds;
    std::vector<PreTokenizer> preTokenizers;
    bool byteLevelInput = false;  // a ByteLevel pre-tokenizer maps bytes to stand-in characters
    std::vector<int64_t> prefixIds, suffixIds;  // TemplateProcessing's special tokens around a single sequence
    mutable std::unordered_map<std::string, std::vector<int64_t>> cache;  // BPE results per word

    void load(const json& root);
    void loadModel(const json& model);
    void loadPostProcessor(const json& node);
    void split(const std::string& text, std::vector<std::string>& pieces) const;
    void splitStep(const PreTokenizer& p, const std::string& piece, std::vector<std::string>& out) const;
    void modelIds(const std::string& piece, std::vector<int64_t>& ids) const;
    std::vector<int64_t> bpe(const std::string& word) const;
};

static uint64_t pairKey(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(b); }

void Tokenizer::Impl::loadModel(const json& m) {
    const std::string type = m.value("type", "");
    for (const auto& [token, id] : m.at("vocab").items()) vocab[token] = id.get<int64_t>();
    for (const auto& [token, id] : vocab) idToToken[id] = token;
    if (type == "WordLevel") {
        model = Model::WordLevel;
        if (m.contains("unk_token") && m["unk_token"].is_string()) {
            auto found = vocab.find(m["unk_token"].get<std::string>());
            if (found != vocab.end()) unkId = found->second;
        }
        return;
    }
    if (type != "BPE") unsupported("the model type '" + type + "'");
    if (m.value("byte_fallback", false)) unsupported("BPE with byte_fallback");
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() > 0) unsupported("BPE dropout");
    if (m.value("ignore_merges", false)) unsupported("BPE with ignore_merges");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
        if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty())
            unsupported(std::string("BPE with a ") + key);
    if (m.contains("unk_token") && m["unk_token"].is_string()) unsupported("BPE with an unk_token");
    int rank = 0;
    for (const auto& merge : m.at("merges")) {
        std::string left, right;
        if (merge.is_array()) {
            left = merge.at(0).get<std::string>();
            right = merge.at(1).get<std::string>();
        } else {  // older files: "left right"
            const std::string text = merge.get<std::string>();
            size_t space = text.find(' ');
            left = text.substr(0, space);
            right = text.substr(space + 1);
        }
        auto a = vocab.find(left), b = vocab.find(right), ab = vocab.find(left + right);
        if (a == vocab.end() || b == vocab.end() || ab == vocab.end())
            throw Error("tokenizer.json: merge '" + left + " " + right + "' uses tokens outside the vocabulary");
        merges.emplace(pairKey(a->second, b->second), std::make_pair(rank++, ab->second));
    }
}

void Tokenizer::Impl::loadPostProcessor(const json& node) {
    if (node.is_null()) return;
    const std::string type = node.value("type", "");
    if (type == "ByteLevel") return;  // offsets only
    if (type != "TemplateProcessing") unsupported("the post-processor '" + type + "'");
    bool afterSequence = false;
    for (const auto& item : node.at("single")) {
        if (item.contains("Sequence")) {
            afterSequence = true;
            continue;
        }
        const std::string name = item.at("SpecialToken").at("id").get<std::string>();
        for (const auto& id : node.at("special_tokens").at(name).at("ids"))
            (afterSequence ? suffixIds : prefixIds).push_back(id.get<int64_t>());
    }
}

void Tokenizer::Impl::load(const json& root) {
    if (!root.value("normalizer", json()).is_null())
        unsupported("the normalizer '" + root["normalizer"].value("type", "?") + "'");
    loadModel(root.at("model"));
    for (const auto& token : root.value("added_tokens", json::array())) {
        if (token.value("lstrip", false) || token.value("rstrip", false) || token.value("single_word", false))
            unsupported("an added token with lstrip/rstrip/single_word ('" + token.value("content", "") + "')");
        Added a{token.at("content").get<std::string>(), token.at("id").get<int64_t>(), token.value("special", false)};
        idToToken[a.id] = a.content;
        if (a.special) specialIds.insert(a.id);
        added.push_back(a);
    }
    const json& pre = root.value("pre_tokenizer", json());
    if (!pre.is_null()) {
        if (pre.value("type", "") == "Sequence") {
            for (const auto& step : pre.at("pretokenizers")) preTokenizers.push_back(parsePreTokenizer(step));
        } else {
            preTokenizers.push_back(parsePreTokenizer(pre));
        }
    }
    for (const auto& p : preTokenizers) byteLevelInput |= p.kind == PreTokenizer::Kind::ByteLevel;
    const json& dec = root.value("decoder", json());
    const std::string decoderType = dec.is_null() ? "" : dec.value("type", "");
    if (decoderType == "ByteLevel") decoder = Decoder::ByteLevel;
    else if (decoderType == "Fuse") decoder = Decoder::Fuse;
    else if (!decoderType.empty()) unsupported("the decoder '" + decoderType + "'");
    if (byteLevelInput != (decoder == Decoder::ByteLevel)) unsupported("a ByteLevel pre-tokenizer without its decoder (or vice versa)");
    loadPostProcessor(root.value("post_processor", json()));
}

void Tokenizer::Impl::splitStep(const PreTokenizer& p, const std::string& piece, std::vector<std::string>& out) const {
    std::vector<uint32_t> cp;
    std::vector<size_t> at;
    switch (p.kind) {
        case PreTokenizer::Kind::ByteLevel: {
            std::string text = piece;
            if (p.addPrefixSpace && text.rfind(' ', 0) != 0) text = " " + text;
            std::vector<std::string> words;
            if (p.useRegex) {
                decodeUtf8(text, cp, at);
                for (size_t i = 0; i < cp.size();) {
                    size_t length = gpt2Match(cp, i);
                    words.push_back(text.substr(at[i], at[i + length] - at[i]));
                    i += length;
                }
            } else {
                words.push_back(text);
            }
            const ByteMap& map = byteMap();
            for (const auto& word : words) {
                std::string mapped;
                for (unsigned char b : word) mapped += map.toChar[b];
                out.push_back(std::move(mapped));
            }
            return;
        }
        case PreTokenizer::Kind::SplitAnyChar: {  // Regex "." isolated: every char but '\n' alone, '\n' runs between
            decodeUtf8(piece, cp, at);
            for (size_t i = 0; i < cp.size();) {
                size_t j = i + 1;
                if (cp[i] == '\n')
                    while (j < cp.size() && cp[j] == '\n') ++j;
                out.push_back(piece.substr(at[i], at[j] - at[i]));
                i = j;
            }
            return;
        }
        case PreTokenizer::Kind::SplitLiteral: {
            size_t start = 0;
            for (size_t hit; (hit = piece.find(p.literal, start)) != std::string::npos; start = hit + p.literal.size()) {
                if (hit > start) out.push_back(piece.substr(start, hit - start));
                out.push_back(p.literal);
            }
            if (start < piece.size()) out.push_back(piece.substr(start));
            return;
        }
    }
}

void Tokenizer::Impl::split(const std::string& text, std::vector<std::string>& pieces) const {
    pieces.assign(1, text);
    for (const auto& p : preTokenizers) {
        std::vector<std::string> next;
        for (const auto& piece : pieces) splitStep(p, piece, next);
        pieces.swap(next);
    }
}

std::vector<int64_t> Tokenizer::Impl::bpe(const std::string& word) const {
    std::vector<uint32_t> cp;
    std::vector<size_t> at;
    decodeUtf8(word, cp, at);
    std::vector<int64_t> symbols;
    for (size_t i = 0; i < cp.size(); ++i) {
        auto found = vocab.find(word.substr(at[i], at[i + 1] - at[i]));
        if (found != vocab.end()) symbols.push_back(found->second);  // no unk_token: unknown chars vanish, as in `tokenizers`
    }
    // Merge the lowest-ranked adjacent pair (leftmost on ties) until none is left.
    while (symbols.size() > 1) {
        int best = std::numeric_limits<int>::max();
        size_t where = 0;
        int64_t merged = 0;
        for (size_t i = 0; i + 1 < symbols.size(); ++i) {
            auto found = merges.find(pairKey(symbols[i], symbols[i + 1]));
            if (found != merges.end() && found->second.first < best) {
                best = found->second.first;
                where = i;
                merged = found->second.second;
            }
        }
        if (best == std::numeric_limits<int>::max()) break;
        symbols[where] = merged;
        symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(where) + 1);
    }
    return symbols;
}

void Tokenizer::Impl::modelIds(const std::string& piece, std::vector<int64_t>& ids) const {
    if (model == Model::WordLevel) {
        auto found = vocab.find(piece);
        if (found != vocab.end()) { ids.push_back(found->second); return; }
        if (unkId < 0) throw Error("tokenizer.json: WordLevel has no unk_token for '" + piece + "'");
        ids.push_back(unkId);
        return;
    }
    auto cached = cache.find(piece);
    if (cached == cache.end()) cached = cache.emplace(piece, bpe(piece)).first;
    ids.insert(ids.end(), cached->second.begin(), cached->second.end());
}

Tokenizer::Tokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
    try {
        impl_->load(json::parse(readFile(path)));
    } catch (const json::exception& exc) {
        throw Error(path + " is malformed (" + exc.what() + ")");
    }
}

Tokenizer::~Tokenizer() = default;

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool addSpecialTokens) const {
    const Impl& t = *impl_;
    std::vector<int64_t> ids;
    if (addSpecialTokens) ids = t.prefixIds;
    std::vector<std::string> pieces;
    auto encodePlain = [&](size_t begin, size_t end) {
        if (end <= begin) return;
        t.split(text.substr(begin, end - begin), pieces);
        for (const auto& piece : pieces) t.modelIds(piece, ids);
    };
    // Added tokens are cut out first, leftmost-longest (the aho-corasick match `tokenizers` uses).
    size_t plainStart = 0;
    for (size_t i = 0; i < text.size();) {
        const Impl::Added* best = nullptr;
        for (const auto& a : t.added)
            if (text.compare(i, a.content.size(), a.content) == 0 && (!best || a.content.size() > best->content.size()))
                best = &a;
        if (!best) { ++i; continue; }
        encodePlain(plainStart, i);
        ids.push_back(best->id);
        i += best->content.size();
        plainStart = i;
    }
    encodePlain(plainStart, text.size());
    if (addSpecialTokens) ids.insert(ids.end(), t.suffixIds.begin(), t.suffixIds.end());
    return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
    const Impl& t = *impl_;
    std::vector<const std::string*> tokens;
    for (int64_t id : ids) {
        auto found = t.idToToken.find(id);
        if (found != t.idToToken.end() && !t.specialIds.count(id)) tokens.push_back(&found->second);
    }
    std::string out;
    if (t.decoder == Impl::Decoder::ByteLevel) {
        const ByteMap& map = byteMap();
        std::vector<uint32_t> cp;
        std::vector<size_t> at;
        for (const auto* token : tokens) {
            decodeUtf8(*token, cp, at, "a vocabulary token");
            std::string bytes;
            bool mapped = true;
            for (uint32_t c : cp) {
                auto found = map.toByte.find(c);
                if (found == map.toByte.end()) { mapped = false; break; }
                bytes += static_cast<char>(found->second);
            }
            out += mapped ? bytes : *token;  // `tokenizers` keeps a token with an unmapped char as it is
        }
        return utf8Lossy(out);
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (i && t.decoder == Impl::Decoder::None) out += ' ';  // no decoder: tokens joined by spaces
        out += *tokens[i];
    }
    return out;
}

int64_t Tokenizer::tokenToId(const std::string& token) const {
    for (const auto& a : impl_->added)
        if (a.content == token) return a.id;
    auto found = impl_->vocab.find(token);
    return found == impl_->vocab.end() ? -1 : found->second;
}

}  // namespace latentcache
