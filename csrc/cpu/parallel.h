// Work-claiming parallel loops for the CPU kernels.
//
// at::parallel_for splits a range statically over torch's OpenMP team: on a shared, oversubscribed
// machine (a 2-core CI box, a laptop running a data loader) the caller then waits at the team's
// barrier for the slowest share, and a descheduled member's share waits with it. Measured on 2 busy
// cores, a tensor-product convolution took 39 ms with 2 OpenMP threads against 8 ms on one.
//
// Here every thread claims pieces of work from a shared counter: a member that the OS schedules
// late finds the work done by the others and only has to arrive. The pieces run on the same
// OpenMP team as torch's own operators, not on threads of ours: after each torch operator that
// team spins for a while waiting for more work, and helper threads started next to it had to share
// the cores with the spinning ones. Measured side by side (2 threads, medians of alternated runs),
// the team made tp_conv's forward+backward 1.2-1.7x faster at L = 1-3 (2x at L = 1 with a third
// process spinning), spherical harmonics 1.3-1.8x, the radius graph 1.2x and so2_conv's forward
// 1.4x; no case was slower beyond noise. Results do not depend on which thread runs a piece, so
// kernels that were deterministic stay so.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace eqscale {

// Runs task(i) for every i in [0, n) on torch's intra-op threads (the caller among them) and returns
// once every task has completed. The first exception thrown by a
// task is rethrown here (later tasks still run, so nothing is left half-claimed).
template <class Task>
void run_tasks(int64_t n, const Task& task) {
  if (n <= 0) return;
  if (n == 1 || at::in_parallel_region() || at::get_num_threads() <= 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::mutex error_lock;
  std::exception_ptr error;
  auto work = [&] {
    for (int64_t i = next++; i < n; i = next++) {
      try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> guard(error_lock);
        if (!error) error = std::current_exception();
      }
    }
  };
#ifdef _OPENMP
  // The whole team, as at::parallel_for does: a num_threads clause would make GOMP rebuild its
  // thread pool (pytorch/pytorch#32008). Members beyond the n tasks find nothing and leave.
#pragma omp parallel
  work();
#else
  std::vector<std::thread> helpers;
  for (int64_t h = 1; h < std::min<int64_t>(n, at::get_num_threads()); ++h) helpers.emplace_back(work);
  work();
  for (std::thread& helper : helpers) helper.join();
#endif
  if (error) std::rethrow_exception(error);
}

// at::parallel_for's contract (f(begin, end) over sub-ranges of at least `grain` items, inline
// when the range is small) on run_tasks. The pieces shrink towards the end of the range (guided
// scheduling): each takes about a 2 * threads-th of what is left, so that the pieces still running
// when the others run out of work are short. Four equal pieces per thread left one thread idle
// for up to an eighth of the work at the end.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  grain = std::max<int64_t>(grain, 1);
  if (threads <= 1 || n <= grain) {
    f(begin, end);
    return;
  }
  std::vector<int64_t> cuts{begin};
  for (int64_t left = n; left > 0;) {
    const int64_t size = std::min(left, std::max(grain, (left + 2 * threads - 1) / (2 * threads)));
    cuts.push_back(cuts.back() + size);
    left -= size;
  }
  run_tasks(static_cast<int64_t>(cuts.size()) - 1, [&](int64_t p) { f(cuts[p], cuts[p + 1]); });
}

}  // namespace eqscale
