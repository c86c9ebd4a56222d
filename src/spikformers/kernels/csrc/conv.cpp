// Event-driven 3x3 convolutions (stride 1, padding 1, one group) for inputs that are mostly zeros: spikes packed
// as bits, or small spike counts packed as bytes (the formats of spikes.cpp). Only the non-zero inputs cost work.
//
// Built together with neurons.cpp and spikes.cpp by spikformers/kernels/cpp.py. x is [B, Cin, H, W]
// (NCHW, flattened in that order before packing), the weight [Cout, Cin, 3, 3], the output [B, Cout, H, W].
//
// Forward (output-stationary): a per-pixel list of the channels that fired (CSR); for each output pixel and tile
// of output channels, the 9 taps x active channels add weight rows into registers, read from a weight panel
// [Cin][9][tile] that stays in L2 while the thread walks its output rows.
// Weight gradient: per (image, input channel) the list of pixels that fired; for each tap the gradient rows at the
// shifted pixels add into registers, then into the gradient. Threads split the output channels and each transposes
// its channels of g to pixel-major a few images at a time, in cache, instead of a full NHWC copy in memory.

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bits.h"
#include "parallel.h"
#include "vec.h"

namespace {

template <typename S>
using Lanes = spk::Vec<S>;
using spk::vload;
using spk::vstore;
constexpr int MAX_VECS = spk::kTileVecs;  // vectors per output tile: 64 float or 32 double channels (half on SSE)
constexpr int64_t GRAD_BLOCK_BYTES = 32 << 10;  // weight gradient: transposed output gradient read per block

// Square transpose of n vectors of n lanes (n = 16 float or 8 double) in place: log2(n) rounds of interleaving
// row i with row i + n/2 (lanes 0 .. n/2 into the even row, n/2 .. n into the odd one) transpose the matrix.
template <typename S>
inline void transpose(typename Lanes<S>::type* r) {
    using V = typename Lanes<S>::type;
    constexpr int n = static_cast<int>(Lanes<S>::lanes);
#if defined(__GNUC__) && !defined(__clang__)
    typedef std::conditional_t<sizeof(S) == 4, int32_t, int64_t> I;
    typedef I M __attribute__((vector_size(sizeof(V))));
    M lo, hi;
    for (int k = 0; k < n; ++k) {
        lo[k] = k / 2 + (k % 2) * n;
        hi[k] = lo[k] + n / 2;
    }
#endif
    V t[n];
    for (int round = 1; round < n; round *= 2) {
        for (int i = 0; i < n / 2; ++i) {
#if defined(__GNUC__) && !defined(__clang__)
            t[2 * i] = __builtin_shuffle(r[i], r[i + n / 2], lo);
            t[2 * i + 1] = __builtin_shuffle(r[i], r[i + n / 2], hi);
#else
            for (int k = 0; k < n; ++k) {
                const int from = k / 2;
                t[2 * i][k] = k % 2 ? r[i + n / 2][from] : r[i][from];
                t[2 * i + 1][k] = k % 2 ? r[i + n / 2][from + n / 2] : r[i][from + n / 2];
            }
#endif
        }
        for (int i = 0; i < n; ++i) r[i] = t[i];
    }
}

// Calls fn(pix, value) for the non-zero elements [start, start + n) of a packed tensor, pix counted from start.
template <typename F>
inline void for_events(int form, const uint8_t* data, int64_t start, int64_t n, F fn) {
    const int64_t end = start + n;
    if (form == 0) {
        spk::for_set_bits(data, start, end, [&](int64_t e) { fn(e - start, uint32_t{1}); });
    } else {  // bytes, eight at a time past the zeros
        int64_t k = start;
        for (; k + 8 <= end; k += 8) {
            uint64_t word;
            std::memcpy(&word, data + k, 8);
            if (!word) continue;
            for (int j = 0; j < 8; ++j)
                if (data[k + j]) fn(k + j - start, uint32_t{data[k + j]});
        }
        for (; k < end; ++k)
            if (data[k]) fn(k - start, uint32_t{data[k]});
    }
}

struct Shape {
    int64_t B, Cin, Cout, H, W, Cpad;  // Cpad: Cout rounded up to whole vectors
};

// Lists of input events grouped by a key: entries off[k] .. off[k + 1] of idx (what fired) and val (its value,
// for bytes only) belong to key k.
template <typename I, typename S>
struct EventLists {
    std::vector<int64_t> off;
    std::vector<I> idx;
    std::vector<S> val;

