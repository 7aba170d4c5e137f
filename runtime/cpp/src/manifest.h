// The graph I/O contract, read from manifest.json exactly as latentcache/contract/manifest.py reads it: tensors by
// role (never by spelled-out name), the kv-cache layout, the version check and the file hashes.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common.h"

namespace latentcache {

constexpr int kManifestVersion = 3;  // latentcache/contract/manifest.py MANIFEST_VERSION
constexpr int kOldestManifestVersion = 1;  // READABLE_VERSIONS: version 1 is the paper's augmentation
// attention_mask values (EMPTY_SLOT, TOKEN_SLOT, LATENT_SLOT)
constexpr int64_t kEmptySlot = 0, kTokenSlot = 1, kLatentSlot = 2;

// The contract's roles (latentcache/contract/manifest.py); per-layer cache roles carry the layer in TensorSpec::layer.
namespace role {
inline const std::string inputIds = "input_ids", inputsEmbeds = "inputs_embeds", embedsMask = "embeds_mask";
inline const std::string positionIds = "position_ids", writeIndex = "write_index", attentionMask = "attention_mask";
inline const std::string pastKey = "past_key", pastValue = "past_value";
inline const std::string presentKey = "present_key", presentValue = "present_value";
inline const std::string logits = "logits", latents = "latents";
}  // namespace role

using Dim = std::variant<int64_t, std::string>;  // a fixed size or a named dimension ("batch", "query", ...)

struct TensorSpec {
    std::string name, role;
    DType dtype = DType::Float32;
    std::vector<Dim> shape;
    int layer = -1;  // -1: not a per-layer tensor
};

struct CachePair {
    const TensorSpec* key;
    const TensorSpec* value;
};

struct GraphSpec {
    std::string file;
    std::vector<TensorSpec> inputs, outputs;

    const TensorSpec& tensor(const std::string& role, int layer = -1, bool output = false) const;
    bool has(const std::string& role) const;
    bool writesCache() const;
    std::vector<CachePair> cachePairs(bool past) const;  // per layer, in layer order
    std::vector<const TensorSpec*> plainInputs() const;  // the non-cache inputs
    std::vector<const TensorSpec*> plainOutputs() const;  // the non-cache outputs (logits or latents)
};

struct KVSpec {
    int64_t numLayers = 0, numKvHeads = 0, headDim = 0, maxSeq = 0, batch = 0;
    DType dtype = DType::Float32;
    std::vector<int64_t> shape() const { return {batch, numKvHeads, maxSeq, headDim}; }
};

struct Manifest {
    std::map<std::string, GraphSpec> graphs;
    KVSpec kv;
    std::string dtype, kvUpdate;
    int64_t hiddenSize = 0, vocabSize = 0, numLatents = 0;
    std::vector<int64_t> eosTokenIds;
    std::vector<std::string> tokenizerFiles;
    std::optional<std::string> chatTemplate;  // a file in the artifacts directory
    std::map<std::string, std::string> files;  // file -> sha256
    std::string augmentation;  // "gated" | "refeed" | "paper" with a coprocessor, else ""
    std::string weightIndex;   // weights.bin's index (export/weight_store.py), "" in older artifacts

    // The runtime feeds the last token again after the latents and marks latent slots kLatentSlot.
    bool refeeds() const { return augmentation == "gated" || augmentation == "refeed"; }
    int64_t latentSlotValue() const { return refeeds() ? kLatentSlot : kTokenSlot; }
    bool hasGraph(const std::string& name) const { return graphs.count(name) > 0; }
    const GraphSpec& graph(const std::string& name) const;
    // The fixed named dimensions of the contract (latentcache/contract/manifest.py Manifest.named_sizes).
    std::map<std::string, int64_t> namedSizes() const;
};

// Read DIR/manifest.json (load_manifest): version, integrity field, paths confined to DIR and covered by
// `files`; with `verify`, every listed file must exist with its sha256.
Manifest loadManifest(const std::string& directory, bool verify = true);

std::string sha256File(const std::string& path);  // lowercase hex
std::string sha256Text(const std::string& text);  // lowercase hex
std::string readFile(const std::string& path);

}  // namespace latentcache
