#include "proto/channel_security.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"

namespace saetrack {
namespace {

// Adds `authorization: Bearer <token>` to the initial metadata of every
// call of the channel. An interceptor rather than call credentials, so that
// the same mechanism works over TLS and over plaintext loopback.
class BearerTokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(std::shared_ptr<const std::string> header)
      : header_(std::move(header)) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::
                PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", *header_);
    }
    methods->Proceed();
  }

 private:
  const std::shared_ptr<const std::string> header_;
};

class BearerTokenInterceptorFactory final
    : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenInterceptorFactory(const std::string& token)
      : header_(std::make_shared<const std::string>(
            absl::StrCat("Bearer ", token))) {}

  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo* /*info*/) override {
    return new BearerTokenInterceptor(header_);
  }

 private:
  const std::shared_ptr<const std::string> header_;
};

}  // namespace

absl::StatusOr<std::string> ReadSecurityFile(const std::string& field,
                                             const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string message =
        absl::StrCat(field, ": cannot read ", path, ": ", strerror(err));
    if (err == ENOENT) return absl::NotFoundError(message);
    if (err == EACCES || err == EPERM) {
      return absl::PermissionDeniedError(message);
    }
    return absl::InternalError(message);
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return absl::InternalError(absl::StrCat(field, ": cannot read ", path));
  }
  return contents.str();
}

absl::StatusOr<LoadedChannelSecurity> LoadChannelSecurity(
    const ChannelSecurity& security) {
  LoadedChannelSecurity loaded;
  if (security.tls_cert_file.empty() != security.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls_cert / tls_key: a client certificate needs its key and a key "
        "its certificate");
  }
  if (security.tls_ca_file.empty()) {
    if (!security.tls_cert_file.empty()) {
      return absl::InvalidArgumentError(
          "tls_cert: a client certificate needs tls_ca (the CA of the "
          "server's certificate)");
    }
    if (!security.tls_server_name.empty()) {
      return absl::InvalidArgumentError("tls_server_name: needs tls_ca (TLS)");
    }
  }
  if (!security.token_file.empty()) {
    absl::StatusOr<std::string> token =
        ReadSecurityFile("token_file", security.token_file);
    if (!token.ok()) return token.status();
    loaded.token = std::string(absl::StripAsciiWhitespace(*token));
    if (loaded.token.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_file: ", security.token_file, " holds no token"));
    }
    for (char c : loaded.token) {
      if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token_file: ", security.token_file,
            " holds more than one token (whitespace or control characters "
            "inside)"));
      }
    }
  }
  if (!security.tls_ca_file.empty()) {
    loaded.tls = true;
    absl::StatusOr<std::string> ca =
        ReadSecurityFile("tls_ca", security.tls_ca_file);
    if (!ca.ok()) return ca.status();
    loaded.ca_pem = *std::move(ca);
    if (!security.tls_cert_file.empty()) {
      absl::StatusOr<std::string> cert =
          ReadSecurityFile("tls_cert", security.tls_cert_file);
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key =
          ReadSecurityFile("tls_key", security.tls_key_file);
      if (!key.ok()) return key.status();
      loaded.cert_pem = *std::move(cert);
      loaded.key_pem = *std::move(key);
    }
    loaded.tls_server_name = security.tls_server_name;
  }
  return loaded;
}

std::shared_ptr<grpc::Channel> NewSecureChannel(
    const std::string& target, const LoadedChannelSecurity& security,
    const grpc::ChannelArguments* args) {
  grpc::ChannelArguments channel_args;
  if (args != nullptr) channel_args = *args;
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (security.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = security.ca_pem;
    ssl.pem_cert_chain = security.cert_pem;
    ssl.pem_private_key = security.key_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!security.tls_server_name.empty()) {
      channel_args.SetSslTargetNameOverride(security.tls_server_name);
    }
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  if (security.token.empty()) {
    return grpc::CreateCustomChannel(target, credentials, channel_args);
  }
  std::vector<
      std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      std::make_unique<BearerTokenInterceptorFactory>(security.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(
      target, credentials, channel_args, std::move(interceptors));
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> NewSecureChannel(
    const std::string& target, const ChannelSecurity& security,
    const grpc::ChannelArguments* args) {
  absl::StatusOr<LoadedChannelSecurity> loaded = LoadChannelSecurity(security);
  if (!loaded.ok()) return loaded.status();
  return NewSecureChannel(target, *loaded, args);
}

}  // namespace saetrack
