#include "unicode.h"

#include <algorithm>

#include "common.h"

namespace latentcache {

namespace {
struct CodeRange {
    uint32_t lo, hi;
};
#include "unicode_tables.inc"

template <size_t N>
bool inRanges(const CodeRange (&table)[N], uint32_t cp) {
    auto it = std::upper_bound(std::begin(table), std::end(table), cp,
                               [](uint32_t value, const CodeRange& r) { return value < r.lo; });
    return it != std::begin(table) && cp <= (it - 1)->hi;
}

// Length of the valid UTF-8 sequence at bytes[i..] (0 when invalid) and its code point; when invalid,
// `bad` is the length of the maximal subpart to replace (Unicode's "substitution of maximal subparts").
size_t utf8Sequence(const std::string& bytes, size_t i, uint32_t& cp, size_t& bad) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
    unsigned char b0 = byte(i);
    bad = 1;
    if (b0 < 0x80) { cp = b0; return 1; }
    size_t length;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) { length = 2; cp = b0 & 0x1F; }
    else if (b0 >= 0xE0 && b0 <= 0xEF) {
        length = 3; cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        length = 4; cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    for (size_t k = 1; k < length; ++k) {
        if (i + k >= bytes.size()) { bad = k; return 0; }
        unsigned char b = byte(i + k);
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) { bad = k; return 0; }
        cp = (cp << 6) | (b & 0x3F);
    }
    return length;
}
}  // namespace

bool isLetter(uint32_t cp) { return inRanges(kLetterRanges, cp); }
bool isNumber(uint32_t cp) { return inRanges(kNumberRanges, cp); }
bool isSpace(uint32_t cp) { return inRanges(kSpaceRanges, cp); }

void decodeUtf8(const std::string& text, std::vector<uint32_t>& points, std::vector<size_t>& offsets,
                const char* what) {
    points.clear();
    offsets.clear();
    for (size_t i = 0; i < text.size();) {
        uint32_t cp;
        size_t bad;
        size_t length = utf8Sequence(text, i, cp, bad);
        if (!length) throw Error(std::string(what) + " is not valid UTF-8 (byte " + std::to_string(i) + ")");
        points.push_back(cp);
        offsets.push_back(i);
        i += length;
    }
    offsets.push_back(text.size());
}

void appendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string utf8Lossy(const std::string& bytes) {
    std::string out;
    out.reserve(bytes.size());
    for (size_t i = 0; i < bytes.size();) {
        uint32_t cp;
        size_t bad;
        size_t length = utf8Sequence(bytes, i, cp, bad);
        if (length) {
            out.append(bytes, i, length);
            i += length;
        } else {
            out += "\xEF\xBF\xBD";
            i += bad;
        }
    }
    return out;
}

size_t countCodePoints(const std::string& utf8) {
    size_t count = 0;
    for (unsigned char c : utf8) count += (c & 0xC0) != 0x80;
    return count;
}

std::string dropCodePoints(const std::string& text, size_t skip) {
    size_t i = 0;
    for (; i < text.size() && skip; --skip) {
        ++i;
        while (i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
    }
    return text.substr(i);
}

}  // namespace latentcache
