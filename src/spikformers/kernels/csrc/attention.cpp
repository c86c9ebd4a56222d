// Spike attention on the CPU: Q (K^T V) per head, without softmax, for binary Q, K and V (Spikformer's SSA and the
// mechanisms built on it), forward and backward, event-driven where an operand is spikes.
//
// Q, K and V arrive as bits of [M, N, C] tensors (M = T * B sequences of N tokens, C = H * D channels; head h owns
// channels [h * D, (h + 1) * D), the layout a linear's output has before it is split into heads), packed as in
// spikes.cpp. The result and the gradients are written in that same merged layout, so neither the heads' split
// nor their merge needs a copy, and no small batched matmul runs. Per sequence and head:
//   kv  = K^T V                 [D, D]: for each token, add V's row (0/1) to kv's rows where K fired
//   out = Q kv                  for each token, the sum of kv's rows where Q fired
// and, for the gradient g of out:
//   gkv = Q^T g                 for each token, add g's row to gkv's rows where Q fired
//   gQ  = g kv^T                dense, D x D per token (kv holds small integer counts)
//   gK  = V gkv^T               for each token, the sum of gkv's columns where V fired
//   gV  = K gkv                 for each token, the sum of gkv's rows where K fired
// Sums of spikes are integers, so the forward equals torch's product exactly; the gradients differ from it only in
// the order float sums are taken.

#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "vec.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "head masks read packed bits as little-endian words");

namespace {

// The D bits of head h in token row `row` (channel h * D + i in bit i); D a multiple of 8, at most 64.
template <int D>
inline uint64_t head_mask(const uint8_t* bits, int64_t row, int64_t C, int64_t h) {
    uint64_t mask = 0;
    std::memcpy(&mask, bits + (row * C + h * D) / 8, D / 8);
    return mask;
}

// Rows of D values are handled as D / 8 vectors of 8 (vec.h).
template <typename S>
using V8 = spk::Vec<S, 8>;

template <typename S>
inline typename V8<S>::type load8(const S* p) {
    return spk::vload<S, 8>(p);
}

using spk::vstore;

// rows [D, D] (contiguous): rows[i] += row for every bit i of mask.
template <typename S, int D>
inline void add_to_rows(uint64_t mask, const typename V8<S>::type* row, S* __restrict rows) {
    for (; mask; mask &= mask - 1) {
        S* r = rows + __builtin_ctzll(mask) * D;
        for (int c = 0; c < D / 8; ++c) vstore(r + 8 * c, load8(r + 8 * c) + row[c]);
    }
}

// out = the sum of the rows of `rows` [D, D] picked by the bits of mask.
template <typename S, int D>
inline void masked_row_sum(uint64_t mask, const S* __restrict rows, S* __restrict out) {
    typename V8<S>::type acc[D / 8] = {};
    for (; mask; mask &= mask - 1) {
        const S* r = rows + __builtin_ctzll(mask) * D;
        for (int c = 0; c < D / 8; ++c) acc[c] += load8(r + 8 * c);
    }
    for (int c = 0; c < D / 8; ++c) vstore(out + 8 * c, acc[c]);
}

// ab [D, D] = A^T B for sequence m, head h: row i adds B's token row (0/1) wherever A fired in channel i.
template <typename S, int D>
void head_product(const uint8_t* a, const uint8_t* b, int64_t m, int64_t N, int64_t C, int64_t h, S* __restrict ab) {
    std::memset(ab, 0, sizeof(S) * D * D);
    typename V8<S>::type row[D / 8];
    for (int64_t n = 0; n < N; ++n) {
        const uint64_t ma = head_mask<D>(a, m * N + n, C, h);
        const uint64_t mb = head_mask<D>(b, m * N + n, C, h);
        if (!ma || !mb) continue;
        for (int j = 0; j < D; ++j) row[j / 8][j % 8] = static_cast<S>((mb >> j) & 1u);
        add_to_rows<S, D>(ma, row, ab);
    }
}

template <typename S, int D>
void forward_range(const uint8_t* q, const uint8_t* k, const uint8_t* v, S* out, int64_t m0, int64_t m1, int64_t N,
                   int64_t H) {
    const int64_t C = H * D;
    std::vector<S> kv(D * D);
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t h = 0; h < H; ++h) {
            head_product<S, D>(k, v, m, N, C, h, kv.data());
            for (int64_t n = 0; n < N; ++n)
                masked_row_sum<S, D>(head_mask<D>(q, m * N + n, C, h), kv.data(), out + (m * N + n) * C + h * D);
        }
}

