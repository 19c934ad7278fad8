#!/usr/bin/env python3
"""tests/python/test_kvx.py - the Python package kvx (python/), end to end.

Outside (plain python3): makes a fresh venv under build/pyvenv, runs
`pip install ./python` in it (compiling the headers), then reruns this file
with the venv's python and --inside, from a directory outside the repo so
that only the installed package can be imported. Inside: the ctypes
structures against the C ones (a C program printing sizeof/offsetof), a
prefill and a decode Engine on the file transport in one process moving
scattered pages, an aux row and a state row (every byte checked), refused
calls raising KvxError with the code and a sentence, poll values equal to
SGLang's KVPoll, an abort reaching failure_exception, Store put/get/exists,
and numpy arrays as buffers when numpy is importable.

Prints `python: N passed, M failed`; exits 1 on a failure, 0 with a SKIP
line when python3 -m venv is not available."""
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"  FAIL {what}", flush=True)


def done():
    print(f"python: {passed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed else 0)


def outside():
    venv = os.path.join(REPO, "build", "pyvenv")
    probe = subprocess.run([sys.executable, "-c", "import venv, ensurepip"],
                           capture_output=True)
    if probe.returncode != 0:
        print("SKIP python: python3 -m venv is not available (Debian: python3-venv)")
        sys.exit(0)
    shutil.rmtree(venv, ignore_errors=True)
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    subprocess.check_call([sys.executable, "-m", "venv", venv])
    py = os.path.join(venv, "bin", "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # Build isolation fetches setuptools>=61 (and wheel); without a network,
    # fall back to the venv's own setuptools when it can build a wheel.
    r = subprocess.run(pip + [os.path.join(REPO, "python")], capture_output=True, text=True)
    if r.returncode != 0:
        r2 = subprocess.run(pip + ["--no-build-isolation", os.path.join(REPO, "python")],
                            capture_output=True, text=True)
        if r2.returncode != 0 and ("satisfies the requirement setuptools" in r.stderr or
                                   "satisfies the requirement wheel" in r.stderr):
            print("SKIP python: pip cannot fetch the build requirements (setuptools>=61, "
                  "wheel): no package index reachable and none installed")
            sys.exit(0)
        if r2.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:], r2.stderr[-3000:])
            check(False, "pip install ./python")
            done()
    check(True, "pip install ./python into a fresh venv")
    with tempfile.TemporaryDirectory() as cwd:  # nowhere near python/kvx
        rc = subprocess.run([py, os.path.abspath(__file__), "--inside", REPO], cwd=cwd).returncode
    check(rc == 0, "the tests inside the venv")
    sys.exit(0 if rc == 0 and failed == 0 else 1)


# ---------------------------------------------------------------- inside ----

def struct_layout(kvx, repo, tmp):
    """Every ctypes structure has the C sizeof and offsetof of each field."""
    from kvx import _ffi
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "kvx.h"',
             '#include "kvx_store.h"', '#include "kvx_cuda.h"', 'int main(void) {']
    expect = []
    for name, cls in _ffi.STRUCTS.items():
        lines.append(f'printf("%zu\\n", sizeof({name}));')
        expect.append(f"{name} size {__import__('ctypes').sizeof(cls)}")
        for fname, _ in cls._fields_:
            lines.append(f'printf("%zu\\n", offsetof({name}, {fname}));')
            expect.append(f"{name}.{fname} at {getattr(cls, fname).offset}")
    lines.append("return 0; }")
    src, exe = os.path.join(tmp, "layout.c"), os.path.join(tmp, "layout")
    with open(src, "w") as f:
        f.write("\n".join(lines))
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-std=c11", "-I", repo, src, "-o", exe], capture_output=True,
                       text=True)
    check(r.returncode == 0, f"compile the layout program: {r.stderr[-2000:]}")
    if r.returncode != 0:
        return
    got = subprocess.run([exe], capture_output=True, text=True).stdout.split()
    check(len(got) == len(expect), "layout program output")
    bad = [f"{e} (C: {g})" for e, g in zip(expect, got) if int(e.rsplit(" ", 1)[1]) != int(g)]
    check(not bad, "ctypes structures differ from C: " + "; ".join(bad[:10]))


