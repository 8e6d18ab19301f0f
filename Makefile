# The two commands of the README, plus helpers. Every target installs what it
# needs first (scripts/install-deps.sh is idempotent and fast when nothing is missing).

export WISP_HOME ?= $(CURDIR)/.wisp
# Where rustup installs cargo when scripts/install-deps.sh had to install it.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
AGENT_TARGET := x86_64-unknown-linux-gnu
# The guest agent runs as PID 1 in a VM with no libc: link it statically. `wisp` itself
# carries one built this way (crates/vm/build.rs); `make agent` builds a loose copy for
# agent development (WISP_AGENT=target/x86_64-unknown-linux-gnu/release/wisp-agent).
AGENT_FLAGS := CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"

.PHONY: run test deps test-deps build agent fmt lint bench

## make run: install, build (release), prepare images, start the daemon on the embedded defaults.
## `wisp image build` is a no-op when the image is already built, so the debian image is
## built once per $(WISP_HOME).
run: deps build
	./target/release/wisp image build debian
	./target/release/wisp server

## make test: install test tools, then fmt, clippy and the whole test suite
## (scripts/test-suite.sh: cargo test --workspace, failing if a test was
## skipped or fewer than MIN_TESTS ran).
test: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash scripts/test-suite.sh

deps:
	bash scripts/install-deps.sh

test-deps:
	bash scripts/install-deps.sh --test

build:
	$(CARGO) build --release -p wisp-cli

agent:
	$(AGENT_FLAGS) $(CARGO) build --release -p wisp-agent --target $(AGENT_TARGET)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## make bench: measure wisp against references in one run (table on stdout, JSON in
## target/bench/results.json; see docs/PERFORMANCE.md). `make bench BENCH_FLAGS=--quick`
## is a short smoke run; `BENCH_FLAGS=--vm` adds the VM figures.
bench: test-deps build
	$(CARGO) build --release -p wisp-bench
	./target/release/wisp-bench $(BENCH_FLAGS)
