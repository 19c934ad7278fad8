# kvx - build, test, benchmark, install. Run from the repository root.
#   make demo      prefill + decode processes moving a KV cache through files
#   make test      every test: unit, multi-process, faults, compile checks,
#                  ASan/UBSan, TSan, fuzzers (bounded)
#   make bench     benchmarks, with ratios against raw baselines
#   make lib       build/libkvx.so (every header, one shared library) and
#                  build/kvx.pc, for engines that link rather than vendor
#   make install   headers into $(PREFIX)/include/kvx, the library into
#                  $(PREFIX)/lib, kvx.pc into $(PREFIX)/lib/pkgconfig
PREFIX ?= /usr/local
CC ?= cc
CXX ?= c++
CLANG ?= $(shell command -v clang 2>/dev/null)
WARN = -Wall -Wextra -Wpedantic -Werror
KVX_CFLAGS ?= -std=c11 -O2 -g $(WARN) -I.
KVX_LDLIBS = -lpthread -lm -ldl
HEADERS = $(wildcard kvx*.h)
B = build

EXAMPLES = $(B)/kvx_prefill $(B)/kvx_decode $(B)/kvx_demo $(B)/kvx_inspect
TEST_SRC = $(wildcard tests/*/test_*.c)
TESTS = $(patsubst %.c,$(B)/%,$(notdir $(TEST_SRC)))
BENCH_SRC = $(wildcard bench/bench_*.c)
BENCHES = $(patsubst %.c,$(B)/%,$(notdir $(BENCH_SRC)))

vpath test_%.c $(sort $(dir $(TEST_SRC)))
vpath bench_%.c bench

.PHONY: all demo test bench install clean examples tests check-compile test-unit \
        test-asan test-tsan test-fuzz deps test-dfs bench-dfs bench-peers lib test-lib test-sglang \
        test-vllm

all: examples tests

examples: $(EXAMPLES)
tests: $(TESTS)

# The examples take every transport this machine can build: RDMA when the
# rdma-core headers exist, CUDA when the toolkit headers do (both libraries
# are loaded at run time, so the programs still start without them).
KVX_RDMA_CFLAGS := $(if $(wildcard /usr/include/infiniband/verbs.h),-DKVX_WITH_RDMA)

# Every object depends on $(B)/.flags, which holds the compiler, the flags
# and which optional toolkits were found; it is rewritten only when that
# line changes, so installing libibverbs-dev (make test does) or changing
# KVX_CFLAGS rebuilds what was built without it.
KVX_FLAGS_LINE = $(CC) $(KVX_CFLAGS) $(KVX_RDMA_CFLAGS) $(KVX_CUDA_CFLAGS) $(KVX_LDLIBS)
FLAGS = $(B)/.flags
$(FLAGS): kvx-flags-force | $(B)
	@echo '$(KVX_FLAGS_LINE)' | cmp -s - $@ || echo '$(KVX_FLAGS_LINE)' > $@
.PHONY: kvx-flags-force
kvx-flags-force:

$(B)/kvx_%: examples/kvx_%.c $(HEADERS) examples/kvx_example.h $(FLAGS) | $(B)
	$(CC) $(KVX_CFLAGS) $(KVX_RDMA_CFLAGS) $(KVX_CUDA_CFLAGS) $< -o $@ $(KVX_LDLIBS)

$(B)/test_%: test_%.c $(HEADERS) $(wildcard tests/*/*.h) $(FLAGS) | $(B)
	$(CC) $(KVX_CFLAGS) $< -o $@ $(KVX_LDLIBS)

$(B)/bench_%: bench_%.c $(HEADERS) $(FLAGS) | $(B)
	$(CC) $(KVX_CFLAGS) -O3 $< -o $@ $(KVX_LDLIBS)

