"""`coi remote add|list|remove`: Incus servers and clusters reached over HTTPS.
(`--remote NAME` before or after any command points it at one; see cli/main.py.)"""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    from coi_tui.cli.parser import CoiParser, add_format

    remote = sub.add_parser(
        "remote",
        help="Incus servers and clusters reached over HTTPS",
        description="Remotes let every coi command (and coi-tui) work on another Incus server "
        "or cluster: add '--remote NAME' to any command. The default stays the local socket.",
    )
    rsub = remote.add_subparsers(
        dest="action", metavar="ACTION", parser_class=CoiParser, required=True
    )
    p = rsub.add_parser(
        "add",
        help="add a remote (from a trust token, or an address and its fingerprint)",
        description="With a token from 'incus config trust add coi' on the server, the address "
        "and fingerprint come from the token and this machine's client certificate is trusted "
        "there. Otherwise give the address and --fingerprint (or --ca) of a server that already "
        "trusts ~/.coi/client.crt.",
    )
    p.add_argument("name")
    p.add_argument("source", nargs="?", help="trust token, or https://HOST[:PORT]")
    p.add_argument("--token", help="trust token (instead of the positional)")
    p.add_argument("--fingerprint", help="SHA-256 fingerprint of the server certificate")
    p.add_argument("--ca", help="CA file to verify the server certificate against")
    p.add_argument(
        "--accept-certificate",
        action="store_true",
        help="trust whatever certificate the server presents (first use only)",
    )
    p.add_argument("--project", default="default", help="Incus project on that server")
    p.add_argument("--target", default="", help="cluster member for new sessions")
    p.add_argument("--cert", default="", help="client certificate (default ~/.coi/client.crt)")
    p.add_argument("--key", default="", help="client key (default ~/.coi/client.key)")
    p.set_defaults(handler=cmd_add)

    p = rsub.add_parser("list", help="configured remotes and whether they answer")
    add_format(p)
    p.set_defaults(handler=cmd_list)

    p = rsub.add_parser("remove", help="forget a remote (nothing changes on the server)")
    p.add_argument("name")
    p.set_defaults(handler=cmd_remove)


def cmd_add(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.target import CHOSEN
    from coi_tui.core.errors import CoiError, UsageError
    from coi_tui.incus import Incus
    from coi_tui.incus.remotes import (
        Remote,
        decode_token,
        ensure_client_certificate,
        fetch_server_certificate,
        load_remotes,
        normalise_fingerprint,
        save_remotes,
        server_cert_path,
        validate,
    )

    source = args.token or args.source
    if not source:
        raise UsageError("give a trust token or an https:// address")
    token = None if "://" in source else decode_token(source)
    if token is not None:
        if not token.addresses:
            raise CoiError("the token lists no server address: pass https://HOST:PORT and --token")
        address = f"https://{token.addresses[0]}"
        expected = normalise_fingerprint(args.fingerprint or token.fingerprint)
    else:
        address = source
        expected = normalise_fingerprint(args.fingerprint or "")
    target = args.target or CHOSEN.member  # main.py lifts --target (or $COI_TARGET)
    remote = Remote(
        args.name, address, args.cert, args.key, expected, args.ca or "", args.project, target
    )
    cert, key = remote.client_files()
    ensure_client_certificate(cert, key)

    pem, actual = fetch_server_certificate(address)
    if not args.ca:
        if expected and expected != actual:
            raise CoiError(
                f"the server at {address} presents certificate {actual[:16]}..., "
                f"not the expected {expected[:16]}...: refusing to add it"
            )
        if not expected and not args.accept_certificate:
            raise CoiError(
                f"the server at {address} presents certificate fingerprint {actual}; "
                "check it on the server (incus info | grep certificate_fingerprint) "
                "and pass --fingerprint, or use a trust token"
            )
        remote.fingerprint = actual
    validate(remote)
    pinned = server_cert_path(remote.name)
    pinned.parent.mkdir(parents=True, exist_ok=True)
    pinned.write_text(pem)

    client = Incus(remote=remote)
    if token is not None and client.server_info.get("auth") != "trusted":
        client.request(
            "POST",
            "/1.0/certificates",
            # The whole token goes back; the server takes our TLS client certificate.
            body={"trust_token": token.raw},
        )
        client._server_info = None
    version = client.ping()  # raises a clear line if we are still not trusted
    remotes = load_remotes()
    remotes[remote.name] = remote
    save_remotes(remotes)
    print(f"Added remote '{remote.name}' ({address}, Incus {version}, project {remote.project})")
    print(f"Use it with: coi --remote {remote.name} list")
    return 0


def cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.cli.parser import wants_json
    from coi_tui.core.errors import CoiError
    from coi_tui.incus import Incus
    from coi_tui.incus.remotes import _config_files, load_remotes

    rows = []
    for remote in load_remotes(_config_files()).values():
        try:
            status = f"online (Incus {Incus(remote=remote).ping()})"
        except CoiError as exc:
            status = f"offline: {str(exc).split(':')[0]}"
        rows.append(
            {
                "name": remote.name,
                "address": remote.address,
                "project": remote.project,
                "target": remote.target,
                "fingerprint": remote.fingerprint,
                "status": status,
            }
        )
    if wants_json(args):
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No remotes (add one with 'coi remote add NAME TOKEN')")
        return 0
    print(f"{'NAME':<16} {'ADDRESS':<32} {'PROJECT':<12} STATUS")
    for row in rows:
        print(f"{row['name']:<16} {row['address']:<32} {row['project']:<12} {row['status']}")
    return 0


def cmd_remove(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from coi_tui.core.errors import CoiError
    from coi_tui.incus.remotes import load_remotes, save_remotes, server_cert_path

    remotes = load_remotes()
    if args.name not in remotes:
        raise CoiError(f"no remote '{args.name}' in ~/.coi/remotes.toml (see 'coi remote list')")
    del remotes[args.name]
    save_remotes(remotes)
    server_cert_path(args.name).unlink(missing_ok=True)
    print(f"Removed remote '{args.name}'", file=sys.stderr)
    return 0
