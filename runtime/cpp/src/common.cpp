#include "common.h"

#include <numeric>

namespace latentcache {

DType parseDType(const std::string& name) {
    if (name == "float32") return DType::Float32;
    if (name == "float16") return DType::Float16;
    if (name == "bfloat16") return DType::BFloat16;
    if (name == "int64") return DType::Int64;
    if (name == "int32") return DType::Int32;
    if (name == "bool") return DType::Bool;
    throw Error("unknown dtype '" + name + "' in manifest.json: re-export the artifacts");
}

const char* dtypeName(DType dtype) {
    switch (dtype) {
        case DType::Float32: return "float32";
        case DType::Float16: return "float16";
        case DType::BFloat16: return "bfloat16";
        case DType::Int64: return "int64";
        case DType::Int32: return "int32";
        case DType::Bool: return "bool";
    }
    return "?";
}

size_t dtypeSize(DType dtype) {
    switch (dtype) {
        case DType::Float32: case DType::Int32: return 4;
        case DType::Float16: case DType::BFloat16: return 2;
        case DType::Int64: return 8;
        case DType::Bool: return 1;
    }
    return 0;
}

HostTensor::HostTensor(DType dtype_, std::vector<int64_t> shape_) : dtype(dtype_), shape(std::move(shape_)) {
    bytes.assign(static_cast<size_t>(count()) * dtypeSize(dtype), std::byte{0});
}

int64_t HostTensor::count() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

float halfToFloat(uint16_t h) {
    uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ffu, bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exponent = 127 - 15 + 1;
            while (!(mantissa & 0x400u)) { mantissa <<= 1; --exponent; }
            bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
        }
    } else if (exponent == 31) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

uint16_t floatToHalf(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    uint32_t sign = (bits >> 16) & 0x8000u;
    int32_t exponent = static_cast<int32_t>((bits >> 23) & 0xff) - 127 + 15;
    uint32_t mantissa = bits & 0x7fffffu;
    if (((bits >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mantissa ? 0x200u : 0));
    if (exponent >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
    if (exponent <= 0) {
        if (exponent < -10) return static_cast<uint16_t>(sign);
        mantissa |= 0x800000u;
        uint32_t shift = static_cast<uint32_t>(14 - exponent);
        uint32_t half = mantissa >> shift, rest = mantissa & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) ++half;
        return static_cast<uint16_t>(sign | half);
    }
    uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13), rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1))) ++half;  // may carry into the exponent: correct
    return static_cast<uint16_t>(half);
}

static float loadFloat(const HostTensor& t, int64_t i) {
    if (t.dtype == DType::Float32) return t.data<float>()[i];
    uint16_t raw = t.data<uint16_t>()[i];
    if (t.dtype == DType::Float16) return halfToFloat(raw);
    uint32_t bits = static_cast<uint32_t>(raw) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

static void storeFloat(HostTensor& t, int64_t i, float v) {
    if (t.dtype == DType::Float32) { t.data<float>()[i] = v; return; }
    if (t.dtype == DType::Float16) { t.data<uint16_t>()[i] = floatToHalf(v); return; }
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    t.data<uint16_t>()[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16);
}

HostTensor convertFloat(const HostTensor& tensor, DType dtype) {
    if (tensor.dtype == dtype) return tensor;
    HostTensor out(dtype, tensor.shape);
    for (int64_t i = 0; i < tensor.count(); ++i) storeFloat(out, i, loadFloat(tensor, i));
    return out;
}

}  // namespace latentcache
