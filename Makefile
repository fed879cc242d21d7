# libdnatransport: build, install, test, bench. See README.md.
PREFIX     ?= /usr/local
DESTDIR    ?=
SWIFT      ?= swift
PYTHON     ?= python3
VERSION    := 1.0.0
SOVERSION  := 1
RELEASE    := .build/release
STAGE      := $(CURDIR)/build/stage
# Debian packages the build and the tests need (installed by `make deps` when missing).
DEB_PACKAGES := libnice-dev libsodium-dev libglib2.0-dev libdeflate-dev zlib1g-dev pkg-config binutils gcc g++ make python3-venv \
                iproute2 nftables conntrack coturn dpkg-dev adduser lintian

.PHONY: all build install install-stage wheel deps test test-sanitized bench soak clean fuzz fuzz-build

all: build

build:
	DNATRANSPORT_SHIP=1 $(SWIFT) build -c release --product dnatransport
	DNATRANSPORT_SHIP=1 $(SWIFT) build -c release --product dnat

install: build
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include/dnatransport $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(RELEASE)/libdnatransport.so $(DESTDIR)$(PREFIX)/lib/libdnatransport.so.$(VERSION)
	strip --strip-unneeded $(DESTDIR)$(PREFIX)/lib/libdnatransport.so.$(VERSION)
	ln -sf libdnatransport.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libdnatransport.so.$(SOVERSION)
	ln -sf libdnatransport.so.$(SOVERSION) $(DESTDIR)$(PREFIX)/lib/libdnatransport.so
	install -m 0644 include/dnatransport.h $(DESTDIR)$(PREFIX)/include/dnatransport.h
	install -m 0644 include/dnatransport/*.h $(DESTDIR)$(PREFIX)/include/dnatransport/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' pkgconfig/dnatransport.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/dnatransport.pc
	install -m 0755 $(RELEASE)/dnat $(DESTDIR)$(PREFIX)/bin/dnat

# Installs the Debian packages that are missing (as root, or through sudo).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	    $$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y --no-install-recommends $$missing; \
	fi

# Everything: Swift tests, the release library installed into build/stage, C tests, Python tests.
# Ends with "N passed, N failed".
test: deps
	$(PYTHON) Tests/run_all.py

# The DHT comparison needs OpenDHT's Python binding (Debian's python3-opendht, for /usr/bin/python3).
bench: install-stage
	$(SWIFT) build -c release --product dna-bench
	$(RELEASE)/dna-bench
	dpkg -s python3-opendht >/dev/null 2>&1 || apt-get install -y --no-install-recommends python3-opendht
	DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 PYTHONPATH=$(CURDIR)/bindings/python \
		/usr/bin/python3 bench/dht_compare.py
	# The transport end to end on loopback, beside raw UDP in the same process.
	DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 PYTHONPATH=$(CURDIR)/bindings/python \
		$(PYTHON) bench/transport_bench.py
	# NAT traversal in the network lab (root): beside bare libnice (bench/nice_plain.c) and aioice (PyPI).
	mkdir -p build
	cc -O2 -o build/nice_plain bench/nice_plain.c $$(pkg-config --cflags --libs nice gio-2.0)
	test -x build/bench-venv/bin/python || $(PYTHON) -m venv build/bench-venv
	build/bench-venv/bin/python -m pip install --quiet aioice==0.13.0 iroh==1.2.0
	# Beside iroh (PyPI, QUIC) and raw UDP, each peer its own process, in a network namespace with
	# no route out (root): throughput, CPU per MiB, drops at the receiving sockets, memory, RTT (issue 16).
	DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 PYTHONPATH=$(CURDIR)/bindings/python \
		build/bench-venv/bin/python bench/iroh_compare.py
	NICE_PLAIN=$(CURDIR)/build/nice_plain DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 \
		PYTHONPATH=$(CURDIR)/bindings/python build/bench-venv/bin/python bench/nat_bench.py
	# The transport in the lab (root): RTT and throughput through the routers, beside raw UDP.
	DNA_TEST_PREFIX=$(CURDIR)/build/stage DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 \
		PYTHONPATH=$(CURDIR)/bindings/python build/bench-venv/bin/python bench/transport_lab_bench.py

# Long versions of timing tests: a reader that never reads for 60 s (issue 20), with the sender's
# transport_send timing out all along and both sides' buffered bytes within their buffers; in the
# lab (root), 100 connects with path breaks at 30% loss, no process crashing (issue 19).
soak: install-stage
	DNA_SOAK_SECONDS=60 $(SWIFT) test --filter 'TransportNodeTests/aReaderThatNeverReads'
	# Signed values at issue 18's scale: 2,000 simulated nodes at 10% loss, 1,000 values of 0 B to 64 KiB,
	# 10 writers x 100 puts at one key with a listener, then 30% of the nodes killed.
	DNA_VALUE_SCALE=full $(SWIFT) test -c release -Xswiftc -enable-testing --filter ValueScaleTests
	$(MAKE) build/venv/bin/python
	cd build && DNA_CRASH_ROUNDS=25 PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig DNA_TEST_PREFIX=$(STAGE) \
	    venv/bin/python -m pytest -q -p no:cacheprovider ../Tests/lab/test_transport_lab.py -k crash
	# A relayed connection held 15 minutes with coturn's default lifetimes (allocation refresh, permissions).
	cd build && DNA_RELAY_SECONDS=900 PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig DNA_TEST_PREFIX=$(STAGE) \
	    venv/bin/python -m pytest -q -p no:cacheprovider ../Tests/lab/test_transport_lab.py -k relayed_connection_holds

build/venv/bin/python:
	$(PYTHON) -m venv --system-site-packages build/venv
	build/venv/bin/python -m pip install --quiet ./bindings/python dilithium-py==1.5.1 kyber-py==1.2.0 cryptography==48.0.0

# The tests of connections, paths and their teardown under AddressSanitizer and ThreadSanitizer
# (issue 19): the Swift tests in debug builds instrumented with each (scratch paths .build-asan and
# .build-tsan), then the library built with AddressSanitizer, loaded by Python with the sanitizer's
# runtime preloaded, under the Python transport and NAT tests and the lab's crash test (root).
SANITIZED_SWIFT_TESTS := DNATransportTests|DNANetTests
SANITIZED_PYTHON_TESTS := ../bindings/python/tests/test_transport.py ../bindings/python/tests/test_nat.py
# The toolchain's clang runtime directory, from swift -print-target-info (/opt/swift/usr/lib/swift -> /opt/swift/usr/lib/clang).
TOOLCHAIN_LIB = $(shell $(SWIFT) -print-target-info | sed -n 's|.*"runtimeResourcePath": "\(.*\)/swift".*|\1|p')
ASAN_RUNTIME = $(firstword $(wildcard $(TOOLCHAIN_LIB)/clang/*/lib/linux/libclang_rt.asan-$(shell uname -m).so))
# Python and GLib allocate for the process's life: leaks are not checked. abort_on_error: a report
# kills the process (a failing test), as does a TSan report (halt_on_error).
ASAN_ENV = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
test-sanitized: deps install-stage build/venv/bin/python
	DNATRANSPORT_SANITIZE=1 $(ASAN_ENV) $(SWIFT) test --sanitize=address --scratch-path .build-asan --filter '$(SANITIZED_SWIFT_TESTS)'
	DNATRANSPORT_SANITIZE=1 TSAN_OPTIONS=halt_on_error=1 $(SWIFT) test --sanitize=thread --scratch-path .build-tsan --filter '$(SANITIZED_SWIFT_TESTS)'
	DNATRANSPORT_SANITIZE=1 $(SWIFT) build --sanitize=address --scratch-path .build-asan --product dnatransport
	@test -n "$(ASAN_RUNTIME)" || { echo "no libclang_rt.asan in the toolchain ($(TOOLCHAIN_LIB))"; exit 1; }
	cd build && LD_PRELOAD=$(ASAN_RUNTIME) $(ASAN_ENV) DNATRANSPORT_LIBRARY=$(CURDIR)/.build-asan/debug/libdnatransport.so \
	    DNA_TEST_PREFIX=$(STAGE) venv/bin/python -m pytest -q -p no:cacheprovider $(SANITIZED_PYTHON_TESTS)
	cd build && LD_PRELOAD=$(ASAN_RUNTIME) $(ASAN_ENV) DNATRANSPORT_LIBRARY=$(CURDIR)/.build-asan/debug/libdnatransport.so \
	    DNA_TEST_PREFIX=$(STAGE) venv/bin/python -m pytest -q -p no:cacheprovider ../Tests/lab/test_transport_lab.py -k crash

