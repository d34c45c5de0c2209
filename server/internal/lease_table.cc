#include "server/internal/lease_table.h"

namespace saetrack::server {

void LeaseTable::Grant(const std::string& task_id, int64_t epoch,
                       absl::Time deadline) {
  leases_[task_id] = Lease{epoch, deadline};
}

bool LeaseTable::Renew(const std::string& task_id, int64_t epoch,
                       absl::Time deadline) {
  auto it = leases_.find(task_id);
  if (it == leases_.end() || it->second.epoch != epoch) return false;
  it->second.deadline = deadline;
  return true;
}

void LeaseTable::Release(const std::string& task_id) { leases_.erase(task_id); }

const LeaseTable::Lease* LeaseTable::Find(const std::string& task_id) const {
  auto it = leases_.find(task_id);
  return it == leases_.end() ? nullptr : &it->second;
}

std::vector<std::string> LeaseTable::ExpiredAt(absl::Time now) const {
  std::vector<std::string> expired;
  for (const auto& [task_id, lease] : leases_) {
    if (lease.deadline <= now) expired.push_back(task_id);
  }
  return expired;
}

}  // namespace saetrack::server
