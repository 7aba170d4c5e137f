// The chat prompt without a Jinja engine. The export copies the model's Jinja template verbatim
// (chat_template.jinja or tokenizer_config.json's chat_template); instead of interpreting Jinja, the
// native runtime recognises ChatML-style templates (SmolLM2's: <|im_start|>role\ncontent<|im_end|>\n)
// and reads from the template text the one string that varies between them, the default system
// message. A single user turn then renders as
//   [<|im_start|>system\n{default}<|im_end|>\n] <|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n
// which the tests check against the Python runtime's jinja2 rendering. Any other template is refused
// with a one-line error (pass --raw, or use the Python runtime).
#pragma once

#include <optional>
#include <string>

#include "manifest.h"

namespace latentcache {

class ChatTemplate {
public:
    // The artifacts' template (manifest chat_template, else tokenizer_config.json); nullopt when there is none.
    static std::optional<ChatTemplate> load(const std::string& artifacts, const Manifest& manifest);
    static ChatTemplate parse(const std::string& source);  // throws Error for unsupported templates
    std::string render(const std::string& userMessage) const;
    const std::optional<std::string>& defaultSystem() const { return system_; }

private:
    std::optional<std::string> system_;
};

}  // namespace latentcache
