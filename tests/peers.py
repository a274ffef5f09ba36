"""Real peers for engine tests, started here and stopped afterwards: a second dockerd on a
loopback TCP port, a registry (Debian's docker-registry), a Podman service (Docker-compatible
API on a unix socket) and an sshd that lets `DOCKER_HOST=ssh://root@127.0.0.1:PORT` reach the
local engine. `scripts/engine` installs what they need.

Each peer is a context manager (`*_running`) plus a module-scoped fixture of the same name
without the suffix; a test module uses them with

    from peers import podman_service, registry, second_engine, sshd_engine  # noqa: F401
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

STAND_INS = ("busybox:latest", "golang:1.19")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60, unix_socket: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if unix_socket is None:
                with urllib.request.urlopen(url, timeout=2):
                    return
            else:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(2)
                    sock.connect(unix_socket)
                    sock.sendall(f"GET {url} HTTP/1.0\r\nHost: d\r\n\r\n".encode())
                    if sock.recv(64).startswith(b"HTTP/1."):
                        return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the parent pid follows the last ')'.
        found[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line holds `text` (a peer's temp folder names all its processes)."""
    return [pid for pid, (_, cmdline) in _processes().items() if text in cmdline and pid != os.getpid()]


def _with_descendants(roots: set[int]) -> set[int]:
    table = _processes()
    found = set(roots) & set(table)
    grew = True
    while grew:
        more = {pid for pid, (parent, _) in table.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found


def _kill_all(pids: set[int], timeout: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in pids):
        time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _unmount_under(root: Path) -> None:
    """Overlay and shm mounts that Podman left below `root`, deepest first."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m == str(root) or m.startswith(f"{root}/")), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _runc_states(root: Path, pids: set[int]) -> list[dict[str, Any]]:
    """runc's records (in /run/runc, shared by every Podman) of the containers and build
    steps that belong to us: bundle in our folder, or process among ours."""
    if shutil.which("runc") is None:
        return []
    listed = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, text=True)
    try:
        states = json.loads(listed.stdout or "null") or []
    except ValueError:
        return []
    return [s for s in states if str(s.get("bundle", "")).startswith(f"{root}/") or s.get("pid") in pids]


def _forget_runc_states(states: list[dict[str, Any]]) -> None:
    """A container or build step killed with its service stays in `runc list`, forever."""
    for state in states:
        subprocess.run(["runc", "delete", "--force", str(state["id"])], capture_output=True)


def _remove_tree(root: Path, attempts: int = 20) -> None:
    """rmtree, again while a dying process still writes into `root`."""
    for _ in range(attempts):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.1)


# --- a second dockerd ------------------------------------------------------------------

_TLS_FOLDERS: dict[str, Path] = {}


def tls_folder(host: str) -> Path:
    """The DOCKER_CERT_PATH of a second engine started with `tls=True`."""
    return _TLS_FOLDERS[host]


def _wait_ping(host: str, timeout: float = 60) -> None:
    """Until the engine at `host` answers /_ping (over TLS: the port opens before the API serves)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            engine_client(host).ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def engine_client(host: str) -> Any:
    """The SDK's client of a second engine (with its TLS files, and deaf to REQUESTS_CA_BUNDLE,
    which would replace its CA: docker-py#2433)."""
    import docker

    if host not in _TLS_FOLDERS:
        return docker.APIClient(base_url=host, version="auto")
    certs = _TLS_FOLDERS[host]
    client = docker.APIClient(base_url=host, version="1.41", tls=docker.tls.TLSConfig(
        client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")), ca_cert=str(certs / "ca.pem"), verify=True))
    client.trust_env = False
    return client



def engine_certificates(folder: Path) -> None:
    """What `docker` and dockerd read for TLS, as Docker's "protect the daemon socket" guide
    makes them (openssl): ca.pem, server-cert.pem and server-key.pem for 127.0.0.1, and the
    client's cert.pem and key.pem (DOCKER_CERT_PATH)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=compimg test CA")
    server_usage = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    for name, subject, usage in (("server", "/CN=127.0.0.1", server_usage),
                                 ("client", "/CN=client", "extendedKeyUsage=clientAuth")):
        (folder / f"{name}.ext").write_text(usage + "\n")
        key, cert = ("server-key.pem", "server-cert.pem") if name == "server" else ("key.pem", "cert.pem")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", f"{name}.csr", "-subj", subject)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-out", cert, "-days", "1", "-extfile", f"{name}.ext")


@contextlib.contextmanager
def second_engine_running(api: Any, images: tuple[str, ...] = STAND_INS, *, tls: bool = False) -> Iterator[str]:
    """A second dockerd on tcp://127.0.0.1:PORT with its own data, exec root and pid file,
    holding copies of `images` from `api`'s engine; yields its DOCKER_HOST. `tls`: it verifies
    clients (--tlsverify) with the files `engine_certificates` makes in `certs/` beside its
    data (the yielded host's DOCKER_CERT_PATH is `tls_folder(host)`)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        pytest.fail("a second engine needs dockerd and root (scripts/engine installs it)")
    root = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))  # short: dockerd's socket paths are limited
    port = free_port()
    host = f"tcp://127.0.0.1:{port}"
    certs = root / "certs"
    tls_args: list[str] = []
    if tls:
        engine_certificates(certs)
        tls_args = ["--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "server-cert.pem"),
                    "--tlskey", str(certs / "server-key.pem")]
        _TLS_FOLDERS[host] = certs
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [dockerd, "--host", host, "--data-root", str(root / "data"), "--exec-root", str(root / "x"),
         "--pidfile", str(root / "pid"), "--bridge=none", "--iptables=false", "--ip-masq=false",
         "--ip6tables=false", *tls_args], stdout=log, stderr=subprocess.STDOUT)
    try:
        if tls:
            wait_port(port)
            _wait_ping(host)
        else:
            wait_http(f"http://127.0.0.1:{port}/_ping")

        remote = engine_client(host)
        for ref in images:
            remote.load_image(b"".join(api.get_image(ref)))
        remote.close()
        yield host
    finally:
        _TLS_FOLDERS.pop(host, None)
        stop_process(process)
        log.close()
        _kill_all(_with_descendants(set(processes_mentioning(str(root)))))  # its containerd, shims
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


# --- a registry ------------------------------------------------------------------------


@contextlib.contextmanager
def registry_running() -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:PORT (plain HTTP); yields `127.0.0.1:PORT`."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("Debian's docker-registry is missing (scripts/engine installs it)")
    root = Path(tempfile.mkdtemp(prefix="compimg-registry-"))
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/")
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


# --- a Podman service ------------------------------------------------------------------

# Found necessary in this container-like environment: the default ulimits Podman asks for
# are above what we may set, systemd is not there for cgroups nor journald for events.
# tmp_dir moves Podman's run state (normally /run/libpod, shared with any system Podman)
# into our folder; image_copy_tmp_dir (and TMPDIR) its pushes' digest files and build
# steps' bundles (normally /var/tmp, left there when the service is killed).
_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{root}/tmp"
image_copy_tmp_dir = "{root}/tmp"
"""

# Short names resolve against docker.io only; loopback registries speak plain HTTP.
_REGISTRIES_CONF = """\
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
"""
_INSECURE_REGISTRY = """
[[registry]]
location = "{location}"
insecure = true
"""

_STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/storage"
runroot = "{root}/run"
"""


@dataclass(frozen=True)
class PodmanPeer:
    docker_host: str  # unix:///tmp/.../podman.sock
    root: Path
    env: dict[str, str] = field(default_factory=dict)  # for the `podman` CLI on the same storage

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The podman CLI on this service's storage (for what the compatible API cannot do)."""
        return subprocess.run(["podman", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                               *args], env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)


def load_into_podman(api: Any, podman_api: Any, refs: tuple[str, ...]) -> None:
    """Copy images from the Docker engine into Podman under Docker's own names.

    Podman names a loaded `busybox:latest` `localhost/busybox:latest`, and a build's
    `FROM busybox:latest` then still works (local lookup), but `docker.io/library/busybox`
    and the names that images/inspect report would differ from Docker's: so the image is
    tagged `docker.io/library/<name>` and the `localhost/` name is removed."""
    for ref in refs:
        podman_api.load_image(b"".join(api.get_image(ref)))
        repository, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        local = f"localhost/{repository}:{tag}"
        full = repository if "/" in repository else f"library/{repository}"
        podman_api.tag(local, f"docker.io/{full}", tag)
        podman_api.remove_image(local)


@contextlib.contextmanager
def podman_running(api: Any, images: tuple[str, ...] = STAND_INS,
                   insecure_registries: tuple[str, ...] = ()) -> Iterator[PodmanPeer]:
    """`podman system service` on a unix socket, with its own storage, run state and
    configuration in a temp folder, holding `images` copied from `api`'s engine."""
    binary = shutil.which("podman")
    if binary is None or os.geteuid() != 0:
        pytest.fail("a Podman service needs podman and root (scripts/engine installs it)")
    root = Path(tempfile.mkdtemp(prefix="cxp-", dir="/tmp"))  # short: unix socket paths are limited
    (root / "tmp").mkdir()
    (root / "containers.conf").write_text(_CONTAINERS_CONF.format(root=root))
    (root / "registries.conf").write_text(
        _REGISTRIES_CONF + "".join(_INSECURE_REGISTRY.format(location=r) for r in insecure_registries))
    (root / "storage.conf").write_text(_STORAGE_CONF.format(root=root))
    env = {"CONTAINERS_CONF": str(root / "containers.conf"),
           "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
           "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"), "TMPDIR": str(root / "tmp")}
    sock = root / "podman.sock"
    log = open(root / "podman.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [binary, "--root", str(root / "storage"), "--runroot", str(root / "run"), "system", "service",
         "--time=0", f"unix://{sock}"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        wait_http("/_ping", unix_socket=str(sock))
        import docker

        podman_api = docker.APIClient(base_url=f"unix://{sock}", version="auto")
        load_into_podman(api, podman_api, images)
        podman_api.close()
        yield PodmanPeer(f"unix://{sock}", root, env)
    finally:
        # Build steps (buildah-oci-runtime and its children) are the service's descendants;
        # containers run under conmon, which detaches but names our folder.
        doomed = _with_descendants({process.pid, *processes_mentioning(str(root))})
        states = _runc_states(root, doomed)
        stop_process(process, timeout=15)
        log.close()
        _kill_all(_with_descendants(doomed | set(processes_mentioning(str(root)))))
        _forget_runc_states(states + _runc_states(root, set()))
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


# --- an sshd ---------------------------------------------------------------------------


_SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {root}/host_key
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# Our files live under /tmp (world-writable), which strict modes refuse.
StrictModes no
LogLevel VERBOSE
"""

_CLIENT_CONFIG = """\
Host 127.0.0.1
    IdentityFile {home}/.ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile {home}/.ssh/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
"""


@dataclass(frozen=True)
class SshPeer:
    """What a client needs to reach the local engine through our sshd."""

    docker_host: str  # ssh://root@127.0.0.1:PORT
    port: int
    env: dict[str, str]  # HOME (paramiko reads ~/.ssh from it) and PATH (an `ssh` that reads our config)
    root: Path


def _ssh_keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "compimg-test", "-f", str(path)],
                   check=True, capture_output=True)


def ssh_client_files(root: Path, port: int, host_public_key: str) -> dict[str, str]:
    """A client home under `root` that trusts the host key and holds the client key.

    Paramiko (the SDK's default transport) takes ~/.ssh/config, the keys it looks for
    and ~/.ssh/known_hosts from $HOME. OpenSSH's `ssh` ignores $HOME (it uses the passwd
    entry's home), so for the SDK's `use_ssh_client=True` an `ssh` wrapper first on PATH
    adds `-F` with our config."""
    home = root / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    _ssh_keygen(ssh_dir / "id_ed25519")
    (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public_key}\n")
    (ssh_dir / "config").write_text(_CLIENT_CONFIG.format(home=home))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {ssh_dir / "config"} "$@"\n')
    wrapper.chmod(0o755)
    return {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


@contextlib.contextmanager
def sshd_running() -> Iterator[SshPeer]:
    """Debian's sshd on 127.0.0.1:PORT with a throwaway host key, letting root in with a
    throwaway client key only; the remote side's `docker system dial-stdio` reaches the
    local engine. Yields the DOCKER_HOST and the client environment."""
    sshd = "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ssh-keygen") is None or os.geteuid() != 0:
        pytest.fail("an sshd needs openssh-server and root (scripts/engine installs it)")
    root = Path(tempfile.mkdtemp(prefix="compimg-sshd-"))
    port = free_port()
    _ssh_keygen(root / "host_key")
    host_public = " ".join((root / "host_key.pub").read_text().split()[:2])
    env = ssh_client_files(root, port, host_public)
    client_public = (root / "home/.ssh/id_ed25519.pub").read_text()
    (root / "authorized_keys").write_text(client_public)
    (root / "authorized_keys").chmod(0o600)
    (root / "sshd_config").write_text(_SSHD_CONFIG.format(port=port, root=root))
    # sshd's privilege separation needs this empty folder; the package makes it only at boot.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port)
        yield SshPeer(f"ssh://root@127.0.0.1:{port}", port, env, root)
    finally:
        # Sessions (sshd children, dial-stdio) die with their connection; make sure. A
        # connection that arrives meanwhile re-executes sshd (its command line names our
        # folder), which then writes to the log in our folder after we emptied it: so kill
        # by folder too, and remove the folder until it stays removed.
        doomed = _with_descendants({process.pid})
        stop_process(process, timeout=10)
        _kill_all(_with_descendants(doomed | set(processes_mentioning(str(root)))))
        _remove_tree(root)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_engine(api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with second_engine_running(api) as host:
        yield host


@pytest.fixture(scope="module")
def tls_engine(api) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with second_engine_running(api, tls=True) as host:
        yield host


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    with registry_running() as address:
        yield address


@pytest.fixture(scope="module")
def podman_service(api, registry) -> Iterator[PodmanPeer]:  # type: ignore[no-untyped-def]
    with podman_running(api, insecure_registries=(registry,)) as peer:
        yield peer


@pytest.fixture(scope="module")
def sshd_engine() -> Iterator[SshPeer]:
    with sshd_running() as peer:
        yield peer
