// Query latency under load (DESIGN §9: GetFeatureHistory p99 < 10 ms). Fills
// a temporary RocksDB through the storage and result-store API with the
// feature statistics of one job/layer (default 150 checkpoints x 16,384
// features), starts an in-process coordinator on it, and has N concurrent
// gRPC clients (one channel each) ask for the histories of random features
// for a while. Prints qps, p50/p99/max latency, the target check, and the
// bytes stored per feature per checkpoint (the full analysed record: points
// with 25 top contexts each, plus one summary per feature). A plain program,
// not Google Benchmark: it measures a server under concurrent load. With
// --secure, the same load runs twice in one process, first in plaintext
// without tokens, then against a coordinator serving TLS with a token file
// (certificates made by openssl, one reader token), and both latencies are
// printed with their ratio: the cost of auth + TLS (phases in the order
// plain, secure, secure, plain, --seconds each, so that drifting background
// load weighs on both alike). Run:
//   build/bin/query_load_bench [--clients=16] [--seconds=10]
//       [--checkpoints=150] [--features=16384] [--secure] [--json]
// With --hold it skips the load phase and serves the filled job until its
// stdin closes, for clients in other languages to measure against
// (client/python/bench/feature_history_bench.py).
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "format/safetensors.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "proto/access_tokens.h"
#include "proto/channel_security.h"
#include "saetrack/v1/job.grpc.pb.h"
#include "saetrack/v1/query.grpc.pb.h"
#include "server/coordinator.h"
#include "server/internal/result_store.h"
#include "server/testing/test_certificates.h"
#include "storage/kv_store.h"

ABSL_FLAG(int, clients, 16, "Concurrent gRPC clients (one channel each).");
ABSL_FLAG(double, seconds, 10, "Length of the load phase.");
ABSL_FLAG(int, checkpoints, 150, "Checkpoints (SAEs) of the chain.");
ABSL_FLAG(int, features, 16384, "Features per SAE (d_sae).");
ABSL_FLAG(double, target_p99_ms, 10, "The p99 latency target.");
ABSL_FLAG(std::string, dir, "",
          "Working directory (kept); empty: a temporary one, removed.");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of text.");
ABSL_FLAG(bool, hold, false,
          "No load phase: print \"serving HOST:PORT job JOB_ID layer L\" and "
          "serve the filled job until stdin closes.");
ABSL_FLAG(bool, secure, false,
          "Also run the load over TLS with a bearer token (reader role) and "
          "print both latencies with their ratio.");

namespace saetrack {
namespace {

constexpr int kLayer = 0;
constexpr int kHiddenSize = 64;

// A Pythia-style checkpoint directory that passes job validation (the
// coordinator never loads the weights).
void WriteFakeCheckpoint(const std::string& dir) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << absl::StrCat(
      R"({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",)",
      R"( "hidden_size": )", kHiddenSize,
      R"(, "num_hidden_layers": 2, "num_attention_heads": 4,)",
      R"( "intermediate_size": )", 4 * kHiddenSize,
      R"(, "vocab_size": 512, "max_position_embeddings": 256,)",
      R"( "rotary_pct": 0.25, "rotary_emb_base": 10000,)",
      R"( "layer_norm_eps": 1e-05, "use_parallel_residual": true,)",
      R"( "hidden_act": "gelu", "tie_word_embeddings": false})");
  std::ofstream(dir + "/model.safetensors", std::ios::binary)
      << format::SafetensorsWriter().Serialize();
}

v1::JobSpec MakeSpec(const std::string& root, int checkpoints, int features) {
  v1::JobSpec spec;
  spec.set_name("query-load-bench");
  for (int i = 0; i < checkpoints; ++i) {
    const std::string dir = absl::StrCat(root, "/ckpt-", i);
    WriteFakeCheckpoint(dir);
    v1::Checkpoint* c = spec.mutable_model()->add_checkpoints();
    c->set_step(int64_t{1000} * i);
    c->set_path(dir);
  }
  const std::string tokens = root + "/tokens.bin";
  std::ofstream(tokens, std::ios::binary) << std::string(4096 * 2, '\0');
  spec.mutable_data()->set_tokens_path(tokens);
  spec.mutable_data()->set_context_length(32);
  spec.add_hooks()->set_layer(kLayer);
  spec.mutable_sae()->set_d_sae(features);
  spec.mutable_schedule()->set_tokens_first(8192);
  return spec;
}