# Without the rdma-core headers, the programs that need them (those that
# define KVX_WITH_RDMA) are built as stand-ins that say so and exit 77.
ifeq ($(KVX_RDMA_CFLAGS),)
VERBS_SRC := $(shell grep -l '^\#define KVX_WITH_RDMA' tests/*/test_*.c bench/bench_*.c 2>/dev/null)
VERBS_BINS := $(addprefix $(B)/,$(basename $(notdir $(VERBS_SRC))))
$(VERBS_BINS): tests/skip.c $(FLAGS) | $(B)
	$(CC) $(KVX_CFLAGS) -DKT_SKIP_NAME='"$(notdir $@)"' \
	    -DKT_SKIP_WHY='"built without the rdma-core headers (/usr/include/infiniband/verbs.h; Debian: libibverbs-dev)"' \
	    $< -o $@
endif

$(B):
	mkdir -p $(B)

# The main job: >= 64 requests and > 1 GiB of Llama-3.1-8B KV between two
# processes through the file transport, every byte and aux row verified.
demo: $(EXAMPLES)
	./$(B)/kvx_demo --model llama-3.1-8b --requests 64 --min-tokens 16 --max-tokens 2048 \
	    --chunk-tokens 512 --inflight 4

-include tests/softverbs/Makefile.inc
-include tests/fakecuda/Makefile.inc
-include tests/*/Makefile.inc.mk

test: deps
	@bash tests/run_all.sh; rc=$$?; $(MAKE) --no-print-directory test-dfs || rc=1; exit $$rc

# The distributed-filesystem test: a private GlusterFS volume mounted twice
# (tests/dfs/gluster.sh, needs root and FUSE; torn down afterwards), the
# reference prefill and decode across the two mounts and every test_dfs_*.
# Where it cannot run it says SKIPPED and why.
DFS_TESTS = $(filter $(B)/test_dfs_%,$(TESTS))
test-dfs: examples $(DFS_TESTS)
	@echo; echo "== distributed filesystem: GlusterFS, two FUSE mounts of one volume ($(B)/)"; \
	  bash tests/dfs/run.sh $(B); rc=$$?; if [ $$rc -eq 77 ]; then rc=0; fi; exit $$rc

# Everything make test needs that Debian can provide (installed when root).
deps:
	@bash tests/deps.sh

test-unit: examples tests
	@bash tests/run_tests.sh $(B)

# The benchmarks that need a distributed filesystem run under
# tests/dfs/gluster.sh (two FUSE mounts of one private GlusterFS volume).
# bench_store runs twice: on local disk, and across the two mounts (it
# switches to that mode when KVX_DFS_A/B are set).
DFS_BENCHES = $(B)/bench_dfs $(B)/bench_store
bench: examples $(BENCHES)
	@for b in $(filter-out $(B)/bench_dfs,$(BENCHES)); do echo "== $$b"; ./$$b; rc=$$?; \
	  if [ $$rc -eq 77 ]; then echo "   (skipped)"; elif [ $$rc -ne 0 ]; then exit 1; fi; done
	@$(MAKE) --no-print-directory bench-dfs

# make bench-peers: kvx against its peers on this machine, one table
# (bench/peers/run.sh): kvx_store vs SGLang HiCacheFile (and LMCache's disk
# backend where it runs without a GPU), kvx tcp vs Mooncake TE tcp and NIXL
# UCX. Installs the peers' pinned PyPI releases into build/venv-* once.
# KVX_PEERS_PAGES=64 for a quick run; see bench/peers/README.md.
bench-peers: $(B)/libkvx.so
	@bash bench/peers/run.sh

bench-dfs: $(DFS_BENCHES)
	@echo "== $(DFS_BENCHES) (under tests/dfs/gluster.sh)"; \
	  bash tests/dfs/gluster.sh run bash -c 'for b; do ./$$b || exit $$?; done' _ $(DFS_BENCHES); rc=$$?; \
	  if [ $$rc -eq 77 ]; then echo "   (skipped: GlusterFS cannot run here, see above)"; elif [ $$rc -ne 0 ]; then exit 1; fi

# make lib: libkvx.so, every header in one translation unit (lib/kvx_lib.c),
# with the transports this machine can build (the same KVX_RDMA_CFLAGS and
# KVX_CUDA_CFLAGS as the examples; libibverbs and libcuda are still
# dlopen'ed at run time). -fvisibility=hidden with KVX_API marked visible
# in lib/kvx_lib.c: only the public API is exported, no kvx__ helper.
# Soname libkvx.so.<major>, file libkvx.so.<major>.<minor>.<patch>.
KVX_VERSION := $(shell awk '/^\#define KVX_VERSION_(MAJOR|MINOR|PATCH) /{v = v s $$3; s = "."} END {print v}' kvx.h)
KVX_SONAME = libkvx.so.$(firstword $(subst ., ,$(KVX_VERSION)))
KVX_LIB_FILE = libkvx.so.$(KVX_VERSION)
KVX_LIB_CFLAGS = $(KVX_CFLAGS) $(KVX_RDMA_CFLAGS) $(KVX_CUDA_CFLAGS) -fPIC -fvisibility=hidden
# What a program that includes the installed headers should see defined.
KVX_PC_DEFINES = $(strip $(filter -DKVX_WITH_%,$(KVX_RDMA_CFLAGS) $(KVX_CUDA_CFLAGS)))

lib: $(B)/libkvx.so $(B)/kvx.pc

$(B)/$(KVX_LIB_FILE): lib/kvx_lib.c $(HEADERS) $(FLAGS) | $(B)
	$(CC) $(KVX_LIB_CFLAGS) -shared -Wl,-soname,$(KVX_SONAME) -Wl,-z,defs $< -o $@ $(KVX_LDLIBS)

$(B)/libkvx.so: $(B)/$(KVX_LIB_FILE)
	ln -sf $(KVX_LIB_FILE) $(B)/$(KVX_SONAME)
	ln -sf $(KVX_SONAME) $@

# Rewritten only when its text changes (PREFIX is part of it).
$(B)/kvx.pc: lib/kvx.pc.in kvx-flags-force | $(B)
	@sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(KVX_VERSION)|' \
	    -e 's|@DEFINES@|$(KVX_PC_DEFINES)|' -e 's| *$$||' $< > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; echo "wrote $@ (prefix $(PREFIX))"; fi

# The library installed into a scratch DESTDIR, a program built against it
# with pkg-config and run (tests/lib/run.sh; SKIP when pkg-config is missing).
test-lib: lib
	@bash tests/lib/run.sh $(B)

# The Python package kvx (python/): pip installs it into a fresh venv
# (build/pyvenv, compiling the headers) and tests/python/test_kvx.py tests
# it there. SKIP when python3 or its venv module is missing.
.PHONY: test-python
test-python:
	@if command -v python3 >/dev/null 2>&1; then python3 tests/python/test_kvx.py; \
	  else echo "SKIP python: python3 is not installed"; fi

# The SGLang backends (python/kvx/sglang) against the pinned SGLang release,
# installed from PyPI into build/venv-sglang (tests/sglang/setup_venv.sh;
# about 4 GB, 2 minutes the first time; reused after). SKIP when it cannot.
.PHONY: test-sglang
test-sglang:
	@bash tests/sglang/run.sh

# The vLLM connector and offloading spec against vLLM 0.34.0, installed
# (--no-deps) into the SGLang venv (tests/vllm/setup_venv.sh).
.PHONY: test-vllm
test-vllm:
	@bash tests/vllm/run.sh

install: lib
	install -d $(DESTDIR)$(PREFIX)/include/kvx
	install -m 644 $(HEADERS) $(DESTDIR)$(PREFIX)/include/kvx/
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(B)/$(KVX_LIB_FILE) $(DESTDIR)$(PREFIX)/lib/
	ln -sf $(KVX_LIB_FILE) $(DESTDIR)$(PREFIX)/lib/$(KVX_SONAME)
	ln -sf $(KVX_SONAME) $(DESTDIR)$(PREFIX)/lib/libkvx.so
	install -m 644 $(B)/kvx.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/

clean:
	rm -rf $(B) tests/softverbs/*.so
