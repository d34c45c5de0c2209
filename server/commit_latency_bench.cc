// Lease and heartbeat latency while a large result commits (DESIGN §9). A
// TaskScheduler over a real RocksDB in a temporary directory holds one job
// with two hooks; both tasks are leased. One thread completes the first
// task with a result of --result_mib MiB of SAE weights (as
// WorkerService.CompleteTask hands them over); another heartbeats the
// second task in a loop and records each call's latency, while the commit
// runs and, as the baseline, while nothing commits; two more threads time
// GetJob and a Lease poll (nothing runnable) likewise. Measured twice in one
// run: with the results written outside the scheduler's lock (how the
// coordinator commits: results, then the task and job records, none under
// the lock) and under it (SchedulerOptions.commit_outside_lock false, the
// old way). A plain program; it measures a server under a write,
// not a loop. Run:
//   build/bin/commit_latency_bench [--result_mib 512] [--json]
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/clock.h"
#include "server/internal/coordinator_metrics.h"
#include "server/internal/result_store.h"
#include "server/internal/task_scheduler.h"
#include "storage/kv_store.h"

ABSL_FLAG(int, result_mib, 512, "Size of the committed result, MiB.");
ABSL_FLAG(int, commits, 3, "Commits measured per arm.");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of text.");

namespace saetrack {
namespace {

struct Latencies {
  std::vector<double> during_ms;  // heartbeats that overlapped a commit
  std::vector<double> idle_ms;    // heartbeats with nothing committing
  // GetJob and Lease (nothing runnable) calls that overlapped a commit.
  std::vector<double> get_job_ms;
  std::vector<double> lease_ms;
  double commit_s = 0;  // mean wall time of one Complete
};

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

v1::JobSpec TwoHookSpec() {
  v1::JobSpec spec;
  v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
  c->set_step(0);
  c->set_path("/ckpt");
  spec.add_hooks()->set_layer(0);
  spec.add_hooks()->set_layer(1);
  spec.mutable_sae()->set_d_sae(16);
  return spec;
}

absl::StatusOr<Latencies> RunArm(const std::string& dir, bool outside_lock,
                                 int result_bytes, int commits) {
  std::filesystem::remove_all(dir);
  absl::StatusOr<std::unique_ptr<storage::KvStore>> store =
      storage::OpenRocksDbStore({.path = dir});
  if (!store.ok()) return store.status();
  SystemClock clock;
  server::CoordinatorMetrics metrics;
  server::SchedulerOptions options;
  options.lease_ttl = absl::Minutes(10);
  options.commit_outside_lock = outside_lock;
  absl::StatusOr<std::unique_ptr<server::TaskScheduler>> scheduler =
      server::TaskScheduler::Recover(store->get(), &clock, &metrics, options);
  if (!scheduler.ok()) return scheduler.status();
  const std::string weights(result_bytes, 'w');
  Latencies out;
  for (int round = 0; round < commits; ++round) {
    if (absl::StatusOr<server::TaskScheduler::Submitted> job =
            (*scheduler)->CreateJob(TwoHookSpec(), "", "");
        !job.ok()) {
      return job.status();
    }
    std::vector<v1::Task> tasks;
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::optional<v1::Task>> task =
          (*scheduler)->Lease("w", absl::ZeroDuration(), [] { return false; });
      if (!task.ok()) return task.status();
      if (!task->has_value()) return absl::InternalError("nothing to lease");
      tasks.push_back(**task);
    }
    std::atomic<int> phase{0};  // 0 idle, 1 committing, 2 done
    // Calls `call` in a loop until the commit is done; latencies of calls
    // that overlapped the commit go to `during`, of idle ones to `idle`.
    const auto poll = [&phase](auto call, std::vector<double>* during,
                               std::vector<double>* idle) {
      while (phase.load() != 2) {
        const int before = phase.load();
        const auto start = std::chrono::steady_clock::now();
        call();
        const double ms = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - start)
                              .count();
        const int after = phase.load();
        if (before == 0 && after == 0 && idle != nullptr) idle->push_back(ms);
        if (before == 1 || after == 1) during->push_back(ms);
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    };
    std::thread beats([&] {
      poll(
          [&] {
            (void)(*scheduler)
                ->Heartbeat(tasks[1].task_id(), tasks[1].lease_epoch());
          },
          &out.during_ms, &out.idle_ms);
    });
    // A job query and a lease poll (nothing runnable) meanwhile.
    std::thread queries([&] {
      poll([&] { (void)(*scheduler)->GetJob(tasks[1].job_id()); },
           &out.get_job_ms, nullptr);
    });
    std::thread leases([&] {
      poll(
          [&] {
            (void)(*scheduler)->Lease("probe", absl::ZeroDuration(), [] {
              return false;
            });
          },
          &out.lease_ms, nullptr);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    storage::WriteBatch results;
    server::ResultStore::AddSaeWeights(tasks[0].job_id(), 0, 0, weights,
                                       &results);
    phase.store(1);
    const auto start = std::chrono::steady_clock::now();
    absl::Status done =
        (*scheduler)
            ->Complete(tasks[0].task_id(), tasks[0].lease_epoch(),
                       std::move(results), 1);
    out.commit_s +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count() /
        commits;
    phase.store(2);
    beats.join();
    queries.join();
    leases.join();
    if (!done.ok()) return done;
  }
  (*scheduler)->Shutdown();
  return out;
}

int Run() {
  const int mib = absl::GetFlag(FLAGS_result_mib);
  const int commits = absl::GetFlag(FLAGS_commits);
  if (mib <= 0 || mib > 3072 || commits <= 0) {
    std::fprintf(stderr, "--result_mib must be in [1, 3072], --commits > 0\n");
    return 2;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string root = std::string(tmp != nullptr ? tmp : "/tmp") +
                     "/commit_latency_bench_XXXXXX";
  if (::mkdtemp(root.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  absl::StatusOr<Latencies> under =
      RunArm(root + "/under", /*outside_lock=*/false, mib << 20, commits);
  absl::StatusOr<Latencies> outside =
      RunArm(root + "/outside", /*outside_lock=*/true, mib << 20, commits);
  std::filesystem::remove_all(root);
  if (!under.ok() || !outside.ok()) {
    std::fprintf(stderr, "commit_latency_bench: %s\n",
                 std::string((!under.ok() ? under : outside).status().message())
                     .c_str());
    return 1;
  }
  const auto row = [](const char* name, const Latencies& l) {
    return absl::StrFormat(
        "%-22s %8.2f s %10zu %9.2f %9.2f %9.1f %10zu %9.3f %9.3f", name,
        l.commit_s, l.during_ms.size(), Quantile(l.during_ms, 0.5),
        Quantile(l.during_ms, 0.99),
        l.during_ms.empty()
            ? 0.0
            : *std::max_element(l.during_ms.begin(), l.during_ms.end()),
        l.idle_ms.size(), Quantile(l.idle_ms, 0.5), Quantile(l.idle_ms, 0.99));
  };
  const double ratio = Quantile(under->during_ms, 0.99) /
                       std::max(1e-9, Quantile(outside->during_ms, 0.99));
  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"result_mib\": %d, \"under_lock\": {\"commit_s\": %.3f, "
        "\"heartbeat_p99_ms\": %.3f, \"idle_p99_ms\": %.3f, "
        "\"get_job_p99_ms\": %.3f, \"lease_p99_ms\": %.3f}, "
        "\"outside_lock\": {\"commit_s\": %.3f, \"heartbeat_p99_ms\": %.3f, "
        "\"idle_p99_ms\": %.3f, \"get_job_p99_ms\": %.3f, "
        "\"lease_p99_ms\": %.3f}, \"p99_ratio\": %.1f}\n",
        mib, under->commit_s, Quantile(under->during_ms, 0.99),
        Quantile(under->idle_ms, 0.99), Quantile(under->get_job_ms, 0.99),
        Quantile(under->lease_ms, 0.99), outside->commit_s,
        Quantile(outside->during_ms, 0.99), Quantile(outside->idle_ms, 0.99),
        Quantile(outside->get_job_ms, 0.99), Quantile(outside->lease_ms, 0.99),
        ratio);
    return 0;
  }
  std::printf(
      "commit_latency_bench: Heartbeat latency while a %d MiB result commits "
      "(RocksDB, synced), %d commits per arm\n",
      mib, commits);
  std::printf("%-22s %10s %10s %9s %9s %9s %10s %9s %9s\n", "results written",
              "commit", "beats", "p50 ms", "p99 ms", "max ms", "idle beats",
              "idle p50", "idle p99");
  std::printf("%s\n", row("under the lock (old)", *under).c_str());
  std::printf("%s\n", row("outside the lock", *outside).c_str());
  const auto others = [](const char* name, const Latencies& l) {
    const auto max = [](const std::vector<double>& v) {
      return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end());
    };
    return absl::StrFormat(
        "%-22s GetJob p50 %.3f p99 %.3f max %.1f ms; Lease (none runnable) "
        "p50 %.3f p99 %.3f max %.1f ms",
        name, Quantile(l.get_job_ms, 0.5), Quantile(l.get_job_ms, 0.99),
        max(l.get_job_ms), Quantile(l.lease_ms, 0.5),
        Quantile(l.lease_ms, 0.99), max(l.lease_ms));
  };
  std::printf("during the commits:\n%s\n%s\n",
              others("under the lock (old)", *under).c_str(),
              others("outside the lock", *outside).c_str());
  std::printf("Heartbeat p99 during a commit: %.1fx lower outside the lock\n",
              ratio);
  return 0;
}

}  // namespace
}  // namespace saetrack

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return saetrack::Run();
}
