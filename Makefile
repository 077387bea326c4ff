# aigw — build, test, run, install, bench, fuzz.
#   make            build/aigw, build/aigw-mockllm
#   make test       deps, build, unit + integration tests, the same under ASan+UBSan, fuzz smoke
#   make run        the demo: aigw in front of two local aigw-mockllm
#   make fuzz       run every fuzz target for FUZZ_SECONDS each
#   make bench      perf/bench.sh (aigw vs nginx vs HAProxy vs direct)
#   make bench-tls  the same over TLS: keep-alive, handshakes, resumption, streams, idle memory
#   make bench-tls-fast  bench-tls with aigw built against the fast wolfSSL as well (WOLFSSL=fast)
#   make idle-rss   memory per idle keep-alive connection
#   make stream-rss memory per concurrent SSE stream (2,000 slow streams)
#   make bench-upgrade  perf/upgrade.sh: client errors and p99 through an upgrade (aigw SIGUSR2, nginx, HAProxy, restart)
#   make bench-cluster  perf/cluster.sh: three aigw sharing one redis-server: limit accuracy, CPU
#                   per request with [cluster] on and off, Redis commands per request
#   make WOLFSSL=fast   the same targets linked against the wolfSSL with x86-64 assembly and
#                   AES-NI that scripts/wolfssl-fast.sh builds from Debian's source package
#                   (into build/fast by default, so both binaries coexist)

VERSION := 0.1.0
CC      ?= cc
WOLFSSL ?=
ifeq ($(WOLFSSL),fast)
  BUILD ?= build/fast
  WOLFSSL_PREFIX := $(abspath build/wolfssl-fast/prefix)
  WOLFSSL_STAMP  := $(WOLFSSL_PREFIX)/aigw-build-stamp
else ifneq ($(WOLFSSL),)
  $(error WOLFSSL=$(WOLFSSL): only WOLFSSL=fast is known)
endif
BUILD   ?= build
SAN     ?=
PREFIX  ?= /usr/local
DESTDIR ?=
FUZZ_SECONDS ?= 20

CFLAGS_COMMON := -std=gnu11 -O2 -g -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
	-D_GNU_SOURCE -DAIGW_VERSION='"$(VERSION)"' -Isrc -pthread -fno-strict-aliasing
ifeq ($(SAN),1)
  # ASan brings its own allocator, so mimalloc stays out of the sanitizer build.
  CFLAGS_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  ALLOC_LIB  :=
else
  CFLAGS_SAN :=
  ALLOC_LIB  := -lmimalloc
  CFLAGS_COMMON += -DAIGW_MIMALLOC
endif
CFLAGS  := $(CFLAGS_COMMON) $(CFLAGS_SAN) $(EXTRA_CFLAGS)
LDFLAGS := $(CFLAGS_SAN) -pthread
ifdef WOLFSSL_PREFIX
  # Its headers, not Debian's: options.h decides struct layouts (WOLFSSL_AESNI aligns
  # the AES state), so compiling and linking must agree. The rpath finds the library.
  CFLAGS  += -I$(WOLFSSL_PREFIX)/include
  LDFLAGS += -L$(WOLFSSL_PREFIX)/lib -Wl,-rpath,$(WOLFSSL_PREFIX)/lib
endif
LIBS    := -luring -linih -lwolfssl -lhiredis $(ALLOC_LIB)

