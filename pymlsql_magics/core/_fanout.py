"""One upload for many instances of a VPC: the client's link carries the bytes once.

The client streams the copy to one instance, the seed. Every instance of a relay tree unpacks the
stream for itself and, at the same time, passes it on over the VPC's private network to its
children (tee into one ssh per child), so the copy takes about as long as a copy to one instance.
The hops log in with the fleet's key held only in an ssh-agent on the seed for the length of the
copy (children that pass it on further reach it through agent forwarding), never in a file, and
check each peer's host key against the key the client pinned for it. Every instance reports its
own outcome up the tree; an instance that no report came from (its parent could not reach it, or
the stream to it broke) is the caller's to copy to directly.
"""

from __future__ import annotations

import base64
import math
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import _remote as remote
from ._algorithms import SshAlgorithms
from ._errors import PymlsqlError
from ._results import CopyResult, Instance
from ._ssh import SshConnection
from ._transfer import Meter, copy_failure, inventory, local_source, send, upload_codec

# Programs every instance of the tree runs; a seed without them is not asked to relay.
NEEDED = ("ssh", "ssh-agent", "ssh-add", "tee", "mkfifo", "base64", "mktemp")
CUT_SHORT_STATUS = 9  # the unpack's status when its stream ended before the completion mark
_HOP_TIMEOUT = 10
_KEY_LIFETIME = 600  # seconds the agent keeps the key, should the seed's shell die without killing it

# The seed reads the key (exactly its length, so the archive after it is left on stdin) into an
# agent of its own: a socket in a folder only the login user can open, killed when the relay ends.
_AGENT = r"""IFS= read -r -N {length} k || {{ echo "pymlsql: the relay's key was cut short" >&2; exit 122; }}
eval "$(ssh-agent -s -a "$w/agent" -t {lifetime})" >/dev/null || {{ echo "pymlsql: ssh-agent failed" >&2; exit 122; }}
trap 'kill "$SSH_AGENT_PID" 2>/dev/null; rm -rf -- "$w"' EXIT
printf '%s' "$k" | ssh-add -q - 2>"$w/add" || {{ echo "pymlsql: ssh-add: $(tail -n 1 "$w/add")" >&2; exit 122; }}
k=
"""
# One report line per instance, its output and errors in base64 (a trailing dot keeps empty fields).
_OUT, _ERR = '"$(base64 -w0 <"$w/o{n}")"', '"$(base64 -w0 <"$w/e{n}")"'
_REPORT = 'printf "pymlsql:copied %s %s %s. %s.\\n" {id} "$s{n}" ' + f"{_OUT} {_ERR}"
_HOP_REPORT = 'cat "$w/o{n}"; [ "$s{n}" = 0 ] || printf "pymlsql:hop %s %s %s.\\n" {id} "$s{n}" ' + _ERR


@dataclass(frozen=True)
class Node:
    """An instance of the relay tree and the instances it passes the stream on to."""

    instance: Instance
    children: tuple[Node, ...] = ()

    def members(self) -> list[Instance]:
        return [self.instance, *(member for child in self.children for member in child.members())]


def plan(seed: Instance, peers: Sequence[Instance]) -> Node:
    """A tree rooted at `seed`, breadth first, about sqrt(N) children per instance: two levels
    reach a hundred instances while no instance sends more than ten copies of the stream."""
    members = [seed, *peers]
    fanout = max(2, math.ceil(math.sqrt(len(peers))))

    def node(index: int) -> Node:
        first = index * fanout + 1
        return Node(members[index], tuple(node(child) for child in range(first, min(first + fanout, len(members)))))

    return node(0)


@dataclass(frozen=True)
class RelayOutcome:
    """What the relay did: a result or error for each instance that reported, and why the others did not."""

    results: dict[str, CopyResult | PymlsqlError]
    unreached: dict[str, str]  # instance id -> what kept the stream from it


def can_relay(seed: SshConnection) -> str | None:
    """None if the seed has the programs a relay runs, else what it lacks."""
    status, output = seed.command(" ".join(["command", "-v", *NEEDED]))
    if status == 0:
        return None
    found = {line.rsplit("/", 1)[-1] for line in output.split()}
    missing = [program for program in NEEDED if program not in found]
    return f"{seed.instance.instance_id} has no {', '.join(missing) or 'OpenSSH client'}"


