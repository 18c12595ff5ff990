"""A real one-machine SLURM cluster for the tests of ``--executor slurm`` (tests/test_slurm.py).

Debian's packages (``munge slurmctld slurmd slurm-client slurmdbd mariadb-server``): munged, MariaDB,
slurmdbd, slurmctld and slurmd on localhost, configured in a temporary folder, started by
:func:`slurm_cluster` and stopped when it is left. Accounting (slurmdbd on MariaDB) is part of it: without it
``sacct`` knows no job, and submitit cannot tell a cancelled job from a running one. ``KillWait=2``: a cancelled
job's processes are killed 2 s after its SIGTERM (submitit ignores SIGTERM), not 30 s as by default.

Also here: the unit function that pauses after its round 0, so that a test can cancel its job there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sacctmgr", "sbatch")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
CLUSTER = "lthtest"
START_SECONDS = 60
"""How long each daemon may take to answer before the cluster is given up (a loaded 2-core machine)."""


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run here (packages missing, not root, a daemon that does not start): the reason."""


def missing_reason() -> str | None:
    """Why no cluster can start on this machine, or None where it can be tried."""
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return (
            f"SLURM test cluster: {', '.join(absent)} not installed "
            "(apt-get install munge slurmctld slurmd slurm-client slurmdbd mariadb-server)"
        )
    if os.geteuid() != 0:
        return "SLURM test cluster: its daemons run as root (slurmd starts jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _wait_until(check, what: str, process: subprocess.Popen | None, log: Path | None) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log is not None and log.exists() else ""
    raise ClusterUnavailable(f"SLURM test cluster: {what} did not start\n{tail}")


