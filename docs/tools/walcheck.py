#!/usr/bin/env python3
"""Independent reader of ledgerd WAL segments, written from docs/wal-format.md alone.

It uses only the Python standard library (struct, zlib, hashlib). For one shard directory it
checks every segment header and every record (length, CRC-32, LSN order, hash chain, commit
index), every commit-group trailer of format version 3, and the durable mark; it tells a torn
tail from damage by a later trailer or a later group's record (the finer zero-sector rules are
left to the server), and prints one line per record, then a summary. Exit status: 0 sound (a
torn tail is reported, not an error), 1 problems found, 2 usage.

    python3 docs/tools/walcheck.py DATA_DIR/shard-000/wal
"""

import hashlib
import os
import struct
import sys
import zlib

SEGMENT_MAGIC = b"LDGRWAL\x00"
SEGMENT_HEADER_BYTES = 128
SECTOR_BYTES = 512
TRAILER_MAGIC = b"LDGC"
TRAILER_BYTES = 64
MARK_MAGIC = b"LDGRMARK"
RECORD_HEADER_BYTES = 64
RECORD_BYTES_MAX = 4096
KINDS = {1: "transaction", 2: "hold_create", 3: "hold_capture", 4: "hold_void", 5: "hold_expire",
         6: "transfer_out", 7: "transfer_in", 8: "transfer_settle", 9: "reversal",
         10: "purchase", 11: "lots_expire", 12: "purchase_settle", 13: "purchase_fail",
         14: "purchase_refund", 15: "purchase_release", 16: "asset_define",
         17: "class_define", 18: "rules_define", 19: "rate_define", 20: "conversion"}


def record_crc(record):
    # CRC-32/IEEE over the length field and everything after the CRC field.
    return zlib.crc32(record[8:], zlib.crc32(record[0:4]))


def trailer_at(data, offset):
    """The commit-group trailer at `offset` as (first_lsn, last_lsn, group_start, last_hash), if
    its magic and CRC-32 are right."""
    trailer = data[offset:offset + TRAILER_BYTES]
    if len(trailer) < TRAILER_BYTES or trailer[:4] != TRAILER_MAGIC:
        return None
    if zlib.crc32(trailer[8:], zlib.crc32(trailer[0:4])) != struct.unpack_from("<I", trailer, 4)[0]:
        return None
    first_lsn, last_lsn, group_start = struct.unpack_from("<QQQ", trailer, 8)
    return first_lsn, last_lsn, group_start, trailer[32:64]


def trailer_offset(records_end):
    # The last 64 bytes of the first sector boundary at or after records_end + 64.
    end = records_end + TRAILER_BYTES
    return (end + SECTOR_BYTES - 1) // SECTOR_BYTES * SECTOR_BYTES - TRAILER_BYTES