def upload_relayed(seed: SshConnection, tree: Node, pinned: Callable[[str], list[str]], key: bytes, source: str,
                   target: str, *, user: str, progress: Callable[[str, int, int], None],
                   cancel: threading.Event | None = None, compress: str = "auto") -> RelayOutcome:  # fmt: skip
    """Copies `source` to every instance of `tree` (rooted at `seed`'s instance), sending it once.

    `pinned(instance_id)` gives the pinned host key lines (`type base64`) of an instance; `key`
    is the private key every instance of the tree accepts, in a form ssh-add reads.
    """
    started = time.monotonic()
    local = local_source(source)
    files, total, estimate = inventory(local)
    token = uuid.uuid4().hex[:12]
    # The seed's codecs stand for the tree's: instances of one fleet share an image.
    codec, ratio = upload_codec(seed, local, compress)
    unpack = remote.unpack(user, target, local.name, directory=local.is_dir(), token=token, codec=codec)
    members = tree.members()

    def report(done: int, whole: int) -> None:
        for member in members:
            progress(member.instance_id, done, whole)

    text = key.decode("ascii")
    script = _node_script(tree, unpack, pinned, seed.algorithms, key_length=len(text))
    meter = Meter(total, int(estimate * ratio), report, cancel)
    sent = send(seed, _as_bash(script), local, source, meter, token=token, prefix=text.encode("ascii"), codec=codec)
    seed_id = seed.instance.instance_id
    copied, hops = _parse(sent.output.decode(errors="replace"))
    if not copied:
        why = remote.complaint(sent.errors) or (str(sent.broken) if sent.broken else f"exit status {sent.status}")
        return RelayOutcome({}, {member.instance_id: f"the relay on {seed_id} failed: {why}" for member in members})
    results: dict[str, CopyResult | PymlsqlError] = {}
    unreached: dict[str, str] = {}
    parents = {child.instance.instance_id: node.instance.instance_id
               for node in _nodes(tree) for child in node.children}  # fmt: skip
    for member in members:
        instance_id = member.instance_id
        outcome = copied.get(instance_id)
        if outcome is None or outcome[0] == CUT_SHORT_STATUS:
            unreached[instance_id] = _why_unreached(instance_id, parents, hops, outcome)
            continue
        status, output, errors = outcome
        if status != 0:
            results[instance_id] = copy_failure(status, errors, instance_id, seed.face, user,
                                                f"copying {source} to {instance_id}:{target}", None)  # fmt: skip
            continue
        progress(instance_id, total, total)
        via = "" if instance_id == seed_id else parents[instance_id]
        results[instance_id] = CopyResult(instance_id, source, output.strip(), files, total,
                                          time.monotonic() - started, via=via)  # fmt: skip
    return RelayOutcome(results, unreached)


def _why_unreached(instance_id: str, parents: dict[str, str], hops: dict[str, tuple[int, str]],
                   outcome: tuple[int, str, str] | None) -> str:  # fmt: skip
    """The nearest failed hop on the way to `instance_id`, in the words of the ssh that made it."""
    walk = instance_id
    while walk in parents:
        if walk in hops:
            status, errors = hops[walk]
            lines = [line.strip() for line in errors.splitlines() if line.strip()]
            said = lines[-1] if lines else f"exit status {status}"
            return f"{parents[walk]} could not pass the copy on to {walk}: {said}"
        walk = parents[walk]
    return "the stream to it broke" if outcome is not None else "no instance reported on it"


def _nodes(tree: Node) -> list[Node]:
    return [tree, *(node for child in tree.children for node in _nodes(child))]


