"""bench/peers/lmcache_disk.py - LMCache's local disk backend (LocalDiskBackend, CPU
only) on the same request: 4096 tokens of Llama-3.1-8B as LMCache keeps them,
16 chunks of 256 tokens (32 MiB each, [2, 32 layers, 256, 1024] bf16; the
same 512 MiB kvx_store and HiCacheFile move). KVX_PEERS_PAGES / 16 chunks.

Two rows per operation:
- "LMCache local disk": the disk backend alone, the chunks ready memory
  objects (favours LMCache: nothing gathers or scatters).
- "LMCache + gather/scatter": the same runs plus what an engine pays to put
  a chunk's pages from the paged KV pool kvx_store reads (layer-first, 16-token
  pages scattered over a pool twice the request) and back into other scattered
  pages: one torch index_select into the chunk before its put, one index_copy_
  out of it after a get. LMCache's own connector does this copy with a CUDA
  kernel on the GPU; on this CPU-only machine it is torch on the CPU, the same
  bytes kvx_store moves with pwritev / preadv straight from and into the pages.
put: batched_submit_put_task until every key's completion callback ran; get
cold (os.sync + drop_caches or fadvise) and warm: batched_get_blocking. The
gathered chunks are compared with the pool, and the scattered pages with the
source pages after every get. Runs in its own process after storage.py (not
interleaved with kvx). Prints RESULT / PEER-SKIP / ERROR lines like storage.py."""
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from storage import drop_cache  # noqa: E402  (same cold-cache method)