    // off[k + 1] holds key k's count: turn the counts into offsets and size the entries.
    void counts_to_offsets(int form) {
        const int64_t keys = static_cast<int64_t>(off.size()) - 1;
        for (int64_t k = 0; k < keys; ++k) off[k + 1] += off[k];
        idx.resize(off[keys]);
        if (form != 0) val.resize(off[keys]);
    }
};

// --------------------------------------------------------------------------------------------------- forward
// Non-zero inputs per pixel (b, p, q): key b*H*W + p*W + q, idx the input channel.
template <typename S>
using PixelLists = EventLists<int32_t, S>;

template <typename S>
void pixel_lists(int form, const uint8_t* data, const Shape& s, int nthreads, PixelLists<S>& a) {
    const int64_t HW = s.H * s.W, P = s.B * HW;
    a.off.assign(P + 1, 0);
    int64_t* cnt = a.off.data() + 1;
    spk::split_even(s.B, s.Cin * HW / 8, nthreads, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
            for (int64_t c = 0; c < s.Cin; ++c)
                for_events(form, data, (b * s.Cin + c) * HW, HW, [&](int64_t pix, uint32_t) { ++cnt[b * HW + pix]; });
    });
    a.counts_to_offsets(form);
    std::vector<int64_t> cursor(a.off.begin(), a.off.end() - 1);
    spk::split_even(s.B, s.Cin * HW / 8, nthreads, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
            for (int64_t c = 0; c < s.Cin; ++c)
                for_events(form, data, (b * s.Cin + c) * HW, HW, [&](int64_t pix, uint32_t v) {
                    const int64_t at = cursor[b * HW + pix]++;
                    a.idx[at] = static_cast<int32_t>(c);
                    if (form != 0) a.val[at] = static_cast<S>(v);
                });
    });
}

// The weight [Cout, Cin, 3, 3] as panels, one per tile of output channels: tile t (channels co0 .. co0 + tw, tw a
// whole number of vectors) at co0 * Cin * 9, laid out [Cin][9][tw]; channels past Cout are zero.
template <typename S>
std::vector<S> conv_panels(const S* w, const Shape& s) {
    constexpr int64_t TILE = MAX_VECS * Lanes<S>::lanes;
    std::vector<S> out(s.Cpad * s.Cin * 9, S(0));
    for (int64_t co0 = 0; co0 < s.Cpad; co0 += TILE) {
        const int64_t tw = s.Cpad - co0 < TILE ? s.Cpad - co0 : TILE;
        S* panel = out.data() + co0 * s.Cin * 9;
        for (int64_t c = 0; c < tw && co0 + c < s.Cout; ++c)
            for (int64_t k = 0; k < s.Cin * 9; ++k) panel[k * tw + c] = w[(co0 + c) * s.Cin * 9 + k];
    }
    return out;
}

// acc += x * the NV vectors at p (x == 1 for bits: a plain add).
template <typename S, int NV, bool ONES>
inline void add_row(typename Lanes<S>::type* acc, const S* p, S x) {
    constexpr int64_t L = Lanes<S>::lanes;
    if (ONES) {
        for (int v = 0; v < NV; ++v) acc[v] += vload(p + v * L);
    } else {
        for (int v = 0; v < NV; ++v) acc[v] += x * vload(p + v * L);
    }
}

