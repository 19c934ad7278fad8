"""kvx - move paged LLM KV cache between prefill and decode engines.

Python binding of the kvx C library (ctypes; the library is compiled from
the kvx headers when the package is installed). The API follows the C one:

    import kvx
    layout = kvx.Layout(kv=[(ptr, nbytes, page_bytes), ...],
                        aux=[(ptr, nbytes, row_bytes)], page_size=16)
    with kvx.Engine("prefill", layout, transport="file", dir="/tmp/kvx") as e:
        s = e.sender(room=42)
        s.wait(kvx.Poll.WaitingForInput, 10000)
        s.init(num_pages=4, aux_index=1)
        s.send([1, 4, 5, 11])
        s.wait(kvx.Poll.Success, 60000)

Every refused call raises KvxError with the C result code and the sentence.
poll() returns ints equal to SGLang's KVPoll. Memory given to a Layout is
not copied: the Layout keeps a reference to the Python objects it was built
from, and each Engine and Store keeps its Layout.
"""
import array
import ctypes
import enum
import weakref
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from . import _ffi
from ._ffi import lib

__all__ = ["KvxError", "Poll", "Role", "StateType", "Layout", "Engine", "Sender", "Receiver",
           "Store", "StoreLoad", "result_str", "page_keys", "__version__"]
try:
    from importlib.metadata import version as _version
    __version__ = _version("kvx")
except Exception:  # not installed (run from the source tree)
    __version__ = "0.0.0"


def result_str(code: int) -> str:
    """The C name of a kvx_result ("KVX_ERR_OUT_OF_RANGE")."""
    return lib.kvx_result_str(int(code)).decode()


class KvxError(Exception):
    """A kvx call failed. `code` is the kvx_result (negative int), `sentence`
    the reason kvx gave (the room's failure or the refused call's)."""

    def __init__(self, code: int, sentence: str):
        self.code = int(code)
        self.sentence = sentence
        super().__init__(f"{result_str(code)} ({code}): {sentence}")


class Poll(enum.IntEnum):
    """Room states; the same numbers as SGLang's KVPoll."""
    Failed = 0
    Bootstrapping = 1
    WaitingForInput = 2
    Transferring = 3
    Success = 4


class Role(enum.IntEnum):
    """Which side an engine is."""
    PREFILL = 1
    DECODE = 2


class StateType(enum.IntEnum):
    """What the state buffers of a hybrid model hold (kvx_layout.state_type)."""
    NONE = 0
    MAMBA = 1
    SWA = 2
    OTHER = 3


def _text(b: Optional[bytes]) -> str:
    return b.decode(errors="replace") if b else ""


def _cstr(v: Optional[Union[str, bytes]]) -> Optional[bytes]:
    if v is None:
        return None
    return v.encode() if isinstance(v, str) else bytes(v)


def _i32(values: Optional[Iterable[int]]) -> Tuple[Any, int]:
    """An int32 C array of values (numpy arrays and lists alike), and its length."""
    if values is None:
        return None, 0
    # array.array converts a list (or a numpy array) in C and checks the range;
    # the ctypes array shares its buffer (and keeps it alive)
    try:
        try:
            arr = array.array("i", values)
        except TypeError:  # floats, numpy scalars of other kinds: int() each
            arr = array.array("i", [int(v) for v in values])
    except OverflowError:
        bad = next(int(v) for v in values if not -2**31 <= int(v) < 2**31)
        raise KvxError(-101, f"index {bad} does not fit a 32-bit int") from None
    n = len(arr)
    if not n:
        arr.append(0)
    return (ctypes.c_int32 * len(arr)).from_buffer(arr), n


