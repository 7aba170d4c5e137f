// One interface for every backend (runtime/backend.py): the graphs loaded once, one kv-cache allocated
// once on the backend's device, graphs run by role. Feeds are the non-cache inputs by role; the result is
// the non-cache outputs by role (logits or latents), host tensors owned by the backend and valid until
// the next run. The cache is read and written where it lives.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "common.h"
#include "manifest.h"

namespace latentcache {

using Feeds = std::map<std::string, HostTensor>;    // by role
using Results = std::map<std::string, HostTensor>;  // by role

class Backend {
public:
    virtual ~Backend() = default;
    virtual const Results& run(const std::string& graph, const Feeds& feeds) = 0;
    virtual void reset() = 0;  // zero the cache for a new request (no reallocation)
    virtual std::string describe() const = 0;
};

struct BackendOptions {
    std::string name = "ort-cpu";  // ort-cpu | ort-cuda | tensorrt
    int threads = 0;               // ONNX Runtime intra-op threads; 0: min(cores, 8) as the Python backend
    bool separateDecode = false;   // ONNX Runtime: load decode.onnx too (default: decode on the prefill session)
    bool shareWeights = true;      // ONNX Runtime CPU: one copy of weights.bin's tensors for every session
};

std::unique_ptr<Backend> openBackend(const std::string& artifacts, const Manifest& manifest, const BackendOptions& options);

// Built by ort_backend.cpp / trt_backend.cpp.
std::unique_ptr<Backend> openOrtBackend(const std::string& artifacts, const Manifest& manifest,
                                        const BackendOptions& options, bool cuda);
std::unique_ptr<Backend> openTensorRTBackend(const std::string& artifacts, const Manifest& manifest);

// Concrete sizes of `spec` from the contract's named dimensions (plus `extra`, e.g. query/attend).
std::vector<int64_t> resolveShape(const TensorSpec& spec, const std::map<std::string, int64_t>& sizes);

}  // namespace latentcache
