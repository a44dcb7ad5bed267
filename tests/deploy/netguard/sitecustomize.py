"""Loaded by every Python process of the offline test (PYTHONPATH): records each attempt to resolve
a name or open a connection, and refuses any that is not loopback, through audit hooks.

The log ($ENCLAVE_NETGUARD_LOG) gets one JSON line per attempt: {"pid", "event", "target", "allowed"}.
"""

import ipaddress
import json
import os
import sys

_LOG = os.environ.get("ENCLAVE_NETGUARD_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _loopback(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _target(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if event == "socket.connect" else args[-1]
        if isinstance(address, (str, bytes)):  # AF_UNIX path: local by definition
            return None, True
        host = address[0] if isinstance(address, tuple) and address else address
        return repr(address), _loopback(host)
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        return repr(args[0]), _loopback(args[0])
    return None, True


def _hook(event, args):
    if not event.startswith("socket.") or event in ("socket.__new__", "socket.bind", "socket.gethostname"):
        return
    target, allowed = _target(event, args)
    if target is None:
        return
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "argv0": sys.argv[0] if sys.argv else "",
                        "event": event,
                        "target": target,
                        "allowed": allowed,
                    }
                )
                + "\n"
            )
    if not allowed:
        raise OSError(f"network access blocked by the offline test: {event} {target}")


sys.addaudithook(_hook)
