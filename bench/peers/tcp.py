"""bench/peers/tcp.py - PD transfer over loopback: kvx tcp against Mooncake TE (tcp)
and NIXL (UCX), the same scattered spans, one run, repetitions alternating.

Run by bench/peers/run.sh in build/venv-peers (numpy, mooncake-transfer-engine-
non-cuda, nixl), kvx from python/ (PYTHONPATH) with KVX_PY_LIBRARY.

The request: 4096 tokens of Llama-3.1-8B, 64 buffers (K and V of 32 layers),
page size 16, 32 KiB per page per buffer: 256 pages, 512 MiB (--pages scales
it down). Each side has a pool of twice as many pages; source and destination
pages are shuffled free lists, so the transfer is 64 x 256 scattered 32 KiB
spans (the same spans for every system; none is coalesced for it).

  kvx tcp       two kvx.Engine (prefill serves the bootstrap, decode connects),
                one room per transfer; timed on the prefill side from before
                Sender.init to its Success (the decode side's ACK: every byte
                is in its pages).
  Mooncake TE   TransferEngine.initialize(host, "P2PHANDSHAKE", "tcp", ""),
                one registered region per pool, batch_transfer_sync_write of
                the spans, 2048 spans (64 MiB) a call (larger batches fail
                with -1 in 0.3.13.post1); timed around those calls.
  NIXL UCX      nixl_agent with the UCX backend, initialize_xfer("WRITE") of
                the spans with a notification, transfer, poll check_xfer_state
                (50 us sleeps) until DONE; timed from initialize_xfer to DONE.
                Twice: UCX choosing its transports (on one host it picks shared
                memory / CMA) and UCX_TLS=tcp,self (loopback TCP only).

CPU: getrusage (user + sys, every thread) of both processes over the window
(the target from when it is armed to when it saw the data land). Latency:
a 128-token request (8 pages), median of --lat-reps. Each system is checked
once (SHA-1 of the destination pages against the source pages).
Prints "RESULT {json}" and "PEER-SKIP name: why" lines.
"""
import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time


