// One copy of the weights for every ONNX Runtime session on the CPU (issue 15). The exporter's weight index
// (weights.json, export/weight_store.py) lists each graph's tensors in weights.bin. The file is mapped read-only
// once; every tensor the index marks `shared` becomes one OrtValue over the mapping, added to each session that
// names it (AddInitializer: ONNX Runtime then uses that memory and loads no copy), and one PrepackedWeightsContainer
// keeps the CPU kernels' prepacked form of each. ONNX Runtime caches prepacked copies only for such shared
// initializers and only on its CPU provider (onnxruntime/core/framework/session_state.cc,
// PrepackConstantInitializedTensors), so the prefill and coprocessor sessions then hold the base's weights once.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "manifest.h"

namespace latentcache {

class SharedWeights {
public:
    SharedWeights(const std::string& artifacts, const Manifest& manifest);  // throws Error on a bad index
    ~SharedWeights();
    SharedWeights(const SharedWeights&) = delete;
    SharedWeights& operator=(const SharedWeights&) = delete;

    // `graph`'s session, handed its shared tensors and the container (the values stay owned here and must
    // outlive the session).
    Ort::Session createSession(const Ort::Env& env, const std::string& path, const std::string& graph,
                               const Ort::SessionOptions& base);
    std::string describe() const;  // how many tensors and bytes are held once for how many sessions

private:
    void load(const std::string& artifacts, const std::string& indexPath, const nlohmann::json& index);
    Ort::SessionOptions optionsFor(const std::string& graph, const Ort::SessionOptions& base);
    // Drop the mapping's resident pages. A kernel that prepacked a tensor never reads the original again, and one
    // that does (an embedding's Gather) reads it back from the file through the page cache: this changes the
    // process's resident memory and nothing else.
    void releasePages();

    struct Entry {
        std::string name;
        int64_t offset = 0, length = 0;
        int type = 0;  // ONNX TensorProto data type (= ONNXTensorElementDataType)
        std::vector<int64_t> dims;
    };
    using Key = std::tuple<int64_t, int, std::vector<int64_t>>;  // offset, type, dims

    std::map<std::string, std::vector<Entry>> graphs_;  // the shared entries only
    void* map_ = nullptr;
    size_t size_ = 0;
    Ort::MemoryInfo cpu_ = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    Ort::PrepackedWeightsContainer container_;
    std::map<Key, Ort::Value> values_;
    std::map<Key, int64_t> lengths_;
    std::map<Key, int> users_;  // sessions that were handed each value
    int sessions_ = 0;
};

}  // namespace latentcache