CoordinatorOptions Options(const std::string& root) {
  CoordinatorOptions options;
  options.data_dir = root + "/data";
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address = "";
  options.shutdown_grace_ms = 1000;
  return options;
}

absl::StatusOr<std::string> SubmitJob(const std::string& root, int checkpoints,
                                      int features) {
  absl::StatusOr<std::unique_ptr<Coordinator>> c =
      Coordinator::Start(Options(root));
  if (!c.ok()) return c.status();
  auto jobs = v1::JobService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", (*c)->port()),
                          grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::SubmitJobRequest request;
  *request.mutable_spec() = MakeSpec(root, checkpoints, features);
  v1::SubmitJobResponse response;
  grpc::Status s = jobs->SubmitJob(&ctx, request, &response);
  (*c)->Shutdown();
  if (!s.ok()) {
    return absl::InternalError(absl::StrCat("SubmitJob: ", s.error_message()));
  }
  return response.job().job_id();
}

struct Fill {
  uint64_t logical_bytes = 0;  // Keys + values written.
  uint64_t stored_bytes = 0;   // SST files after a flush.
};

// Writes the feature points of every checkpoint straight into the database.
absl::StatusOr<Fill> FillResults(const std::string& root,
                                 const std::string& job_id, int checkpoints,
                                 int features) {
  absl::StatusOr<std::unique_ptr<storage::KvStore>> store =
      storage::OpenRocksDbStore({.path = root + "/data/db"});
  if (!store.ok()) return store.status();
  absl::StatusOr<uint64_t> before = (*store)->LiveDataBytes();
  if (!before.ok()) return before.status();
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> unit(0, 1);
  Fill fill;
  // The full record of a finished, analysed job: every point with its
  // analysis-set statistics, drift, progress, PCA coordinates and 25 top
  // contexts, and one summary per feature.
  constexpr int kTopK = 25;
  std::uniform_int_distribution<int32_t> position(0, 65535);
  std::uniform_int_distribution<int32_t> token(0, 50000);
  for (int c = 0; c < checkpoints; ++c) {
    storage::WriteBatch batch;
    for (int f = 0; f < features; ++f) {
      v1::FeaturePoint point;
      point.set_step(int64_t{1000} * c);
      point.set_chain_index(c);
      point.set_frequency(unit(rng) * 0.1f);
      point.set_mean_activation(unit(rng));
      point.set_max_activation(unit(rng) * 10);
      if (c > 0) point.set_decoder_cos_prev(0.9f + 0.1f * unit(rng));
      point.set_encoder_norm(0.5f + unit(rng));
      point.set_analysed(true);
      point.set_decoder_cos_final(unit(rng));
      point.set_progress_activation(unit(rng) * 0.5f);
      point.set_progress_feature(unit(rng) * 0.5f);
      point.set_pca_x(unit(rng));
      point.set_pca_y(unit(rng));
      v1::FeaturePoint contexts;
      contexts.set_step(point.step());
      float activation = 10;
      for (int k = 0; k < kTopK; ++k) {
        v1::FeatureContext* context = contexts.add_contexts();
        context->set_position(position(rng));
        context->set_activation(activation -= unit(rng) * 0.3f);
        context->set_token(token(rng));
      }
      server::ResultStore::AddFeaturePoint(job_id, kLayer, f, point, &batch);
      server::ResultStore::AddFeatureContexts(job_id, kLayer, f, contexts,
                                              &batch);
      if (c + 1 == checkpoints) {
        v1::FeatureSummary summary;
        summary.set_feature_id(f);
        summary.set_kind(v1::FEATURE_KIND_CONCEPT_LEVEL);
        summary.set_top_token(token(rng));
        summary.set_top_token_share(unit(rng));
        summary.set_formation_step(int64_t{1000} * (f % checkpoints));
        summary.set_formation_chain_index(f % checkpoints);
        summary.set_final_frequency(point.frequency());
        summary.set_cos_first_to_final(unit(rng));
        summary.mutable_phases()->set_r_squared(unit(rng));
        server::ResultStore::AddFeatureSummary(job_id, kLayer, summary, &batch);
      }
    }
    fill.logical_bytes += batch.ByteSize();
    if (absl::Status s = (*store)->Write(batch, {}); !s.ok()) return s;
  }
  // A checkpoint flushes the memtables, so that the SST sizes count all.
  const std::string flushed = root + "/flushed";
  if (absl::Status s = (*store)->Checkpoint(flushed); !s.ok()) return s;
  std::filesystem::remove_all(flushed);
  absl::StatusOr<uint64_t> after = (*store)->LiveDataBytes();
  if (!after.ok()) return after.status();
  fill.stored_bytes = *after - *before;
  return fill;
}

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

