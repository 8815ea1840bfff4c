"""The machines behind sandbox instances: one real OpenSSH sshd per Running instance.

As root, each instance boots in its own mount, UTS, PID and network namespaces: an overlay over
/etc (so `useradd` on one instance is not seen on another), bind mounts of its own /root, /home
and /tmp, a private /run, its own hostname, its own network (see _wire.py) and sshd listening on
port 22 of every address it has. The boot script stays PID 1; killing it ends every process of the instance,
which is how stop, reboot and the fault injections end it, and it exits by itself when the
sandbox's process ends. The disk is a folder that survives stops.

Without root it degrades: sshd runs as the current user on a high port of the instance's
addresses on this machine's loopback (reported as tag `pymlsql:ssh-port`), files, users and
hostnames are shared, and no network rule is enforced.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _cloudinit, _hostkeys
from ._errors import HostError
from ._netns import listen_key, listening_sockets
from ._wire import Attachment, Wire

SSHD = "/usr/sbin/sshd"
INSIDE_DISK = "/run/pymlsql-disk"
SYS_CLASS = "/sys/class"
ECS_PRODUCT_NAME = "Alibaba Cloud ECS"
_DISK_MARKER = "PYMLSQL_SANDBOX_DISK"
ENDPOINT_VARIABLE = "PYMLSQL_ECS_ENDPOINT"


def full_fidelity() -> bool:
    return os.geteuid() == 0


def find_sshd() -> str:
    path = shutil.which("sshd") or (SSHD if os.path.exists(SSHD) else None)
    if not path:
        raise HostError(
            "OpenSSH's sshd is not installed; the sandbox's instances are real sshd servers.",
            hint="install it with `apt-get install -y openssh-server`.",
        )
    return path


@dataclass
class BootSpec:
    instance_id: str
    hostname: str
    addresses: list[str]
    ssh_port: int
    image_users: tuple[str, ...] = ()
    authorized_key: str | None = None
    user_data: bytes | None = None
    boot_delay: float = 1.0
    new_host_keys: bool = False
    network: Attachment | None = None  # where the machine is plugged in, as root


@dataclass
class _Machine:
    process: subprocess.Popen[bytes]
    init_pid: int | None
    generation: int


class Hosts:
    """Boots, halts and reaches the machines of one sandbox."""

    def __init__(self, state_dir: Path, on_ssh_ready: Callable[[str, int], None]) -> None:
        self.root = state_dir / "instances"
        self.root.mkdir(parents=True, exist_ok=True)
        self.full = full_fidelity()
        self.wire: Wire | None = None  # set by the sandbox as root, where machines get their own network
        self.sshd = find_sshd()
        self._on_ssh_ready = on_ssh_ready
        self._machines: dict[str, _Machine] = {}
        self._instance_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._awaited: dict[str, tuple[str, set[str], int]] = {}  # id -> (table, keys, generation)
        self._layers: dict[tuple[str, ...], Path] = {}
        self._layer_lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def disk(self, instance_id: str) -> Path:
        return self.root / instance_id

    def console(self, instance_id: str) -> bytes:
        path = self.disk(instance_id) / "console.log"
        return path.read_bytes() if path.exists() else b""

    def _serialized(self, instance_id: str) -> threading.Lock:
        with self._lock:
            return self._instance_locks.setdefault(instance_id, threading.Lock())

    def boot(self, spec: BootSpec) -> None:
        """Starts the instance's machine; `on_ssh_ready` is called once sshd answers."""
        with self._serialized(spec.instance_id):
            self._halt(spec.instance_id)
            self._boot(spec)

    def _boot(self, spec: BootSpec) -> None:
        started = time.time()
        disk = self.disk(spec.instance_id)
        first_boot = not (disk / "booted").exists()
        if first_boot:
            self._format(disk)
        script = self._boot_script(spec, disk, first_boot)
        (disk / "boot.sh").write_text(script)
        console = open(disk / "console.log", "ab")
        if self.full:
            command = [
                "unshare", "--mount", "--uts", "--pid", "--net", "--fork", "--mount-proc",
                "/bin/sh", str(disk / "boot.sh"),
            ]  # fmt: skip
        else:
            command = ["/bin/sh", str(disk / "boot.sh")]
        with console:
            process = subprocess.Popen(
                command,
                env={**os.environ, _DISK_MARKER: str(disk)},
                stdin=subprocess.PIPE,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        init_pid = self._namespace_init(process) if self.full else process.pid
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._machines[spec.instance_id] = _Machine(process, init_pid, generation)
        (disk / "pids").write_text(f"{process.pid} {init_pid or ''}\n")
        if self.wire is not None and spec.network is not None and init_pid is not None:
            try:
                self.wire.plug(spec.network, init_pid)
            except Exception:
                self._halt(spec.instance_id)
                raise
            _tell(process, b"plugged\n")
        # Only now: the boot script reads "plugged" before it reads "go".
        go = threading.Timer(max(0.0, started + spec.boot_delay - time.time()), _say_go, args=(process,))
        go.daemon = True
        go.start()
        self._await_listening(spec, generation, init_pid)

    def halt(self, instance_id: str) -> None:
        """Ends every process of the instance at once, as pulling the power would."""
        with self._serialized(instance_id):
            self._halt(instance_id)

    def _halt(self, instance_id: str) -> None:
        with self._lock:
            machine = self._machines.pop(instance_id, None)
        if machine is None:
            return
        if self.wire is not None:
            self.wire.unplug(instance_id)
        for pid in (machine.init_pid, machine.process.pid):
            if pid:
                try:
                    if not self.full:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        machine.process.wait()
        if machine.process.stdin:
            machine.process.stdin.close()
        pids = self.disk(instance_id) / "pids"
        pids.unlink(missing_ok=True)

    def running(self, instance_id: str) -> bool:
        with self._lock:
            machine = self._machines.get(instance_id)
        return machine is not None and machine.process.poll() is None

    def destroy(self, instance_id: str) -> None:
        with self._serialized(instance_id):
            self._halt(instance_id)
            shutil.rmtree(self.disk(instance_id), ignore_errors=True)
        with self._lock:
            self._instance_locks.pop(instance_id, None)

    def halt_all(self) -> None:
        with self._lock:
            ids = list(self._machines)
        for instance_id in ids:
            self.halt(instance_id)

    def run(
        self, instance_id: str, script: str, *, user: str, workdir: str, timeout: float
    ) -> tuple[int | None, bytes, bool]:
        """Runs a shell script inside the instance, as Cloud Assistant does.

        Returns (exit code, output, timed out).
        """
        with self._lock:
            machine = self._machines.get(instance_id)
        if machine is None:
            raise HostError(f"{instance_id} is not running")
        if self.full and machine.init_pid is not None:
            command = inside_command(machine.init_pid, user, ["/bin/sh", "-s"], workdir=workdir,
                                     endpoint=self.inside_endpoint())  # fmt: skip
            cwd = None
        else:
            command, cwd = ["/bin/sh", "-s"], str(self.disk(instance_id))
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(script.encode(), timeout=timeout)
            return process.returncode, output, False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            return None, output, True

    @staticmethod
    def _format(disk: Path) -> None:
        for name, mode in (("root", 0o700), ("home", 0o755), ("tmp", 0o1777), ("etc-upper", 0o755),
                           ("etc-work", 0o755), ("cloud", 0o700)):  # fmt: skip
            path = disk / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
        skeleton = Path("/etc/skel")
        if skeleton.is_dir():
            for item in skeleton.iterdir():
                if item.is_file():
                    shutil.copy2(item, disk / "root" / item.name)

    def _boot_script(self, spec: BootSpec, disk: Path, first_boot: bool) -> str:
        q = shlex.quote
        outside = disk
        steps = ["set -e", f"echo '[sandbox] booting {spec.instance_id} ({spec.hostname})'"]
        if self.full:
            # The state dir may lie under /root, /home or /tmp, which the instance covers with its
            # own: reach the disk through a bind mount under the instance's private /run instead.
            outside = disk
            disk = Path(INSIDE_DISK)
            # All mounts by one `mount` process (unshare made them private already), and the hostname
            # by a shell builtin: a hundred instances booting at once are short of CPU.
            layer = self._image_layer(spec.image_users)
            mounts = [
                ("tmpfs", "/run", "tmpfs", "mode=755"),
                ("tmpfs", "/run/sshd", "tmpfs", "mode=755,X-mount.mkdir"),
                (str(outside), INSIDE_DISK, "none", "bind,X-mount.mkdir"),
                ("overlay", "/etc", "overlay",
                 f"lowerdir={layer}:/etc,upperdir={INSIDE_DISK}/etc-upper,workdir={INSIDE_DISK}/etc-work"),
                (f"{INSIDE_DISK}/root", "/root", "none", "bind"),
                (f"{INSIDE_DISK}/home", "/home", "none", "bind"),
                (f"{INSIDE_DISK}/tmp", "/tmp", "none", "bind"),
            ]  # fmt: skip
            mounts += _ecs_dmi(outside)
            (outside / "fstab").write_text("".join(" ".join(map(_fstab_field, entry)) + " 0 0\n" for entry in mounts))
            steps += [
                f"mount --all --fstab {q(str(outside / 'fstab'))}",
                f"printf %s {q(spec.hostname)} > /proc/sys/kernel/hostname",
            ]
            if spec.network is not None and self.wire is not None:
                steps += ["read _plugged", *spec.network.inside_steps()]
        host_keys_dir = "/etc/ssh" if self.full else str(disk / "etc-upper")
        boot = _cloudinit.FirstBoot()
        if first_boot:
            boot = _cloudinit.plan(spec.user_data, outside / "cloud", inside=disk / "cloud")
            if self.full:
                steps += [
                    f"echo {q(spec.hostname)} > /etc/hostname",
                    f"printf '127.0.1.1 %s\\n' {q(spec.hostname)} >> /etc/hosts",
                ]
                self._make_homes(outside, spec.image_users)
            keys = [key for key in [spec.authorized_key, *boot.root_keys] if key]
            if keys:
                # Written from here: every process a boot spares counts when a hundred boot at once.
                ssh_dir = outside / "root" / ".ssh"
                ssh_dir.mkdir(mode=0o700, exist_ok=True)
                with open(ssh_dir / "authorized_keys", "a") as authorized:
                    authorized.write("".join(key.strip() + "\n" for key in keys))
                (ssh_dir / "authorized_keys").chmod(0o600)
            steps += boot.init
        (outside / "sshd_config").write_text(self._sshd_config(spec, disk))
        config = disk / "sshd_config"
        steps += self._host_key_steps(spec, host_keys_dir, outside, disk, q(str(config)), first_boot=first_boot)
        steps += [
            f": > {q(str(disk / 'booted'))}",
            # SSH comes up boot_delay after the machine started, however long the steps above took:
            # the sandbox says when, with a line on stdin (see _boot). End of input: it is gone.
            "read _go",
        ]
        if boot.final:
            (outside / "cloud" / "final.sh").write_text("\n".join(["set -x", *boot.final, ""]))
            steps.append(f"setsid /bin/sh {q(str(disk / 'cloud' / 'final.sh'))} </dev/null &")
        steps.append(f"{q(self.sshd)} -D -e -f {q(str(config))} &")
        # The sandbox holds the other end of stdin: when its process ends, however it ends, read
        # returns and this PID 1 exits, which ends every process of the instance.
        if self.full:
            # Meanwhile it waits, as init does, so the processes orphaned inside (a daemon whose
            # parent exited) are reaped, not left as zombies. The reader is its child: a job in the
            # background would read /dev/null, and init ignores signals it sets no trap for.
            steps += ["trap 'exit 0' USR1", "exec 3<&0", "{ read _ <&3 || true; kill -USR1 $$; } &", "exec 3<&-",
                      "wait"]  # fmt: skip
        else:
            steps += ["read _ || true", "kill -KILL 0"]
        return "\n".join(steps) + "\n"

    def _host_key_steps(self, spec: BootSpec, directory: str, outside: Path, disk: Path, config: str, *,
                        first_boot: bool) -> list[str]:  # fmt: skip
        """Serves the keys a cloud-config supplied or an earlier boot kept, and new ECDSA and Ed25519
        keys for the kinds missing, written here; prints them on the console as cloud-init does.

        `directory` is where the instance sees its keys; from here they are in the upper layer of its
        /etc (the image's own keys are hidden by the image layer).
        """
        kept = outside / "etc-upper" / "ssh" if self.full else outside / "etc-upper"
        kept.mkdir(parents=True, exist_ok=True)
        if spec.new_host_keys:
            for old in kept.glob("ssh_host_*"):
                old.unlink()
        served = []
        for kind in _hostkeys.KINDS:
            public = _hostkeys.public_of(outside / "cloud", kind) if first_boot else None
            if public is None:
                public = _hostkeys.public_of(kept, kind)
            if public is None and kind in _hostkeys.GENERATED:
                public = _hostkeys.generate(kept, kind, f"root@{spec.hostname}")
            if public:
                served.append(public)
        steps = [f'for k in {directory}/ssh_host_*_key; do echo "HostKey $k" >> {config}; done']
        if not spec.new_host_keys:  # new keys after a rotation are not announced, as an impostor's would not be
            steps.append(f"printf %s {shlex.quote(_hostkeys.console_text(served))}")
        return steps

    def _image_layer(self, users: tuple[str, ...]) -> Path:
        """An /etc layer shared by the instances of an image: its users added, the host's SSH host
        keys hidden. Made once per sandbox, instead of a `useradd` in every boot."""
        with self._layer_lock:
            layer = self._layers.get(users)
            if layer is not None:
                return layer
            folder = self.root.parent / "images" / ("-".join(users) or "base")
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "upper").mkdir(parents=True)
            (folder / "work").mkdir()
            q = shlex.quote
            script = " && ".join([
                "mount --make-rprivate /",
                f"mount -t overlay overlay -o lowerdir=/etc,upperdir={q(str(folder / 'upper'))},"
                f"workdir={q(str(folder / 'work'))} /etc",
                "rm -f /etc/ssh/ssh_host_*",
                *(f"{{ id {q(user)} >/dev/null 2>&1 || useradd -M -s /bin/bash {q(user)}; }}" for user in users),
            ])  # fmt: skip
            made = subprocess.run(["unshare", "--mount", "/bin/sh", "-c", script], capture_output=True, text=True)
            if made.returncode != 0:
                raise HostError(f"cannot prepare the image's /etc: {made.stderr.strip()}")
            self._layers[users] = folder / "upper"
            return folder / "upper"

    def _make_homes(self, outside: Path, users: tuple[str, ...]) -> None:
        """Each image user's home on the instance's disk, as `useradd -m` makes it."""
        accounts = {}
        passwd = self._image_layer(users) / "passwd"
        for line in passwd.read_text().splitlines() if passwd.exists() else []:
            fields = line.split(":")
            if len(fields) >= 6:
                accounts[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
        for user in users:
            if user not in accounts or not accounts[user][2].startswith("/home/"):
                continue
            uid, gid, home = accounts[user]
            folder = outside / "home" / home.removeprefix("/home/")
            folder.mkdir(mode=0o755, exist_ok=True)
            skeleton = Path("/etc/skel")
            for item in skeleton.iterdir() if skeleton.is_dir() else []:
                if item.is_file():
                    shutil.copy2(item, folder / item.name)
                    os.chown(folder / item.name, uid, gid)
            os.chown(folder, uid, gid)

    def inside_endpoint(self) -> str | None:
        """Where the sandbox's API answers inside instances (the same address as outside), if it does."""
        doors = self.wire.api_doors if self.wire else None
        return f"http://127.0.0.1:{doors.port}" if doors else None

    def _sshd_config(self, spec: BootSpec, disk: Path) -> str:
        if self._own_network(spec):
            lines = [f"ListenAddress 0.0.0.0:{spec.ssh_port}"]
            endpoint = self.inside_endpoint()
            if endpoint:
                # On ECS the region's endpoint answers by name; here sessions learn where the API is.
                lines.append(f"SetEnv {ENDPOINT_VARIABLE}={endpoint}")
        else:
            lines = [f"ListenAddress {address}:{spec.ssh_port}" for address in spec.addresses]
        lines += [
            "PidFile none",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "Subsystem sftp internal-sftp",
            "AcceptEnv LANG LC_*",
            "MaxStartups 100:30:200",
            "MaxSessions 64",
        ]
        if self.full:
            lines += ["PermitRootLogin prohibit-password", "UsePAM yes"]
        else:
            lines += [
                f"AuthorizedKeysFile {disk / 'root' / '.ssh' / 'authorized_keys'}",
                "UsePAM no",
                "StrictModes no",
            ]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _namespace_init(process: subprocess.Popen[bytes]) -> int | None:
        """The PID (as seen here) of the namespace's PID 1, the child `unshare --fork` made."""
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                text = children.read_text().split()
            except FileNotFoundError:
                return None
            if text:
                return int(text[0])
            if process.poll() is not None:
                return None
            time.sleep(0.005)
        return None

    def _own_network(self, spec: BootSpec) -> bool:
        return self.wire is not None and spec.network is not None

    def _await_listening(self, spec: BootSpec, generation: int, init_pid: int | None) -> None:
        """Has `on_ssh_ready` called once the machine's sshd listens on its address.

        One thread reads the kernel's table of listening sockets for every booting machine: a probe
        connection would cost each sshd a fork and a re-exec, which a hundred instances booting at
        once are short of CPU for.
        """
        if self._own_network(spec) and init_pid is not None:
            table = f"/proc/{init_pid}/net/tcp"
            keys = {listen_key("0.0.0.0", spec.ssh_port), listen_key(spec.addresses[0], spec.ssh_port)}
        else:
            table, keys = "/proc/net/tcp", {listen_key(spec.addresses[0], spec.ssh_port)}
        with self._lock:
            self._awaited[spec.instance_id] = (table, keys, generation)
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch_listening, name="ssh-ready", daemon=True)
                self._watcher.start()

    def _watch_listening(self) -> None:
        while True:
            with self._lock:
                if not self._awaited:
                    self._watcher = None
                    return
                awaited = dict(self._awaited)
            tables: dict[str, set[str]] = {}
            for instance_id, (table, keys, generation) in awaited.items():
                if table not in tables:
                    try:
                        tables[table] = listening_sockets(table)
                    except OSError:
                        tables[table] = set()  # the machine is gone meanwhile
                ready = bool(keys & tables[table])
                with self._lock:
                    machine = self._machines.get(instance_id)
                    gone = machine is None or machine.generation != generation or machine.process.poll() is not None
                    if gone or ready:
                        self._awaited.pop(instance_id, None)
                if not gone and ready:
                    self._on_ssh_ready(instance_id, generation)
            time.sleep(0.02)

    def freeze(self, instance_id: str, frozen: bool) -> None:
        """Stops (or continues) every process of the machine: the kernel still accepts its TCP
        connections, but nothing in it answers, as with a hung machine or a cut network."""
        with self._lock:
            machine = self._machines.get(instance_id)
        if machine is None or machine.init_pid is None:
            raise HostError(f"{instance_id} has no machine running")
        if not self.full:
            raise HostError("freezing an instance needs the sandbox to run as root")
        namespace = os.readlink(f"/proc/{machine.init_pid}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") == namespace:
                    os.kill(int(entry.name), signal.SIGSTOP if frozen else signal.SIGCONT)
            except OSError:
                pass  # gone meanwhile

    def generation(self, instance_id: str) -> int | None:
        with self._lock:
            machine = self._machines.get(instance_id)
        return machine.generation if machine else None


