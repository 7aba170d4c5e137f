// latentcache-run ARTIFACTS "prompt" [options]: the generated text on stdout, "error: ..." on stderr.
// The same steps and defaults as `latentcache run` (latentcache/cli.py): chat template on unless --raw,
// the coprocessor once after the prompt when the artifacts have one, unless --no-coprocessor.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <onnxruntime_cxx_api.h>

#include "chat_template.h"
#include "generator.h"
#include "tokenizer.h"
#include "unicode.h"

using namespace latentcache;

namespace {

const auto kProcessStart = std::chrono::steady_clock::now();  // static init: as close to exec as we get

double sinceStart() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - kProcessStart).count();
}

const char* kUsage =
    "usage: latentcache-run ARTIFACTS PROMPT [--no-coprocessor] [--max-new-tokens N] [--temperature T]\n"
    "       [--top-k K] [--top-p P] [--seed S] [--backend ort-cpu|ort-cuda|tensorrt] [--raw] [--threads N]\n"
    "       [--separate-decode] [--no-share-weights] [--bench] [--ids]\n";

std::string versionLine() {
    std::string line = std::string("latentcache-run (manifest version ") + std::to_string(kManifestVersion) +
                       ", ONNX Runtime " + Ort::GetVersionString() + ", TensorRT ";
#ifdef LATENTCACHE_WITH_TENSORRT
    return line + "compiled in)";
#else
    return line + "not compiled in)";
#endif
}

struct Options {
    std::string artifacts, prompt;
    bool coprocessor = true, chat = true, bench = false, ids = false;
    int64_t maxNewTokens = 256;
    Sampling sampling;
    BackendOptions backend;
};

struct UsageError : Error {
    using Error::Error;
};

template <typename T>
T number(const std::string& flag, const std::string& text) {
    try {
        size_t used = 0;
        T value;
        if constexpr (std::is_floating_point_v<T>) value = static_cast<T>(std::stod(text, &used));
        else value = static_cast<T>(std::stoll(text, &used));
        if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
    throw UsageError(flag + " takes a number, got '" + text + "'");
}

Options parse(int argc, char** argv) {
    Options o;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw UsageError(arg + " needs a value");
            return argv[++i];
        };
        if (arg == "--no-coprocessor") o.coprocessor = false;
        else if (arg == "--raw") o.chat = false;
        else if (arg == "--chat") o.chat = true;
        else if (arg == "--bench") o.bench = true;
        else if (arg == "--ids") o.ids = true;
        else if (arg == "--separate-decode") o.backend.separateDecode = true;
        else if (arg == "--no-share-weights") o.backend.shareWeights = false;
        else if (arg == "--max-new-tokens") o.maxNewTokens = number<int64_t>(arg, value());
        else if (arg == "--temperature") o.sampling.temperature = number<double>(arg, value());
        else if (arg == "--top-k") o.sampling.topK = number<int64_t>(arg, value());
        else if (arg == "--top-p") o.sampling.topP = number<double>(arg, value());
        else if (arg == "--seed") o.sampling.seed = number<uint64_t>(arg, value());
        else if (arg == "--threads") o.backend.threads = number<int>(arg, value());
        else if (arg == "--backend") o.backend.name = value();
        else if (arg == "-h" || arg == "--help") { std::cout << kUsage; std::exit(0); }
        else if (arg == "--version") { std::cout << versionLine() << "\n"; std::exit(0); }
        else if (arg.rfind("--", 0) == 0) throw UsageError("unknown option " + arg);
        else positional.push_back(arg);
    }
    if (positional.size() != 2) throw UsageError("expected ARTIFACTS and PROMPT");
    o.artifacts = positional[0];
    o.prompt = positional[1];
    if (o.maxNewTokens < 1) throw UsageError("--max-new-tokens must be at least 1");
    if (o.backend.threads < 0) throw UsageError("--threads must be at least 1");
    if (o.backend.name != "ort-cpu" && o.backend.name != "ort-cuda" && o.backend.name != "tensorrt")
        throw UsageError("unknown backend '" + o.backend.name + "': choose one of ort-cpu, ort-cuda, tensorrt");
    o.sampling.validate();
    return o;
}

bool blank(const std::string& text) {
    std::vector<uint32_t> points;
    std::vector<size_t> offsets;
    decodeUtf8(text, points, offsets, "the prompt");
    for (uint32_t cp : points)
        if (!isSpace(cp)) return false;
    return true;
}

// tokenizer.py: eos ids from the manifest plus tokenizer_config.json's eos_token.
std::vector<int64_t> stopIds(const std::string& artifacts, const Manifest& manifest, const Tokenizer& tokenizer) {
    std::vector<int64_t> ids = manifest.eosTokenIds;
    try {
        const auto config = nlohmann::json::parse(readFile(artifacts + "/tokenizer_config.json"));
        auto eos = config.value("eos_token", nlohmann::json());
        if (eos.is_object()) eos = eos.value("content", nlohmann::json());
        if (eos.is_string() && !eos.get<std::string>().empty()) {
            const int64_t id = tokenizer.tokenToId(eos.get<std::string>());
            if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
        }
    } catch (const Error&) {  // no tokenizer_config.json: the manifest's ids alone
    } catch (const nlohmann::json::exception&) {
    }
    return ids;
}

