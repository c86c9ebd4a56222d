// Batch norm fused with a multi-step LIF: the "CBL" unit (linear or conv -> BN -> LIF) from the projection's
// output y straight to spikes, and back from the spikes' gradient straight to y's, without the norm's output or
// its gradient ever existing as tensors.
//
// Layout: y is [T, A, C, P] contiguous: T steps, A rows per step, C channels, P positions per channel plane
// (linear units: A = B*N tokens, P = 1; conv units: A = B images, P = H*W). Statistics pool over T, A and P.
// Pooling units (W > 0: planes of H = P / W rows by W columns) also max-pool their spikes (3x3, stride 2,
// padding 1, pool.h): the forward writes only the pooled spikes, and the backward takes the pooled spikes'
// gradient and routes it through the pool inside the pass, from the spikes it rebuilds; neither the full-size
// spike map nor its gradient ever exists as a tensor.
//
// Forward:  z = y * scale[c] + shift[c] (scale = gamma / sqrt(var + eps), shift = beta - mean * scale, both
//           computed by the caller in double), then the LIF of lif.h over t.
// Backward: pass 1 rebuilds z and the membranes from y (nothing but y is kept), runs the LIF backward to
//           gz = dL/dz, sums per channel gz and gz * (y - mean) in double and stores gz; pass 2 streams
//           dL/dy = gz * k1[c] + (y - mean[c]) * k2[c] + k3[c] (k from those sums) over gz. One buffer the size of y
//           lives between the passes; the LIF backward (most of the cost: an exp per element) runs once.

#include <cstdint>
#include <cstring>
#include <vector>

#include "lif.h"
#include "parallel.h"
#include "pool.h"

