// Split [0, N) over up to nthreads std::threads, in chunks of whole 64-unit blocks, each unit costing `T`.
// Small jobs (N * T below 64 Ki) stay on the calling thread.
#pragma once

#include <cstdint>
#include <thread>
#include <vector>

namespace spk {

template <typename F>
inline void parallel(int64_t N, int64_t T, int nthreads, F fn) {
    int64_t work = N * T;
    int64_t max_threads = work / 65536 + 1;
    int64_t nt = nthreads < 1 ? 1 : nthreads;
    if (nt > max_threads) nt = max_threads;
    if (nt > N / 64 + 1) nt = N / 64 + 1;
    if (nt <= 1) {
        fn(0, N);
        return;
    }
    int64_t chunk = ((N + nt - 1) / nt + 63) / 64 * 64;
    std::vector<std::thread> pool;
    for (int64_t k = 1; k < nt; ++k) {
        int64_t b = k * chunk, e = b + chunk < N ? b + chunk : N;
        if (b < e) pool.emplace_back(fn, b, e);
    }
    fn(0, chunk < N ? chunk : N);
    for (auto& th : pool) th.join();
}

}  // namespace spk
