// Vectors of LANES values, by default as wide as the CPU's registers (GCC/Clang vector extensions), and unaligned
// loads and stores of them, shared by the event-driven kernels. Vectors wider than the registers are split by the
// compiler, but an array of them then lives on the stack instead of in registers: the width follows the ISA.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#ifndef SPK_VEC_BYTES
#if defined(__AVX512F__)
#define SPK_VEC_BYTES 64
#elif defined(__AVX__)
#define SPK_VEC_BYTES 32
#else
#define SPK_VEC_BYTES 16
#endif
#endif

namespace spk {

inline constexpr int kVecBytes = SPK_VEC_BYTES;
// Vectors of one register tile of accumulators: 256 bytes (64 floats) with 32- or 64-byte registers, 128 on SSE.
inline constexpr int kTileVecs = kVecBytes >= 32 ? 256 / kVecBytes : 8;

// fn(std::integral_constant<int, NV>) with NV = min(n, kTileVecs) (at least 1): kernels built per tile width.
template <int NV = kTileVecs, typename F>
inline void with_tile_vecs(int64_t n, F fn) {
    if constexpr (NV > 1) {
        if (n < NV) return with_tile_vecs<NV - 1>(n, fn);
    }
    fn(std::integral_constant<int, NV>{});
}

template <typename S, int LANES = kVecBytes / static_cast<int>(sizeof(S))>
struct Vec {
    typedef S type __attribute__((vector_size(LANES * sizeof(S))));
    static constexpr int64_t lanes = LANES;
};

template <typename S, int LANES = kVecBytes / static_cast<int>(sizeof(S))>
inline typename Vec<S, LANES>::type vload(const S* p) {
    typename Vec<S, LANES>::type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <typename S, typename V>
inline void vstore(S* p, V v) {
    std::memcpy(p, &v, sizeof(v));
}

}  // namespace spk
