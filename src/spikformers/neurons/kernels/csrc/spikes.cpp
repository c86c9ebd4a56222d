// Spike tensors on the CPU: compact packing for the layers' saved inputs, and event-driven linear layers whose
// input is mostly zeros (spikes, or the small integer spike counts of a residual stream): each output row adds
// the weight columns of the inputs that are not zero, instead of a dense product.
//
// Built together with neurons.cpp by spikformers/neurons/kernels/cpu.py. All arrays are contiguous row-major.
// Packed bits: byte b holds elements 8b..8b+7, element 8b+j in bit j (the layout torch code in spike_ops.py uses).
// Packed bytes ("u8"): one byte per element, for inputs that are integers in [0, 255].

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "pool.h"
#include "vec.h"

namespace {

// ---------------------------------------------------------------------------------------------- packing
// Packing checks in the same pass that every value fits the format and gives up at the first chunk that does not,
// so a tensor of another kind costs little. It also counts the non-zero values (the firing rate).
constexpr int64_t PACK_CHUNK = 64;  // bytes of bits per chunk: 512 elements

template <typename S>
void pack_bits_range(const S* __restrict x, int64_t n, uint8_t* __restrict bits, int64_t begin, int64_t end,
                     std::atomic<int>& bad, std::atomic<int64_t>& nonzero) {
    int64_t count = 0;
    for (int64_t c0 = begin; c0 < end; c0 += PACK_CHUNK) {
        if (bad.load(std::memory_order_relaxed)) break;
        const int64_t c1 = c0 + PACK_CHUNK < end ? c0 + PACK_CHUNK : end;
        int32_t ok = 1;
        for (int64_t b = c0; b < c1; ++b) {
            const int64_t jn = 8 * b + 8 <= n ? 8 : n - 8 * b;
            uint32_t byte = 0;
            for (int64_t j = 0; j < jn; ++j) {
                S v = x[8 * b + j];
                ok &= (v == S(0)) | (v == S(1));
                byte |= static_cast<uint32_t>(v == S(1)) << j;
            }
            bits[b] = static_cast<uint8_t>(byte);
            count += __builtin_popcount(byte);
        }
        if (!ok) bad.store(1, std::memory_order_relaxed);
    }
    nonzero.fetch_add(count, std::memory_order_relaxed);
}

template <typename S>
void pack_u8_range(const S* __restrict x, uint8_t* __restrict out, int64_t begin, int64_t end, std::atomic<int>& bad,
                   std::atomic<int64_t>& nonzero) {
    int64_t count = 0;
    for (int64_t c0 = begin; c0 < end; c0 += 8 * PACK_CHUNK) {
        if (bad.load(std::memory_order_relaxed)) break;
        const int64_t c1 = c0 + 8 * PACK_CHUNK < end ? c0 + 8 * PACK_CHUNK : end;
        int32_t ok = 1;
        for (int64_t i = c0; i < c1; ++i) {
            S v = x[i];
            S c = v < S(0) ? S(0) : (v > S(255) ? S(255) : v);  // NaN fails the equality below
            uint8_t u = static_cast<uint8_t>(c);
            ok &= static_cast<S>(u) == v;
            out[i] = u;
            count += u != 0;
        }
        if (!ok) bad.store(1, std::memory_order_relaxed);
    }
    nonzero.fetch_add(count, std::memory_order_relaxed);
}

template <typename S>
void unpack_bits_range(const uint8_t* __restrict bits, int64_t n, S* __restrict out, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
        const uint32_t byte = bits[b];
        const int64_t jn = 8 * b + 8 <= n ? 8 : n - 8 * b;
        for (int64_t j = 0; j < jn; ++j) out[8 * b + j] = static_cast<S>((byte >> j) & 1u);
    }
}

// ----------------------------------------------------------------------------------- event-driven linear
// Each output row block of TILE columns is accumulated in registers (spk::Vec, 64-byte vectors) while the weight
// panel it reads stays in L2.
using spk::Vec;
using spk::vload;
using spk::vstore;
constexpr int VECS = 4;  // vectors per tile: 64 float or 32 double columns

