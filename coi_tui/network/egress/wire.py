"""The name a connection asks for, read from its first bytes without decrypting anything:
the server_name of a TLS ClientHello, or the Host of an HTTP/1 request.

Both readers take what has arrived so far and say NEED_MORE while the message is incomplete;
anything malformed is NONE (the proxy refuses it). They never trust a length without checking
it against the bytes present.
"""

from __future__ import annotations

import re

NEED_MORE = "\0more"  # not a name: wait for more bytes
NONE = ""  # no name can come of it
MAX_HELLO = 16384 + 5  # one TLS record: a ClientHello larger than that is refused
MAX_HEAD = 16384  # the request line and headers of an HTTP request

HTTP_METHOD = re.compile(
    rb"^(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE) (\S+) HTTP/1\.[01]\r?\n"
)
# a later request's line with an absolute-form target names its host itself
ABSOLUTE_TARGET = re.compile(
    rb"(?:^|\n)[A-Z]+ [A-Za-z][A-Za-z0-9+.-]*://([^/\s?#]+)", re.IGNORECASE
)
HOST_LINE = re.compile(rb"\r?\nhost:[ \t]*([^\r\n]*)", re.IGNORECASE)


def looks_like_tls(data: bytes) -> bool:
    return data[:1] == b"\x16"


def tls_server_name(data: bytes) -> str:
    """The SNI host_name of the ClientHello starting `data` (a TLS handshake record)."""
    if len(data) < 5:
        return NEED_MORE
    if data[0] != 0x16 or data[1] != 3:
        return NONE
    length = int.from_bytes(data[3:5], "big")
    if length > MAX_HELLO - 5 or length < 4:
        return NONE
    if len(data) < 5 + length:
        return NEED_MORE
    body = data[5 : 5 + length]
    if body[0] != 1:  # handshake type: client_hello
        return NONE
    hello_len = int.from_bytes(body[1:4], "big")
    if hello_len > len(body) - 4:
        return NONE  # a hello split over several records: refused, browsers never do it
    return sni_from_hello(body[4 : 4 + hello_len])


def sni_from_hello(hello: bytes) -> str:
    try:
        pos = 2 + 32  # client_version, random
        pos += 1 + hello[pos]  # session_id
        pos += 2 + int.from_bytes(hello[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + hello[pos]  # compression_methods
        if pos + 2 > len(hello):
            return NONE  # no extensions: no SNI
        end = pos + 2 + int.from_bytes(hello[pos : pos + 2], "big")
        if end > len(hello):
            return NONE
        pos += 2
        while pos + 4 <= end:
            kind = int.from_bytes(hello[pos : pos + 2], "big")
            size = int.from_bytes(hello[pos + 2 : pos + 4], "big")
            pos += 4
            if pos + size > end:
                return NONE
            if kind == 0:  # server_name
                return host_name_from_list(hello[pos : pos + size])
            pos += size
    except IndexError:
        return NONE
    return NONE


def host_name_from_list(ext: bytes) -> str:
    if len(ext) < 2 or int.from_bytes(ext[:2], "big") != len(ext) - 2:
        return NONE
    pos = 2
    names = []
    while pos + 3 <= len(ext):
        kind, size = ext[pos], int.from_bytes(ext[pos + 1 : pos + 3], "big")
        pos += 3
        if pos + size > len(ext):
            return NONE
        if kind == 0:
            names.append(ext[pos : pos + size])
        pos += size
    if len(names) != 1:
        return NONE  # RFC 6066: at most one host_name; two is an attempt to confuse
    return ascii_name(names[0])


def ascii_name(raw: bytes | str) -> str:
    try:
        text = raw if isinstance(raw, str) else raw.decode("ascii")
    except UnicodeDecodeError:
        return NONE
    if not text.isascii():
        return NONE
    if not text or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        return NONE
    return text


def http_host(data: bytes) -> str:
    """The Host header of the HTTP/1 request starting `data` (its port removed)."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        head_end = data.find(b"\n\n")
    if head_end < 0:
        if len(data) >= MAX_HEAD:
            return NONE
        if b"\n" in data and not HTTP_METHOD.match(data):
            return NONE  # a complete first line that is no request line
        return NEED_MORE
    head = data[:head_end]
    request = HTTP_METHOD.match(head + b"\r\n")
    if not request:
        return NONE  # CONNECT too: a tunnel to anywhere is not a request for one host
    hosts = HOST_LINE.findall(head)
    if len(hosts) != 1:
        return NONE  # none, or two (which one the server reads is its choice)
    host = host_without_port(ascii_name(hosts[0].strip()))
    target = ABSOLUTE_TARGET.match(request.group(0))
    if target and host_without_port(ascii_name(target.group(1).decode("latin-1"))) != host:
        return NONE  # servers route an absolute-form target by its own authority
    return host


def host_without_port(host: str) -> str:
    if host.startswith("["):
        return NONE  # an IPv6 literal: never a name
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        return name
    return host


def other_hosts(data: bytes, allowed: str) -> list[str]:
    """Host headers in later requests on a kept-alive HTTP connection that differ from the
    first request's (case and port ignored)."""
    found = []
    named = HOST_LINE.findall(data) + ABSOLUTE_TARGET.findall(data)
    for raw in named:
        host = host_without_port(ascii_name(raw.strip().decode("latin-1"))).lower().rstrip(".")
        if host != allowed:
            found.append(host or "?")
    return found
