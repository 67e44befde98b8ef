#!/usr/bin/env python3
"""A POS client for ledgerd, written from docs/protocol.md alone.

It uses only the Python standard library (socket, struct, hmac, hashlib). It connects,
authenticates as a terminal of a credentials file, sends one request with a purchase and a
redemption (each if asked for) and then a balance query for one customer, and prints one line
per result:

    python3 docs/tools/posclient.py --addr 127.0.0.1:7400 --credentials data/credentials.toml \\
        --customer 42 --purchase 12345

    purchase: ok tx_id=... timestamp=... lsn=... points=123 duplicate=no key=...
    balance: ok posted=123 available=123 held=0

Every write carries an idempotency key; the key of each write is printed, and running the same
command again with --key repeats the same writes (the answers then say duplicate=yes).
Exit status: 0 every operation succeeded, 1 some operation was refused, 2 usage or credentials
error, 3 connection or protocol error (including an Error frame from the server).
"""

import argparse
import hashlib
import hmac
import os
import socket
import struct
import sys

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<IBBHQ")  # length, version, frame_type, reserved, request_id
HEADER_BYTES = 16
FRAME_BYTES_MAX_HANDSHAKE = 4096

HELLO, CHALLENGE, AUTH, WELCOME, REQUEST, RESPONSE, ERROR = 1, 2, 3, 4, 16, 17, 127
FRAME_TYPES = {HELLO: "Hello", CHALLENGE: "Challenge", AUTH: "Auth", WELCOME: "Welcome",
               REQUEST: "Request", RESPONSE: "Response", ERROR: "Error"}

PING, BALANCE, HISTORY = 1, 2, 3
PURCHASE, REDEEM, HOLD, CAPTURE, VOID, REVERSE, TRANSFER = 16, 17, 18, 19, 20, 21, 22
OPCODES = {PING: "ping", BALANCE: "balance", HISTORY: "history", PURCHASE: "purchase",
           REDEEM: "redeem", HOLD: "hold", CAPTURE: "capture", VOID: "void",
           REVERSE: "reverse", TRANSFER: "transfer"}
WRITES = {PURCHASE, REDEEM, HOLD, CAPTURE, VOID, REVERSE, TRANSFER}

AUTH_CONTEXT = b"LDGR-AUTH-1"
RECEIPT_BYTES_MAX = 32

# docs/protocol.md, "Status codes".
STATUSES = {
    0: "ok", 1: "idempotency_key_missing", 2: "postings_empty", 3: "postings_too_many",
    4: "amount_zero", 5: "receipt_too_long", 6: "accounts_same", 7: "class_unknown",
    8: "asset_unknown", 9: "asset_mismatch", 10: "account_kind_invalid",
    11: "accounts_on_different_shards", 12: "hold_timeout_invalid", 13: "idempotency_conflict",
    14: "account_not_found", 15: "insufficient_funds", 16: "credit_limit_exceeded",
    17: "overflow", 18: "hold_not_found", 19: "hold_already_captured",
    20: "hold_already_voided", 21: "hold_expired", 22: "capture_exceeds_hold",
    23: "holds_full", 24: "transfers_full", 25: "definition_conflict", 26: "busy",
    27: "shutting_down", 28: "shard_failed", 29: "transaction_not_found",
    30: "transaction_not_reversible", 31: "already_reversed", 32: "transfer_refunded", 100: "malformed",
    101: "unknown_opcode", 102: "batch_too_large", 103: "too_many_in_flight",
    104: "rate_limited", 105: "not_authenticated", 106: "auth_failed",
    107: "unsupported_version", 108: "frame_too_large", 109: "unexpected_frame",
    110: "internal_error", 111: "request_id_in_use",
}


class ProtocolError(Exception):
    """The server closed the session, refused the request, or broke the protocol."""


def status_name(code):
    return STATUSES.get(code, "status_%d" % code)


# ---------------------------------------------------------------------------------------------
# Credentials file (docs/protocol.md, "Credentials file").


def parse_toml_terminals(text):
    """The [[terminal]] tables of a credentials file: tomllib when there is one (Python 3.11+),
    else a small reader of the subset the file uses (tables, integers, strings, comments)."""
    try:
        import tomllib
    except ImportError:
        tomllib = None
    if tomllib is not None:
        return tomllib.loads(text).get("terminal", [])
    terminals = []
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[[terminal]]":
            current = {}
            terminals.append(current)
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise ValueError("line %d: not understood: %r" % (number, raw))
        value = value.strip()
        if value.startswith('"'):
            end = value.index('"', 1)
            current[key.strip()] = value[1:end]
        else:
            current[key.strip()] = int(value.split("#", 1)[0].strip().replace("_", ""))
    return terminals


def load_terminal(path, terminal_id):
    """(terminal id, secret bytes) of the terminal `terminal_id`, or of the first terminal."""
    with open(path, "r", encoding="utf-8") as handle:
        terminals = parse_toml_terminals(handle.read())
    if not terminals:
        raise ValueError("%s lists no terminal" % path)
    for entry in terminals:
        if terminal_id is None or entry.get("id") == terminal_id:
            secret = bytes.fromhex(entry["secret"])
            if not 16 <= len(secret) <= 64:
                raise ValueError("terminal %s: the secret must be 16..=64 bytes" % entry["id"])
            return int(entry["id"]), secret
    raise ValueError("%s has no terminal %d" % (path, terminal_id))


