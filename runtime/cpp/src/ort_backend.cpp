// ONNX Runtime backends (CPU, CUDA) through the C++ API and IO binding, the design of
// runtime/backends/onnxruntime.py:
// - the cache is allocated once on the session's device; with the `inplace` lowering (TensorScatter)
//   past and present are bound to the *same* OrtValue, which ONNX Runtime updates in place; the
//   `portable` lowering (Gather + Where rewrites every slot) gets two buffer sets that swap after each
//   cache-writing call, since one buffer as input and output of an arbitrary op is not safe;
// - everything but the per-step inputs is bound once: one IoBinding per graph and buffer set;
// - decode steps run on the prefill session by default (one token, no embedding rows): one copy of the
//   weights instead of two, and the tokens the Python runtime's default gives;
// - on the CPU, the sessions (prefill, coprocessor) share weights.bin's tensors and their prepacked forms
//   (shared_weights.h): the base's weights are held once with or without the coprocessor.
#include <dlfcn.h>
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <fstream>
#include <thread>

#include "backend.h"
#include "shared_weights.h"

namespace latentcache {

namespace {

ONNXTensorElementDataType onnxType(DType dtype) {
    switch (dtype) {
        case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case DType::Float16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
        case DType::BFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
        case DType::Int64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        case DType::Int32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
        case DType::Bool: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    }
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

// cudaMemsetAsync and cudaStreamSynchronize of the CUDA runtime that ONNX Runtime's CUDA provider loaded into this
// process (runtime/backends/memset.py): found in /proc/self/maps and opened with RTLD_NOLOAD, so the native runtime
// needs no CUDA library of its own. A cache reset is then a device memset, not the whole cache copied from host
// zeros inside every request's time to first token. Empty where none is loaded (then the reset copies zeros).
struct CudaMemset {
    int (*memsetAsync)(void*, int, size_t, void*) = nullptr;
    int (*synchronize)(void*) = nullptr;
    explicit operator bool() const { return memsetAsync && synchronize; }
};

CudaMemset loadedCudaMemset() {
    std::ifstream maps("/proc/self/maps");
    std::string line;
    while (std::getline(maps, line)) {
        const size_t slash = line.find('/');
        if (slash == std::string::npos) continue;
        const std::string path = line.substr(slash);
        if (path.substr(path.rfind('/') + 1).rfind("libcudart.so", 0) != 0) continue;
        void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);  // ONNX Runtime's: it stays loaded
        if (!library) continue;
        CudaMemset found;
        found.memsetAsync = reinterpret_cast<decltype(found.memsetAsync)>(dlsym(library, "cudaMemsetAsync"));
        found.synchronize = reinterpret_cast<decltype(found.synchronize)>(dlsym(library, "cudaStreamSynchronize"));
        if (found) return found;
    }
    return {};
}

// A host tensor seen by ONNX Runtime without a copy (the HostTensor must outlive the value).
Ort::Value wrap(const Ort::MemoryInfo& cpu, HostTensor& tensor) {
    return Ort::Value::CreateTensor(cpu, tensor.bytes.data(), tensor.bytes.size(), tensor.shape.data(),
                                    tensor.shape.size(), onnxType(tensor.dtype));
}

class OrtBackend : public Backend {
public:
    OrtBackend(const std::string& artifacts, const Manifest& manifest, const BackendOptions& options, bool cuda);
    const Results& run(const std::string& graph, const Feeds& feeds) override;
    void reset() override;
    std::string describe() const override;

private:
    void createSessions(const std::string& artifacts, const BackendOptions& options);
    void allocateCache();
    Ort::IoBinding bindStatic(const std::string& graph, int current);