// The non-zero entries of rows of a [M, K] matrix as CSR: offsets (rows + 1), column indices and values.
template <typename S>
struct Csr {
    std::vector<int64_t> off{0};
    std::vector<int32_t> idx;
    std::vector<S> val;
    void add(int64_t k, S v) {
        idx.push_back(static_cast<int32_t>(k));
        val.push_back(v);
    }
    void end_row() { off.push_back(static_cast<int64_t>(idx.size())); }
};

template <typename S>
void csr_from_values(const S* x, int64_t K, int64_t m0, int64_t m1, Csr<S>& a) {
    for (int64_t m = m0; m < m1; ++m) {
        const S* __restrict row = x + m * K;
        for (int64_t k = 0; k < K; ++k)
            if (row[k] != S(0)) a.add(k, row[k]);
        a.end_row();
    }
}

template <typename S>
void csr_from_bits(const uint8_t* bits, int64_t M, int64_t K, Csr<S>& a) {  // K a multiple of 8
    for (int64_t m = 0; m < M; ++m) {
        const uint8_t* row = bits + m * (K / 8);
        for (int64_t b = 0; b < K / 8; ++b)
            for (uint32_t byte = row[b]; byte; byte &= byte - 1) a.add(8 * b + __builtin_ctz(byte), S(1));
        a.end_row();
    }
}

template <typename S>
void csr_from_u8(const uint8_t* u8, int64_t M, int64_t K, Csr<S>& a) {
    for (int64_t m = 0; m < M; ++m) {
        const uint8_t* row = u8 + m * K;
        for (int64_t k = 0; k < K; ++k)
            if (row[k]) a.add(k, static_cast<S>(row[k]));
        a.end_row();
    }
}

// Columns [t * TILE, (t + 1) * TILE) of wt [K, N] as contiguous [K, TILE] panels, so that the rows one tile reads
// sit together in cache instead of N apart.
template <typename S>
std::vector<S> panels(const S* wt, int64_t K, int64_t N, int64_t tile) {
    const int64_t tiles = N / tile;
    std::vector<S> out(tiles * K * tile);
    for (int64_t t = 0; t < tiles; ++t)
        for (int64_t k = 0; k < K; ++k) std::memcpy(&out[(t * K + k) * tile], wt + k * N + t * tile, tile * sizeof(S));
    return out;
}

// y[m, :] = bias + sum over the non-zero x[m, k] of x[m, k] * wt[k, :], for rows [m0, m1). wt: the weight
// transposed, [K, N]; panel: its full tiles (see panels()).
template <typename S>
void sparse_linear_rows(const S* x, const S* wt, const S* panel, const S* bias, S* y, int64_t K, int64_t N, int64_t m0,
                        int64_t m1) {
    using V = typename Vec<S>::type;
    constexpr int64_t L = Vec<S>::lanes, TILE = VECS * L;
    Csr<S> a;
    csr_from_values(x, K, m0, m1, a);
    const int64_t n_full = N / TILE * TILE;
    for (int64_t n0 = 0; n0 < n_full; n0 += TILE) {
        const S* tile = panel + n0 * K;  // [K, TILE]
        V b[VECS];
        for (int v = 0; v < VECS; ++v) b[v] = bias ? vload(bias + n0 + v * L) : V{};
        for (int64_t m = m0; m < m1; ++m) {
            V acc[VECS];
            for (int v = 0; v < VECS; ++v) acc[v] = b[v];
            for (int64_t e = a.off[m - m0]; e < a.off[m - m0 + 1]; ++e) {
                const S* w = tile + static_cast<int64_t>(a.idx[e]) * TILE;
                const S s = a.val[e];
                for (int v = 0; v < VECS; ++v) acc[v] += s * vload(w + v * L);
            }
            for (int v = 0; v < VECS; ++v) vstore(y + m * N + n0 + v * L, acc[v]);
        }
    }
    for (int64_t m = m0; m < m1 && n_full < N; ++m) {  // the last columns, fewer than a tile
        for (int64_t j = n_full; j < N; ++j) {
            S acc = bias ? bias[j] : S(0);
            for (int64_t e = a.off[m - m0]; e < a.off[m - m0 + 1]; ++e)
                acc += a.val[e] * wt[static_cast<int64_t>(a.idx[e]) * N + j];
            y[m * N + j] = acc;
        }
    }
}

