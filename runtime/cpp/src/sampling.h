// Next-token choice, the rules of latentcache/sampling.py: greedy when temperature == 0 (numpy argmax:
// the first maximum), otherwise temperature, then top-k, then top-p (keeping the token that crosses
// top_p), in float64. Seeded sampling is reproducible by seed, but draws from std::mt19937_64, not numpy's
// PCG64 stream, so sampled (non-greedy) tokens differ from the Python runtime's for the same seed.
#pragma once

#include <cstdint>
#include <random>

namespace latentcache {

struct Sampling {
    double temperature = 0.0;
    int64_t topK = 0;
    double topP = 1.0;
    uint64_t seed = 0;
    void validate() const;  // the same bounds as Sampling.__post_init__
};

class Sampler {
public:
    explicit Sampler(const Sampling& sampling) : sampling_(sampling), rng_(sampling.seed) {}
    int64_t next(const float* logits, int64_t vocab);

private:
    Sampling sampling_;
    std::mt19937_64 rng_;
};

}  // namespace latentcache
