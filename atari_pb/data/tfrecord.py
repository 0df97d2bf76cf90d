"""GZIP-compressed TFRecord files of `tf.train.Example`s, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as
    uint64 length | uint32 masked CRC32C of those 8 bytes | data[length] | uint32 masked CRC32C of data
(little-endian; masked = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 mod 2**32), and RL Unplugged compresses
the whole file as one GZIP stream. `RecordStream` is fed compressed bytes in pieces of any size (a socket's,
a file's) and hands out each record once all of it has arrived, both CRCs checked, so a download can stop
right after the record it needs and a reader can stop at a prefix.

The CRC32C is google-crc32c's (Google's C implementation); the Example schema is TensorFlow's
(tensorflow/core/example/{example,feature}.proto), declared below as protobuf descriptors in a pool of our
own, so protobuf's C parser reads it and no generated TensorFlow module (nor TensorFlow) is needed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from atari_pb.errors import DataError

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data
_MASK_DELTA = 0xA282EAD8
# A record larger than this is taken for a corrupt length rather than allocated (an RLU episode of 27,000
# steps, the longest Dopamine allows, is about 100 MB of PNGs).
MAX_RECORD_BYTES = 1 << 30


def masked_crc32c(data: bytes | bytearray) -> int:
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class RecordStream:
    """GZIP TFRecord bytes in, checked records out.

    `feed(data)` yields every record that `data` completes; `records` counts them, and `consumed` is the
    number of compressed bytes fed so far. `source` names the file or URL in errors. A stream that ends
    inside a record is only a prefix: `at_record_boundary` tells whether the decompressed bytes so far end
    exactly after a record.
    """

    def __init__(self, source: str):
        self.source = source
        self.records = 0
        self.consumed = 0
        self._inflate = zlib.decompressobj(wbits=31)
        self._buf = bytearray()
        self._pos = 0  # start of the next record in _buf

    @property
    def at_record_boundary(self) -> bool:
        return self._pos == len(self._buf)

    @property
    def gzip_ended(self) -> bool:
        return self._inflate.eof

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.consumed += len(data)
        while data:
            if self._inflate.eof:  # another gzip member follows
                self._inflate = zlib.decompressobj(wbits=31)
            try:
                self._buf += self._inflate.decompress(data)
            except zlib.error as err:
                raise DataError(f"{self.source}: corrupt GZIP stream ({err})") from None
            data = self._inflate.unused_data if self._inflate.eof else b""
        yield from self._records()

    def _records(self) -> Iterator[bytes]:
        # No memoryview of _buf outlives a statement: a live export would forbid trimming it below.
        buf = self._buf
        while len(buf) - self._pos >= _HEADER:
            length, crc = struct.unpack_from("<QI", buf, self._pos)
            if crc != masked_crc32c(buf[self._pos : self._pos + 8]):
                if self.records == 0 and buf[:6] == b"\x93NUMPY":
                    raise DataError(
                        f"{self.source}: a DQN-Replay .npy array, not an RL Unplugged TFRecord file; "
                        "ingest it with --layout dqn_replay"
                    )
                raise DataError(
                    f"{self.source}: record {self.records}: the length's CRC32C does not match (not a TFRecord?)"
                )
            if length > MAX_RECORD_BYTES:
                raise DataError(f"{self.source}: record {self.records}: implausible length {length}")
            end = self._pos + _HEADER + length + _FOOTER
            if len(buf) < end:
                break
            with memoryview(buf) as view:
                data = bytes(view[self._pos + _HEADER : end - _FOOTER])  # one copy
            (crc,) = struct.unpack_from("<I", buf, end - _FOOTER)
            if crc != masked_crc32c(data):
                raise DataError(f"{self.source}: record {self.records}: the data's CRC32C does not match")
            self._pos = end
            self.records += 1
            yield data
        if self._pos > 1 << 20:  # drop what has been handed out, now and then rather than every record
            del buf[: self._pos]
            self._pos = 0


# --------------------------------------------------------------------- tf.train.Example, from its schema
def _example_class():
    """tensorflow.Example as declared in tensorflow/core/example/{feature,example}.proto (proto3)."""
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="atari_pb/tensorflow_example.proto", package="tensorflow", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str | None, int | None]):
        msg = proto.message_type.add(name=name)
        for field_name, number, label, kind, type_name, oneof in fields:
            f = msg.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, rep, F.TYPE_BYTES, None, None))
    message("FloatList", ("value", 1, rep, F.TYPE_FLOAT, None, None))
    message("Int64List", ("value", 1, rep, F.TYPE_INT64, None, None))
    feature = message(
        "Feature",
        ("bytes_list", 1, opt, F.TYPE_MESSAGE, ".tensorflow.BytesList", 0),
        ("float_list", 2, opt, F.TYPE_MESSAGE, ".tensorflow.FloatList", 0),
        ("int64_list", 3, opt, F.TYPE_MESSAGE, ".tensorflow.Int64List", 0),
    )
    feature.oneof_decl.add(name="kind")
    features = message(
        "Features", ("feature", 1, rep, F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry", None)
    )
    entry = features.nested_type.add(name="FeatureEntry")  # map<string, Feature>
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=opt, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=opt, type=F.TYPE_MESSAGE, type_name=".tensorflow.Feature")
    message("Example", ("features", 1, opt, F.TYPE_MESSAGE, ".tensorflow.Features", None))
    pool = descriptor_pool.DescriptorPool()  # our own: never clashes with another copy of the schema
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


def parse_example(record: bytes, source: str, index: int):
    """A `tf.train.Example` from one record's bytes; a record that is not one is a DataError."""
    try:
        return Example.FromString(record)
    except Exception as err:  # protobuf's DecodeError and friends
        raise DataError(f"{source}: record {index}: not a tf.train.Example ({err})") from None
