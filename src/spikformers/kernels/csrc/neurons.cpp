// Fused multi-step spiking neurons for the CPU: one pass over all T steps per element, forward and backward.
//
// Built at first use by spikformers/kernels/cpp.py with the system C++ compiler (no torch headers,
// so it compiles in about a second) and called through ctypes. Layout: x, spikes, grads are [T, N]
// contiguous; the saved state for backward is either
//   SAVE_Q16 / SAVE_Q24: byte planes [nbytes][T*N]; the top bit of the last plane is the spike (or "did
//                        reset") bit, the other 15 / 23 bits are the surrogate gradient in fixed point;
//   SAVE_H:              the membrane before firing h[t] in the input dtype (recomputed surrogate, exact);
//   SAVE_CODE:           one byte per element (ternary "guo" form: bit 0 straight-through mask, bit 1 reset);
//   SAVE_X:              nothing new: backward gets the input x back and re-runs the charge to rebuild h[t]
//                        (same arithmetic as the forward, so bit-identical), then proceeds as SAVE_H.
// The arithmetic follows the reference loops operation by operation (no FMA contraction, true division
// by tau, or the product with its exact reciprocal where tau is a power of two), so spikes are bit-identical to them.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "lif.h"
#include "parallel.h"

namespace {

using spk::LIF;
using spk::TERNARY_LIF;
using spk::TERNARY_GUO;
using spk::charge;
using spk::resets;
using spk::sigmoid_grad;

enum Save { SAVE_NONE = 0, SAVE_CODE = 1, SAVE_Q16 = 2, SAVE_Q24 = 3, SAVE_H = 4, SAVE_X = 5 };

constexpr int64_t BLOCK = 512;

struct Params {
    double tau, v_th, v_reset, alpha, decay;
    int detach_reset;
};

template <int SAVE>
constexpr int32_t qmax() {
    return SAVE == SAVE_Q16 ? 0x7FFF : 0x7FFFFF;
}

template <typename S>
S surrogate_scale(int kind, double alpha) {
    // upper bound of the saved surrogate value: alpha/4 for one sigmoid, alpha/2 for the ternary sum of two
    return static_cast<S>(kind == LIF ? alpha / 4.0 : alpha / 2.0);
}

// Quantise value[i] (in [0, scale]) and write it with the spike/reset bit (bit[i] in {0, 1}) as byte planes.
template <typename S, int SAVE>
inline void store_planes(uint8_t* __restrict planes, int64_t stride, int64_t at, const S* __restrict value,
                         const int32_t* __restrict bit, S to_q, int64_t n) {
    uint8_t* __restrict p0 = planes + at;
    uint8_t* __restrict p1 = planes + stride + at;
    uint8_t* __restrict p2 = planes + 2 * stride + at;
    for (int64_t i = 0; i < n; ++i) {
        int32_t q = static_cast<int32_t>(value[i] * to_q + S(0.5));
        q = q > qmax<SAVE>() ? qmax<SAVE>() : q;
        p0[i] = static_cast<uint8_t>(q & 0xFF);
        if (SAVE == SAVE_Q16) {
            p1[i] = static_cast<uint8_t>(((q >> 8) & 0x7F) | (bit[i] << 7));
        } else {
            p1[i] = static_cast<uint8_t>((q >> 8) & 0xFF);
            p2[i] = static_cast<uint8_t>(((q >> 16) & 0x7F) | (bit[i] << 7));
        }
    }
}

// Inverse of store_planes: value[i] = surrogate, keep[i] = 1 - bit.
template <typename S, int SAVE>
inline void load_planes(const uint8_t* __restrict planes, int64_t stride, int64_t at, S* __restrict value,
                        S* __restrict keep, S from_q, int64_t n) {
    const uint8_t* __restrict p0 = planes + at;
    const uint8_t* __restrict p1 = planes + stride + at;
    const uint8_t* __restrict p2 = planes + 2 * stride + at;
    for (int64_t i = 0; i < n; ++i) {
        int32_t q, top;
        if (SAVE == SAVE_Q16) {
            top = p1[i];
            q = static_cast<int32_t>(p0[i]) | ((top & 0x7F) << 8);
        } else {
            top = p2[i];
            q = static_cast<int32_t>(p0[i]) | (static_cast<int32_t>(p1[i]) << 8) | ((top & 0x7F) << 16);
        }
        value[i] = static_cast<S>(q) * from_q;
        keep[i] = static_cast<S>(1 - (top >> 7));
    }
}

template <typename S, int KIND, int SAVE, typename Tau>
void forward_range(const S* x, S* out, uint8_t* planes, S* hsave, const S* v_init, S* v_final, int64_t T,
                   int64_t N, const Params& p, Tau tau, int64_t begin, int64_t end) {
    const S v_th = static_cast<S>(p.v_th), v_reset = static_cast<S>(p.v_reset);
    const S alpha = static_cast<S>(p.alpha), decay = static_cast<S>(p.decay);
    const S half_th = static_cast<S>(0.5 * p.v_th);
    const int64_t TN = T * N;
    constexpr bool QUANT = SAVE == SAVE_Q16 || SAVE == SAVE_Q24;
    const S to_q = QUANT ? static_cast<S>(static_cast<double>(qmax<SAVE>()) / surrogate_scale<double>(KIND, p.alpha))
                         : S(0);
    alignas(64) S v[BLOCK];
    alignas(64) S ua[BLOCK];
    alignas(64) S ub[BLOCK];
    alignas(64) S sg[BLOCK];
    alignas(64) int32_t bit[BLOCK];
    for (int64_t b0 = begin; b0 < end; b0 += BLOCK) {
        const int64_t n = (end - b0) < BLOCK ? (end - b0) : BLOCK;
        const S v0 = KIND == LIF ? v_reset : S(0);
        if (v_init) {
            for (int64_t i = 0; i < n; ++i) v[i] = v_init[b0 + i];
        } else {
            for (int64_t i = 0; i < n; ++i) v[i] = v0;
        }
        for (int64_t t = 0; t < T; ++t) {
            const int64_t base = t * N + b0;
            // out may be x itself (spikes written over a caller's scratch input): element i is read before it is
            // written and no other element depends on it, so the loops are vectorised without alias checks
            const S* xt = x + base;
            S* ot = out + base;
            S* __restrict ht = hsave + base;
            if (KIND == LIF) {
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) {
                    S h = charge<S, LIF>(v[i], xt[i], tau, v_reset);
                    S u = h - v_th;
                    int32_t fire = u >= S(0);
                    ot[i] = static_cast<S>(fire);
                    v[i] = fire ? v_reset : h;
                    ua[i] = u;
                    bit[i] = fire;
                    if (SAVE == SAVE_H) ht[i] = h;
                }
                if (QUANT) {
                    for (int64_t i = 0; i < n; ++i) sg[i] = sigmoid_grad(ua[i], alpha);
                    store_planes<S, SAVE>(planes, TN, base, sg, bit, to_q, n);
                }
            } else if (KIND == TERNARY_LIF) {
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) {
                    S h = charge<S, TERNARY_LIF>(v[i], xt[i], tau, v_reset);
                    S up = h - v_th;
                    S un = -h - v_th;
                    int32_t pos = up >= S(0);
                    int32_t neg = un >= S(0);
                    int32_t fired = pos != neg;
                    ot[i] = static_cast<S>(pos) - static_cast<S>(neg);
                    v[i] = fired ? S(0) : h;
                    ua[i] = up;
                    ub[i] = un;
                    bit[i] = fired;
                    if (SAVE == SAVE_H) ht[i] = h;
                }
                if (QUANT) {
                    for (int64_t i = 0; i < n; ++i) sg[i] = sigmoid_grad(ua[i], alpha) + sigmoid_grad(ub[i], alpha);
                    store_planes<S, SAVE>(planes, TN, base, sg, bit, to_q, n);
                }
            } else {  // TERNARY_GUO
                uint8_t* __restrict code = planes + base;
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) {
                    S u = decay * v[i] + xt[i];
                    S a = u < S(0) ? -u : u;
                    int32_t fired = (a >= half_th) & (u != S(0));
                    S sign = u > S(0) ? S(1) : S(-1);
                    ot[i] = fired ? sign : S(0);
                    v[i] = fired ? S(0) : u;
                    if (SAVE == SAVE_CODE) code[i] = static_cast<uint8_t>((a <= S(1)) | (fired << 1));
                }
            }
        }
        if (v_final) {
            for (int64_t i = 0; i < n; ++i) v_final[b0 + i] = v[i];
        }
    }
}

