// Spike tensors on the CPU: bit packing for the layers' compact saved inputs, and linear layers whose input is
// binary (spikes), computed by adding the weight rows of the inputs that fired instead of a dense product.
//
// Built together with neurons.cpp by spikformers/neurons/kernels/cpu.py. All arrays are contiguous row-major.
// Packed bits: byte b holds elements 8b..8b+7, element 8b+j in bit j (the layout torch code in layers.py uses).

#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"

namespace {

// Packing checks in the same pass that every value is 0
// or 1 and gives up (returns 1) at the first chunk that is not, so a non-spike tensor costs little.
constexpr int64_t PACK_CHUNK = 64;  // bytes per chunk: 512 elements

template <typename S>
void pack_range(const S* __restrict x, int64_t n, uint8_t* __restrict bits, int64_t begin, int64_t end,
                std::atomic<int>& bad, std::atomic<int64_t>& ones) {
    int64_t count = 0;
    for (int64_t c0 = begin; c0 < end; c0 += PACK_CHUNK) {
        if (bad.load(std::memory_order_relaxed)) break;
        const int64_t c1 = c0 + PACK_CHUNK < end ? c0 + PACK_CHUNK : end;
        int32_t ok = 1;
        if (c1 * 8 <= n) {
            for (int64_t b = c0; b < c1; ++b) {
                const S* __restrict xb = x + 8 * b;
                uint32_t byte = 0;
                for (int j = 0; j < 8; ++j) {
                    S v = xb[j];
                    ok &= (v == S(0)) | (v == S(1));
                    byte |= static_cast<uint32_t>(v == S(1)) << j;
                }
                bits[b] = static_cast<uint8_t>(byte);
            }
        } else {  // the last, partial byte
            for (int64_t b = c0; b < c1; ++b) {
                uint32_t byte = 0;
                for (int64_t j = 0; j < 8 && 8 * b + j < n; ++j) {
                    S v = x[8 * b + j];
                    ok &= (v == S(0)) | (v == S(1));
                    byte |= static_cast<uint32_t>(v == S(1)) << j;
                }
                bits[b] = static_cast<uint8_t>(byte);
            }
        }
        if (!ok) bad.store(1, std::memory_order_relaxed);
        for (int64_t b = c0; b < c1; ++b) count += __builtin_popcount(bits[b]);
    }
    ones.fetch_add(count, std::memory_order_relaxed);
}

template <typename S>
void unpack_range(const uint8_t* __restrict bits, int64_t n, S* __restrict out, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
        const uint32_t byte = bits[b];
        if (8 * b + 8 <= n) {
            for (int j = 0; j < 8; ++j) out[8 * b + j] = static_cast<S>((byte >> j) & 1u);
        } else {
            for (int64_t j = 0; 8 * b + j < n; ++j) out[8 * b + j] = static_cast<S>((byte >> j) & 1u);
        }
    }
}

template <typename F>
void parallel_bytes(int64_t nbytes, int nthreads, F fn) {
    // same splitting rule as the neuron kernels, on bytes of packed output (8 elements each)
    spk::parallel(nbytes, 8, nthreads, fn);
}


// Each output row block of TILE columns is accumulated in registers (GCC/Clang vector extensions: 64-byte
// vectors, split by the compiler where the CPU has narrower ones) while the weight columns it reads stay in L2.
template <typename S>
struct Vec {
    typedef S type __attribute__((vector_size(64)));
    static constexpr int lanes = 64 / sizeof(S);
};
constexpr int VECS = 4;  // vectors per tile: 64 float or 32 double columns

// The k where row m of a binary [M, K] matrix is 1, for rows [m0, m1), as CSR: offsets (m1 - m0 + 1) and indices.
template <typename S>
void active_from_values(const S* x, int64_t K, int64_t m0, int64_t m1, std::vector<int64_t>& off,
                        std::vector<int32_t>& idx) {
    off.assign(1, 0);
    idx.clear();
    for (int64_t m = m0; m < m1; ++m) {
        const S* __restrict row = x + m * K;
        for (int64_t k = 0; k < K; ++k)
            if (row[k] != S(0)) idx.push_back(static_cast<int32_t>(k));
        off.push_back(static_cast<int64_t>(idx.size()));
    }
}

