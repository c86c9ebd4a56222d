// Batch norm fused with a multi-step LIF: the "CBL" unit (linear or conv -> BN -> LIF) from the projection's
// output y straight to spikes, and back from the spikes' gradient straight to y's, without the norm's output or
// its gradient ever existing as tensors.
//
// Layout: y is [T, A, C, P] contiguous: T steps, A rows per step, C channels, P positions per channel plane
// (linear units: A = B*N tokens, P = 1; conv units: A = B images, P = H*W). Statistics pool over T, A and P.
//
// Forward:  z = y * scale[c] + shift[c] (scale = gamma / sqrt(var + eps), shift = beta - mean * scale, both
//           computed by the caller in double), then the LIF of lif.h over t.
// Backward: pass 1 rebuilds z and the membranes from y (nothing but y is kept), runs the LIF backward and writes
//           gz = dL/dz, summing per channel sum(gz) and sum(gz * (y - mean)) in double;
//           pass 2 turns gz into dL/dy = gz * k1[c] + (y - mean[c]) * k2[c] + k3[c] in place (k from those sums).

#include <cstdint>
#include <vector>

#include "lif.h"
#include "parallel.h"

namespace {

using spk::charge;
using spk::LIF;
using spk::sigmoid_grad;

constexpr int64_t BLOCK = 256;

struct Dims {
    int64_t T, A, C, P;
};

// Work units: a row of C channels (P == 1) or one channel plane of P positions (P > 1), per step t = 0.
inline int64_t units(const Dims& d) { return d.P == 1 ? d.A : d.A * d.C; }

// Threads for `n` units of `cost` elements each (small jobs stay on the calling thread).
inline int threads_for(int64_t n, int64_t cost, int nthreads) {
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    const int64_t most = n * cost / 65536 + 1;
    if (nt > most) nt = most;
    if (nt > n) nt = n;
    return static_cast<int>(nt < 1 ? 1 : nt);
}

// Calls seg(offset, channel, n) for each contiguous segment of step 0 within units [begin, end): `n` elements
// from `offset`, whose channels are channel, channel + 1, ... (P == 1) or all `channel` (P > 1).
template <typename F>
inline void segments(const Dims& d, int64_t begin, int64_t end, F seg) {
    if (d.P == 1) {
        for (int64_t a = begin; a < end; ++a)
            for (int64_t c0 = 0; c0 < d.C; c0 += BLOCK) seg(a * d.C + c0, c0, d.C - c0 < BLOCK ? d.C - c0 : BLOCK);
    } else {
        for (int64_t u = begin; u < end; ++u)
            for (int64_t p0 = 0; p0 < d.P; p0 += BLOCK) seg(u * d.P + p0, u % d.C, d.P - p0 < BLOCK ? d.P - p0 : BLOCK);
    }
}

// Per-channel sums of y and y^2 in double over a unit range, into acc[0, C) and acc[C, 2C).
template <typename S>
void stats_range(const S* y, const Dims& d, int64_t begin, int64_t end, double* acc) {
    const int64_t step = d.A * d.C * d.P;
    for (int64_t t = 0; t < d.T; ++t) {
        const S* yt = y + t * step;
        if (d.P == 1) {
            for (int64_t a = begin; a < end; ++a) {
                const S* row = yt + a * d.C;
                for (int64_t c = 0; c < d.C; ++c) {
                    const double v = row[c];
                    acc[c] += v;
                    acc[d.C + c] += v * v;
                }
            }
        } else {
            for (int64_t u = begin; u < end; ++u) {
                const S* plane = yt + u * d.P;
                double s1[8] = {0}, s2[8] = {0};
                int64_t p = 0;
                for (; p + 8 <= d.P; p += 8)
                    for (int j = 0; j < 8; ++j) {
                        const double v = plane[p + j];
                        s1[j] += v;
                        s2[j] += v * v;
                    }
                for (; p < d.P; ++p) {
                    const double v = plane[p];
                    s1[0] += v;
                    s2[0] += v * v;
                }
                double a1 = 0, a2 = 0;
                for (int j = 0; j < 8; ++j) {
                    a1 += s1[j];
                    a2 += s2[j];
                }
                acc[u % d.C] += a1;
                acc[d.C + u % d.C] += a2;
            }
        }
    }
}

// Run fn(k, begin, end) on nt even ranges of the units, each with its own zeroed 2C accumulator; the partial sums
// are then added in thread order (deterministic for a given thread count) into out[0, 2C).
template <typename F>
void reduce_units(const Dims& d, int nt, double* out, F fn) {
    const int64_t n = units(d);
    std::vector<std::vector<double>> part(nt, std::vector<double>(2 * d.C, 0.0));
    spk::run_tasks(nt, [&](int64_t k) { fn(part[k].data(), n * k / nt, n * (k + 1) / nt); });
    for (int64_t c = 0; c < 2 * d.C; ++c) out[c] = 0.0;
    for (int k = 0; k < nt; ++k)
        for (int64_t c = 0; c < 2 * d.C; ++c) out[c] += part[k][c];
}

template <typename S>
void bn_stats(const S* y, const Dims& d, double* out, int nthreads) {
    const int nt = threads_for(units(d), d.T * (d.P == 1 ? d.C : d.P), nthreads);
    reduce_units(d, nt, out, [&](double* acc, int64_t b, int64_t e) { stats_range(y, d, b, e, acc); });
}

// Spikes of the LIF driven by z = y * scale + shift. `out` may be `y` itself: each element is read before it is
// written and no other element depends on it.
template <typename S>
void forward_range(const S* y, S* out, const S* scale, const S* shift, const Dims& d, S tau, S v_th, S v_reset,
                   int64_t begin, int64_t end) {
    const int64_t step = d.A * d.C * d.P;
    const bool plane = d.P > 1;
    alignas(64) S v[BLOCK];
    segments(d, begin, end, [&](int64_t off, int64_t c, int64_t n) {
        for (int64_t i = 0; i < n; ++i) v[i] = v_reset;
        const S* sc = scale + c;
        const S* sh = shift + c;
        const S s0 = sc[0], h0 = sh[0];
        for (int64_t t = 0; t < d.T; ++t) {
            const S* yt = y + t * step + off;
            S* ot = out + t * step + off;
            if (plane) {
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) {
                    const S h = charge<S, LIF>(v[i], yt[i] * s0 + h0, tau, v_reset);
                    const int32_t fire = h - v_th >= S(0);
                    ot[i] = static_cast<S>(fire);
                    v[i] = fire ? v_reset : h;
                }
            } else {
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) {
                    const S h = charge<S, LIF>(v[i], yt[i] * sc[i] + sh[i], tau, v_reset);
                    const int32_t fire = h - v_th >= S(0);
                    ot[i] = static_cast<S>(fire);
                    v[i] = fire ? v_reset : h;
                }
            }
        }
    });
}

