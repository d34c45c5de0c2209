// saetrack-web: flags -> WebServerOptions -> Start -> wait for SIGTERM/SIGINT
// -> Shutdown.
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "web/web_server.h"

#ifndef SAETRACK_WEB_DIST_DIR
#define SAETRACK_WEB_DIST_DIR ""
#endif

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7070",
          "host:port of the coordinator's gRPC API.");
ABSL_FLAG(std::string, listen, "127.0.0.1:8080",
          "HTTP listen address HOST:PORT; port 0 picks a free port. Bind "
          "beyond loopback only behind TLS termination.");
ABSL_FLAG(std::string, static_dir, SAETRACK_WEB_DIST_DIR,
          "The built front end (index.html, assets/); default: the build's "
          "web/dist.");
ABSL_FLAG(std::string, token_file, "",
          "File holding the bearer token sent to the coordinator when a "
          "browser request carries no Authorization header.");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of the CA that signed the coordinator's certificate: "
          "connect with TLS. Empty: plaintext.");
ABSL_FLAG(std::string, port_file, "",
          "Once serving, atomically write 'http=<port>\\n' here.");
ABSL_FLAG(int, threads, 16,
          "HTTP worker threads; each open job-progress stream holds one.");

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in),
              std::istreambuf_iterator<char>());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "saetrack-web: the feature browser. Serves the pages and a JSON API "
      "(/api/...) over HTTP, as a gRPC client of a coordinator.\n"
      "  saetrack-web --coordinator HOST:PORT [--listen 127.0.0.1:8080] "
      "[--token_file F] [--tls_ca F]");
  // --help lists this file's flags (absl matches on the program name
  // otherwise, which differs from the file's).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "web/main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "saetrack-web: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  saetrack::web::WebServerOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.listen = absl::GetFlag(FLAGS_listen);
  options.static_dir = absl::GetFlag(FLAGS_static_dir);
  options.threads = absl::GetFlag(FLAGS_threads);
  if (const std::string f = absl::GetFlag(FLAGS_token_file); !f.empty()) {
    if (!ReadFile(f, &options.token)) {
      std::fprintf(stderr, "saetrack-web: --token_file: cannot read %s\n",
                   f.c_str());
      return 2;
    }
    absl::StripAsciiWhitespace(&options.token);
    if (options.token.empty()) {
      std::fprintf(stderr, "saetrack-web: --token_file: %s is empty\n",
                   f.c_str());
      return 2;
    }
  }
  if (const std::string f = absl::GetFlag(FLAGS_tls_ca); !f.empty()) {
    if (!ReadFile(f, &options.tls_ca_pem) || options.tls_ca_pem.empty()) {
      std::fprintf(stderr, "saetrack-web: --tls_ca: cannot read %s\n",
                   f.c_str());
      return 2;
    }
  }

  // Block the stop signals in every thread (threads inherit the mask) and
  // wait for them below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto server = saetrack::web::WebServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "saetrack-web: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "saetrack-web: serving on port %d (coordinator %s)\n",
               (*server)->port(), options.coordinator.c_str());
  if (const std::string f = absl::GetFlag(FLAGS_port_file); !f.empty()) {
    const std::string tmp = f + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << "http=" << (*server)->port() << "\n";
    }
    if (std::rename(tmp.c_str(), f.c_str()) != 0) {
      std::fprintf(stderr, "saetrack-web: cannot write --port_file %s\n",
                   f.c_str());
      return 1;
    }
  }
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::fprintf(stderr, "saetrack-web: signal %d, shutting down\n",
               signal_number);
  (*server)->Shutdown();
  return 0;
}
