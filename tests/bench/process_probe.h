// Readings of processes for the benchmark: this process's memory, and the
// CPU time of any process (a PostgreSQL backend, say).
//
// Resident set sizes come from /proc/self/status. The peak (VmHWM) can be
// reset (Linux 4.0+, /proc/self/clear_refs), so the peak of one poll can be
// read without the history before it. Heap figures come from glibc's
// allocator: the bytes handed out by malloc and not yet freed. CPU time comes
// from /proc/PID/schedstat: nanoseconds on a CPU, which unlike wall time do
// not grow while other work on a shared machine has the CPU.
#pragma once

#include <sys/types.h>

#include <cstdint>

namespace boxmeter::testing {

// VmRSS and VmHWM in bytes; 0 when unreadable.
int64_t ResidentBytes();
int64_t PeakResidentBytes();

// Resets VmHWM to the current RSS. Returns false where the kernel does not
// allow it; peaks then include everything since the process started.
bool ResetPeakResident();

// Bytes allocated with malloc and not freed (glibc's mallinfo2).
int64_t HeapInUseBytes();

// Returns free heap memory to the system, so RSS readings after it reflect
// what is in use rather than what the allocator keeps for later.
void TrimHeap();

// Nanoseconds process `pid` has run on a CPU; -1 when unreadable.
int64_t CpuNanos(pid_t pid);

}  // namespace boxmeter::testing
