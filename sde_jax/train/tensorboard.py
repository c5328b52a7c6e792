"""TensorBoard event files without TensorFlow: scalar summaries written (and read back) by hand.

An event file is a sequence of records (TensorFlow's ``tensorflow/core/lib/io/record_writer.cc``)::

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with masked_crc(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2^32) and CRC-32C the Castagnoli polynomial.
Each record's data is an ``Event`` protobuf (``tensorboard/compat/proto/event.proto``); the fields used are

    Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
                 SessionLog session_log = 6; }
    Summary    { repeated Value value = 1; }        Value { string tag = 1; float simple_value = 2; }
    SessionLog { Status status = 1; }               (START = 1)

The first event of a file is ``file_version: "brain.Event:2"``. A resumed run starts its new file with a
``SessionLog START`` at the restored step, which makes TensorBoard drop the older file's events past that step,
so a step is never shown twice.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Iterator

FILE_VERSION = "brain.Event:2"
SESSION_START = 1
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78); crc32c(b"123456789") == 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# --------------------------------------------------------------------------------- protobuf wire format
def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                 file_version: str | None = None, session_start: bool = False) -> bytes:
    """The serialized ``Event`` protobuf with the given scalars (one ``Summary.Value`` per tag)."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(v)))
            for tag, v in scalars.items())
        out += _bytes_field(5, values)
    if session_start:
        out += _bytes_field(6, _key(1, 0) + _varint(SESSION_START))
    return out


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message; value is int, bytes, or raw 4/8 bytes."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {field}).")
        yield field, wire, value


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def decode_event(data: bytes) -> dict:
    """The fields of an ``Event`` written by :func:`encode_event`: wall_time, step, and file_version, scalars
    ({tag: value}) and session_start where present."""
    event: dict = {"step": 0, "scalars": {}}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for f, _, v in _fields(value):
                if f == 1:
                    parts = {ff: vv for ff, _, vv in _fields(v)}
                    event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
        elif field == 6:
            event["session_start"] = dict((f, v) for f, _, v in _fields(value)).get(1) == SESSION_START
    return event


def read_records(path: str) -> list[bytes]:
    """The records of a TFRecord file; CRC mismatches raise ValueError, a truncated final record (a writer killed
    mid-write) is ignored, as TensorBoard does."""
    records = []
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return records
            length = header[:8]
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(length):
                raise ValueError(f"{path}: corrupt record length at byte {f.tell() - 12}.")
            n = struct.unpack("<Q", length)[0]
            body = f.read(n + 4)
            if len(body) < n + 4:
                return records
            data = body[:n]
            if struct.unpack("<I", body[n:])[0] != masked_crc32c(data):
                raise ValueError(f"{path}: corrupt record data at byte {f.tell() - n - 4}.")
            records.append(data)


def read_events(path: str) -> list[dict]:
    """All events of one event file, decoded (see :func:`decode_event`)."""
    return [decode_event(r) for r in read_records(path)]


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``logdir``."""

    _count = 0

    def __init__(self, logdir: str, start_step: int = 0):
        os.makedirs(logdir, exist_ok=True)
        EventWriter._count += 1
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{EventWriter._count}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "wb")
        self._write(encode_event(time.time(), 0, file_version=FILE_VERSION))
        if start_step > 0:
            self._write(encode_event(time.time(), start_step, session_start=True))
        self.flush()

    def _write(self, event: bytes) -> None:
        self._file.write(encode_record(event))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event at ``step`` holding every scalar in ``values`` (tag -> value)."""
        self._write(encode_event(time.time(), step, scalars=values))
        self.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