struct Load {
  std::vector<double> sorted_ms;  // Latencies of the successful calls.
  int64_t errors = 0;
  double elapsed_s = 0;
};

// Starts a coordinator with `options` and has the --clients clients ask it
// for random features' histories for --seconds, over channels made with
// `security`.
absl::StatusOr<Load> MeasureLoad(const CoordinatorOptions& options,
                                 const LoadedChannelSecurity& security,
                                 const std::string& job_id) {
  const int clients = std::max(1, absl::GetFlag(FLAGS_clients));
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int checkpoints = absl::GetFlag(FLAGS_checkpoints);
  const int features = absl::GetFlag(FLAGS_features);
  absl::StatusOr<std::unique_ptr<Coordinator>> c = Coordinator::Start(options);
  if (!c.ok()) return c.status();
  const std::string target = absl::StrCat("127.0.0.1:", (*c)->port());

  std::atomic<int64_t> errors{0};
  std::atomic<bool> go{false};
  std::vector<std::vector<double>> latencies_ms(clients);
  std::vector<std::thread> threads;
  std::chrono::steady_clock::time_point end;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      // A channel argument unique per client keeps gRPC from sharing one
      // subchannel (one TCP connection) among all of them.
      grpc::ChannelArguments args;
      args.SetInt("saetrack.bench.client", t);
      auto stub =
          v1::QueryService::NewStub(NewSecureChannel(target, security, &args));
      std::mt19937 rng(1000 + t);
      std::uniform_int_distribution<int> feature(0, features - 1);
      std::vector<double>& mine = latencies_ms[t];
      while (!go.load()) std::this_thread::yield();
      while (std::chrono::steady_clock::now() < end) {
        v1::GetFeatureHistoryRequest request;
        request.set_job_id(job_id);
        request.set_layer(kLayer);
        request.set_feature_id(feature(rng));
        v1::FeatureHistory history;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(10));
        const auto start = std::chrono::steady_clock::now();
        grpc::Status s = stub->GetFeatureHistory(&ctx, request, &history);
        const double ms = std::chrono::duration<double, std::milli>(
                              std::chrono::steady_clock::now() - start)
                              .count();
        if (!s.ok() || history.points_size() != checkpoints) {
          errors.fetch_add(1);
        } else {
          mine.push_back(ms);
        }
      }
    });
  }
  // Warm up every connection (and TLS handshake), then measure.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto load_start = std::chrono::steady_clock::now();
  end = load_start +
        std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6));
  go.store(true);
  for (std::thread& t : threads) t.join();
  Load load;
  load.elapsed_s = std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - load_start)
                       .count();
  (*c)->Shutdown();
  for (const auto& v : latencies_ms) {
    load.sorted_ms.insert(load.sorted_ms.end(), v.begin(), v.end());
  }
  std::sort(load.sorted_ms.begin(), load.sorted_ms.end());
  load.errors = errors.load();
  return load;
}

// The same load against a coordinator serving TLS with a token file, the
// clients trusting the CA and sending a reader token.
absl::StatusOr<Load> MeasureSecureLoad(const std::string& root,
                                       const std::string& job_id) {
  const std::string tls_dir = root + "/tls";
  std::filesystem::create_directories(tls_dir);
  absl::StatusOr<server::testing::TestCertificates> certs =
      server::testing::MakeTestCertificates(tls_dir);
  if (!certs.ok()) return certs.status();
  const std::string token_file = root + "/tokens";
  std::filesystem::remove(token_file);
  absl::StatusOr<std::string> token =
      CreateAccessToken(token_file, "reader", "bench");
  if (!token.ok()) return token.status();
  CoordinatorOptions options = Options(root);
  options.tls_cert_file = certs->server_cert;
  options.tls_key_file = certs->server_key;
  options.token_file = token_file;
  ChannelSecurity security;
  security.tls_ca_file = certs->ca_cert;
  absl::StatusOr<LoadedChannelSecurity> loaded = LoadChannelSecurity(security);
  if (!loaded.ok()) return loaded.status();
  loaded->token = *token;
  return MeasureLoad(options, *loaded, job_id);
}