// gwt[k, n0:n1] = sum over the non-zero x[m, k] of x[m, k] * g[m, n0:n1] (the weight gradient, transposed).
template <typename S>
void sparse_linear_wgrad_cols(const Csr<S>& a, const S* g, S* gwt, int64_t M, int64_t K, int64_t N, int64_t n0,
                              int64_t n1) {
    using V = typename Vec<S>::type;
    constexpr int64_t L = Vec<S>::lanes, TILE = VECS * L;
    for (int64_t k = 0; k < K; ++k) std::memset(gwt + k * N + n0, 0, (n1 - n0) * sizeof(S));
    int64_t c0 = n0;
    for (; c0 + TILE <= n1; c0 += TILE) {
        for (int64_t m = 0; m < M; ++m) {
            V gm[VECS];
            for (int v = 0; v < VECS; ++v) gm[v] = vload(g + m * N + c0 + v * L);
            for (int64_t e = a.off[m]; e < a.off[m + 1]; ++e) {
                S* out = gwt + static_cast<int64_t>(a.idx[e]) * N + c0;
                const S s = a.val[e];
                for (int v = 0; v < VECS; ++v) vstore(out + v * L, vload(out + v * L) + s * gm[v]);
            }
        }
    }
    for (int64_t m = 0; m < M && c0 < n1; ++m) {
        for (int64_t e = a.off[m]; e < a.off[m + 1]; ++e) {
            S* out = gwt + static_cast<int64_t>(a.idx[e]) * N;
            for (int64_t j = c0; j < n1; ++j) out[j] += a.val[e] * g[m * N + j];
        }
    }
}

template <typename S>
void sparse_linear(const S* x, const S* wt, const S* bias, S* y, int64_t M, int64_t K, int64_t N, int nthreads) {
    const std::vector<S> panel = panels(wt, K, N, VECS * Vec<S>::lanes);
    spk::parallel(M, K + N, nthreads, [&](int64_t b, int64_t e) {
        sparse_linear_rows<S>(x, wt, panel.data(), bias, y, K, N, b, e);
    });
}

template <typename S>
void sparse_linear_wgrad(int form, const uint8_t* data, const S* g, S* gwt, int64_t M, int64_t K, int64_t N,
                         int nthreads) {
    Csr<S> a;
    if (form == 0)
        csr_from_bits(data, M, K, a);
    else
        csr_from_u8(data, M, K, a);
    spk::parallel(N, M, nthreads, [&](int64_t b, int64_t e) { sparse_linear_wgrad_cols<S>(a, g, gwt, M, K, N, b, e); });
}

// ---------------------------------------------------------------------------------- max-pool on spikes
// MaxPool(3, stride 2, padding 1) over planes [P, H, W] (pool.h).
template <typename S>
void maxpool_forward_planes(const S* x, S* y, int64_t H, int64_t W, int64_t p0, int64_t p1) {
    const int64_t out = spk::pooled(H) * spk::pooled(W);
    for (int64_t p = p0; p < p1; ++p) spk::maxpool_plane(x + p * H * W, y + p * out, H, W);
}

// Gradient of the pool for a binary input given as bits (spk::maxpool_plane_backward: bit for bit torch's).
template <typename S>
void maxpool_backward_planes(const uint8_t* bits, const S* gy, S* gx, int64_t H, int64_t W, int64_t p0, int64_t p1) {
    const int64_t out = spk::pooled(H) * spk::pooled(W);
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t base = p * H * W;
        auto fired = [&](int64_t e) { return (bits[(base + e) >> 3] >> ((base + e) & 7)) & 1; };
        spk::maxpool_plane_backward(fired, gy + p * out, gx + base, H, W);
    }
}

}  // namespace