// Pass 1 of backward for one segment of n elements from `off` (channels c.. or all c, as PLANE): gz = dL/dz from
// gs = dL/dspikes, membranes rebuilt from y into hb[T][BLOCK]; per-element sums of gz and gz * (y - mean) in s1, s2.
template <typename S, bool PLANE, bool DETACH>
inline void backward_block(const S* __restrict gs, const S* __restrict y, S* __restrict gz, const S* __restrict sc,
                           const S* __restrict sh, const S* __restrict mu, int64_t off, int64_t step, int64_t T,
                           int64_t n, S tau, S v_th, S v_reset, S alpha, S* __restrict hb,
                           S* __restrict gv, double* __restrict s1, double* __restrict s2) {
    S* __restrict v = gv;  // the membrane until the reverse pass
    for (int64_t i = 0; i < n; ++i) v[i] = v_reset;
    for (int64_t t = 0; t < T; ++t) {
        const S* __restrict yt = y + t * step + off;
        S* __restrict ht = hb + t * BLOCK;
        for (int64_t i = 0; i < n; ++i) {
            const S z = yt[i] * sc[PLANE ? 0 : i] + sh[PLANE ? 0 : i];
            const S h = charge<S, LIF>(v[i], z, tau, v_reset);
            ht[i] = h;
            v[i] = h - v_th >= S(0) ? v_reset : h;
        }
    }
    for (int64_t i = 0; i < n; ++i) {
        gv[i] = S(0);
        s1[i] = 0.0;
        s2[i] = 0.0;
    }
    for (int64_t t = T - 1; t >= 0; --t) {
        const S* __restrict gst = gs + t * step + off;
        const S* __restrict yt = y + t * step + off;
        S* __restrict gzt = gz + t * step + off;
        const S* __restrict ht = hb + t * BLOCK;
        for (int64_t i = 0; i < n; ++i) {  // as neurons.cpp's LIF backward from h
            const S h = ht[i], u = h - v_th;
            const S g_spike = DETACH ? gst[i] : gst[i] + gv[i] * (v_reset - h);
            const S gh = g_spike * sigmoid_grad(u, alpha) + gv[i] * (u >= S(0) ? S(0) : S(1));
            const S g = gh / tau;
            gzt[i] = g;
            gv[i] = gh - g;
        }
        for (int64_t i = 0; i < n; ++i) {
            const double g = gzt[i];
            s1[i] += g;
            s2[i] += g * static_cast<double>(yt[i] - mu[PLANE ? 0 : i]);
        }
    }
}

