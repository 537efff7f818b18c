# shellcheck shell=bash
# A real kube-apiserver (plus etcd) for tests, on machines without a cluster or a container engine.
# See ../shared/notes/kubernetes-testing.md. Sourced by scripts/test; it only defines functions
# (and TRELLIS_KUBE_* defaults) and runs nothing.
#
#   trellis_kube_binaries
#       Makes sure $TRELLIS_KUBE_CACHE/kube-apiserver exists (default
#       /var/cache/trellis-kube/v1.20.2) and prints that directory on stdout (everything else goes
#       to stderr). Always makes sure etcd-server is installed (the tests run it). On a miss it
#       also installs golang-go jq rsync dpkg-dev golang-github-modern-go-reflect2-dev, fetches
#       Debian bookworm's `kubernetes` source package (1.20.5+really1.20.2, Go dependencies
#       vendored) through a private apt configuration (own sources, lists and caches: the
#       machine's apt state is untouched), swaps the vendored reflect2 1.0.1 (crashes under Go
#       1.19) for Debian's 1.0.2 and builds cmd/kube-apiserver (about 200 s on 2 idle cores, 7 min
#       when other builds share them), printing a progress line every 30 s. The build runs in a
#       temporary directory next to the cache and the binary is moved into place only at the end,
#       so an interrupted run leaves nothing half-built behind (the next run deletes the leftover
#       directory); a lock serialises concurrent runs.
#
#   trellis_start_kube_apiserver DIR [BIN_DIR], trellis_stop_kube_apiserver
#       A running etcd + kube-apiserver for a test, and its cleanup: see
#       tests/e2e/kube/kube_harness.sh (sourced at the end of this file).

TRELLIS_KUBE_VERSION="${TRELLIS_KUBE_VERSION:-v1.20.2}"
TRELLIS_KUBE_CACHE="${TRELLIS_KUBE_CACHE:-/var/cache/trellis-kube/$TRELLIS_KUBE_VERSION}"

# _trellis_kube_log (messages to stderr) comes from kube_harness.sh, sourced at the end.

# Installs whichever of the packages is missing (as root; otherwise says what to run).
# _trellis_kube_install_packages LOG PACKAGE...
_trellis_kube_install_packages() {
  local log=$1 pkg status missing=()
  shift
  for pkg in "$@"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field.
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    _trellis_kube_log "missing Debian packages: ${missing[*]}; run as root, or:"
    _trellis_kube_log "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
    return 1
  fi
  _trellis_kube_log "installing ${missing[*]} (log: $log)"
  {
    apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}"
  } >>"$log" 2>&1 || {
    _trellis_kube_log "apt-get install failed; last lines of $log:"
    tail -n 20 "$log" >&2
    return 1
  }
}

# _trellis_kube_fetch_source DIR LOG: `apt-get source kubernetes` (bookworm) into DIR, with a
# private sources list, package lists and caches, so the machine's apt state is left untouched.
_trellis_kube_fetch_source() {
  local dir=$1 log=$2 apt_dir="$1/apt" apt_opts
  mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial"
  : >"$apt_dir/sources.list"
  cat >"$apt_dir/sources.list.d/bookworm-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt_opts=(
    -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
    -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
  )
  _trellis_kube_log "fetching Debian's kubernetes source package (bookworm)"
  apt-get "${apt_opts[@]}" update >>"$log" 2>&1 || {
    _trellis_kube_log "apt-get update (deb-src bookworm) failed; last lines of $log:"
    tail -n 20 "$log" >&2
    return 1
  }
  (cd "$dir" && apt-get "${apt_opts[@]}" source -qq kubernetes) >>"$log" 2>&1 || {
    _trellis_kube_log "apt-get source kubernetes failed; last lines of $log:"
    tail -n 20 "$log" >&2
    return 1
  }
}

