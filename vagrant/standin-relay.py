# The stand-in cloud's front door, in its namespace at 169.254.169.254:80 (VM test tier,
# vagrant/guest.sh sets it up). Logs every connection, its source address and request
# line, flushed to disk at once so that a reboot loses none, then relays it to the
# emulator behind it. /control/ paths are answered here: the probes that prove the
# stand-in answers.
#
# Usage: python3 standin-relay.py LOG BACKEND_PORT
import os
import socket
import sys
import threading
import time

LOG = sys.argv[1]
BACKEND = ("127.0.0.1", int(sys.argv[2]))
lock = threading.Lock()


def log(line):
    with lock, open(LOG, "a") as f:
        f.write("%.3f %s\n" % (time.time(), line))
        f.flush()
        os.fsync(f.fileno())


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(conn, addr):
    conn.settimeout(60)
    head = b""
    try:
        while b"\r\n" not in head and len(head) < 65536:
            data = conn.recv(65536)
            if not data:
                break
            head += data
    except OSError:
        pass
    line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")[:300]
    log("conn %s %s" % (addr[0], line or "-"))
    parts = line.split(" ")
    try:
        if len(parts) > 1 and parts[1].startswith("/control/"):
            body = b"stand-in cloud\n"
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        backend = socket.create_connection(BACKEND, timeout=10)
        backend.settimeout(60)
        backend.sendall(head)
        back = threading.Thread(target=pump, args=(backend, conn), daemon=True)
        back.start()
        pump(conn, backend)
        back.join()
        backend.close()
    except OSError:
        pass
    finally:
        conn.close()


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("169.254.169.254", 80))
    server.listen(128)
    while True:
        conn, addr = server.accept()
        threading.Thread(target=handle, args=(conn, addr), daemon=True).start()


main()
