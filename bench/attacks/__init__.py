"""Attacks below ASGI: what each server set-up does with hostile clients (issue 12, item 7).

    python -m bench.attacks                       # every set-up, every attack (~15 min)
    python -m bench.attacks --setups run,uvicorn-httptools --attacks heads,halfopen

Three attacks an ASGI application cannot see, each bounded in count and time and aimed at
127.0.0.1 only:

- ``heads``: a handshake with one header line over 8 KiB, one with 200 headers, one with a
  9 KiB request line (a long ``?token=``), and header lines of 9 and 17 KiB sent in 1 KiB
  pieces as over a network: is it answered, and is the socket let go?
- ``bigheads``: 100 handshakes with a 1 MiB header each: what does the server keep?
- ``halfopen``: 1,000 sockets that send the first bytes of a request line and then nothing:
  how many does the server still hold after 15 s, and is a normal client served meanwhile?
- ``pingflood``: one client that sends pings as fast as it can and never reads: how fast does
  the server's memory grow?

``guarantees`` checks what the library relies on the server for (deflate off, the frame size
limit, pings, dropping a peer that answers none) under each set-up, so a set-up that survives
the attacks but loses a guarantee is visible.  See docs/security.md, "Deployment".
"""