NBUF, NPAGES, ITEM = 2, 16, 256
NSLOTS, AUX_ITEM, NROWS, STATE_ITEM = 4, 64, 4, 128


def pattern(r, k, n):
    return bytes((r * 131 + k * 29 + i * 7 + 1) & 0xFF for i in range(n))


def make_pool(kvx, fill):
    import ctypes
    kv = [bytearray([fill]) * (NPAGES * ITEM) for _ in range(NBUF)]
    aux = (ctypes.c_uint8 * (NSLOTS * AUX_ITEM))(*([fill] * (NSLOTS * AUX_ITEM)))
    state = (ctypes.c_uint8 * (NROWS * STATE_ITEM))(*([fill] * (NROWS * STATE_ITEM)))
    layout = kvx.Layout(
        kv=[(kvx.address_of(b), len(b), ITEM) for b in kv],
        aux=[(ctypes.addressof(aux), ctypes.sizeof(aux), AUX_ITEM)],
        state=[(ctypes.addressof(state), ctypes.sizeof(state), STATE_ITEM)],
        state_type=kvx.StateType.MAMBA, page_size=16, num_kv_heads=1, dtype="bfloat16",
        dtype_size=2, keep=[kv, aux, state])
    return kv, aux, state, layout


def both_done(kvx, s, r):
    import time
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        if s.poll() in (0, 4) and r.poll() in (0, 4):
            return
        r.wait(kvx.Poll.Success, 10)
        s.wait(kvx.Poll.Success, 10)


def transfer(kvx, tmp):
    kv_s, aux_s, state_s, ls = make_pool(kvx, 0x00)
    kv_d, aux_d, state_d, ld = make_pool(kvx, 0xEE)
    src_pages, dst_pages = [1, 4, 5, 11], [9, 2, 3, 14]
    src_slot, dst_slot, src_row, dst_row = 1, 2, 2, 3
    for b in range(NBUF):
        for k, p in enumerate(src_pages):
            kv_s[b][p * ITEM:(p + 1) * ITEM] = pattern(b, k, ITEM)
    aux_s[src_slot * AUX_ITEM:(src_slot + 1) * AUX_ITEM] = pattern(10, 0, AUX_ITEM)
    state_s[src_row * STATE_ITEM:(src_row + 1) * STATE_ITEM] = pattern(20, 0, STATE_ITEM)
    check(ls.num_pages == NPAGES and ls.page_bytes == NBUF * ITEM, "Layout num_pages/page_bytes")
    d = os.path.join(tmp, "file")
    with kvx.Engine("prefill", ls, transport="file", dir=d) as pe, \
            kvx.Engine("decode", ld, transport="file", dir=d) as de:
        check(pe.transport == "file", "engine transport")
        r = de.receiver(4242)
        s = pe.sender(4242)
        check(s.wait(kvx.Poll.WaitingForInput, 30000) == kvx.Poll.WaitingForInput,
              "sender reaches WaitingForInput")
        r.init(dst_pages, dst_slot, state_indices=[dst_row])
        s.init(len(src_pages), src_slot)
        s.send(src_pages[:2])
        s.send(src_pages[2:], state_indices=[src_row])
        both_done(kvx, s, r)
        check(s.poll() == kvx.Poll.Success == 4 and type(s.poll()) is int,
              f"sender Success (poll {s.poll()}: {s.error})")
        check(r.poll() == 4, f"receiver Success (poll {r.poll()}: {r.error})")
        check(r.failure_exception() is None and r.result == 0, "no failure on success")
        wrong = sum(kv_d[b][p * ITEM:(p + 1) * ITEM] != pattern(b, k, ITEM)
                    for b in range(NBUF) for k, p in enumerate(dst_pages))
        check(wrong == 0, f"{wrong} KV pages wrong")
        check(bytes(aux_d[dst_slot * AUX_ITEM:(dst_slot + 1) * AUX_ITEM]) ==
              pattern(10, 0, AUX_ITEM), "aux row")
        check(bytes(state_d[dst_row * STATE_ITEM:(dst_row + 1) * STATE_ITEM]) ==
              pattern(20, 0, STATE_ITEM), "state row")
        check(all(kv_d[b][0] == 0xEE for b in range(NBUF)) and aux_d[0] == 0xEE and
              state_d[0] == 0xEE, "nothing outside the destination written")
        s.close()
        r.close()
        check(pe.stats()["rooms_succeeded"] == 1, "engine stats")

        # A refused call: a page outside the pool fails the room with a sentence.
        r = de.receiver(7)
        s = pe.sender(7)
        s.wait(kvx.Poll.WaitingForInput, 30000)
        s.init(2, -1)
        try:
            s.send([0, NPAGES + 5])
            check(False, "a page out of range is refused")
        except kvx.KvxError as e:
            check(e.code == -101 and e.sentence and str(NPAGES + 5) in e.sentence,
                  f"KvxError(code {e.code}, sentence {e.sentence!r})")
        check(s.poll() == kvx.Poll.Failed == 0, "the room failed")
        fe = s.failure_exception()
        check(isinstance(fe, kvx.KvxError) and fe.code == -101 and fe.sentence,
              f"failure_exception {fe!r}")
        # A call refused without failing the room (state error): init twice.
        try:
            s.init(2, -1)
            check(False, "init on a failed room is refused")
        except kvx.KvxError as e:
            check(e.code == -200 and e.sentence, f"state error {e.code} {e.sentence!r}")
        # Decode: repeated destination pages.
        try:
            r.init([3, 3], -1)
            check(False, "repeated pages are refused")
        except kvx.KvxError as e:
            check(e.code in (-102, -200) and e.sentence, f"duplicate {e.code} {e.sentence!r}")
        s.close()
        r.close()

        # An abort reaches the room's poll and failure_exception.
        r = de.receiver(8)
        r.wait(kvx.Poll.WaitingForInput, 30000)
        r.abort("the test aborts")
        check(r.poll() == 0, "aborted receiver is Failed")
        fe = r.failure_exception()
        check(fe is not None and fe.code == -202 and "the test aborts" in fe.sentence,
              f"abort failure_exception {fe!r}")
        r.close()
    check(pe._h.value is None, "engine closed by the with block")


