"""kvx.sglang.hicache against SGLang itself (the pinned release in the venv).

Run from the repo root:  build/venv-sglang/bin/python tests/sglang/test_hicache.py
(also with PYTHONPATH=python: the compiled library is then looked up in
KVX_PY_LIBRARY, python/kvx/, the venv's installed kvx, or build/libkvx.so).
Prints "ok ..." / "FAIL ..." per check and "hicache: N passed, M failed".
"""
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _find_lib() -> None:
    if os.environ.get("KVX_PY_LIBRARY"):
        return
    cands = glob.glob(os.path.join(ROOT, "python", "kvx", "_libkvx*.so"))
    cands += glob.glob(os.path.join(sys.prefix, "lib", "python3*", "site-packages", "kvx",
                                    "_libkvx*.so"))
    cands += glob.glob(os.path.join(ROOT, "build", "libkvx.so"))
    if cands:
        os.environ["KVX_PY_LIBRARY"] = cands[0]


_find_lib()
try:
    import torch
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
    from sglang.srt.mem_cache.device_pool_info import (KVBufferLayout, KVBuffers,
                                                       MHABufferInfo, MLABufferInfo)
    from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost
    from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost
    from sglang.srt.mem_cache.utils import get_hash_str
    from sglang.srt.managers.cache_controller import (HiCacheController, PrefetchOperation,
                                                      StorageOperation)
    import kvx
    from kvx.sglang.hicache import KvxHiCacheStorage
except ImportError as e:
    # the runner made the venv with SGLang and kvx: a failed import is a failure
    print(f"FAIL hicache: cannot import SGLang / kvx: {e}")
    sys.exit(1)

PS, LAYERS, HEADS, DIM, TOKENS = 4, 3, 2, 8, 64
MODEL = "org/test-model"
passed = failed = 0


def check(cond: bool, what: str) -> None:
    global passed, failed
    if cond:
        passed += 1
        print(f"ok {what}")
    else:
        failed += 1
        print(f"FAIL {what}")


def config(tp_rank=0, tp_size=1, mla=False, extra=None):
    ex = {"backend_name": "kvx", "module_path": "kvx.sglang.hicache",
          "class_name": "KvxHiCacheStorage", "interface_v1": 1}
    ex.update(extra or {})
    return HiCacheStorageConfig(tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1,
                                attn_cp_rank=0, attn_cp_size=1, is_mla_model=mla,
                                enable_storage_metrics=False, is_page_first_layout=False,
                                model_name=MODEL, extra_config=ex)


def mha_pool(layout="layer_first"):
    """A real MHATokenToKVPoolHost on CPU over a minimal device pool (per-layer
    K/V tensors and their pointer tables, as SGLang's MHA device pool gives)."""
    k = tuple(torch.zeros(TOKENS, HEADS, DIM, dtype=torch.float16) for _ in range(LAYERS))
    v = tuple(torch.zeros(TOKENS, HEADS, DIM, dtype=torch.float16) for _ in range(LAYERS))
    ptrs = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.uint64)
    info = MHABufferInfo(buffers=KVBuffers(k=k, v=v, k_data_ptrs=ptrs(k), v_data_ptrs=ptrs(v),
                                           layout=KVBufferLayout.NHD),
                         page_size=PS, head_num=HEADS, head_dim=DIM, v_head_dim=DIM,
                         dtype=torch.float16, device=torch.device("cpu"))
    pool = MHATokenToKVPoolHost(info, 2.0, 0, PS, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=TOKENS, start_layer=0, end_layer=LAYERS)
    pool._keep = (k, v)
    return pool


def mla_pool(layout="layer_first"):
    """A real MLATokenToKVPoolHost on CPU over minimal MLA device buffers."""
    lora, rope = 16, 8
    bufs = tuple(torch.zeros(TOKENS, 1, lora + rope, dtype=torch.bfloat16)
                 for _ in range(LAYERS))
    info = MLABufferInfo(buffers=bufs,
                         data_ptrs=torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64),
                         layer_indices=tuple(range(LAYERS)), device_layer_num=LAYERS,
                         page_size=PS, kv_lora_rank=lora, qk_rope_head_dim=rope,
                         kv_cache_dim=lora + rope, dtype=torch.bfloat16,
                         device=torch.device("cpu"))
    pool = MLATokenToKVPoolHost(info, 2.0, 0, PS, layout, pin_memory=False, device="cpu",
                                device_capacity_tokens=TOKENS, start_layer=0,
                                end_layer=LAYERS, target_layer_num=LAYERS)
    pool._keep = bufs
    return pool