# Coverage-guided fuzzing (issue 15, Fuzz/README.md): the libFuzzer targets of dna-fuzz (every decoder
# of network and disk bytes), built with -sanitize=fuzzer,address in their own scratch path (ordinary
# builds never see the target: DNATRANSPORT_FUZZ=1), each run for FUZZ_SECONDS from the committed
# seeds plus build/fuzz/corpus, after its regression inputs. `make test` runs a short pass.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
FUZZ_SCRATCH ?= .build-fuzz
FUZZ_BINARY := $(FUZZ_SCRATCH)/release/dna-fuzz
fuzz-build:
	DNATRANSPORT_FUZZ=1 $(SWIFT) build -c release --scratch-path $(FUZZ_SCRATCH) --product dna-fuzz \
	    -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing -Xswiftc -parse-as-library
fuzz: fuzz-build
	$(PYTHON) Fuzz/run.py $(FUZZ_BINARY) --seconds $(FUZZ_SECONDS) $(if $(FUZZ_TARGETS),--targets $(FUZZ_TARGETS))

install-stage:
	$(MAKE) install PREFIX=$(CURDIR)/build/stage

# Debian packages: libdnatransport1, libdnatransport-dev and dnat (with dnat-node.service), in dist/.
deb: build
	$(PYTHON) packaging/make_deb.py $(RELEASE) dist

# A platform wheel of the Python binding with the library inside (pip install dist/dnatransport-*.whl).
wheel: install-stage
	$(PYTHON) bindings/python/make_wheel.py $(STAGE)/lib/libdnatransport.so.$(SOVERSION) dist

clean:
	rm -rf .build .build-asan .build-tsan .build-fuzz build dist
