# shellcheck shell=bash
# Installs what Trellis needs to build and test on Debian 12 (bookworm), idempotently and quietly.
# Sourced by scripts/test and scripts/demo (it may also be run directly). Every package comes from
# Debian's archive; see ../shared/notes/toolchain.md for why each one is here.
#
# After sourcing, `trellis_bazel_root` (makes sure Bazel's output_user_root, set in .bazelrc, exists
# and is writable) and `trellis_drop_foreign_bazel_links` are available.

TRELLIS_DEBIAN_PACKAGES=(
  # Bazel 4.2.3 and Debian's rule repositories (the WORKSPACE points at /usr/share/bazel).
  bazel-bootstrap bazel-platforms bazel-rules-proto bazel-skylib
  # Compilers: g++ for the default and ASan builds, clang-14 + its runtimes for libFuzzer.
  g++ clang-14 libclang-rt-14-dev llvm-14 pkg-config
  # Libraries, found through pkg-config by //third_party/system:system_libs.bzl.
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev libabsl-dev
  libssl-dev openssl libgtest-dev libgmock-dev googletest android-libboringssl-dev
  nlohmann-json3-dev libbenchmark-dev libcpp-httplib-dev libcurl4-openssl-dev libyaml-cpp-dev
  faketime
  # Tools the tests and the demo use.
  python3 curl iproute2 iptables ca-certificates tcpdump
)

# Bazel's output_user_root, as in .bazelrc (`startup --output_user_root=...`).
TRELLIS_BAZEL_ROOT=/var/cache/trellis-bazel

trellis_install_deps() {
  local pkg status missing=()
  for pkg in "${TRELLIS_DEBIAN_PACKAGES[@]}"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not a shell variable.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  # Node.js and npm (the Kubernetes schema validator in tests/k8s): machines of this kind come
  # with them; install Debian's only where they are absent, never over another install.
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
  fi
  if ((${#missing[@]} == 0)); then
    return 0
  fi

  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run this, then try again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi

  local log="${TMPDIR:-/tmp}/trellis-install-deps.log"
  echo "install-deps: installing ${#missing[@]} Debian packages (log: $log): ${missing[*]}"
  if ! {
    apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}"
  } >"$log" 2>&1; then
    echo "install-deps: apt-get failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    echo "install-deps: full log: $log" >&2
    exit 1
  fi
}

trellis_bazel_root() {
  if ! mkdir -p "$TRELLIS_BAZEL_ROOT" 2>/dev/null || [[ ! -w "$TRELLIS_BAZEL_ROOT" ]]; then
    echo "install-deps: Bazel's output_user_root $TRELLIS_BAZEL_ROOT (see .bazelrc) is not writable;" >&2
    echo "  run as root, or: sudo install -d -o \"\$(id -un)\" $TRELLIS_BAZEL_ROOT" >&2
    exit 1
  fi
}

# trellis_drop_foreign_bazel_links: run from the repo root. A build with another --output_base (the
# fuzz one) that did not pass --symlink_prefix=/ repoints bazel-<workspace>, bazel-bin, ... at its own
# output base; the default server then no longer recognises them and `//...` descends into
# bazel-<workspace>/external/... and fails to load. They are only convenience links, which Bazel
# re-creates after each build: remove the ones that point outside the default output base.
trellis_drop_foreign_bazel_links() {
  local output_base link dropped=()
  output_base=$(bazel info --color=no output_base 2>/dev/null) || return 0
  for link in bazel-*; do
    if [[ -L "$link" && "$(readlink "$link")" != "$output_base"/* ]]; then
      rm -f "$link"
      dropped+=("$link")
    fi
  done
  if ((${#dropped[@]})); then
    echo "Removed convenience links from another output base (Bazel re-creates them): ${dropped[*]}"
  fi
}

trellis_install_deps

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  trellis_bazel_root
  echo "install-deps: all ${#TRELLIS_DEBIAN_PACKAGES[@]} Debian packages are installed."
fi