// The same from packed bits (K a multiple of 8, so every row starts on a byte).
void active_from_bits(const uint8_t* bits, int64_t M, int64_t K, std::vector<int64_t>& off, std::vector<int32_t>& idx) {
    off.assign(1, 0);
    idx.clear();
    for (int64_t m = 0; m < M; ++m) {
        const uint8_t* row = bits + m * (K / 8);
        for (int64_t b = 0; b < K / 8; ++b) {
            for (uint32_t byte = row[b]; byte; byte &= byte - 1)
                idx.push_back(static_cast<int32_t>(8 * b + __builtin_ctz(byte)));
        }
        off.push_back(static_cast<int64_t>(idx.size()));
    }
}

template <typename S>
inline typename Vec<S>::type load(const S* p) {
    typename Vec<S>::type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <typename S>
inline void store(S* p, typename Vec<S>::type v) {
    std::memcpy(p, &v, sizeof(v));
}

// Columns [n0, n0 + TILE) of wt [K, N] copied into one contiguous [K, TILE] panel, so that the rows a tile
// reads are packed together in cache instead of N apart.
template <typename S>
std::vector<S> panels(const S* wt, int64_t K, int64_t N, int64_t tile) {
    const int64_t tiles = N / tile;
    std::vector<S> out(tiles * K * tile);
    for (int64_t t = 0; t < tiles; ++t)
        for (int64_t k = 0; k < K; ++k) std::memcpy(&out[(t * K + k) * tile], wt + k * N + t * tile, tile * sizeof(S));
    return out;
}

// y[m, :] = bias + sum over the k where x[m, k] = 1 of wt[k, :], for rows [m0, m1). wt is the weight transposed,
// [K, N]; panel holds its full tiles (see panels()).
template <typename S>
void binary_linear_rows(const S* x, const S* wt, const S* panel, const S* bias, S* y, int64_t K, int64_t N, int64_t m0,
                        int64_t m1) {
    using V = typename Vec<S>::type;
    constexpr int64_t L = Vec<S>::lanes, TILE = VECS * L;
    std::vector<int64_t> off;
    std::vector<int32_t> idx;
    active_from_values(x, K, m0, m1, off, idx);
    const int64_t n_full = N / TILE * TILE;
    for (int64_t n0 = 0; n0 < n_full; n0 += TILE) {
        const S* tile = panel + n0 * K;  // [K, TILE]
        V b[VECS];
        for (int v = 0; v < VECS; ++v) b[v] = bias ? load(bias + n0 + v * L) : V{};
        for (int64_t m = m0; m < m1; ++m) {
            V acc[VECS];
            for (int v = 0; v < VECS; ++v) acc[v] = b[v];
            for (int64_t a = off[m - m0]; a < off[m - m0 + 1]; ++a) {
                const S* w = tile + static_cast<int64_t>(idx[a]) * TILE;
                for (int v = 0; v < VECS; ++v) acc[v] += load(w + v * L);
            }
            for (int v = 0; v < VECS; ++v) store(y + m * N + n0 + v * L, acc[v]);
        }
    }
    for (int64_t m = m0; m < m1 && n_full < N; ++m) {  // the last columns, fewer than a tile
        for (int64_t j = n_full; j < N; ++j) {
            S acc = bias ? bias[j] : S(0);
            for (int64_t a = off[m - m0]; a < off[m - m0 + 1]; ++a) acc += wt[static_cast<int64_t>(idx[a]) * N + j];
            y[m * N + j] = acc;
        }
    }
}

// gwt[k, n0:n1] = sum over the rows m with x[m, k] = 1 of g[m, n0:n1] (the weight gradient, transposed).
template <typename S>
void binary_linear_wgrad_cols(const std::vector<int64_t>& off, const std::vector<int32_t>& idx, const S* g, S* gwt,
                              int64_t M, int64_t K, int64_t N, int64_t n0, int64_t n1) {
    using V = typename Vec<S>::type;
    constexpr int64_t L = Vec<S>::lanes, TILE = VECS * L;
    for (int64_t k = 0; k < K; ++k) std::memset(gwt + k * N + n0, 0, (n1 - n0) * sizeof(S));
    int64_t c0 = n0;
    for (; c0 + TILE <= n1; c0 += TILE) {
        for (int64_t m = 0; m < M; ++m) {
            V gm[VECS];
            for (int v = 0; v < VECS; ++v) gm[v] = load(g + m * N + c0 + v * L);
            for (int64_t a = off[m]; a < off[m + 1]; ++a) {
                S* out = gwt + static_cast<int64_t>(idx[a]) * N + c0;
                for (int v = 0; v < VECS; ++v) store(out + v * L, load(out + v * L) + gm[v]);
            }
        }
    }
    for (int64_t m = 0; m < M && c0 < n1; ++m) {
        for (int64_t a = off[m]; a < off[m + 1]; ++a) {
            S* out = gwt + static_cast<int64_t>(idx[a]) * N;
            for (int64_t j = c0; j < n1; ++j) out[j] += g[m * N + j];
        }
    }
}

}  // namespace

