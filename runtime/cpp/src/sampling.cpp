#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common.h"

namespace latentcache {

void Sampling::validate() const {
    if (!(temperature >= 0)) throw Error("--temperature must be >= 0, got " + std::to_string(temperature));
    if (topK < 0) throw Error("--top-k must be >= 0, got " + std::to_string(topK));
    if (!(topP > 0 && topP <= 1)) throw Error("--top-p must be in (0, 1], got " + std::to_string(topP));
}

int64_t Sampler::next(const float* logits, int64_t vocab) {
    if (sampling_.temperature == 0) return std::max_element(logits, logits + vocab) - logits;
    std::vector<double> scaled(logits, logits + vocab);
    for (double& x : scaled) x /= sampling_.temperature;
    if (sampling_.topK) {
        std::vector<double> sorted = scaled;
        size_t k = static_cast<size_t>(std::min<int64_t>(sampling_.topK, vocab));
        std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(vocab - k), sorted.end());
        double kth = sorted[static_cast<size_t>(vocab) - k];
        for (double& x : scaled)
            if (x < kth) x = -std::numeric_limits<double>::infinity();
    }
    double top = *std::max_element(scaled.begin(), scaled.end()), total = 0;
    std::vector<double> probs(scaled.size());
    for (size_t i = 0; i < probs.size(); ++i) total += probs[i] = std::exp(scaled[i] - top);
    for (double& p : probs) p /= total;
    if (sampling_.topP < 1) {
        std::vector<size_t> order(probs.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probs[a] > probs[b]; });
        double before = 0, kept = 0;
        for (size_t i : order) {
            bool drop = before >= sampling_.topP;  // cumsum - p >= top_p: the crossing token stays
            before += probs[i];
            if (drop) probs[i] = 0;
            kept += probs[i];
        }
        for (double& p : probs) p /= kept;
    }
    // Inverse CDF with a 53-bit uniform draw (numpy's choice: cdf searchsorted side="right").
    double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0), cdf = 0;
    std::vector<double> cumulative(probs.size());
    for (size_t i = 0; i < probs.size(); ++i) cumulative[i] = cdf += probs[i];
    for (double& c : cumulative) c /= cdf;
    auto it = std::upper_bound(cumulative.begin(), cumulative.end(), u);
    return std::min<int64_t>(it - cumulative.begin(), vocab - 1);
}

}  // namespace latentcache
