#!/usr/bin/env python3
"""A D-Bus client that sends method calls to berthd and never reads a byte of what comes back.

Usage: flood.py CONNECTIONS CALLS SECONDS [MEMBER [SIGNATURE ARG...]]

Opens CONNECTIONS connections to the system bus (DBUS_SYSTEM_BUS_ADDRESS or the default
socket), sends Hello and then CALLS calls of org.berth.berth1.Manager.MEMBER (default
ListContainers; FLOOD_INTERFACE and FLOOD_PATH name another) on each, without reading any reply, keeps the connections open for SECONDS and
prints "sent N" once everything is written. The messages are marshalled here by hand (no D-Bus
library reads for us in the background): that is the point. Run it as the user to test, e.g.
under `setpriv --reuid 65534`.
"""

import os
import socket
import struct
import sys
import time


def pad(buf, n):
    return buf + b"\0" * (-len(buf) % n)


def string(s, code=b"s"):
    b = s.encode()
    if code == b"g":
        return struct.pack("<B", len(b)) + b + b"\0"
    return struct.pack("<I", len(b)) + b + b"\0"


def field(code, sig, value):
    # A header field is a struct (yv): aligned to 8, a byte code, a variant.
    return code, sig, value


def message(serial, path, interface, member, destination, signature="", body=b""):
    fields = [
        (1, b"o", path),
        (2, b"s", interface),
        (3, b"s", member),
        (6, b"s", destination),
    ]
    if signature:
        fields.append((8, b"g", signature))
    arr = b""
    for code, sig, value in fields:
        arr = pad(arr, 8)
        arr += struct.pack("<B", code) + string(sig.decode(), b"g")
        # The variant's value, aligned as its type wants, relative to the message start: the
        # array starts at offset 16 (a multiple of 8), so aligning within it is enough.
        if sig == b"g":
            arr += string(value, b"g")
        else:
            arr = pad(arr, 4)
            arr += string(value)
    head = struct.pack("<cBBBII", b"l", 1, 0, 1, len(body), serial)
    head += struct.pack("<I", len(arr)) + arr
    return pad(head, 8) + body


def connect():
    addr = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
    path = addr.split("path=", 1)[1].split(",", 1)[0]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    uid = str(os.getuid()).encode().hex()
    s.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
    # The only bytes ever read: the authentication reply, up to its end of line.
    line = b""
    while not line.endswith(b"\r\n"):
        line += s.recv(1)
    if not line.startswith(b"OK"):
        sys.exit(f"authentication refused: {line!r}")
    s.sendall(b"BEGIN\r\n")
    s.sendall(message(1, "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", "org.freedesktop.DBus"))
    return s


def body_of(signature, args):
    body = b""
    for code, a in zip(signature, args):
        if code == "s":
            body = pad(body, 4) + string(a)
        elif code == "t":
            body = pad(body, 8) + struct.pack("<Q", int(a))
        elif code == "b":
            body = pad(body, 4) + struct.pack("<I", 1 if a in ("true", "1") else 0)
        else:
            sys.exit(f"flood.py: argument type {code} is not supported")
    return body


def main():
    conns, calls, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    member = sys.argv[4] if len(sys.argv) > 4 else "ListContainers"
    signature = sys.argv[5] if len(sys.argv) > 5 else ""
    body = body_of(signature, sys.argv[6:])
    socks = [connect() for _ in range(conns)]
    sent = 0
    for s in socks:
        s.setblocking(True)
        for i in range(calls):
            s.sendall(
                message(i + 2, os.environ.get("FLOOD_PATH", "/org/berth/berth1"),
                        os.environ.get("FLOOD_INTERFACE", "org.berth.berth1.Manager"), member,
                        "org.berth.berth1", signature, body)
            )
            sent += 1
    print(f"sent {sent}", flush=True)
    time.sleep(seconds)


if __name__ == "__main__":
    main()