def _runs(command: list[str], env: dict | None = None) -> bool:
    return subprocess.run(command, capture_output=True, env=env, timeout=30).returncode == 0


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    munge = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    return (
        munge.returncode == 0
        and subprocess.run(["unmunge"], input=munge.stdout, capture_output=True, timeout=10).returncode == 0
    )


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[dict[str, str]]:
    """A running cluster configured under ``root``; yields the environment its clients need (``SLURM_CONF``).
    Every daemon it started is stopped (SIGTERM, then SIGKILL) when it is left; a munged that was already
    running is used and left running. :class:`ClusterUnavailable` where it cannot start."""
    reason = missing_reason()
    if reason:
        raise ClusterUnavailable(reason)
    root = Path(root)
    for name in ("state", "spool", "log", "db", "run"):
        (root / name).mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen] = []

    def start(command: list[str], log: str, **kwargs) -> subprocess.Popen:
        out = open(root / "log" / log, "ab")  # noqa: SIM115 - closed by the process's end
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        out.close()
        started.append(process)
        return process

    try:
        if not _munge_works():
            key = Path("/etc/munge/munge.key")
            if not key.exists():
                key.write_bytes(os.urandom(1024))
                shutil.chown(key, "munge", "munge")
                key.chmod(0o400)
            MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
            MUNGE_SOCKET.parent.chmod(0o755)
            munged = start(["runuser", "-u", "munge", "--", _binary("munged"), "--foreground"], "munged.log")
            _wait_until(_munge_works, "munged", munged, root / "log" / "munged.log")

        db_port, dbd_port, ctld_port, slurmd_port = (_free_port() for _ in range(4))
        db = root / "db"
        subprocess.run(
            [_binary("mariadb-install-db"), f"--datadir={db / 'data'}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        db_socket = db / "mysql.sock"
        mariadbd = start(
            [_binary("mariadbd"), f"--datadir={db / 'data'}", "--user=root", "--bind-address=127.0.0.1",
             f"--port={db_port}", f"--socket={db_socket}", f"--pid-file={db / 'mariadbd.pid'}", "--skip-log-bin",
             "--innodb-buffer-pool-size=64M"],
            "mariadbd.log",
        )  # fmt: skip
        _wait_until(
            lambda: _runs(["mariadb", f"--socket={db_socket}", "-uroot", "-e", "select 1"]),
            "MariaDB", mariadbd, root / "log" / "mariadbd.log",
        )  # fmt: skip

        host = socket.gethostname().split(".")[0]
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        node = " ".join(f for f in node.split() if f.split("=")[0] in ("NodeName", "CPUs", "RealMemory"))
        (root / "slurmdbd.conf").write_text(
            f"AuthType=auth/munge\nDbdHost={host}\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\nSlurmUser=root\n"
            f"LogFile={root / 'log' / 'slurmdbd.log'}\nPidFile={root / 'run' / 'slurmdbd.pid'}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={db_port}\n"
            "StorageUser=root\nStorageLoc=slurm_acct_db\n"
        )
        (root / "slurmdbd.conf").chmod(0o600)
        (root / "slurm.conf").write_text(
            f"ClusterName={CLUSTER}\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld_port}\n"
            f"SlurmdPort={slurmd_port}\nSlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
            "SelectTypeParameters=CR_Core\nReturnToService=2\nMpiDefault=none\nKillWait=2\n"
            "SchedulerType=sched/backfill\nJobCompType=jobcomp/none\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
            f"AccountingStoragePort={dbd_port}\nJobAcctGatherType=jobacct_gather/linux\n"
            f"StateSaveLocation={root / 'state'}\nSlurmdSpoolDir={root / 'spool'}\n"
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={root / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}\nSlurmdLogFile={root / 'log' / 'slurmd.log'}\n"
            f"{node} State=UNKNOWN\nPartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        )
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        slurmdbd = start([_binary("slurmdbd"), "-D"], "slurmdbd.out", env=env)
        _wait_until(lambda: _runs(["sacctmgr", "-n", "list", "cluster"], env), "slurmdbd", slurmdbd,
                    root / "log" / "slurmdbd.log")  # fmt: skip
        user = os.environ.get("USER") or "root"
        for command in (
            ["add", "cluster", CLUSTER],
            ["add", "account", "tests", f"Cluster={CLUSTER}"],
            ["add", "user", user, "Account=tests", f"Cluster={CLUSTER}"],
        ):
            subprocess.run(["sacctmgr", "-i", *command], capture_output=True, env=env, timeout=30)
        slurmctld = start([_binary("slurmctld"), "-D", "-i"], "slurmctld.out", env=env)
        _wait_until(lambda: _runs(["scontrol", "ping"], env), "slurmctld", slurmctld, root / "log" / "slurmctld.log")
        slurmd = start([_binary("slurmd"), "-D"], "slurmd.out", env=env)

        def node_idle() -> bool:
            states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=30)
            return states.stdout.strip() in ("idle", "mix", "alloc")

        _wait_until(node_idle, "slurmd", slurmd, root / "log" / "slurmd.log")
        try:
            yield {"SLURM_CONF": env["SLURM_CONF"]}
        finally:
            _drain(env)
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)


def _drain(env: dict) -> None:
    """Cancel every job still queued and wait (a minute at most) until none is listed: a job's ``slurmstepd``
    outlives the daemons stopped under it, retrying forever to report the job's end to them."""
    queued = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, env=env, timeout=30)
    jobs = queued.stdout.split()
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, env=env, timeout=30)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env=env, timeout=30)
        if listed.returncode != 0 or not listed.stdout.strip():
            return
        time.sleep(0.5)


PAUSED = "paused_once"
"""The file a paused unit writes (its SLURM job id, ``ARRAY_TASK`` in a job array: scancel does not know an array
task by its own job id) when it pauses, the first time only."""


def imp_seed_paused_after_round_0(config, directory: Path, log, progress) -> dict:
    """The IMP unit, which the first time it runs pauses as soon as its round 0 is finished: it writes its SLURM job
    to :data:`PAUSED` and waits (two minutes at most: a test that never cancels it fails rather than hangs)."""
    from lth_sparse.pipelines.imp_rounds import imp_seed

    marker = directory / PAUSED

    def pausing_log(line: str) -> None:
        log(line)
        if (directory / "round_00" / "done.json").exists() and not marker.exists():
            array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
            marker.write_text(f"{array}_{task}" if array else os.environ.get("SLURM_JOB_ID", "none"))
            time.sleep(120)
            raise TimeoutError("the paused unit was not cancelled")

    return imp_seed(config, directory, pausing_log, progress)
