// UTF-8 and the three Unicode classes the GPT-2 split pattern needs (\p{L}, \p{N}, \s), with tables
// probed from the `tokenizers` library's regex engine (tools/gen_unicode_tables.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace latentcache {

bool isLetter(uint32_t cp);
bool isNumber(uint32_t cp);
bool isSpace(uint32_t cp);

// Code points of valid UTF-8 `text`, with the byte offset of each (plus one past the end);
// throws Error naming `what` on invalid UTF-8.
void decodeUtf8(const std::string& text, std::vector<uint32_t>& points, std::vector<size_t>& offsets,
                const char* what = "text");
void appendUtf8(std::string& out, uint32_t cp);
// Rust's String::from_utf8_lossy (what `tokenizers` decoders use): each maximal invalid subpart -> U+FFFD.
std::string utf8Lossy(const std::string& bytes);
size_t countCodePoints(const std::string& utf8);
// The suffix of valid UTF-8 `text` after its first `skip` code points.
std::string dropCodePoints(const std::string& text, size_t skip);

}  // namespace latentcache
