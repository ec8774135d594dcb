// AtomicFile: replacing a file so that readers see either the old content or
// the new, never a mix, and a crash never leaves a truncated file.
//
// The content goes to a temporary file in the same directory (so the rename
// cannot cross file systems), which is given `mode`, written, fsync'ed and
// renamed over the target; then the directory is fsync'ed so the rename
// survives a crash. On any failure the temporary file is removed and the
// target is untouched.
//
// A symbolic link at `path` (dangling or not) is followed, the file it
// points to replaced and the link kept, only when every link on the way
// belongs to root or to this process's user and sits in a directory that
// belongs to one of them and that nobody else may write; otherwise the
// write is refused (an error naming the link and why) and nothing is
// touched, so that a root boxmeter-gen cannot be made to write a file
// another user chose.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "status.h"

namespace boxmeter {

Status WriteFileAtomically(const std::string& path, std::string_view content,
                           mode_t mode);

// Reads the whole file. kInvalid if it does not exist, kError if it cannot
// be read; messages name the path and the reason.
Status ReadWholeFile(const std::string& path, std::string* content);

}  // namespace boxmeter
