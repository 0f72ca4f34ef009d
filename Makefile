# corral: build, test, lint, install, run, bench.
# `make run` and `make test` are all a new user needs (as root on Debian 12).

CARGO ?= cargo
PREFIX ?= /usr/local
TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR := $(TARGET_DIR)

DEBUG_SHIM := $(TARGET_DIR)/debug/containerd-shim-corral-v1
RELEASE_SHIM := $(TARGET_DIR)/shim/containerd-shim-corral-v1
RELEASE_CORRALD := $(TARGET_DIR)/release/corrald
RELEASE_CORRAL := $(TARGET_DIR)/release/corral
RELEASE_CRI := $(TARGET_DIR)/release/corral-cri
IMAGE_TAR := $(TARGET_DIR)/busybox-image.tar
PAUSE_TAR := $(TARGET_DIR)/pause-image.tar
CORRALD_SOCK := /run/corral/corral.sock
CRI_SOCK := /run/corral/cri.sock
CNI_CONF_DIR := /etc/cni/net.d
# systemd units go where systemd looks for units installed under $(PREFIX).
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
UNITS := corrald corral-cri

# Debian packages the tests and `make run` need. Installed only when something is missing.
# python3-venv: the tests install grpcio (grpc C-core's Python client, from PyPI) into a venv.
# systemd: systemd-analyze checks our units (the tests); systemd need not be running.
PACKAGES := runc containerd busybox-static docker-registry containernetworking-plugins iproute2 iptables \
	gcc libc6-dev docker.io openssl python3-venv systemd
NEEDED_COMMANDS := runc containerd ctr containerd-shim-runc-v2 busybox docker-registry ip iptables cc \
	dockerd docker openssl systemd-analyze
# Files of packages that install no command (the CNI plugins corral-cri runs).
NEEDED_FILES := /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback /usr/lib/cni/portmap
# Python modules of packages that install no command (python3-venv's ensurepip).
NEEDED_PYTHON_MODULES := ensurepip
# crictl and critest (cri-tools v1.36.0), shipped beside the checkout.
CRI_TOOLS := $(CURDIR)/../shared/cri-tools
# critest's busybox is built from Debian's busybox source package (`apt-get source`, then
# `make`): Debian's busybox-static lacks applets critest runs. apt needs deb-src entries for it.
PACKAGES += make bzip2 xz-utils dpkg-dev
NEEDED_COMMANDS += make bzip2 xz dpkg-source
DEB_SRC_LIST := /etc/apt/sources.list.d/debian-src.sources
# Extra critest flags for `make critest`, e.g. CRITEST_FLAGS='-ginkgo.focus=Networking'.
CRITEST_FLAGS ?=

.PHONY: all build release test soak lint fmt install install-units deps run image bench clean critest critest-containerd fuzz

all: build