extern "C" {

// x: n contiguous values; bits: (n + 7) / 8 bytes. Returns how many values are 1 when every value is 0 or 1
// (bits then hold them), -1 if not.
int64_t spk_pack_bits(int is_double, const void* x, int64_t n, uint8_t* bits, int nthreads) {
    std::atomic<int> bad{0};
    std::atomic<int64_t> ones{0};
    const int64_t nbytes = (n + 7) / 8;
    parallel_bytes(nbytes, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            pack_range<double>(static_cast<const double*>(x), n, bits, b, e, bad, ones);
        else
            pack_range<float>(static_cast<const float*>(x), n, bits, b, e, bad, ones);
    });
    return bad.load() ? -1 : ones.load();
}

// Inverse of spk_pack_bits: out gets n values 0 or 1.
void spk_unpack_bits(int is_double, const uint8_t* bits, int64_t n, void* out, int nthreads) {
    const int64_t nbytes = (n + 7) / 8;
    parallel_bytes(nbytes, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            unpack_range<double>(bits, n, static_cast<double*>(out), b, e);
        else
            unpack_range<float>(bits, n, static_cast<float*>(out), b, e);
    });
}

// y [M, N] = x [M, K] (values 0/1) @ wt [K, N] + bias [N] (bias may be null).
void spk_binary_linear(int is_double, const void* x, const void* wt, const void* bias, void* y, int64_t M, int64_t K,
                       int64_t N, int nthreads) {
    if (is_double) {
        const auto* w = static_cast<const double*>(wt);
        const std::vector<double> panel = panels(w, K, N, VECS * Vec<double>::lanes);
        spk::parallel(M, K + N, nthreads, [&](int64_t b, int64_t e) {
            binary_linear_rows<double>(static_cast<const double*>(x), w, panel.data(), static_cast<const double*>(bias),
                                       static_cast<double*>(y), K, N, b, e);
        });
    } else {
        const auto* w = static_cast<const float*>(wt);
        const std::vector<float> panel = panels(w, K, N, VECS * Vec<float>::lanes);
        spk::parallel(M, K + N, nthreads, [&](int64_t b, int64_t e) {
            binary_linear_rows<float>(static_cast<const float*>(x), w, panel.data(), static_cast<const float*>(bias),
                                      static_cast<float*>(y), K, N, b, e);
        });
    }
}

// gwt [K, N] = bits(x)^T [K, M] @ g [M, N], with x [M, K] packed by spk_pack_bits and K a multiple of 8.
void spk_binary_linear_wgrad(int is_double, const uint8_t* bits, const void* g, void* gwt, int64_t M, int64_t K,
                             int64_t N, int nthreads) {
    std::vector<int64_t> off;
    std::vector<int32_t> idx;
    active_from_bits(bits, M, K, off, idx);
    spk::parallel(N, M, nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            binary_linear_wgrad_cols<double>(off, idx, static_cast<const double*>(g), static_cast<double*>(gwt), M,
                                             K, N, b, e);
        else
            binary_linear_wgrad_cols<float>(off, idx, static_cast<const float*>(g), static_cast<float*>(gwt), M, K,
                                            N, b, e);
    });
}

}  // extern "C"
