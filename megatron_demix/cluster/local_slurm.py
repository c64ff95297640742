"""A real one-node SLURM cluster on this machine, for the demo and the tests.

    python -m megatron_demix.cluster.local_slurm start    # idempotent; prints the state
    python -m megatron_demix.cluster.local_slurm stop     # stops what `start` started, by PID

Debian's slurmctld/slurmd/munge (installed by scripts/bootstrap.sh), one node named after
`hostname -s`, CPUs from `nproc` (or more, to run several-rank jobs on few cores), no cgroups, no
accounting (use squeue / scontrol, not sacct). Needs root: the daemons run as root, as on the
machines this project is developed on. The reasons for the settings are comments in `slurm_conf`.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from megatron_demix.runtime.errors import FAILED

SLURM_CONF = Path("/etc/slurm/slurm.conf")
PID_FILES = {
    "slurmd": Path("/run/slurmd.pid"),
    "slurmctld": Path("/run/slurmctld.pid"),
    "munged": Path("/run/munge/munged.pid"),
}
STATE_DIRS = ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm")
MUNGE_DIRS = ("/run/munge", "/var/lib/munge", "/var/log/munge")
STARTED_MARK = Path("/run/demix-local-slurm.started")
"""Lists the daemons `start` launched, so `stop` ends only those."""
START_LOCK = Path("/run/demix-local-slurm.lock")
"""Held while `start` runs: one start at a time (parallel test workers, two `make demo`s)."""


class LocalSlurmError(RuntimeError):
    exit_status = FAILED


def slurm_conf(cpus: int) -> str:
    node = socket.gethostname().split(".")[0]
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    real_memory = int(mem_kib / 1024 * 0.9)
    # More CPUs than cores (to run several-rank jobs on a small machine) needs config_overrides, or the node goes INVAL.
    overrides = "SlurmdParameters=config_overrides\n" if cpus > os.cpu_count() else ""
    return f"""# Written by megatron_demix.cluster.local_slurm: a one-node cluster for the demo and tests.
ClusterName=demix
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No cgroups in a container: track processes by /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
# A job asking for more than the node has is refused by sbatch at once instead of pending forever.
EnforcePartLimits=ALL
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile={PID_FILES['slurmctld']}
SlurmdPidFile={PID_FILES['slurmd']}
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
InactiveLimit=0
# SIGTERM to SIGKILL on scancel / requeue / time limit: the ranks' save-on-SIGTERM must fit (real sites: 30 s+).
KillWait=5
MinJobAge=300
{overrides}NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise LocalSlurmError(f"timed out after {timeout:.0f}s waiting for {what}; see /var/log/slurm/")
        time.sleep(0.1)


def _ok(*cmd: str, shell: bool = False) -> bool:
    return subprocess.run(cmd[0] if shell else list(cmd), shell=shell, capture_output=True).returncode == 0


def is_running() -> bool:
    """True when a cluster answers (`sinfo` shows a usable node)."""
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s.strip().rstrip("*") in ("idle", "mixed", "allocated") for s in out.stdout.split())


def start(cpus: int | None = None) -> bool:
    """Start munge, slurmctld and slurmd unless a cluster already answers; returns True if it started any.
    Callers in other processes wait on a lock and then find the cluster running."""
    if is_running():
        return False
    if os.geteuid() != 0:
        raise LocalSlurmError("the local SLURM cluster needs root (daemons and /etc/slurm); run as root or use cluster.executor: local")
    with open(START_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return False if is_running() else _start_daemons(cpus)


def _start_daemons(cpus: int | None) -> bool:
    for binary in ("slurmctld", "slurmd", "munged"):
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
            raise LocalSlurmError(f"{binary} is not installed: run `bash scripts/bootstrap.sh` (installs slurmctld slurmd slurm-client munge)")
    started = []
    for d in (*STATE_DIRS, *MUNGE_DIRS):
        Path(d).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "munge:munge", *MUNGE_DIRS], check=True)
    if not _alive(PID_FILES["munged"]):
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
        started.append("munged")
    _wait_until(lambda: _ok("munge -n | unmunge", shell=True), "munged")
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf(cpus or max(4, os.cpu_count() or 1)))
    if not _alive(PID_FILES["slurmctld"]):
        subprocess.run(["slurmctld", "-c"], check=True)
        started.append("slurmctld")
    if not _alive(PID_FILES["slurmd"]):
        subprocess.run(["slurmd"], check=True)
        started.append("slurmd")
    STARTED_MARK.write_text(" ".join(started))
    _wait_until(is_running, "the node to become idle in sinfo")
    probe = subprocess.run(["timeout", "60", "srun", "-n1", "-t1", "true"], capture_output=True, text=True)
    if probe.returncode:
        raise LocalSlurmError(f"the cluster started but `srun true` failed: {probe.stderr.strip()}")
    return True


def stop() -> None:
    """Stop the daemons `start` launched (by PID, slurmd first), then wait until they are gone."""
    started = STARTED_MARK.read_text().split() if STARTED_MARK.exists() else []
    for name in ("slurmd", "slurmctld", "munged"):
        if name not in started:
            continue
        pid = _alive(PID_FILES[name])
        if pid:
            os.kill(pid, signal.SIGTERM)
            _wait_until(lambda: _alive(PID_FILES[name]) != pid, f"{name} (pid {pid}) to exit")
    STARTED_MARK.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--cpus", type=int, default=None, help="CPUs the node advertises (default: max(4, nproc))")
    args = parser.parse_args(argv)
    if args.action == "start":
        print("started" if start(args.cpus) else "already running")
    elif args.action == "stop":
        stop()
        print("stopped")
    print("running" if is_running() else "not running")


if __name__ == "__main__":
    main()