// Pass 1 of backward over units [begin, end), adding the per-channel sums into acc[0, C) and acc[C, 2C).
template <typename S>
void backward_range(const S* gs, const S* y, S* gz, const S* scale, const S* shift, const S* mean, const Dims& d,
                    S tau, S v_th, S v_reset, S alpha, bool detach, int64_t begin, int64_t end, double* acc) {
    const int64_t step = d.A * d.C * d.P;
    std::vector<S> hbuf(d.T * BLOCK);
    S* hb = hbuf.data();
    alignas(64) S gv[BLOCK];
    alignas(64) double s1[BLOCK];
    alignas(64) double s2[BLOCK];
    segments(d, begin, end, [&](int64_t off, int64_t c, int64_t n) {
        if (d.P > 1) {
            if (detach)
                backward_block<S, true, true>(gs, y, gz, scale + c, shift + c, mean + c, off, step, d.T, n, tau, v_th,
                                              v_reset, alpha, hb, gv, s1, s2);
            else
                backward_block<S, true, false>(gs, y, gz, scale + c, shift + c, mean + c, off, step, d.T, n, tau, v_th,
                                               v_reset, alpha, hb, gv, s1, s2);
            double a1 = 0.0, a2 = 0.0;
            for (int64_t i = 0; i < n; ++i) {
                a1 += s1[i];
                a2 += s2[i];
            }
            acc[c] += a1;
            acc[d.C + c] += a2;
        } else {
            if (detach)
                backward_block<S, false, true>(gs, y, gz, scale + c, shift + c, mean + c, off, step, d.T, n, tau, v_th,
                                               v_reset, alpha, hb, gv, s1, s2);
            else
                backward_block<S, false, false>(gs, y, gz, scale + c, shift + c, mean + c, off, step, d.T, n, tau,
                                                v_th, v_reset, alpha, hb, gv, s1, s2);
            for (int64_t i = 0; i < n; ++i) {
                acc[c + i] += s1[i];
                acc[d.C + c + i] += s2[i];
            }
        }
    });
}

// Pass 2: g = g * k1[c] + (y - mean[c]) * k2[c] + k3[c], in place.
template <typename S>
void finish_range(S* g, const S* y, const S* k1, const S* k2, const S* k3, const S* mean, const Dims& d,
                  int64_t begin, int64_t end) {
    const int64_t step = d.A * d.C * d.P;
    const bool plane = d.P > 1;
    segments(d, begin, end, [&](int64_t off, int64_t c, int64_t n) {
        for (int64_t t = 0; t < d.T; ++t) {
            S* __restrict gt = g + t * step + off;
            const S* __restrict yt = y + t * step + off;
            if (plane) {
                const S a = k1[c], b = k2[c], e = k3[c], m = mean[c];
                for (int64_t i = 0; i < n; ++i) gt[i] = gt[i] * a + (yt[i] - m) * b + e;
            } else {
                const S* a = k1 + c;
                const S* b = k2 + c;
                const S* e = k3 + c;
                const S* m = mean + c;
                for (int64_t i = 0; i < n; ++i) gt[i] = gt[i] * a[i] + (yt[i] - m[i]) * b[i] + e[i];
            }
        }
    });
}

template <typename S>
void run_forward(const S* y, S* out, const S* scale, const S* shift, const Dims& d, double tau, double v_th,
                 double v_reset, int nthreads) {
    const int64_t n = units(d);
    const int nt = threads_for(n, d.T * (d.P == 1 ? d.C : d.P), nthreads);
    spk::run_tasks(nt, [&](int64_t k) {
        forward_range<S>(y, out, scale, shift, d, static_cast<S>(tau), static_cast<S>(v_th), static_cast<S>(v_reset),
                         n * k / nt, n * (k + 1) / nt);
    });
}

