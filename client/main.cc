// saetrack: the command-line client of a saetrack coordinator.
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "client/cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return saetrack::client::RunCli(args, std::cout, std::cerr,
                                  isatty(STDERR_FILENO) != 0);
}