def backend(pool, **kw):
    """The backend as SGLang's cache controller makes it: the factory, then
    register_mem_pool_host."""
    b = StorageBackendFactory.create_backend("dynamic", config(**kw), pool)
    b.register_mem_pool_host(pool)
    return b


_NATIVE_HASH_NOTE = []


def hash_keys(toks):
    """SGLang's own page keys (get_hash_str, chained SHA-256, hex). It builds a
    C++ extension on first use (needs a C++ compiler and libcrypto); where that
    cannot be built, kvx.page_keys (the same function, checked below whenever
    SGLang's runs) stands in, said once."""
    try:
        return list(get_hash_str(toks, None, PS))
    except RuntimeError as e:
        if not _NATIVE_HASH_NOTE:
            _NATIVE_HASH_NOTE.append(str(e))
            print(f"note: SGLang's native get_hash_str is unavailable ({e}); "
                  "using kvx.page_keys for keys")
        return [k.hex() for k in kvx.page_keys(toks, PS)]


def keys_for(seed: int, n: int):
    """SGLang's own keys (get_hash_str: chained SHA-256 page hashes, hex)."""
    toks = [(seed * 7919 + i) % 50000 for i in range(n * PS)]
    return hash_keys(toks)


def content(pool, key: str) -> torch.Tensor:
    """A page's bytes generated from its key alone (independent of the pool)."""
    nbytes = pool.get_dummy_flat_data_page().numel() * pool.dtype.itemsize
    out, ctr = bytearray(), 0
    while len(out) < nbytes:
        out += hashlib.sha256(f"{key}/{ctr}".encode()).digest()
        ctr += 1
    return torch.frombuffer(bytearray(out[:nbytes]), dtype=torch.uint8).clone()


def fill(pool, keys, pages):
    for key, p in zip(keys, pages):
        pool.set_from_flat_data_page(p * PS, content(pool, key).view(pool.dtype))


def verify(pool, keys, pages) -> int:
    """Pages whose bytes differ from what their key generates."""
    bad = 0
    for key, p in zip(keys, pages):
        got = pool.get_data_page(p * PS, flat=True).contiguous().view(torch.uint8)
        bad += int(not torch.equal(got, content(pool, key)))
    return bad


def hidx(pages) -> torch.Tensor:
    return torch.tensor([p * PS + t for p in pages for t in range(PS)], dtype=torch.int64)


def clear(pool):
    pool.kv_buffer.zero_()


def block_files(root):
    return sorted(glob.glob(os.path.join(root, "*", "*", "*.kvb")))


# ---------------------------------------------------------------------------

def test_factory_and_roundtrip(root):
    pool = mha_pool()
    b = backend(pool, extra={"dir": root})
    check(isinstance(b, KvxHiCacheStorage), "factory: dynamic config builds KvxHiCacheStorage")
    toks = list(range(1000, 1000 + 5 * PS))
    ours = [k.hex() for k in kvx.page_keys(toks, PS)]
    if hash_keys(toks) != ours or not _NATIVE_HASH_NOTE:
        check(hash_keys(toks) == ours,
              "SGLang's get_hash_str keys equal kvx.page_keys (the same blocks from C)")
    keys = keys_for(1, 6)
    src = [1, 2, 3, 5, 8, 9]
    fill(pool, keys, src)
    res = b.batch_set_v1(keys, hidx(src))
    check(res == [True] * 6, f"batch_set_v1 stores 6 scattered pages ({res})")
    clear(pool)
    dst = [10, 4, 12, 7, 6, 11]
    res = b.batch_get_v1(keys, hidx(dst))
    check(res == [True] * 6 and verify(pool, keys, dst) == 0,
          "batch_get_v1 loads 6 pages into other host pages byte-exact")
    # the deprecated tensor path SGLang uses without interface_v1
    clear(pool)
    pages = b.batch_get(keys[:3], [pool.get_dummy_flat_data_page() for _ in range(3)])
    for p, t in zip([0, 13, 14], pages):
        if t is not None:
            pool.set_from_flat_data_page(p * PS, t)
    check(all(t is not None for t in pages) and verify(pool, keys[:3], [0, 13, 14]) == 0,
          "batch_get (flat page tensors) reads what batch_set_v1 wrote")
    k2 = keys_for(2, 3)
    fill(pool, k2, [1, 2, 3])
    ok = b.batch_set(k2, [pool.get_data_page(p * PS) for p in [1, 2, 3]])
    clear(pool)
    res = b.batch_get_v1(k2, hidx([5, 6, 7]))
    check(ok and res == [True] * 3 and verify(pool, k2, [5, 6, 7]) == 0,
          "batch_set (flat page tensors) then batch_get_v1 byte-exact")
    check(b.exists(keys[0]) and not b.exists(keys_for(99, 1)[0]), "exists: hit and miss")
    b.close()
    return keys


