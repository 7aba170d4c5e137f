// The TensorRT backend (runtime/backends/tensorrt.py in C++): deserializes the engines `latentcache build`
// writes (ARTIFACTS/engines/tensorrt/<graph>.engine with <graph>.json metadata beside it; decode runs on the
// prefill engine's second optimization profile unless built with --separate-decode), checks each engine's
// metadata and I/O against the manifest, keeps one kv-cache on the GPU and binds it in place (one slot) or
// ping-pong (two slots, portable lowering), and CUDA-graphs the static decode step.
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

// The weight matrices `latentcache build --share-weights` engines take as inputs (runtime/backends/tensorrt.py
// BoundWeights): each distinct tensor of weights.bin (one offset) copied to the GPU once and bound to every context
// of every engine that reads it, so prefill, decode and an unmerged-LoRA coprocessor hold the base once.
class BoundWeights {
public:
    BoundWeights(const std::string& artifacts, const Manifest& manifest) : artifacts_(artifacts), manifest_(manifest) {}

    // name -> device pointer for the weight inputs `names` of `graph`'s engine.
    std::map<std::string, void*> bind(const std::string& graph, const std::vector<std::string>& names) {
        std::map<std::string, void*> bound;
        if (names.empty()) return bound;
        const std::string fix = ": rebuild with `latentcache build " + artifacts_ + " --backend tensorrt`";
        if (index_.is_null()) {
            if (manifest_.weightIndex.empty()) throw Error(artifacts_ + ": the engines take weights as inputs but the "
                                                           "artifacts have no weights.json: re-export, then rebuild");
            index_ = nlohmann::json::parse(readFile(artifacts_ + "/" + manifest_.weightIndex));
            file_.open(artifacts_ + "/" + index_.at("file").get<std::string>(), std::ios::binary | std::ios::ate);
            if (!file_) throw Error(artifacts_ + ": cannot open weights.bin: re-export the artifacts");
            size_ = static_cast<int64_t>(file_.tellg());
        }
        std::map<std::string, nlohmann::json> entries;
        for (const auto& entry : index_.at("graphs").value(graph, nlohmann::json::array()))
            entries[entry.at("name").get<std::string>()] = entry;
        for (const auto& name : names) {
            auto found = entries.find(name);
            if (found == entries.end()) throw Error("the " + graph + " engine takes a weight that weights.json does not list (" + name + ")" + fix);
            const int64_t offset = found->second.at("offset").get<int64_t>(), length = found->second.at("length").get<int64_t>();
            if (offset < 0 || length < 0 || offset + length > size_)
                throw Error(name + " lies beyond the end of weights.bin: re-export the artifacts");
            auto& copy = copies_[offset];
            if (!copy) {  // one tensor in host memory at a time: a Jetson's DRAM is the GPU's too
                std::vector<char> host(static_cast<size_t>(length));
                file_.seekg(offset);
                if (!file_.read(host.data(), length)) throw Error("cannot read " + name + " from weights.bin");
                copy = std::make_unique<DeviceBuffer>(host.size());
                cuda(cudaMemcpy(copy->ptr, host.data(), host.size(), cudaMemcpyHostToDevice), "upload");
                bytes_ += host.size();
            }
            bound[name] = copy->ptr;
        }
        return bound;
    }
    size_t tensors() const { return copies_.size(); }
    size_t bytes() const { return bytes_; }

private:
    std::string artifacts_;
    const Manifest& manifest_;
    nlohmann::json index_;
    std::ifstream file_;
    int64_t size_ = 0;
    std::map<int64_t, std::unique_ptr<DeviceBuffer>> copies_;  // offset in weights.bin -> its one device copy
    size_t bytes_ = 0;
};

// latentcache/tensorrt_support.py dynamic_ranges: decode static (attend = max_seq, for CUDA graphs),
// the others [1, max_seq]; `serving` is the graph whose ranges apply (decode on the prefill engine's graph).
std::map<std::string, Range> profileShapes(const Manifest& manifest, const std::string& graph, const std::string& serving,
                                           bool outputs = false) {
    const int64_t top = manifest.kv.maxSeq;
    auto low = manifest.namedSizes(), high = low;
    const bool decode = serving == "decode";
    low["query"] = 1;
    high["query"] = decode ? 1 : top;
    low["attend"] = decode ? top : 1;
    high["attend"] = top;
    std::map<std::string, Range> ranges;
    const GraphSpec& spec = manifest.graph(graph);
    for (const auto& t : outputs ? spec.outputs : spec.inputs) ranges[t.name] = {resolveShape(t, low), resolveShape(t, high)};
    return ranges;
}

