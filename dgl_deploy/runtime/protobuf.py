"""A reader of the protobuf wire format for the few fields of an ONNX file that are read without the onnx package.

Why: `manifest.check_graph_signature` refuses a graph whose declared input/output sizes are not the manifest's
before onnxruntime loads it (no session, no weights read, no onnx package at query time). The file is untrusted,
so the reader is bounded: it walks messages as (start, end) spans of one buffer (an mmap of the file: nothing is
copied but the strings asked for), never recurses, and every malformed byte sequence is one `ProtobufError` (a
DGLError) naming the offset: a varint longer than 10 bytes or past the end of its message, a length or a fixed-size
value past the end of its message, field number 0, a group or unknown wire type, a string over `MAX_TEXT` bytes or
not UTF-8. Time is linear in the bytes of the messages walked; memory is constant but for the strings read.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass

from dgl_deploy.errors import DGLError

Data = bytes | bytearray | memoryview | mmap.mmap  # what a message can be read from (indexing gives ints)
MAX_VARINT_BYTES = 10  # a 64-bit value takes at most 10 bytes of 7 bits
MAX_TEXT = 4096  # bytes: a tensor or dimension name is short; a longer string field is refused, not copied
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5  # the wire types read; 3 and 4 (groups) are refused


class ProtobufError(DGLError):
    """Bytes that are not a well-formed protobuf message (or a field the reader was asked for is absent)."""


@dataclass(frozen=True)
class Message:
    """A length-delimited value (an embedded message or a string) as a span of `data`, not a copy."""

    data: Data  # the whole buffer (e.g. the mmap of an ONNX file)
    start: int  # offset of the first byte
    end: int  # offset after the last byte

    @classmethod
    def whole(cls, data: Data) -> Message:
        """The top-level message: all of `data`."""
        return cls(data, 0, len(data))

    def fields(self) -> Iterator[tuple[int, int | Message]]:
        """(field number, value) in order: varints as ints, length-delimited values as Messages; fixed-size
        values are skipped."""
        pos = self.start
        while pos < self.end:
            at = pos
            key, pos = self._varint(pos)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ProtobufError(f"malformed protobuf at byte {at}: field number 0")
            if wire == VARINT:
                value, pos = self._varint(pos)
                yield number, value
            elif wire == LENGTH:
                length, pos = self._varint(pos)
                self._within(at, pos + length, "a length-delimited field")
                yield number, Message(self.data, pos, pos + length)
                pos += length
            elif wire in (FIXED64, FIXED32):
                pos += 8 if wire == FIXED64 else 4
                self._within(at, pos, "a fixed-size field")
            else:
                raise ProtobufError(f"malformed protobuf at byte {at}: unsupported wire type {wire}")

    def message(self, number: int) -> Message:
        """The first length-delimited field `number`; ProtobufError when there is none."""
        found = next(self.messages(number), None)
        if found is None:
            raise ProtobufError(f"protobuf field {number} not found in the message at byte {self.start}")
        return found

    def messages(self, number: int) -> Iterator[Message]:
        """Every length-delimited field `number` (a repeated field), in order."""
        return (value for n, value in self.fields() if n == number and isinstance(value, Message))

    def varint(self, number: int, default: int = 0) -> int:
        """The first varint field `number` (unsigned), or `default` when there is none."""
        return next((value for n, value in self.fields() if n == number and isinstance(value, int)), default)

    def text(self) -> str:
        """These bytes as a UTF-8 string of at most MAX_TEXT bytes."""
        if self.end - self.start > MAX_TEXT:
            raise ProtobufError(f"protobuf string at byte {self.start} is {self.end - self.start} bytes long "
                                f"(at most {MAX_TEXT} are read)")
        try:
            return bytes(self.data[self.start:self.end]).decode()
        except UnicodeDecodeError:
            raise ProtobufError(f"protobuf string at byte {self.start} is not UTF-8") from None

    def _varint(self, pos: int) -> tuple[int, int]:
        """(value, offset after it) of the varint at `pos`, which must end inside this message."""
        value = 0
        for i in range(MAX_VARINT_BYTES):
            self._within(pos, pos + i + 1, "a varint")
            byte = self.data[pos + i]
            value |= (byte & 0x7F) << 7 * i
            if byte < 0x80:
                if value >> 64:
                    break
                return value, pos + i + 1
        raise ProtobufError(f"malformed protobuf at byte {pos}: a varint of more than 64 bits")

    def _within(self, at: int, end: int, what: str) -> None:
        if end > self.end:
            raise ProtobufError(f"malformed protobuf at byte {at}: {what} runs past the end of its message "
                                f"(byte {self.end})")


def int64(value: int) -> int:
    """A varint read as protobuf's int64 (two's complement: negative numbers take 10 bytes)."""
    return value - (1 << 64) if value >> 63 else value


__all__ = ["Message", "ProtobufError", "int64", "MAX_TEXT"]
