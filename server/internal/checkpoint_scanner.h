// Discovery of checkpoint directories written by a training run that a job
// follows (spec.model.follow): which directories of the follow directory
// stand for a step, and which of those are complete enough to hand to the
// job validator.
#ifndef SAETRACK_SERVER_INTERNAL_CHECKPOINT_SCANNER_H_
#define SAETRACK_SERVER_INTERNAL_CHECKPOINT_SCANNER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "format/confined_path.h"
#include "format/safetensors.h"

namespace saetrack::server {

// A checkpoint directory-name pattern such as "step-{step}", split around
// its single "{step}".
struct CheckpointPattern {
  std::string prefix;
  std::string suffix;
};

// Parses `pattern`: exactly one "{step}", no '/', no NUL, no other brace.
// Errors: kInvalidArgument naming spec.model.follow.pattern.
absl::StatusOr<CheckpointPattern> ParseCheckpointPattern(
    std::string_view pattern);

// The step that directory name `name` stands for under `pattern`: the part
// between prefix and suffix must be one or more decimal digits (leading
// zeros allowed; no sign) that fit in int64. nullopt otherwise.
std::optional<int64_t> MatchCheckpointName(const CheckpointPattern& pattern,
                                           std::string_view name);

// A checkpoint directory judged complete.
struct FoundCheckpoint {
  int64_t step = 0;
  // The follow directory joined with the entry's name.
  std::string path;
  // The newest mtime (Unix milliseconds) of the files that make up the
  // checkpoint (the marker file alone in marker mode): when the trainer
  // finished writing it, for the lag from write to SAEs stored.
  int64_t last_write_ms = 0;
};

// A checkpoint directory not (yet) complete, and why, e.g.
// "model.safetensors: header incomplete (5 of 8 length bytes)" or
// "waiting for marker file DONE".
struct PendingCheckpoint {
  int64_t step = 0;
  std::string path;
  std::string reason;
};

// Scans one follow directory, repeatedly, for checkpoint directories named
// by a pattern. Remembers the size and mtime of every file it examined in
// each directory so that a later Scan() can tell whether writing has
// settled. Thread-compatible: one thread (the job's follower) owns it.
class CheckpointScanner {
 public:
  // The most matching, not skipped, directory entries examined by one
  // Scan(); those with the lowest steps go first, the rest wait for later
  // scans (by when the lower ones are usually taken and skipped).
  static constexpr int kMaxEntriesPerScan = 10'000;
  // A safetensors header length above this is an invalid header rather
  // than something to read.
  static constexpr uint64_t kMaxHeaderBytes =
      format::kMaxSafetensorsHeaderBytes;
  // config.json and model.safetensors.index.json above this are refused
  // rather than read.
  static constexpr int64_t kMaxJsonFileBytes = 16 << 20;

  // `dir`: the follow directory. `marker_file`: when non-empty, a
  // checkpoint directory is complete as soon as it holds this regular file.
  // `roots`: the directory actually opened at each scan must lie under one
  // (none: not confined), so a directory swapped for a link that leads out
  // of them is not listed.
  CheckpointScanner(std::string dir, CheckpointPattern pattern,
                    std::string marker_file, format::DataRoots roots = {});

  struct Result {
    std::vector<FoundCheckpoint> complete;   // ascending step
    std::vector<PendingCheckpoint> pending;  // ascending step
  };

  // Lists `dir` once. Entries whose name matches the pattern with a step in
  // `skip` (taken or refused already) are passed over without any I/O in
  // them; names that do not match, symlinks and non-directories are
  // ignored. Of the rest, a directory is complete when:
  //  - marker mode: the marker file is a regular file in it (nothing else
  //    is checked here; the job validator checks the checkpoint itself);
  //  - otherwise: config.json parses as JSON; the weights are
  //    model.safetensors, or the shard files named by the "weight_map" of
  //    model.safetensors.index.json, all present; every safetensors file
  //    has a complete header (8-byte little-endian length, JSON object)
  //    and is exactly as long as its largest data_offsets end says; and
  //    none of these files changed size or mtime since the previous Scan()
  //    that saw this directory, so a directory is never complete on the
  //    first scan that sees it.
  // Anything else makes that one checkpoint pending, with the reason. Two
  // directories naming one step ("step-7", "step-07") make it pending.
  // Never opens a FIFO or device, and follows no symlink inside `dir`.
  // Errors (about `dir` itself only): kNotFound naming it when it does not
  // exist; kFailedPrecondition naming it when it is not a directory or
  // cannot be read.
  absl::StatusOr<Result> Scan(const std::set<int64_t>& skip);

 private:
  // What the previous scan saw of one file: a change means it is still
  // being written (or was replaced).
  struct FileStamp {
    int64_t size = 0;
    int64_t mtime_ns = 0;
    uint64_t inode = 0;
    bool operator==(const FileStamp& other) const {
      return size == other.size && mtime_ns == other.mtime_ns &&
             inode == other.inode;
    }
  };
  // File name within the checkpoint directory -> stamp.
  using DirectoryStamps = std::map<std::string, FileStamp>;
  // Examines the files of one checkpoint directory (in the .cc).
  class DirectoryCheck;

  const std::string dir_;
  const CheckpointPattern pattern_;
  const std::string marker_file_;
  const format::DataRoots roots_;
  // Checkpoint directory name -> the stamps the previous Scan() recorded.
  // Holds only the directories that scan examined.
  std::map<std::string, DirectoryStamps> previous_;
};

}  // namespace saetrack::server

#endif  // SAETRACK_SERVER_INTERNAL_CHECKPOINT_SCANNER_H_