def _ecs_dmi(outside: Path) -> list[tuple[str, str, str, str]]:
    """Mounts that make the instance's DMI read as an ECS instance's: what cloud-init's ds-identify
    (and this tool) read to know they run on ECS.

    A machine without DMI (many VMs) has no /sys/class/dmi, and sysfs makes no new folder: cover
    /sys/class with a tmpfs holding each of its folders, bound back, and a dmi folder of our own.
    """
    dmi = outside / "dmi" / "id"
    dmi.mkdir(parents=True, exist_ok=True)
    for name, value in (("product_name", ECS_PRODUCT_NAME), ("sys_vendor", "Alibaba Cloud")):
        (dmi / name).write_text(value + "\n")
    mounts = []
    if not Path(SYS_CLASS, "dmi").is_dir():
        original = "/run/pymlsql-sys-class"
        mounts += [(SYS_CLASS, original, "none", "bind,X-mount.mkdir"), ("tmpfs", SYS_CLASS, "tmpfs", "mode=755")]
        mounts += [(f"{original}/{name}", f"{SYS_CLASS}/{name}", "none", "bind,X-mount.mkdir")
                   for name in sorted(os.listdir(SYS_CLASS))]  # fmt: skip
    return [*mounts, (f"{INSIDE_DISK}/dmi", f"{SYS_CLASS}/dmi", "none", "bind,X-mount.mkdir")]