def _pointer_of(obj: Any) -> Tuple[int, int, int, int, int]:
    """(address, bytes, item bytes, mem kind, device) of an array-like object:
    torch tensors (data_ptr), numpy arrays and anything with
    __array_interface__, and writable buffers (bytearray, ctypes arrays,
    mmap). The first dimension is the page (or row) index."""
    if hasattr(obj, "data_ptr") and callable(obj.data_ptr):
        if hasattr(obj, "is_contiguous") and not obj.is_contiguous():
            raise ValueError("kvx: a tensor used as a buffer must be contiguous")
        nbytes = obj.numel() * obj.element_size()
        rows = obj.shape[0] if len(obj.shape) else 1
        dev = getattr(obj, "device", None)
        cuda = dev is not None and getattr(dev, "type", "cpu") == "cuda"
        return (obj.data_ptr(), nbytes, nbytes // max(rows, 1), 1 if cuda else 0,
                (dev.index or 0) if cuda else 0)
    ai = getattr(obj, "__array_interface__", None)
    if ai is not None:
        addr = ai["data"][0]
        shape = tuple(ai["shape"])
        itemsize = int(ai["typestr"][2:])
        n = 1
        for d in shape:
            n *= d
        strides = ai.get("strides")
        if strides is not None:
            want, expect = [], itemsize
            for d in reversed(shape):
                want.insert(0, expect)
                expect *= d
            if tuple(strides) != tuple(want):
                raise ValueError("kvx: an array used as a buffer must be C-contiguous")
        nbytes = n * itemsize
        rows = shape[0] if shape else 1
        return addr, nbytes, nbytes // max(rows, 1), 0, 0
    mv = memoryview(obj)
    if mv.readonly or not mv.c_contiguous:
        raise ValueError("kvx: a buffer must be writable and contiguous")
    rows = mv.shape[0] if mv.shape else 1
    arr = (ctypes.c_char * mv.nbytes).from_buffer(obj)
    return ctypes.addressof(arr), mv.nbytes, mv.nbytes // max(rows, 1), 0, 0


def address_of(buf: Any) -> int:
    """Address of a writable buffer (bytearray, ctypes array, mmap, numpy array...)."""
    return _pointer_of(buf)[0]


class Layout:
    """A KV pool as kvx sees it (kvx_layout).

    kv: one (pointer, length, item_len) per KV buffer (MHA: K of layer
    0..N-1 then V of layer 0..N-1; MLA: one per layer); page p of a buffer
    is item_len bytes at pointer + p * item_len. aux: one (pointer, length,
    item_len) per aux buffer, a row per request slot. state: buffers of a
    hybrid model, rows indexed by state indices, with state_type. A KV or
    state entry may carry two more items, mem (0 host, 1 CUDA) and device.
    `keep` holds Python objects that own the memory, so it outlives every
    engine built on this layout. Raises KvxError when kvx refuses it."""

    def __init__(self, kv: Sequence[Sequence[int]], aux: Sequence[Sequence[int]] = (),
                 page_size: int = 1, num_kv_heads: int = 1, dtype: str = "",
                 dtype_size: int = 2, mla: bool = False, head_begin: int = 0,
                 layer_begin: int = 0, state: Sequence[Sequence[int]] = (),
                 state_type: int = StateType.NONE, keep: Sequence[Any] = ()):
        def bufs(specs):
            arr = (_ffi.kvx_buffer * max(len(specs), 1))()
            for i, spec in enumerate(specs):
                spec = tuple(int(x) for x in spec)
                arr[i].base, arr[i].length, arr[i].item_len = spec[0], spec[1], spec[2]
                arr[i].mem = spec[3] if len(spec) > 3 else 0
                arr[i].device = spec[4] if len(spec) > 4 else 0
            return arr
        self._kv = bufs(list(kv))
        self._state = bufs(list(state))
        aux = list(aux)
        self._aux = (_ffi.kvx_aux_buffer * max(len(aux), 1))()
        for i, spec in enumerate(aux):
            self._aux[i].base, self._aux[i].length, self._aux[i].item_len = (
                int(spec[0]), int(spec[1]), int(spec[2]))
        self._dtype = _cstr(dtype)
        self._keep = list(keep)
        if state and state_type == StateType.NONE:
            state_type = StateType.OTHER
        c = _ffi.kvx_layout()
        c.buffers = self._kv
        c.num_buffers = len(kv)
        c.aux = self._aux
        c.num_aux = len(aux)
        c.page_size, c.num_kv_heads, c.dtype_size = page_size, num_kv_heads, dtype_size
        c.dtype, c.mla = self._dtype, int(bool(mla))
        c.head_begin, c.layer_begin = head_begin, layer_begin
        c.state = self._state
        c.num_state = len(state)
        c.state_type = int(state_type)
        self.c = c
        why = ctypes.create_string_buffer(_ffi.KVX_ERROR_MAX)
        rc = lib.kvx_layout_validate(ctypes.byref(c), why, len(why))
        if rc != 0:
            raise KvxError(rc, _text(why.value))

    @classmethod
    def from_arrays(cls, kv: Sequence[Any], aux: Sequence[Any] = (),
                    state: Sequence[Any] = (), **kw: Any) -> "Layout":
        """A Layout from array-like objects, one per buffer: torch tensors
        (data_ptr(); CUDA tensors become GPU buffers), numpy arrays or
        anything with __array_interface__, or writable buffers. The first
        dimension indexes pages (aux and state: rows); an entry may also be
        (object, item_len) to give the bytes of a page (or row) directly,
        as a flat bytearray needs. The objects are kept alive by the
        Layout. Other keywords as for Layout()."""
        def spec(o: Any) -> Tuple[int, int, int, int, int]:
            if isinstance(o, tuple):
                addr, nbytes, _, mem, dev = _pointer_of(o[0])
                return addr, nbytes, int(o[1]), mem, dev
            return _pointer_of(o)
        specs = [spec(o) for o in kv]
        aux_specs = [spec(o)[:3] for o in aux]
        state_specs = [spec(o) for o in state]
        return cls(specs, aux_specs, state=state_specs,
                   keep=list(kv) + list(aux) + list(state) + list(kw.pop("keep", ())), **kw)

    @property
    def on_gpu(self) -> bool:
        """Whether a KV or state buffer is GPU memory (mem 1)."""
        return any(self._kv[i].mem for i in range(self.c.num_buffers)) or \
            any(self._state[i].mem for i in range(self.c.num_state))

    @property
    def num_pages(self) -> int:
        """Pages of the pool (the smallest buffer's)."""
        return lib.kvx_layout_num_pages(ctypes.byref(self.c))

    @property
    def page_bytes(self) -> int:
        """Bytes of one page over every KV buffer."""
        return lib.kvx_layout_page_bytes(ctypes.byref(self.c))


