// How a client (the CLI, the client library, the worker) reaches a
// coordinator: plaintext or TLS (optionally with a client certificate, for
// mutual TLS), and with or without a bearer token, which is sent on every
// call as `authorization: Bearer <token>` (proto/access_tokens.h).
#ifndef SAETRACK_PROTO_CHANNEL_SECURITY_H_
#define SAETRACK_PROTO_CHANNEL_SECURITY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class Channel;
class ChannelArguments;
}  // namespace grpc

namespace saetrack {

// File names; empty fields are unused. All empty: plaintext, no token.
struct ChannelSecurity {
  // A file holding the bearer token (surrounding whitespace ignored).
  std::string token_file;
  // PEM CA certificate(s) the server's certificate must chain to. Set: TLS.
  std::string tls_ca_file;
  // PEM client certificate and its key, for a coordinator that requires
  // client certificates (mutual TLS). Both or neither; need tls_ca_file.
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name the server's certificate is checked against instead of the
  // host of the target (e.g. "localhost" when dialling 127.0.0.1).
  std::string tls_server_name;
};

// The files named by `security`, read.
struct LoadedChannelSecurity {
  std::string token;  // Empty: no token.
  bool tls = false;
  std::string ca_pem, cert_pem, key_pem;
  std::string tls_server_name;
};

// Reads the files `security` names. Errors: kInvalidArgument naming the
// field for an inconsistent combination (a certificate without its key or
// without tls_ca_file, a server name without TLS) or an empty token file;
// kNotFound / kPermissionDenied naming the field and the file when one
// cannot be read.
absl::StatusOr<LoadedChannelSecurity> LoadChannelSecurity(
    const ChannelSecurity& security);

// A channel to `target` (host:port) as `security` says, with `args`
// (may be null). Connects lazily. Errors: those of LoadChannelSecurity.
absl::StatusOr<std::shared_ptr<grpc::Channel>> NewSecureChannel(
    const std::string& target, const ChannelSecurity& security,
    const grpc::ChannelArguments* args = nullptr);
// The same from files already read.
std::shared_ptr<grpc::Channel> NewSecureChannel(
    const std::string& target, const LoadedChannelSecurity& security,
    const grpc::ChannelArguments* args = nullptr);

// The contents of the file at `path`; `field` names it in errors.
// Errors: kNotFound / kPermissionDenied / kInternal naming field and path.
absl::StatusOr<std::string> ReadSecurityFile(const std::string& field,
                                             const std::string& path);

}  // namespace saetrack

#endif  // SAETRACK_PROTO_CHANNEL_SECURITY_H_