def inside_command(init_pid: int, user: str, argv: list[str], *, workdir: str | None = None,
                   endpoint: str | None = None) -> list[str]:  # fmt: skip
    """`argv` run inside a machine as `user` would: its network, files, hostname and processes.

    Its environment is a fresh session's, with the sandbox's `endpoint` as SSH sessions get it.
    """
    home = "/root" if user == "root" else "/home/" + user
    inner = argv if user == "root" else ["runuser", "-u", user, "--", *argv]
    where = [f"{ENDPOINT_VARIABLE}={endpoint}"] if endpoint else []
    return [
        "nsenter", "-t", str(init_pid), "-m", "-u", "-p", "-n", f"--wdns={workdir or home}",
        "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOME={home}",
        f"USER={user}", *where, *inner,
    ]  # fmt: skip


def machine_pid(state_dir: Path, instance_id: str) -> int | None:
    """The PID of a running machine's PID 1, as its sandbox recorded it, or None."""
    try:
        recorded = (state_dir / "instances" / instance_id / "pids").read_text().split()
    except OSError:
        return None
    if len(recorded) != 2 or not _runs_disk(int(recorded[1]), state_dir / "instances" / instance_id):
        return None
    return int(recorded[1])


def _say_go(process: subprocess.Popen[bytes]) -> None:
    """Tells a booting machine its boot delay is over: it starts sshd."""
    _tell(process, b"go\n")