def _sub(struct: ctypes.Structure, values: Optional[dict], keep: list) -> None:
    """Sets fields of a nested desc struct from a dict (strings encoded, kept)."""
    for k, v in (values or {}).items():
        if k not in {f[0] for f in struct._fields_}:
            raise TypeError(f"kvx: {type(struct).__name__} has no field {k!r}")
        if isinstance(v, str):
            v = v.encode()
            keep.append(v)
        setattr(struct, k, v)


class _Closing:
    """Context-manager and finaliser behaviour shared by the objects that own a
    native handle: ``with`` closes, and so does garbage collection."""

    _what = "object"

    def _handle(self) -> ctypes.c_void_p:
        """The native handle; KvxError(-200) once closed."""
        if not getattr(self, "_h", None):
            raise KvxError(-200, f"the {self._what} is closed")
        return self._h

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Engine(_Closing):
    """One side of the transfer (kvx_engine): role "prefill" or "decode".

    transport: "file", "tcp", "rdma", "cuda", "fake" (KVX_TRANSPORT in the
    environment overrides nothing set here; 0 / None = the C defaults).
    dir: the file transport's directory. bootstrap_addr: prefill: where to
    serve ("host:port"); decode: the default peer. file, boot, tcp, rdma:
    dicts of fields of kvx_file_desc, kvx_boot_desc, kvx_tcp_desc,
    kvx_rdma_desc (e.g. boot={"tp_size": 2, "tp_rank": 1}).
    A layout with GPU buffers (mem 1: CUDA tensors) gets kvx_cuda_mem_ops
    (the CUDA driver loaded at run time; staging through pinned buffers for
    file and tcp, dma-buf for rdma); cuda: fields of kvx_cuda_desc
    (e.g. cuda={"staging_bytes": 1 << 28}). Without a driver, or a build
    without CUDA support, the constructor raises KvxError saying so.
    A context manager; close() destroys the engine (rooms left are failed)."""

    _what = "engine"

    def __init__(self, role: Union[str, int], layout: Layout, transport: str = "file",
                 dir: Optional[str] = None, bootstrap_addr: Optional[str] = None, *,
                 rank: int = 0, auth_key: Optional[Union[str, bytes]] = None,
                 waiting_timeout_s: float = 0.0, bootstrap_timeout_s: float = 0.0,
                 poll_interval_us: int = 0, file: Optional[dict] = None,
                 boot: Optional[dict] = None, tcp: Optional[dict] = None,
                 rdma: Optional[dict] = None, cuda: Optional[dict] = None):
        if isinstance(role, str):
            role = {"prefill": Role.PREFILL, "decode": Role.DECODE}.get(role.lower())
            if role is None:
                raise ValueError("kvx: role is 'prefill' or 'decode'")
        self.role = Role(role)
        self.layout = layout
        self._keep: List[Any] = []
        d = _ffi.kvx_engine_desc()
        d.role = int(self.role)
        d.transport = _cstr(transport)
        d.layout = layout.c
        d.rank = rank
        d.bootstrap_addr = _cstr(bootstrap_addr)
        d.auth_key = _cstr(auth_key)
        d.waiting_timeout_s, d.bootstrap_timeout_s = waiting_timeout_s, bootstrap_timeout_s
        d.poll_interval_us = poll_interval_us
        self._keep += [d.transport, d.bootstrap_addr, d.auth_key]
        file = dict(file or {})
        if dir is not None:
            file["dir"] = dir
        _sub(d.file, file, self._keep)
        _sub(d.boot, boot, self._keep)
        _sub(d.tcp, tcp, self._keep)
        _sub(d.rdma, rdma, self._keep)
        self._desc = d
        self._h = ctypes.c_void_p()
        self._rooms: "set" = set()
        self._mem = False
        why = ctypes.create_string_buffer(1024)
        if cuda is not None or layout.on_gpu:
            cd = _ffi.kvx_cuda_desc()
            _sub(cd, cuda, self._keep)
            self._keep.append(cd)
            rc = lib.kvx_cuda_mem_ops(ctypes.byref(d.mem), ctypes.byref(cd), why, len(why))
            if rc != 0:
                raise KvxError(rc, _text(why.value))
            self._mem = True
        rc = lib.kvx_engine_create(ctypes.byref(d), ctypes.byref(self._h), why, len(why))
        if rc != 0:
            self._release_mem()
            raise KvxError(rc, _text(why.value))

    def _release_mem(self) -> None:
        if self._mem:
            lib.kvx_cuda_mem_ops_release(ctypes.byref(self._desc.mem))
            self._mem = False

    @property
    def transport(self) -> str:
        """The transport in effect (after KVX_TRANSPORT)."""
        return _text(lib.kvx_engine_transport(self._handle()))

    def stats(self) -> dict:
        """Engine-wide counters: rooms_created, rooms_succeeded, rooms_failed, bytes."""
        st = _ffi.kvx_engine_stats()
        lib.kvx_engine_stats_get(self._handle(), ctypes.byref(st))
        return {f: getattr(st, f) for f, _ in st._fields_}

    def sender(self, room: int) -> "Sender":
        """The sender of one room (prefill engines only)."""
        return Sender(self, room)

    def receiver(self, room: int, bootstrap_addr: Optional[str] = None) -> "Receiver":
        """The receiver of one room (decode engines only); bootstrap_addr is
        the prefill's "host:port" (None = the engine's)."""
        return Receiver(self, room, bootstrap_addr)

    def close(self) -> None:
        """Destroys the rooms still open, then the engine. Idempotent."""
        for r in list(getattr(self, "_rooms", ())):
            r.close()
        if getattr(self, "_h", None):
            lib.kvx_engine_destroy(self._h)
            self._h = ctypes.c_void_p()
        if getattr(self, "_mem", False):
            self._release_mem()