def cpu_now():
    """User + system seconds of this process, every thread (getrusage: microseconds)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

BUFS, ITEM = 64, 16 * 8 * 128 * 2
MOONCAKE_BATCH = 2048
SYSTEMS = ["kvx", "mooncake", "nixl", "nixl-tcp"]
LABEL = {"kvx": "kvx tcp", "mooncake": "Mooncake TE tcp",
         "nixl": "NIXL UCX (auto: shm/cma)", "nixl-tcp": "NIXL UCX_TLS=tcp"}


# ---------------------------------------------------------------- child side
def child(system, role, pages):
    import numpy as np
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    pool_pages = 2 * pages
    pool = np.zeros((BUFS, pool_pages, ITEM), dtype=np.uint8)
    if role == "init":
        rng = np.random.default_rng(5)
        pool.view(np.uint64)[...] = rng.integers(0, 2**63, size=pool.size // 8, dtype=np.uint64
                                                 ).reshape(BUFS, pool_pages, ITEM // 8)
    base = pool.ctypes.data
    r = random.Random(11)
    src = list(range(pool_pages))
    r.shuffle(src)
    dst = list(range(pool_pages))
    r.shuffle(dst)
    mine = src[:pages] if role == "init" else dst[:pages]

    def addr(b, p):
        return base + (b * pool_pages + p) * ITEM

    def digest(k):
        return hashlib.sha1(pool[:, mine[:k], :].tobytes()).hexdigest()

    st = {}
    try:
        if system == "kvx":
            import ctypes
            import kvx
            from kvx._ffi import lib
            lay = kvx.Layout([(addr(b, 0), pool_pages * ITEM, ITEM) for b in range(BUFS)],
                             page_size=16, num_kv_heads=8, dtype="bfloat16", dtype_size=2,
                             keep=[pool])
            if role == "init":
                eng = kvx.Engine("prefill", lay, transport="tcp",
                                 boot={"host": "127.0.0.1", "port": -1})
                fn = lib.kvx_boot_engine_port
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p]
                reply(ok=True, addr=f"127.0.0.1:{fn(eng._handle())}")
            else:
                reply(ok=True, addr="")
        elif system == "mooncake":
            from mooncake.engine import TransferEngine
            eng = TransferEngine()
            rc = eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
            if rc != 0:
                raise RuntimeError(f"TransferEngine.initialize returned {rc}")
            rc = eng.register_memory(base, pool.nbytes)
            if rc != 0:
                raise RuntimeError(f"register_memory returned {rc}")
            reply(ok=True, addr=f"127.0.0.1:{eng.get_rpc_port()}", base=base)
        else:
            from nixl._api import nixl_agent, nixl_agent_config
            eng = nixl_agent(f"{role}-{os.getpid()}", nixl_agent_config(backends=["UCX"]))
            eng.register_memory([(base, pool.nbytes, 0, "")], "DRAM")
            reply(ok=True, addr=eng.get_agent_metadata().hex(), base=base, name=eng.name)
    except Exception as e:
        reply(ok=False, why=f"{type(e).__name__}: {e}")
        return 0

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "connect":
                st["peer"] = cmd
                if system == "kvx" and role == "target":
                    import kvx
                    eng = kvx.Engine("decode", lay, transport="tcp", bootstrap_addr=cmd["addr"])
                elif system.startswith("nixl"):
                    st["peer_name"] = eng.add_remote_agent(bytes.fromhex(cmd["addr"]))
                reply(ok=True)
            elif op == "arm":  # target: ready to receive k pages in room
                k, room = cmd["k"], cmd["room"]
                pool[:, mine[:k], :] = 0
                st["c0"] = cpu_now()
                if system == "kvx":
                    import kvx
                    rcv = eng.receiver(room)
                    rcv.wait(kvx.Poll.WaitingForInput, 30000)
                    rcv.init(mine[:k], -1)
                    st["rcv"] = rcv
                reply(ok=True)
            elif op == "go":  # initiator: move k pages
                k, room = cmd["k"], cmd["room"]
                peer = st["peer"]
                pb = peer.get("base", 0)
                if system == "kvx":
                    import kvx
                    s = eng.sender(room)
                    s.wait(kvx.Poll.WaitingForInput, 30000)
                    c0, t0 = cpu_now(), time.perf_counter()
                    s.init(k, -1)
                    s.send(mine[:k])
                    got = s.wait(kvx.Poll.Success, 60000)
                    t1 = time.perf_counter()
                    if got != kvx.Poll.Success:
                        raise RuntimeError(f"kvx sender ended in {got}: {s.error}")
                    s.close()
                else:
                    dsts = peer["dst"][:k]
                    srcs = [addr(b, p) for b in range(BUFS) for p in mine[:k]]
                    dd = [pb + (b * pool_pages + p) * ITEM for b in range(BUFS) for p in dsts]
                    if system == "mooncake":
                        c0, t0 = cpu_now(), time.perf_counter()
                        # at most MOONCAKE_BATCH spans a call: larger batches
                        # return -1 in this release (8192 spans of 32 KiB do)
                        for j in range(0, len(srcs), MOONCAKE_BATCH):
                            part = srcs[j:j + MOONCAKE_BATCH]
                            rc = eng.batch_transfer_sync_write(peer["addr"], part,
                                                               dd[j:j + MOONCAKE_BATCH],
                                                               [ITEM] * len(part))
                            if rc != 0:
                                break
                        t1 = time.perf_counter()
                        if rc != 0:
                            raise RuntimeError(f"batch_transfer_sync_write returned {rc}")
                    else:
                        ld = [(a, ITEM, 0) for a in srcs]
                        rd = [(a, ITEM, 0) for a in dd]
                        c0, t0 = cpu_now(), time.perf_counter()
                        h = eng.initialize_xfer("WRITE", eng.get_xfer_descs(ld, "DRAM"),
                                                eng.get_xfer_descs(rd, "DRAM"),
                                                st["peer_name"], f"room{room}".encode())
                        state = eng.transfer(h, f"room{room}".encode())
                        while state not in ("DONE", "ERR"):
                            time.sleep(50e-6)
                            state = eng.check_xfer_state(h)
                        t1 = time.perf_counter()
                        eng.release_xfer_handle(h)
                        if state != "DONE":
                            raise RuntimeError("NIXL transfer ended in ERR")
                c1 = cpu_now()
                reply(ok=True, secs=t1 - t0,
                      cpu=c1 - c0)
            elif op == "done":  # target: wait for the data, CPU since arm
                room = cmd["room"]
                if system == "kvx":
                    import kvx
                    rcv = st.pop("rcv")
                    got = rcv.wait(kvx.Poll.Success, 60000)
                    if got != kvx.Poll.Success:
                        raise RuntimeError(f"kvx receiver ended in {got}: {rcv.error}")
                    rcv.close()
                elif system.startswith("nixl"):
                    deadline = time.monotonic() + 60
                    tag = f"room{room}".encode()
                    name = st["peer_name"]
                    name = name.decode() if isinstance(name, bytes) else name
                    while not eng.check_remote_xfer_done(name, tag):
                        if time.monotonic() > deadline:
                            raise RuntimeError("no NIXL notification in 60 s")
                        time.sleep(50e-6)
                c1, c0 = cpu_now(), st["c0"]
                reply(ok=True, cpu=c1 - c0)
            elif op == "digest":
                reply(ok=True, digest=digest(cmd["k"]), pages=mine)
            elif op == "quit":
                reply(ok=True)
                break
        except Exception as e:
            reply(ok=False, why=f"{type(e).__name__}: {e}")
    return 0


# --------------------------------------------------------------- parent side
class Peer:
    def __init__(self, system, role, pages):
        env = dict(os.environ)
        if system == "nixl-tcp":
            env["UCX_TLS"] = "tcp,self"
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                                   system, role, str(pages)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
                                  if not os.environ.get("KVX_PEERS_VERBOSE") else None,
                                  text=True, env=env)
        self.first = self.read()

    def read(self):
        line = self.p.stdout.readline()
        if not line:
            return {"ok": False, "why": f"the process exited (rc {self.p.wait()})"}
        return json.loads(line)

    def ask(self, **kw):
        self.p.stdin.write(json.dumps(kw) + "\n")
        self.p.stdin.flush()
        r = self.read()
        if not r.get("ok"):
            raise RuntimeError(r.get("why"))
        return r

    def close(self):
        try:
            self.ask(op="quit")
        except Exception:
            pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=int(os.environ.get("KVX_PEERS_PAGES", 256)))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("KVX_PEERS_REPS", 3)))
    ap.add_argument("--lat-reps", type=int, default=20)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], int(a.child[2]))
    n = a.pages
    pairs = {}
    for system in a.systems.split(","):
        t = Peer(system, "target", n)
        if not t.first.get("ok"):
            print(f"PEER-SKIP {LABEL[system]}: {t.first.get('why')}")
            t.close()
            continue
        i = Peer(system, "init", n)
        if not i.first.get("ok"):
            print(f"PEER-SKIP {LABEL[system]}: {i.first.get('why')}")
            t.close()
            i.close()
            continue
        try:
            dst = t.ask(op="digest", k=0)["pages"]
            i.ask(op="connect", addr=t.first["addr"], base=t.first.get("base", 0), dst=dst)
            t.ask(op="connect", addr=i.first["addr"])
            pairs[system] = (t, i)
        except Exception as e:
            print(f"PEER-SKIP {LABEL[system]}: connect: {e}")
            t.close()
            i.close()
    res = {}
    room = 1000
    failed = set()

    def once(system, k):
        nonlocal room
        t, i = pairs[system]
        room += 1
        t.ask(op="arm", k=k, room=room)
        g = i.ask(op="go", k=k, room=room)
        d = t.ask(op="done", room=room)
        return g["secs"], g["cpu"] + d["cpu"]

    for system in list(pairs):  # warm-up and the check of the bytes
        try:
            once(system, n)
            t, i = pairs[system]
            if t.ask(op="digest", k=n)["digest"] != i.ask(op="digest", k=n)["digest"]:
                raise RuntimeError("the destination pages differ from the source pages")
        except Exception as e:
            print(f"PEER-SKIP {LABEL[system]}: {e}")
            failed.add(system)
    live = [s for s in pairs if s not in failed]
    for rep in range(a.reps):
        order = live if rep % 2 == 0 else live[::-1]
        for system in order:
            try:
                s, c = once(system, n)
                res.setdefault((system, "transfer"), []).append((s, c))
            except Exception as e:
                print(f"ERROR {LABEL[system]} transfer: {e}")
    for rep in range(a.lat_reps):
        for system in live:
            try:
                s, c = once(system, min(8, n))
                res.setdefault((system, "lat"), []).append((s, c))
            except Exception as e:
                print(f"ERROR {LABEL[system]} 128-token request: {e}")
    for t, i in pairs.values():
        t.close()
        i.close()
    nbytes = n * BUFS * ITEM
    for system in live:
        runs = res.get((system, "transfer"), [])
        if runs:
            gbs = [nbytes / s / 1e9 for s, _ in runs]
            print("RESULT " + json.dumps({
                "group": "pd", "system": LABEL[system], "op": "transfer", "bytes": nbytes,
                "reps": len(runs), "gbs_best": max(gbs), "gbs_median": statistics.median(gbs),
                "gbs_min": min(gbs),
                "cpu_s_per_gb": statistics.median(c / (nbytes / 1e9) for _, c in runs)}))
        lat = res.get((system, "lat"), [])
        if lat:
            print("RESULT " + json.dumps({
                "group": "pd", "system": LABEL[system], "op": "128-token latency",
                "reps": len(lat), "ms_median": 1e3 * statistics.median(s for s, _ in lat),
                "ms_best": 1e3 * min(s for s, _ in lat)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