def later_trailer(data, offset, lsn):
    """A valid trailer at a sector end after `offset` covering `lsn` or later: the group was
    written whole, so its records were acknowledged."""
    end = (offset // SECTOR_BYTES + 1) * SECTOR_BYTES
    while end <= len(data):
        found = trailer_at(data, end - TRAILER_BYTES)
        if end - TRAILER_BYTES >= offset and found and found[1] >= lsn:
            return end - TRAILER_BYTES
        end += SECTOR_BYTES
    return None


def read_mark(wal_dir):
    """The durable mark's (lsn, hash): the valid slot with the higher write count."""
    try:
        data = open(os.path.join(wal_dir, "durable.mark"), "rb").read()
    except FileNotFoundError:
        return None
    best = None
    for at in (0, 512):
        slot = data[at:at + 128]
        if len(slot) < 128 or slot[:8] != MARK_MAGIC:
            continue
        if zlib.crc32(slot[:124]) != struct.unpack_from("<I", slot, 124)[0]:
            continue
        writes, lsn = struct.unpack_from("<QQ", slot, 24)
        if best is None or writes > best[0]:
            best = (writes, lsn, slot[40:72])
    return best and best[1:]


def later_group(data, offset, lsn):
    """The offset of a valid record of a later commit group after `offset`, if any: its
    presence proves that the group of `lsn` was durable (docs/wal-format.md, "Torn tails")."""
    for candidate in range(offset + 1, len(data) - RECORD_HEADER_BYTES):
        length = struct.unpack_from("<I", data, candidate)[0]
        if length < RECORD_HEADER_BYTES or length > RECORD_BYTES_MAX or candidate + length > len(data):
            continue
        found_lsn, _, _, _, commit_index = struct.unpack_from("<QQHHI", data, candidate + 8)
        if found_lsn < lsn or found_lsn - lsn > 2**32:
            continue
        record = data[candidate:candidate + length]
        if record_crc(record) == struct.unpack_from("<I", record, 4)[0] and found_lsn - commit_index > lsn:
            return candidate
    return None


def check(wal_dir):
    names = sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal") and len(n) == 24)
    problems = []
    expected_lsn = None
    prev_hash = None
    records = 0
    mark = read_mark(wal_dir)
    for index, name in enumerate(names):
        newest = index == len(names) - 1
        data = open(os.path.join(wal_dir, name), "rb").read()
        header = data[:SEGMENT_HEADER_BYTES]
        if newest and header.count(0) == len(header):
            print(f"{name}: never started (a crash during a segment roll)")
            break
        if header[:8] != SEGMENT_MAGIC:
            return [f"{name}: bad magic"], records
        if zlib.crc32(header[:124]) != struct.unpack_from("<I", header, 124)[0]:
            return [f"{name}: header checksum mismatch"], records
        version, shard, shard_count = struct.unpack_from("<HHH", header, 8)
        sequence, first_lsn = struct.unpack_from("<QQ", header, 24)
        segment_prev = header[56:88]
        if version not in (1, 2, 3, 4, 5, 6, 7):
            return [f"{name}: unsupported version {version}"], records
        if sequence != int(name[:20]):
            return [f"{name}: header says sequence {sequence}"], records
        if expected_lsn is None:
            expected_lsn, prev_hash = first_lsn, segment_prev
        elif first_lsn != expected_lsn or segment_prev != prev_hash:
            return [f"{name}: does not continue the previous segment (lsn {expected_lsn})"], records
        groups = version >= 3
        offset = 4096 if groups else SEGMENT_HEADER_BYTES
        group = None  # (start offset, first lsn) of the open commit group (version 3)
        while offset + 4 <= len(data):
            if group is not None:
                found = trailer_at(data, trailer_offset(offset))
                if found == (group[1], expected_lsn - 1, group[0], prev_hash):
                    offset = trailer_offset(offset) + TRAILER_BYTES
                    group = None
                    continue
            length = struct.unpack_from("<I", data, offset)[0]
            if length == 0 and group is None:
                rest = data[offset:]
                if rest.count(0) != len(rest):
                    if newest:
                        print(f"{name}: torn tail at offset {offset} (unacknowledged; zeroed at start-up)")
                    else:
                        problems.append(f"{name}: non-zero bytes after the end, offset {offset}")
                break
            record = data[offset:offset + length]
            bad = (length < RECORD_HEADER_BYTES or length > RECORD_BYTES_MAX or len(record) < length
                   or record_crc(record) != struct.unpack_from("<I", record, 4)[0])
            if bad:
                written_whole = groups and later_trailer(data, offset, expected_lsn) is not None
                later = later_group(data, offset, expected_lsn)
                if newest and later is None and not written_whole:
                    print(f"{name}: torn tail at offset {offset}, lsn {expected_lsn} (unacknowledged)")
                else:
                    problems.append(f"{name}: bad record at offset {offset}, lsn {expected_lsn}")
                break
            lsn, timestamp, kind, flags, commit_index = struct.unpack_from("<QQHHI", record, 8)
            if lsn != expected_lsn:
                problems.append(f"{name}: offset {offset}: lsn {lsn}, expected {expected_lsn}")
                break
            if record[32:64] != prev_hash:
                problems.append(f"{name}: offset {offset}, lsn {lsn}: hash chain broken")
                break
            in_group = lsn - group[1] if group is not None else 0
            if kind not in KINDS or flags != 0 or commit_index >= lsn or (groups and commit_index != in_group):
                problems.append(f"{name}: offset {offset}, lsn {lsn}: bad kind, flags or commit index")
                break
            if groups and group is None:
                group = (offset, lsn)
            print(f"{lsn:>10} {timestamp:>20} {KINDS[kind]:<16} {length:>5} bytes  {name}+{offset}")
            prev_hash = hashlib.sha256(record).digest()
            if mark is not None and mark[0] == lsn and mark[1] != prev_hash:
                problems.append(f"{name}: lsn {lsn}: the durable mark holds another hash")
            expected_lsn = lsn + 1
            records += 1
            offset += length
    if mark is not None and expected_lsn is not None and expected_lsn - 1 < mark[0]:
        problems.append(f"the durable mark says lsn {mark[0]} was durable; the wal ends at lsn {expected_lsn - 1}")
    return problems, records


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    problems, records = check(sys.argv[1])
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{records} records; {'sound' if not problems else 'problems found'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
