// The NCCL stand-in's arithmetic: element sizes and the reduction of one contribution into an
// accumulator, in the datatype's own precision, so that every rank computes bit-identical results.
//
// A reduction is a left fold in rank order: acc = x_0; acc = op(acc, x_1); ... op(acc, x_{N-1}).
// Each step rounds to the datatype as NCCL's device code does (bf16 and f16 add, multiply, max and
// min pairwise in the type: the two operands are widened to f32, combined once and rounded to
// nearest even, which equals the correctly rounded result in the type for sum, max and min, and for
// products that do not underflow). ncclAvg follows NCCL's split: floating types multiply every
// contribution by 1/N (rounded to the type) before summing; integer types sum and then divide,
// truncating. Integer sums and products wrap. Max and min on floating types follow fmaxf/fminf (a
// NaN loses to a number); a NaN in a sum or product propagates.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include "nccl_api.h"

namespace swnccl {

// Bytes per element, or 0 for a datatype this stand-in does not model (the fp8 types).
inline size_t type_size(int dt) {
    switch (dt) {
        case ncclInt8: case ncclUint8: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
        default: return 0;
    }
}

inline const char* type_name(int dt) {
    static const char* names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64", "bfloat16", "float8e4m3", "float8e5m2"};
    return dt >= 0 && dt < ncclNumTypes ? names[dt] : "an unknown datatype";
}

inline const char* op_name(int op) {
    static const char* names[] = {"sum", "prod", "max", "min", "avg"};
    return op >= 0 && op < ncclNumOps ? names[op] : "an unknown op";
}

inline float bf16_to_float(uint16_t h) {
    uint32_t u = uint32_t(h) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline uint16_t float_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (std::isnan(f)) return uint16_t((u >> 16) | 0x40);  // stays a (quiet) NaN
    u += 0x7fff + ((u >> 16) & 1);                          // round to nearest, ties to even
    return uint16_t(u >> 16);
}

inline float f16_to_float(uint16_t h) {
    _Float16 x;
    memcpy(&x, &h, 2);
    return float(x);
}

inline uint16_t float_to_f16(float f) {
    _Float16 x = _Float16(f);  // GCC's conversion rounds to nearest even
    uint16_t h;
    memcpy(&h, &x, 2);
    return h;
}

// One reduction step on a value type that the machine computes in exactly (float, double, integers).
template <class T>
T apply(int op, T a, T b) {
    if constexpr (std::is_floating_point_v<T>) {
        switch (op) {
            case ncclProd: return a * b;
            case ncclMax: return std::fmax(a, b);
            case ncclMin: return std::fmin(a, b);
            default: return a + b;  // sum, and avg's sum of pre-scaled terms
        }
    } else {
        using U = std::make_unsigned_t<T>;  // wrapping arithmetic, without signed overflow
        switch (op) {
            case ncclProd: return T(U(a) * U(b));
            case ncclMax: return a > b ? a : b;
            case ncclMin: return a < b ? a : b;
            default: return T(U(a) + U(b));
        }
    }
}

// acc[i] = f(acc[i], x[i]) for every element, with the op fixed at compile time.
template <class T, class F>
void combine_each(T* acc, const T* x, size_t n, F f) {
    for (size_t i = 0; i < n; ++i) acc[i] = f(acc[i], x[i]);
}

// Calls f(std::integral_constant<int, op>) for the op's compile-time value (avg sums).
template <class F>
void with_op(int op, F f) {
    switch (op) {
        case ncclProd: return f(std::integral_constant<int, ncclProd>{});
        case ncclMax: return f(std::integral_constant<int, ncclMax>{});
        case ncclMin: return f(std::integral_constant<int, ncclMin>{});
        default: return f(std::integral_constant<int, ncclSum>{});
    }
}

template <class T>
void fold_plain(int op, T* acc, const T* x, size_t n, bool first, double avg_scale) {
    if constexpr (std::is_floating_point_v<T>) {
        if (op == ncclAvg) {
            const T s = T(avg_scale);
            for (size_t i = 0; i < n; ++i) acc[i] = first ? T(x[i] * s) : T(acc[i] + T(x[i] * s));
            return;
        }
    }
    if (first) return (void)memmove(acc, x, n * sizeof(T));
    with_op(op, [&](auto o) { combine_each(acc, x, n, [](T a, T b) { return apply<T>(decltype(o)::value, a, b); }); });
}

// 16-bit floats: stored as bits, combined in f32 and rounded back after every step.
template <float (*Load)(uint16_t), uint16_t (*Store)(float)>
void fold_half(int op, uint16_t* acc, const uint16_t* x, size_t n, bool first, double avg_scale) {
    if (op == ncclAvg) {
        const float s = Load(Store(float(avg_scale)));
        for (size_t i = 0; i < n; ++i) {
            const uint16_t v = Store(Load(x[i]) * s);
            acc[i] = first ? v : Store(Load(acc[i]) + Load(v));
        }
        return;
    }
    if (first) return (void)memmove(acc, x, n * sizeof(uint16_t));
    with_op(op, [&](auto o) {
        combine_each(acc, x, n, [](uint16_t a, uint16_t b) { return Store(apply<float>(decltype(o)::value, Load(a), Load(b))); });
    });
}

// Folds contribution `x` (n elements) into `acc`: `first` starts the fold (acc = x, pre-scaled for
// ncclAvg). `nranks` is the fold's length, for ncclAvg.
inline void fold(int dt, int op, void* acc, const void* x, size_t n, bool first, int nranks) {
    const double scale = 1.0 / nranks;
    switch (dt) {
        case ncclInt8: return fold_plain(op, (int8_t*)acc, (const int8_t*)x, n, first, scale);
        case ncclUint8: return fold_plain(op, (uint8_t*)acc, (const uint8_t*)x, n, first, scale);
        case ncclInt32: return fold_plain(op, (int32_t*)acc, (const int32_t*)x, n, first, scale);
        case ncclUint32: return fold_plain(op, (uint32_t*)acc, (const uint32_t*)x, n, first, scale);
        case ncclInt64: return fold_plain(op, (int64_t*)acc, (const int64_t*)x, n, first, scale);
        case ncclUint64: return fold_plain(op, (uint64_t*)acc, (const uint64_t*)x, n, first, scale);
        case ncclFloat32: return fold_plain(op, (float*)acc, (const float*)x, n, first, scale);
        case ncclFloat64: return fold_plain(op, (double*)acc, (const double*)x, n, first, scale);
        case ncclFloat16: return fold_half<f16_to_float, float_to_f16>(op, (uint16_t*)acc, (const uint16_t*)x, n, first, scale);
        case ncclBfloat16: return fold_half<bf16_to_float, float_to_bf16>(op, (uint16_t*)acc, (const uint16_t*)x, n, first, scale);
    }
}

// ncclAvg on integer types divides the finished sum by the rank count (truncating, as C does).
template <class T>
void divide(T* acc, size_t n, int nranks) {
    for (size_t i = 0; i < n; ++i) acc[i] = T(acc[i] / T(nranks));
}

inline void finish_avg(int dt, void* acc, size_t n, int nranks) {
    switch (dt) {
        case ncclInt8: return divide((int8_t*)acc, n, nranks);
        case ncclUint8: return divide((uint8_t*)acc, n, nranks);
        case ncclInt32: return divide((int32_t*)acc, n, nranks);
        case ncclUint32: return divide((uint32_t*)acc, n, nranks);
        case ncclInt64: return divide((int64_t*)acc, n, nranks);
        case ncclUint64: return divide((uint64_t*)acc, n, nranks);
        default: return;  // floating types were pre-scaled
    }
}

}  // namespace swnccl
