// A child process for multi-process tests: started with an argv, its stdout
// and stderr captured to files, waited for with a deadline, signalled.
#ifndef SAETRACK_TESTS_CHILD_PROCESS_H_
#define SAETRACK_TESTS_CHILD_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace saetrack::testing {

// Owns one child process; the destructor kills (SIGKILL) and reaps it if it is
// still running. Not thread-safe.
class ChildProcess {
 public:
  // Starts argv[0] with the given arguments; stdout and stderr go to
  // `log_prefix`.out / .err.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::string& log_prefix);
  ~ChildProcess();

  // Waits up to `timeout` for the exit; returns the exit code (128 + signal
  // when killed by one), or kDeadlineExceeded.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  void Signal(int signal);
  pid_t pid() const { return pid_; }
  std::string Stdout() const;
  std::string Stderr() const;

 private:
  ChildProcess(pid_t pid, std::string log_prefix)
      : pid_(pid), log_prefix_(std::move(log_prefix)) {}
  pid_t pid_;
  std::string log_prefix_;
  std::optional<int> exit_code_;
};

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs a command to completion (up to `timeout`) and returns its output.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::string& log_prefix,
                                         absl::Duration timeout);

// Polls `condition` until it holds or `timeout` passes; true if it held.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout);

std::string ReadFileOrEmpty(const std::string& path);

// Makes a fresh directory under the test temp dir.
std::string MakeTempDir(const std::string& name);

// Issues an HTTP/1.0 GET to 127.0.0.1:`port``path`; returns the body.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

}  // namespace saetrack::testing

#endif  // SAETRACK_TESTS_CHILD_PROCESS_H_
