// Who holds which task, until when.
#ifndef SAETRACK_SERVER_INTERNAL_LEASE_TABLE_H_
#define SAETRACK_SERVER_INTERNAL_LEASE_TABLE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace saetrack::server {

// The live leases: task id -> (epoch, deadline). Holds no persistent state
// (after a restart every RUNNING task gets a fresh lease). Thread-compatible:
// the owner (TaskScheduler) serialises access under its mutex.
class LeaseTable {
 public:
  struct Lease {
    int64_t epoch = 0;
    absl::Time deadline;
  };

  // Starts or replaces the lease of `task_id`.
  void Grant(const std::string& task_id, int64_t epoch, absl::Time deadline);
  // Extends the lease when `epoch` is current. Returns false otherwise.
  bool Renew(const std::string& task_id, int64_t epoch, absl::Time deadline);
  void Release(const std::string& task_id);
  // The lease of `task_id`, or null. Valid until the next mutation.
  const Lease* Find(const std::string& task_id) const;
  // Tasks whose deadline is at or before `now`, in task-id order.
  std::vector<std::string> ExpiredAt(absl::Time now) const;
  size_t size() const { return leases_.size(); }

 private:
  std::map<std::string, Lease> leases_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_LEASE_TABLE_H_
