#!/usr/bin/python3
"""status_sweep.py - server CPU per folder of a LIST-STATUS sweep, for one
or more ringmail binaries side by side.

What a client looking for new mail in every folder sends (Thunderbird's
"check all folders", or any client's LIST RETURN (STATUS)): one user with
--folders folders of 3 messages each, and `LIST "" "*" RETURN (STATUS
(MESSAGES UNSEEN UIDNEXT))` in a loop for --seconds per run. Each binary
runs on its own data directory, pinned to --cpu; the runs take turns
(ABBA: a machine whose load drifts favours none) and run 0 is a warm-up.
The server's CPU comes from /proc/PID/stat (user + system).

    bench/status_sweep.py [--runs N] [--seconds S] [--folders F] [--cpu C] RINGMAIL...

Prints the median server CPU in microseconds per folder STATUS for each
binary, and the median of the per-run ratios to the first one. Used for
bench/RESULTS.md "STATUS sweep".
"""
import argparse
import imaplib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PASSWORD = "Sweep-Secret-1"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_offset(start):
    # below the ephemeral range (32768-): a load generator's sockets in
    # TIME_WAIT there would make a listener's port look taken
    off = start
    while True:
        try:
            for port in (25, 143, 993, 110, 995, 465, 587, 26, 2025, 2525, 80, 443):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("127.0.0.1", off + port))
            return off
        except OSError:
            off += 17


def start(binary, data, off, cpu):
    subprocess.run([binary, "user", "add", "u@example.com", "--data", data],
                   input=(PASSWORD + "\n").encode(), check=True, capture_output=True)
    p = subprocess.Popen(["taskset", "-c", str(cpu), binary, "serve", "--data", data,
                          "--port-offset", str(off), "--threads", "1"],
                         stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", off + 143), 0.2).close()
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    sys.exit(f"status_sweep: {binary} did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--folders", type=int, default=60)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()

    procs, offs, dirs = [], [], []
    try:
        for b in a.binaries:
            d = tempfile.mkdtemp(prefix="status-sweep.")
            dirs.append(d)
            off = free_offset(15000 if not offs else offs[-1] + 2600)
            procs.append(start(b, d, off, a.cpu))
            offs.append(off)
            m = imaplib.IMAP4("127.0.0.1", off + 143)
            m.login("u@example.com", PASSWORD)
            for f in range(a.folders):
                m.create(f"F{f:03d}")
                for k in range(3):
                    m.append(f"F{f:03d}", None, None, f"Subject: {k}\r\n\r\nbody {k}\r\n".encode())
            m.logout()
        per = {i: [] for i in range(len(a.binaries))}
        for run in range(a.runs + 1):
            order = list(range(len(a.binaries)))
            if run % 2:
                order.reverse()
            for i in order:
                m = imaplib.IMAP4("127.0.0.1", offs[i] + 143)
                m.login("u@example.com", PASSWORD)
                c0, n = cpu_seconds(procs[i].pid), 0
                t_end = time.time() + a.seconds
                while time.time() < t_end:
                    typ, data = m.list('""', '"*" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))')
                    # imaplib files the untagged STATUS lines apart
                    status = m.untagged_responses.pop("STATUS", [])
                    statuses = sum(1 for x in status if x and b"MESSAGES 3" in x)
                    if typ != "OK" or statuses != a.folders:
                        sys.exit(f"status_sweep: {a.binaries[i]}: {typ}, {statuses} STATUS "
                                 f"lines for {a.folders} folders")
                    n += a.folders
                c1 = cpu_seconds(procs[i].pid)
                m.logout()
                if run:
                    per[i].append((c1 - c0) * 1e6 / n)
        print(f"server CPU us per folder STATUS, medians of {a.runs} runs "
              f"({a.folders} folders, {a.seconds:g} s each):")
        for i, b in enumerate(a.binaries):
            ratio = statistics.median(x / y for x, y in zip(per[i], per[0]))
            print(f"  {i} {b}: {statistics.median(per[i]):.2f} "
                  f"(range {min(per[i]):.2f}..{max(per[i]):.2f}), paired ratio to 0: {ratio:.3f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