# ---------------------------------------------------------------------------------------------
# Frames.


def frame(frame_type, request_id, body):
    """A whole frame: the 16-byte header (length counts the bytes after itself), then the body."""
    return HEADER.pack(12 + len(body), PROTOCOL_VERSION, frame_type, 0, request_id) + body


def recv_exactly(sock, count):
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ProtocolError("the server closed the connection")
        data.extend(chunk)
    return bytes(data)


def read_frame(sock, frame_bytes_max):
    """(frame_type, request_id, body) of the next frame, its header checked before the body."""
    length, version, frame_type, reserved, request_id = HEADER.unpack(
        recv_exactly(sock, HEADER_BYTES))
    if length < 12 or length + 4 > frame_bytes_max:
        raise ProtocolError("a frame of %d bytes" % (length + 4))
    if version != PROTOCOL_VERSION or reserved != 0 or frame_type not in FRAME_TYPES:
        raise ProtocolError("a bad frame header (version %d, type %d, reserved %d)"
                            % (version, frame_type, reserved))
    return frame_type, request_id, recv_exactly(sock, length - 12)


def decode_error(body):
    """(status name, message) of an Error frame's body."""
    if len(body) < 4:
        raise ProtocolError("a short error frame")
    status, message_len = struct.unpack_from("<HH", body, 0)
    if len(body) != 4 + message_len:
        raise ProtocolError("an error frame of the wrong length")
    return status_name(status), body[4:].decode("utf-8", "replace")


def expect(sock, wanted, frame_bytes_max):
    frame_type, request_id, body = read_frame(sock, frame_bytes_max)
    if frame_type == ERROR:
        status, message = decode_error(body)
        raise ProtocolError("the server closed the session: %s: %s" % (status, message))
    if frame_type != wanted:
        raise ProtocolError("expected %s, got %s" % (FRAME_TYPES[wanted], FRAME_TYPES[frame_type]))
    return body


# ---------------------------------------------------------------------------------------------
# Handshake (docs/protocol.md, "Handshake").


def handshake(sock, terminal, secret):
    """Hello, Challenge, Auth, Welcome; returns the Welcome's fields."""
    sock.sendall(frame(HELLO, 0, struct.pack("<II", terminal, 0)))
    nonce = expect(sock, CHALLENGE, FRAME_BYTES_MAX_HANDSHAKE)
    if len(nonce) != 32:
        raise ProtocolError("a challenge of %d bytes" % len(nonce))
    message = AUTH_CONTEXT + struct.pack("<I", terminal) + nonce
    mac = hmac.new(secret, message, hashlib.sha256).digest()
    sock.sendall(frame(AUTH, 0, mac))
    body = expect(sock, WELCOME, FRAME_BYTES_MAX_HANDSHAKE)
    if len(body) != 24:
        raise ProtocolError("a welcome of %d bytes" % len(body))
    fields = struct.unpack("<IHHIHHQ", body)
    names = ("frame_bytes_max", "batch_ops_max", "in_flight_max", "rate_per_second",
             "shard_count", "reserved", "session")
    return dict(zip(names, fields))


# ---------------------------------------------------------------------------------------------
# Operations and results (docs/protocol.md, "Requests" and "Responses").


def write_body(key, store, category, receipt, fields):
    """A write's body: key, store, category, the operation's fields, then the receipt."""
    receipt = receipt.encode("utf-8")
    if len(receipt) > RECEIPT_BYTES_MAX:
        raise ValueError("a receipt is at most 32 bytes")
    key_bytes = key.to_bytes(16, "little")
    return (key_bytes + struct.pack("<IH", store, category) + fields
            + struct.pack("<B", len(receipt)) + receipt)


def operation(opcode, body):
    return struct.pack("<BBH", opcode, 0, len(body)) + body


def request_body(operations):
    return struct.pack("<HH", len(operations), 0) + b"".join(operations)


def decode_result(opcode, status, body):
    """A readable line for one result."""
    name = OPCODES.get(opcode, "opcode_%d" % opcode)
    if status != 0:
        if body:
            raise ProtocolError("a refusal with a body")
        return name, "%s: %s" % (name, status_name(status))
    if opcode == PING:
        return name, "%s: ok" % name
    if opcode == BALANCE:
        posted, available, held = struct.unpack("<qqQ", body)
        return name, "%s: ok posted=%d available=%d held=%d" % (name, posted, available, held)
    if opcode == HISTORY:
        count, _ = struct.unpack_from("<HH", body, 0)
        if len(body) != 4 + 28 * count:
            raise ProtocolError("a history of the wrong length")
        lines = ["%s: ok entries=%d" % (name, count)]
        for index in range(count):
            tx_id, timestamp, amount, kind, flags, _ = struct.unpack_from(
                "<QQQHBB", body, 4 + 28 * index)
            lines.append("  tx_id=%d timestamp=%d amount=%d kind=%d flags=%d"
                         % (tx_id, timestamp, amount, kind, flags))
        return name, "\n".join(lines)
    if opcode in WRITES:
        tx_id, timestamp, lsn, points, flags = struct.unpack("<QQQQB", body)
        duplicate = "yes" if flags & 1 else "no"
        return name, ("%s: ok tx_id=%d timestamp=%d lsn=%d points=%d duplicate=%s"
                      % (name, tx_id, timestamp, lsn, points, duplicate))
    raise ProtocolError("an ok result for unknown opcode %d" % opcode)