def gpu_pages(kvx, repo):
    """GPU pools (Layout entries with mem 1) through the tcp transport: the
    Engine gets kvx_cuda_mem_ops; the driver is tests/fakecuda (device
    memory on host memfds), loaded by kvx as KVX_CUDA_LIBRARY."""
    import ctypes
    from ctypes import byref, c_int, c_uint64, c_void_p
    fake = os.path.join(repo, "tests", "fakecuda", "libfakecuda.so")
    if not os.path.exists(fake):
        print(f"SKIP gpu pages: {fake} is missing (make fakecuda)")
        return
    kv_h, _, _, lh = make_pool(kvx, 0x00)
    try:  # no driver: a sentence, not a crash
        os.environ["KVX_CUDA_LIBRARY"] = "/nonexistent/libcuda.so.1"
        gpu = kvx.Layout([(0x10000, NPAGES * ITEM, ITEM, 1, 0)], page_size=16)
        kvx.Engine("prefill", gpu, transport="tcp", boot={"host": "127.0.0.1", "port": -1})
        check(False, "a GPU layout without a driver is refused")
    except kvx.KvxError as e:
        check("libcuda" in e.sentence or "driver" in e.sentence or "CUDA" in e.sentence,
              f"a GPU layout without a driver: {e.sentence!r}")
    os.environ["KVX_CUDA_LIBRARY"] = fake
    cu = ctypes.CDLL(fake)
    dev, ctx = c_int(), c_void_p()
    ok = (cu.cuInit(0) == 0 and cu.cuDeviceGet(byref(dev), 0) == 0 and
          cu.cuDevicePrimaryCtxRetain(byref(ctx), dev) == 0 and cu.cuCtxSetCurrent(ctx) == 0)
    check(ok, "fake driver: a context")

    def dev_pool(fill):
        bufs = []
        for _ in range(NBUF):
            p = c_uint64()
            check(cu.cuMemAlloc_v2(byref(p), NPAGES * ITEM) == 0, "fake driver: cuMemAlloc")
            host = (ctypes.c_uint8 * (NPAGES * ITEM))(*([fill] * (NPAGES * ITEM)))
            cu.cuMemcpyHtoD_v2(p, host, NPAGES * ITEM)
            bufs.append(p.value)
        aux = (ctypes.c_uint8 * (NSLOTS * AUX_ITEM))()
        lay = kvx.Layout([(b, NPAGES * ITEM, ITEM, 1, 0) for b in bufs],
                         aux=[(ctypes.addressof(aux), ctypes.sizeof(aux), AUX_ITEM)],
                         page_size=16, dtype="bfloat16", keep=[aux])
        return bufs, lay

    src_b, ls = dev_pool(0)
    dst_b, ld = dev_pool(0xEE)
    check(ls.on_gpu and not lh.on_gpu, "Layout.on_gpu")
    src_pages, dst_pages = [3, 0, 7], [5, 12, 1]
    for b in range(NBUF):
        for k, p in enumerate(src_pages):
            data = pattern(b, k, ITEM)
            cu.cuMemcpyHtoD_v2(c_uint64(src_b[b] + p * ITEM), data, ITEM)
    with kvx.Engine("prefill", ls, transport="tcp", boot={"host": "127.0.0.1", "port": -1}) as pe:
        port = lib_port(kvx, pe)
        with kvx.Engine("decode", ld, transport="tcp", bootstrap_addr=f"127.0.0.1:{port}") as de:
            r = de.receiver(77)
            s = pe.sender(77)
            r.wait(kvx.Poll.WaitingForInput, 30000)
            r.init(dst_pages, -1)
            s.wait(kvx.Poll.WaitingForInput, 30000)
            s.init(len(src_pages), -1)
            s.send(src_pages)
            both_done(kvx, s, r)
            check(s.poll() == 4 and r.poll() == 4, f"GPU pages over tcp: Success ({s.error} "
                  f"{r.error})")
            wrong = 0
            for b in range(NBUF):
                for k, p in enumerate(dst_pages):
                    out = (ctypes.c_uint8 * ITEM)()
                    cu.cuMemcpyDtoH_v2(out, c_uint64(dst_b[b] + p * ITEM), ITEM)
                    wrong += bytes(out) != pattern(b, k, ITEM)
            check(wrong == 0, f"GPU pages over tcp, read back from device memory: {wrong} wrong")
            s.close()
            r.close()
    check(not pe._mem and pe._h.value is None, "the engine released its CUDA mem ops on close")
    os.environ.pop("KVX_CUDA_LIBRARY", None)