// acc += the taps of one kernel row for output column j: input pixels line + j - 1 .. line + j + 1 (those inside
// the image), each adding the panel rows (tap dj, its channels) of the channels that fired there.
template <typename S, int NV, bool ONES>
inline void kernel_row(const int64_t* off, const int32_t* chan, const S* val, const S* panel, int64_t line, int64_t j,
                       int64_t W, typename Lanes<S>::type* acc) {
    constexpr int64_t L = Lanes<S>::lanes, TW = NV * L;
    for (int64_t dj = j > 0 ? 0 : 1; dj < 3 && j + dj - 1 < W; ++dj) {
        const int64_t pix = line + j + dj - 1;
        const S* tap = panel + dj * TW;
        for (int64_t e = off[pix]; e < off[pix + 1]; ++e) {
            add_row<S, NV, ONES>(acc, tap + static_cast<int64_t>(chan[e]) * 9 * TW, ONES ? S(1) : val[e]);
        }
    }
}

// Output rows [r0, r1) (row r = image r / H, line r % H) for the output channels co0 .. co0 + NV vectors. Each
// output pixel sums the three input lines in separate registers (independent add chains); a line of pixels goes to
// `row` ([Wpad][NV * L]) and from there, transposed a square block at a time, into the NCHW output.
template <typename S, int NV, bool ONES>
void forward_tile(const PixelLists<S>& a, const S* panel, const S* bias, S* y, const Shape& s, int64_t co0,
                  int64_t r0, int64_t r1, S* row) {
    using V = typename Lanes<S>::type;
    constexpr int64_t L = Lanes<S>::lanes, TW = NV * L;
    const int64_t H = s.H, W = s.W;
    const int64_t* off = a.off.data();
    const int32_t* chan = a.idx.data();
    const S* val = a.val.data();  // empty for bits
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = bias ? vload(bias + co0 + v * L) : V{};
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t img = r / H, i = r % H;
        for (int64_t j = 0; j < W; ++j) {
            V acc0[NV], acc1[NV], acc2[NV];  // one per input line: three independent add chains, in registers
            for (int v = 0; v < NV; ++v) acc0[v] = b[v], acc1[v] = acc2[v] = V{};
            const int64_t base = img * H * W;
            if (i > 0) kernel_row<S, NV, ONES>(off, chan, val, panel, base + (i - 1) * W, j, W, acc0);
            kernel_row<S, NV, ONES>(off, chan, val, panel + 3 * TW, base + i * W, j, W, acc1);
            if (i + 1 < H) kernel_row<S, NV, ONES>(off, chan, val, panel + 6 * TW, base + (i + 1) * W, j, W, acc2);
            for (int v = 0; v < NV; ++v) vstore(row + j * TW + v * L, acc0[v] + acc1[v] + acc2[v]);
        }
        S* out = y + ((img * s.Cout + co0) * H + i) * W;  // channel c of this line at out + c * H * W
        const int64_t nco = s.Cout - co0 < TW ? s.Cout - co0 : TW;
        for (int64_t j0 = 0; j0 < W; j0 += L) {
            const int64_t nj = W - j0 < L ? W - j0 : L;
            for (int64_t v = 0; v * L < nco; ++v) {
                V blk[L];
                for (int64_t k = 0; k < L; ++k) blk[k] = vload(row + (j0 + k) * TW + v * L);  // rows past W: unused
                transpose<S>(blk);
                for (int64_t c = 0; c < L && v * L + c < nco; ++c) {
                    S* dst = out + (v * L + c) * H * W + j0;
                    if (nj == L)
                        vstore(dst, blk[c]);
                    else
                        std::memcpy(dst, &blk[c], nj * sizeof(S));
                }
            }
        }
    }
}

template <typename S, bool ONES>
void forward_rows(const PixelLists<S>& a, const S* panels, const S* bias, S* y, const Shape& s, int64_t r0,
                  int64_t r1) {
    constexpr int64_t L = Lanes<S>::lanes, TILE = MAX_VECS * L;
    std::vector<S> row((s.W + L - 1) / L * L * TILE);
    for (int64_t co0 = 0; co0 < s.Cpad; co0 += TILE) {  // tiles outside: one panel at a time in cache
        const S* panel = panels + co0 * s.Cin * 9;
        spk::with_tile_vecs((s.Cpad - co0 < TILE ? s.Cpad - co0 : TILE) / L, [&](auto nv) {
            forward_tile<S, decltype(nv)::value, ONES>(a, panel, bias, y, s, co0, r0, r1, row.data());
        });
    }
}

