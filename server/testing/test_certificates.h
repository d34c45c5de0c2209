// Self-signed TLS material for tests, made with the `openssl` command
// (Debian openssl): a CA, a server certificate for localhost and 127.0.0.1,
// and a client certificate, all signed by the CA and valid for one day.
#ifndef SAETRACK_SERVER_TESTING_TEST_CERTIFICATES_H_
#define SAETRACK_SERVER_TESTING_TEST_CERTIFICATES_H_

#include <string>

#include "absl/status/statusor.h"

namespace saetrack::server::testing {

// PEM files under one directory.
struct TestCertificates {
  std::string ca_cert;      // The CA's certificate (clients' --tls_ca).
  std::string server_cert;  // CN/SAN localhost, SAN 127.0.0.1.
  std::string server_key;
  std::string client_cert;  // CN saetrack-test-client, clientAuth.
  std::string client_key;
  // A second CA, which signed nothing of the above.
  std::string other_ca_cert;
};

// Writes the files into `dir` (which must exist). Errors: kInternal with
// the command and its output when openssl fails or is missing.
absl::StatusOr<TestCertificates> MakeTestCertificates(const std::string& dir);

}  // namespace saetrack::server::testing

#endif  // SAETRACK_SERVER_TESTING_TEST_CERTIFICATES_H_