namespace {

using spk::charge;
using spk::LIF;

constexpr int64_t BLOCK = 256;

struct Dims {
    int64_t T, A, C, P;
    int64_t W;  // > 0: a pooling unit of H = P / W by W planes; 0: no pool
    int64_t pooled_plane() const { return spk::pooled(P / W) * spk::pooled(W); }
};

// Work units: a row of C channels (P == 1) or one channel plane of P positions (P > 1), per step t = 0.
inline int64_t units(const Dims& d) { return d.P == 1 ? d.A : d.A * d.C; }

// Elements per work unit, over all steps.
inline int64_t unit_cost(const Dims& d) { return d.T * (d.P == 1 ? d.C : d.P); }

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

// Run fn(acc, begin, end) on even ranges of the units (as spk::split_even), each with its own zeroed 2C accumulator;
// the partial sums are then added in range order (deterministic for a given thread count) into out[0, 2C).
template <typename F>
void reduce_units(const Dims& d, int nthreads, double* out, F fn) {
    const int64_t n = units(d);
    const int64_t nt = spk::even_threads(n, unit_cost(d), nthreads);
    std::vector<std::vector<double>> part(nt, std::vector<double>(2 * d.C, 0.0));
    spk::run_tasks(nt, [&](int64_t k) { fn(part[k].data(), n * k / nt, n * (k + 1) / nt); });
    for (int64_t c = 0; c < 2 * d.C; ++c) out[c] = 0.0;
    for (int64_t k = 0; k < nt; ++k)
        for (int64_t c = 0; c < 2 * d.C; ++c) out[c] += part[k][c];
}

template <typename S>
void bn_stats(const S* y, const Dims& d, double* out, int nthreads) {
    reduce_units(d, nthreads, out, [&](double* acc, int64_t b, int64_t e) { stats_range(y, d, b, e, acc); });
}

// Spikes of the LIF driven by z = y * scale + shift. `out` may be `y` itself: each element is read before it is
// written and no other element depends on it.
template <typename S, typename Tau>
void forward_range(const S* y, S* out, const S* scale, const S* shift, const Dims& d, Tau tau, S v_th, S v_reset,
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

// The LIF backward of one segment of n elements from `off` (channels c.. or, PLANE, all c): membranes rebuilt from
// y into hb[T][BLOCK], then the reverse pass to gz = dL/dz from gs = dL/dspikes: per-element sums of gz and
// gz * (y - mean) into s1, s2, and gz itself into out unless out is null.
template <typename S, bool PLANE, bool DETACH, typename Tau>
inline void backward_block(const S* __restrict gs, const S* __restrict y, S* __restrict out, const S* __restrict sc,
                           const S* __restrict sh, const S* __restrict mu, int64_t off, int64_t step, int64_t T,
                           int64_t n, Tau tau, S v_th, S v_reset, S alpha, S* __restrict hb, S* __restrict gv,
                           double* __restrict s1, double* __restrict s2) {
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
    alignas(64) S gz[BLOCK];
    for (int64_t t = T - 1; t >= 0; --t) {
        const S* __restrict gst = gs + t * step + off;
        const S* __restrict ht = hb + t * BLOCK;
        for (int64_t i = 0; i < n; ++i)
            gz[i] = spk::lif_backward_step(ht[i], gst[i], gv[i], DETACH, tau, v_th, v_reset, alpha);
        const S* yt = y + t * step + off;
        for (int64_t i = 0; i < n; ++i) {
            const double g = gz[i];
            s1[i] += g;
            s2[i] += g * static_cast<double>(yt[i] - mu[PLANE ? 0 : i]);
        }
        if (out) std::memcpy(out + t * step + off, gz, n * sizeof(S));
    }
}

// A plane of channel c: the per-position sums s1, s2 of n positions added into acc[c] and acc[C + c].
inline void add_plane_sums(const double* s1, const double* s2, int64_t n, int64_t c, int64_t C, double* acc) {
    double a1 = 0.0, a2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        a1 += s1[i];
        a2 += s2[i];
    }
    acc[c] += a1;
    acc[C + c] += a2;
}

struct Grad {  // the per-channel inputs of backward
    const void *scale, *shift, *mean;
};

// The backward pass over units [begin, end): the per-channel sums added into acc[0, C), acc[C, 2C), gz into out
// unless out is null.
template <typename S, bool DETACH, typename Tau>
void backward_range(const S* gs, const S* y, S* out, const Grad& gr, const Dims& d, Tau tau, S v_th, S v_reset,
                    S alpha, int64_t begin, int64_t end, double* acc) {
    const int64_t step = d.A * d.C * d.P;
    const S* scale = static_cast<const S*>(gr.scale);
    const S* shift = static_cast<const S*>(gr.shift);
    const S* mean = static_cast<const S*>(gr.mean);
    std::vector<S> hbuf(d.T * BLOCK);
    S* hb = hbuf.data();
    alignas(64) S gv[BLOCK];
    alignas(64) double s1[BLOCK];
    alignas(64) double s2[BLOCK];
    segments(d, begin, end, [&](int64_t off, int64_t c, int64_t n) {
        if (d.P > 1)
            backward_block<S, true, DETACH>(gs, y, out, scale + c, shift + c, mean + c, off, step, d.T, n, tau, v_th,
                                            v_reset, alpha, hb, gv, s1, s2);
        else
            backward_block<S, false, DETACH>(gs, y, out, scale + c, shift + c, mean + c, off, step, d.T, n, tau, v_th,
                                             v_reset, alpha, hb, gv, s1, s2);
        if (d.P > 1) {
            add_plane_sums(s1, s2, n, c, d.C, acc);
        } else {
            for (int64_t i = 0; i < n; ++i) {
                acc[c + i] += s1[i];
                acc[d.C + c + i] += s2[i];
            }
        }
    });
}

// Pooling units: the work unit is a whole plane u (a * C + c), so that the pool sees every position of a step.
// Forward: each step's spikes go to a plane buffer and are pooled from there into out [T, A, C, pooled plane].
template <typename S, typename Tau>
void pool_forward_range(const S* y, S* out, const S* scale, const S* shift, const Dims& d, Tau tau, S v_th,
                        S v_reset, int64_t begin, int64_t end) {
    const int64_t step = d.A * d.C * d.P, Po = d.pooled_plane(), ostep = d.A * d.C * Po;
    std::vector<S> buf(2 * d.P);
    S* v = buf.data();
    S* sp = v + d.P;
    for (int64_t u = begin; u < end; ++u) {
        const S s0 = scale[u % d.C], h0 = shift[u % d.C];
        for (int64_t p = 0; p < d.P; ++p) v[p] = v_reset;
        for (int64_t t = 0; t < d.T; ++t) {
            const S* yt = y + t * step + u * d.P;
            SPK_IVDEP
            for (int64_t p = 0; p < d.P; ++p) {
                const S h = charge<S, LIF>(v[p], yt[p] * s0 + h0, tau, v_reset);
                const int32_t fire = h - v_th >= S(0);
                sp[p] = static_cast<S>(fire);
                v[p] = fire ? v_reset : h;
            }
            spk::maxpool_plane(sp, out + t * ostep + u * Po, d.P / d.W, d.W);
        }
    }
}

// Backward of pooling units, plane by plane: the membranes rebuilt from y into hb [T][P], then per step in reverse
// the pooled gradient gp routed to the spikes (spk::maxpool_plane_backward, the first spike of each window, as
// torch's pool), and the LIF backward as in backward_block (sums, and gz into out unless null; out is full size).
template <typename S, bool DETACH, typename Tau>
void pool_backward_range(const S* gp, const S* y, S* out, const Grad& gr, const Dims& d, Tau tau, S v_th, S v_reset,
                         S alpha, int64_t begin, int64_t end, double* acc) {
    const int64_t T = d.T, P = d.P, H = d.P / d.W, step = d.A * d.C * P, Po = d.pooled_plane(),
                  ostep = d.A * d.C * Po;
    std::vector<S> buf((T + 3) * P);
    S* __restrict hb = buf.data();
    S* __restrict gv = hb + T * P;  // the membrane, then the gradient carried back through it
    S* __restrict gs = gv + P;
    S* __restrict gz = gs + P;
    std::vector<double> sums(2 * P);
    double* __restrict s1 = sums.data();
    double* __restrict s2 = s1 + P;
    for (int64_t u = begin; u < end; ++u) {
        const int64_t c = u % d.C;
        const S s0 = static_cast<const S*>(gr.scale)[c], h0 = static_cast<const S*>(gr.shift)[c];
        const S mu = static_cast<const S*>(gr.mean)[c];
        for (int64_t p = 0; p < P; ++p) gv[p] = v_reset;
        for (int64_t t = 0; t < T; ++t) {
            const S* __restrict yt = y + t * step + u * P;
            S* __restrict ht = hb + t * P;
            for (int64_t p = 0; p < P; ++p) {
                const S h = charge<S, LIF>(gv[p], yt[p] * s0 + h0, tau, v_reset);
                ht[p] = h;
                gv[p] = h - v_th >= S(0) ? v_reset : h;
            }
        }
        for (int64_t p = 0; p < P; ++p) {
            gv[p] = S(0);
            s1[p] = s2[p] = 0.0;
        }
        for (int64_t t = T - 1; t >= 0; --t) {
            const S* __restrict ht = hb + t * P;
            spk::maxpool_plane_backward([&](int64_t e) { return ht[e] - v_th >= S(0); }, gp + t * ostep + u * Po, gs,
                                        H, d.W);
            for (int64_t p = 0; p < P; ++p)
                gz[p] = spk::lif_backward_step(ht[p], gs[p], gv[p], DETACH, tau, v_th, v_reset, alpha);
            const S* yt = y + t * step + u * P;
            for (int64_t p = 0; p < P; ++p) {
                s1[p] += gz[p];
                s2[p] += static_cast<double>(gz[p]) * static_cast<double>(yt[p] - mu);
            }
            if (out) std::memcpy(out + t * step + u * P, gz, P * sizeof(S));
        }
        add_plane_sums(s1, s2, P, c, d.C, acc);
    }
}

// Backward pass 2 over units [begin, end): out = gz * k1[c] + (y - mean[c]) * k2[c] + k3[c] from the gz that pass 1
// stored; out may be gz or y (each element is read before it is written).
template <typename S>
void apply_range(const S* gz, const S* y, S* out, const S* mean, const S* k, const Dims& d, int64_t begin,
                 int64_t end) {
    const int64_t step = d.A * d.C * d.P;
    const S *k1 = k, *k2 = k + d.C, *k3 = k + 2 * d.C;
    segments(d, begin, end, [&](int64_t off, int64_t c, int64_t n) {
        for (int64_t t = 0; t < d.T; ++t) {
            const S* g = gz + t * step + off;
            const S* yt = y + t * step + off;
            S* ot = out + t * step + off;
            if (d.P > 1) {
                const S a = k1[c], b = k2[c], m = mean[c], e = k3[c];
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) ot[i] = g[i] * a + (yt[i] - m) * b + e;
            } else {
                SPK_IVDEP
                for (int64_t i = 0; i < n; ++i) ot[i] = g[i] * k1[c + i] + (yt[i] - mean[c + i]) * k2[c + i] + k3[c + i];
            }
        }
    });
}