def cpu_now():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main():
    pages = int(os.environ.get("KVX_PEERS_PAGES", 256))
    reps = int(os.environ.get("KVX_PEERS_REPS", 3))
    base = os.path.abspath(os.environ.get("KVX_PEERS_DIR", "build/bench-peers")) + "-lmcache"
    try:
        import torch
        from lmcache.utils import CacheEngineKey
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.memory_management import MemoryFormat
        from lmcache.v1.metadata import LMCacheMetadata
        from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend
        from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend
    except Exception as e:
        print(f"PEER-SKIP LMCache: cannot import its local disk backend: {type(e).__name__}: {e}")
        return 0
    chunks = max(1, pages // 16)
    shape = torch.Size([2, 32, 256, 8 * 128])
    nbytes = chunks * shape.numel() * 2
    gb = nbytes / 2**30
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    md = LMCacheMetadata(model_name="meta-llama/Llama-3.1-8B", world_size=1, local_world_size=1,
                         worker_id=0, local_worker_id=0, kv_dtype=torch.bfloat16,
                         kv_shape=(32, 2, 256, 8, 128))
    res = {}
    errors = []
    how = ""
    torch.manual_seed(3)
    # the paged pool: [K/V, layer, token, 8 heads x 128] int16 (bf16 bits), pages of
    # 16 tokens; the request's pages and the pages a get fills are scattered over it
    page = 16
    pool_pages = 2 * chunks * 16
    pool = torch.empty((2, 32, pool_pages * page, 8 * 128), dtype=torch.int16)
    pool.random_(-32768, 32767)
    perm = list(range(pool_pages))
    random.Random(7).shuffle(perm)

    def token_index(pages_):
        return torch.tensor([p * page + t for p in pages_ for t in range(page)], dtype=torch.long)
    src_idx = [token_index(perm[c * 16:(c + 1) * 16]) for c in range(chunks)]
    dst_idx = [token_index(perm[(chunks + c) * 16:(chunks + c + 1) * 16]) for c in range(chunks)]

    def scatter(got):
        """The chunks into the destination pages; seconds and CPU seconds."""
        c0, t0 = cpu_now(), time.perf_counter()
        for c, g in enumerate(got):
            if g is not None:
                pool.index_copy_(2, dst_idx[c], g.tensor.view(torch.int16).view(2, 32, 256, -1))
        return time.perf_counter() - t0, cpu_now() - c0

    def scattered_ok():
        ok = all(torch.equal(pool.index_select(2, src_idx[c]), pool.index_select(2, dst_idx[c]))
                 for c in range(chunks))
        pool.index_fill_(2, torch.cat(dst_idx), 0)
        return ok
    for rep in range(reps):
        d = os.path.join(base, str(rep)) + "/"
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        try:
            cfg = LMCacheEngineConfig.from_defaults(
                chunk_size=256, local_cpu=False, max_local_cpu_size=3 * gb + 0.5,
                local_disk=d, max_local_disk_size=2 * gb + 1.0)
            cpu_b = LocalCPUBackend(cfg, md, dst_device="cpu")
            disk = LocalDiskBackend(cfg, loop, cpu_b, dst_device="cpu", metadata=md)
            objs = []
            for _ in range(chunks):
                o = cpu_b.allocate(shape, torch.bfloat16, MemoryFormat.KV_2LTD)
                if o is None:
                    raise RuntimeError("LocalCPUBackend.allocate returned None")
                objs.append(o)
            c0, t0 = cpu_now(), time.perf_counter()  # the gather: pages -> chunks
            for c, o in enumerate(objs):
                torch.index_select(pool, 2, src_idx[c], out=o.tensor.view(torch.int16).view(2, 32, 256, -1))
            gather = (time.perf_counter() - t0, cpu_now() - c0)
            if not all(torch.equal(o.tensor.view(torch.int16).view(2, 32, 256, -1),
                                   pool.index_select(2, src_idx[c])) for c, o in enumerate(objs)):
                errors.append("LMCache gather: a chunk differs from its pages")
            keys = [CacheEngineKey("meta-llama/Llama-3.1-8B", 1, 0, (rep << 32) | i,
                                   torch.bfloat16) for i in range(chunks)]
            done = threading.Semaphore(0)
            c0, t0 = cpu_now(), time.perf_counter()
            disk.batched_submit_put_task(keys, objs, on_complete_callback=lambda k: done.release())
            for _ in keys:
                if not done.acquire(timeout=120):
                    raise RuntimeError("a put did not complete in 120 s")
            put = (time.perf_counter() - t0, cpu_now() - c0)
            res.setdefault("put", []).append(put)
            res.setdefault("put+", []).append((put[0] + gather[0], put[1] + gather[1]))
            how = drop_cache([d])
            for op in ("get cold", "get warm"):
                c0, t0 = cpu_now(), time.perf_counter()
                got = disk.batched_get_blocking(keys)
                tg = (time.perf_counter() - t0, cpu_now() - c0)
                res.setdefault(op, []).append(tg)
                ts = scatter(got)
                res.setdefault(op + "+", []).append((tg[0] + ts[0], tg[1] + ts[1]))
                if not scattered_ok():
                    errors.append(f"LMCache {op} + scatter: a page differs from its source")
                for o, g in zip(objs, got):
                    if g is None or not torch.equal(o.tensor.view(torch.int16),
                                                    g.tensor.view(torch.int16)):
                        errors.append(f"LMCache {op}: a chunk missing or wrong bytes")
                        break
                for g in got:
                    if g is not None:
                        g.ref_count_down()
            try:
                disk.close()
            except Exception:
                pass
        except Exception as e:
            print(f"PEER-SKIP LMCache: its local disk backend failed on the CPU: "
                  f"{type(e).__name__}: {e}")
            return 0
        finally:
            shutil.rmtree(d, ignore_errors=True)
    for e in errors:
        print(f"ERROR {e}")
    for op in sorted(res, key=lambda o: o.endswith("+")):  # the disk alone first
        runs = res[op]
        gbs = [nbytes / s / 1e9 for s, _ in runs]
        system = "LMCache + gather/scatter" if op.endswith("+") else "LMCache local disk"
        op = op.rstrip("+")
        print("RESULT " + json.dumps({
            "group": "storage", "system": system, "op": op, "bytes": nbytes,
            "reps": len(runs), "gbs_best": max(gbs), "gbs_median": statistics.median(gbs),
            "gbs_min": min(gbs),
            "cpu_s_per_gb": statistics.median(c / (nbytes / 1e9) for _, c in runs),
            "note": f"cold via {how}" if op == "get cold" else ""}))
    shutil.rmtree(base, ignore_errors=True)
    sys.stdout.flush()
    os._exit(1 if errors else 0)  # LMCache's executor threads would hold the exit


if __name__ == "__main__":
    main()