template <typename S>
void conv3x3(int form, const uint8_t* data, const S* w, const S* bias, S* y, const Shape& s, int nthreads) {
    PixelLists<S> a;
    pixel_lists(form, data, s, nthreads, a);
    const std::vector<S> panels = conv_panels(w, s);
    std::vector<S> bpad;
    if (bias) {
        bpad.assign(s.Cpad, S(0));
        std::memcpy(bpad.data(), bias, s.Cout * sizeof(S));
    }
    const S* b = bias ? bpad.data() : nullptr;
    const int64_t nnz = a.off.back(), rows = s.B * s.H;
    const int64_t cost = (9 * nnz / (rows > 0 ? rows : 1) + s.W) * s.Cpad / 16 + 1;
    // Eight blocks of output rows per thread, dealt out in turn: images come step by step (t-major) and later steps
    // fire more, so contiguous halves would leave one thread waiting. Blocks stay large for the weight panels' reuse.
    const int64_t per_thread = rows / (8 * static_cast<int64_t>(nthreads > 1 ? nthreads : 1));
    const int64_t block = per_thread > 16 ? per_thread : 16;
    spk::deal_blocks(rows, block, block * cost, nthreads, [&](int64_t r0, int64_t r1, int64_t) {
        if (form == 0)
            forward_rows<S, true>(a, panels.data(), b, y, s, r0, r1);
        else
            forward_rows<S, false>(a, panels.data(), b, y, s, r0, r1);
    });
}

// ------------------------------------------------------------------------------------------ weight gradient
// Pixels that fired per plane (image b, input channel c): key b * Cin + c, idx the pixel as (p << 16 | q).
template <typename S>
using PlaneLists = EventLists<uint32_t, S>;

template <typename S>
void plane_lists(int form, const uint8_t* data, const Shape& s, int nthreads, PlaneLists<S>& a) {
    const int64_t HW = s.H * s.W, P = s.B * s.Cin;
    a.off.assign(P + 1, 0);
    spk::split_even(P, HW / 8 + 1, nthreads, [&](int64_t p0, int64_t p1) {
        for (int64_t pl = p0; pl < p1; ++pl) {
            int64_t n = 0;
            for_events(form, data, pl * HW, HW, [&](int64_t, uint32_t) { ++n; });
            a.off[pl + 1] = n;
        }
    });
    a.counts_to_offsets(form);
    spk::split_even(P, HW / 8 + 1, nthreads, [&](int64_t p0, int64_t p1) {
        for (int64_t pl = p0; pl < p1; ++pl) {
            int64_t at = a.off[pl];
            for_events(form, data, pl * HW, HW, [&](int64_t pix, uint32_t v) {
                const int64_t p = pix / s.W, q = pix - p * s.W;
                a.idx[at] = static_cast<uint32_t>(p << 16 | q);
                if (form != 0) a.val[at] = static_cast<S>(v);
                ++at;
            });
        }
    });
}

