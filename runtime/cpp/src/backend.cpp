#include "backend.h"

namespace latentcache {

std::vector<int64_t> resolveShape(const TensorSpec& spec, const std::map<std::string, int64_t>& sizes) {
    std::vector<int64_t> shape;
    for (const auto& dim : spec.shape) {
        if (std::holds_alternative<int64_t>(dim)) {
            shape.push_back(std::get<int64_t>(dim));
            continue;
        }
        auto found = sizes.find(std::get<std::string>(dim));
        if (found == sizes.end())
            throw Error("tensor " + spec.name + ": unknown named dimension '" + std::get<std::string>(dim) + "'");
        shape.push_back(found->second);
    }
    return shape;
}

std::unique_ptr<Backend> openBackend(const std::string& artifacts, const Manifest& manifest, const BackendOptions& options) {
    if (options.name == "ort-cpu") return openOrtBackend(artifacts, manifest, options, false);
    if (options.name == "ort-cuda") return openOrtBackend(artifacts, manifest, options, true);
    if (options.name == "tensorrt") {
#ifdef LATENTCACHE_WITH_TENSORRT
        return openTensorRTBackend(artifacts, manifest);
#else
        throw Error("this latentcache-run was built without TensorRT (no NvInferRuntime.h and CUDA runtime at "
                    "configure time): rebuild with TensorRT installed, or use --backend ort-cpu");
#endif
    }
    throw Error("unknown backend '" + options.name + "': choose one of ort-cpu, ort-cuda, tensorrt");
}

}  // namespace latentcache
