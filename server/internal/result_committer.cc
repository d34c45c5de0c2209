#include "server/internal/result_committer.h"

#include <utility>

#include "server/internal/job_store.h"

namespace saetrack::server {

absl::Status ResultCommitter::Commit(storage::WriteBatch batch,
                                     const RecordChanges& changes) const {
  for (const TaskRecord& task : changes.tasks) JobStore::PutTask(task, &batch);
  for (const v1::Job& job : changes.jobs) JobStore::PutJob(job, &batch);
  const size_t bytes = batch.ByteSize();
  if (absl::Status s = store_->Write(batch, {.sync = true}); !s.ok()) return s;
  metrics_->BytesWritten(bytes);
  return absl::OkStatus();
}

}  // namespace saetrack::server