def lib_port(kvx, engine):
    """The bootstrap port a prefill engine bound (port 0 = ephemeral)."""
    from kvx._ffi import lib
    import ctypes
    fn = lib.kvx_boot_engine_port
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p]
    return fn(engine._handle())


def bad_layout(kvx):
    try:
        kvx.Layout(kv=[(0, 4096, 256)])
        check(False, "a NULL buffer is refused")
    except kvx.KvxError as e:
        check(e.code == -100 and e.sentence, f"bad layout {e.code} {e.sentence!r}")
    try:
        kvx.Engine("prefill", kvx.Layout.from_arrays([bytearray(1024)]), transport="nope")
        check(False, "an unknown transport is refused")
    except kvx.KvxError as e:
        check(e.code == -105 and "nope" in e.sentence, f"unknown transport {e.sentence!r}")


def store(kvx, tmp):
    kv = [bytearray(NPAGES * ITEM) for _ in range(NBUF)]
    layout = kvx.Layout.from_arrays([(b, ITEM) for b in kv], page_size=16)
    for b in range(NBUF):
        kv[b][3 * ITEM:4 * ITEM] = pattern(b, 3, ITEM)
        kv[b][5 * ITEM:6 * ITEM] = pattern(b, 5, ITEM)
    keys = kvx.page_keys(list(range(48)), 16)
    check(len(keys) == 3 and all(len(k) == 32 for k in keys), "page_keys")
    with kvx.Store(layout, dir=os.path.join(tmp, "store"), model="m") as st:
        st.put(keys[:2], [3, 5])
        check(st.exists(keys) == 2, "exists counts consecutive hits")
        n = st.get(keys, [7, 8, 9])
        check(n == 2, f"get loaded {n}")
        check(all(kv[b][7 * ITEM:8 * ITEM] == pattern(b, 3, ITEM) and
                  kv[b][8 * ITEM:9 * ITEM] == pattern(b, 5, ITEM) for b in range(NBUF)),
              "store bytes")
        with st.load_layers(keys[:2], [10, 11]) as ld:
            check(ld.num_layers == NBUF // 2, f"load_layers: {ld.num_layers} layers")
            check(all(ld.wait_layer(i) for i in range(ld.num_layers)) and
                  ld.layers_done == ld.num_layers, "load_layers: every layer arrives")
            check(all(kv[b][10 * ITEM:11 * ITEM] == pattern(b, 3, ITEM) and
                      kv[b][11 * ITEM:12 * ITEM] == pattern(b, 5, ITEM) for b in range(NBUF)),
                  "load_layers bytes")
            try:
                ld.wait_layer(ld.num_layers)
                check(False, "a layer out of range is refused")
            except kvx.KvxError as e:
                check(e.code == -101 and "out of range" in str(e), f"wait_layer out of range: {e}")
            check(ld.end() == 2 and ld.result == 0, "load_layers: end says 2 keys loaded")
        ld = st.load_layers(keys, [12, 13, 14])  # keys[2] was never stored
        try:
            ld.wait_layer(0)
            check(False, "a load with a missing key fails")
        except kvx.KvxError as e:
            check(e.code == -304 and "is not stored" in str(e), f"load_layers missing key: {e}")
        check(ld.end() <= 2 and ld.result == -304, "load_layers: end reports the miss")
        st.load_layers(keys[:1], [15])  # left running: close() ends it
        check(st.remove(keys[0]) and st.exists(keys) == 0, "remove")
        try:
            st.put(keys[:1], [NPAGES])
            check(False, "a page outside the pool is refused by put")
        except kvx.KvxError as e:
            check(e.code == -101, f"store put out of range: {e}")
    with kvx.Store(layout, dir=os.path.join(tmp, "store"), model="m") as st:
        check(st.exists(keys[1:2]) == 1, "blocks survive reopening")


def with_numpy(kvx, tmp):
    try:
        import numpy as np
    except ImportError:
        print("  skip  numpy arrays as buffers: numpy is not importable")
        return
    src = [np.zeros((NPAGES, ITEM), np.uint8) for _ in range(NBUF)]
    dst = [np.full((NPAGES, ITEM), 0xEE, np.uint8) for _ in range(NBUF)]
    aux_s, aux_d = np.arange(NSLOTS * 8, dtype=np.int64).reshape(NSLOTS, 8), \
        np.zeros((NSLOTS, 8), np.int64)
    for b in range(NBUF):
        src[b][2] = np.frombuffer(pattern(b, 0, ITEM), np.uint8)
    ls = kvx.Layout.from_arrays(src, aux=[aux_s], page_size=16)
    ld = kvx.Layout.from_arrays(dst, aux=[aux_d], page_size=16)
    d = os.path.join(tmp, "np")
    with kvx.Engine("prefill", ls, dir=d) as pe, kvx.Engine("decode", ld, dir=d) as de:
        r, s = de.receiver(1), pe.sender(1)
        s.wait(kvx.Poll.WaitingForInput, 30000)
        r.init(np.array([6], np.int32), 3)
        s.init(1, 1)
        s.send(np.array([2], np.int32))
        both_done(kvx, s, r)
        check(r.poll() == 4, f"numpy transfer ({r.error})")
        check(all(bytes(dst[b][6]) == pattern(b, 0, ITEM) for b in range(NBUF)),
              "numpy KV bytes")
        check((aux_d[3] == aux_s[1]).all(), "numpy aux row")
        s.close()
        r.close()


def layerwise(kvx, tmp):
    """Sender.send_layers over the file transport: 3 layers (6 buffers), chunk 0
    every layer, chunk 1 layer by layer; a layer sent twice fails both sides."""
    import ctypes
    nb = 6

    def pool(fill):
        kv = [bytearray([fill]) * (NPAGES * ITEM) for _ in range(nb)]
        aux = (ctypes.c_uint8 * (NSLOTS * AUX_ITEM))(*([fill] * (NSLOTS * AUX_ITEM)))
        return kv, aux, kvx.Layout(
            kv=[(kvx.address_of(b), len(b), ITEM) for b in kv],
            aux=[(ctypes.addressof(aux), ctypes.sizeof(aux), AUX_ITEM)],
            page_size=16, num_kv_heads=1, dtype="bfloat16", dtype_size=2, keep=[kv, aux])
    kv_s, aux_s, ls = pool(0)
    kv_d, aux_d, ld = pool(0xEE)
    src, dst = [3, 7, 8, 0], [1, 2, 12, 5]
    for b in range(nb):
        for k, p in enumerate(src):
            kv_s[b][p * ITEM:(p + 1) * ITEM] = pattern(b + 40, k, ITEM)
    aux_s[0:AUX_ITEM] = pattern(50, 0, AUX_ITEM)
    d = os.path.join(tmp, "layers")
    with kvx.Engine("prefill", ls, transport="file", dir=d) as pe, \
            kvx.Engine("decode", ld, transport="file", dir=d) as de:
        r, s = de.receiver(7), pe.sender(7)
        s.wait(kvx.Poll.WaitingForInput, 30000)
        r.init(dst, 1)
        s.init(4, 0)
        s.send(src[:2])
        s.send_layers(src[2:], 0, 1)
        check(s.poll() == kvx.Poll.Transferring, "layer-wise: not done before the last layer")
        s.send_layers(src[2:], 1, 3)
        both_done(kvx, s, r)
        check(r.poll() == 4 and s.poll() == 4, f"layer-wise transfer ({s.error} / {r.error})")
        wrong = sum(kv_d[b][p * ITEM:(p + 1) * ITEM] != pattern(b + 40, k, ITEM)
                    for b in range(nb) for k, p in enumerate(dst))
        check(wrong == 0, f"layer-wise: {wrong} KV pages wrong")
        check(bytes(aux_d[AUX_ITEM:2 * AUX_ITEM]) == pattern(50, 0, AUX_ITEM), "layer-wise: aux row")
        s.close()
        r.close()
        r, s = de.receiver(8), pe.sender(8)
        s.wait(kvx.Poll.WaitingForInput, 30000)
        r.init(dst[:1], -1)
        s.init(1, -1)
        s.send_layers(src[:1], 0, 2)
        try:
            s.send_layers(src[:1], 1, 3)
            check(False, "a layer sent twice is refused")
        except kvx.KvxError as e:
            check("layer 1 was already sent" in str(e), f"layer sent twice: {e}")
        r.wait(kvx.Poll.Success, 60000)
        check(r.poll() == 0 and s.poll() == 0, f"both sides failed ({r.poll()}, {r.error})")
        s.close()
        r.close()


def inside(repo):
    import kvx
    check(not os.path.abspath(kvx.__file__).startswith(os.path.join(repo, "python")),
          f"kvx imported from the installed package, not python/ ({kvx.__file__})")
    check([int(p) for p in kvx.Poll] == [0, 1, 2, 3, 4] and kvx.Poll.WaitingForInput == 2,
          "Poll equals SGLang's KVPoll")
    arr, n = kvx._i32([5, -1, 2**31 - 1, 7.0])
    check(n == 4 and list(arr) == [5, -1, 2**31 - 1, 7], "_i32 converts ints and floats")
    arr, n = kvx._i32([])
    check(n == 0, "_i32 of nothing")
    try:
        kvx._i32([1, 2**31])
        check(False, "an index beyond 32 bits is refused")
    except kvx.KvxError as e:
        check("index 2147483648 does not fit a 32-bit int" in str(e), f"32-bit refusal: {e}")
    with tempfile.TemporaryDirectory() as tmp:
        struct_layout(kvx, repo, tmp)
        bad_layout(kvx)
        transfer(kvx, tmp)
        gpu_pages(kvx, repo)
        store(kvx, tmp)
        with_numpy(kvx, tmp)
        layerwise(kvx, tmp)
    done()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--inside":
        inside(sys.argv[2])
    else:
        outside()
