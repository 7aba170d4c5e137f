// Shared vocabulary of the native runtime: the one error type, tensor dtypes and host tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace latentcache {

// Every failure the user can act on is one of these; the program prints "error: <what>" on one line.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class DType { Float32, Float16, BFloat16, Int64, Int32, Bool };

DType parseDType(const std::string& name);  // the manifest's spelling ("float32", ...)
const char* dtypeName(DType dtype);
size_t dtypeSize(DType dtype);

// A dense row-major host tensor: raw bytes plus dtype and shape (the graphs' non-cache I/O).
struct HostTensor {
    DType dtype = DType::Float32;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;

    HostTensor() = default;
    HostTensor(DType dtype, std::vector<int64_t> shape);  // zero-filled
    int64_t count() const;
    template <typename T> T* data() { return reinterpret_cast<T*>(bytes.data()); }
    template <typename T> const T* data() const { return reinterpret_cast<const T*>(bytes.data()); }
};

// fp16 <-> fp32 (round to nearest even), for fp16 artifacts' embeddings.
float halfToFloat(uint16_t half);
uint16_t floatToHalf(float value);

// A copy of `tensor` in `dtype` (float32/float16/bfloat16 only); the same tensor when dtypes agree.
HostTensor convertFloat(const HostTensor& tensor, DType dtype);

}  // namespace latentcache
