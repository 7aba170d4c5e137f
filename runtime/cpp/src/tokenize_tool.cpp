// latentcache-tokenize TOKENIZER_JSON [--no-special] [--decode] [--chat-template FILE]: the native tokenizer
// on stdin, one line per input line, for the parity tests against HF `tokenizers` (tests/test_native.py).
//   encode (default): each line (without its '\n') -> its ids, space-separated
//   --chat-template FILE: each line is a user message, rendered with the template and encoded without
//                         special tokens (what latentcache-run does with a chat prompt)
//   --decode: each line of space-separated ids -> the decoded text as a JSON string
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "chat_template.h"
#include "common.h"
#include "tokenizer.h"

int main(int argc, char** argv) {
    std::ios::sync_with_stdio(false);
    if (argc < 2) {
        std::cerr << "usage: latentcache-tokenize TOKENIZER_JSON [--no-special] [--decode] < lines\n";
        return 2;
    }
    bool special = true, decode = false;
    std::string templateFile;
    for (int i = 2; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--no-special") special = false;
        else if (arg == "--chat-template" && i + 1 < argc) templateFile = argv[++i];
        else if (arg == "--decode") decode = true;
        else { std::cerr << "error: unknown option " << arg << "\n"; return 2; }
    }
    try {
        latentcache::Tokenizer tokenizer(argv[1]);
        std::optional<latentcache::ChatTemplate> chat;
        if (!templateFile.empty()) chat = latentcache::ChatTemplate::parse(latentcache::readFile(templateFile));
        std::string line;
        while (std::getline(std::cin, line)) {
            if (decode) {
                std::istringstream in(line);
                std::vector<int64_t> ids;
                for (int64_t id; in >> id;) ids.push_back(id);
                std::cout << nlohmann::json(tokenizer.decode(ids)).dump(-1, ' ', false,
                                                                         nlohmann::json::error_handler_t::replace) << '\n';
                continue;
            }
            const auto ids = chat ? tokenizer.encode(chat->render(line), false) : tokenizer.encode(line, special);
            for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
            std::cout << '\n';
        }
    } catch (const latentcache::Error& exc) {
        std::cerr << "error: " << exc.what() << "\n";
        return 1;
    }
    return 0;
}
