// RecordingHook: a hooks.on_users_changed command that records its runs. Each
// run appends one line to a file in a directory of its own, so a test counts
// the runs that got that far by counting the lines. The directory goes with
// the object: whatever runs the hook must be gone first.
#pragma once

#include <sstream>
#include <string>

#include "process.h"

namespace boxmeter::testing {

class RecordingHook {
 public:
  RecordingHook() : path_(dir_.path() + "/runs") {}

  // The shell command: appends a line for this run, then runs `then` (for
  // instance "; exit 1" for a hook that fails after recording).
  std::string Command(const std::string& then = "") const {
    return "echo run >> '" + path_ + "'" + then;
  }

  // How many runs have recorded themselves so far.
  int Runs() const {
    std::istringstream in(ReadFile(path_));
    int lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    return lines;
  }

 private:
  TempDir dir_;
  std::string path_;
};

}  // namespace boxmeter::testing
