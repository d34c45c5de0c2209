// saetrack-tokenize: turns a text file into a token file with a Hugging Face
// tokenizer.json. Parses flags into TokenizeFileOptions and runs.
#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "format/token_file.h"
#include "format/tokenize_file.h"

namespace {

constexpr char kUsage[] =
    R"(Usage: saetrack-tokenize --tokenizer FILE --in FILE --out FILE [flags]

Encodes the text file --in with the Hugging Face tokenizer.json --tokenizer
(byte-level BPE: GPT-2, Pythia) and writes the ids to --out as a flat
little-endian token file, atomically. Prints one line: tokens written, dtype,
bytes and encoding speed.

Flags (--flag VALUE or --flag=VALUE):
  --tokenizer FILE  tokenizer.json (required)
  --in FILE         text to encode (required); read whole into memory
  --out FILE        token file to write (required); replaced if it exists
  --dtype TYPE      auto, uint16 or uint32 (default auto: uint16 when the
                    vocabulary has at most 65536 ids)
  --append_eos      append the <|endoftext|> id after the text
  --help            show this help
)";

int UsageError(const std::string& message) {
  std::cerr << "saetrack-tokenize: " << message
            << "\nRun saetrack-tokenize --help for usage.\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  saetrack::format::TokenizeFileOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (flag.rfind("--", 0) != 0) {
      return UsageError("unexpected argument " + flag);
    }
    std::string value;
    const size_t equals = flag.find('=');
    const bool has_value = equals != std::string::npos;
    if (has_value) {
      value = flag.substr(equals + 1);
      flag = flag.substr(0, equals);
    }
    const std::string name = flag.substr(2);
    if (name == "append_eos") {
      if (has_value && value != "true" && value != "false") {
        return UsageError("invalid value \"" + value + "\" for " + flag);
      }
      options.append_eos = !has_value || value == "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return UsageError(flag + " needs a value");
      value = argv[++i];
    }
    if (name == "tokenizer") {
      options.tokenizer_path = value;
    } else if (name == "in") {
      options.input_path = value;
    } else if (name == "out") {
      options.output_path = value;
    } else if (name == "dtype") {
      if (value == "auto") {
        options.dtype.reset();
      } else {
        auto dtype = saetrack::format::ParseTokenDtype(value);
        if (!dtype.ok()) {
          return UsageError("invalid value \"" + value + "\" for " + flag +
                            " (auto, uint16 or uint32)");
        }
        options.dtype = *dtype;
      }
    } else {
      return UsageError("unknown flag " + flag);
    }
  }
  if (options.tokenizer_path.empty())
    return UsageError("--tokenizer is required");
  if (options.input_path.empty()) return UsageError("--in is required");
  if (options.output_path.empty()) return UsageError("--out is required");

  auto result = saetrack::format::TokenizeFile(options);
  if (!result.ok()) {
    std::cerr << "saetrack-tokenize: " << result.status().message() << "\n";
    return 1;
  }
  const double seconds =
      result->encode_seconds > 0 ? result->encode_seconds : 1e-9;
  std::cout << absl::StrFormat(
      "wrote %d tokens (%s, %d bytes) to %s; encoded at %.0f tokens/s\n",
      result->tokens,
      result->dtype == saetrack::format::TokenDtype::kUint16 ? "uint16"
                                                             : "uint32",
      result->bytes, options.output_path, result->tokens / seconds);
  return 0;
}