LIB_SRC  := $(wildcard src/util/*.c src/proto/*.c src/policy/*.c src/tls/*.c src/cluster/*.c src/trace/*.c) $(filter-out src/core/main.c,$(wildcard src/core/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
MOCK_SRC := $(wildcard perf/mockllm/*.c)
MOCK_OBJ := $(MOCK_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(BUILD)/obj/%.o)
INTEG_SRC := $(wildcard tests/integration/*.c)
INTEG_OBJ := $(INTEG_SRC:%.c=$(BUILD)/obj/%.o)
PERF_TOOLS := $(patsubst perf/tools/%.c,$(BUILD)/%,$(wildcard perf/tools/*.c))
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
DEPS     := $(LIB_OBJ:.o=.d) $(MOCK_OBJ:.o=.d) $(UNIT_OBJ:.o=.d) $(INTEG_OBJ:.o=.d) $(BUILD)/obj/src/core/main.d

.PHONY: all deps test unit integration asan fuzz fuzz-smoke run bench bench-tls bench-tls-fast bench-cluster bench-upgrade idle-rss stream-rss install clean
all: $(BUILD)/aigw $(BUILD)/aigw-mockllm $(PERF_TOOLS)

$(BUILD)/obj/%.o: %.c | $(WOLFSSL_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# .incbin: the page is part of the object, which -MMD cannot see
$(BUILD)/obj/src/core/status_page.o: src/core/status_page.html

$(BUILD)/libaigw.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/aigw: $(BUILD)/obj/src/core/main.o $(BUILD)/libaigw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lm

$(BUILD)/aigw-mockllm: $(MOCK_OBJ) $(BUILD)/libaigw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lm

$(BUILD)/idleconns: TOOL_LIBS := -lwolfssl    # -T: TLS connections
$(BUILD)/%: perf/tools/%.c | $(WOLFSSL_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(TOOL_LIBS)

$(BUILD)/test-unit: $(UNIT_OBJ) $(BUILD)/libaigw.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion $(LIBS) -lm

$(BUILD)/test-integration: $(INTEG_OBJ) $(BUILD)/libaigw.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcriterion $(LIBS) -lm

deps:
	@sh scripts/deps.sh

# WOLFSSL=fast: the library is built once (minutes), then reused.
ifdef WOLFSSL_STAMP
$(WOLFSSL_STAMP):
	sh scripts/wolfssl-fast.sh
endif

unit: $(BUILD)/test-unit
	$(BUILD)/test-unit --jobs 2

# Integration tests start build/aigw and build/aigw-mockllm (or the sanitizer builds) on loopback.
integration: all $(BUILD)/test-integration
	AIGW_BIN=$(abspath $(BUILD)/aigw) MOCKLLM_BIN=$(abspath $(BUILD)/aigw-mockllm) \
	  $(BUILD)/test-integration --jobs 2

asan:
	$(MAKE) SAN=1 BUILD=build/asan unit integration

test: deps
	$(MAKE) all unit integration
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 $(MAKE) asan
	$(MAKE) fuzz-smoke

# libFuzzer targets link the pure parsers only (src/proto, src/policy) and the helpers they use (src/util).
FUZZ_CFLAGS := -std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_LIB_SRC := $(wildcard src/util/*.c src/proto/*.c src/policy/*.c)
build/fuzz/%: tests/fuzz/%.c $(FUZZ_LIB_SRC)
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ -lwolfssl

# The config loader lives in src/core and reads INI through inih; freeing a
# configuration releases its TLS contexts (config_tls.c, src/tls).
build/fuzz/fuzz_config: tests/fuzz/fuzz_config.c src/core/config.c src/core/config_tls.c src/core/log.c \
		$(wildcard src/tls/*.c) $(FUZZ_LIB_SRC)
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ -linih -lwolfssl

# The state_dir snapshot's text is the one pure file of src/cluster (the rest
# of it does I/O and walks generations); its NAME rule is src/policy/keys.c's.
build/fuzz/fuzz_snapshot: tests/fuzz/fuzz_snapshot.c src/cluster/snapshot_file.c $(FUZZ_LIB_SRC)
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ -lwolfssl

# The traceparent parser is the one pure input parser of src/trace.
build/fuzz/fuzz_traceparent: tests/fuzz/fuzz_traceparent.c src/trace/traceparent.c $(FUZZ_LIB_SRC)
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ -lwolfssl

# The TLS handshake target also links src/tls and serves certificates that
# make-certs.sh writes into build/fuzz/certs (nothing secret is committed).
FUZZ_TLS_CERTS := $(abspath build/fuzz/certs)
$(FUZZ_TLS_CERTS)/wrongclient.pem: tests/tls/make-certs.sh
	sh tests/tls/make-certs.sh $(FUZZ_TLS_CERTS)
build/fuzz/fuzz_tls_handshake: tests/fuzz/fuzz_tls_handshake.c $(FUZZ_LIB_SRC) $(wildcard src/tls/*.c) | $(FUZZ_TLS_CERTS)/wrongclient.pem
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -DAIGW_FUZZ_CERTS='"$(FUZZ_TLS_CERTS)"' -o $@ $^ -lwolfssl

fuzz: $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
	@for f in $^; do n=$$(basename $$f); mkdir -p build/fuzz/corpus-$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 build/fuzz/corpus-$$n tests/fuzz/seeds/$$n 2>build/fuzz/$$n.log \
	    || { tail -40 build/fuzz/$$n.log; exit 1; }; done

fuzz-smoke:
	@if command -v clang >/dev/null 2>&1; then $(MAKE) fuzz FUZZ_SECONDS=10; else echo "fuzz: clang not found, skipped"; fi

run: deps all
	@sh scripts/run-demo.sh

bench: deps all
	bash perf/bench.sh

idle-rss: deps all
	bash perf/idle-rss.sh

# TLS (issue 10): aigw, nginx, HAProxy over HTTPS, each as set up by default and all on
# TLS 1.3 ChaCha20-Poly1305; then memory per idle TLS connection. One round of 5 s unless
# ROUNDS / DURATION say otherwise: about 4 minutes.
TLS_TARGETS := aigw-tls nginx-tls haproxy-tls aigw-tls-chacha nginx-tls-chacha haproxy-tls-chacha
bench-tls: deps all
	TARGETS="$${TARGETS:-$(TLS_TARGETS)}" SCENARIOS="$${SCENARIOS:-post stream handshake resume}" \
	  ROUNDS=$${ROUNDS:-1} DURATION=$${DURATION:-5s} bash perf/bench.sh
	@rc=0; for t in aigw-tls nginx-tls haproxy-tls; do TARGET=$$t bash perf/idle-rss.sh || rc=1; done; exit $$rc

# The same with aigw linked against the fast wolfSSL too (scripts/wolfssl-fast.sh),
# side by side with Debian's: build/aigw and build/fast/aigw in one run.
bench-tls-fast: deps all
	$(MAKE) WOLFSSL=fast all
	TARGETS="$${TARGETS:-aigw-tls aigw-fast-tls nginx-tls haproxy-tls aigw-tls-chacha aigw-fast-tls-chacha nginx-tls-chacha haproxy-tls-chacha}" \
	  SCENARIOS="$${SCENARIOS:-post stream handshake resume}" ROUNDS=$${ROUNDS:-1} DURATION=$${DURATION:-5s} bash perf/bench.sh

stream-rss: deps all
	bash perf/stream-rss.sh

.PHONY: fleet
fleet: deps all
	bash perf/fleet.sh

bench-upgrade: deps all
	bash perf/upgrade.sh

bench-cluster: deps all
	bash perf/cluster.sh

# aigw.conf(5), the configuration reference, from docs/config.md.
$(BUILD)/aigw.conf.5: docs/config.md scripts/md2man.py
	@mkdir -p $(@D)
	python3 scripts/md2man.py --name aigw.conf --section 5 \
		--title "aigw configuration file (/etc/aigw.conf) and keys file" $< > $@

# The unit, sysusers and tmpfiles snippets go where systemd looks whatever PREFIX
# is; /etc/aigw (the keys file) is root:aigw 0750 once systemd-tmpfiles --create
# runs. aigw-mockllm, a test backend, only with INSTALL_MOCKLLM=1.
install: all $(BUILD)/aigw.conf.5
	install -D -m 0755 $(BUILD)/aigw $(DESTDIR)$(PREFIX)/bin/aigw
	@# the unit names the binary where this PREFIX put it (made here: PREFIX is not a file)
	install -d $(DESTDIR)/lib/systemd/system
	sed 's|@BINDIR@|$(PREFIX)/bin|g' systemd/aigw.service.in > $(DESTDIR)/lib/systemd/system/aigw.service
	chmod 0644 $(DESTDIR)/lib/systemd/system/aigw.service
	install -D -m 0644 systemd/aigw.sysusers $(DESTDIR)/usr/lib/sysusers.d/aigw.conf
	install -D -m 0644 systemd/aigw.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/aigw.conf
	install -D -m 0644 systemd/aigw.logrotate $(DESTDIR)/etc/logrotate.d/aigw
	install -D -m 0644 docs/aigw.8 $(DESTDIR)$(PREFIX)/share/man/man8/aigw.8
	install -D -m 0644 $(BUILD)/aigw.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/aigw.conf.5
	install -d -m 0750 $(DESTDIR)/etc/aigw
	[ -e $(DESTDIR)/etc/aigw.conf ] || install -D -m 0644 examples/aigw.conf $(DESTDIR)/etc/aigw.conf
	if [ "$(INSTALL_MOCKLLM)" = 1 ]; then \
		install -D -m 0755 $(BUILD)/aigw-mockllm $(DESTDIR)$(PREFIX)/bin/aigw-mockllm && \
		install -D -m 0644 docs/aigw-mockllm.1 $(DESTDIR)$(PREFIX)/share/man/man1/aigw-mockllm.1; \
	fi

clean:
	rm -rf build

-include $(DEPS)