def decode_response(body, expected):
    """[(opcode, status, body)] of a Response body with `expected` results."""
    count, reserved = struct.unpack_from("<HH", body, 0)
    if count != expected or reserved != 0:
        raise ProtocolError("a response with %d results for %d operations" % (count, expected))
    results = []
    offset = 4
    for _ in range(count):
        opcode, reserved, status, body_len = struct.unpack_from("<BBHH", body, offset)
        offset += 6
        if reserved != 0 or offset + body_len > len(body):
            raise ProtocolError("a malformed result")
        results.append((opcode, status, body[offset:offset + body_len]))
        offset += body_len
    if offset != len(body):
        raise ProtocolError("trailing bytes in a response")
    return results


def call(sock, welcome, request_id, operations):
    """Sends one request and waits for its answer: the results, in the order of the operations."""
    sock.sendall(frame(REQUEST, request_id, request_body(operations)))
    while True:
        frame_type, answered, body = read_frame(sock, welcome["frame_bytes_max"])
        if frame_type == ERROR:
            status, message = decode_error(body)
            if answered == 0:
                raise ProtocolError("the server closed the session: %s: %s" % (status, message))
            if answered == request_id:
                raise ProtocolError("request refused: %s: %s" % (status, message))
            continue
        if frame_type != RESPONSE:
            raise ProtocolError("unexpected %s frame" % FRAME_TYPES[frame_type])
        if answered == request_id:
            return decode_response(body, len(operations))


# ---------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Send a purchase, a redemption and a balance query to ledgerd "
                    "(docs/protocol.md).")
    parser.add_argument("--addr", default="127.0.0.1:7400", help="host:port of the POS listener")
    parser.add_argument("--credentials", required=True, help="the credentials TOML file")
    parser.add_argument("--terminal", type=int, help="terminal id (default: the file's first)")
    parser.add_argument("--customer", type=int, required=True, help="the customer's id")
    parser.add_argument("--purchase", type=int, metavar="MINOR_UNITS",
                        help="a purchase of this many minor currency units")
    parser.add_argument("--redeem", type=int, metavar="POINTS", help="redeem this many points")
    parser.add_argument("--key", type=lambda text: int(text, 0),
                        help="idempotency key of the first write (the next write uses key + 1); "
                             "default: random")
    parser.add_argument("--store", type=int, default=0)
    parser.add_argument("--category", type=int, default=0)
    parser.add_argument("--receipt", default="")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per network step")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        terminal, secret = load_terminal(args.credentials, args.terminal)
    except (OSError, ValueError, KeyError) as error:
        print("posclient: credentials: %s" % error, file=sys.stderr)
        return 2
    host, _, port = args.addr.rpartition(":")
    key = args.key if args.key is not None else int.from_bytes(os.urandom(16), "little")
    operations, keys = [], []

    def next_key():
        value = (key + len(keys)) % (1 << 128) or 1
        keys.append(value)
        return value

    try:
        if args.purchase is not None:
            fields = struct.pack("<QQ", args.customer, args.purchase)
            body = write_body(next_key(), args.store, args.category, args.receipt, fields)
            operations.append(operation(PURCHASE, body))
        if args.redeem is not None:
            fields = struct.pack("<QQ", args.customer, args.redeem)
            body = write_body(next_key(), args.store, args.category, args.receipt, fields)
            operations.append(operation(REDEEM, body))
    except (ValueError, struct.error) as error:
        print("posclient: %s" % error, file=sys.stderr)
        return 2
    operations.append(operation(BALANCE, struct.pack("<Q", args.customer)))

    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=args.timeout) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            welcome = handshake(sock, terminal, secret)
            print("connected: session %d, terminal %d, %d shards, %d operations per request, "
                  "%d in flight, %d operations/s"
                  % (welcome["session"], terminal, welcome["shard_count"],
                     welcome["batch_ops_max"], welcome["in_flight_max"],
                     welcome["rate_per_second"]))
            results = call(sock, welcome, 1, operations)
    except (OSError, ProtocolError, struct.error) as error:
        print("posclient: %s" % error, file=sys.stderr)
        return 3

    refused = False
    write_keys = iter(keys)
    for opcode, status, body in results:
        try:
            _, line = decode_result(opcode, status, body)
        except (ProtocolError, struct.error) as error:
            print("posclient: %s" % error, file=sys.stderr)
            return 3
        if opcode in WRITES:
            line += " key=%d" % next(write_keys)
        print(line)
        refused = refused or status != 0
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
