// Spike tensors on the CPU: compact packing for the layers' saved inputs, and event-driven linear layers whose
// input is mostly zeros (spikes, or the small integer spike counts of a residual stream): each output row adds
// the weight columns of the inputs that are not zero, instead of a dense product.
//
// Built together with neurons.cpp by spikformers/kernels/cpp.py. All arrays are contiguous row-major.
// Packed bits: byte b holds elements 8b..8b+7, element 8b+j in bit j (the layout torch code in spike_ops.py uses).
// Packed bytes ("u8"): one byte per element, for inputs that are integers in [0, 255].

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "bits.h"
#include "parallel.h"
#include "pool.h"
#include "vec.h"

namespace {

// ---------------------------------------------------------------------------------------------- packing
// Packing checks in the same pass that every value fits the format and gives up at the first chunk that does not,
// so a tensor of another kind costs little. It also counts the non-zero values (the firing rate).
constexpr int64_t PACK_CHUNK = 64;  // bytes of bits per chunk: 512 elements

// Eight float32 values at a time where the CPU has AVX (one compare and movemask per byte of bits; 32 values to 32
// bytes for u8), the plain loop otherwise and for float64.
#if defined(__AVX__)
// Bits of the values equal to 1 among 8 floats, and whether all 8 are 0 or 1.
inline uint32_t pack_byte8(const float* x, int32_t& ok) {
    const __m256 v = _mm256_loadu_ps(x);
    const __m256 one = _mm256_cmp_ps(v, _mm256_set1_ps(1.f), _CMP_EQ_OQ);
    const __m256 zero = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ);
    ok &= _mm256_movemask_ps(_mm256_or_ps(one, zero)) == 0xFF;
    return static_cast<uint32_t>(_mm256_movemask_ps(one));
}

// 8 floats to ints, with whether each is an integer in [0, 255] (NaN is not) and whether each is not zero, as masks.
inline __m256i to_int8x(const float* x, uint32_t& fits, uint32_t& nonzero) {
    const __m256 v = _mm256_loadu_ps(x);
    const __m256i i = _mm256_cvttps_epi32(v);
    const __m256 exact = _mm256_cmp_ps(_mm256_cvtepi32_ps(i), v, _CMP_EQ_OQ);
    const __m256 range = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ),
                                       _mm256_cmp_ps(v, _mm256_set1_ps(255.f), _CMP_LE_OQ));
    fits = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_and_ps(exact, range)));
    nonzero = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
    return i;
}

// 32 floats to 32 bytes; returns whether all fit, adds how many are not zero to `nonzero`.
inline bool pack_u8_32(const float* x, uint8_t* out, int64_t& nonzero) {
    uint32_t fits = 0xFF, f, z;
    int64_t nz = 0;
    __m256i i[4];
    for (int k = 0; k < 4; ++k) {
        i[k] = to_int8x(x + 8 * k, f, z);
        fits &= f;
        nz += __builtin_popcount(z);
    }
    // packs interleave the two 128-bit lanes: put the 4-byte groups back in order
    const __m256i b = _mm256_permutevar8x32_epi32(
        _mm256_packus_epi16(_mm256_packus_epi32(i[0], i[1]), _mm256_packus_epi32(i[2], i[3])),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), b);
    nonzero += nz;
    return fits == 0xFF;
}
#endif

