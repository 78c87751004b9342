#!/usr/bin/env python3
"""Tiny QEMU guest agent client for the herd test guest (stdlib only).

    qga.py SOCKET ping
    qga.py SOCKET exec PATH [ARG...]      run, print stdout/stderr, exit with its code
    qga.py SOCKET write GUEST_PATH TEXT   guest-file-open/write/close
    qga.py SOCKET shutdown                guest-shutdown (powerdown)
    qga.py SOCKET raw JSON                send one command, print the reply

SOCKET is the host end of the virtio-serial port named org.qemu.guest_agent.0:
  -chardev socket,path=SOCKET,server=on,wait=off,id=qga0
  -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
Each connection is first synchronised with guest-sync-delimited, so stale
replies from an earlier client are skipped.
"""
import base64
import json
import os
import random
import socket
import sys
import time


class QGAError(Exception):
    pass


class QGA:
    def __init__(self, path, timeout=10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _read_more(self):
        data = self.sock.recv(65536)
        if not data:
            raise QGAError("agent socket closed")
        self.buf += data

    def _read_json(self):
        while True:
            # Drop sentinels/garbage before the next object.
            self.buf = self.buf.lstrip(b"\xff \r\n")
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.strip(b"\xff \r")
                if line:
                    return json.loads(line)
                continue
            self._read_more()

    def sync(self, attempts=5):
        for _ in range(attempts):
            sid = random.randint(1, 2**31 - 1)
            # 0xFF resets the agent's JSON parser; the reply to
            # guest-sync-delimited is preceded by 0xFF as well.
            self.sock.sendall(b"\xff" + json.dumps(
                {"execute": "guest-sync-delimited", "arguments": {"id": sid}}).encode() + b"\n")
            try:
                while True:
                    while b"\xff" not in self.buf:
                        self.buf = b""
                        self._read_more()
                    self.buf = self.buf[self.buf.index(b"\xff") + 1:]
                    reply = self._read_json()
                    if reply.get("return") == sid:
                        return sid
            except socket.timeout:
                continue
        raise QGAError("guest-sync failed")

    def cmd(self, execute, **arguments):
        msg = {"execute": execute}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        reply = self._read_json()
        if "error" in reply:
            raise QGAError(f"{execute}: {reply['error']}")
        return reply.get("return")

    def exec(self, path, args=(), timeout=30.0):
        pid = self.cmd("guest-exec", path=path, arg=list(args), **{"capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while True:
            st = self.cmd("guest-exec-status", pid=pid)
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return st.get("exitcode", -1), out, err
            if time.monotonic() > deadline:
                raise QGAError(f"guest-exec {path}: still running after {timeout}s")
            time.sleep(0.1)

    def write_file(self, path, data):
        h = self.cmd("guest-file-open", path=path, mode="w")
        try:
            self.cmd("guest-file-write", handle=h, **{"buf-b64": base64.b64encode(data).decode()})
        finally:
            self.cmd("guest-file-close", handle=h)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    sock, op, rest = argv[1], argv[2], argv[3:]
    q = QGA(sock, timeout=float(os.environ.get("QGA_TIMEOUT", "10")))
    try:
        q.sync()
        if op == "ping":
            q.cmd("guest-ping")
            print("pong")
        elif op == "exec":
            code, out, err = q.exec(rest[0], rest[1:])
            sys.stdout.write(out)
            sys.stderr.write(err)
            return code
        elif op == "write":
            q.write_file(rest[0], rest[1].encode())
        elif op == "shutdown":
            # No reply comes back when the guest powers off promptly.
            q.sock.sendall(b'{"execute":"guest-shutdown","arguments":{"mode":"powerdown"}}\n')
        elif op == "raw":
            q.sock.sendall(rest[0].encode() + b"\n")
            print(json.dumps(q._read_json()))
        else:
            print(f"unknown op {op}", file=sys.stderr)
            return 2
        return 0
    finally:
        q.close()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (QGAError, OSError, socket.timeout) as e:
        print(f"qga: {e}", file=sys.stderr)
        sys.exit(111)
