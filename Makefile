# corral: build, test, lint, install, run, bench.
# `make run` and `make test` are all a new user needs (as root on Debian 12).

CARGO ?= cargo
PREFIX ?= /usr/local
TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR := $(TARGET_DIR)

DEBUG_SHIM := $(TARGET_DIR)/debug/containerd-shim-corral-v1
RELEASE_SHIM := $(TARGET_DIR)/shim/containerd-shim-corral-v1

# Debian packages the tests and `make run` need. Installed only when something is missing.
PACKAGES := runc containerd busybox-static
NEEDED_COMMANDS := runc containerd ctr containerd-shim-runc-v2 busybox

.PHONY: all build release test lint fmt install deps run stop bench clean

all: build

## deps: install missing runtime packages with apt-get (needs root)
deps:
	@missing=""; for c in $(NEEDED_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "missing:$$missing; installing $(PACKAGES)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(PACKAGES); \
	fi

## build: debug build of every crate and binary (what the tests use)
build:
	$(CARGO) build --workspace --bins

## release: optimised binaries (what install, run and bench use); the shim has its own
## size-optimised profile
release:
	$(CARGO) build --profile shim -p shim

## test: unit, conformance, crash and end-to-end tests (root tests need root; CI sets
## CORRAL_REQUIRE_ROOT=1 so that they fail instead of skipping)
test: deps build
	CORRAL_SHIM_BIN=$(DEBUG_SHIM) CORRALD_BIN=$(TARGET_DIR)/debug/corrald $(CARGO) test --workspace --no-fail-fast

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## install: the shim into $(PREFIX)/bin, where containerd finds it on its PATH
install: release
	install -D -m 0755 $(RELEASE_SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-corral-v1

## run: install what is missing, build, install the shim, and start containerd on its
## default paths if it is not running, so that `ctr run --runtime io.containerd.corral.v1` works.
## (corrald, our own daemon, replaces containerd here once it lands.)
run: deps install
	@if ctr version >/dev/null 2>&1; then \
		echo "containerd is running on /run/containerd/containerd.sock"; \
	else \
		echo "starting containerd (log: /var/log/corral-containerd.log)"; \
		nohup containerd >/var/log/corral-containerd.log 2>&1 & \
		for i in $$(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done; \
		ctr version >/dev/null; \
	fi
	@echo "ready: ctr run --rm --runtime io.containerd.corral.v1 <image> <id> <cmd>"

## bench: shim idle memory beside containerd's Go shim, content ingest, layer apply
bench: deps release
	CORRAL_SHIM_BIN=$(RELEASE_SHIM) $(CARGO) bench -p integration --bench shim_memory
	SHIM_MEMORY_N=1 CORRAL_SHIM_BIN=$(RELEASE_SHIM) $(CARGO) bench -p integration --bench shim_memory
	$(CARGO) bench -p content --bench ingest
	$(CARGO) bench -p snapshotter --bench apply

clean:
	$(CARGO) clean
