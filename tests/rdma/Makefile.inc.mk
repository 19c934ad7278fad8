# tests/rdma/Makefile.inc.mk -- included by the top-level Makefile
# (-include tests/*/Makefile.inc.mk). The rdma tests and bench_rdma load
# libsoftverbs.so at run time (KVX_IBVERBS_LIBRARY): build it first, and in
# sanitizer builds (make B=build/asan KVX_CFLAGS=...) the instrumented copy
# next to the test binaries, which the tests prefer.
#   make test-rdma            build and run the rdma tests (B=... for a sanitizer build)
ifeq ($(B),build)
RDMA_SOFTVERBS_LIB := $(SOFTVERBS_LIB)
else
RDMA_SOFTVERBS_LIB := $(B)/libsoftverbs.so
endif
RDMA_TESTS := $(patsubst tests/rdma/%.c,$(B)/%,$(wildcard tests/rdma/test_rdma_*.c))

$(B)/test_rdma_%: | $(RDMA_SOFTVERBS_LIB)
$(B)/bench_rdma: | $(RDMA_SOFTVERBS_LIB)

.PHONY: test-rdma
test-rdma: $(RDMA_TESTS)
	@rc=0; for t in $(RDMA_TESTS); do ./$$t > $$t.log 2>&1; s=$$?; \
	  if [ $$s -eq 77 ]; then echo "  skip  $$(grep -m1 SKIP $$t.log)"; \
	  elif [ $$s -ne 0 ]; then rc=1; echo "  FAIL  $$t (log $$t.log)"; grep -E "^FAIL" $$t.log | head -5; \
	  else echo "  ok    $$(tail -1 $$t.log)"; fi; done; exit $$rc
