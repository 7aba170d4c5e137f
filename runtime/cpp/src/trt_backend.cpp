// The TensorRT backend (runtime/backends/tensorrt.py in C++): deserializes the engines `latentcache build`
// writes (ARTIFACTS/engines/tensorrt/<graph>.engine with <graph>.json metadata beside it), checks each
// engine's metadata and I/O against the manifest, keeps one kv-cache on the GPU and binds it in place
// (one slot) or ping-pong (two slots, portable lowering), and CUDA-graphs the static decode step.
//
// In place or not: TensorRT imports the `inplace` lowering's TensorScatter as its aliasing
// IKVCacheUpdateLayer (TensorRT >= 10.15) and the `portable` lowering writes fresh outputs, so the
// manifest's kv_update decides (the 10.14 headers this compiles against in CI have no
// getAliasedInputTensor to ask the engine, which the Python backend uses where it exists).
// TensorRT-RTX engines are not loaded here: no registry package ships TensorRT-RTX C++ headers.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend.h"

namespace latentcache {

namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

void cuda(cudaError_t status, const char* what) {
    if (status != cudaSuccess) throw Error(std::string("CUDA ") + what + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kERROR) last_ = message;
    }
    std::string last() const { return last_.empty() ? "no error was logged" : last_; }

private:
    std::string last_;
};

template <typename T>
struct TrtDeleter {
    void operator()(T* p) const { delete p; }  // TensorRT 10: objects are deleted, not destroy()ed
};
template <typename T>
using TrtPtr = std::unique_ptr<T, TrtDeleter<T>>;

DType fromTrt(DataType type) {
    switch (type) {
        case DataType::kFLOAT: return DType::Float32;
        case DataType::kHALF: return DType::Float16;
        case DataType::kBF16: return DType::BFloat16;
        case DataType::kINT64: return DType::Int64;
        case DataType::kINT32: return DType::Int32;
        case DataType::kBOOL: return DType::Bool;
        default: throw Error("an engine tensor has a dtype the contract does not use: rebuild with `latentcache build`");
    }
}

Dims toDims(const std::vector<int64_t>& shape) {
    Dims dims{};
    dims.nbDims = static_cast<int32_t>(shape.size());
    std::copy(shape.begin(), shape.end(), dims.d);
    return dims;
}

size_t bytesOf(DType dtype, const std::vector<int64_t>& shape) {
    size_t n = dtypeSize(dtype);
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
}