class _Room:
    _pfx = ""

    def __init__(self, engine: Engine, room: int, bootstrap_addr: Optional[str] = None):
        self.engine = engine
        self.room = int(room)
        self._addr = _cstr(bootstrap_addr)
        d = _ffi.kvx_room_desc(self.room, self._addr)
        self._h = ctypes.c_void_p()
        rc = self._fn("create")(engine._handle(), ctypes.byref(d), ctypes.byref(self._h))
        if rc != 0:
            raise KvxError(rc, f"{self._pfx}_create refused room {self.room}")
        engine._rooms.add(self)

    def _fn(self, name: str) -> Any:
        return getattr(lib, f"kvx_{self._pfx}_{name}")

    def _handle(self) -> ctypes.c_void_p:
        if not self._h:
            raise KvxError(-200, f"{self._pfx} of room {self.room} is closed")
        return self._h

    def _check(self, rc: int) -> None:
        if rc != 0:
            sentence = _text(self._fn("call_error")(self._h)) or _text(self._fn("error")(self._h))
            raise KvxError(rc, sentence)

    def poll(self) -> int:
        """The room's state, an int equal to SGLang's KVPoll (see Poll)."""
        return int(self._fn("poll")(self._handle()))

    def wait(self, state: int = Poll.Success, timeout_ms: int = -1) -> Poll:
        """Blocks (without the GIL) until the room reaches state or a later
        one, or fails, or timeout_ms pass (< 0: no limit); the state then."""
        return Poll(self._fn("wait")(self._handle(), int(state), int(timeout_ms)))

    @property
    def result(self) -> int:
        """0, or the kvx_result the room failed with."""
        return int(self._fn("result")(self._handle()))

    @property
    def error(self) -> str:
        """Why the room failed; "" unless it did."""
        return _text(self._fn("error")(self._handle()))

    def failure_exception(self) -> Optional[KvxError]:
        """A KvxError describing the room's failure, or None when it has not failed
        (SGLang's failure_exception returns the exception for the caller to raise)."""
        if self.poll() != Poll.Failed:
            return None
        return KvxError(self.result, self.error)

    def abort(self, reason: str = "aborted") -> None:
        """Fails the room with KVX_ERR_ABORTED and tells the peer where it can."""
        self._fn("abort")(self._handle(), _cstr(reason))

    def close(self) -> None:
        """Releases the room (waits for in-flight writes into the pool). Idempotent."""
        if self._h:
            self._fn("destroy")(self._h)
            self._h = ctypes.c_void_p()
        self.engine._rooms.discard(self)

    def __enter__(self) -> "_Room":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Sender(_Room):
    """The prefill side of one room (kvx_sender)."""
    _pfx = "sender"

    def init(self, num_pages: int, aux_index: int = -1) -> None:
        """Declares the request: num_pages pages in all and the aux slot (-1 = none).
        Only in WaitingForInput, once."""
        self._check(lib.kvx_sender_init(self._handle(), int(num_pages), int(aux_index)))

    def send(self, pages: Iterable[int], state_indices: Optional[Iterable[int]] = None) -> None:
        """Sends the next chunk of page indices; the chunk reaching the declared
        total is the last and carries aux and, given state_indices, the state rows."""
        arr, n = _i32(pages)
        sarr, ns = _i32(state_indices)
        if ns:
            self._check(lib.kvx_sender_send_state(self._handle(), arr, n, sarr, ns))
        else:
            self._check(lib.kvx_sender_send(self._handle(), arr, n))

    def send_layers(self, pages: Iterable[int], layer_begin: int, layer_end: int) -> None:
        """Layer-wise send (kvx_sender_send_layers): the chunk's pages for model
        layers [layer_begin, layer_end) only. A chunk opens at this rank's first
        layer and closes at its last; every call of a chunk passes the same pages
        and continues where the previous call ended."""
        arr, n = _i32(pages)
        self._check(lib.kvx_sender_send_layers(self._handle(), arr, n, int(layer_begin),
                                               int(layer_end)))