using SharedEngine = std::shared_ptr<nvinfer1::ICudaEngine>;  // decode and prefill may run on one engine

// One graph (`name`) on one optimization profile of an engine built from `engineGraph` (runtime/backends/tensorrt.py
// GraphRunner): decode on the prefill engine's profile 1 leaves the embedding-row inputs zeroed and bound.
class GraphRunner {
public:
    GraphRunner(const std::string& name, const std::string& engineGraph, int profile, const Manifest& manifest,
                SharedEngine engine, DeviceCache& cache, bool inplace, const std::map<std::string, void*>& bound);
    ~GraphRunner();
    const Results& run(const Feeds& feeds);
    void unbind() { std::fill(boundSlot_.begin(), boundSlot_.end(), -1); }

private:
    void bindCache(size_t index, int slot);
    void execute(size_t index);

    std::string name_;
    const GraphSpec& spec_;  // the engine's graph: its tensors are what the contexts bind
    SharedEngine engine_;
    std::vector<const TensorSpec*> feeds_;  // the inputs `name` gives; the engine's others stay zero
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

GraphRunner::GraphRunner(const std::string& name, const std::string& engineGraph, int profile, const Manifest& manifest,
                         SharedEngine engine, DeviceCache& cache, bool inplace, const std::map<std::string, void*>& bound)
    : name_(name), spec_(manifest.graph(engineGraph)), engine_(std::move(engine)), cache_(cache),
      inplace_(inplace || !spec_.writesCache()), graphed_(name == "decode") {
    cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    profiles_ = profileShapes(manifest, engineGraph, name);
    const auto outputs = profileShapes(manifest, engineGraph, name, true);
    const GraphSpec& served = manifest.graph(name);
    for (const TensorSpec* t : spec_.plainInputs()) {
        const size_t bytes = bytesOf(t->dtype, profiles_.at(t->name).max);
        buffers_[t->name] = std::make_unique<DeviceBuffer>(bytes);
        if (served.has(t->role)) {
            feeds_.push_back(t);
        } else if (profiles_.at(t->name).min == profiles_.at(t->name).max) {  // every row a token's, none a latent
            cuda(cudaMemsetAsync(buffers_[t->name]->ptr, 0, bytes, stream_), "memset");
        } else {
            throw Error(name + " on the " + engineGraph + " engine leaves " + t->role +
                        " unset: rebuild with `latentcache build --separate-decode`");
        }
    }
    for (const TensorSpec* t : spec_.plainOutputs())
        buffers_[t->name] = std::make_unique<DeviceBuffer>(bytesOf(t->dtype, outputs.at(t->name).max));
    // A captured graph bakes in the cache addresses, so a ping-pong cache gets one decode context per slot.
    const size_t count = graphed_ && !inplace_ ? static_cast<size_t>(cache.slots) : 1;
    for (size_t i = 0; i < count; ++i) {
        // A context on a later profile holds scratch for that profile only, not for the engine's largest.
        TrtPtr<nvinfer1::IExecutionContext> context(engine_->createExecutionContext(
            profile ? nvinfer1::ExecutionContextAllocationStrategy::kON_PROFILE_CHANGE
                    : nvinfer1::ExecutionContextAllocationStrategy::kSTATIC));
        if (!context) throw Error(name + ": could not create an execution context (out of GPU memory?)");
        if (profile && !context->setOptimizationProfileAsync(profile, stream_))  // before any input shape
            throw Error(name + ": the engine has no optimization profile " + std::to_string(profile) +
                        ": rebuild with `latentcache build`");
        for (const auto& [tensor, buffer] : buffers_) context->setTensorAddress(tensor.c_str(), buffer->ptr);
        for (const auto& [tensor, pointer] : bound) context->setTensorAddress(tensor.c_str(), pointer);  // read-only
        if (graphed_)
            for (const TensorSpec* t : spec_.plainInputs()) context->setInputShape(t->name.c_str(), toDims(profiles_.at(t->name).max));
        contexts_.push_back(std::move(context));
    }
    boundSlot_.assign(count, -1);
    cuda(cudaStreamSynchronize(stream_), "synchronize");
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
    for (const TensorSpec* t : feeds_) {
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
        weights_.reset();
        cache_.reset();
        runtime_.reset();
    }
    const Results& run(const std::string& graph, const Feeds& feeds) override { return runners_.at(graph)->run(feeds); }
    void reset() override {
        cache_->reset();
        for (auto& [name, runner] : runners_) runner->unbind();
    }
    std::string describe() const override {
        std::string notes = cache_->slots == 1 ? "in-place kv-cache" : "ping-pong kv-cache";
        if (runners_.count("decode") && !engineOf_.empty() && engineOf_.at("decode") != "decode") notes += "; decode on the prefill engine";
        if (weights_ && weights_->tensors())
            notes += "; " + std::to_string(weights_->tensors()) + " weight tensors (" +
                     std::to_string(weights_->bytes() >> 20) + " MiB) on the GPU once for every engine";
        return "tensorrt " + libraryVersion() + " on compute capability " + capability_ + " (" + notes + ")";
    }

private:
    struct Loaded {
        SharedEngine engine;
        std::vector<std::string> serves, bound;  // the graphs it serves (profile order), its weight inputs
    };
    Loaded loadEngine(const std::string& graph, const std::string& manifestSha);

    std::string artifacts_, capability_;
    const Manifest& manifest_;
    Logger logger_;
    TrtPtr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<DeviceCache> cache_;
    std::unique_ptr<BoundWeights> weights_;
    std::map<std::string, std::string> engineOf_;  // graph -> the graph its engine was built from
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
    // The prefill engine serves decode as its second profile unless built with --separate-decode
    // (latentcache/tensorrt_support.py engine_plan); prefill loads first.
    struct Served {
        std::string engineGraph;
        int profile;
    };
    std::map<std::string, SharedEngine> engines;
    std::map<std::string, std::map<std::string, void*>> bound;
    std::map<std::string, Served> serving;
    weights_ = std::make_unique<BoundWeights>(artifacts, manifest);
    for (const char* graph : {"prefill", "decode", "coprocessor"}) {
        if (!manifest.hasGraph(graph) || serving.count(graph)) continue;
        Loaded loaded = loadEngine(graph, manifestSha);
        engines[graph] = loaded.engine;
        bound[graph] = weights_->bind(graph, loaded.bound);
        for (size_t i = 0; i < loaded.serves.size(); ++i) serving.emplace(loaded.serves[i], Served{graph, static_cast<int>(i)});
    }
    const bool inplace = manifest.kvUpdate == "inplace";
    cache_ = std::make_unique<DeviceCache>(manifest.kv, inplace ? 1 : 2);
    for (const auto& [graph, where] : serving) {
        engineOf_[graph] = where.engineGraph;
        runners_[graph] = std::make_unique<GraphRunner>(graph, where.engineGraph, where.profile, manifest,
                                                        engines.at(where.engineGraph), *cache_, inplace,
                                                        bound.at(where.engineGraph));
    }
}

TensorRTBackend::Loaded TensorRTBackend::loadEngine(const std::string& graph, const std::string& manifestSha) {
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
    if (meta.value("format", 0) != 2) problems.push_back("engine metadata format " + meta["format"].dump() + " is not 2");
    if (meta.value("graph", "") != graph) problems.push_back("it holds graph '" + meta.value("graph", "") + "'");
    std::vector<std::string> serves;
    if (meta.contains("serves") && meta["serves"].is_array())
        for (const auto& served : meta["serves"]) serves.push_back(served.is_string() ? served.get<std::string>() : "");
    bool known = !serves.empty() && serves.front() == graph;
    for (const auto& served : serves) known = known && manifest_.hasGraph(served);
    if (!known) problems.push_back("the graphs it serves are not " + graph + " first among the manifest's");
    std::vector<std::string> bound;
    if (meta.contains("bound_weights") && meta["bound_weights"].is_array())
        for (const auto& name : meta["bound_weights"]) bound.push_back(name.is_string() ? name.get<std::string>() : "");
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
    SharedEngine engine(runtime_->deserializeCudaEngine(data.data(), data.size()), TrtDeleter<nvinfer1::ICudaEngine>());
    if (!engine) throw Error(path + ": TensorRT could not deserialize it (" + logger_.last() + ")" + fix);
    if (engine->getNbOptimizationProfiles() != static_cast<int32_t>(serves.size()))
        throw Error(path + ": its optimization profiles are not the " + std::to_string(serves.size()) +
                    " its metadata names" + fix);
    // The engine's I/O must be the manifest's (names, direction, dtype, rank): fail closed otherwise.
    const GraphSpec& spec = manifest_.graph(graph);
    size_t expected = spec.inputs.size() + spec.outputs.size() + bound.size();  // + the weight inputs
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
    for (const auto& name : bound)
        same = same && engine->getTensorIOMode(name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
    if (!same) throw Error(graph + " engine I/O differs from the manifest" + fix);
    return {engine, serves, bound};
}

}  // namespace

std::unique_ptr<Backend> openTensorRTBackend(const std::string& artifacts, const Manifest& manifest) {
    return std::make_unique<TensorRTBackend>(artifacts, manifest);
}

}  // namespace latentcache
