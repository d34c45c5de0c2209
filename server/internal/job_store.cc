#include "server/internal/job_store.h"

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "storage/keys.h"

namespace saetrack::server {
namespace {

using storage::Column;

constexpr char kWorkerPrefix[] = "worker/";

absl::StatusOr<int64_t> ReadCounter(const storage::KvStore& store,
                                    const std::string& name,
                                    int64_t default_value) {
  absl::StatusOr<std::string> value = store.Get(Column::kMeta, name);
  if (absl::IsNotFound(value.status())) return default_value;
  if (!value.ok()) return value.status();
  int64_t n = 0;
  if (!absl::SimpleAtoi(*value, &n)) {
    return absl::DataLossError(absl::StrCat(
        "meta counter ", name, " is not a number: '", *value, "'"));
  }
  return n;
}

}  // namespace

absl::StatusOr<JobStore::Snapshot> JobStore::LoadAll() const {
  Snapshot snapshot;
  absl::Status parse_error;
  absl::Status s = store_->Scan(
      Column::kJobs, "", "", [&](std::string_view key, std::string_view value) {
        v1::Job job;
        if (!job.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          parse_error = absl::DataLossError(
              absl::StrCat("job record '", std::string(key), "' is corrupt"));
          return false;
        }
        snapshot.jobs.push_back(std::move(job));
        return true;
      });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  s = store_->Scan(
      Column::kTasks, "", "", [&](std::string_view, std::string_view value) {
        TaskRecord task;
        if (!task.ParseFromArray(value.data(),
                                 static_cast<int>(value.size()))) {
          parse_error = absl::DataLossError("a task record is corrupt");
          return false;
        }
        snapshot.tasks.push_back(std::move(task));
        return true;
      });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  absl::StatusOr<int64_t> seq = ReadCounter(*store_, kNextJobSeq, 1);
  if (!seq.ok()) return seq.status();
  snapshot.next_job_seq = *seq;
  seq = ReadCounter(*store_, kNextWorkerSeq, 1);
  if (!seq.ok()) return seq.status();
  snapshot.next_worker_seq = *seq;
  s = store_->Scan(
      Column::kMeta, kWorkerPrefix, "",
      [&](std::string_view key, std::string_view value) {
        WorkerRecord worker;
        if (!worker.ParseFromArray(value.data(),
                                   static_cast<int>(value.size()))) {
          parse_error = absl::DataLossError(absl::StrCat(
              "worker record '", std::string(key), "' is corrupt"));
          return false;
        }
        snapshot.workers.push_back(std::move(worker));
        return true;
      });
  if (!s.ok()) return s;
  if (!parse_error.ok()) return parse_error;
  return snapshot;
}

absl::StatusOr<std::optional<IdempotencyRecord>> JobStore::FindRequest(
    const std::string& request_id) const {
  absl::StatusOr<std::string> value =
      store_->Get(Column::kIdempotency, request_id);
  if (absl::IsNotFound(value.status())) return std::nullopt;
  if (!value.ok()) return value.status();
  IdempotencyRecord record;
  if (!record.ParseFromString(*value)) {
    return absl::DataLossError(absl::StrCat(
        "idempotency record of request_id '", request_id, "' is corrupt"));
  }
  return record;
}

void JobStore::PutJob(const v1::Job& job, storage::WriteBatch* batch) {
  batch->Put(Column::kJobs, storage::JobKey(job.job_id()),
             job.SerializeAsString());
}

void JobStore::PutTask(const TaskRecord& task, storage::WriteBatch* batch) {
  batch->Put(
      Column::kTasks,
      storage::TaskKey(task.job_id(), task.hook_index(), task.chain_index(),
                       static_cast<int32_t>(task.kind())),
      task.SerializeAsString());
}

void JobStore::PutRequest(const std::string& request_id,
                          const IdempotencyRecord& record,
                          storage::WriteBatch* batch) {
  batch->Put(Column::kIdempotency, request_id, record.SerializeAsString());
}

void JobStore::PutWorker(const WorkerRecord& worker,
                         storage::WriteBatch* batch) {
  batch->Put(Column::kMeta, absl::StrCat(kWorkerPrefix, worker.worker_id()),
             worker.SerializeAsString());
}

void JobStore::PutCounter(std::string_view name, int64_t value,
                          storage::WriteBatch* batch) {
  batch->Put(Column::kMeta, std::string(name), absl::StrCat(value));
}

}  // namespace saetrack::server
