// AtomicFile: replacing a file so that readers see either the old content or
// the new, never a mix, and a crash never leaves a truncated file.
//
// The content goes to a temporary file in the same directory (so the rename
// cannot cross file systems), which is given `mode`, written, fsync'ed and
// renamed over the target; then the directory is fsync'ed so the rename
// survives a crash. On any failure the temporary file is removed and the
// target is untouched. A symbolic link at `path` is followed: the file it
// points to is replaced and the link stays.
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