// buf [nb * H * W][nc] = g [b0 .. b0 + nb, c0 .. c0 + nc, H, W] transposed to pixel-major (channels past Cout: 0).
template <typename S>
void gather_nhwc(const S* g, S* buf, const Shape& s, int64_t b0, int64_t nb, int64_t c0, int64_t nc) {
    using V = typename Lanes<S>::type;
    constexpr int64_t L = Lanes<S>::lanes;
    const int64_t HW = s.H * s.W, full = HW / L * L;
    for (int64_t b = b0; b < b0 + nb; ++b) {
        S* dst = buf + (b - b0) * HW * nc;
        for (int64_t c = c0; c < c0 + nc; c += L) {
            const int64_t nvalid = s.Cout - c < L ? s.Cout - c : L;
            const S* src = g + (b * s.Cout + c) * HW;
            for (int64_t p0 = 0; p0 < full; p0 += L) {
                V blk[L];
                for (int64_t k = 0; k < L; ++k) blk[k] = k < nvalid ? vload(src + k * HW + p0) : V{};
                transpose<S>(blk);
                for (int64_t k = 0; k < L; ++k) vstore(dst + (p0 + k) * nc + c - c0, blk[k]);
            }
            for (int64_t p = full; p < HW; ++p)
                for (int64_t k = 0; k < L; ++k) dst[p * nc + c - c0 + k] = k < nvalid ? src[k * HW + p] : S(0);
        }
    }
}

// gwt[c * 9 + di * 3 + dj, co0 .. co0 + NV vectors] += the sums over images b0 .. b0 + nb; buf from gather_nhwc with
// nc columns from cb (co0 - cb: this tile's place in it). The three taps of one kernel row sum side by side.
template <typename S, int NV, bool ONES>
void wgrad_tile(const PlaneLists<S>& a, const S* buf, int64_t nc, int64_t cb, S* gwt, const Shape& s, int64_t co0,
                int64_t b0, int64_t nb) {
    using V = typename Lanes<S>::type;
    constexpr int64_t L = Lanes<S>::lanes;
    const int64_t H = s.H, W = s.W, HW = H * W;
    for (int64_t c = 0; c < s.Cin; ++c) {
        for (int64_t di = 0; di < 3; ++di) {
            V acc0[NV] = {}, acc1[NV] = {}, acc2[NV] = {};  // taps dj = 0, 1, 2: output columns q + 1, q, q - 1
            for (int64_t b = b0; b < b0 + nb; ++b) {
                const S* gb = buf + (b - b0) * HW * nc + co0 - cb;
                const int64_t pl = b * s.Cin + c;
                for (int64_t e = a.off[pl]; e < a.off[pl + 1]; ++e) {
                    const int64_t i = static_cast<int64_t>(a.idx[e] >> 16) + 1 - di;  // output line
                    if (i < 0 || i >= H) continue;
                    const int64_t q = static_cast<int64_t>(a.idx[e] & 0xFFFFu);
                    const S* gq = gb + (i * W + q) * nc;
                    const S x = ONES ? S(1) : a.val[e];
                    if (q + 1 < W) add_row<S, NV, ONES>(acc0, gq + nc, x);
                    add_row<S, NV, ONES>(acc1, gq, x);
                    if (q > 0) add_row<S, NV, ONES>(acc2, gq - nc, x);
                }
            }
            const V* acc[3] = {acc0, acc1, acc2};
            for (int64_t dj = 0; dj < 3; ++dj) {
                S* out = gwt + (c * 9 + di * 3 + dj) * s.Cpad + co0;
                for (int v = 0; v < NV; ++v) vstore(out + v * L, vload(out + v * L) + acc[dj][v]);
            }
        }
    }
}

template <typename S, bool ONES>
void wgrad_columns(const PlaneLists<S>& a, const S* g, S* gwt, const Shape& s, int64_t c0, int64_t c1) {
    constexpr int64_t L = Lanes<S>::lanes;
    const int64_t HW = s.H * s.W, nvec = (c1 - c0) / L, ntiles = (nvec + MAX_VECS - 1) / MAX_VECS;
    std::vector<S> buf;
    for (int64_t t = 0; t < ntiles; ++t) {  // tiles of equal width, at most MAX_VECS vectors
        const int64_t v0 = nvec * t / ntiles, v1 = nvec * (t + 1) / ntiles, co0 = c0 + v0 * L, tw = (v1 - v0) * L;
        // Images per block: their gradient columns (transposed) stay close to L1 while every input channel reads them.
        int64_t nb = GRAD_BLOCK_BYTES / (HW * tw * static_cast<int64_t>(sizeof(S)));
        nb = nb < 1 ? 1 : (nb > s.B ? s.B : nb);
        buf.resize(nb * HW * tw);
        for (int64_t b0 = 0; b0 < s.B; b0 += nb) {
            const int64_t n = s.B - b0 < nb ? s.B - b0 : nb;
            gather_nhwc(g, buf.data(), s, b0, n, co0, tw);
            spk::with_tile_vecs(v1 - v0, [&](auto nv) {
                wgrad_tile<S, decltype(nv)::value, ONES>(a, buf.data(), tw, co0, gwt, s, co0, b0, n);
            });
        }
    }
}

