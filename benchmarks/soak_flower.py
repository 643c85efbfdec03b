"""Soak and restart of the Flower deployment: an undisturbed tiny federation, then the same one with
SuperNodes SIGKILLed (their process group) and restarted every few rounds and the ServerApp
SIGKILLed mid-round and the run restarted on the same run_dir. Prints one JSON object: whether
every global is byte-identical between the two, the ServerApp's peak RSS and the wall time per
round, and the processes and temporary files either run left behind.

    python benchmarks/soak_flower.py [--rounds 20] [--clients 3] [--node-kill-every 3] \
        [--server-kill-rounds 7,14] [--out runs/soak_flower]

Needs the Flower environment (scripts/flower_env.sh). Each run is scripts/flower_local.sh (one
SuperLink, one SuperNode per client, free ports of 127.0.0.1), with federation.min_clients =
num_clients: a client lost in a round fails the run there (no round goes on without it), and the
run is restarted, resuming from its run_dir. A SuperNode is killed once its upload of the round is
written and restarted at once with its own command line (same key, so the same node id). The
ServerApp (``flwr-serverapp``, the SuperLink's superexec child) is killed once the round's first
upload is written; the deployment then stops (``flower_local.sh`` exits 1, or is sent TERM) and is
started again. The tiny model and data are built under --out (tests/conftest.py's builders).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import build_tiny_model, tiny_config_dict, write_tiny_data  # noqa: E402

POLL = 0.1
TAG = "SUPERMASK_SOAK_TAG"  # every process of a run inherits it: how leftovers are found
EXIT_WAIT = 90.0  # seconds flower_local.sh gets to end by itself after its ServerApp was killed


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def carries(pid: int, tag: str) -> bool:
    """Whether live process ``pid`` has ``TAG=tag`` in its environment."""
    try:
        return f"{TAG}={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def tagged(tag: str) -> dict[int, str]:
    """pid -> command line of every live process whose environment holds ``TAG=tag``."""
    found, needle = {}, f"{TAG}={tag}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # gone, or not ours
            continue
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB; (0, 0) when it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0, 0
    values = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


def kill_group(pgid: int, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Deployment:
    """One run of a config through flower_local.sh, restarted until it completes; measures each round."""

    def __init__(self, config: Path, run_dir: Path, rounds: int, clients: int, args, disturb: bool) -> None:
        self.config, self.run_dir, self.rounds, self.clients = config, run_dir, rounds, clients
        self.args, self.disturb = args, disturb
        self.tag = uuid.uuid4().hex
        self.tmpdir = run_dir.parent / f"{run_dir.name}.tmpdir"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, TAG: self.tag, "TMPDIR": str(self.tmpdir), "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        every = args.node_kill_every
        self.node_kills = {r: (r // every) % clients for r in range(every - 1, rounds, every)} if disturb and every else {}
        self.server_kills = set(args.server_kill_rounds) if disturb else set()
        self.events: list[dict] = []
        self.rss: dict[int, dict] = {}  # round -> {"peak_rss_kb", "hwm_kb", "server_pid"}
        self.attempts = 0
        self._server: int | None = None

    def _round_done(self, rnd: int) -> bool:
        return (self.run_dir / f"round_{rnd + 1:03d}" / "global.safetensors").exists()

    def _uploads(self, rnd: int) -> list[str]:
        folder = self.run_dir / f"round_{rnd:03d}" / "clients"
        return sorted(p.name for p in folder.glob("client_*.safetensors")) if folder.is_dir() else []

    def _server_pid(self) -> int | None:
        """The ServerApp's pid; the /proc scan runs only when the last one found is gone, so a poll
        stays fast enough to see a round's uploads before its global."""
        if self._server is not None and carries(self._server, self.tag):  # a zombie's environ reads empty
            return self._server
        pids = [p for p, cmd in tagged(self.tag).items() if "flwr-serverapp" in cmd]
        self._server = pids[0] if pids else None
        return self._server

    def _carry_forward(self, rnd: int) -> None:
        """A planned kill whose round ended between two polls (uploads and global landed at once on a
        loaded machine) moves to the current round, so every planned disturbance happens once."""
        for r in [r for r in self.node_kills if r < rnd]:
            victim = self.node_kills.pop(r)
            self.node_kills.setdefault(rnd, victim)
        if any(r < rnd for r in self.server_kills):
            self.server_kills = {r for r in self.server_kills if r >= rnd} | {rnd}

    def _restart_node(self, client: int, restarted: list[int]) -> None:
        pid_file = self.run_dir / "flower" / "pids" / f"supernode_{client}.pid"
        pgid = int(pid_file.read_text())
        argv = cmdline(pgid)
        kill_group(pgid)
        log = open(self.run_dir / "flower" / "logs" / f"supernode_{client}.restart{len(self.events)}.log", "w")
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        pid_file.write_text(f"{proc.pid}\n")
        restarted.append(proc.pid)

    def attempt(self) -> int:
        """One flower_local.sh, disturbed as planned; returns its exit status."""
        self.attempts += 1
        cmd = [str(REPO / "scripts" / "flower_local.sh"), "--config", str(self.config), "--set",
               f"run_dir={self.run_dir}", "--round-timeout", str(self.args.round_timeout)]
        log = open(self.run_dir.parent / f"{self.run_dir.name}.attempt{self.attempts}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        restarted: list[int] = []
        killed_server_at = None
        try:
            while proc.poll() is None:
                rnd = next((r for r in range(self.rounds) if not self._round_done(r)), self.rounds)
                pid = self._server_pid()
                if pid is not None and rnd < self.rounds:
                    rss, hwm = memory_kb(pid)
                    row = self.rss.setdefault(rnd, {"peak_rss_kb": 0, "hwm_kb": 0, "server_pid": pid})
                    if rss:
                        row.update(peak_rss_kb=max(row["peak_rss_kb"], rss), hwm_kb=hwm, server_pid=pid)
                uploads = self._uploads(rnd) if rnd < self.rounds else []
                self._carry_forward(rnd)
                victim = self.node_kills.get(rnd)
                if victim is not None and f"client_{victim:03d}.safetensors" in uploads:
                    del self.node_kills[rnd]
                    self._restart_node(victim, restarted)
                    self.events.append({"round": rnd, "event": f"SuperNode {victim} SIGKILLed and restarted",
                                        "attempt": self.attempts, "uploads_then": len(uploads)})
                if rnd in self.server_kills and uploads and pid is not None:
                    self.server_kills.discard(rnd)
                    os.kill(pid, signal.SIGKILL)
                    killed_server_at = time.monotonic()
                    self.events.append({"round": rnd, "event": "ServerApp SIGKILLed", "attempt": self.attempts,
                                        "uploads_then": len(uploads)})
                if killed_server_at is not None and time.monotonic() - killed_server_at > EXIT_WAIT:
                    self.events.append({"round": rnd, "event": "flower_local.sh sent TERM", "attempt": self.attempts})
                    kill_group(proc.pid, signal.SIGTERM, wait=30.0)
                time.sleep(POLL)
        finally:
            if proc.poll() is None:
                kill_group(proc.pid, signal.SIGTERM, wait=30.0)
            proc.wait()
            for pgid in restarted:
                kill_group(pgid, signal.SIGTERM)
        return proc.returncode

    def run(self) -> float:
        start = time.perf_counter()
        while self.attempt() != 0:
            if self.attempts >= self.args.max_attempts:
                sys.exit(f"soak_flower: {self.run_dir}: no completed run after {self.attempts} attempts "
                         f"(see {self.run_dir}/flower/logs)")
        return time.perf_counter() - start

    def report(self) -> dict:
        walls: dict[int, float] = {}
        log = self.run_dir / "flower" / "rounds.jsonl"
        for row in map(json.loads, log.read_text().splitlines()):
            walls[row["round"]] = row["wall_s"]  # a resumed round's line is its last attempt's
        rows = [{"round": r, "wall_s": round(walls.get(r, float("nan")), 2),
                 "server_peak_rss_mib": round(self.rss.get(r, {}).get("peak_rss_kb", 0) / 1024, 1),
                 "server_hwm_mib": round(self.rss.get(r, {}).get("hwm_kb", 0) / 1024, 1),
                 "server_pid": self.rss.get(r, {}).get("server_pid")} for r in range(self.rounds)]
        return {"attempts": self.attempts, "events": self.events, "rounds": rows}


def leftovers(dep: Deployment, wait: float = 15.0) -> dict:
    """What a finished run left: its processes (after ``wait`` seconds' grace), temporary files in
    its run_dir, and anything in the TMPDIR its processes were given."""
    deadline = time.monotonic() + wait
    while tagged(dep.tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    temps = [str(p.relative_to(dep.run_dir)) for p in dep.run_dir.rglob("*")
             if p.is_file() and (p.name.startswith(".tmp-") or p.suffix in (".tmp", ".part"))]
    return {"processes": sorted(tagged(dep.tag).values()), "temp_files": sorted(temps),
            "tmpdir_entries": sorted(p.name for p in dep.tmpdir.iterdir())}


def slope(rows: list[dict], key: str) -> float:
    """Least-squares slope of ``key`` against the round number (per round)."""
    xs, ys = [r["round"] for r in rows], [r[key] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--node-kill-every", type=int, default=3, help="kill a SuperNode in every Nth round (0: never)")
    parser.add_argument("--server-kill-rounds", default="7,14", help="rounds whose ServerApp is killed mid-round")
    parser.add_argument("--round-timeout", type=float, default=120.0)
    parser.add_argument("--max-attempts", type=int, default=8)
    parser.add_argument("--out", default="runs/soak_flower")
    args = parser.parse_args()
    args.server_kill_rounds = [int(r) for r in args.server_kill_rounds.split(",") if r.strip()]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model").mkdir(exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    model, data = build_tiny_model(out / "model"), write_tiny_data(out / "data")
    raw = tiny_config_dict(out / "unused", model, data, "threshold")
    raw["federation"].update(num_clients=args.clients, rounds=args.rounds, min_clients=args.clients)
    config = out / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    tmp_before = set(os.listdir("/tmp"))

    result: dict = {"rounds": args.rounds, "clients": args.clients, "node_kill_every": args.node_kill_every,
                    "server_kill_rounds": args.server_kill_rounds}
    deps = {}
    for name, disturb in (("undisturbed", False), ("disturbed", True)):
        dep = Deployment(config, out / name, args.rounds, args.clients, args, disturb)
        total = dep.run()
        deps[name] = dep
        rep = dep.report()
        rows = rep["rounds"]
        result[name] = {"total_s": round(total, 1), **rep, "leftovers": leftovers(dep),
                        "wall_s_slope_per_round": round(slope(rows[1:], "wall_s"), 3),
                        "server_peak_rss_mib_min_max": [min(r["server_peak_rss_mib"] for r in rows),
                                                        max(r["server_peak_rss_mib"] for r in rows)]}
    result["globals_identical"] = {
        r: sha(deps["undisturbed"].run_dir / f"round_{r:03d}" / "global.safetensors")
        == sha(deps["disturbed"].run_dir / f"round_{r:03d}" / "global.safetensors") for r in range(args.rounds + 1)}
    result["final_global_identical"] = result["globals_identical"][args.rounds]
    result["final_global_sha256"] = sha(deps["disturbed"].run_dir / f"round_{args.rounds:03d}" / "global.safetensors")
    result["new_tmp_entries"] = sorted(set(os.listdir("/tmp")) - tmp_before)  # other users' too: informational
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