def _parse(output: str) -> tuple[dict[str, tuple[int, str, str]], dict[str, tuple[int, str]]]:
    """The `pymlsql:copied` and `pymlsql:hop` lines of the tree's output, decoded."""
    copied: dict[str, tuple[int, str, str]] = {}
    hops: dict[str, tuple[int, str]] = {}
    for line in output.splitlines():
        fields = line.split(" ")
        if fields[0] == "pymlsql:copied" and len(fields) == 5:
            copied[fields[1]] = (int(fields[2]), _decoded(fields[3]), _decoded(fields[4]))
        elif fields[0] == "pymlsql:hop" and len(fields) == 4:
            hops[fields[1]] = (int(fields[2]), _decoded(fields[3]))
    return copied, hops


def _decoded(field: str) -> str:
    return base64.b64decode(field.removesuffix(".")).decode(errors="replace")


def _as_bash(script: str) -> str:
    """A command line for any login shell that runs `script` with bash, unquoted by one decoding
    however deep in the tree it is passed on."""
    encoded = base64.b64encode(script.encode()).decode("ascii")
    return f'exec /bin/bash -c "$(echo {encoded} | base64 -d)"'


def _node_script(node: Node, unpack: str, pinned: Callable[[str], list[str]], algorithms: SshAlgorithms, *,
                 key_length: int | None = None) -> str:  # fmt: skip
    """The bash that unpacks the stream on `node`'s instance and passes it on to its children.

    Only the seed's script (with `key_length`) reads the key and starts the agent.
    """
    lines = [
        "w=$(mktemp -d /tmp/.pymlsql-relay.XXXXXXXX) || exit 120",
        "trap 'rm -rf -- \"$w\"' EXIT",
        "trap 'exit 130' HUP INT TERM",
    ]
    if key_length is not None:
        lines.append(_AGENT.format(length=key_length, lifetime=_KEY_LIFETIME))
    known = [f"{child.instance.instance_id} {line}" for child in node.children
             for line in pinned(child.instance.instance_id)]  # fmt: skip
    quoted = " ".join(shlex.quote(line) for line in known) or "''"
    lines.append(f"printf '%s\\n' {quoted} >\"$w/known_hosts\"")
    count = 1 + len(node.children)
    lines.append("mkfifo " + " ".join(f'"$w/i{n}"' for n in range(count)))
    lines.append(f'/bin/bash -c {shlex.quote(unpack)} <"$w/i0" >"$w/o0" 2>"$w/e0" & p0=$!')
    for n, child in enumerate(node.children, start=1):
        command = _as_bash(_node_script(child, unpack, pinned, algorithms))
        lines.append(f'{_hop(child, algorithms)} {shlex.quote(command)} <"$w/i{n}" >"$w/o{n}" 2>"$w/e{n}" & p{n}=$!')
    lines.append("tee -p " + " ".join(f'"$w/i{n}"' for n in range(count)) + " >/dev/null")
    lines += [f"wait $p{n}; s{n}=$?" for n in range(count)]
    lines.append(_REPORT.format(id=node.instance.instance_id, n=0))
    lines += [_HOP_REPORT.format(id=child.instance.instance_id, n=n) for n, child in enumerate(node.children, 1)]
    return "\n".join(lines) + "\n"


def _hop(child: Node, algorithms: SshAlgorithms) -> str:
    """The ssh command line from a parent to `child`, checking the host key pinned for its id."""
    instance = child.instance
    options = {
        "BatchMode": "yes",
        "HostKeyAlias": instance.instance_id,
        "StrictHostKeyChecking": "yes",
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ConnectTimeout": str(_HOP_TIMEOUT),
        "ServerAliveInterval": "10",
        "ServerAliveCountMax": "3",
        **algorithms.openssh_options(),
        # Only a child that passes the stream on needs the key, and then only through the agent.
        "ForwardAgent": "yes" if child.children else "no",
        "ControlMaster": "no",
        "ControlPath": "none",
        "LogLevel": "ERROR",
    }
    words = ["ssh", "-F", "/dev/null", "-T", '-o UserKnownHostsFile="$w/known_hosts"']
    words += [f"-o {name}={shlex.quote(value)}" for name, value in options.items()]
    words += ["-p", str(instance.ssh_port), "-l", shlex.quote(instance.ssh_login), "--",
              shlex.quote(instance.private_ip)]  # fmt: skip
    return " ".join(words)