// gwt [Cin * 9, Cpad] (zeroed by the caller). Threads split the output channels, in whole vectors: each owns its
// columns of gwt and reads only its channels of g.
template <typename S>
void conv3x3_wgrad(int form, const uint8_t* data, const S* g, S* gwt, const Shape& s, int nthreads) {
    constexpr int64_t L = Lanes<S>::lanes;
    PlaneLists<S> a;
    plane_lists(form, data, s, nthreads, a);
    const int64_t nnz = a.off.back();
    spk::split_even(s.Cpad / L, 9 * nnz + 1, nthreads, [&](int64_t v0, int64_t v1) {
        if (form == 0)
            wgrad_columns<S, true>(a, g, gwt, s, v0 * L, v1 * L);
        else
            wgrad_columns<S, false>(a, g, gwt, s, v0 * L, v1 * L);
    });
}

Shape make_shape(int is_double, int64_t B, int64_t Cin, int64_t Cout, int64_t H, int64_t W) {
    const int64_t L = is_double ? Lanes<double>::lanes : Lanes<float>::lanes;
    return Shape{B, Cin, Cout, H, W, (Cout + L - 1) / L * L};
}

}  // namespace

extern "C" {

// y [B, Cout, H, W] = conv3x3(x, w [Cout, Cin, 3, 3], stride 1, padding 1) + bias [Cout] (bias may be null), for
// x [B, Cin, H, W] packed as bits (form 0) or bytes (form 1), adding only the weights of its non-zero values.
void spk_sparse_conv3x3(int is_double, int form, const uint8_t* data, const void* w, const void* bias, void* y,
                        int64_t B, int64_t Cin, int64_t Cout, int64_t H, int64_t W, int nthreads) {
    const Shape s = make_shape(is_double, B, Cin, Cout, H, W);
    if (is_double)
        conv3x3<double>(form, data, static_cast<const double*>(w), static_cast<const double*>(bias),
                        static_cast<double*>(y), s, nthreads);
    else
        conv3x3<float>(form, data, static_cast<const float*>(w), static_cast<const float*>(bias),
                       static_cast<float*>(y), s, nthreads);
}

// gwt [Cin * 9, Cpad], zeroed by the caller: the weight gradient of spk_sparse_conv3x3, row ci * 9 + di * 3 + dj,
// column co, for the packed x and g [B, Cout, H, W]. Cpad: Cout rounded up to whole vectors (spk_vec_lanes); its
// extra columns stay 0.
void spk_sparse_conv3x3_wgrad(int is_double, int form, const uint8_t* data, const void* g, void* gwt, int64_t B,
                              int64_t Cin, int64_t Cout, int64_t H, int64_t W, int nthreads) {
    const Shape s = make_shape(is_double, B, Cin, Cout, H, W);
    if (is_double)
        conv3x3_wgrad<double>(form, data, static_cast<const double*>(g), static_cast<double*>(gwt), s, nthreads);
    else
        conv3x3_wgrad<float>(form, data, static_cast<const float*>(g), static_cast<float*>(gwt), s, nthreads);
}

// Lanes of one vector (the padding unit of Cpad above) for float (0) or double (1).
int spk_vec_lanes(int is_double) {
    return is_double ? static_cast<int>(Lanes<double>::lanes) : static_cast<int>(Lanes<float>::lanes);
}

}  // extern "C"