// The resident set now (/proc/self/statm), in MiB: after the request, beside the peak.
double residentMiB() {
    std::ifstream statm("/proc/self/statm");
    long pages = 0, resident = 0;
    statm >> pages >> resident;
    return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

double median(std::vector<double> values) {
    if (values.empty()) return 0;
    std::sort(values.begin(), values.end());
    size_t mid = values.size() / 2;
    return values.size() % 2 ? values[mid] : (values[mid - 1] + values[mid]) / 2;
}

// tokenizer.py stream_text: decode the whole prefix, hold a piece back while it ends in U+FFFD.
class TextStream {
public:
    TextStream(const Tokenizer& tokenizer, const std::vector<int64_t>& stops) : tokenizer_(tokenizer), stops_(stops) {}
    std::string push(int64_t token) {
        if (stopped_ || std::find(stops_.begin(), stops_.end(), token) != stops_.end()) {
            stopped_ = true;
            return "";
        }
        ids_.push_back(token);
        const std::string text = tokenizer_.decode(ids_);
        if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return "";
        std::string piece = dropCodePoints(text, emitted_);
        emitted_ = countCodePoints(text);
        return piece;
    }
    const std::vector<int64_t>& ids() const { return ids_; }

private:
    const Tokenizer& tokenizer_;
    const std::vector<int64_t>& stops_;
    std::vector<int64_t> ids_;
    size_t emitted_ = 0;
    bool stopped_ = false;
};

int runRequest(const Options& o) {
    const double startS = sinceStart();
    Manifest manifest = loadManifest(o.artifacts);
    if (manifest.kv.batch != 1)
        throw Error("these artifacts run batches of " + std::to_string(manifest.kv.batch) +
                    " prompts and latentcache-run answers one: re-export with --batch 1");
    Tokenizer tokenizer(o.artifacts + "/tokenizer.json");
    const auto chat = o.chat ? ChatTemplate::load(o.artifacts, manifest) : std::nullopt;
    if (blank(o.prompt)) throw Error("the prompt is empty; pass some text");
    const std::vector<int64_t> prompt =
        chat ? tokenizer.encode(chat->render(o.prompt), false) : tokenizer.encode(o.prompt, true);
    const auto stops = stopIds(o.artifacts, manifest, tokenizer);
    auto backend = openBackend(o.artifacts, manifest, o.backend);
    Generator generator(*backend, manifest);
    const double readyS = sinceStart();
    RequestStats stats;
    TextStream stream(tokenizer, stops);
    std::vector<int64_t> generated;
    double firstTokenAtS = 0, firstTokenUnixS = 0;
    const bool text = !o.bench && !o.ids;
    generator.generate({prompt}, o.maxNewTokens, o.sampling, stops, o.coprocessor && manifest.numLatents > 0, stats,
                       [&](const std::vector<int64_t>& tokens) {
                           if (generated.empty()) {
                               firstTokenAtS = sinceStart();
                               firstTokenUnixS = std::chrono::duration<double>(
                                   std::chrono::system_clock::now().time_since_epoch()).count();
                           }
                           generated.push_back(tokens[0]);
                           const std::string piece = stream.push(tokens[0]);
                           if (text && !piece.empty()) std::cout << piece << std::flush;
                       });
    if (text) {
        std::cout << std::endl;
        return 0;
    }
    nlohmann::json out;
    if (o.ids) {
        out["prompt_ids"] = prompt;
        out["tokens"] = generated;
    }
    if (o.bench) {
        struct rusage usage {};
        getrusage(RUSAGE_SELF, &usage);
        out["backend"] = backend->describe();
        out["prompt_tokens"] = stats.promptTokens;
        out["new_tokens"] = generated.size();
        out["load_s"] = readyS - startS;
        out["prefill_s"] = stats.prefillS;
        out["ttft_s"] = stats.firstTokenS;
        out["augment_s"] = stats.augmentS;
        out["decode_median_s"] = median(stats.stepS);
        out["decode_mean_s"] = stats.stepS.empty() ? 0.0 : std::accumulate(stats.stepS.begin(), stats.stepS.end(), 0.0) / stats.stepS.size();
        out["decode_steps"] = stats.stepS.size();
        out["startup_to_first_token_s"] = firstTokenAtS;  // from process start (static initialisation)
        out["first_token_unix_s"] = firstTokenUnixS;       // wall clock, for a parent timing the whole process
        out["peak_rss_mb"] = usage.ru_maxrss / 1024.0;    // Linux: ru_maxrss is in KiB
        out["rss_mb"] = residentMiB();                    // after the request: what the process holds on to
    }
    out["text"] = tokenizer.decode(stream.ids());
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
    return 0;
}

std::string oneLine(std::string message) {
    for (char& c : message)
        if (c == '\n' || c == '\r') c = ' ';
    return message;
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    try {
        options = parse(argc, argv);
    } catch (const Error& exc) {
        std::cerr << "error: " << oneLine(exc.what()) << " (see --help)\n";
        return 2;
    }
    try {
        return runRequest(options);
    } catch (const Ort::Exception& exc) {
        std::cerr << "error: ONNX Runtime: " << oneLine(exc.what()) << "\n";
    } catch (const std::exception& exc) {
        std::cerr << "error: " << oneLine(exc.what()) << "\n";
    }
    return 1;
}