## deps: install missing runtime packages with apt-get (needs root); add Debian's source
## packages to apt (critest's busybox is built from one)
deps:
	@if ! grep -qsr '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then \
		echo "adding Debian's source packages to apt ($(DEB_SRC_LIST))"; \
		if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
			sed -e 's/^Types: deb$$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > $(DEB_SRC_LIST); \
		else \
			sed -n -e 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/debian-src.list; \
		fi; \
		apt-get update; \
	fi
	@missing=""; for c in $(NEEDED_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	for f in $(NEEDED_FILES); do [ -e $$f ] || missing="$$missing $$f"; done; \
	for m in $(NEEDED_PYTHON_MODULES); do /usr/bin/python3 -c "import $$m" 2>/dev/null || missing="$$missing python:$$m"; done; \
	if [ -n "$$missing" ]; then \
		echo "missing:$$missing; installing $(PACKAGES)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(PACKAGES); \
	fi
	@if ! command -v crictl >/dev/null 2>&1 || ! command -v critest >/dev/null 2>&1; then \
		echo "installing crictl and critest from $(CRI_TOOLS)"; \
		$(CRI_TOOLS)/install.sh; \
	fi

## build: debug build of every crate and binary (what the tests use)
build:
	$(CARGO) build --workspace --bins

## release: optimised binaries (what install, run and bench use); the shim has its own
## size-optimised profile
release:
	$(CARGO) build --profile shim -p shim
	$(CARGO) build --release -p supervisor -p cli -p cri

## test: unit, conformance, crash and end-to-end tests (root tests need root; CI sets
## CORRAL_REQUIRE_ROOT=1 so that they fail instead of skipping)
test: deps build
	CORRAL_SHIM_BIN=$(DEBUG_SHIM) CORRALD_BIN=$(TARGET_DIR)/debug/corrald \
		CORRAL_BIN=$(TARGET_DIR)/debug/corral CORRAL_CRI_BIN=$(TARGET_DIR)/debug/corral-cri \
		$(CARGO) test --workspace --no-fail-fast

## soak: load and long runs, not part of `make test`, printing their figures, one at a time:
## corrald down for 5 minutes while 20 containers exit, with each shim (`make test` runs the
## same for 25 s); then every integration test file soak_*: 1,000 containers in waves of 50
## (SOAK_CONTAINERS, SOAK_WAVE, SOAK_WARMUP_WAVES); 200 clients while containers churn
## (SOAK_CLIENTS, SOAK_CHURN, SOAK_CHURN_WAVE, SOAK_ROUNDS, SOAK_CLIENT_PERIOD_MS)
soak: deps build
	CORRAL_SHIM_BIN=$(DEBUG_SHIM) CORRALD_BIN=$(TARGET_DIR)/debug/corrald \
		CORRAL_BIN=$(TARGET_DIR)/debug/corral \
		$(CARGO) test -p integration --test faults_events -- --ignored
	CORRAL_SHIM_BIN=$(DEBUG_SHIM) CORRALD_BIN=$(TARGET_DIR)/debug/corrald \
		CORRAL_BIN=$(TARGET_DIR)/debug/corral CORRAL_CRI_BIN=$(TARGET_DIR)/debug/corral-cri \
		$(CARGO) test -p integration --test 'soak_*' -- --include-ignored --nocapture --test-threads=1

## critest: cri-tools' CRI validation suite against corral-cri on a private corrald, offline
## (look-alike images in a local registry, registry.k8s.io, gcr.io and k8s.gcr.io mirrored to
## it); the streaming tests (exec, attach, port-forward) run over SPDY, then again over
## WebSocket; CRITEST_FLAGS adds critest flags, e.g. CRITEST_FLAGS='-ginkgo.focus=Networking'
critest: deps build
	CORRAL_SHIM_BIN=$(DEBUG_SHIM) CORRALD_BIN=$(TARGET_DIR)/debug/corrald \
		CORRAL_CRI_BIN=$(TARGET_DIR)/debug/corral-cri \
		$(TARGET_DIR)/debug/corral-critest $(CRITEST_FLAGS)

## critest-containerd: the same against containerd 1.6's own CRI plugin, for comparison
critest-containerd: deps build
	$(TARGET_DIR)/debug/corral-critest --containerd $(CRITEST_FLAGS)

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## install: the shim, corrald, corral-cri and corral into $(PREFIX)/bin (corrald and
## containerd find the shim there), and the systemd units (see install-units)
install: release install-units
	install -D -m 0755 $(RELEASE_SHIM) $(DESTDIR)$(PREFIX)/bin/containerd-shim-corral-v1
	install -D -m 0755 $(RELEASE_CORRALD) $(DESTDIR)$(PREFIX)/bin/corrald
	install -D -m 0755 $(RELEASE_CORRAL) $(DESTDIR)$(PREFIX)/bin/corral
	install -D -m 0755 $(RELEASE_CRI) $(DESTDIR)$(PREFIX)/bin/corral-cri

## install-units: systemd units for corrald and corral-cri into $(SYSTEMD_UNIT_DIR), starting
## $(PREFIX)/bin's binaries; neither enabled nor started (systemctl daemon-reload, then
## systemctl enable --now corral-cri, which brings corrald up first)
install-units:
	install -d $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	for u in $(UNITS); do \
		sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' systemd/$$u.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u.service && \
		chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$u.service || exit 1; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		echo "units installed in $(SYSTEMD_UNIT_DIR): systemctl daemon-reload && systemctl enable --now corral-cri"; \
	fi

## run: install what is missing, build, install, and start corrald on its default paths
## (/var/lib/corral, /run/corral, socket $(CORRALD_SOCK)); it runs containers with our shim
## (io.containerd.corral.v1, its default) or containerd's (io.containerd.runc.v2). Then
## corral-cri (Kubernetes CRI) on $(CRI_SOCK), with a bridge CNI network if none exists.
run: deps install
	@if ctr -a $(CORRALD_SOCK) version >/dev/null 2>&1; then \
		echo "corrald is running on $(CORRALD_SOCK)"; \
	else \
		echo "starting corrald (log: /var/log/corrald.log)"; \
		nohup $(PREFIX)/bin/corrald >>/var/log/corrald.log 2>&1 & \
		for i in $$(seq 100); do ctr -a $(CORRALD_SOCK) version >/dev/null 2>&1 && break; sleep 0.1; done; \
		ctr -a $(CORRALD_SOCK) version; \
	fi
	@if ! ls $(CNI_CONF_DIR)/*.conf* >/dev/null 2>&1; then \
		echo "no CNI network in $(CNI_CONF_DIR): writing a bridge network (10.88.0.0/16)"; \
		mkdir -p $(CNI_CONF_DIR); \
		printf '%s\n' '{"cniVersion": "1.0.0", "name": "corral", "plugins": [' \
			'{"type": "bridge", "bridge": "corral0", "isGateway": true, "ipMasq": true,' \
			' "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},' \
			'{"type": "portmap", "capabilities": {"portMappings": true}},' \
			'{"type": "loopback"}]}' > $(CNI_CONF_DIR)/10-corral.conflist; \
	fi
	@if crictl --runtime-endpoint unix://$(CRI_SOCK) version >/dev/null 2>&1; then \
		echo "corral-cri is running on $(CRI_SOCK)"; \
	else \
		echo "starting corral-cri (log: /var/log/corral-cri.log)"; \
		nohup $(PREFIX)/bin/corral-cri >>/var/log/corral-cri.log 2>&1 & \
		for i in $$(seq 100); do crictl --runtime-endpoint unix://$(CRI_SOCK) version >/dev/null 2>&1 && break; sleep 0.1; done; \
		crictl --runtime-endpoint unix://$(CRI_SOCK) version; \
	fi
	@echo "ready: make image, then: corral run --rm busybox echo hello"
	@echo "       or crictl --runtime-endpoint unix://$(CRI_SOCK) runp pod.json (see README)"

## image: build a busybox image from Debian's busybox-static (no internet registry here) and
## import it into the running corrald as docker.io/library/busybox:latest; build our pause
## image and import both into the k8s.io namespace, where corral-cri finds them
image: deps
	$(CARGO) build -q -p integration --bin busybox-image
	$(TARGET_DIR)/debug/busybox-image $(IMAGE_TAR)
	$(PREFIX)/bin/corral images import $(IMAGE_TAR)
	$(CARGO) build -q -p integration --bin pause-image
	$(TARGET_DIR)/debug/pause-image $(PAUSE_TAR)
	ctr -a $(CORRALD_SOCK) -n k8s.io images import $(PAUSE_TAR)
	ctr -a $(CORRALD_SOCK) -n k8s.io images import $(IMAGE_TAR)

## bench: corral beside containerd 1.6 on this machine (run latency and its phases, 50
## containers: start time, shim and daemon memory, restart after kill -9, teardown; image pull
## and import, root on disk and on tmpfs; corral-cri beside containerd's CRI plugin: pod start,
## ExecSync, crictl exec and port-forward over SPDY and WebSocket, 30 pods, memory), written to
## bench/results/<date>.md; then content ingest and layer apply. Benchmarks are never tests.
## `make bench BENCH_ONLY=cri` (or run,fifty,pull) runs only those blocks, without the last two.
bench: deps release
	CORRALD_BIN=$(RELEASE_CORRALD) CORRAL_SHIM_BIN=$(RELEASE_SHIM) CORRAL_BIN=$(RELEASE_CORRAL) \
		CORRAL_CRI_BIN=$(RELEASE_CRI) BENCH_LAYERS=$(TARGET_DIR)/bench-layers \
		$(CARGO) run -q -p bench --bin corral-bench
	@if [ -z "$(BENCH_ONLY)" ]; then \
		$(CARGO) bench -p content --bench ingest && \
		$(CARGO) bench -p snapshotter --bench apply; \
	fi

## fuzz: every hostile-input target under cargo-fuzz (nightly, libFuzzer) for FUZZ_SECONDS
## each, one after the other on one core (make test runs the same properties on the seeds and
## a fixed set of mutants). FUZZ=layer picks targets. New inputs go to target/fuzz-corpus/,
## crashes to target/fuzz-artifacts/<target>/ (copy one into fuzz/corpus/<target>/ once fixed).
FUZZ_TARGETS := filters grpc_front grpc_services events_ttrpc shim_ttrpc layer registry config_corrald config_cri image_reference
FUZZ ?= $(FUZZ_TARGETS)
FUZZ_SECONDS ?= 300
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@set -e; for t in $(FUZZ); do \
		mkdir -p $(TARGET_DIR)/fuzz-corpus/$$t $(TARGET_DIR)/fuzz-artifacts/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		CARGO_TARGET_DIR=$(TARGET_DIR)/fuzz $(CARGO) +nightly fuzz run --sanitizer none $$t \
			$(TARGET_DIR)/fuzz-corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 \
			-artifact_prefix=$(TARGET_DIR)/fuzz-artifacts/$$t/; \
	done

clean:
	$(CARGO) clean
