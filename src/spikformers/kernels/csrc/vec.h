// Vectors of LANES values, 64 bytes by default (GCC/Clang vector extensions; the compiler splits them where the
// CPU has narrower registers), and unaligned loads and stores of them, shared by the event-driven kernels.
#pragma once

#include <cstdint>
#include <cstring>

namespace spk {

template <typename S, int LANES = 64 / static_cast<int>(sizeof(S))>
struct Vec {
    typedef S type __attribute__((vector_size(LANES * sizeof(S))));
    static constexpr int64_t lanes = LANES;
};

template <typename S, int LANES = 64 / static_cast<int>(sizeof(S))>
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