class Controller:
    """The state HiCacheController's storage methods read, with those methods
    taken unchanged from SGLang's class (a whole controller needs a device
    pool, CUDA streams and process groups)."""

    def __init__(self, pool, backend, zero_copy):
        self.page_size = PS
        self.mem_pool_host = self.storage_host_pool = pool
        self.storage_backend = backend
        C = HiCacheController
        pick = (C._page_get_zero_copy, C._page_set_zero_copy) if zero_copy else \
            (C._generic_page_get, C._generic_page_set)
        self.page_get_func = pick[0].__get__(self)
        self.page_set_func = pick[1].__get__(self)

    _page_backup = HiCacheController._page_backup
    _storage_hit_query = HiCacheController._storage_hit_query


def test_controller_paths(root):
    """SGLang's own backup / hit query / page get code over the backend."""
    for zero_copy in (True, False):
        what = "v1 zero-copy" if zero_copy else "generic tensor"
        pool = mha_pool()
        b = backend(pool, extra={"dir": os.path.join(root, "ctl"),
                                 "interface_v1": int(zero_copy)})
        ctl = Controller(pool, b, zero_copy)
        toks = [(31 * i + (7 if zero_copy else 11)) % 30000 for i in range(5 * PS)]
        keys = hash_keys(toks)
        src = [3, 1, 4, 9, 2]
        fill(pool, keys, src)
        op = StorageOperation(hidx(src), toks, hash_value=keys)
        ctl._page_backup(op)
        check(op.completed_tokens == 5 * PS, f"controller {what}: _page_backup stores 5 pages")
        clear(pool)
        pre = PrefetchOperation("req-1", toks + list(range(3)) + [1] * PS)
        if _NATIVE_HASH_NOTE:  # SGLang's query hashes with the native extension
            print(f"note: controller {what}: _storage_hit_query skipped (no native hash)")
            hashes = keys[:b.batch_exists(keys)]
        else:
            hashes, ntok = ctl._storage_hit_query(pre)
            check(hashes == keys and ntok == 5 * PS,
                  f"controller {what}: _storage_hit_query finds the 5 stored pages")
        dst = [11, 6, 12, 5, 7]
        got = ctl.page_get_func(pre, hashes, hidx(dst))
        check(got == 5 and verify(pool, keys, dst) == 0,
              f"controller {what}: page get loads 5 pages byte-exact")
        b.close()


def test_page_first(root):
    pool = mha_pool("page_first")
    b = backend(pool, extra={"dir": root})
    keys = keys_for(6, 3)
    fill(pool, keys, [1, 2, 3])
    ok = b.batch_set_v1(keys, hidx([1, 2, 3]))
    clear(pool)
    res = b.batch_get_v1(keys, hidx([9, 4, 12]))
    check(ok == res == [True] * 3 and verify(pool, keys, [9, 4, 12]) == 0,
          "page_first host layout: set/get v1 byte-exact")
    b.close()


def test_batch_exists(root):
    pool = mha_pool()
    b = backend(pool, extra={"dir": root})
    keys = keys_for(3, 6)
    fill(pool, keys, range(1, 7))
    stored = [0, 1, 2, 4, 5]  # key 3 missing: a gap
    b.batch_set_v1([keys[i] for i in stored], hidx([1 + i for i in stored]))
    n = b.batch_exists(keys)
    check(n == 3, f"batch_exists stops at the gap (3 of 6 with key 3 missing; got {n})")
    check(b.batch_exists(keys[4:]) == 2, "batch_exists counts all hits after the gap alone")
    res = b.batch_get_v1(keys, hidx(range(7, 13)))
    check(res == [True] * 3 + [False] * 3, f"batch_get_v1 is a prefix: {res}")
    b.close()


CHILD = r"""
import sys, json
sys.path.insert(0, {here!r})
import test_hicache as t
pool = t.mha_pool()
b = t.backend(pool, extra={{"dir": {root!r}}})
keys = {keys!r}
n = b.batch_exists(keys)
dst = list(range(20, 20 + len(keys)))
res = b.batch_get_v1(keys, t.hidx(dst))
print(json.dumps({{"exists": n, "loaded": sum(res), "bad": t.verify(pool, keys, dst)}}))
"""


