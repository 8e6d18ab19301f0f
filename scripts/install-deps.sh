#!/usr/bin/env bash
# Installs what wisp needs to build, run and test, and only what is missing.
# Idempotent: a second run on the same machine installs nothing and takes seconds.
#
#   scripts/install-deps.sh          everything `make run` needs
#   scripts/install-deps.sh --test   also what `make test` and `make bench` need (Garage, fio, ...)
set -euo pipefail

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

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
)

packages=("${run_packages[@]}")
(( want_test )) && packages+=("${test_packages[@]}")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if (( ${#missing[@]} )); then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
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
# Pinned; built once per machine (about 9 minutes on 2 cores) and reused after.
GARAGE_VERSION=2.5.0
if (( want_test )); then
  if command -v garage >/dev/null 2>&1 && garage --version 2>/dev/null | grep -Eq "(v|cargo:)${GARAGE_VERSION}\b"; then
    log "garage ${GARAGE_VERSION}: present"
  else
    log "building garage ${GARAGE_VERSION} with cargo install (takes several minutes, once per machine)"
    cargo install --locked "garage@${GARAGE_VERSION}"
  fi
fi
log "done"