template <typename S, int KIND, int SAVE, typename Tau>
void backward_range(const S* gs, S* gx, const uint8_t* planes, const S* hsave, int64_t T, int64_t N,
                    const Params& p, Tau tau, int64_t begin, int64_t end) {
    const S v_th = static_cast<S>(p.v_th), v_reset = static_cast<S>(p.v_reset);
    const S alpha = static_cast<S>(p.alpha), decay = static_cast<S>(p.decay);
    const int64_t TN = T * N;
    constexpr bool QUANT = SAVE == SAVE_Q16 || SAVE == SAVE_Q24;
    const S from_q = QUANT ? static_cast<S>(surrogate_scale<double>(KIND, p.alpha) / static_cast<double>(qmax<SAVE>()))
                           : S(0);
    const bool detach = p.detach_reset != 0;
    alignas(64) S gv[BLOCK];
    alignas(64) S sg[BLOCK];
    alignas(64) S keep[BLOCK];
    std::vector<S> hbuf(SAVE == SAVE_X ? T * BLOCK : 0);  // SAVE_X: h[t] of one block, rebuilt from x
    for (int64_t b0 = begin; b0 < end; b0 += BLOCK) {
        const int64_t n = (end - b0) < BLOCK ? (end - b0) : BLOCK;
        if (SAVE == SAVE_X) {
            S* __restrict v = gv;  // gv is free until the reverse pass; use it as the membrane
            for (int64_t i = 0; i < n; ++i) v[i] = KIND == LIF ? v_reset : S(0);
            for (int64_t t = 0; t < T; ++t) {
                const S* __restrict xt = hsave + t * N + b0;
                S* __restrict ht = hbuf.data() + t * BLOCK;
                for (int64_t i = 0; i < n; ++i) {
                    S h = charge<S, KIND>(v[i], xt[i], tau, v_reset);
                    ht[i] = h;
                    v[i] = resets<S, KIND>(h, v_th) ? (KIND == LIF ? v_reset : S(0)) : h;
                }
            }
        }
        for (int64_t i = 0; i < n; ++i) gv[i] = S(0);
        for (int64_t t = T - 1; t >= 0; --t) {
            const int64_t base = t * N + b0;
            const S* __restrict gst = gs + base;
            S* __restrict gxt = gx + base;
            if (KIND == TERNARY_GUO) {
                const uint8_t* __restrict code = planes + base;
                for (int64_t i = 0; i < n; ++i) {
                    int32_t c = code[i];
                    S ste = static_cast<S>(c & 1);
                    S kp = static_cast<S>(1 - ((c >> 1) & 1));
                    S gu = gst[i] * ste + gv[i] * kp;
                    gxt[i] = gu;
                    gv[i] = decay * gu;
                }
                continue;
            }
            if (KIND == LIF && (SAVE == SAVE_H || SAVE == SAVE_X)) {  // one pass from h, no temporaries
                const S* __restrict ht = SAVE == SAVE_X ? hbuf.data() + t * BLOCK : hsave + base;
                for (int64_t i = 0; i < n; ++i)  // the compiler unswitches the loop on `detach`
                    gxt[i] = spk::lif_backward_step(ht[i], gst[i], gv[i], detach, tau, v_th, v_reset, alpha);
                continue;
            }
            if (SAVE == SAVE_H || SAVE == SAVE_X) {
                const S* __restrict ht = SAVE == SAVE_X ? hbuf.data() + t * BLOCK : hsave + base;
                for (int64_t i = 0; i < n; ++i) {  // the ternary LIF (the LIF took the path above)
                    S h = ht[i];
                    S up = h - v_th, un = -h - v_th;
                    sg[i] = sigmoid_grad(up, alpha) + sigmoid_grad(un, alpha);
                    keep[i] = (up >= S(0)) != (un >= S(0)) ? S(0) : S(1);
                }
            } else {
                load_planes<S, SAVE>(planes, TN, base, sg, keep, from_q, n);
            }
            for (int64_t i = 0; i < n; ++i) {
                S gh = gst[i] * sg[i] + gv[i] * keep[i];
                S g = tau(gh);
                gxt[i] = g;
                gv[i] = gh - g;
            }
        }
    }
}