    const Manifest& manifest_;
    bool cuda_, decodeOnPrefill_;
    Ort::Env env_{ORT_LOGGING_LEVEL_ERROR, "latentcache"};  // TensorScatter warns per call when it copies
    Ort::MemoryInfo cpu_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::unique_ptr<SharedWeights> shared_;  // declared before the sessions, which use its memory: outlives them
    std::string weightsNote_;                // why the weights are not shared, when they are not
    std::map<std::string, Ort::Session> sessions_;
    std::unique_ptr<Ort::Allocator> deviceAllocator_;
    std::vector<std::vector<Ort::Value>> caches_;  // [buffer set][2 * layer + (0 key | 1 value)]
    int current_ = 0;                              // the buffer set that holds the cache (portable swaps)
    std::map<std::string, Results> results_;
    std::map<std::string, std::vector<Ort::Value>> resultValues_;
    std::map<std::string, bool> swaps_;
    std::map<std::string, std::vector<Ort::IoBinding>> bindings_;
    std::map<std::string, std::map<std::string, std::string>> inputNames_;  // graph -> role -> tensor name
    Feeds decodeRows_;  // the one-token prefill's embedding rows: zeros, mask 0
    CudaMemset memset_;  // CUDA: found after the sessions load the provider
    std::unique_ptr<HostTensor> zeros_;  // CUDA without memset_: one cache tensor of host zeros, made once
};

OrtBackend::OrtBackend(const std::string& artifacts, const Manifest& manifest, const BackendOptions& options, bool cuda)
    : manifest_(manifest), cuda_(cuda), decodeOnPrefill_(!options.separateDecode) {
    if (manifest.kv.dtype == DType::BFloat16)
        throw Error("ONNX Runtime cannot run bfloat16 artifacts here: export with --dtype fp32 or fp16, or use "
                    "--backend tensorrt");
    const auto providers = Ort::GetAvailableProviders();
    if (cuda && std::find(providers.begin(), providers.end(), "CUDAExecutionProvider") == providers.end()) {
        std::string list;
        for (const auto& p : providers) list += (list.empty() ? "" : ", ") + p;
        throw Error("this ONNX Runtime (" + Ort::GetVersionString() + ") has no CUDA provider (providers: " + list +
                    "): build against onnxruntime-gpu's libonnxruntime (-DORT_LIBRARY=...)");
    }
    createSessions(artifacts, options);
    if (cuda_) memset_ = loadedCudaMemset();
    allocateCache();
    const auto sizes = manifest.namedSizes();
    for (const auto& [name, graph] : manifest.graphs) {
        if (!sessions_.count(name)) continue;
        for (const TensorSpec* spec : graph.plainOutputs()) {
            HostTensor& tensor = results_[name][spec->role] = HostTensor(spec->dtype, resolveShape(*spec, sizes));
            resultValues_[name].push_back(wrap(cpu_, tensor));
        }
        for (const TensorSpec* spec : graph.plainInputs()) inputNames_[name][spec->role] = spec->name;
        swaps_[name] = graph.writesCache() && caches_.size() == 2;
        for (int set = 0; set < static_cast<int>(caches_.size()); ++set) bindings_[name].push_back(bindStatic(name, set));
    }
    const GraphSpec& prefill = manifest.graph("prefill");
    decodeRows_[role::inputsEmbeds] = HostTensor(prefill.tensor(role::inputsEmbeds).dtype, {manifest.kv.batch, 1, manifest.hiddenSize});
    decodeRows_[role::embedsMask] = HostTensor(prefill.tensor(role::embedsMask).dtype, {manifest.kv.batch, 1});
}

void OrtBackend::createSessions(const std::string& artifacts, const BackendOptions& options) {
    Ort::SessionOptions so;
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    so.SetIntraOpNumThreads(options.threads > 0 ? options.threads : static_cast<int>(std::min(cores, 8u)));
    so.SetLogSeverityLevel(3);
    if (cuda_) {
        OrtCUDAProviderOptions cudaOptions{};
        so.AppendExecutionProvider_CUDA(cudaOptions);
    }
    if (cuda_) weightsNote_ = "per session (ONNX Runtime shares prepacked weights on its CPU provider only)";
    else if (!options.shareWeights) weightsNote_ = "per session (--no-share-weights)";
    else if (manifest_.weightIndex.empty()) weightsNote_ = "per session (no weight index: re-export to share them)";
    else shared_ = std::make_unique<SharedWeights>(artifacts, manifest_);
    for (const auto& [name, graph] : manifest_.graphs) {
        if (name == "decode" && decodeOnPrefill_) continue;
        const std::string path = artifacts + "/" + graph.file;
        if (!shared_) {
            sessions_.emplace(name, Ort::Session(env_, path.c_str(), so));
            continue;
        }
        sessions_.emplace(name, shared_->createSession(env_, path, name, so));
    }
}

void OrtBackend::allocateCache() {
    const auto shape = manifest_.kv.shape();
    const size_t sets = manifest_.kvUpdate == "portable" ? 2 : 1;
    const auto type = onnxType(manifest_.kv.dtype);
    Ort::AllocatorWithDefaultOptions hostAllocator;
    if (cuda_) {
        Ort::MemoryInfo device("Cuda", OrtDeviceAllocator, 0, OrtMemTypeDefault);
        deviceAllocator_ = std::make_unique<Ort::Allocator>(sessions_.at("prefill"), device);
    }
    caches_.resize(sets);
    for (auto& set : caches_)
        for (int64_t i = 0; i < 2 * manifest_.kv.numLayers; ++i) {
            if (cuda_) set.push_back(Ort::Value::CreateTensor(*deviceAllocator_, shape.data(), shape.size(), type));
            else set.push_back(Ort::Value::CreateTensor(hostAllocator, shape.data(), shape.size(), type));
        }
    reset();
}

Ort::IoBinding OrtBackend::bindStatic(const std::string& name, int set) {
    const GraphSpec& graph = manifest_.graph(name);
    Ort::IoBinding binding(sessions_.at(name));
    auto& past = caches_[set];
    auto& present = swaps_[name] ? caches_[1 - set] : past;  // in place: the same OrtValue both ways
    const auto pastPairs = graph.cachePairs(true), presentPairs = graph.cachePairs(false);
    for (size_t i = 0; i < pastPairs.size(); ++i) {
        binding.BindInput(pastPairs[i].key->name.c_str(), past[2 * i]);
        binding.BindInput(pastPairs[i].value->name.c_str(), past[2 * i + 1]);
    }
    for (size_t i = 0; i < presentPairs.size(); ++i) {
        binding.BindOutput(presentPairs[i].key->name.c_str(), present[2 * i]);
        binding.BindOutput(presentPairs[i].value->name.c_str(), present[2 * i + 1]);
    }
    const auto outputs = graph.plainOutputs();
    for (size_t i = 0; i < outputs.size(); ++i) binding.BindOutput(outputs[i]->name.c_str(), resultValues_[name][i]);
    return binding;
}

const Results& OrtBackend::run(const std::string& requested, const Feeds& feeds) {
    std::string graph = requested;
    if (graph == "decode" && decodeOnPrefill_) graph = "prefill";
    auto& binding = bindings_.at(graph)[static_cast<size_t>(current_)];
    const auto& names = inputNames_.at(graph);
    std::vector<Ort::Value> held;  // input values wrap the feeds' memory and must live through Run
    auto bind = [&](const Feeds& source) {
        for (const auto& [r, tensor] : source) {
            auto name = names.find(r);
            if (name == names.end()) throw Error(graph + ": unexpected input role " + r);
            held.push_back(wrap(cpu_, const_cast<HostTensor&>(tensor)));
            binding.BindInput(name->second.c_str(), held.back());
        }
    };
    bind(feeds);
    if (graph != requested) bind(decodeRows_);
    sessions_.at(graph).Run(Ort::RunOptions{nullptr}, binding);
    if (swaps_.at(graph)) current_ = 1 - current_;
    return results_.at(graph);
}

void OrtBackend::reset() {
    // Stale slots are never attended (the mask decides), but a new request should not see old data, and
    // never-written device memory could hold NaNs that a masked matmul would still multiply by zero.
    for (auto& set : caches_)
        for (auto& value : set) {
            const auto info = value.GetTensorTypeAndShapeInfo();
            const size_t bytes = info.GetElementCount() * dtypeSize(manifest_.kv.dtype);
            if (!cuda_) {
                std::fill_n(static_cast<std::byte*>(value.GetTensorMutableRawData()), bytes, std::byte{0});
                continue;
            }
            if (memset_) {  // ONNX Runtime's Run synchronizes its stream before returning: nothing reads the cache now
                if (memset_.memsetAsync(value.GetTensorMutableRawData(), 0, bytes, nullptr) != 0)
                    throw Error("CUDA cudaMemsetAsync failed while resetting the kv-cache");
                continue;
            }
            if (!zeros_) zeros_ = std::make_unique<HostTensor>(manifest_.kv.dtype, info.GetShape());
            std::vector<Ort::Value> source;
            source.push_back(wrap(cpu_, *zeros_));
            std::vector<Ort::Value> target;
            target.push_back(Ort::Value(static_cast<OrtValue*>(value)));  // borrowed: released below
            env_.CopyTensors(source, target, nullptr);
            target.back().release();
        }
    if (cuda_ && memset_ && memset_.synchronize(nullptr) != 0)  // the legacy default stream the memsets ran on
        throw Error("CUDA cudaStreamSynchronize failed while resetting the kv-cache");
    current_ = 0;
}

std::string OrtBackend::describe() const {
    return std::string("onnxruntime ") + Ort::GetVersionString() + (cuda_ ? " CUDA" : " CPU") + " (" +
           (caches_.size() == 1 ? "in-place" : "ping-pong") + " kv-cache; " +
           (!cuda_ ? "" : memset_ ? "cache reset by a device memset; " : "cache reset by a host copy: no CUDA runtime "
                                                                         "found loaded; ") + "weights: " +
           (shared_ ? shared_->describe() : weightsNote_) + ")";
}

}  // namespace

std::unique_ptr<Backend> openOrtBackend(const std::string& artifacts, const Manifest& manifest,
                                        const BackendOptions& options, bool cuda) {
    return std::make_unique<OrtBackend>(artifacts, manifest, options, cuda);
}

}  // namespace latentcache