// Adds `measured` to `*into` (or, when `into` is null, to `*plain`).
void Merge(Load measured, std::optional<Load>* into,
           absl::StatusOr<Load>* plain) {
  Load* target = nullptr;
  if (into != nullptr) {
    if (!into->has_value()) into->emplace();
    target = &**into;
  } else {
    if (!plain->ok()) *plain = Load();
    target = &**plain;
  }
  target->sorted_ms.insert(target->sorted_ms.end(), measured.sorted_ms.begin(),
                           measured.sorted_ms.end());
  std::sort(target->sorted_ms.begin(), target->sorted_ms.end());
  target->errors += measured.errors;
  target->elapsed_s += measured.elapsed_s;
}

std::string SecureJson(const std::optional<Load>& secure, double p50,
                       double p99) {
  if (!secure.has_value()) return "";
  const double sp50 = Percentile(secure->sorted_ms, 0.50);
  const double sp99 = Percentile(secure->sorted_ms, 0.99);
  return absl::StrFormat(
      ", \"secure_requests\": %zu, \"secure_errors\": %lld, "
      "\"secure_p50_ms\": %.3f, \"secure_p99_ms\": %.3f, "
      "\"secure_p50_ratio\": %.3f, \"secure_p99_ratio\": %.3f",
      secure->sorted_ms.size(), static_cast<long long>(secure->errors), sp50,
      sp99, sp50 / p50, sp99 / p99);
}