extern "C" {

// y [P, (H-1)/2+1, (W-1)/2+1] = MaxPool(3, stride 2, padding 1) of x [P, H, W].
void spk_maxpool3s2(int is_double, const void* x, void* y, int64_t P, int64_t H, int64_t W, int nthreads) {
    spk::parallel(P, H * W, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            maxpool_forward_planes<double>(static_cast<const double*>(x), static_cast<double*>(y), H, W, b, e);
        else
            maxpool_forward_planes<float>(static_cast<const float*>(x), static_cast<float*>(y), H, W, b, e);
    });
}

// gx [P, H, W] = the gradient of spk_maxpool3s2 for a binary x packed as bits, given gy.
void spk_maxpool3s2_backward(int is_double, const uint8_t* bits, const void* gy, void* gx, int64_t P, int64_t H,
                             int64_t W, int nthreads) {
    spk::parallel(P, H * W, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            maxpool_backward_planes<double>(bits, static_cast<const double*>(gy), static_cast<double*>(gx), H, W, b, e);
        else
            maxpool_backward_planes<float>(bits, static_cast<const float*>(gy), static_cast<float*>(gx), H, W, b, e);
    });
}

// x: n contiguous values; bits: (n + 7) / 8 bytes. Returns how many values are 1 when every value is 0 or 1
// (bits then hold them), -1 if not.
int64_t spk_pack_bits(int is_double, const void* x, int64_t n, uint8_t* bits, int nthreads) {
    std::atomic<int> bad{0};
    std::atomic<int64_t> nonzero{0};
    spk::parallel((n + 7) / 8, 8, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            pack_bits_range<double>(static_cast<const double*>(x), n, bits, b, e, bad, nonzero);
        else
            pack_bits_range<float>(static_cast<const float*>(x), n, bits, b, e, bad, nonzero);
    });
    return bad.load() ? -1 : nonzero.load();
}

// x: n contiguous values; out: n bytes. Returns how many values are not zero when every value is an integer in
// [0, 255] (out then holds them), -1 if not.
int64_t spk_pack_u8(int is_double, const void* x, int64_t n, uint8_t* out, int nthreads) {
    std::atomic<int> bad{0};
    std::atomic<int64_t> nonzero{0};
    spk::parallel(n, 1, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            pack_u8_range<double>(static_cast<const double*>(x), out, b, e, bad, nonzero);
        else
            pack_u8_range<float>(static_cast<const float*>(x), out, b, e, bad, nonzero);
    });
    return bad.load() ? -1 : nonzero.load();
}

// Inverse of spk_pack_bits: out gets n values 0 or 1.
void spk_unpack_bits(int is_double, const uint8_t* bits, int64_t n, void* out, int nthreads) {
    spk::parallel((n + 7) / 8, 8, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            unpack_bits_range<double>(bits, n, static_cast<double*>(out), b, e);
        else
            unpack_bits_range<float>(bits, n, static_cast<float*>(out), b, e);
    });
}

// y [M, N] = x [M, K] @ wt [K, N] + bias [N] (bias may be null), skipping the zeros of x.
void spk_sparse_linear(int is_double, const void* x, const void* wt, const void* bias, void* y, int64_t M, int64_t K,
                       int64_t N, int nthreads) {
    if (is_double)
        sparse_linear<double>(static_cast<const double*>(x), static_cast<const double*>(wt),
                              static_cast<const double*>(bias), static_cast<double*>(y), M, K, N, nthreads);
    else
        sparse_linear<float>(static_cast<const float*>(x), static_cast<const float*>(wt),
                             static_cast<const float*>(bias), static_cast<float*>(y), M, K, N, nthreads);
}

// gwt [K, N] = x^T [K, M] @ g [M, N] for x [M, K] packed as bits (form 0; K a multiple of 8) or bytes (form 1).
void spk_sparse_linear_wgrad(int is_double, int form, const uint8_t* data, const void* g, void* gwt, int64_t M,
                             int64_t K, int64_t N, int nthreads) {
    if (is_double)
        sparse_linear_wgrad<double>(form, data, static_cast<const double*>(g), static_cast<double*>(gwt), M, K, N,
                                    nthreads);
    else
        sparse_linear_wgrad<float>(form, data, static_cast<const float*>(g), static_cast<float*>(gwt), M, K, N,
                                   nthreads);
}

}  // extern "C"
