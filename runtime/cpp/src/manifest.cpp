#include "manifest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <memory>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

namespace latentcache {

using json = nlohmann::json;

const TensorSpec& GraphSpec::tensor(const std::string& r, int layer, bool output) const {
    for (const auto& spec : output ? outputs : inputs)
        if (spec.role == r && spec.layer == layer) return spec;
    throw Error(file + " has no " + (output ? "output" : "input") + " for role " + r + " layer " +
                (layer < 0 ? std::string("None") : std::to_string(layer)) + ": re-export the artifacts");
}

bool GraphSpec::has(const std::string& r) const {
    for (const auto& spec : inputs)
        if (spec.role == r) return true;
    return false;
}

bool GraphSpec::writesCache() const {
    for (const auto& spec : outputs)
        if (spec.role == role::presentKey) return true;
    return false;
}

std::vector<CachePair> GraphSpec::cachePairs(bool past) const {
    const auto& specs = past ? inputs : outputs;
    const std::string& keyRole = past ? role::pastKey : role::presentKey;
    const std::string& valueRole = past ? role::pastValue : role::presentValue;
    std::map<int, CachePair> byLayer;
    for (const auto& spec : specs) {
        if (spec.role == keyRole) byLayer[spec.layer].key = &spec;
        if (spec.role == valueRole) byLayer[spec.layer].value = &spec;
    }
    std::vector<CachePair> pairs;
    for (auto& [layer, pair] : byLayer) {
        if (!pair.key || !pair.value) throw Error(file + ": layer " + std::to_string(layer) + " lacks a key or value cache");
        pairs.push_back(pair);
    }
    return pairs;
}

static bool isCacheRole(const std::string& r) {
    return r == role::pastKey || r == role::pastValue || r == role::presentKey || r == role::presentValue;
}

std::vector<const TensorSpec*> GraphSpec::plainInputs() const {
    std::vector<const TensorSpec*> out;
    for (const auto& spec : inputs)
        if (!isCacheRole(spec.role)) out.push_back(&spec);
    return out;
}

std::vector<const TensorSpec*> GraphSpec::plainOutputs() const {
    std::vector<const TensorSpec*> out;
    for (const auto& spec : outputs)
        if (!isCacheRole(spec.role)) out.push_back(&spec);
    return out;
}

const GraphSpec& Manifest::graph(const std::string& name) const {
    auto found = graphs.find(name);
    if (found == graphs.end()) throw Error("the artifacts have no '" + name + "' graph");
    return found->second;
}

std::map<std::string, int64_t> Manifest::namedSizes() const {
    return {{"batch", kv.batch}, {"kv_heads", kv.numKvHeads}, {"max_seq", kv.maxSeq},
            {"head_dim", kv.headDim}, {"hidden", hiddenSize}, {"vocab", vocabSize}};
}

std::string readFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot read " + path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

namespace {
using Digest = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

Digest newDigest() {
    Digest ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw Error("OpenSSL SHA-256 unavailable");
    return ctx;
}

std::string hexDigest(EVP_MD_CTX* ctx);
}  // namespace

std::string sha256File(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot read " + path);
    Digest ctx = newDigest();
    std::vector<char> buffer(1 << 20);
    while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
    }
    return hexDigest(ctx.get());
}

std::string sha256Text(const std::string& text) {
    Digest ctx = newDigest();
    EVP_DigestUpdate(ctx.get(), text.data(), text.size());
    return hexDigest(ctx.get());
}

namespace {
std::string hexDigest(EVP_MD_CTX* ctx) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx, digest, &length);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}
}  // namespace