int Run() {
  const int clients = std::max(1, absl::GetFlag(FLAGS_clients));
  const int checkpoints = absl::GetFlag(FLAGS_checkpoints);
  const int features = absl::GetFlag(FLAGS_features);
  const bool json = absl::GetFlag(FLAGS_json);
  std::string root = absl::GetFlag(FLAGS_dir);
  const bool temporary = root.empty();
  if (temporary) {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "query_load_bench.XXXXXX")
            .string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "query_load_bench: cannot create a temp dir\n");
      return 1;
    }
    root = tmpl;
  }
  auto cleanup = [&] {
    if (temporary) std::filesystem::remove_all(root);
  };

  absl::StatusOr<std::string> job_id = SubmitJob(root, checkpoints, features);
  if (!job_id.ok()) {
    std::fprintf(stderr, "query_load_bench: %s\n",
                 job_id.status().ToString().c_str());
    cleanup();
    return 1;
  }
  const auto fill_start = std::chrono::steady_clock::now();
  absl::StatusOr<Fill> fill = FillResults(root, *job_id, checkpoints, features);
  if (!fill.ok()) {
    std::fprintf(stderr, "query_load_bench: fill: %s\n",
                 fill.status().ToString().c_str());
    cleanup();
    return 1;
  }
  const double fill_s = std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - fill_start)
                            .count();

  if (absl::GetFlag(FLAGS_hold)) {
    absl::StatusOr<std::unique_ptr<Coordinator>> c =
        Coordinator::Start(Options(root));
    if (!c.ok()) {
      std::fprintf(stderr, "query_load_bench: %s\n",
                   c.status().ToString().c_str());
      cleanup();
      return 1;
    }
    const std::string target = absl::StrCat("127.0.0.1:", (*c)->port());
    std::printf("serving %s job %s layer %d checkpoints %d features %d\n",
                target.c_str(), job_id->c_str(), kLayer, checkpoints, features);
    std::fflush(stdout);
    while (std::getchar() != EOF) {
    }
    (*c)->Shutdown();
    cleanup();
    return 0;
  }

  // With --secure the phases run plain, secure, secure, plain (each
  // --seconds long): background work that fades over the run (the fill's
  // compactions, other processes) weighs on both modes alike.
  const bool with_secure = absl::GetFlag(FLAGS_secure);
  absl::StatusOr<Load> load;
  std::optional<Load> secure;
  for (int phase = 0; phase < (with_secure ? 4 : 1); ++phase) {
    const bool secure_phase = phase == 1 || phase == 2;
    absl::StatusOr<Load> measured =
        secure_phase
            ? MeasureSecureLoad(root, *job_id)
            : MeasureLoad(Options(root), LoadedChannelSecurity(), *job_id);
    if (!measured.ok()) {
      std::fprintf(stderr, "query_load_bench: %s%s\n",
                   secure_phase ? "secure: " : "",
                   measured.status().ToString().c_str());
      cleanup();
      return 1;
    }
    Merge(*std::move(measured), secure_phase ? &secure : nullptr, &load);
  }
  std::vector<double>& all = load->sorted_ms;
  const int64_t error_count = load->errors;
  const double elapsed_s = load->elapsed_s;

  const double qps = all.size() / elapsed_s;
  const double p50 = Percentile(all, 0.50);
  const double p99 = Percentile(all, 0.99);
  const double max = all.empty() ? 0 : all.back();
  const double target_ms = absl::GetFlag(FLAGS_target_p99_ms);
  const bool pass = !all.empty() && error_count == 0 && p99 < target_ms &&
                    (!secure.has_value() ||
                     (!secure->sorted_ms.empty() && secure->errors == 0));
  const double points = double(checkpoints) * features;
  const double logical_per_point = fill->logical_bytes / points;
  const double stored_per_point = fill->stored_bytes / points;
  const unsigned cores = std::thread::hardware_concurrency();

  if (json) {
    std::printf(
        "{\"clients\": %d, \"seconds\": %.2f, \"checkpoints\": %d, "
        "\"features\": %d, \"requests\": %zu, \"errors\": %lld, "
        "\"qps\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": "
        "%.3f, \"target_p99_ms\": %.1f, \"pass\": %s, "
        "\"logical_bytes_per_feature_checkpoint\": %.1f, "
        "\"stored_bytes_per_feature_checkpoint\": %.1f, \"fill_s\": %.1f, "
        "\"cpu_cores\": %u%s}\n",
        clients, elapsed_s, checkpoints, features, all.size(),
        static_cast<long long>(error_count), qps, p50, p99, max, target_ms,
        pass ? "true" : "false", logical_per_point, stored_per_point, fill_s,
        cores, SecureJson(secure, p50, p99).c_str());
  } else {
    std::printf(
        "query_load_bench: %d checkpoints x %d features, layer %d of "
        "%s (filled in %.1f s)\n",
        checkpoints, features, kLayer, job_id->c_str(), fill_s);
    std::printf(
        "  stored per feature per checkpoint: %.1f B logical (key + "
        "value), %.1f B in SST files\n",
        logical_per_point, stored_per_point);
    std::printf(
        "  %d clients, %.1f s, %u CPU cores: %zu requests, %lld "
        "errors\n",
        clients, elapsed_s, cores, all.size(),
        static_cast<long long>(error_count));
    std::printf("  qps %.1f   p50 %.3f ms   p99 %.3f ms   max %.3f ms\n", qps,
                p50, p99, max);
    if (secure.has_value()) {
      const double sp50 = Percentile(secure->sorted_ms, 0.50);
      const double sp99 = Percentile(secure->sorted_ms, 0.99);
      std::printf(
          "  TLS + bearer token: %zu requests, %lld errors, qps %.1f   p50 "
          "%.3f ms   p99 %.3f ms\n",
          secure->sorted_ms.size(), static_cast<long long>(secure->errors),
          secure->sorted_ms.size() / secure->elapsed_s, sp50, sp99);
      std::printf(
          "  auth + TLS cost: p50 x%.2f (%+.3f ms)   p99 x%.2f (%+.3f ms)\n",
          sp50 / p50, sp50 - p50, sp99 / p99, sp99 - p99);
    }
    std::printf("  target p99 < %.1f ms: %s\n", target_ms,
                pass ? "PASS" : "FAIL");
  }
  cleanup();
  return pass ? 0 : 2;
}

}  // namespace
}  // namespace saetrack

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return saetrack::Run();
}
