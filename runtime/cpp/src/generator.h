// The orchestrator, step for step runtime/generator.py: prefill -> (coprocess -> absorb) -> decode_step.
//
// Host state of one request batch: `length` (the next cache slot, shared by all rows: prompts are
// left-padded so every row's last prompt token sits in slot length - 1), `valid [batch, max_seq]` (the
// graphs' attention_mask) and `positions [batch]` (next rope position per row). Latents after a context
// ending at position p take positions p + 1 + i and the next cache slots; with a re-feeding augmentation
// (manifest.refeeds()) the last token follows them again at position p, its old slot emptied.
#pragma once

#include <functional>
#include <vector>

#include "backend.h"
#include "sampling.h"

namespace latentcache {

struct RequestStats {  // seconds
    int64_t promptTokens = 0;
    double prefillS = 0, firstTokenS = 0;
    std::vector<double> augmentS, stepS;
};

class Generator {
public:
    Generator(Backend& backend, const Manifest& manifest);

    const HostTensor& prefill(const std::vector<std::vector<int64_t>>& prompts);  // logits [batch, vocab]
    HostTensor coprocess();                                                       // latents [batch, N_L, hidden]
    const HostTensor& absorb(const HostTensor& latents);
    const HostTensor& decodeStep(const std::vector<int64_t>& tokens);

    // Calls `emit(tokens [batch])` per generated step; stops at maxNewTokens or when every row hit a stop id.
    // `augment`: coprocess + absorb once after the prompt (the EndOfPrompt policy), else the base alone.
    void generate(const std::vector<std::vector<int64_t>>& prompts, int64_t maxNewTokens, const Sampling& sampling,
                  const std::vector<int64_t>& stopIds, bool augment, RequestStats& stats,
                  const std::function<void(const std::vector<int64_t>&)>& emit);

private:
    const HostTensor& append(const std::string& graph, const HostTensor& ids, Feeds extra);
    const HostTensor& write(const std::string& graph, const HostTensor& ids, const HostTensor& positions, Feeds extra);
    HostTensor mask(int64_t span) const;  // valid[:, :span]
    void checkRoom(int64_t count) const;

    Backend& backend_;
    const Manifest& manifest_;
    int64_t batch_, capacity_, length_ = 0;
    std::vector<int64_t> valid_, positions_, lastTokens_;  // lastTokens_: the token in slot length_ - 1
    DType embedsDtype_, embedsMaskDtype_;
};

}  // namespace latentcache
