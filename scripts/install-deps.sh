#!/usr/bin/env bash
# Installs what wisp needs to build, run and test, and only what is missing, then verifies
# that every package and command is there, failing with the name of the first one that is not.
# Idempotent: a second run on the same machine installs nothing and takes seconds.
#
#   scripts/install-deps.sh           everything `make run` needs
#   scripts/install-deps.sh --test    also what `make test` and `make bench` need (Garage, fio, Node.js, ...)
#   scripts/install-deps.sh --verify [--test]
#                                     install nothing; only check, exit 1 naming what is missing
set -euo pipefail

want_test=0
verify_only=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --verify) verify_only=1 ;;
    *) echo "install-deps: unknown argument '$arg'; expected --test and/or --verify" >&2; exit 2 ;;
  esac
done

log() { printf 'install-deps: %s\n' "$*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Debian packages, each with the reason wisp needs it.
run_packages=(
  gcc               # links Rust binaries; builds the bundled SQLite and zstd (C)
  libc6-dev         # libc headers, and libc.a for the statically linked guest agent
  curl              # fetches rustup when cargo is missing; HTTP checks in tests
  qemu-system-x86   # runs each sprite as a QEMU microvm (TCG or KVM)
  qemu-utils        # qemu-img, qemu-io: image conversion and NBD checks in tests
  busybox-static    # the `tiny` image and the initramfs shell tools
  cpio              # packs the guest initramfs
  e2fsprogs         # mke2fs -d builds ext4 images without mounting; e2fsck checks them
  debootstrap       # builds the standard `debian` image
  ca-certificates   # HTTPS to S3 endpoints
  pkg-config        # build scripts of -sys crates
  sqlite3           # inspecting volume metadata by hand (debugging aid)
)
test_packages=(
  fio               # NBD benchmark and verify jobs (--ioengine=nbd, via libnbd)
  libnbd-bin        # nbdinfo, nbdcopy, nbdsh: independent NBD clients for tests
  nbdkit            # reference NBD server for benchmarks
  python3           # small HTTP servers on the host for egress tests
  musl-tools        # musl-gcc: a shell-less, musl-linked root filesystem for the image import test
)

# Commands wisp and its tests run, each with the package that provides it.
run_commands=(
  "gcc:gcc" "qemu-system-x86_64:qemu-system-x86" "qemu-img:qemu-utils" "qemu-io:qemu-utils"
  "busybox:busybox-static" "cpio:cpio" "mke2fs:e2fsprogs" "e2fsck:e2fsprogs"
  "debootstrap:debootstrap" "curl:curl"
)
test_commands=(
  "fio:fio" "nbdinfo:libnbd-bin" "nbdcopy:libnbd-bin" "nbdkit:nbdkit" "python3:python3"
  "musl-gcc:musl-tools" "node:nodejs" "npm:npm"
)
# Installed only when their command is missing: a machine may carry a newer Node.js
# from elsewhere (nodesource ships npm inside its nodejs). The JS SDK conformance test
# (crates/cli/tests/sdk_js.rs) runs the public Sprites SDK with them.
test_packages_if_missing=("node:nodejs" "npm:npm")

packages=("${run_packages[@]}")
commands=("${run_commands[@]}")
if (( want_test )); then
  packages+=("${test_packages[@]}")
  commands+=("${test_commands[@]}")
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Every package and command present, or exit 1 naming the first missing one.
verify() {
  local p entry cmd
  for p in "${packages[@]}"; do
    installed "$p" || { log "missing Debian package: $p (run scripts/install-deps.sh$( (( want_test )) && echo " --test"))"; return 1; }
  done
  for entry in "${commands[@]}"; do
    cmd=${entry%%:*}
    command -v "$cmd" >/dev/null 2>&1 || {
      log "missing command: $cmd (from Debian package ${entry#*:})"; return 1; }
  done
  PATH="$HOME/.cargo/bin:$PATH"
  command -v cargo >/dev/null 2>&1 || { log "missing command: cargo (the Rust toolchain, from rustup)"; return 1; }
  if (( want_test )); then
    garage --version 2>/dev/null | grep -Eq "(v|cargo:)${GARAGE_VERSION}\b" \
      || { log "missing command: garage ${GARAGE_VERSION} (cargo install --locked garage@${GARAGE_VERSION})"; return 1; }
  fi
  return 0
}
GARAGE_VERSION=2.5.0

if (( verify_only )); then
  verify && log "verified: every package and command is present"
  exit $?
fi

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
if (( want_test )); then
  for entry in "${test_packages_if_missing[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
  done
fi
if (( ${#missing[@]} )); then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  # QEMU's packages must come from one release: a newer qemu-utils (bookworm-backports, as
  # some machine images ship) Breaks the qemu-system-common that bookworm's qemu-system-x86
  # needs, and apt would silently remove it. Ask for both at qemu-system-x86's candidate
  # version in the same transaction, so apt installs a matching pair or fails loudly.
  pinned=()
  for p in "${missing[@]}"; do
    case "$p" in
      qemu-system-x86|qemu-utils) ;;
      *) pinned+=("$p") ;;
    esac
  done
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
  installed_qemu_system=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [[ -n "$installed_qemu_system" ]]; then qemu_version=$installed_qemu_system; fi
  if [[ " ${missing[*]} " == *" qemu-system-x86 "* || " ${missing[*]} " == *" qemu-utils "* ]]; then
    [[ -n "$qemu_version" && "$qemu_version" != "(none)" ]] || { log "apt has no qemu-system-x86"; exit 1; }
    pinned+=("qemu-system-x86=$qemu_version" "qemu-utils=$qemu_version")
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    --allow-downgrades "${pinned[@]}"
else
  log "Debian packages: all present"
fi

# Rust: a fresh Debian 12 has none. rustup puts cargo in ~/.cargo/bin, which
# the Makefile adds to PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/cargo" ]]; then
  log "installing the Rust toolchain with rustup (cargo is missing)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="$HOME/.cargo/bin:$PATH"

# Rust toolchain components used by `make test`.
if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

# Garage: a real distributed S3-compatible store for the object-store tests.
# Pinned; built once per machine (about 9-15 minutes on 2 cores) and reused after.
if (( want_test )); then
  if command -v garage >/dev/null 2>&1 && garage --version 2>/dev/null | grep -Eq "(v|cargo:)${GARAGE_VERSION}\b"; then
    log "garage ${GARAGE_VERSION}: present"
  else
    log "building garage ${GARAGE_VERSION} with cargo install (takes several minutes, once per machine)"
    cargo install --locked "garage@${GARAGE_VERSION}"
  fi
fi

verify || exit 1
log "done: every package and command is present"