template <typename S>
void run_forward(const S* y, S* out, const S* scale, const S* shift, const Dims& d, double tau, double v_th,
                 double v_reset, int nthreads) {
    const S th = static_cast<S>(v_th), r = static_cast<S>(v_reset);
    spk::with_tau<S>(tau, [&](auto t) {
        spk::split_even(units(d), unit_cost(d), nthreads, [&](int64_t b, int64_t e) {
            if (d.W)
                pool_forward_range<S>(y, out, scale, shift, d, t, th, r, b, e);
            else
                forward_range<S>(y, out, scale, shift, d, t, th, r, b, e);
        });
    });
}

template <typename S, bool DETACH, typename Tau>
void run_backward_t(const S* gs, const S* y, S* out, const Grad& gr, const Dims& d, Tau tau, S v_th, S v_reset,
                    S alpha, double* sums, int nthreads) {
    reduce_units(d, nthreads, sums, [&](double* acc, int64_t b, int64_t e) {
        if (d.W)
            pool_backward_range<S, DETACH>(gs, y, out, gr, d, tau, v_th, v_reset, alpha, b, e, acc);
        else
            backward_range<S, DETACH>(gs, y, out, gr, d, tau, v_th, v_reset, alpha, b, e, acc);
    });
}

template <typename S>
void run_backward(const void* gs, const void* y, void* out, const Grad& gr, const Dims& d, double tau, double v_th,
                  double v_reset, double alpha, int detach, double* sums, int nthreads) {
    const S* g = static_cast<const S*>(gs);
    const S* yy = static_cast<const S*>(y);
    S* o = static_cast<S*>(out);
    const S th = static_cast<S>(v_th), r = static_cast<S>(v_reset), a = static_cast<S>(alpha);
    spk::with_tau<S>(tau, [&](auto t) {
        if (detach)
            run_backward_t<S, true>(g, yy, o, gr, d, t, th, r, a, sums, nthreads);
        else
            run_backward_t<S, false>(g, yy, o, gr, d, t, th, r, a, sums, nthreads);
    });
}

}  // namespace

