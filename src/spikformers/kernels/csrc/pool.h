// MaxPool(3, stride 2, padding 1) on one H x W plane, shared by the max-pool kernels (spikes.cpp) and the batch-norm
// + LIF units that pool their own spikes (bn_neuron.cpp).
#pragma once

#include <cstdint>

namespace spk {

// Output size of the pool along a side of n: (n + 2 - 3) / 2 + 1.
inline int64_t pooled(int64_t n) { return (n - 1) / 2 + 1; }

// The window of output o along a side of n: input indices [first, last).
inline int64_t window_first(int64_t o) { return 2 * o - 1 < 0 ? 0 : 2 * o - 1; }
inline int64_t window_last(int64_t o, int64_t n) { return 2 * o + 2 < n ? 2 * o + 2 : n; }

// y [pooled(H), pooled(W)] = the pool of x [H, W].
template <typename S>
inline void maxpool_plane(const S* x, S* y, int64_t H, int64_t W) {
    const int64_t Ho = pooled(H), Wo = pooled(W);
    for (int64_t oi = 0; oi < Ho; ++oi) {
        const int64_t i0 = window_first(oi), i1 = window_last(oi, H);
        for (int64_t oj = 0; oj < Wo; ++oj) {
            const int64_t j0 = window_first(oj), j1 = window_last(oj, W);
            S m = x[i0 * W + j0];
            for (int64_t i = i0; i < i1; ++i)
                for (int64_t j = j0; j < j1; ++j) m = x[i * W + j] > m ? x[i * W + j] : m;
            y[oi * Wo + oj] = m;
        }
    }
}

// Gradient of the pool for a binary input, where fired(e) says whether element e of the plane is 1: each output's
// gradient gy goes to the first element of its window (row by row) that is 1, or to the window's first element when
// none is, added in output order into gx (zeroed here). torch's CPU max-pool picks and adds the same way, so the
// result is the same bit for bit. Rows up to 64 wide are first turned into bit masks, so a window is found with a
// few word operations instead of nine calls of fired().
template <typename S, typename Fired>
inline void maxpool_plane_backward(Fired fired, const S* gy, S* gx, int64_t H, int64_t W) {
    const int64_t Ho = pooled(H), Wo = pooled(W);
    for (int64_t e = 0; e < H * W; ++e) gx[e] = S(0);
    if (W <= 64 && H <= 256) {
        uint64_t rows[256];
        for (int64_t i = 0; i < H; ++i) {
            uint64_t bits = 0;
            for (int64_t j = 0; j < W; ++j) bits |= static_cast<uint64_t>(fired(i * W + j) ? 1 : 0) << j;
            rows[i] = bits;
        }
        for (int64_t oi = 0; oi < Ho; ++oi) {
            const int64_t i0 = window_first(oi), i1 = window_last(oi, H);
            for (int64_t oj = 0; oj < Wo; ++oj) {
                const int64_t j0 = window_first(oj), j1 = window_last(oj, W);
                const uint64_t cols = ((uint64_t{1} << (j1 - j0)) - 1) << j0;
                int64_t at = i0 * W + j0;
                for (int64_t i = i0; i < i1; ++i)
                    if (rows[i] & cols) {
                        at = i * W + __builtin_ctzll(rows[i] & cols);
                        break;
                    }
                gx[at] += gy[oi * Wo + oj];
            }
        }
        return;
    }
    for (int64_t oi = 0; oi < Ho; ++oi) {
        const int64_t i0 = window_first(oi), i1 = window_last(oi, H);
        for (int64_t oj = 0; oj < Wo; ++oj) {
            const int64_t j0 = window_first(oj), j1 = window_last(oj, W);
            int64_t at = i0 * W + j0;
            for (int64_t i = i0, found = 0; i < i1 && !found; ++i)
                for (int64_t j = j0; j < j1; ++j)
                    if (fired(i * W + j)) {
                        at = i * W + j;
                        found = 1;
                        break;
                    }
            gx[at] += gy[oi * Wo + oj];
        }
    }
}

}  // namespace spk