def test_restart(root, keys):
    code = CHILD.format(here=HERE, root=root, keys=keys)
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(kvx.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=50, env=env)
    line = (r.stdout.strip().splitlines() or [""])[-1]
    try:
        got = json.loads(line)
    except ValueError:
        got = None
        print(r.stdout[-2000:], r.stderr[-3000:])
    check(got == {"exists": len(keys), "loaded": len(keys), "bad": 0},
          f"restart: a new process finds and loads {len(keys)} pages byte-exact ({got})")


def test_mla(root):
    p0, p1 = mla_pool(), mla_pool()
    b0 = backend(p0, tp_rank=0, tp_size=2, mla=True, extra={"dir": root})
    b1 = backend(p1, tp_rank=1, tp_size=2, mla=True, extra={"dir": root})
    keys = keys_for(4, 4)
    before = len(block_files(root))
    fill(p0, keys, [1, 2, 3, 4])
    fill(p1, keys, [1, 2, 3, 4])
    r1 = b1.batch_set_v1(keys, hidx([1, 2, 3, 4]))
    r0 = b0.batch_set_v1(keys, hidx([1, 2, 3, 4]))
    files = len(block_files(root)) - before
    check(r0 == r1 == [True] * 4 and files == 4,
          f"MLA: two tp ranks store 4 pages as 4 block files ({files})")
    clear(p0)
    clear(p1)
    g0 = b0.batch_get_v1(keys, hidx([5, 6, 7, 8]))
    g1 = b1.batch_get_v1(keys, hidx([9, 10, 11, 12]))
    check(g0 == g1 == [True] * 4 and verify(p0, keys, [5, 6, 7, 8]) == 0
          and verify(p1, keys, [9, 10, 11, 12]) == 0,
          "MLA: both ranks load the one copy byte-exact")
    b0.close()
    b1.close()


def test_corruption_and_bad_keys(root):
    sub = os.path.join(root, "corrupt")
    pool = mha_pool()
    b = backend(pool, extra={"dir": sub})
    keys = keys_for(5, 3)
    fill(pool, keys, [1, 2, 3])
    b.batch_set_v1(keys, hidx([1, 2, 3]))
    victim = [f for f in block_files(sub) if os.path.basename(f).startswith(keys[1])]
    if victim:
        with open(victim[0], "r+b") as f:
            f.seek(-5, os.SEEK_END)
            c = f.read(1)
            f.seek(-5, os.SEEK_END)
            f.write(bytes([c[0] ^ 0x40]))
    clear(pool)
    res = b.batch_get_v1(keys, hidx([4, 5, 6]))
    check(len(victim) == 1 and res == [True, False, False] and verify(pool, keys[:1], [4]) == 0,
          f"corruption: a flipped byte makes that block a miss ({res})")
    t = b.get(keys[1], pool.get_dummy_flat_data_page())
    check(t is None, "corruption: get of the damaged key returns None")
    for bad, exc in ((123, TypeError), (b"short", ValueError), ("", ValueError)):
        try:
            b.batch_exists([bad])
            ok = False
        except exc as e:
            ok = "kvx hicache" in str(e)
        check(ok, f"bad key {bad!r} refused with {exc.__name__}")
    try:
        b.batch_get_v1(keys[:2], hidx([1]))
        ok = False
    except ValueError as e:
        ok = "host indices" in str(e)
    check(ok, "host indices that do not match the keys are refused")
    b.close()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kvx_hicache_") as root:
        for name, fn in (("factory", lambda: test_factory_and_roundtrip(root)),):
            try:
                keys = fn()
            except Exception:
                traceback.print_exc()
                check(False, f"{name} raised")
                keys = None
        steps = [("controller", lambda: test_controller_paths(root)),
                 ("page_first", lambda: test_page_first(root)),
                 ("batch_exists", lambda: test_batch_exists(root)),
                 ("restart", lambda: test_restart(root, keys or keys_for(1, 6))),
                 ("mla", lambda: test_mla(os.path.join(root, "mla"))),
                 ("corruption", lambda: test_corruption_and_bad_keys(root))]
        for name, fn in steps:
            try:
                fn()
            except Exception:
                traceback.print_exc()
                check(False, f"{name} raised")
    print(f"hicache: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
