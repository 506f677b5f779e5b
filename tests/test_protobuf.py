"""The protobuf reader behind `graph_signature` (runtime.protobuf) on well-formed and hostile bytes: truncated
varints, lengths past the end of a message, groups, field 0, strings too long or not UTF-8, 100,000-deep nesting,
a 1 GiB sparse file: each is one ProtobufError (a DGLError) naming the offset, in bounded time and memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from dgl_deploy import DGLError
from dgl_deploy.runtime.manifest import MAX_RANK, graph_signature
from dgl_deploy.runtime.protobuf import MAX_TEXT, Message, ProtobufError, int64


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _value_info(name: str, elem: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_len(1, _int(1, d) if isinstance(d, int) else _len(2, d.encode())) for d in dims)
    return _len(1, name.encode()) + _len(2, _len(1, _int(1, elem) + _len(2, shape)))


def _model(inputs: bytes, outputs: bytes, before: bytes = b"") -> bytes:
    """A ModelProto: ir_version, then graph (7) with `before` (nodes, initializers...), input (11), output (12)."""
    return _int(1, 8) + _len(7, before + _len(11, inputs) + _len(12, outputs))


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "graph.onnx"
    path.write_bytes(data)
    return path


def test_fields_of_a_well_formed_message() -> None:
    data = _int(1, 300) + _key(2, 1) + bytes(8) + _len(3, b"abc") + _key(4, 5) + bytes(4) + _len(5, _int(1, 7))
    fields = list(Message.whole(data).fields())
    assert [n for n, _ in fields] == [1, 3, 5]  # fixed-size fields are skipped
    assert fields[0][1] == 300 and Message.whole(data).message(3).text() == "abc"
    assert Message.whole(data).message(5).varint(1) == 7 and Message.whole(data).varint(9, default=-1) == -1
    assert int64(2**64 - 1) == -1 and int64(5) == 5


def test_graph_signature_of_a_hand_written_model(tmp_path: Path) -> None:
    data = _model(_value_info("frames", 2, ["B", 4, 32, 32, 3]), _value_info("emb", 1, ["B", 64]),
                  before=_len(1, b"a node") + _len(5, bytes(1000)))
    frames, emb = graph_signature(_write(tmp_path, data))
    assert (frames.name, frames.dtype, frames.shape) == ("frames", "uint8", ("B", 4, 32, 32, 3))
    assert (emb.name, emb.dtype, emb.shape) == ("emb", "float32", ("B", 64))


def test_graph_signature_agrees_with_onnx(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["ids"], ["out"])], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, ["B", -1])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    ids, out = graph_signature(path)
    assert (ids.name, ids.dtype, ids.shape) == ("ids", "int64", ("B", "W"))
    assert out.shape == ("B", -1)  # a negative int64 stays negative


HOSTILE = [
    (b"\x08\x80", "byte 1: a varint runs past the end"),  # truncated varint
    (b"\x08" + b"\xff" * 11, "byte 1: a varint of more than 64 bits"),  # over-long varint
    (b"\x08" + b"\xff" * 9 + b"\x7f", "byte 1: a varint of more than 64 bits"),  # 10 bytes, but over 64 bits
    (b"\x0a\x05ab", "byte 0: a length-delimited field runs past the end of its message"),
    (b"\x0a" + _varint(2**63), "byte 0: a length-delimited field runs past the end"),  # a length of 8 EiB
    (b"\x09\x01\x02", "byte 0: a fixed-size field runs past the end"),
    (b"\x00\x01", "byte 0: field number 0"),
    (_key(1, 3) + _key(1, 4), "byte 0: unsupported wire type 3"),  # groups
    (_key(1, 6), "unsupported wire type 6"),
]


@pytest.mark.parametrize(("data", "message"), HOSTILE)
def test_malformed_bytes_are_one_error(data: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        list(Message.whole(data).fields())


def test_a_field_cannot_run_past_its_own_message() -> None:
    """A varint and a length that fit in the buffer but not in the embedded message they are in."""
    inner = Message.whole(_len(1, b"\x08") + b"\x01")
    with pytest.raises(ProtobufError, match="a varint runs past the end of its message"):
        list(inner.message(1).fields())
    inner = Message.whole(_len(1, b"\x0a\x03a") + b"bc")
    with pytest.raises(ProtobufError, match="a length-delimited field runs past the end of its message"):
        list(inner.message(1).fields())


def test_strings_are_bounded_and_utf8() -> None:
    with pytest.raises(ProtobufError, match="not UTF-8"):
        Message.whole(_len(1, b"\xff\xfe")).message(1).text()
    data = _len(1, bytes(16 << 20))  # a 16 MiB "name": refused, not copied
    tracemalloc.start()
    with pytest.raises(ProtobufError, match=f"is {16 << 20} bytes long \\(at most {MAX_TEXT} are read\\)"):
        Message.whole(data).message(1).text()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_missing_field_is_named() -> None:
    with pytest.raises(ProtobufError, match="protobuf field 7 not found"):
        Message.whole(_int(1, 8)).message(7)


def test_hostile_graphs_are_one_line_dgl_errors(tmp_path: Path) -> None:
    cases = {
        "no graph": _int(1, 8),
        "a name that is not text": _model(_value_info("x", 1, []).replace(b"x", b"\xff", 1), _value_info("y", 1, [])),
        "too many dims": _model(_value_info("x", 1, [1] * (MAX_RANK + 1)), _value_info("y", 1, [])),
        "a truncated file": _model(_value_info("x", 1, ["B"]), _value_info("y", 1, ["B"]))[:-3],
    }
    for cause, data in cases.items():
        with pytest.raises(DGLError) as caught:
            graph_signature(_write(tmp_path, data))
        assert isinstance(caught.value, ProtobufError) and "\n" not in str(caught.value), cause


def test_deep_nesting_does_not_recurse(tmp_path: Path) -> None:
    """100,000 graphs nested in each other: the reader walks a fixed path and stops at the first level."""
    depth, lengths = 100_000, [0]
    for _ in range(depth):
        lengths.append(lengths[-1] + len(_key(7, 2) + _varint(lengths[-1])))
    data = b"".join(_key(7, 2) + _varint(length) for length in reversed(lengths[:-1]))
    with pytest.raises(ProtobufError, match="protobuf field 11 not found"):
        graph_signature(_write(tmp_path, data))


def test_a_huge_sparse_file_is_not_read(tmp_path: Path) -> None:
    """A 1 GiB (sparse) file whose input name takes nearly all of it: refused by its length, never read."""
    name, tail = 1 << 30, _len(2, _len(1, _int(1, 1) + _len(2, b"")))
    info_head = _key(1, 2) + _varint(name)
    graph_head = _key(11, 2) + _varint(len(info_head) + name + len(tail))
    head = _key(7, 2) + _varint(len(graph_head) + len(info_head) + name + len(tail)) + graph_head + info_head
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as handle:
        handle.write(head)
        handle.seek(name, 1)  # a hole: no disk, and the reader must not touch it
        handle.write(tail)
    with pytest.raises(ProtobufError, match=f"is {name} bytes long \\(at most {MAX_TEXT} are read\\)"):
        graph_signature(path)