class Receiver(_Room):
    """The decode side of one room (kvx_receiver)."""
    _pfx = "receiver"

    def init(self, pages: Iterable[int], aux_index: int = -1,
             state_indices: Optional[Iterable[int]] = None) -> None:
        """Gives the destination pages (no repeats), the aux slot (-1 = none) and
        the state rows the request's state goes to. Only in WaitingForInput, once."""
        arr, n = _i32(pages)
        sarr, ns = _i32(state_indices)
        if ns:
            self._check(lib.kvx_receiver_init_state(self._handle(), arr, n, int(aux_index),
                                                    sarr, ns))
        else:
            self._check(lib.kvx_receiver_init(self._handle(), arr, n, int(aux_index)))


Key = Union[bytes, bytearray, str]


def _keys(keys: Sequence[Key]) -> Any:
    arr = (_ffi.kvx_store_key * max(len(keys), 1))()
    for i, k in enumerate(keys):
        b = bytes.fromhex(k) if isinstance(k, str) else bytes(k)
        if len(b) != 32:
            raise ValueError("kvx: a store key is 32 bytes (or 64 hex digits)")
        ctypes.memmove(arr[i].bytes, b, 32)
    return arr


def page_keys(tokens: Sequence[int], page_size: int, prior: Optional[Key] = None) -> List[bytes]:
    """SGLang HiCache page keys: one 32-byte chained SHA-256 per full page of
    tokens (kvx_store_page_keys); prior continues an earlier sequence."""
    n = len(tokens) // page_size if page_size else 0
    toks = (ctypes.c_uint32 * max(len(tokens), 1))(*[int(t) for t in tokens])
    out = (_ffi.kvx_store_key * max(n, 1))()
    pri = _keys([prior]) if prior is not None else None
    got = lib.kvx_store_page_keys(toks, len(tokens), page_size, pri, out, n)
    return [bytes(out[i].bytes) for i in range(got)]


