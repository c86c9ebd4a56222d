// Split [0, N) over up to nthreads std::threads, in chunks of whole 64-unit blocks, each unit costing `T`.
// Small jobs (N * T below 64 Ki) stay on the calling thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// Ask Linux for transparent huge pages on the 2 MiB-aligned interior of a large output buffer about to be written
// for the first time: a fresh 25 MB tensor otherwise costs some 6,000 page faults, as much time as the kernel.
// A hint only (no effect where THP is off or not Linux).
inline void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr std::uintptr_t huge = std::uintptr_t(1) << 21;
    if (p == nullptr || bytes < 4 * huge) return;
    const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(p) + huge - 1) & ~(huge - 1);
    const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(huge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

}  // namespace spk
