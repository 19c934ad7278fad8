"""bench/peers/lmcache_disk.py - LMCache's local disk backend (LocalDiskBackend, CPU
only) on the same request: 4096 tokens of Llama-3.1-8B as LMCache keeps them,
16 chunks of 256 tokens (32 MiB each, [2, 32 layers, 256, 1024] bf16; the
same 512 MiB kvx_store and HiCacheFile move). KVX_PEERS_PAGES / 16 chunks.

Only the disk backend is timed: the chunks are ready memory objects (LMCache
gathers them from the paged KV before a put and scatters after a get; that
copy is not counted here, which favours LMCache). put: batched_submit_put_task
until every key's completion callback ran; get cold (os.sync + drop_caches or
fadvise) and warm: batched_get_blocking, every chunk compared with its source.
Runs in its own process after storage.py (not interleaved with kvx).
Prints RESULT / PEER-SKIP / ERROR lines like storage.py."""
import asyncio
import json
import os
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
                o.tensor.view(torch.int16).random_(-32768, 32767)
                objs.append(o)
            keys = [CacheEngineKey("meta-llama/Llama-3.1-8B", 1, 0, (rep << 32) | i,
                                   torch.bfloat16) for i in range(chunks)]
            done = threading.Semaphore(0)
            c0, t0 = cpu_now(), time.perf_counter()
            disk.batched_submit_put_task(keys, objs, on_complete_callback=lambda k: done.release())
            for _ in keys:
                if not done.acquire(timeout=120):
                    raise RuntimeError("a put did not complete in 120 s")
            res.setdefault("put", []).append((time.perf_counter() - t0, cpu_now() - c0))
            how = drop_cache([d])
            for op in ("get cold", "get warm"):
                c0, t0 = cpu_now(), time.perf_counter()
                got = disk.batched_get_blocking(keys)
                res.setdefault(op, []).append((time.perf_counter() - t0, cpu_now() - c0))
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
    for op, runs in res.items():
        gbs = [nbytes / s / 1e9 for s, _ in runs]
        print("RESULT " + json.dumps({
            "group": "storage", "system": "LMCache local disk", "op": op, "bytes": nbytes,
            "reps": len(runs), "gbs_best": max(gbs), "gbs_median": statistics.median(gbs),
            "gbs_min": min(gbs),
            "cpu_s_per_gb": statistics.median(c / (nbytes / 1e9) for _, c in runs),
            "note": f"cold via {how}" if op == "get cold" else ""}))
    shutil.rmtree(base, ignore_errors=True)
    sys.stdout.flush()
    os._exit(1 if errors else 0)  # LMCache's executor threads would hold the exit


if __name__ == "__main__":
    main()
