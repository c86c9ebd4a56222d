// The LIF arithmetic shared by the neuron kernels (neurons.cpp) and the batch-norm + LIF units (bn_neuron.cpp), so
// that both charge, fire and take the surrogate with the very same operations (bit-identical spikes).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__clang__)
#define SPK_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define SPK_IVDEP _Pragma("GCC ivdep")
#else
#define SPK_IVDEP
#endif

namespace spk {

enum Kind { LIF = 0, TERNARY_LIF = 1, TERNARY_GUO = 2 };

// a * b + c, in one rounding where the instruction set has FMA: for the surrogate gradient's arithmetic, which no
// spike depends on (the charge and the threshold test keep separate roundings, so spikes stay bit-identical).
inline float madd(float a, float b, float c) {
#if defined(__FMA__)
    return __builtin_fmaf(a, b, c);
#else
    return a * b + c;
#endif
}

// exp(x) for x <= 0, branch-free so that the compiler vectorises the loops that call it (Cephes expf,
// about 1 ulp). Needs -fno-trapping-math to vectorise; that flag changes no result.
inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    int32_t ni = static_cast<int32_t>(x * 1.44269504088896341f - 0.5f);  // nearest integer (x <= 0)
    float n = static_cast<float>(ni);
    float r = madd(n, -0.693359375f, x);
    r = madd(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = madd(p, r, 1.3981999507e-3f);
    p = madd(p, r, 8.3334519073e-3f);
    p = madd(p, r, 4.1665795894e-2f);
    p = madd(p, r, 1.6666665459e-1f);
    p = madd(p, r, 5.0000001201e-1f);
    float y = madd(p, r * r, r) + 1.0f;
    int32_t bits = (ni + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return y * scale;
}

inline double exp_neg(double x) { return std::exp(x); }

// alpha * sigmoid(alpha u) * (1 - sigmoid(alpha u)), written stably as alpha e / (1 + e)^2 with e = exp(-|alpha u|).
template <typename S>
inline S sigmoid_grad(S u, S alpha) {
    S z = alpha * u;
    S e = exp_neg(-std::fabs(z));
    S d = S(1) + e;
    return alpha * e / (d * d);
}

// Division by the membrane time constant tau. Where tau is a power of two (2 in every published configuration),
// x * (1 / tau) is exactly x / tau and several times cheaper than a division, so the kernels are built for both
// forms and with_tau picks one per call: the results are the same bit for bit either way.
template <typename S>
struct DivTau {
    S tau;
    S operator()(S x) const { return x / tau; }
};

template <typename S>
struct MulTau {
    S inv;
    S operator()(S x) const { return x * inv; }
};

// Calls f(MulTau) when tau is a power of two, f(DivTau) otherwise.
template <typename S, typename F>
inline void with_tau(double tau, F f) {
    int exponent = 0;
    if (std::frexp(tau, &exponent) == 0.5)
        f(MulTau<S>{static_cast<S>(1.0 / tau)});
    else
        f(DivTau<S>{static_cast<S>(tau)});
}

// Membrane after charging, h = v + (x - (v - v_reset)) / tau (the ternary LIF form rests at 0).
template <typename S, int KIND, typename Tau>
inline S charge(S v, S x, Tau tau, S v_reset) {
    return KIND == LIF ? v + tau(x - (v - v_reset)) : v + tau(x - v);
}

// Whether the neuron fires (and so resets) at membrane h: h >= v_th, or for the ternary form also -h >= v_th.
template <typename S, int KIND>
inline int32_t resets(S h, S v_th) {
    return KIND == LIF ? int32_t(h - v_th >= S(0)) : int32_t((h - v_th >= S(0)) != (-h - v_th >= S(0)));
}

// One LIF step backward from the membrane h: dL/dx of the step, given dL/dspike gs and the gradient gv carried
// back from the next step's membrane (updated here). Without detach, the reset v = v_reset after a spike passes
// gradient through it: v_reset - h.
template <typename S, typename Tau>
inline S lif_backward_step(S h, S gs, S& gv, bool detach, Tau tau, S v_th, S v_reset, S alpha) {
    const S u = h - v_th;
    const S g_spike = detach ? gs : gs + gv * (v_reset - h);
    const S gh = g_spike * sigmoid_grad(u, alpha) + gv * (u >= S(0) ? S(0) : S(1));
    const S g = tau(gh);
    gv = gh - g;
    return g;
}

}  // namespace spk