template <typename S, int KIND, int SAVE>
void forward_t(const S* x, S* out, uint8_t* planes, S* hsave, const S* v_init, S* v_final, int64_t T, int64_t N,
               const Params& p, int nt) {
    const auto run = [&](auto tau) {
        spk::parallel(N, T, nt, [&](int64_t b, int64_t e) {
            forward_range<S, KIND, SAVE>(x, out, planes, hsave, v_init, v_final, T, N, p, tau, b, e);
        });
    };
    if (KIND == LIF)  // the ternary kinds keep the division alone: fewer instantiations
        spk::with_tau<S>(p.tau, run);
    else
        run(spk::DivTau<S>{static_cast<S>(p.tau)});
}

template <typename S, int KIND, int SAVE>
void backward_t(const S* gs, S* gx, const uint8_t* planes, const S* hsave, int64_t T, int64_t N, const Params& p,
                int nt) {
    const auto run = [&](auto tau) {
        spk::parallel(N, T, nt, [&](int64_t b, int64_t e) {
            backward_range<S, KIND, SAVE>(gs, gx, planes, hsave, T, N, p, tau, b, e);
        });
    };
    if (KIND == LIF)
        spk::with_tau<S>(p.tau, run);
    else
        run(spk::DivTau<S>{static_cast<S>(p.tau)});
}