static bool isFile(const std::string& path) {
    struct stat info {};
    return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

static TensorSpec parseTensor(const json& data) {
    TensorSpec spec;
    spec.name = data.at("name").get<std::string>();
    spec.role = data.at("role").get<std::string>();
    spec.dtype = parseDType(data.at("dtype").get<std::string>());
    for (const auto& dim : data.at("shape")) {
        if (dim.is_string()) spec.shape.emplace_back(dim.get<std::string>());
        else spec.shape.emplace_back(dim.get<int64_t>());
    }
    if (data.contains("layer") && !data["layer"].is_null()) spec.layer = data["layer"].get<int>();
    return spec;
}

static GraphSpec parseGraph(const json& data) {
    GraphSpec graph;
    graph.file = data.at("file").get<std::string>();
    for (const auto& t : data.at("inputs")) graph.inputs.push_back(parseTensor(t));
    for (const auto& t : data.at("outputs")) graph.outputs.push_back(parseTensor(t));
    return graph;
}

// latentcache/contract/manifest.py integrity_of: sha256 of the canonical JSON (sorted keys, no spaces, ASCII
// escapes, the integrity field left out). nlohmann keeps objects sorted and prints floats shortest-first
// like Python's repr, so both sides hash the same bytes for the values a manifest holds.
static void checkIntegrity(const json& data, int version) {
    const json& claimed = data.contains("integrity") ? data["integrity"] : json();
    if (!claimed.is_string() || claimed.get<std::string>().empty())
        throw Error("manifest version " + std::to_string(version) + " without an integrity field (written before "
                    "latentcache checked manifests): re-export the artifacts with this latentcache version");
    json rest = data;
    rest.erase("integrity");
    if (sha256Text(rest.dump(-1, ' ', true)) != claimed.get<std::string>())
        throw Error("manifest.json was edited or damaged after export (its integrity sha256 does not match its "
                    "contents): re-export the artifacts");
}

static Manifest parseManifest(const json& data) {
    const json& version = data.contains("version") ? data["version"] : json();
    if (!version.is_number_integer() || version.get<int>() < kOldestManifestVersion ||
        version.get<int>() > kManifestVersion)
        throw Error("manifest version " + (version.is_null() ? std::string("None") : version.dump()) +
                    " is not supported by this runtime (reads versions " + std::to_string(kOldestManifestVersion) +
                    " to " + std::to_string(kManifestVersion) + "): re-export the artifacts with this latentcache version");
    checkIntegrity(data, version.get<int>());
    Manifest m;
    for (const auto& [name, graph] : data.at("graphs").items()) m.graphs[name] = parseGraph(graph);
    const json& kv = data.at("kv");
    m.kv = {kv.at("num_layers").get<int64_t>(), kv.at("num_kv_heads").get<int64_t>(), kv.at("head_dim").get<int64_t>(),
            kv.at("max_seq").get<int64_t>(), kv.at("batch").get<int64_t>(), parseDType(kv.at("dtype").get<std::string>())};
    m.dtype = data.at("dtype").get<std::string>();
    m.kvUpdate = data.at("kv_update").get<std::string>();
    m.hiddenSize = data.at("hidden_size").get<int64_t>();
    m.vocabSize = data.at("vocab_size").get<int64_t>();
    m.numLatents = data.at("num_latents").get<int64_t>();
    const json& special = data.at("special_tokens");
    if (special.contains("eos_token_ids") && special["eos_token_ids"].is_array())
        m.eosTokenIds = special["eos_token_ids"].get<std::vector<int64_t>>();
    m.tokenizerFiles = data.at("tokenizer_files").get<std::vector<std::string>>();
    if (data.contains("chat_template") && data["chat_template"].is_string())
        m.chatTemplate = data["chat_template"].get<std::string>();
    if (data.contains("weight_index") && data["weight_index"].is_string())
        m.weightIndex = data["weight_index"].get<std::string>();
    if (data.contains("files")) m.files = data["files"].get<std::map<std::string, std::string>>();
    if (version.get<int>() == 1)  // written before the variants: the paper's, when there is a coprocessor at all
        m.augmentation = m.numLatents ? "paper" : "";
    else
        m.augmentation = data.at("augmentation").get<std::string>();
    // The same invariants as Manifest.__post_init__.
    if (m.kvUpdate != "inplace" && m.kvUpdate != "portable")
        throw Error("kv_update must be one of ('inplace', 'portable'), got '" + m.kvUpdate + "'");
    for (const char* needed : {"prefill", "decode"})
        if (!m.hasGraph(needed)) throw Error(std::string("manifest lacks the ") + needed + " graph(s)");
    if ((m.numLatents > 0) != m.hasGraph("coprocessor"))
        throw Error("num_latents and the presence of the coprocessor graph disagree");
    const bool known = m.numLatents ? (m.augmentation == "gated" || m.augmentation == "refeed" ||
                                       m.augmentation == "paper")
                                    : m.augmentation.empty();
    if (!known)
        throw Error("augmentation '" + m.augmentation + "' with " + std::to_string(m.numLatents) +
                    " latents is not one this runtime knows: re-export the artifacts");
    return m;
}

// latentcache/contract/manifest.py check_paths: every path stays inside the artifacts folder (symlinks
// resolved), and every file the runtime may read there has a sha256 in `files`.
static void checkPaths(const std::string& directory, const Manifest& manifest) {
    namespace fs = std::filesystem;
    const fs::path root = fs::weakly_canonical(directory);
    std::vector<std::string> referenced = manifest.tokenizerFiles;
    for (const auto& [name, graph] : manifest.graphs) referenced.push_back(graph.file);
    if (manifest.chatTemplate) referenced.push_back(*manifest.chatTemplate);
    if (!manifest.weightIndex.empty()) referenced.push_back(manifest.weightIndex);
    std::vector<std::string> named = referenced;
    for (const auto& [name, sha] : manifest.files) named.push_back(name);
    for (const auto& name : named) {
        const fs::path relative(name);
        bool escapes = name.empty() || relative.is_absolute();
        for (const auto& part : relative) escapes = escapes || part == "..";
        if (escapes)
            throw Error(directory + "/manifest.json: path '" + name + "' leaves the artifacts folder: re-export the "
                        "artifacts");
        const fs::path resolved = fs::weakly_canonical(root / relative);
        const auto [end, unused] = std::mismatch(root.begin(), root.end(), resolved.begin(), resolved.end());
        if (end != root.end())
            throw Error(directory + "/" + name + " resolves outside the artifacts folder (a symlink?): re-export "
                        "the artifacts");
    }
    std::set<std::string> present;
    for (const auto& name : referenced)
        if (fs::exists(root / name)) present.insert(name);
    for (const auto& entry : fs::directory_iterator(root)) {
        const std::string name = entry.path().filename().string();
        if (entry.is_regular_file() && name[0] != '.' && name != "manifest.json") present.insert(name);
    }
    for (const auto& name : present)
        if (!manifest.files.count(name))
            throw Error(directory + "/manifest.json: no sha256 for " + name + " (its files map must cover every file "
                        "the graphs and tokenizer read): re-export the artifacts");
}

Manifest loadManifest(const std::string& directory, bool verify) {
    const std::string path = directory + "/manifest.json";
    if (!isFile(path))
        throw Error(directory + " is not an artifacts directory (no manifest.json): run `latentcache export`");
    Manifest manifest;
    try {
        manifest = parseManifest(json::parse(readFile(path)));
    } catch (const json::exception& exc) {
        throw Error(path + " is malformed (" + exc.what() + "): re-export the artifacts");
    }
    checkPaths(directory, manifest);
    if (verify) {
        for (const auto& [name, expected] : manifest.files) {
            const std::string file = directory + "/" + name;
            if (!isFile(file)) throw Error(file + " is listed in the manifest but missing: re-export the artifacts");
            if (sha256File(file) != expected)
                throw Error(file + " does not match its sha256 in the manifest: re-export the artifacts");
        }
    }
    return manifest;
}

}  // namespace latentcache