template <typename S, int D>
void backward_range(const uint8_t* q, const uint8_t* k, const uint8_t* v, const S* g, S* gq, S* gk, S* gv,
                    int64_t m0, int64_t m1, int64_t N, int64_t H) {
    typedef typename V8<S>::type vec;
    const int64_t C = H * D;
    std::vector<S> buf(3 * D * D + 16);
    S* kvt = buf.data();        // kv^T = V^T K
    S* gkv = kvt + D * D;       // Q^T g
    S* gkvt = gkv + D * D + 16;  // its transpose (offset: not 4 KiB after gkv)
    for (int64_t m = m0; m < m1; ++m)
        for (int64_t h = 0; h < H; ++h) {
            std::memset(gkv, 0, sizeof(S) * D * D);
            for (int64_t n = 0; n < N; ++n) {
                const uint64_t mq = head_mask<D>(q, m * N + n, C, h);
                if (!mq) continue;
                const S* grow = g + (m * N + n) * C + h * D;
                vec row[D / 8];
                for (int c = 0; c < D / 8; ++c) row[c] = load8(grow + 8 * c);
                add_to_rows<S, D>(mq, row, gkv);
            }
            if (gq) head_product<S, D>(v, k, m, N, C, h, kvt);
            if (gk)
                for (int i = 0; i < D; ++i)
                    for (int j = 0; j < D; ++j) gkvt[j * D + i] = gkv[i * D + j];
            for (int64_t n = 0; n < N; ++n) {
                const int64_t at = (m * N + n) * C + h * D;
                if (gq) {  // gQ = g kv^T: the rows of kv^T weighted by g's values
                    vec acc[D / 8] = {};
                    const S* grow = g + at;
                    for (int j = 0; j < D; ++j) {
                        const S gj = grow[j];
                        const S* r = kvt + j * D;
                        for (int c = 0; c < D / 8; ++c) acc[c] += gj * load8(r + 8 * c);
                    }
                    for (int c = 0; c < D / 8; ++c) vstore(gq + at + 8 * c, acc[c]);
                }
                if (gk) masked_row_sum<S, D>(head_mask<D>(v, m * N + n, C, h), gkvt, gk + at);
                if (gv) masked_row_sum<S, D>(head_mask<D>(k, m * N + n, C, h), gkv, gv + at);
            }
        }
}

template <typename S, int D>
void run_forward(const uint8_t* q, const uint8_t* k, const uint8_t* v, S* out, int64_t M, int64_t N, int64_t H,
                 int nthreads) {
    spk::deal_blocks(M, 4, 4 * N * H * D * 4, nthreads, [&](int64_t m0, int64_t m1, int64_t) {  // later steps fire more
        forward_range<S, D>(q, k, v, out, m0, m1, N, H);
    });
}

template <typename S, int D>
void run_backward(const uint8_t* q, const uint8_t* k, const uint8_t* v, const S* g, S* gq, S* gk, S* gv, int64_t M,
                  int64_t N, int64_t H, int nthreads) {
    spk::deal_blocks(M, 4, 4 * N * H * D * (gq ? D : 8), nthreads, [&](int64_t m0, int64_t m1, int64_t) {
        backward_range<S, D>(q, k, v, g, gq, gk, gv, m0, m1, N, H);
    });
}

// The head sizes compiled: multiples of 8 up to 64.
#define SPK_HEAD_SIZES(X) X(8) X(16) X(24) X(32) X(40) X(48) X(56) X(64)

template <typename S>
int forward(const uint8_t* q, const uint8_t* k, const uint8_t* v, S* out, int64_t M, int64_t N, int64_t H, int64_t D,
            int nthreads) {
    switch (D) {
#define SPK_CASE(d) \
    case d: run_forward<S, d>(q, k, v, out, M, N, H, nthreads); return 0;
        SPK_HEAD_SIZES(SPK_CASE)
#undef SPK_CASE
        default: return -1;
    }
}

template <typename S>
int backward(const uint8_t* q, const uint8_t* k, const uint8_t* v, const S* g, S* gq, S* gk, S* gv, int64_t M,
             int64_t N, int64_t H, int64_t D, int nthreads) {
    switch (D) {
#define SPK_CASE(d) \
    case d: run_backward<S, d>(q, k, v, g, gq, gk, gv, M, N, H, nthreads); return 0;
        SPK_HEAD_SIZES(SPK_CASE)
#undef SPK_CASE
        default: return -1;
    }
}

}  // namespace

extern "C" {

// out [M, N, H * D] = Q (K^T V) per head for q, k, v the bits of [M, N, H * D] spike tensors (D a multiple of 8 up
// to 64). Returns 0, or -1 for an unsupported D.
int spk_spike_attention(int is_double, const uint8_t* q, const uint8_t* k, const uint8_t* v, void* out, int64_t M,
                        int64_t N, int64_t H, int64_t D, int nthreads) {
    if (is_double) return forward<double>(q, k, v, static_cast<double*>(out), M, N, H, D, nthreads);
    return forward<float>(q, k, v, static_cast<float*>(out), M, N, H, D, nthreads);
}

// Gradients of spk_spike_attention for the gradient g [M, N, H * D] of its output: gq, gk, gv (each may be null when
// not needed), all contiguous in the merged layout. Returns 0, or -1 for an unsupported D.
int spk_spike_attention_backward(int is_double, const uint8_t* q, const uint8_t* k, const uint8_t* v, const void* g,
                                 void* gq, void* gk, void* gv, int64_t M, int64_t N, int64_t H, int64_t D,
                                 int nthreads) {
    if (is_double)
        return backward<double>(q, k, v, static_cast<const double*>(g), static_cast<double*>(gq),
                                static_cast<double*>(gk), static_cast<double*>(gv), M, N, H, D, nthreads);
    return backward<float>(q, k, v, static_cast<const float*>(g), static_cast<float*>(gq), static_cast<float*>(gk),
                           static_cast<float*>(gv), M, N, H, D, nthreads);
}

}  // extern "C"
