// The RocksDB KvStore. This file is the only place where rocksdb::Status is
// converted to absl::Status.
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/utilities/checkpoint.h"
#include "rocksdb/write_batch.h"
#include "storage/kv_store.h"

namespace saetrack::storage {
namespace {

absl::StatusCode CodeOf(const rocksdb::Status& s) {
  if (s.IsNotFound()) return absl::StatusCode::kNotFound;
  if (s.IsCorruption()) return absl::StatusCode::kDataLoss;
  if (s.IsInvalidArgument()) return absl::StatusCode::kInvalidArgument;
  if (s.IsNotSupported()) return absl::StatusCode::kUnimplemented;
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) {
    return absl::StatusCode::kUnavailable;
  }
  if (s.IsAborted()) return absl::StatusCode::kAborted;
  if (s.IsIncomplete()) return absl::StatusCode::kUnavailable;
  if (s.IsShutdownInProgress()) return absl::StatusCode::kUnavailable;
  return absl::StatusCode::kInternal;  // IOError and the rest.
}

// `what` says which operation failed, e.g. "open rocksdb at '/data'".
absl::Status FromRocksDb(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(CodeOf(s),
                      absl::StrCat(std::string(what), ": ", s.ToString()));
}

// The smallest string greater than every string starting with `prefix`, or
// empty when there is none (empty prefix or all 0xFF).
std::string PrefixSuccessor(std::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    unsigned char last = static_cast<unsigned char>(s.back());
    if (last != 0xFF) {
      s.back() = static_cast<char>(last + 1);
      return s;
    }
    s.pop_back();
  }
  return s;
}

rocksdb::Slice ToSlice(std::string_view s) {
  return rocksdb::Slice(s.data(), s.size());
}

class RocksDbStore final : public KvStore {
 public:
  // Takes ownership of `db` and `handles`; handles_[i] is Column i.
  RocksDbStore(std::string path, rocksdb::DB* db,
               std::vector<rocksdb::ColumnFamilyHandle*> handles,
               std::vector<rocksdb::ColumnFamilyHandle*> foreign_handles)
      : path_(std::move(path)),
        db_(db),
        handles_(std::move(handles)),
        foreign_handles_(std::move(foreign_handles)) {}

  ~RocksDbStore() override {
    for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
    for (auto* h : foreign_handles_) db_->DestroyColumnFamilyHandle(h);
    db_->Close().PermitUncheckedError();
  }

  absl::StatusOr<std::string> Get(Column column,
                                  std::string_view key) const override {
    std::string value;
    rocksdb::Status s =
        db_->Get(rocksdb::ReadOptions(), Handle(column), ToSlice(key), &value);
    if (s.IsNotFound()) {
      return absl::NotFoundError(
          absl::StrCat("key not found in ", std::string(ColumnName(column))));
    }
    if (!s.ok()) {
      return FromRocksDb(
          s, absl::StrCat("get from ", std::string(ColumnName(column))));
    }
    return value;
  }

  absl::Status Write(const WriteBatch& batch,
                     const WriteOptions& options) override {
    rocksdb::WriteBatch rb;
    for (const WriteBatch::Op& op : batch.ops()) {
      rocksdb::Status s =
          op.type == WriteBatch::OpType::kPut
              ? rb.Put(Handle(op.column), ToSlice(op.key), ToSlice(op.value))
              : rb.Delete(Handle(op.column), ToSlice(op.key));
      if (!s.ok()) return FromRocksDb(s, "build write batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = options.sync;
    return FromRocksDb(db_->Write(wo, &rb),
                       absl::StrCat("write to rocksdb at '", path_, "'"));
  }

  absl::Status Scan(Column column, std::string_view prefix,
                    std::string_view start, ScanVisitor visit) const override {
    rocksdb::ReadOptions ro;
    std::string upper = PrefixSuccessor(prefix);
    rocksdb::Slice upper_slice(upper);
    if (!upper.empty()) ro.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, Handle(column)));
    std::string_view first = start > prefix ? start : prefix;
    for (it->Seek(ToSlice(first)); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key();
      std::string_view key(k.data(), k.size());
      if (key.substr(0, prefix.size()) != prefix) break;
      rocksdb::Slice v = it->value();
      if (!visit(key, std::string_view(v.data(), v.size()))) break;
    }
    return FromRocksDb(it->status(),
                       absl::StrCat("scan ", std::string(ColumnName(column))));
  }

