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
DEB_PACKAGES := libnice-dev libsodium-dev libglib2.0-dev zlib1g-dev pkg-config binutils gcc g++ make python3-venv \
                iproute2 nftables coturn

.PHONY: all build install install-stage wheel deps test bench soak clean

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
	build/bench-venv/bin/python -m pip install --quiet aioice==0.13.0
	NICE_PLAIN=$(CURDIR)/build/nice_plain DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 \
		PYTHONPATH=$(CURDIR)/bindings/python build/bench-venv/bin/python bench/nat_bench.py
	# The transport in the lab (root): RTT and throughput through the routers, beside raw UDP.
	DNA_TEST_PREFIX=$(CURDIR)/build/stage DNATRANSPORT_LIBRARY=$(CURDIR)/build/stage/lib/libdnatransport.so.1 \
		PYTHONPATH=$(CURDIR)/bindings/python build/bench-venv/bin/python bench/transport_lab_bench.py

# Long versions of timing tests: a reader that never reads for 60 s (issue 20), with the sender's
# transport_send timing out all along and both sides' buffered bytes within their buffers.
soak:
	DNA_SOAK_SECONDS=60 $(SWIFT) test --filter 'TransportNodeTests/aReaderThatNeverReads'

install-stage:
	$(MAKE) install PREFIX=$(CURDIR)/build/stage

# A platform wheel of the Python binding with the library inside (pip install dist/dnatransport-*.whl).
wheel: install-stage
	$(PYTHON) bindings/python/make_wheel.py $(STAGE)/lib/libdnatransport.so.$(SOVERSION) dist

clean:
	rm -rf .build build dist
