/* plan_same.h - one check for the plan tests (test_plan_compact,
   test_plan_slice): compact plan c (kvx.h COMPACT PLANS) gives every span
   the expanded plan x gives, field by field through kvx_plan_span, the
   same totals, and `paged` page spans kept as nbufs x nruns (the expanded
   plan keeps none). Include after kvx.h and kvx_test.h. */
static void plan_same(const kvx_plan *x, const kvx_plan *c, size_t paged, const char *what) {
    size_t k, bad = 0, first = (size_t)-1;
    CHECK(c->count == x->count && c->total_bytes == x->total_bytes && c->strided == x->strided &&
              c->packed_bytes == x->packed_bytes,
          "%s: compact %zu spans, %llu bytes, %zu strided, %llu packed; expanded %zu, %llu, %zu, "
          "%llu", what, c->count, (unsigned long long)c->total_bytes, c->strided,
          (unsigned long long)c->packed_bytes, x->count, (unsigned long long)x->total_bytes,
          x->strided, (unsigned long long)x->packed_bytes);
    CHECK(c->paged == paged && c->nbufs * c->nruns == paged && !x->paged,
          "%s: %zu page spans kept as %zu buffers x %zu runs (expected %zu; expanded %zu)", what,
          c->paged, c->nbufs, c->nruns, paged, x->paged);
    for (k = 0; k < x->count && k < c->count; k++) {
        kvx_span t, u;
        const kvx_span *a = kvx_plan_span(x, k, &u), *b = kvx_plan_span(c, k, &t);
        if (a != &x->spans[k] || memcmp(a, b, sizeof *b)) {
            if (first == (size_t)-1) first = k;
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %zu of %zu spans differ (first at %zu)", what, bad, x->count, first);
}
