"""2,000 connections held open at once: all are accepted and greeted, and
every one is answered when it says QUIT."""

import asyncio

import pytest

from conftest import HOST, raise_nofile

N = 2000
# (port, greeting prefix, quit command, quit reply prefix) per protocol
PROTOS = (
    (25, b"220 mail.example.com ESMTP ringmail\r\n", b"QUIT\r\n", b"221 "),
    (143, b"* OK [CAPABILITY IMAP4rev1", b"q LOGOUT\r\n", b"* BYE"),
    (110, b"+OK ringmail ready", b"QUIT\r\n", b"+OK"),
)


async def hold_all(srv, n):
    # Open every connection first; nobody reads yet.
    async def open_one(i):
        port = PROTOS[i % len(PROTOS)][0]
        return await asyncio.open_connection(HOST, srv.port(port), limit=1 << 16)

    conns = await asyncio.wait_for(asyncio.gather(*(open_one(i) for i in range(n))), 60)
    assert len(conns) == n

    # Then every greeting.
    async def greet(i):
        r, _ = conns[i]
        return await r.readline()

    greetings = await asyncio.wait_for(asyncio.gather(*(greet(i) for i in range(n))), 60)
    bad = [(i, g) for i, g in enumerate(greetings)
           if not g.startswith(PROTOS[i % len(PROTOS)][1]) or not g.endswith(b"\r\n")]
    assert not bad, f"{len(bad)} wrong greetings, first: {bad[:3]}"

    # Then QUIT on all of them, every one answered and closed.
    async def quit_one(i):
        r, w = conns[i]
        _, _, cmd, want = PROTOS[i % len(PROTOS)]
        w.write(cmd)
        await w.drain()
        reply = await r.readline()
        rest = await r.read()  # the rest up to EOF (IMAP: the tagged OK)
        w.close()
        return reply, rest, want

    results = await asyncio.wait_for(asyncio.gather(*(quit_one(i) for i in range(n))), 60)
    unanswered = [(i, r) for i, (r, _, want) in enumerate(results) if not r.startswith(want)]
    assert not unanswered, f"{len(unanswered)} QUITs unanswered, first: {unanswered[:3]}"
    for i, (_, rest, _) in enumerate(results):
        if i % len(PROTOS) == 1:
            assert rest.startswith(b"q OK"), rest


def test_2000_concurrent_connections(ringmail):
    limit = raise_nofile(65536)
    if limit < N + 200:
        pytest.skip(f"RLIMIT_NOFILE is {limit}; need {N + 200}")
    # The server inherits the raised limit. Lift the per-address cap: every
    # client is 127.0.0.1.
    srv = ringmail(config=f"[limits]\nmax_connections_per_ip = {N * 2}\n")
    asyncio.run(hold_all(srv, N))
    # The server is still fine afterwards.
    srv.quiesce()
    assert not srv.log_lines(level="error"), srv.log_lines(level="error")[:5]


async def greet_and_quit(srv, n, parallel):
    sem = asyncio.Semaphore(parallel)

    async def one(i):
        port, greeting, cmd, want = PROTOS[i % len(PROTOS)]
        async with sem:
            r, w = await asyncio.open_connection(HOST, srv.port(port))
            assert (await r.readline()).startswith(greeting)
            w.write(cmd)
            await w.drain()
            assert (await r.readline()).startswith(want)
            await r.read()
            w.close()

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)


def test_log_lines_from_every_loop_kept(ringmail):
    """Both loops write their log lines to the same stderr file through their
    own rings; the harness opens it without O_APPEND, as a shell's `2>file`
    does. Not one line may be overwritten by the other loop's write."""
    n = 1500
    srv = ringmail(config=f"[limits]\nmax_connections_per_ip = {n}\n")
    srv.quiesce()
    probes = srv.log().count("event=connect ")  # the readiness probes
    asyncio.run(greet_and_quit(srv, n, parallel=64))
    srv.quiesce(at_least=probes + n)
    log = srv.log()
    connects = log.count("event=connect ") - probes
    closes = log.count("event=close ") - probes
    assert connects == n and closes == n, (connects, closes)
    loops = {line.split(" loop=")[1].split()[0] for line in log.splitlines()
             if "event=connect " in line}
    assert loops == {"0", "1"}, loops
