// 64-byte vectors (GCC/Clang vector extensions; the compiler splits them where the CPU has narrower registers)
// and unaligned loads and stores of them, shared by the event-driven kernels.
#pragma once

#include <cstdint>
#include <cstring>

namespace spk {

template <typename S>
struct Vec {
    typedef S type __attribute__((vector_size(64)));
    static constexpr int64_t lanes = 64 / sizeof(S);
};

template <typename S>
inline typename Vec<S>::type vload(const S* p) {
    typename Vec<S>::type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <typename S>
inline void vstore(S* p, typename Vec<S>::type v) {
    std::memcpy(p, &v, sizeof(v));
}

}  // namespace spk
