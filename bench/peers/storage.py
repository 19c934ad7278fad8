"""bench/peers/storage.py - kvx_store against SGLang's HiCacheFile, same pages, one run.

Run by bench/peers/run.sh inside a venv with torch and SGLang (tests/sglang's
build/venv-sglang, or KVX_SGLANG_VENV), kvx from python/ (PYTHONPATH) with
KVX_PY_LIBRARY = build/libkvx.so.

One 4096-token Llama-3.1-8B request: 32 layers, 8 KV heads, head dim 128,
bf16, page size 16 -> 256 pages of 2 MiB (K and V of every layer), 512 MiB
(--pages scales it down). Pages scattered over a pool of twice as many
(a shuffled free list); get loads into other scattered pages of the pool.

  kvx     kvx.Store over the layer-first pool (64 buffers of 32 KiB pages:
          every page is 64 scattered pieces), batch put / get.
  HiCacheFile  sglang.srt.mem_cache.hicache_storage.HiCacheFile over a
          page-first pool (one contiguous 2 MiB tensor per page, the layout
          HiCacheFile reads and writes without a gather or scatter copy: the
          most favourable case for it), batch_set / batch_get of those views.

Both without fsync (HiCacheFile never fsyncs; kvx.Store fsync=False).
put: fresh directory each repetition (HiCacheFile skips keys already on disk).
get cold: os.sync() then the page cache dropped (/proc/sys/vm/drop_caches as
root, else posix_fadvise DONTNEED on every file); get warm: again right after.
Repetitions alternate between the two systems. Every get is checked against
the source pages (untimed). CPU: getrusage of this process (user + sys,
every thread). Prints one "RESULT {json}" line per (system, operation) with
the best and median of the repetitions, and "PEER-SKIP name: why" lines.
"""
import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time


