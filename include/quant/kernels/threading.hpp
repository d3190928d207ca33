// quant/kernels/threading.hpp: running kernels on the caller's threads.
//
// quant never starts threads behind the caller's back. Every kernel can run on a row range, and
// the parallel entry points take an executor: any callable
//
//   exec(std::size_t n, Task&& task)   // runs task(i) for every i in [0, n), returns when all ran
//
// which is how an inference engine hands quant its own pool (a lambda over its parallel-for). For
// callers without one, thread_pool is a small pool with that call operator: the calling thread
// takes part, workers sleep on a condition variable between calls, and an exception thrown by a
// task is rethrown to the caller after every task has finished.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../core/error.hpp"

QUANT_NAMESPACE_BEGIN

/// What quant accepts as an executor.
template <class E>
concept executor = requires(E& e, void (*task)(std::size_t)) { e(std::size_t{1}, task); };

/// Runs every task on the calling thread, in order.
struct inline_executor {
  template <class Task>
  void operator()(std::size_t n, Task&& task) const {
    for (std::size_t i = 0; i < n; ++i) task(i);
  }
};

/// A fixed pool of size() - 1 worker threads plus the calling thread.
class thread_pool {
 public:
  /// threads = 0 means std::thread::hardware_concurrency().
  explicit thread_pool(std::size_t threads = 0) {
    if (threads == 0) threads = std::max<std::size_t>(1, std::thread::hardware_concurrency());
    workers_.reserve(threads - 1);
    for (std::size_t i = 0; i + 1 < threads; ++i) workers_.emplace_back([this] { work(); });
  }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  ~thread_pool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  /// Threads that run tasks, the caller included.
  std::size_t size() const noexcept { return workers_.size() + 1; }

  /// Runs task(i) for i in [0, n) on the pool and the calling thread; returns when all are done.
  /// Calls from several threads at once are serialized.
  template <class Task>
  void operator()(std::size_t n, Task&& task) {
    if (n == 0) return;
    if (workers_.empty() || n == 1) {
      for (std::size_t i = 0; i < n; ++i) task(i);
      return;
    }
    std::lock_guard call(call_mutex_);
    std::function<void(std::size_t)> f = [&task](std::size_t i) { task(i); };
    {
      std::lock_guard lock(mutex_);
      task_ = &f;
      count_ = n;
      next_ = 0;
      pending_ = n;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    run_tasks();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  // Takes tasks until none is left; returns after its last one finished.
  void run_tasks() {
    for (;;) {
      std::size_t i;
      const std::function<void(std::size_t)>* f;
      {
        std::lock_guard lock(mutex_);
        if (next_ >= count_) return;
        i = next_++;
        f = task_;
      }
      try {
        (*f)(i);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  void work() {
    std::size_t seen = 0;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      run_tasks();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::size_t)>* task_ = nullptr;
  std::size_t count_ = 0, next_ = 0, pending_ = 0, generation_ = 0;
  std::exception_ptr error_;
  bool stop_ = false;
};

namespace detail {
/// Splits [0, rows) into `parts` contiguous ranges whose sizes are multiples of `align` (but the
/// last); returns range i.
inline std::pair<std::size_t, std::size_t> split_rows(std::size_t rows, std::size_t parts, std::size_t i,
                                                      std::size_t align = 4) noexcept {
  const std::size_t units = (rows + align - 1) / align;
  const std::size_t per = units / parts, extra = units % parts;
  const std::size_t u0 = i * per + std::min(i, extra);
  const std::size_t u1 = u0 + per + (i < extra ? 1 : 0);
  return {std::min(rows, u0 * align), std::min(rows, u1 * align)};
}
}  // namespace detail

QUANT_NAMESPACE_END