extern "C" {

// out[0, C): per-channel sum of y; out[C, 2C): sum of y^2 (double).
void spk_bn_stats(int is_double, const void* y, int64_t T, int64_t A, int64_t C, int64_t P, double* out,
                  int nthreads) {
    const Dims d{T, A, C, P, 0};
    if (is_double)
        bn_stats(static_cast<const double*>(y), d, out, nthreads);
    else
        bn_stats(static_cast<const float*>(y), d, out, nthreads);
}

// Spikes of LIF(y * scale + shift) into out (may be y, unless W > 0). scale, shift: [C] in y's dtype. W > 0: planes
// of P / W by W, pooled: out is [T, A, C, pooled(P / W) * pooled(W)].
void spk_bn_lif_forward(int is_double, const void* y, void* out, const void* scale, const void* shift, int64_t T,
                        int64_t A, int64_t C, int64_t P, int64_t W, double tau, double v_th, double v_reset,
                        int nthreads) {
    const Dims d{T, A, C, P, W};
    if (is_double)
        run_forward(static_cast<const double*>(y), static_cast<double*>(out), static_cast<const double*>(scale),
                    static_cast<const double*>(shift), d, tau, v_th, v_reset, nthreads);
    else
        run_forward(static_cast<const float*>(y), static_cast<float*>(out), static_cast<const float*>(scale),
                    static_cast<const float*>(shift), d, tau, v_th, v_reset, nthreads);
}

// Backward pass 1 from gs = dL/dspikes (W > 0: of the pooled spikes): sums[0, C) = sum(gz), sums[C, 2C) =
// sum(gz * (y - mean)) per channel, gz = dL/dz itself into out (like y) unless out is null. scale, shift, mean: [C]
// in y's dtype.
void spk_bn_lif_backward(int is_double, const void* gs, const void* y, void* out, const void* scale, const void* shift,
                         const void* mean, int64_t T, int64_t A, int64_t C, int64_t P, int64_t W, double tau,
                         double v_th, double v_reset, double alpha, int detach_reset, double* sums, int nthreads) {
    const Dims d{T, A, C, P, W};
    const Grad gr{scale, shift, mean};
    if (is_double)
        run_backward<double>(gs, y, out, gr, d, tau, v_th, v_reset, alpha, detach_reset, sums, nthreads);
    else
        run_backward<float>(gs, y, out, gr, d, tau, v_th, v_reset, alpha, detach_reset, sums, nthreads);
}

// Backward pass 2 from the gz that pass 1 stored: out = gz * k[0] + (y - mean) * k[1] + k[2] per channel (k: [3, C]
// in y's dtype), one streaming pass; out may be gz or y. gz and y are full size (before any pool).
void spk_bn_apply_grad(int is_double, const void* gz, const void* y, void* out, const void* mean, const void* k,
                       int64_t T, int64_t A, int64_t C, int64_t P, int nthreads) {
    const Dims d{T, A, C, P, 0};
    spk::split_even(units(d), unit_cost(d), nthreads, [&](int64_t b, int64_t e) {
        if (is_double)
            apply_range(static_cast<const double*>(gz), static_cast<const double*>(y), static_cast<double*>(out),
                        static_cast<const double*>(mean), static_cast<const double*>(k), d, b, e);
        else
            apply_range(static_cast<const float*>(gz), static_cast<const float*>(y), static_cast<float*>(out),
                        static_cast<const float*>(mean), static_cast<const float*>(k), d, b, e);
    });
}

}  // extern "C"
