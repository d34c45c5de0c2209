// The coordinator's source of time for lease deadlines and record timestamps.
// Injected through CoordinatorOptions so that tests can expire leases without
// sleeping.
#ifndef SAETRACK_SERVER_CLOCK_H_
#define SAETRACK_SERVER_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace saetrack {

// Implementations must be thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
};

// Wall-clock time (absl::Now()). Thread-safe, stateless.
class SystemClock final : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
};

// A clock that moves only when told to. Thread-safe.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000))
      : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace saetrack

#endif  // SAETRACK_SERVER_CLOCK_H_
