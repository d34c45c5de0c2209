#include "server/internal/artifact_staging.h"

#include <utility>

namespace saetrack::server {

void ArtifactStaging::Put(const std::string& task_id, int64_t epoch,
                          v1::ArtifactKind kind, std::string data) {
  auto shared = std::make_shared<const std::string>(std::move(data));
  absl::MutexLock lock(&mu_);
  for (auto it = staged_.lower_bound(Key{task_id, INT64_MIN, 0});
       it != staged_.end() && std::get<0>(it->first) == task_id;) {
    if (std::get<1>(it->first) != epoch ||
        std::get<2>(it->first) == static_cast<int>(kind)) {
      bytes_ -= static_cast<int64_t>(it->second->size());
      it = staged_.erase(it);
    } else {
      ++it;
    }
  }
  bytes_ += static_cast<int64_t>(shared->size());
  staged_[Key{task_id, epoch, static_cast<int>(kind)}] = std::move(shared);
}

std::shared_ptr<const std::string> ArtifactStaging::Find(
    const std::string& task_id, int64_t epoch, v1::ArtifactKind kind) const {
  absl::MutexLock lock(&mu_);
  auto it = staged_.find(Key{task_id, epoch, static_cast<int>(kind)});
  return it == staged_.end() ? nullptr : it->second;
}

void ArtifactStaging::DropTask(const std::string& task_id) {
  absl::MutexLock lock(&mu_);
  for (auto it = staged_.lower_bound(Key{task_id, INT64_MIN, 0});
       it != staged_.end() && std::get<0>(it->first) == task_id;) {
    bytes_ -= static_cast<int64_t>(it->second->size());
    it = staged_.erase(it);
  }
}

void ArtifactStaging::DropLease(const std::string& task_id, int64_t epoch) {
  absl::MutexLock lock(&mu_);
  for (auto it = staged_.lower_bound(Key{task_id, epoch, 0});
       it != staged_.end() && std::get<0>(it->first) == task_id &&
       std::get<1>(it->first) == epoch;) {
    bytes_ -= static_cast<int64_t>(it->second->size());
    it = staged_.erase(it);
  }
}

int64_t ArtifactStaging::DropStale(
    const std::function<bool(const std::string&, int64_t)>& stale) {
  absl::MutexLock lock(&mu_);
  int64_t freed = 0;
  for (auto it = staged_.begin(); it != staged_.end();) {
    if (stale(std::get<0>(it->first), std::get<1>(it->first))) {
      freed += static_cast<int64_t>(it->second->size());
      it = staged_.erase(it);
    } else {
      ++it;
    }
  }
  bytes_ -= freed;
  return freed;
}

int64_t ArtifactStaging::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace saetrack::server