template <typename S>
int forward_dispatch(const S* x, S* out, uint8_t* planes, S* hsave, const S* v_init, S* v_final, int64_t T,
                     int64_t N, int kind, int save, const Params& p, int nt) {
#define SPK_CASE(K, SV)                                                    \
    if (kind == K && save == SV) {                                         \
        forward_t<S, K, SV>(x, out, planes, hsave, v_init, v_final, T, N, p, nt); \
        return 0;                                                          \
    }
    SPK_CASE(LIF, SAVE_NONE) SPK_CASE(LIF, SAVE_Q16) SPK_CASE(LIF, SAVE_Q24) SPK_CASE(LIF, SAVE_H)
    SPK_CASE(TERNARY_LIF, SAVE_NONE) SPK_CASE(TERNARY_LIF, SAVE_Q16) SPK_CASE(TERNARY_LIF, SAVE_Q24)
    SPK_CASE(TERNARY_LIF, SAVE_H) SPK_CASE(TERNARY_GUO, SAVE_NONE) SPK_CASE(TERNARY_GUO, SAVE_CODE)
#undef SPK_CASE
    return 1;
}

template <typename S>
int backward_dispatch(const S* gs, S* gx, const uint8_t* planes, const S* hsave, int64_t T, int64_t N, int kind,
                      int save, const Params& p, int nt) {
#define SPK_CASE(K, SV)                                                    \
    if (kind == K && save == SV) {                                         \
        backward_t<S, K, SV>(gs, gx, planes, hsave, T, N, p, nt);          \
        return 0;                                                          \
    }
    SPK_CASE(LIF, SAVE_Q16) SPK_CASE(LIF, SAVE_Q24) SPK_CASE(LIF, SAVE_H) SPK_CASE(LIF, SAVE_X)
    SPK_CASE(TERNARY_LIF, SAVE_Q16) SPK_CASE(TERNARY_LIF, SAVE_Q24) SPK_CASE(TERNARY_LIF, SAVE_H)
    SPK_CASE(TERNARY_LIF, SAVE_X) SPK_CASE(TERNARY_GUO, SAVE_CODE)
#undef SPK_CASE
    return 1;
}

}  // namespace

extern "C" {

int spk_abi_version() { return 3; }

// The OpenMP entry point this library resolved (null without OpenMP): lets a test check it is torch's runtime.
const void* spk_openmp_symbol() { return spk::openmp_symbol(); }

// v_init (may be null: start from rest) and v_final (may be null) are [N] membranes in the input dtype.
int spk_forward(int is_double, const void* x, void* out, uint8_t* planes, void* hsave, const void* v_init,
                void* v_final, int64_t T, int64_t N, int kind, int save, double tau, double v_th, double v_reset,
                double alpha, double decay, int detach_reset, int nthreads) {
    Params p{tau, v_th, v_reset, alpha, decay, detach_reset};
    if (is_double)
        return forward_dispatch<double>(static_cast<const double*>(x), static_cast<double*>(out), planes,
                                        static_cast<double*>(hsave), static_cast<const double*>(v_init),
                                        static_cast<double*>(v_final), T, N, kind, save, p, nthreads);
    return forward_dispatch<float>(static_cast<const float*>(x), static_cast<float*>(out), planes,
                                   static_cast<float*>(hsave), static_cast<const float*>(v_init),
                                   static_cast<float*>(v_final), T, N, kind, save, p, nthreads);
}

int spk_backward(int is_double, const void* gs, void* gx, const uint8_t* planes, const void* hsave, int64_t T,
                 int64_t N, int kind, int save, double tau, double v_th, double v_reset, double alpha,
                 double decay, int detach_reset, int nthreads) {
    Params p{tau, v_th, v_reset, alpha, decay, detach_reset};
    if (is_double)
        return backward_dispatch<double>(static_cast<const double*>(gs), static_cast<double*>(gx), planes,
                                         static_cast<const double*>(hsave), T, N, kind, save, p, nthreads);
    return backward_dispatch<float>(static_cast<const float*>(gs), static_cast<float*>(gx), planes,
                                    static_cast<const float*>(hsave), T, N, kind, save, p, nthreads);
}

}  // extern "C"