class Store(_Closing):
    """A persistent, content-addressed page store over a KV pool (kvx_store):
    put pages under 32-byte keys, get the longest present prefix back.
    A context manager; close() joins its threads (files stay)."""

    _what = "store"

    def __init__(self, layout: Layout, dir: Optional[str] = None, model: Optional[str] = None,
                 *, tp_rank: int = 0, tp_size: int = 0, capacity_bytes: int = 0,
                 io_threads: int = 0, fsync: bool = False, shared: bool = False,
                 scan_interval: float = 0.0):
        self.layout = layout
        self._dir, self._model = _cstr(dir), _cstr(model)
        d = _ffi.kvx_store_desc()
        d.dir, d.model, d.layout = self._dir, self._model, layout.c
        d.tp_rank, d.tp_size, d.capacity_bytes = tp_rank, tp_size, capacity_bytes
        d.io_threads, d.fsync, d.shared = io_threads, int(fsync), int(shared)
        d.scan_interval = scan_interval
        self._h = ctypes.c_void_p()
        self._loads: "weakref.WeakSet[StoreLoad]" = weakref.WeakSet()
        why = ctypes.create_string_buffer(1024)
        rc = lib.kvx_store_open(ctypes.byref(d), ctypes.byref(self._h), why, len(why))
        if rc != 0:
            raise KvxError(rc, _text(why.value))

    @property
    def dir(self) -> str:
        """The namespace directory (<dir>/<config-hash>)."""
        return _text(lib.kvx_store_dir(self._handle()))

    def put(self, keys: Sequence[Key], pages: Sequence[int]) -> None:
        """Stores pool page pages[i] under keys[i]; raises KvxError on the first failure."""
        if len(keys) != len(pages):
            raise ValueError("kvx: as many keys as pages")
        arr, n = _i32(pages)
        rc = lib.kvx_store_batch_put(self._handle(), _keys(keys), arr, n, None)
        if rc != 0:
            raise KvxError(rc, f"kvx_store_batch_put of {n} pages failed (see the log)")

    def get(self, keys: Sequence[Key], pages: Sequence[int]) -> int:
        """Loads keys[i] into pool page pages[i] for the longest present prefix;
        returns its length (pages past it are not valid)."""
        if len(keys) != len(pages):
            raise ValueError("kvx: as many keys as pages")
        arr, n = _i32(pages)
        loaded = ctypes.c_size_t(0)
        rc = lib.kvx_store_batch_get(self._handle(), _keys(keys), arr, n, ctypes.byref(loaded))
        if rc != 0:
            raise KvxError(rc, f"kvx_store_batch_get of {n} pages failed after "
                               f"{loaded.value} (see the log)")
        return loaded.value

    def load_layers(self, keys: Sequence[Key], pages: Sequence[int]) -> "StoreLoad":
        """Starts loading keys[i] into pool page pages[i] layer by layer
        (kvx_store_load_begin): StoreLoad.wait_layer(l) returns once layer l
        of every page is in the pool and verified, so layer 0 can run while
        later layers are read. Every key must be stored (see exists). Use it
        as a context manager or call end(); close() ends it too."""
        if len(keys) != len(pages):
            raise ValueError("kvx: as many keys as pages")
        ld = StoreLoad(self, keys, pages)
        self._loads.add(ld)
        return ld

    def exists(self, keys: Sequence[Key]) -> int:
        """How many keys from the first are present (consecutive hits)."""
        return lib.kvx_store_batch_exists(self._handle(), _keys(keys), len(keys))

    def remove(self, key: Key) -> bool:
        """Removes one block; False when it was not there."""
        rc = lib.kvx_store_remove(self._handle(), _keys([key]))
        if rc == -304:
            return False
        if rc != 0:
            raise KvxError(rc, "kvx_store_remove failed")
        return True

    def stats(self) -> dict:
        """The store's counters (hits, misses, puts, blocks, bytes_used...)."""
        st = _ffi.kvx_store_stats()
        lib.kvx_store_stats_get(self._handle(), ctypes.byref(st))
        return {f: getattr(st, f) for f, _ in st._fields_}

    def close(self) -> None:
        """Ends its layer-wise loads, joins the store's threads and frees it.
        Idempotent."""
        if self._h:
            for ld in list(self._loads):
                ld.end()
            lib.kvx_store_close(self._h)
            self._h = ctypes.c_void_p()


