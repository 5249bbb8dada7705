// Work-claiming parallel loops for the CPU kernels.
//
// at::parallel_for (OpenMP) splits a range statically over a thread team and ends with a
// barrier. On a shared, oversubscribed machine (the usual case for a 2-core CI box or a
// laptop running a data loader) that is costly twice over: the team's threads spin while they
// wait for a descheduled member, taking the cores from whoever would run, and the caller
// waits for the slowest share. Measured on 2 busy cores, a tensor-product convolution took 39 ms
// with 2 OpenMP threads against 8 ms on one.
//
// Here the caller claims pieces of work itself, next to helper threads that claim the rest;
// a helper that the OS schedules late finds nothing left and leaves, and nobody spins on a
// barrier. The caller only waits for pieces a helper has claimed and is running. Results do
// not depend on which thread runs a piece, so kernels that were deterministic stay so.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace eqscale {

// Runs task(i) for every i in [0, n), on the calling thread and up to at::get_num_threads() - 1
// helper threads, and returns once every task has completed. The first exception thrown by a
// task is rethrown here (later tasks still run, so nothing is left half-claimed).
template <class Task>
void run_tasks(int64_t n, const Task& task) {
  if (n <= 0) return;
  const int64_t helpers = at::in_parallel_region() ? 0 : std::min<int64_t>(n, at::get_num_threads()) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex error_lock;
    std::exception_ptr error;
  };
  // Shared ownership: a helper that starts after the caller has returned still finds valid
  // counters, sees that every task is claimed, and leaves without touching `task`.
  auto state = std::make_shared<State>();
  const Task* shared_task = &task;
  auto work = [state, shared_task, n] {
    for (int64_t i = state->next++; i < n; i = state->next++) {
      try {
        (*shared_task)(i);
      } catch (...) {
        std::lock_guard<std::mutex> guard(state->error_lock);
        if (!state->error) state->error = std::current_exception();
      }
      state->done++;
    }
  };
  for (int64_t h = 0; h < helpers; ++h) std::thread(work).detach();
  work();
  while (state->done.load() < n) std::this_thread::yield();
  if (state->error) std::rethrow_exception(state->error);
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