template <typename S>
void run_backward(const S* gs, const S* y, S* gz, const S* scale, const S* shift, const S* mean, const Dims& d,
                  double tau, double v_th, double v_reset, double alpha, int detach, double* sums, int nthreads) {
    const int nt = threads_for(units(d), d.T * (d.P == 1 ? d.C : d.P), nthreads);
    reduce_units(d, nt, sums, [&](double* acc, int64_t b, int64_t e) {
        backward_range<S>(gs, y, gz, scale, shift, mean, d, static_cast<S>(tau), static_cast<S>(v_th),
                          static_cast<S>(v_reset), static_cast<S>(alpha), detach != 0, b, e, acc);
    });
}

template <typename S>
void run_finish(S* g, const S* y, const S* k, const S* mean, const Dims& d, int nthreads) {
    const int64_t n = units(d);
    const int nt = threads_for(n, d.T * (d.P == 1 ? d.C : d.P), nthreads);
    spk::run_tasks(nt, [&](int64_t j) {
        finish_range<S>(g, y, k, k + d.C, k + 2 * d.C, mean, d, n * j / nt, n * (j + 1) / nt);
    });
}

}  // namespace

extern "C" {

// out[0, C): per-channel sum of y; out[C, 2C): sum of y^2 (double).
void spk_bn_stats(int is_double, const void* y, int64_t T, int64_t A, int64_t C, int64_t P, double* out,
                  int nthreads) {
    const Dims d{T, A, C, P};
    if (is_double)
        bn_stats(static_cast<const double*>(y), d, out, nthreads);
    else
        bn_stats(static_cast<const float*>(y), d, out, nthreads);
}

// Spikes of LIF(y * scale + shift) into out (may be y). scale, shift: [C] in y's dtype.
void spk_bn_lif_forward(int is_double, const void* y, void* out, const void* scale, const void* shift, int64_t T,
                        int64_t A, int64_t C, int64_t P, double tau, double v_th, double v_reset, int nthreads) {
    const Dims d{T, A, C, P};
    if (is_double)
        run_forward(static_cast<const double*>(y), static_cast<double*>(out), static_cast<const double*>(scale),
                    static_cast<const double*>(shift), d, tau, v_th, v_reset, nthreads);
    else
        run_forward(static_cast<const float*>(y), static_cast<float*>(out), static_cast<const float*>(scale),
                    static_cast<const float*>(shift), d, tau, v_th, v_reset, nthreads);
}

// Pass 1: gz = dL/dz into gz; sums[0, C) = sum(gz), sums[C, 2C) = sum(gz * (y - mean)) per channel.
void spk_bn_lif_backward(int is_double, const void* gs, const void* y, void* gz, const void* scale, const void* shift,
                         const void* mean, int64_t T, int64_t A, int64_t C, int64_t P, double tau, double v_th,
                         double v_reset, double alpha, int detach_reset, double* sums, int nthreads) {
    const Dims d{T, A, C, P};
    if (is_double)
        run_backward(static_cast<const double*>(gs), static_cast<const double*>(y), static_cast<double*>(gz),
                     static_cast<const double*>(scale), static_cast<const double*>(shift),
                     static_cast<const double*>(mean), d, tau, v_th, v_reset, alpha, detach_reset, sums, nthreads);
    else
        run_backward(static_cast<const float*>(gs), static_cast<const float*>(y), static_cast<float*>(gz),
                     static_cast<const float*>(scale), static_cast<const float*>(shift),
                     static_cast<const float*>(mean), d, tau, v_th, v_reset, alpha, detach_reset, sums, nthreads);
}

// Pass 2, in place: g = g * k[c] + (y - mean[c]) * k[C + c] + k[2C + c]. k: [3, C] in y's dtype.
void spk_bn_finish(int is_double, void* g, const void* y, const void* k, const void* mean, int64_t T, int64_t A,
                   int64_t C, int64_t P, int nthreads) {
    const Dims d{T, A, C, P};
    if (is_double)
        run_finish(static_cast<double*>(g), static_cast<const double*>(y), static_cast<const double*>(k),
                   static_cast<const double*>(mean), d, nthreads);
    else
        run_finish(static_cast<float*>(g), static_cast<const float*>(y), static_cast<const float*>(k),
                   static_cast<const float*>(mean), d, nthreads);
}

}  // extern "C"