class StoreLoad(_Closing):
    """A layer-wise load from Store.load_layers (kvx_store_load_*)."""

    _what = "store load"

    def __init__(self, store: "Store", keys: Sequence[Key], pages: Sequence[int]):
        self._store = store  # the store outlives its loads
        self.result: Optional[int] = None
        self.loaded: Optional[int] = None
        arr, n = _i32(pages)
        self._h = ctypes.c_void_p()
        rc = lib.kvx_store_load_begin(store._handle(), _keys(keys), arr, n, ctypes.byref(self._h))
        if rc != 0:
            raise KvxError(rc, f"kvx_store_load_begin of {n} pages refused (see the log)")

    @property
    def num_layers(self) -> int:
        """Layers of the store's layout: wait_layer takes 0 .. num_layers - 1."""
        return int(lib.kvx_store_load_num_layers(self._handle()))

    @property
    def layers_done(self) -> int:
        """How many layers from 0 on are available now (never blocks)."""
        return int(lib.kvx_store_load_layers_done(self._handle()))

    @property
    def error(self) -> str:
        """Why the load failed ("" while it has not)."""
        return _text(lib.kvx_store_load_error(self._handle()))

    def wait_layer(self, layer: int, timeout_ms: int = -1) -> bool:
        """Waits until layer `layer` of every page is loaded and verified: True;
        False when timeout_ms passed first (-1: no limit). Raises KvxError when
        the load failed (a key missing or corrupt: no later layer will come)
        or the layer is out of range."""
        rc = lib.kvx_store_load_wait_layer(self._handle(), int(layer), int(timeout_ms))
        if rc == 0:
            return True
        if rc == -201:
            return False
        if rc == -101:
            raise KvxError(rc, _text(lib.kvx_store_load_call_error(self._handle())))
        raise KvxError(rc, self.error or f"kvx_store_load_wait_layer({layer}) failed")

    def end(self) -> int:
        """Cancels what is left, waits for the reads in flight (nothing is
        written into the pool afterwards) and frees the load. Returns how many
        keys from the first loaded completely; self.result is the C result
        (0, the failure's code, or -202 when ended early). Idempotent."""
        if self._h:
            loaded = ctypes.c_size_t(0)
            self.result = int(lib.kvx_store_load_end(self._h, ctypes.byref(loaded)))
            self.loaded = loaded.value
            self._h = ctypes.c_void_p()
        return self.loaded or 0

    def close(self) -> None:
        self.end()
