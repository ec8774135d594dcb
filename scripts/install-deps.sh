#!/usr/bin/env bash
# Installs what boxmeter needs from Debian 12's archive. One script for CI,
# the README's commands and the container build stage, so all three install
# the same things.
#
#   scripts/install-deps.sh build    compilers and -dev libraries
#   scripts/install-deps.sh test     build + the real peers the tests start
#   scripts/install-deps.sh runtime  the shared libraries the binaries need,
#                                    and what the installed hook example runs
#   scripts/install-deps.sh demo     build + what scripts/demo.sh starts
#   scripts/install-deps.sh WHAT --print   only prints WHAT's packages
#
# Installs only what is missing: when every package is installed already it
# says so and neither updates apt's lists nor calls apt-get. apt's own output
# goes to a log file, shown only when apt fails.
set -euo pipefail

what=${1:-test}

build_packages=(
  g++ cmake ninja-build pkg-config clang-format
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev
  libpqxx-dev            # PostgreSQL client (libpqxx 6.4 over libpq)
  libyaml-cpp-dev        # the config file
  libfmt-dev             # log and SQL formatting
  libboost-dev           # Boost.Asio: the event loop
  nlohmann-json3-dev     # the generator's JSON
  libsystemd-dev         # sd_notify
  libgtest-dev libgmock-dev
)
test_packages=(
  postgresql-15          # a real, throwaway PostgreSQL per test suite
  pgbouncer              # the writer lease through a transaction pooler
  v2ray                  # v2ray-core 4.34: the real StatsService peer
  curl                   # pushes real traffic through v2ray's socks inbound
  openssl python3        # the example webhook hook and its test's receiver
  procps                 # ps/pgrep, used by the scripts
  clang libclang-rt-14-dev  # libFuzzer and its sanitizers (scripts/fuzz.sh)
  systemd                # systemd-analyze verify/security on deploy/systemd
  faketime               # libfaketime: wall-clock steps between collector runs
  prometheus             # scrapes /metrics in the metrics test; promtool
  # scripts/image-test.sh and scripts/systemd-test.sh: the images built and
  # run for real, the units under a booted systemd
  buildah                # builds deploy/docker/Dockerfile without a daemon
  debootstrap            # the Debian 12 trees (no registry to pull from)
  systemd-container      # systemd-nspawn boots the units' Debian 12
  python3-yaml           # reads compose.yaml and the k8s example
  inotify-tools util-linux  # inotifywait (sing-box-reloader), setpriv, nsenter
)
runtime_packages=(
  libgrpc++1.51 libprotobuf32 libpqxx-6.4 libyaml-cpp0.7 libfmt9 libsystemd0
  curl openssl           # libexec/boxmeter/on-event-webhook.sh (hooks.on_event)
)
demo_packages=(postgresql-15 v2ray curl procps)

case "$what" in
  build) packages=("${build_packages[@]}") ;;
  test) packages=("${build_packages[@]}" "${test_packages[@]}") ;;
  runtime) packages=("${runtime_packages[@]}") ;;
  demo) packages=("${build_packages[@]}" "${demo_packages[@]}") ;;
  *)
    echo "usage: $0 build|test|runtime|demo (got \"$what\")" >&2
    exit 64
    ;;
esac

if [ "${2:-}" = --print ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it calls apt-get)" >&2
  exit 77
fi

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$package" 2>/dev/null || true)
  [[ $status == ii* ]] || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps.sh: the ${#packages[@]} packages for $what are installed"
  exit 0
fi
log=$(mktemp /tmp/boxmeter-install-deps.XXXXXX.log)
echo "install-deps.sh: installing ${#missing[@]} of the ${#packages[@]} packages for $what from Debian's archive (apt's output: $log): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  echo "install-deps.sh: apt-get failed; the end of $log:" >&2
  tail -25 "$log" >&2
  exit 1
fi
echo "install-deps.sh: installed ${missing[*]}"
rm -f "$log"
