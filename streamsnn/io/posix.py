"""Whole-file reads inside compiled code: the C library's open, lseek, pread and close, called from Numba.

Why. A replay of a sample folder reads thousands of small files a second
(N-MNIST: ~4 kB each), in the same process as the frame and inference
threads. Read from Python, a file costs four system calls (stat, open, read,
close) and a decoding call, each giving the GIL up and taking it back; here
reading and decoding are one ``nogil`` call. Measured: an N-MNIST sample
38.7 -> 26.5 µs through ``AtisBinRecording.read()``; 16 streams replayed at
speed 0 went no faster beyond this machine's noise (their bound is elsewhere).

The functions are declared to LLVM by name (no ctypes pointer is baked into
the code), so the compiled code is cached like every other kernel; the
dynamic linker finds them in the C library the interpreter already uses.
POSIX only (``AVAILABLE``); elsewhere, and on any failure, callers read the
file the ordinary way, which also gives the error message.
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

AVAILABLE = os.name == "posix"

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_POINTER = ir.IntType(8).as_pointer()
# non-blocking: opening a FIFO someone passes as a recording must not wait for a writer (its lseek then
# fails and the caller goes the ordinary way)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_SEEK_END = os.SEEK_END


def _c_call(name: str, result: ir.Type, parameters: list):
    """Code calling the C function ``name`` with int64 arguments (narrowed or made pointers as it takes
    them); its result widened to int64."""
    def codegen(context, builder, signature, arguments):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, parameters), name)
        converted = [builder.inttoptr(value, kind) if isinstance(kind, ir.PointerType)
                     else builder.trunc(value, kind) if kind.width < 64 else value
                     for value, kind in zip(arguments, parameters)]
        value = builder.call(function, converted)
        return builder.sext(value, _I64) if result.width < 64 else value
    return codegen


@intrinsic
def _open(typingctx, path_address, flags):
    return types.int64(types.int64, types.int64), _c_call("open", _I32, [_POINTER, _I32])


@intrinsic
def _close(typingctx, fd):
    return types.int64(types.int64), _c_call("close", _I32, [_I32])


@intrinsic
def _lseek(typingctx, fd, offset, whence):
    return types.int64(types.int64, types.int64, types.int64), _c_call("lseek", _I64, [_I32, _I64, _I32])


@intrinsic
def _pread(typingctx, fd, buffer_address, count, offset):
    return (types.int64(types.int64, types.int64, types.int64, types.int64),
            _c_call("pread", _I64, [_I32, _POINTER, _I64, _I64]))


def path_argument(path) -> np.ndarray | None:
    """The file name as the C library takes it: its bytes and a NUL, as a uint8 array; None for a name
    holding a NUL (the C library would open the name cut there: the ordinary way refuses it)."""
    name = os.fsencode(path)
    if b"\0" in name:
        return None
    return np.frombuffer(name + b"\0", dtype=np.uint8)


@njit(cache=True, nogil=True)
def read_file(path_z, max_bytes):
    """(contents as uint8, file size): the whole file. The size is -1 when it cannot be opened, and the
    contents empty when it holds more than ``max_bytes`` or a read fails or comes short (the caller
    then reads it the ordinary way, which names what was wrong)."""
    fd = _open(np.int64(path_z.ctypes.data), _OPEN_FLAGS)
    if fd < 0:
        return np.empty(0, np.uint8), -1
    size = _lseek(fd, 0, _SEEK_END)
    if size < 0 or size > max_bytes:
        _close(fd)
        return np.empty(0, np.uint8), size
    contents = np.empty(size, np.uint8)
    done = 0
    while done < size:
        got = _pread(fd, np.int64(contents.ctypes.data) + done, size - done, done)
        if got <= 0:
            break
        done += got
    _close(fd)
    if done < size:
        return np.empty(0, np.uint8), size
    return contents, size
