#include "generator.h"

#include <algorithm>
#include <chrono>
#include <cstring>

namespace latentcache {

namespace {
double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
HostTensor int64s(std::vector<int64_t> shape) { return HostTensor(DType::Int64, std::move(shape)); }
}  // namespace

Generator::Generator(Backend& backend, const Manifest& manifest)
    : backend_(backend), manifest_(manifest), batch_(manifest.kv.batch), capacity_(manifest.kv.maxSeq),
      valid_(static_cast<size_t>(batch_ * capacity_), 0), positions_(static_cast<size_t>(batch_), 0),
      lastTokens_(static_cast<size_t>(batch_), 0) {
    const GraphSpec& prefill = manifest.graph("prefill");
    embedsDtype_ = prefill.tensor(role::inputsEmbeds).dtype;
    embedsMaskDtype_ = prefill.tensor(role::embedsMask).dtype;
    if (embedsMaskDtype_ != DType::Int64) throw Error("prefill's embeds_mask must be int64: re-export the artifacts");
}

void Generator::checkRoom(int64_t count) const {
    if (length_ + count > capacity_)
        throw Error("the kv-cache holds " + std::to_string(capacity_) + " slots and " + std::to_string(length_ + count) +
                    " are needed: shorten the prompt or --max-new-tokens, or re-export with a larger --max-seq");
}

HostTensor Generator::mask(int64_t span) const {
    HostTensor out = int64s({batch_, span});
    for (int64_t row = 0; row < batch_; ++row)
        std::copy_n(&valid_[static_cast<size_t>(row * capacity_)], span, out.data<int64_t>() + row * span);
    return out;
}

const HostTensor& Generator::prefill(const std::vector<std::vector<int64_t>>& prompts) {
    if (static_cast<int64_t>(prompts.size()) != batch_)
        throw Error("these artifacts run batches of " + std::to_string(batch_) + " prompts, got " +
                    std::to_string(prompts.size()) + ": re-export with --batch or pass that many prompts");
    size_t longest = 0, shortest = SIZE_MAX;
    for (const auto& p : prompts) longest = std::max(longest, p.size()), shortest = std::min(shortest, p.size());
    if (shortest == 0) throw Error("a prompt is empty: pass some text");
    const auto q = static_cast<int64_t>(longest);
    length_ = 0;  // a new request: the whole capacity is free again
    checkRoom(q);
    backend_.reset();
    std::fill(valid_.begin(), valid_.end(), 0);
    HostTensor ids = int64s({batch_, q}), positions = int64s({batch_, q});
    for (int64_t row = 0; row < batch_; ++row) {
        const auto& prompt = prompts[static_cast<size_t>(row)];
        const int64_t pad = q - static_cast<int64_t>(prompt.size());
        for (int64_t i = 0; i < q; ++i) {
            const bool real = i >= pad;
            ids.data<int64_t>()[row * q + i] = real ? prompt[static_cast<size_t>(i - pad)] : 0;
            valid_[static_cast<size_t>(row * capacity_ + i)] = real;
            positions.data<int64_t>()[row * q + i] = real ? i - pad : 0;  // clip(cumsum(valid) - 1, 0)
        }
        positions_[static_cast<size_t>(row)] = static_cast<int64_t>(prompt.size());
        lastTokens_[static_cast<size_t>(row)] = prompt.back();
    }
    Feeds extra;
    extra[role::inputsEmbeds] = HostTensor(embedsDtype_, {batch_, q, manifest_.hiddenSize});
    extra[role::embedsMask] = HostTensor(embedsMaskDtype_, {batch_, q});
    return write("prefill", ids, positions, std::move(extra));
}

HostTensor Generator::coprocess() {
    const int64_t n = manifest_.numLatents;
    if (!n) throw Error("these artifacts were exported without a coprocessor: re-export with --coprocessor");
    Feeds feeds;
    HostTensor positions = int64s({batch_, n});
    for (int64_t row = 0; row < batch_; ++row)
        for (int64_t i = 0; i < n; ++i) positions.data<int64_t>()[row * n + i] = positions_[static_cast<size_t>(row)] + i;
    feeds[role::positionIds] = std::move(positions);
    feeds[role::attentionMask] = mask(length_);
    return backend_.run("coprocessor", feeds).at(role::latents);  // a copy: the next run reuses the buffer
}

const HostTensor& Generator::absorb(const HostTensor& latents) {
    const int64_t count = latents.shape.at(1), hidden = manifest_.hiddenSize;
    const bool refeed = manifest_.refeeds();
    const int64_t rows = count + (refeed ? 1 : 0);  // runtime/generator.py absorb: [latents, last token]
    checkRoom(rows);
    const HostTensor converted = convertFloat(latents, embedsDtype_);
    HostTensor embeds(embedsDtype_, {batch_, rows, hidden}), flags(embedsMaskDtype_, {batch_, rows});
    HostTensor ids = int64s({batch_, rows}), positions = int64s({batch_, rows});
    const size_t rowBytes = static_cast<size_t>(count * hidden) * dtypeSize(embedsDtype_);
    for (int64_t row = 0; row < batch_; ++row) {
        std::memcpy(embeds.bytes.data() + row * rows * hidden * dtypeSize(embedsDtype_),
                    converted.bytes.data() + row * rowBytes, rowBytes);
        const size_t r = static_cast<size_t>(row);
        for (int64_t i = 0; i < count; ++i) {
            flags.data<int64_t>()[row * rows + i] = 1;
            positions.data<int64_t>()[row * rows + i] = positions_[r] + i;
            valid_[static_cast<size_t>(row * capacity_ + length_ + i)] = manifest_.latentSlotValue();
        }
        if (refeed) {  // the last token again at its own position; its old slot is emptied for this and later calls
            ids.data<int64_t>()[row * rows + count] = lastTokens_[r];
            positions.data<int64_t>()[row * rows + count] = positions_[r] - 1;
            valid_[static_cast<size_t>(row * capacity_ + length_ - 1)] = kEmptySlot;
            valid_[static_cast<size_t>(row * capacity_ + length_ + count)] = kTokenSlot;
        }
    }
    Feeds extra;
    extra[role::inputsEmbeds] = std::move(embeds);
    extra[role::embedsMask] = std::move(flags);
    const HostTensor& logits = write("prefill", ids, positions, std::move(extra));
    if (!refeed)
        for (auto& p : positions_) p += count;  // a re-fed token keeps the next position where it was
    return logits;
}

const HostTensor& Generator::decodeStep(const std::vector<int64_t>& tokens) {
    checkRoom(1);
    HostTensor ids = int64s({batch_, 1});
    std::copy(tokens.begin(), tokens.end(), ids.data<int64_t>());
    lastTokens_ = tokens;
    return append("decode", ids, {});
}

const HostTensor& Generator::append(const std::string& graph, const HostTensor& ids, Feeds extra) {
    const int64_t count = ids.shape[1];
    HostTensor positions = int64s({batch_, count});
    for (int64_t row = 0; row < batch_; ++row) {
        std::fill_n(&valid_[static_cast<size_t>(row * capacity_ + length_)], count, 1);
        for (int64_t i = 0; i < count; ++i)
            positions.data<int64_t>()[row * count + i] = positions_[static_cast<size_t>(row)] + i;
    }
    const HostTensor& logits = write(graph, ids, positions, std::move(extra));
    for (auto& p : positions_) p += count;
    return logits;
}

const HostTensor& Generator::write(const std::string& graph, const HostTensor& ids, const HostTensor& positions,
                                   Feeds extra) {
    const int64_t start = length_, count = ids.shape[1];
    Feeds feeds = std::move(extra);
    feeds[role::inputIds] = ids;
    feeds[role::positionIds] = positions;
    HostTensor writeIndex = int64s({batch_});
    std::fill_n(writeIndex.data<int64_t>(), batch_, start);
    feeds[role::writeIndex] = std::move(writeIndex);
    feeds[role::attentionMask] = mask(start + count);
    const HostTensor& logits = backend_.run(graph, feeds).at(role::logits);
    length_ = start + count;
    return logits;
}

void Generator::generate(const std::vector<std::vector<int64_t>>& prompts, int64_t maxNewTokens,
                         const Sampling& sampling, const std::vector<int64_t>& stopIds, bool augment,
                         RequestStats& stats, const std::function<void(const std::vector<int64_t>&)>& emit) {
    std::vector<Sampler> samplers;  // one stream for the batch, row after row, as numpy's rng.choice loop
    samplers.emplace_back(sampling);
    const double start = now();
    const HostTensor* logits = &prefill(prompts);
    stats.promptTokens = length_;
    stats.prefillS = now() - start;
    const int64_t vocab = logits->shape.back();
    std::vector<bool> finished(static_cast<size_t>(batch_), false);
    std::vector<int64_t> tokens(static_cast<size_t>(batch_));
    const auto isStop = [&](int64_t t) { return std::find(stopIds.begin(), stopIds.end(), t) != stopIds.end(); };
    for (int64_t step = 0; step < maxNewTokens; ++step) {
        if (augment && step == 0) {
            const double tick = now();
            logits = &absorb(coprocess());
            stats.augmentS.push_back(now() - tick);
        }
        for (int64_t row = 0; row < batch_; ++row) {
            int64_t token = samplers[0].next(logits->data<float>() + row * vocab, vocab);
            if (finished[static_cast<size_t>(row)] && !stopIds.empty()) token = stopIds[0];
            tokens[static_cast<size_t>(row)] = token;
        }
        if (step == 0) stats.firstTokenS = now() - start;
        emit(tokens);
        bool all = true;
        for (int64_t row = 0; row < batch_; ++row) {
            const size_t r = static_cast<size_t>(row);
            finished[r] = finished[r] || isStop(tokens[r]);
            all = all && finished[r];
        }
        if (all || step == maxNewTokens - 1) break;
        const double tick = now();
        logits = &decodeStep(tokens);
        stats.stepS.push_back(now() - tick);
    }
}

}  // namespace latentcache