  absl::StatusOr<uint64_t> LiveDataBytes() const override {
    uint64_t total = 0;
    for (rocksdb::ColumnFamilyHandle* h : handles_) {
      for (const std::string& property :
           {rocksdb::DB::Properties::kTotalSstFilesSize,
            rocksdb::DB::Properties::kLiveBlobFileSize}) {
        uint64_t value = 0;
        if (!db_->GetIntProperty(h, property, &value)) {
          return absl::InternalError(absl::StrCat("rocksdb at '", path_,
                                                  "': no property ", property,
                                                  " for ", h->GetName()));
        }
        total += value;
      }
    }
    return total;
  }

  absl::Status Checkpoint(const std::string& dir) override {
    const std::string what =
        absl::StrCat("checkpoint of rocksdb at '", path_, "' to '", dir, "'");
    const std::filesystem::path p(dir);
    if (dir.empty() || !p.is_absolute()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": must be an absolute path"));
    }
    std::error_code ec;
    if (std::filesystem::symlink_status(p, ec).type() !=
        std::filesystem::file_type::not_found) {
      if (ec) {
        return absl::FailedPreconditionError(
            absl::StrCat(what, ": ", ec.message()));
      }
      return absl::AlreadyExistsError(absl::StrCat(what, ": already exists"));
    }
    if (!std::filesystem::is_directory(p.parent_path(), ec)) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": parent directory '", p.parent_path().string(),
                       "' does not exist"));
    }
    rocksdb::Checkpoint* raw = nullptr;
    rocksdb::Status s = rocksdb::Checkpoint::Create(db_, &raw);
    if (!s.ok()) return FromRocksDb(s, what);
    std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
    // log_size_for_flush 0: flush memtables first so that the copy holds
    // every acknowledged write in SST files.
    return FromRocksDb(checkpoint->CreateCheckpoint(dir, 0), what);
  }

 private:
  rocksdb::ColumnFamilyHandle* Handle(Column column) const {
    return handles_[static_cast<int>(column)];
  }

  const std::string path_;
  rocksdb::DB* const db_;  // Owned; closed and deleted by the destructor.
  const std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  // Column families found on disk that this version does not use; RocksDB
  // requires opening every existing family.
  const std::vector<rocksdb::ColumnFamilyHandle*> foreign_handles_;
};

rocksdb::ColumnFamilyOptions ColumnOptions(Column column,
                                           const RocksDbStoreOptions& opts) {
  rocksdb::ColumnFamilyOptions cf;
  if (column == Column::kSaeWeights) {
    cf.enable_blob_files = true;
    cf.min_blob_size = opts.min_blob_size;
    cf.enable_blob_garbage_collection = true;
  }
  return cf;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksDbStore(
    const RocksDbStoreOptions& options) {
  const std::string what = absl::StrCat("open rocksdb at '", options.path, "'");
  if (options.path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": empty path"));
  }
  // RocksDB creates only the last path component; create the rest so that a
  // fresh --data_dir works.
  std::error_code ec;
  std::filesystem::create_directories(options.path, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": cannot create directory: ", ec.message()));
  }
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = options.background_jobs;

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName,
                           rocksdb::ColumnFamilyOptions());
  std::set<std::string> ours = {rocksdb::kDefaultColumnFamilyName};
  for (int i = 0; i < kNumColumns; ++i) {
    Column c = static_cast<Column>(i);
    descriptors.emplace_back(std::string(ColumnName(c)),
                             ColumnOptions(c, options));
    ours.insert(std::string(ColumnName(c)));
  }
  // Families created by a newer version must be opened too.
  std::vector<std::string> existing;
  if (rocksdb::DB::ListColumnFamilies(db_options, options.path, &existing)
          .ok()) {
    for (const std::string& name : existing) {
      if (ours.count(name) == 0) {
        descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
      }
    }
  }

  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s =
      rocksdb::DB::Open(db_options, options.path, descriptors, &handles, &db);
  if (!s.ok()) return FromRocksDb(s, what);

  // handles[0] is the default family (unused, RocksDB keeps it open itself
  // but the handle still must be destroyed).
  std::vector<rocksdb::ColumnFamilyHandle*> ours_handles(
      handles.begin() + 1, handles.begin() + 1 + kNumColumns);
  std::vector<rocksdb::ColumnFamilyHandle*> foreign(
      handles.begin() + 1 + kNumColumns, handles.end());
  foreign.push_back(handles[0]);
  return std::make_unique<RocksDbStore>(
      options.path, db, std::move(ours_handles), std::move(foreign));
}

}  // namespace saetrack::storage
