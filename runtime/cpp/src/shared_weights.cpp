#include "shared_weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <nlohmann/json.hpp>

namespace latentcache {

namespace {

std::string mib(double bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f MiB", bytes / (1 << 20));
    return text;
}

}  // namespace

SharedWeights::SharedWeights(const std::string& artifacts, const Manifest& manifest) {
    const std::string indexPath = artifacts + "/" + manifest.weightIndex;
    try {
        load(artifacts, indexPath, nlohmann::json::parse(readFile(indexPath)));
    } catch (const nlohmann::json::exception& exc) {  // a missing key or a wrong type as well as bad JSON
        throw Error(indexPath + " is malformed (" + exc.what() + "): re-export the artifacts");
    }
}

void SharedWeights::load(const std::string& artifacts, const std::string& indexPath, const nlohmann::json& index) {
    const std::string file = artifacts + "/" + index.at("file").get<std::string>();
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat info {};
    if (fd < 0 || ::fstat(fd, &info) != 0) {
        if (fd >= 0) ::close(fd);
        throw Error("cannot open " + file + ": re-export the artifacts");
    }
    size_ = static_cast<size_t>(info.st_size);
    // MAP_PRIVATE, read-only: ONNX Runtime treats shared initializers as constants; the pages are the file's
    map_ = size_ ? ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
    ::close(fd);
    if (map_ == MAP_FAILED) {
        map_ = nullptr;
        throw Error("cannot map " + file);
    }
    for (const auto& [graph, entries] : index.at("graphs").items())
        for (const auto& item : entries) {
            if (!item.at("shared").get<bool>()) continue;
            Entry entry{item.at("name").get<std::string>(), item.at("offset").get<int64_t>(),
                        item.at("length").get<int64_t>(), item.at("data_type").get<int>(),
                        item.at("dims").get<std::vector<int64_t>>()};
            if (entry.offset < 0 || entry.length < 0 || static_cast<size_t>(entry.offset + entry.length) > size_)
                throw Error(indexPath + ": " + entry.name + " lies beyond the end of " + file + ": re-export the artifacts");
            graphs_[graph].push_back(std::move(entry));
        }
}

SharedWeights::~SharedWeights() {
    values_.clear();  // before the mapping they point into
    if (map_) ::munmap(map_, size_);
}

Ort::SessionOptions SharedWeights::optionsFor(const std::string& graph, const Ort::SessionOptions& base) {
    Ort::SessionOptions options = base.Clone();
    ++sessions_;
    auto found = graphs_.find(graph);
    if (found == graphs_.end()) return options;
    for (const Entry& entry : found->second) {
        const Key key{entry.offset, entry.type, entry.dims};
        auto value = values_.find(key);
        if (value == values_.end()) {
            void* data = static_cast<std::byte*>(map_) + entry.offset;
            value = values_.emplace(key, Ort::Value::CreateTensor(cpu_, data, static_cast<size_t>(entry.length),
                                                                  entry.dims.data(), entry.dims.size(),
                                                                  static_cast<ONNXTensorElementDataType>(entry.type)))
                        .first;
            lengths_[key] = entry.length;
        }
        options.AddInitializer(entry.name.c_str(), value->second);
        ++users_[key];
    }
    return options;
}

Ort::Session SharedWeights::createSession(const Ort::Env& env, const std::string& path, const std::string& graph,
                                          const Ort::SessionOptions& base) {
    const Ort::SessionOptions options = optionsFor(graph, base);
    // While ONNX Runtime prepacks, the originals it has read would stay resident beside their prepacked copies
    // (the fp32 SmolLM2's peak: 1,095 MiB against 789 without sharing); releasing them as it goes keeps the peak
    // near the prepacked copies alone.
    std::atomic<bool> done{false};
    std::thread releaser([&] {
        while (!done.load()) {
            releasePages();
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
    });
    try {
        Ort::Session session(env, path.c_str(), options, container_);
        done = true;
        releaser.join();
        releasePages();
        return session;
    } catch (...) {
        done = true;
        releaser.join();
        throw;
    }
}

void SharedWeights::releasePages() {
    if (map_) ::madvise(map_, size_, MADV_DONTNEED);
}

std::string SharedWeights::describe() const {
    double bytes = 0, multiple = 0;
    for (const auto& [key, count] : users_) {
        const auto length = static_cast<double>(lengths_.at(key));
        bytes += length;
        if (count > 1) multiple += length;
    }
    return std::to_string(values_.size()) + " weight tensors (" + mib(bytes) + ") mapped once for " +
           std::to_string(sessions_) + " session" + (sessions_ == 1 ? "" : "s") + ", " + mib(multiple) +
           " of them read by more than one";
}

}  // namespace latentcache
