#!/usr/bin/env python3
"""Many SIP servers in one process, for bench/scale.sh.

    scale_responder.py COUNT PORTS_FILE SECONDS

Binds COUNT UDP sockets to 127.0.0.1 on ports the kernel picks, writes their ports to
PORTS_FILE (one a line, then a line `ready`), and answers every request on any of them
(REGISTER, and siplb's OPTIONS probes) with a 200 OK from the socket it came to: the Vias,
From, To (with a tag), Call-ID and CSeq copied, no body. Exits after SECONDS. Loopback only.
"""

import selectors
import socket
import sys
import time

KEEP = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")


def answer(request):
    head, _, _ = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or lines[0].startswith(b"SIP/2.0"):
        return None  # a response, or nothing: not ours to answer
    out = [b"SIP/2.0 200 OK"]
    for line in lines[1:]:
        low = line[:9].lower()
        if low.startswith(KEEP):
            if (low.startswith(b"to:") or low.startswith(b"t:")) and b";tag=" not in line:
                line += b";tag=scale"
            out.append(line)
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"


def main():
    count, ports_file, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    sel = selectors.DefaultSelector()
    ports = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        ports.append(s.getsockname()[1])
    with open(ports_file, "w") as f:
        f.write("".join(f"{p}\n" for p in ports) + "ready\n")
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            for _ in range(64):
                try:
                    data, peer = s.recvfrom(65535)
                except BlockingIOError:
                    break
                reply = answer(data)
                if reply is not None:
                    try:
                        s.sendto(reply, peer)
                    except OSError:
                        pass


if __name__ == "__main__":
    main()
