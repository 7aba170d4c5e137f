#include "chat_template.h"

#include <nlohmann/json.hpp>
#include <sys/stat.h>

namespace latentcache {

namespace {

const std::string kStart = "<|im_start|>", kEnd = "<|im_end|>";

bool exists(const std::string& path) {
    struct stat info {};
    return stat(path.c_str(), &info) == 0;
}

// Jinja string literals: '...' or "..." with backslash escapes.
std::string unescape(const std::string& body) {
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
        if (body[i] != '\\' || i + 1 == body.size()) { out += body[i]; continue; }
        char c = body[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    }
    return out;
}

std::string compact(const std::string& text) {  // whitespace removed, one quote style: for structural checks
    std::string out;
    for (char c : text)
        if (!std::isspace(static_cast<unsigned char>(c))) out += c == '"' ? '\'' : c;
    return out;
}

}  // namespace

ChatTemplate ChatTemplate::parse(const std::string& source) {
    const std::string shape = compact(source);
    const bool chatml = shape.find("'" + kStart + "'+message['role']") != std::string::npos &&
                        shape.find("message['content']+'" + kEnd + "'") != std::string::npos &&
                        shape.find("add_generation_prompt") != std::string::npos &&
                        shape.find("'" + kStart + "assistant") != std::string::npos;
    if (!chatml || source.find("tools") != std::string::npos)
        throw Error("the chat template is not a plain ChatML template (<|im_start|>role ... <|im_end|>), which is "
                    "all the native runtime renders: pass --raw, or use the Python runtime (`latentcache run`)");
    ChatTemplate result;
    // The default system message: a whole literal '<|im_start|>system\n...<|im_end|>\n'.
    for (size_t i = 0; i < source.size(); ++i) {
        char quote = source[i];
        if (quote != '\'' && quote != '"') continue;
        size_t j = i + 1;
        while (j < source.size() && source[j] != quote) j += source[j] == '\\' ? 2 : 1;
        if (j >= source.size()) break;
        const std::string literal = unescape(source.substr(i + 1, j - i - 1));
        const std::string head = kStart + "system\n", tail = kEnd + "\n";
        if (literal.size() > head.size() + tail.size() && literal.rfind(head, 0) == 0 &&
            literal.compare(literal.size() - tail.size(), tail.size(), tail) == 0) {
            result.system_ = literal.substr(head.size(), literal.size() - head.size() - tail.size());
            break;
        }
        i = j;
    }
    return result;
}

std::optional<ChatTemplate> ChatTemplate::load(const std::string& artifacts, const Manifest& manifest) {
    if (manifest.chatTemplate) return parse(readFile(artifacts + "/" + *manifest.chatTemplate));
    const std::string config = artifacts + "/tokenizer_config.json";
    if (!exists(config)) return std::nullopt;
    const auto data = nlohmann::json::parse(readFile(config), nullptr, false);
    if (data.is_object() && data.contains("chat_template") && data["chat_template"].is_string())
        return parse(data["chat_template"].get<std::string>());
    return std::nullopt;
}

std::string ChatTemplate::render(const std::string& user) const {
    std::string text;
    if (system_) text += kStart + "system\n" + *system_ + kEnd + "\n";
    return text + kStart + "user\n" + user + kEnd + "\n" + kStart + "assistant\n";
}

}  // namespace latentcache
