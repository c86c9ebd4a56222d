// Work splitting shared by the kernels. With OpenMP (the library is built with -fopenmp where the compiler allows,
// and links the libgomp torch has already loaded), the pieces run on torch's own intra-op thread pool: no thread is
// created per call, and no worker of ours competes for a core with torch's workers still spinning after the
// previous op. Without OpenMP each call starts std::threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace spk {

inline const void* openmp_symbol() {
#if defined(_OPENMP)
    return reinterpret_cast<const void*>(&omp_get_max_threads);
#else
    return nullptr;
#endif
}

// Run task(k) for k in [0, n) on up to n threads, the calling thread included.
template <typename F>
inline void run_tasks(int64_t n, F task) {
    if (n <= 1) {
        if (n == 1) task(int64_t{0});
        return;
    }
#if defined(_OPENMP)
#pragma omp parallel num_threads(static_cast<int>(n))
    {
        const int64_t step = omp_get_num_threads();  // may be fewer than asked for: each thread takes a stride
        for (int64_t k = omp_get_thread_num(); k < n; k += step) task(k);
    }
#else
    std::vector<std::thread> pool;
    for (int64_t k = 1; k < n; ++k) pool.emplace_back(task, k);
    task(int64_t{0});
    for (auto& th : pool) th.join();
#endif
}

// Split [0, N) over up to nthreads threads, in chunks of whole 64-unit blocks, each unit costing `T`.
// Small jobs (N * T below 64 Ki) stay on the calling thread.
template <typename F>
inline void parallel(int64_t N, int64_t T, int nthreads, F fn) {
    int64_t work = N * T;
    int64_t max_threads = work / 65536 + 1;
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    if (nt > max_threads) nt = max_threads;
    if (nt > N / 64 + 1) nt = N / 64 + 1;
    if (nt <= 1) {
        fn(int64_t{0}, N);
        return;
    }
    const int64_t chunk = ((N + nt - 1) / nt + 63) / 64 * 64;
    run_tasks(nt, [&](int64_t k) {
        const int64_t b = k * chunk, e = b + chunk < N ? b + chunk : N;
        if (b < e) fn(b, e);
    });
}

// How many threads split_even uses for N units of cost `cost` each: at most nthreads and N, one per 64 Ki of work.
inline int64_t even_threads(int64_t N, int64_t cost, int nthreads) {
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    const int64_t most = N * cost / 65536 + 1;
    if (nt > most) nt = most;
    if (nt > N) nt = N;
    return nt < 1 ? 1 : nt;
}

// Run fn(begin, end) on up to nthreads threads over [0, N) split evenly (units of cost `cost`); small jobs stay on
// the calling thread. Unlike parallel() it splits below 64 units (few images, few channels).
template <typename F>
inline void split_even(int64_t N, int64_t cost, int nthreads, F fn) {
    const int64_t nt = even_threads(N, cost, nthreads);
    if (nt <= 1) {
        fn(int64_t{0}, N);
        return;
    }
    run_tasks(nt, [&](int64_t k) { fn(N * k / nt, N * (k + 1) / nt); });
}

// Deal [0, N) out in blocks of `block` units, in turn, to up to nthreads threads: thread k of nt runs
// fn(begin, end, k) for blocks k, k + nt, k + 2 nt, ... (k < nthreads indexes per-thread scratch). For work whose
// cost drifts along [0, N) (rows ordered by time step, later steps firing more), where contiguous halves would leave
// one thread waiting for the other.
template <typename F>
inline void deal_blocks(int64_t N, int64_t block, int64_t block_cost, int nthreads, F fn) {
    const int64_t blocks = (N + block - 1) / block;
    const int64_t nt = even_threads(blocks, block_cost, nthreads);
    run_tasks(nt, [&](int64_t k) {
        for (int64_t b = k * block; b < N; b += nt * block) fn(b, b + block < N ? b + block : N, k);
    });
}

}  // namespace spk