def _tell(process: subprocess.Popen[bytes], line: bytes) -> None:
    """One line to a booting machine's boot script, which waits for it."""
    try:
        if process.poll() is None and process.stdin is not None:
            process.stdin.write(line)
            process.stdin.flush()
    except (BrokenPipeError, ValueError):
        pass  # halted meanwhile


def _fstab_field(text: str) -> str:
    return text.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def kill_leftovers(state_dir: Path) -> int:
    """Kills machines recorded in `state_dir` whose server died without halting them."""
    killed = 0
    for pids in (state_dir / "instances").glob("*/pids"):
        for pid in pids.read_text().split():
            try:
                if _runs_disk(int(pid), pids.parent):
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
            except (OSError, ValueError):
                pass
        pids.unlink(missing_ok=True)
    return killed


def _runs_disk(pid: int, disk: Path) -> bool:
    """Whether `pid` still is a machine of `disk`: a recorded PID may have been reused since.

    `unshare` keeps the marker in its environment; sshd overwrites its environment with its
    process title, but its mount namespace still has the disk bind-mounted.
    """
    proc = Path(f"/proc/{pid}")
    try:
        if f"{_DISK_MARKER}={disk}".encode() in (proc / "environ").read_bytes():
            return True
        return disk.name in (proc / "mountinfo").read_text()
    except OSError:
        return False
