#include "server/testing/test_certificates.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace saetrack::server::testing {
namespace {

// Runs `command` with sh, output captured. Errors: kInternal with the
// command and its output.
absl::Status Run(const std::string& command) {
  const std::string full = absl::StrCat(command, " 2>&1");
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) {
    return absl::InternalError(absl::StrCat("cannot run: ", command));
  }
  std::string output;
  char buffer[512];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) {
    output.append(buffer, n);
  }
  const int rc = pclose(pipe);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("`", command, "` failed (", rc, "): ", output));
  }
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::trunc);
  out << contents;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// A CA certificate and key at `dir`/`name`.pem / .key.
absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Run(absl::StrCat(
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
      "-nodes -days 1 -subj /CN=",
      name, " -keyout ", dir, "/", name, ".key -out ", dir, "/", name, ".pem"));
}

// A key and a certificate signed by the CA at `dir`/ca.*, with the
// extensions in `extensions` (one per line).
absl::Status MakeLeaf(const std::string& dir, const std::string& name,
                      const std::string& common_name,
                      const std::string& extensions) {
  const std::string base = absl::StrCat(dir, "/", name);
  if (absl::Status s = WriteFile(base + ".ext", extensions); !s.ok()) return s;
  if (absl::Status s = Run(absl::StrCat(
          "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
          "-nodes -subj /CN=",
          common_name, " -keyout ", base, ".key -out ", base, ".csr"));
      !s.ok()) {
    return s;
  }
  return Run(absl::StrCat("openssl x509 -req -days 1 -in ", base, ".csr -CA ",
                          dir, "/ca.pem -CAkey ", dir,
                          "/ca.key -CAcreateserial -extfile ", base,
                          ".ext -out ", base, ".pem"));
}

}  // namespace

absl::StatusOr<TestCertificates> MakeTestCertificates(const std::string& dir) {
  if (absl::Status s = MakeCa(dir, "ca"); !s.ok()) return s;
  if (absl::Status s = MakeCa(dir, "other-ca"); !s.ok()) return s;
  if (absl::Status s = MakeLeaf(dir, "server", "localhost",
                                "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                "extendedKeyUsage=serverAuth\n");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = MakeLeaf(dir, "client", "saetrack-test-client",
                                "extendedKeyUsage=clientAuth\n");
      !s.ok()) {
    return s;
  }
  TestCertificates certs;
  certs.ca_cert = dir + "/ca.pem";
  certs.other_ca_cert = dir + "/other-ca.pem";
  certs.server_cert = dir + "/server.pem";
  certs.server_key = dir + "/server.key";
  certs.client_cert = dir + "/client.pem";
  certs.client_key = dir + "/client.key";
  return certs;
}

}  // namespace saetrack::server::testing