struct DeviceBuffer {  // RAII cudaMalloc
    void* ptr = nullptr;
    explicit DeviceBuffer(size_t bytes) { cuda(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "malloc"); }
    ~DeviceBuffer() { cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// The kv-cache on the GPU: [slot][layer] key and value, allocated once.
struct DeviceCache {
    int slots, current = 0;
    size_t bytes;
    std::vector<std::vector<std::unique_ptr<DeviceBuffer>>> buffers;  // [slot][2 * layer + (0 key | 1 value)]
    DeviceCache(const KVSpec& kv, int slotCount) : slots(slotCount), bytes(bytesOf(kv.dtype, kv.shape())) {
        buffers.resize(static_cast<size_t>(slots));
        for (auto& slot : buffers)
            for (int64_t i = 0; i < 2 * kv.numLayers; ++i) slot.push_back(std::make_unique<DeviceBuffer>(bytes));
        reset();
    }
    void* at(int slot, size_t index) { return buffers[static_cast<size_t>(slot)][index]->ptr; }
    void reset() {
        for (auto& slot : buffers)
            for (auto& buffer : slot) cuda(cudaMemset(buffer->ptr, 0, bytes), "memset");
        current = 0;
    }
};

struct Range {
    std::vector<int64_t> min, max;
};

// latentcache/tensorrt_support.py dynamic_ranges: decode static (attend = max_seq, for CUDA graphs),
// the others [1, max_seq].
std::map<std::string, Range> profileShapes(const Manifest& manifest, const std::string& graph, bool outputs = false) {
    const int64_t top = manifest.kv.maxSeq;
    auto low = manifest.namedSizes(), high = low;
    const bool decode = graph == "decode";
    low["query"] = 1;
    high["query"] = decode ? 1 : top;
    low["attend"] = decode ? top : 1;
    high["attend"] = top;
    std::map<std::string, Range> ranges;
    const GraphSpec& spec = manifest.graph(graph);
    for (const auto& t : outputs ? spec.outputs : spec.inputs) ranges[t.name] = {resolveShape(t, low), resolveShape(t, high)};
    return ranges;
}

class GraphRunner {
public:
    GraphRunner(const std::string& name, const Manifest& manifest, TrtPtr<nvinfer1::ICudaEngine> engine, DeviceCache& cache,
                bool inplace);
    ~GraphRunner();
    const Results& run(const Feeds& feeds);
    void unbind() { std::fill(boundSlot_.begin(), boundSlot_.end(), -1); }

private:
    void bindCache(size_t index, int slot);
    void execute(size_t index);

    std::string name_;
    const GraphSpec& spec_;
    TrtPtr<nvinfer1::ICudaEngine> engine_;
    DeviceCache& cache_;
    bool inplace_, graphed_;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, Range> profiles_;
    std::map<std::string, std::unique_ptr<DeviceBuffer>> buffers_;  // non-cache I/O by tensor name, max shapes
    std::vector<TrtPtr<nvinfer1::IExecutionContext>> contexts_;
    std::vector<int> boundSlot_;
    std::map<size_t, cudaGraphExec_t> executables_;
    Results results_;
};

GraphRunner::GraphRunner(const std::string& name, const Manifest& manifest, TrtPtr<nvinfer1::ICudaEngine> engine,
                         DeviceCache& cache, bool inplace)
    : name_(name), spec_(manifest.graph(name)), engine_(std::move(engine)), cache_(cache),
      inplace_(inplace || !spec_.writesCache()), graphed_(name == "decode") {
    cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    profiles_ = profileShapes(manifest, name);
    const auto outputs = profileShapes(manifest, name, true);
    for (const TensorSpec* t : spec_.plainInputs())
        buffers_[t->name] = std::make_unique<DeviceBuffer>(bytesOf(t->dtype, profiles_.at(t->name).max));
    for (const TensorSpec* t : spec_.plainOutputs())
        buffers_[t->name] = std::make_unique<DeviceBuffer>(bytesOf(t->dtype, outputs.at(t->name).max));
    // A captured graph bakes in the cache addresses, so a ping-pong cache gets one decode context per slot.
    const size_t count = graphed_ && !inplace_ ? static_cast<size_t>(cache.slots) : 1;
    for (size_t i = 0; i < count; ++i) {
        TrtPtr<nvinfer1::IExecutionContext> context(engine_->createExecutionContext());
        if (!context) throw Error(name + ": could not create an execution context (out of GPU memory?)");
        for (const auto& [tensor, buffer] : buffers_) context->setTensorAddress(tensor.c_str(), buffer->ptr);
        if (graphed_)
            for (const TensorSpec* t : spec_.plainInputs()) context->setInputShape(t->name.c_str(), toDims(profiles_.at(t->name).max));
        contexts_.push_back(std::move(context));
    }
    boundSlot_.assign(count, -1);
}

GraphRunner::~GraphRunner() {
    cudaStreamSynchronize(stream_);
    for (auto& [index, exec] : executables_) cudaGraphExecDestroy(exec);
    contexts_.clear();
    engine_.reset();
    cudaStreamDestroy(stream_);
}

void GraphRunner::bindCache(size_t index, int slot) {
    if (boundSlot_[index] == slot) return;
    auto& context = *contexts_[index];
    const int written = inplace_ ? slot : 1 - slot;
    const auto past = spec_.cachePairs(true), present = spec_.cachePairs(false);
    for (size_t i = 0; i < past.size(); ++i) {
        context.setTensorAddress(past[i].key->name.c_str(), cache_.at(slot, 2 * i));
        context.setTensorAddress(past[i].value->name.c_str(), cache_.at(slot, 2 * i + 1));
    }
    for (size_t i = 0; i < present.size(); ++i) {
        context.setTensorAddress(present[i].key->name.c_str(), cache_.at(written, 2 * i));
        context.setTensorAddress(present[i].value->name.c_str(), cache_.at(written, 2 * i + 1));
    }
    boundSlot_[index] = slot;
}

void GraphRunner::execute(size_t index) {
    auto found = executables_.find(index);
    if (found != executables_.end()) {
        cuda(cudaGraphLaunch(found->second, stream_), "graph launch");
        return;
    }
    auto& context = *contexts_[index];
    if (!context.enqueueV3(stream_)) throw Error(name_ + ": TensorRT failed to enqueue the engine");
    if (!graphed_) return;
    // The eager run above was the warm-up (TensorRT applies deferred shape/address updates on the first
    // enqueue, which must not happen inside a capture); record the next ones once.
    cuda(cudaStreamSynchronize(stream_), "synchronize");
    cudaGraph_t graph = nullptr;
    cuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "begin capture");
    const bool enqueued = context.enqueueV3(stream_);
    cuda(cudaStreamEndCapture(stream_, &graph), "end capture");
    if (!enqueued) throw Error(name_ + ": TensorRT failed to enqueue the engine during CUDA graph capture");
    cudaGraphExec_t exec = nullptr;
    cuda(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
    cudaGraphDestroy(graph);
    executables_[index] = exec;
}

const Results& GraphRunner::run(const Feeds& feeds) {
    const int slot = cache_.current;
    const size_t index = contexts_.size() > 1 ? static_cast<size_t>(slot) : 0;
    auto& context = *contexts_[index];
    std::vector<HostTensor> held;  // padded copies must live until the stream is synchronized
    held.reserve(feeds.size());
    for (const TensorSpec* t : spec_.plainInputs()) {
        auto feed = feeds.find(t->role);
        if (feed == feeds.end()) throw Error(name_ + ": input " + t->role + " missing");
        const Range& bounds = profiles_.at(t->name);
        const HostTensor* array = &feed->second;
        if (t->role == role::attentionMask && bounds.min == bounds.max && array->shape.size() == 2 &&
            array->shape[1] < bounds.max[1]) {  // decode attends over the whole capacity: pad with zeros
            HostTensor padded(array->dtype, bounds.max);
            const size_t row = bytesOf(array->dtype, {array->shape[1]}), full = bytesOf(array->dtype, {bounds.max[1]});
            for (int64_t r = 0; r < array->shape[0]; ++r)
                std::memcpy(padded.bytes.data() + r * full, array->bytes.data() + r * row, row);
            held.push_back(std::move(padded));
            array = &held.back();
        }
        bool fits = array->shape.size() == bounds.min.size() && array->dtype == t->dtype;
        for (size_t d = 0; fits && d < array->shape.size(); ++d)
            fits = bounds.min[d] <= array->shape[d] && array->shape[d] <= bounds.max[d];
        if (!fits) throw Error(name_ + ": input " + t->role + " does not fit the engine's profile");
        if (!graphed_) context.setInputShape(t->name.c_str(), toDims(array->shape));
        cuda(cudaMemcpyAsync(buffers_.at(t->name)->ptr, array->bytes.data(), array->bytes.size(), cudaMemcpyHostToDevice,
                             stream_), "upload");
    }
    bindCache(index, slot);
    execute(index);
    for (const TensorSpec* t : spec_.plainOutputs()) {
        const Dims dims = context.getTensorShape(t->name.c_str());
        HostTensor& out = results_[t->role] = HostTensor(t->dtype, std::vector<int64_t>(dims.d, dims.d + dims.nbDims));
        cuda(cudaMemcpyAsync(out.bytes.data(), buffers_.at(t->name)->ptr, out.bytes.size(), cudaMemcpyDeviceToHost, stream_),
             "download");
    }
    cuda(cudaStreamSynchronize(stream_), "synchronize");  // orders this graph's cache writes before the next's reads
    if (spec_.writesCache() && !inplace_) cache_.current = 1 - cache_.current;
    return results_;
}

std::string libraryVersion() {
    const int32_t v = getInferLibVersion();  // major * 10000 + minor * 100 + patch (TensorRT 10)
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

class TensorRTBackend : public Backend {
public:
    TensorRTBackend(const std::string& artifacts, const Manifest& manifest);
    ~TensorRTBackend() override {
        runners_.clear();  // contexts and engines before the runtime
        cache_.reset();
        runtime_.reset();
    }
    const Results& run(const std::string& graph, const Feeds& feeds) override { return runners_.at(graph)->run(feeds); }
    void reset() override {
        cache_->reset();
        for (auto& [name, runner] : runners_) runner->unbind();
    }
    std::string describe() const override {
        return "tensorrt " + libraryVersion() + " on compute capability " + capability_ + " (" +
               (cache_->slots == 1 ? "in-place" : "ping-pong") + " kv-cache)";
    }

private:
    TrtPtr<nvinfer1::ICudaEngine> loadEngine(const std::string& graph, const std::string& manifestSha);

    std::string artifacts_, capability_;
    const Manifest& manifest_;
    Logger logger_;
    TrtPtr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<DeviceCache> cache_;
    std::map<std::string, std::unique_ptr<GraphRunner>> runners_;
};

bool capabilityOk(const std::string& device, const std::vector<std::string>& targets) {
    auto parse = [](std::string text) {
        if (!text.empty() && text.back() == '+') text.pop_back();
        const size_t dot = text.find('.');
        return std::make_pair(std::stoi(text.substr(0, dot)), std::stoi(text.substr(dot + 1)));
    };
    for (const auto& t : targets)
        if (t.back() == '+' ? parse(device) >= parse(t) : parse(device) == parse(t)) return true;
    return false;
}

TensorRTBackend::TensorRTBackend(const std::string& artifacts, const Manifest& manifest)
    : artifacts_(artifacts), manifest_(manifest) {
    // Before any TensorRT call: without a usable GPU createInferRuntime returns a bogus non-null
    // pointer whose deletion crashes (seen with TensorRT 10.16 on a machine without a driver).
    int devices = 0;
    const cudaError_t status = cudaGetDeviceCount(&devices);
    if (status != cudaSuccess || devices == 0)
        throw Error(std::string("the tensorrt backend needs a CUDA GPU: cudaGetDeviceCount: ") +
                    (status != cudaSuccess ? cudaGetErrorString(status) : "no device"));
    cudaDeviceProp props{};
    cuda(cudaGetDeviceProperties(&props, 0), "device properties");
    capability_ = std::to_string(props.major) + "." + std::to_string(props.minor);
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error("TensorRT could not create a runtime: " + logger_.last());
    const std::string manifestSha = sha256File(artifacts + "/manifest.json");
    std::map<std::string, TrtPtr<nvinfer1::ICudaEngine>> engines;
    for (const auto& [graph, spec] : manifest.graphs) engines[graph] = loadEngine(graph, manifestSha);
    const bool inplace = manifest.kvUpdate == "inplace";
    cache_ = std::make_unique<DeviceCache>(manifest.kv, inplace ? 1 : 2);
    for (auto& [graph, engine] : engines)
        runners_[graph] = std::make_unique<GraphRunner>(graph, manifest, std::move(engine), *cache_, inplace);
}

TrtPtr<nvinfer1::ICudaEngine> TensorRTBackend::loadEngine(const std::string& graph, const std::string& manifestSha) {
    const std::string dir = artifacts_ + "/engines/tensorrt/", path = dir + graph + ".engine";
    const std::string fix = ": rebuild with `latentcache build " + artifacts_ + " --backend tensorrt`";
    std::ifstream probe(path);
    if (!probe) throw Error(path + " is missing: run `latentcache build " + artifacts_ + " --backend tensorrt`");
    nlohmann::json meta;
    try {
        meta = nlohmann::json::parse(readFile(dir + graph + ".json"));
    } catch (const std::exception& exc) {
        throw Error(dir + graph + ".json: unreadable engine metadata (" + exc.what() + ")" + fix);
    }
    std::vector<std::string> problems;
    const std::string version = meta.value("version", ""), library = libraryVersion();
    if (meta.value("format", 0) != 1) problems.push_back("engine metadata format " + meta["format"].dump() + " is not 1");
    if (meta.value("graph", "") != graph) problems.push_back("it holds graph '" + meta.value("graph", "") + "'");
    if (meta.value("flavour", "") != "tensorrt") problems.push_back("it was built with " + meta.value("flavour", "?"));
    if (version.rfind(library, 0) != 0) problems.push_back("it was built with tensorrt " + version + ", this is " + library);
    if (meta.value("manifest_sha256", "") != manifestSha) problems.push_back("it was built from other artifacts");
    const auto targets = meta.value("targets", std::vector<std::string>{});
    if (!capabilityOk(capability_, targets)) problems.push_back("it targets another GPU, this one is " + capability_);
    std::string data = readFile(path);
    if (data.size() != meta.value("engine_bytes", size_t{0})) problems.push_back("its size differs from its metadata");
    if (!problems.empty()) {
        std::string all;
        for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
        throw Error(path + ": " + all + fix);
    }
    TrtPtr<nvinfer1::ICudaEngine> engine(runtime_->deserializeCudaEngine(data.data(), data.size()));
    if (!engine) throw Error(path + ": TensorRT could not deserialize it (" + logger_.last() + ")" + fix);
    // The engine's I/O must be the manifest's (names, direction, dtype, rank): fail closed otherwise.
    const GraphSpec& spec = manifest_.graph(graph);
    size_t expected = spec.inputs.size() + spec.outputs.size();
    bool same = static_cast<size_t>(engine->getNbIOTensors()) == expected;
    for (int output = 0; same && output < 2; ++output)
        for (const auto& t : output ? spec.outputs : spec.inputs) {
            const char* n = t.name.c_str();
            const auto mode = engine->getTensorIOMode(n);
            if (mode != (output ? nvinfer1::TensorIOMode::kOUTPUT : nvinfer1::TensorIOMode::kINPUT) ||
                fromTrt(engine->getTensorDataType(n)) != t.dtype ||
                engine->getTensorShape(n).nbDims != static_cast<int32_t>(t.shape.size())) {
                same = false;
                break;
            }
        }
    if (!same) throw Error(graph + " engine I/O differs from the manifest" + fix);
    return engine;
}

}  // namespace

std::unique_ptr<Backend> openTensorRTBackend(const std::string& artifacts, const Manifest& manifest) {
    return std::make_unique<TensorRTBackend>(artifacts, manifest);
}

}  // namespace latentcache
