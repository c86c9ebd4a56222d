// The set bits of packed spikes (element e in bit e % 8 of byte e / 8) and the non-zero entries of spike counts
// packed as bytes, shared by the event-driven kernels: a table of the set-bit positions of every byte value, for
// lists written without a branch per bit, and walks over the events of a range, for callbacks.
#pragma once

#include <cstdint>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace spk {

// Positions of the set bits of each byte value, in order (the rest zero), so that a list can be written eight
// entries at a time with the write position advancing by the popcount: no branch per bit.
struct BitPositions {
    uint8_t at[256][8];
    constexpr BitPositions() : at{} {
        for (int b = 0; b < 256; ++b)
            for (int j = 0, n = 0; j < 8; ++j)
                if ((b >> j) & 1) at[b][n++] = static_cast<uint8_t>(j);
    }
};
inline constexpr BitPositions kBits{};

// Calls fn(e) for each set bit e in [start, end) of packed bits, in order, skipping zero bytes. (A ctz loop: with
// one call per bit it measured 5-10 % faster than walking kBits in the linears' weight gradient.)
template <typename F>
inline void for_set_bits(const uint8_t* bits, int64_t start, int64_t end, F fn) {
    for (int64_t b = start >> 3; b < (end + 7) >> 3; ++b) {
        uint32_t byte = bits[b];
        if (!byte) continue;
        if (8 * b < start) byte &= 0xFFu << (start - 8 * b);
        if (8 * b + 8 > end) byte &= (1u << (end - 8 * b)) - 1u;
        for (; byte; byte &= byte - 1) fn(8 * b + __builtin_ctz(byte));
    }
}

// Calls fn(k, value) for each non-zero byte k in [start, end) of bytes, in order: 16 bytes tested at a time, so the
// cost follows the non-zeros, not the length.
template <typename F>
inline void for_nonzero_bytes(const uint8_t* bytes, int64_t start, int64_t end, F fn) {
    int64_t k = start;
#if defined(__SSE2__)
    for (; k + 16 <= end; k += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + k));
        uint32_t mask = ~static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) & 0xFFFFu;
        for (; mask; mask &= mask - 1) {
            const int64_t at = k + __builtin_ctz(mask);
            fn(at, bytes[at]);
        }
    }
#endif
    for (; k < end; ++k)
        if (bytes[k]) fn(k, bytes[k]);
}

}  // namespace spk