def cpu_now():
    """User + system seconds of this process, every thread (getrusage: microseconds)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

LAYERS, HEADS, DIM, PAGE, DTYPE_SIZE = 32, 8, 128, 16, 2
ITEM = PAGE * HEADS * DIM * DTYPE_SIZE          # one page of one buffer: 32 KiB
PAGE_BYTES = 2 * LAYERS * ITEM                  # one page over K and V of every layer


def drop_cache(dirs):
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        pass
    for d in dirs:
        for root, _, files in os.walk(d):
            for name in files:
                try:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    return "fadvise"


def timed(fn):
    c0, t0 = cpu_now(), time.perf_counter()
    r = fn()
    t1, c1 = time.perf_counter(), cpu_now()
    cpu = c1 - c0
    return t1 - t0, cpu, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=int(os.environ.get("KVX_PEERS_PAGES", 256)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("KVX_PEERS_REPS", 3)))
    ap.add_argument("--dir", default=os.environ.get("KVX_PEERS_DIR", "build/bench-peers"))
    a = ap.parse_args()
    n = a.pages
    try:
        import torch
        import kvx
    except ImportError as e:
        print(f"PEER-SKIP kvx_store: cannot import torch / kvx: {e}")
        return 0
    try:
        from sglang.srt.mem_cache.hicache_storage import HiCacheFile, HiCacheStorageConfig
    except Exception as e:  # an import error or SGLang failing at import
        HiCacheFile = None
        print(f"PEER-SKIP HiCacheFile: cannot import SGLang's HiCacheFile: {e!r}")

    torch.manual_seed(1)
    rng = random.Random(7)
    pool_pages = 2 * n
    tokens_per_pool = pool_pages * PAGE
    # layer-first pool for kvx: K of layers 0..31 then V of layers 0..31
    bufs = [torch.randint(-32768, 32767, (tokens_per_pool, HEADS, DIM), dtype=torch.int16)
            .view(torch.bfloat16) for _ in range(2 * LAYERS)]
    layout = kvx.Layout.from_arrays([(b, ITEM) for b in bufs], page_size=PAGE, num_kv_heads=HEADS,
                                    dtype="bfloat16", dtype_size=DTYPE_SIZE)
    perm = list(range(pool_pages))
    rng.shuffle(perm)
    src, dst = perm[:n], perm[n:2 * n]
    # page-first pool for HiCacheFile: the same bytes of page p, contiguous
    pf = None
    if HiCacheFile is not None:
        pf = torch.empty((pool_pages, PAGE_BYTES // DTYPE_SIZE), dtype=torch.bfloat16)
        for p in src:
            pf[p].view(torch.uint8).copy_(torch.cat(
                [b[p * PAGE:(p + 1) * PAGE].reshape(-1).view(torch.uint8) for b in bufs]))

    def kvx_check():
        bad = sum(0 if torch.equal(b[s * PAGE:(s + 1) * PAGE].view(torch.int16),
                                       b[d * PAGE:(d + 1) * PAGE].view(torch.int16)) else 1
                  for b in bufs for s, d in zip(src, dst))
        for b in bufs:
            for d in dst:
                b[d * PAGE:(d + 1) * PAGE].view(torch.int16).fill_(0)
        return bad

    def hf_check():
        bad = sum(0 if torch.equal(pf[s].view(torch.int16), pf[d].view(torch.int16)) else 1
                  for s, d in zip(src, dst))
        for d in dst:
            pf[d].view(torch.int16).fill_(0)
        return bad

    base = os.path.abspath(a.dir)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    nbytes = n * PAGE_BYTES
    res = {}  # (system, op) -> list of (seconds, cpu)
    cold_how = None
    errors = []

    def add(system, op, secs, cpu):
        res.setdefault((system, op), []).append((secs, cpu))

    for rep in range(a.reps):
        seed = f"{rep}-{time.time_ns()}".encode()
        hkeys = [hashlib.sha256(seed + i.to_bytes(4, "little")).digest() for i in range(n)]
        order = ["kvx", "HiCacheFile"] if rep % 2 == 0 else ["HiCacheFile", "kvx"]
        for system in order:
            d = os.path.join(base, f"{system}-{rep}")
            os.makedirs(d)
            if system == "kvx":
                with kvx.Store(layout, dir=d, model="meta-llama/Llama-3.1-8B", tp_size=1) as st:
                    s, c, _ = timed(lambda: st.put(hkeys, src))
                    add(system, "put", s, c)
                    cold_how = drop_cache([d])
                    s, c, got = timed(lambda: st.get(hkeys, dst))
                    if got != n or kvx_check():
                        errors.append(f"kvx cold get: {got}/{n} pages loaded or wrong bytes")
                    add(system, "get cold", s, c)
                    s, c, got = timed(lambda: st.get(hkeys, dst))
                    if got != n or kvx_check():
                        errors.append(f"kvx warm get: {got}/{n} pages loaded or wrong bytes")
                    add(system, "get warm", s, c)
            elif pf is not None:
                cfg = HiCacheStorageConfig(
                    tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0,
                    attn_cp_size=1, is_mla_model=False, enable_storage_metrics=False,
                    is_page_first_layout=True, model_name="meta-llama/Llama-3.1-8B",
                    extra_config={"file_storage_path": d})
                hf = HiCacheFile(cfg, file_path=d)
                keys = [k.hex() for k in hkeys]
                s, c, ok = timed(lambda: hf.batch_set(keys, [pf[p] for p in src]))
                if not ok:
                    errors.append("HiCacheFile batch_set returned False")
                add(system, "put", s, c)
                drop_cache([d])
                for op in ("get cold", "get warm"):
                    s, c, out = timed(lambda: hf.batch_get(keys, [pf[p] for p in dst]))
                    if any(o is None for o in out) or hf_check():
                        errors.append(f"HiCacheFile {op}: a page missing or wrong bytes")
                    add(system, op, s, c)
                try:
                    hf.close()
                except Exception:
                    pass
            shutil.rmtree(d, ignore_errors=True)

    for e in errors:
        print(f"ERROR {e}")
    for (system, op), runs in res.items():
        secs = sorted(r[0] for r in runs)
        gbs = [nbytes / s / 1e9 for s in secs]
        cpu = [r[1] / (nbytes / 1e9) for r in runs]
        print("RESULT " + json.dumps({
            "group": "storage", "system": "kvx_store" if system == "kvx" else "HiCacheFile",
            "op": op, "bytes": nbytes, "reps": len(runs),
            "gbs_best": max(gbs), "gbs_median": statistics.median(gbs),
            "gbs_min": min(gbs), "cpu_s_per_gb": statistics.median(cpu),
            "note": f"cold via {cold_how}" if op == "get cold" else ""}))
    shutil.rmtree(base, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