# _trellis_kube_build BUILD_DIR LOG CACHE START: the steps of trellis_kube_binaries after locking.
_trellis_kube_build() {
  local build=$1 log=$2 cache=$3 start=$4 src reflect2 out heartbeat
  _trellis_kube_install_packages "$log" golang-go jq rsync golang-github-modern-go-reflect2-dev \
    dpkg-dev || return 1
  _trellis_kube_fetch_source "$build" "$log" || return 1
  # Bookworm's version is 1.20.5+really1.20.2-...: the 1.20.2 tree.
  src=$(find "$build" -mindepth 1 -maxdepth 1 -type d -name "kubernetes-*${TRELLIS_KUBE_VERSION#v}" | head -n1)
  if [[ -z "$src" || ! -d "$src/vendor" ]]; then
    _trellis_kube_log "no kubernetes-*${TRELLIS_KUBE_VERSION#v}/vendor directory after apt-get source:"
    ls "$build" >&2
    return 1
  fi
  _trellis_kube_log "source: ${src##*/}"
  reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
  if [[ ! -f "$reflect2/reflect2.go" ]]; then
    _trellis_kube_log "$reflect2 missing (golang-github-modern-go-reflect2-dev)"
    return 1
  fi
  _trellis_kube_log "vendoring reflect2 $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev) from golang-github-modern-go-reflect2-dev"
  rm -rf "$src/vendor/github.com/modern-go/reflect2" || return 1
  mkdir -p "$src/vendor/github.com/modern-go/reflect2" || return 1
  find "$reflect2" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' -o -name 'LICENSE' \) \
    ! -name '*_test.go' -exec cp {} "$src/vendor/github.com/modern-go/reflect2/" \; || return 1

  _trellis_kube_log "make WHAT=cmd/kube-apiserver ($(go version | cut -d' ' -f3), about 200 s on 2 cores)"
  (while sleep 30 >/dev/null 2>&1; do _trellis_kube_log "  ... still compiling ($((SECONDS - start)) s)"; done) >/dev/null &
  heartbeat=$!
  (
    cd "$src" || exit 1
    export GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 KUBE_GIT_VERSION="$TRELLIS_KUBE_VERSION"
    export GOCACHE="$build/gocache" GOPATH="$build/gopath" HOME="$build"
    # --foreground: stay in our process group, so Ctrl-C and group kills reach make.
    timeout --foreground 3600 make WHAT=cmd/kube-apiserver
  ) >>"$log" 2>&1
  local make_rc=$?
  kill "$heartbeat" 2>/dev/null
  wait "$heartbeat" 2>/dev/null
  if ((make_rc != 0)); then
    _trellis_kube_log "make failed (exit $make_rc); last lines of $log:"
    tail -n 30 "$log" >&2
    return 1
  fi
  out=$(find "$src/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
  if [[ -z "$out" ]]; then
    _trellis_kube_log "make succeeded but left no _output/**/kube-apiserver"
    return 1
  fi
  mkdir -p "$build/bin" && cp "$out" "$build/bin/kube-apiserver" || return 1
  "$build/bin/kube-apiserver" --version >&2 || return 1
  # Move into place in one step: the cache dir appears complete or not at all.
  rm -rf "$cache" && mv "$build/bin" "$cache"
}

trellis_kube_binaries() {
  local cache=$TRELLIS_KUBE_CACHE root lock_fd build log start rc=0
  # What the tests need at run time, cached binary or not.
  _trellis_kube_install_packages "${TMPDIR:-/tmp}/trellis-kube-install.log" etcd-server openssl \
    curl python3 ca-certificates || return 1
  if [[ -x "$cache/kube-apiserver" ]]; then
    printf '%s\n' "$cache"
    return 0
  fi
  root=$(dirname "$cache")
  mkdir -p "$root" || return 1
  # One build at a time; a second caller waits (bounded) and then finds the binary.
  exec {lock_fd}>"$root/.lock"
  if ! flock -w 1800 "$lock_fd"; then
    _trellis_kube_log "timed out waiting for another build (lock $root/.lock)"
    exec {lock_fd}>&-
    return 1
  fi
  if [[ -x "$cache/kube-apiserver" ]]; then
    exec {lock_fd}>&-
    printf '%s\n' "$cache"
    return 0
  fi
  # Left over from interrupted runs (we hold the lock, so nobody is using them).
  if compgen -G "$root/.build-*" >/dev/null; then
    _trellis_kube_log "removing the leftovers of an interrupted build: $root/.build-*"
    rm -rf "$root"/.build-*
  fi
  build=$(mktemp -d "$root/.build-XXXXXX")
  log="$build/build.log"
  start=$SECONDS
  _trellis_kube_log "building kube-apiserver $TRELLIS_KUBE_VERSION into $cache (log: $log)"

  # A subshell, so that the heartbeat and the build's exports end with it. Every step checks its
  # own status: `set -e` does not apply inside a command whose status is tested.
  (_trellis_kube_build "$build" "$log" "$cache" "$start") || rc=$?
  if ((rc == 0)); then
    _trellis_kube_log "built in $((SECONDS - start)) s"
    rm -rf "$build" "$root/last-build-failure.log"
    exec {lock_fd}>&-
    printf '%s\n' "$cache"
    return 0
  fi
  # Keep the log of a failed build; drop the (large) rest.
  cp "$log" "$root/last-build-failure.log" 2>/dev/null || true
  rm -rf "$build"
  _trellis_kube_log "build failed after $((SECONDS - start)) s; log kept in $root/last-build-failure.log"
  exec {lock_fd}>&-
  return 1
}

# The start/stop harness lives next to the e2e tests (so Bazel can ship it as test data).
# shellcheck source=SCRIPTDIR/../../tests/e2e/kube/kube_harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/e2e/kube/kube_harness.sh"