template <typename S>
void pack_bits_range(const S* __restrict x, int64_t n, uint8_t* __restrict bits, int64_t begin, int64_t end,
                     std::atomic<int>& bad, std::atomic<int64_t>& nonzero) {
    int64_t count = 0;
    for (int64_t c0 = begin; c0 < end; c0 += PACK_CHUNK) {
        if (bad.load(std::memory_order_relaxed)) break;
        const int64_t c1 = c0 + PACK_CHUNK < end ? c0 + PACK_CHUNK : end;
        int32_t ok = 1;
        int64_t b = c0;
#if defined(__AVX__)
        if constexpr (std::is_same_v<S, float>) {
            for (; b < c1 && 8 * b + 8 <= n; ++b) {
                const uint32_t byte = pack_byte8(x + 8 * b, ok);
                bits[b] = static_cast<uint8_t>(byte);
                count += __builtin_popcount(byte);
            }
        }
#endif
        for (; b < c1; ++b) {
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
        int64_t i = c0;
#if defined(__AVX__)
        if constexpr (std::is_same_v<S, float>)
            for (; i + 32 <= c1; i += 32) ok &= pack_u8_32(x + i, out + i, count);
#endif
        for (; i < c1; ++i) {
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
// Each output row block of TILE columns is accumulated in registers (spk::Vec, register-wide vectors) while the weight
// panel it reads stays in L2.
using spk::Vec;
using spk::vload;
using spk::vstore;
constexpr int VECS = spk::kTileVecs;  // vectors per tile: 64 float or 32 double columns (32 / 16 on SSE)

// The non-zero entries of rows [row0, row1) of a [M, K] matrix packed as bits (BITS, K a multiple of 8) or bytes,
// as CSR: offsets (one per row, plus the end), column indices and, for bytes, values (bits are all 1). Rows are
// counted first, so the entries are written in place without a branch per entry: bits through spk::kBits (the
// list carries 8 spare entries for the writes past the end), bytes by their non-zero entries
// (spk::for_nonzero_bytes, 16 bytes tested at a time).
template <typename S, bool BITS>
struct Csr {
    std::vector<int64_t> off;
    std::vector<int32_t> idx;
    std::vector<S> val;

    void build(const uint8_t* data, int64_t row0, int64_t row1, int64_t K) {
        const int64_t rows = row1 - row0, bytes = BITS ? K / 8 : K;
        off.assign(rows + 1, 0);
        for (int64_t m = 0; m < rows; ++m) {
            const uint8_t* row = data + (row0 + m) * bytes;
            int64_t n = 0;
            if (BITS)
                for (int64_t b = 0; b < bytes; ++b) n += __builtin_popcount(row[b]);
            else
                for (int64_t k = 0; k < bytes; ++k) n += row[k] != 0;
            off[m + 1] = off[m] + n;
        }
        idx.resize(off[rows] + 8);
        if (!BITS) val.resize(off[rows]);
        for (int64_t m = 0; m < rows; ++m) {
            const uint8_t* row = data + (row0 + m) * bytes;
            int64_t at = off[m];
            if (BITS) {
                for (int64_t b = 0; b < bytes; ++b) {
                    const uint8_t* pos = spk::kBits.at[row[b]];
                    for (int j = 0; j < 8; ++j) idx[at + j] = static_cast<int32_t>(8 * b + pos[j]);
                    at += __builtin_popcount(row[b]);
                }
            } else {
                spk::for_nonzero_bytes(row, 0, bytes, [&](int64_t k, uint32_t c) {
                    idx[at] = static_cast<int32_t>(k);
                    val[at++] = static_cast<S>(c);
                });
            }
        }
    }
};

// Calls fn(std::true_type) for bits (form 0) or fn(std::false_type) for bytes: the kernels are built for each.
template <typename F>
inline void with_form(int form, F fn) {
    if (form == 0)
        fn(std::true_type{});
    else
        fn(std::false_type{});
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

// acc[v] += (value of entry e) * row[v * L ...] over VECS vectors: a plain add for bits. (The kernels wait on the
// loads of the rows, not on the arithmetic: a count costs about what a spike does.)
template <typename S, bool BITS, typename V>
inline void add_row(V* acc, const S* row, const S* val, int64_t e) {
    constexpr int64_t L = Vec<S>::lanes;
    if (BITS) {
        for (int v = 0; v < VECS; ++v) acc[v] += vload(row + v * L);
    } else {
        const S s = val[e];
        for (int v = 0; v < VECS; ++v) acc[v] += s * vload(row + v * L);
    }
}

// y[m, :] = bias + sum over the non-zero x[m, k] of x[m, k] * wt[k, :], for rows [m0, m1) of x packed (see Csr).
// wt: the weight transposed, [K, N]; panel: its full tiles (see panels()).
template <typename S, bool BITS>
void sparse_linear_rows(const uint8_t* data, const S* wt, const S* panel, const S* bias, S* y, int64_t K, int64_t N,
                        int64_t m0, int64_t m1, Csr<S, BITS>& a) {
    using V = typename Vec<S>::type;
    constexpr int64_t L = Vec<S>::lanes, TILE = VECS * L;
    a.build(data, m0, m1, K);
    const int64_t n_full = N / TILE * TILE;
    const S* val = a.val.data();  // empty for bits
    for (int64_t n0 = 0; n0 < n_full; n0 += TILE) {
        const S* tile = panel + n0 * K;  // [K, TILE]
        V b[VECS];
        for (int v = 0; v < VECS; ++v) b[v] = bias ? vload(bias + n0 + v * L) : V{};
        for (int64_t m = m0; m < m1; ++m) {
            V acc[VECS];
            for (int v = 0; v < VECS; ++v) acc[v] = b[v];
            for (int64_t e = a.off[m - m0]; e < a.off[m - m0 + 1]; ++e)
                add_row<S, BITS>(acc, tile + static_cast<int64_t>(a.idx[e]) * TILE, val, e);
            for (int v = 0; v < VECS; ++v) vstore(y + m * N + n0 + v * L, acc[v]);
        }
    }
    for (int64_t m = m0; m < m1 && n_full < N; ++m) {  // the last columns, fewer than a tile
        for (int64_t j = n_full; j < N; ++j) {
            S acc = bias ? bias[j] : S(0);
            for (int64_t e = a.off[m - m0]; e < a.off[m - m0 + 1]; ++e)
                acc += (BITS ? S(1) : val[e]) * wt[static_cast<int64_t>(a.idx[e]) * N + j];
            y[m * N + j] = acc;
        }
    }
}

template <typename S>
void sparse_linear(int form, const uint8_t* data, const S* wt, const S* bias, S* y, int64_t M, int64_t K, int64_t N,
                   int nthreads) {
    const std::vector<S> panel = panels(wt, K, N, VECS * Vec<S>::lanes);
    // Blocks of 64 rows dealt out in turn: rows come step by step (t-major), and later steps fire more, so halves
    // of the rows would give one thread more work than the other.
    constexpr int64_t ROWS = 64;
    with_form(form, [&](auto bits) {
        // one per thread, reused across blocks
        std::vector<Csr<S, decltype(bits)::value>> scratch(nthreads > 1 ? nthreads : 1);
        spk::deal_blocks(M, ROWS, ROWS * (K / 8 + N), nthreads, [&](int64_t m0, int64_t m1, int64_t k) {
            sparse_linear_rows(data, wt, panel.data(), bias, y, K, N, m0, m1, scratch[k]);
        });
    });
}

// The weight gradient, transposed: gwt[k, :] = sum over the non-zero x[m, k] of x[m, k] * g[m, :]. Each thread
// owns rows [k0, k1) of gwt. Rows of x come in blocks of GRAD_ROWS, whose gradient rows (one tile of columns at a
// time) stay in L2; per block, a column list per k (which rows m fired, CSC, with the values for bytes) is built,
// and each gwt row tile adds the gradient rows of its list in registers.
constexpr int64_t GRAD_ROWS = 1024;

template <typename S, bool BITS>
void sparse_linear_wgrad_range(const uint8_t* data, const S* g, S* gwt, int64_t M, int64_t K, int64_t N, int64_t k0,
                               int64_t k1) {
    using V = typename Vec<S>::type;
    constexpr int64_t L = Vec<S>::lanes, TILE = VECS * L;
    const int64_t nk = k1 - k0, bytes = BITS ? K / 8 : K, n_full = N / TILE * TILE;
    std::vector<int64_t> start(nk + 1), cursor(nk);
    std::vector<int32_t> rows;  // per k: the rows of the block where x[m, k] is not zero (offsets in the block)
    std::vector<S> vals;
    for (int64_t k = k0; k < k1; ++k) std::memset(gwt + k * N, 0, N * sizeof(S));
    for (int64_t mb = 0; mb < M; mb += GRAD_ROWS) {
        const int64_t me = mb + GRAD_ROWS < M ? mb + GRAD_ROWS : M;
        // count per k, then fill, by the events only (spk::for_set_bits, spk::for_nonzero_bytes): the cost follows
        // the spikes, not M * K
        std::fill(start.begin(), start.end(), 0);
        for (int64_t m = mb; m < me; ++m) {
            const uint8_t* row = data + m * bytes;
            if (BITS)
                spk::for_set_bits(row, k0, k1, [&](int64_t k) { ++start[k - k0 + 1]; });
            else
                for (int64_t k = k0; k < k1; ++k) start[k - k0 + 1] += row[k] != 0;
        }
        for (int64_t j = 0; j < nk; ++j) start[j + 1] += start[j];
        rows.resize(start[nk]);
        if (!BITS) vals.resize(start[nk]);
        for (int64_t j = 0; j < nk; ++j) cursor[j] = start[j];
        for (int64_t m = mb; m < me; ++m) {
            const uint8_t* row = data + m * bytes;
            const int32_t r = static_cast<int32_t>(m - mb);
            if (BITS) {
                spk::for_set_bits(row, k0, k1, [&](int64_t k) { rows[cursor[k - k0]++] = r; });
            } else {
                spk::for_nonzero_bytes(row, k0, k1, [&](int64_t k, uint32_t c) {
                    int64_t& at = cursor[k - k0];
                    rows[at] = r;
                    vals[at++] = static_cast<S>(c);
                });
            }
        }
        const S* gb = g + mb * N;
        const S* val = vals.data();  // empty for bits
        for (int64_t c0 = 0; c0 < n_full; c0 += TILE)
            for (int64_t j = 0; j < nk; ++j) {
                S* out = gwt + (k0 + j) * N + c0;
                V acc[VECS];
                for (int v = 0; v < VECS; ++v) acc[v] = vload(out + v * L);
                for (int64_t e = start[j]; e < cursor[j]; ++e)
                    add_row<S, BITS>(acc, gb + static_cast<int64_t>(rows[e]) * N + c0, val, e);
                for (int v = 0; v < VECS; ++v) vstore(out + v * L, acc[v]);
            }
        for (int64_t j = 0; j < nk && n_full < N; ++j)  // the last columns, fewer than a tile
            for (int64_t e = start[j]; e < cursor[j]; ++e) {
                const S s = BITS ? S(1) : val[e];
                const S* gr = gb + static_cast<int64_t>(rows[e]) * N;
                S* out = gwt + (k0 + j) * N;
                for (int64_t c = n_full; c < N; ++c) out[c] += s * gr[c];
            }
    }
}

template <typename S>
void sparse_linear_wgrad(int form, const uint8_t* data, const S* g, S* gwt, int64_t M, int64_t K, int64_t N,
                         int nthreads) {
    // Each thread a contiguous range of input features, so that a gradient tile in L2 serves as many rows as it can.
    with_form(form, [&](auto bits) {
        spk::split_even(K, M + M * N / 16, nthreads, [&](int64_t k0, int64_t k1) {
            sparse_linear_wgrad_range<S, decltype(bits)::value>(data, g, gwt, M, K, N, k0, k1);
        });
    });
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

// y [M, N] = x [M, K] @ wt [K, N] + bias [N] (bias may be null) for x packed as bits (form 0; K a multiple of 8) or
// bytes (form 1), adding only the rows of wt where x is not zero.
void spk_sparse_linear(int is_double, int form, const uint8_t* data, const void* wt, const void* bias, void* y,
                       int64_t M, int64_t K, int64_t N, int nthreads) {
    if (is_double)
        sparse_linear<double>(form, data, static_cast<const double*>(wt), static_cast<const double*>(bias),
                              static_cast<double*>(y), M, K, N, nthreads);
    else
        sparse_linear<float>(form, data, static_cast<const float*>(wt), static_cast<const float*>(bias),
                             static_cast<float*>(y), M, K, N, nthreads);
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
