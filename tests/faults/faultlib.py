"""Shared pieces of the fault tests (crash, outage, soak): the tally binary, servers, a
keep-alive HTTP client, the workload of unique idempotency keys with its outcome log, the
PostgreSQL helpers and the database checks.

Python 3.11 standard library only (CI installs nothing for these tests).
"""

from __future__ import annotations

import datetime as dt
import glob
import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PROBLEM_JSON = "application/problem+json"
PG_HOST = os.environ.get("FAULTS_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("FAULTS_PG_PORT", "5432")
PG_USER = os.environ.get("FAULTS_PG_USER", "postgres")

# The plan every fault test uses: a HARD counter (its limit lowered per tenant by overrides,
# so tenants reach it at different moments of the run), a SOFT counter that is passed, and an
# unlimited NONE counter with a daily period.
HARD_METRIC = "api_calls"
PLAN_CODE = "faults"
PLAN = {
    "name": "Fault tests",
    "limits": [
        {"metric_code": HARD_METRIC, "limit": 3000, "enforcement": "hard", "period": "month"},
        {"metric_code": "storage_bytes", "limit": 5000, "enforcement": "soft", "period": "month"},
        {"metric_code": "exports", "limit": None, "enforcement": "none", "period": "day"},
    ],
}


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------
class Fail(Exception):
    """An assertion of a fault test failed (exit 1)."""


def log(tag: str, msg: str) -> None:
    print(f"== faults/{tag}: {msg}", file=sys.stderr, flush=True)


def now_ms() -> float:
    return time.monotonic() * 1000.0


def random_hex(n: int) -> str:
    return secrets.token_hex(n)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# The tally binary
# ------------------------------------------------------------------------------------------
def tally_bin(release: bool = False, tag: str = "faults") -> Path:
    """TALLY_BIN when set (used as it is), else target/{debug,release}/tally, built with cargo
    (a no-op when it is fresh)."""
    env = os.environ.get("TALLY_BIN")
    if env:
        path = Path(env)
        if not path.is_absolute():
            path = ROOT / path
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        if not target.is_absolute():
            target = ROOT / target
        cmd = ["cargo", "build", "-p", "tally-cli", "--bin", "tally"] + (["--release"] if release else [])
        log(tag, " ".join(cmd))
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=sys.stderr)
        path = target / ("release" if release else "debug") / "tally"
    if not os.access(path, os.X_OK):
        raise SystemExit(f"faults: no tally binary at {path}")
    return path


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for tally processes: no TALLY_* of the caller may leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


class Server:
    """One `tally serve` process at a time on one database; restartable. Its address (a new
    port on every start) and its generation (1, 2, ... one per start) are read by the clients
    under a condition variable, so that they can wait for the next start after a kill."""

    LISTEN_RE = re.compile(r"listening on http://([0-9.]+):([0-9]+)")

    def __init__(self, binary: Path, db_url: str, workdir: Path, admin_key: str, tag: str,
                 env: dict[str, str] | None = None):
        self.binary = binary
        self.db_url = db_url
        self.workdir = workdir
        self.admin_key = admin_key
        self.tag = tag
        self.extra_env = env or {}
        self.cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.gen = 0
        self.up = False
        self.start_seconds: list[float] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        logpath = self.workdir / f"serve.{self.gen + 1}.log"
        t0 = time.monotonic()
        with open(logpath, "wb") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "serve", "--listen", "127.0.0.1:0", "--admin-key", self.admin_key],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=clean_env({"TALLY_DATABASE_URL": self.db_url, **self.extra_env}),
            )
        deadline = t0 + timeout
        while True:
            text = logpath.read_text(errors="replace")
            m = self.LISTEN_RE.search(text)
            if m:
                break
            if self.proc.poll() is not None:
                raise Fail(f"tally serve exited ({self.proc.returncode}) before listening; log {logpath}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise Fail(f"tally serve did not listen within {timeout:.0f} s; log {logpath}")
            time.sleep(0.02)
        self.start_seconds.append(time.monotonic() - t0)
        with self.cond:
            self.host, self.port = m.group(1), int(m.group(2))
            self.gen += 1
            self.up = True
            self.cond.notify_all()

    def kill9(self) -> None:
        assert self.proc is not None
        with self.cond:
            self.up = False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after `timeout`; the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        with self.cond:
            self.up = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Fail(f"tally serve did not stop within {timeout:.0f} s of SIGTERM")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def snapshot(self) -> tuple[int, str, int, bool]:
        with self.cond:
            return self.gen, self.host, self.port, self.up

    def wait_newer(self, gen: int, timeout: float, stop: threading.Event | None = None) -> bool:
        """Waits until a generation newer than `gen` is up (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.up and self.gen > gen):
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self.cond.wait(min(left, 0.2))
            return True


def run_tally(binary: Path, args: list[str], db_url: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], cwd=cwd, env=clean_env({"TALLY_DATABASE_URL": db_url}),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------
class Transport(Exception):
    """No HTTP answer: refused, reset, closed or timed out. The request may or may not have
    reached the server."""


class Answer:
    __slots__ = ("status", "ctype", "raw", "ms", "_json")

    def __init__(self, status: int, ctype: str, raw: bytes, ms: float):
        self.status, self.ctype, self.raw, self.ms = status, ctype, raw, ms
        self._json = False

    @property
    def json(self):
        if self._json is False:
            try:
                self._json = json.loads(self.raw)
            except ValueError:
                self._json = None
        return self._json

    def problem_code(self) -> str | None:
        """The `code` of a problem+json body (None when the body is not exactly that)."""
        if self.ctype != PROBLEM_JSON or not isinstance(self.json, dict):
            return None
        return self.json.get("code")

    def describe(self) -> str:
        return f"{self.status} {self.ctype} {self.raw[:300]!r}"


class Client:
    """One keep-alive HTTP/1.1 connection (http.client), reopened after any failure or when
    the server's address changes."""

    def __init__(self, token: str, timeout: float = 30.0):
        self.token = token
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.addr: tuple[str, int] | None = None

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None

    def call(self, host: str, port: int, method: str, path: str, body=None, auth: bool = True) -> Answer:
        if self.conn is None or self.addr != (host, port):
            self.close()
            self.conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            self.addr = (host, port)
        headers = {}
        data = None
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        t0 = now_ms()
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise Transport(f"{type(e).__name__}: {e}") from None
        ms = now_ms() - t0
        ans = Answer(resp.status, (resp.getheader("Content-Type") or "").strip(), raw, ms)
        if resp.will_close:
            self.close()
        return ans


def admin_call(server: Server, method: str, path: str, body=None, ok=(200, 201, 204)) -> Answer:
    c = Client(server.admin_key)
    try:
        ans = c.call(server.host, server.port, method, path, body)
    finally:
        c.close()
    if ans.status not in ok:
        raise Fail(f"{method} {path} answered {ans.describe()}")
    return ans


# ------------------------------------------------------------------------------------------
# Setup: the plan, tenants, subscriptions and per-tenant HARD limits
# ------------------------------------------------------------------------------------------
def tenant_ids(n: int) -> list[str]:
    return [f"t{i:02d}" for i in range(n)]


def hard_limits(n: int, step: int) -> dict[str, int]:
    """Tenant i gets a HARD limit of step * (i + 1) (an override), so that tenants reach their
    limit one after the other through the run."""
    return {t: step * (i + 1) for i, t in enumerate(tenant_ids(n))}


def setup_tenants(server: Server, limits: dict[str, int]) -> None:
    admin_call(server, "PUT", f"/v1/plans/{PLAN_CODE}", PLAN)
    for tenant, limit in limits.items():
        admin_call(server, "PUT", f"/v1/tenants/{tenant}", {"name": f"Tenant {tenant}"})
        admin_call(server, "PUT", f"/v1/tenants/{tenant}/subscription", {"plan_code": PLAN_CODE})
        admin_call(server, "PUT", f"/v1/tenants/{tenant}/overrides/{HARD_METRIC}",
                   {"limit": limit, "enforcement": "hard", "period": "month"})


# ------------------------------------------------------------------------------------------
# The workload: unique keys, their outcomes, and the log of every request sent
# ------------------------------------------------------------------------------------------
NEW, ACK, REFUSED, UNKNOWN = "new", "ack", "refused", "unknown"


class Item:
    """One usage event the client asked for, with its own idempotency key. `body` is the
    first 200 answer seen for it (the original one, or the replay that resolved an unknown)."""

    __slots__ = ("key", "tenant", "metric", "amount", "metadata", "timestamp", "state", "body",
                 "attempts", "was_unknown", "replayed_on_resolve", "replays_checked")

    def __init__(self, key, tenant, metric, amount, metadata, timestamp):
        self.key, self.tenant, self.metric, self.amount = key, tenant, metric, amount
        self.metadata, self.timestamp = metadata, timestamp
        self.state = NEW
        self.body = None
        self.attempts = 0
        self.was_unknown = False
        self.replayed_on_resolve = None
        self.replays_checked = 0

    def payload(self) -> dict:
        p = {"metric_code": self.metric, "amount": self.amount, "idempotency_key": self.key}
        if self.metadata is not None:
            p["metadata"] = self.metadata
        if self.timestamp is not None:
            p["timestamp"] = self.timestamp
        return p


class Request:
    """A single POST .../usage (one item) or a POST .../usage/batch (several items of one
    tenant). Retries resend the same request: same items, same keys, same payloads."""

    __slots__ = ("kind", "tenant", "items")

    def __init__(self, kind: str, tenant: str, items: list[Item]):
        self.kind, self.tenant, self.items = kind, tenant, items

    def path_body(self):
        if self.kind == "single":
            return f"/v1/tenants/{self.tenant}/usage", self.items[0].payload()
        return f"/v1/tenants/{self.tenant}/usage/batch", {"events": [i.payload() for i in self.items]}


class Book:
    """Every item and request of a run, the shared counters, the violations, and the JSONL
    log of every request sent (writer, server generation, keys, answer, per-item outcome)."""

    def __init__(self, run: str, tenants: list[str], limits: dict[str, int], logpath: Path, seed: int):
        self.run = run
        self.tenants = tenants
        self.limits = limits
        self.lock = threading.Lock()
        self.items: dict[tuple[str, str], Item] = {}
        self.violations: list[str] = []
        self.counts = Counter()
        self.logf = open(logpath, "w", buffering=1 << 16)
        self.seed = seed
        # Called as observer(t0_monotonic, answer_or_None, error_or_None, req) after every request.
        self.observer = None

    def close(self):
        with self.lock:
            self.logf.close()

    def violation(self, msg: str) -> None:
        with self.lock:
            self.violations.append(msg)
            n = len(self.violations)
        if n <= 20:
            print(f"VIOLATION: {msg}", file=sys.stderr, flush=True)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def new_request(self, rng: random.Random, writer: int, seq: int, batch_share: float = 0.2,
                    batch_max: int = 20) -> Request:
        tenant = rng.choice(self.tenants)
        if rng.random() < batch_share:
            n = rng.randint(2, batch_max)
            kind = "batch"
        else:
            n = 1
            kind = "single"
        items = []
        for j in range(n):
            r = rng.random()
            if r < 0.6:
                metric, amount = HARD_METRIC, rng.randint(1, 5)
            elif r < 0.85:
                metric, amount = "storage_bytes", rng.randint(1, 100)
            else:
                metric, amount = "exports", rng.randint(1, 3)
            metadata = {"w": writer, "n": seq, "j": j} if rng.random() < 0.3 else None
            timestamp = None
            if rng.random() < 0.3:
                t = dt.datetime.now(dt.timezone.utc)
                timestamp = t.isoformat(timespec="microseconds")
                if rng.random() < 0.5:
                    timestamp = timestamp.replace("+00:00", "Z")
            key = f"{self.run}-w{writer}-{seq}-{j}"
            item = Item(key, tenant, metric, amount, metadata, timestamp)
            items.append(item)
        with self.lock:
            for it in items:
                self.items[(tenant, it.key)] = it
        return Request(kind, tenant, items)

    # --- the outcome of one attempt -------------------------------------------------------
    def send(self, client: Client, server_snap, req: Request, writer: int, retry: bool) -> str:
        """Sends `req` and books the outcome of each item. Returns "ok" (every item now known),
        "transport" (no answer: the items stay or become unknown), or "unavailable" (a 5xx: the
        items stay or become unknown)."""
        gen, host, port, _up = server_snap
        path, body = req.path_body()
        for it in req.items:
            it.attempts += 1
        self.count("requests")
        if retry:
            self.count("retry_requests")
        t_wall = time.time()
        t0 = time.monotonic()
        try:
            ans = client.call(host, port, "POST", path, body)
        except Transport as e:
            if self.observer is not None:
                self.observer(t0, None, str(e), req)
            self._unknown(req)
            self._log(t_wall, writer, gen, req, retry, None, str(e), "U" * len(req.items))
            self.count("transport_errors")
            return "transport"
        if self.observer is not None:
            self.observer(t0, ans, None, req)
        outcome = self._book(ans, req, retry)
        self._log(t_wall, writer, gen, req, retry, ans, None, outcome)
        return "unavailable" if "U" in outcome else "ok"

    def _unknown(self, req: Request) -> None:
        for it in req.items:
            if it.state in (NEW, UNKNOWN):
                if it.state == NEW:
                    self.count("unknown_items")
                it.state = UNKNOWN
                it.was_unknown = True

    def _log(self, t_wall, writer, gen, req, retry, ans, err, outcome):
        rec = {"t": round(t_wall, 4), "w": writer, "gen": gen, "kind": req.kind, "tenant": req.tenant,
               "keys": [i.key for i in req.items], "retry": retry, "outcome": outcome}
        if ans is not None:
            rec["status"] = ans.status
            rec["ms"] = round(ans.ms, 2)
            if ans.status != 200:
                rec["body"] = ans.raw[:300].decode(errors="replace")
        else:
            rec["error"] = err
        line = json.dumps(rec, separators=(",", ":"))
        with self.lock:
            self.logf.write(line + "\n")

    def _book(self, ans: Answer, req: Request, retry: bool) -> str:
        if ans.status == 200:
            if not isinstance(ans.json, dict):
                self.violation(f"200 with a body that is not a JSON object: {ans.describe()}")
                self._unknown(req)
                return "U" * len(req.items)
            if req.kind == "single":
                return self._book_item(req.items[0], ans.json, retry)
            results = ans.json.get("results")
            if not isinstance(results, list) or len(results) != len(req.items):
                self.violation(f"batch of {len(req.items)} answered {ans.describe()}")
                self._unknown(req)
                return "U" * len(req.items)
            out = []
            for it, res in zip(req.items, results):
                if isinstance(res, dict) and "error" in res:
                    err = res["error"]
                    if isinstance(err, dict) and err.get("status") == 429 and err.get("code") == "quota_exceeded":
                        out.append(self._refuse(it, err))
                    elif isinstance(err, dict) and err.get("status") == 503:
                        self._unknown(Request("single", it.tenant, [it]))
                        out.append("U")
                    else:
                        self.violation(f"batch item {it.key} refused unexpectedly: {err}")
                        self._unknown(Request("single", it.tenant, [it]))
                        out.append("U")
                else:
                    out.append(self._book_item(it, res, retry))
            return "".join(out)
        code = ans.problem_code()
        if ans.status == 429 and code == "quota_exceeded" and req.kind == "single":
            return self._refuse(req.items[0], ans.json)
        if ans.status == 503 and code == "unavailable":
            self.count("answers_503")
            self._unknown(req)
            return "U" * len(req.items)
        if ans.status >= 500:
            self.violation(f"{req.kind} {req.items[0].key}: {ans.describe()}")
            self.count("answers_5xx_other")
            self._unknown(req)
            return "U" * len(req.items)
        self.violation(f"{req.kind} {req.items[0].key} answered {ans.describe()}")
        self._unknown(req)
        return "U" * len(req.items)

    def _refuse(self, it: Item, problem) -> str:
        if it.state == ACK:
            self.violation(f"{it.key}: acknowledged earlier, now refused: {problem}")
            return "R"
        if isinstance(problem, dict) and problem.get("metric_code") != it.metric:
            self.violation(f"{it.key}: 429 names metric {problem.get('metric_code')}, not {it.metric}")
        if it.metric != HARD_METRIC:
            self.violation(f"{it.key}: refused on {it.metric}, which has no HARD limit")
        it.state = REFUSED
        return "R"

    def _book_item(self, it: Item, body: dict, retry: bool) -> str:
        want = {"tenant_id": it.tenant, "metric_code": it.metric, "amount": it.amount}
        for k, v in want.items():
            if body.get(k) != v:
                self.violation(f"{it.key}: answer has {k}={body.get(k)!r}, sent {v!r}: {body}")
        replayed = body.get("replayed")
        if not isinstance(replayed, bool):
            self.violation(f"{it.key}: answer without a boolean `replayed`: {body}")
        if it.metric == HARD_METRIC:
            cu, lim = body.get("current_usage"), body.get("limit")
            if not isinstance(cu, int) or lim != self.limits[it.tenant] or cu > lim:
                self.violation(f"{it.key}: HARD answer current_usage={cu} limit={lim} "
                               f"(the tenant's limit is {self.limits[it.tenant]})")
        if it.state == ACK:
            # A replay of an acknowledged item: the original answer, with replayed: true.
            self._check_replay(it, body)
            return "P"
        if it.state == REFUSED:
            self.violation(f"{it.key}: refused earlier, now acknowledged: {body}")
        if it.state == NEW and replayed:
            self.violation(f"{it.key}: a key never sent before answered replayed: true: {body}")
        if it.state == UNKNOWN:
            it.replayed_on_resolve = bool(replayed)
            self.count("unknown_resolved_committed" if replayed else "unknown_resolved_fresh")
        it.state = ACK
        it.body = body
        return "P" if replayed else "A"

    def _check_replay(self, it: Item, body: dict) -> None:
        it.replays_checked += 1
        self.count("replays_checked")
        if body.get("replayed") is not True:
            self.violation(f"{it.key}: a retry of an acknowledged request answered replayed={body.get('replayed')!r}: {body}")
            return
        a = {k: v for k, v in it.body.items() if k != "replayed"}
        b = {k: v for k, v in body.items() if k != "replayed"}
        if a != b:
            self.violation(f"{it.key}: the replay differs from the original answer: {it.body} vs {body}")

    def replay(self, client: Client, server_snap, it: Item, writer: int) -> str:
        """Resends one acknowledged item as a single POST with its key and payload."""
        return self.send(client, server_snap, Request("single", it.tenant, [it]), writer, retry=True)

    # --- figures ----------------------------------------------------------------------------
    def tally(self) -> Counter:
        c = Counter()
        with self.lock:
            items = list(self.items.values())
        for it in items:
            c["events"] += 1
            c[it.state] += 1
            if it.was_unknown:
                c["retried"] += 1
                if it.state == REFUSED:
                    c["unknown_resolved_refused"] += 1
        return c


# ------------------------------------------------------------------------------------------
# Databases
# ------------------------------------------------------------------------------------------
class SqliteDb:
    def __init__(self, path: Path):
        self.path = path
        self.url = f"sqlite://{path}"

    def query(self, sql: str) -> list[tuple]:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return [tuple(r) for r in con.execute(sql).fetchall()]
        finally:
            con.close()

    def describe(self) -> str:
        return str(self.path)


class PgDb:
    """A PostgreSQL database reached with psql (its URL as given to tally)."""

    def __init__(self, url: str):
        self.url = url

    def query(self, sql: str) -> list[tuple]:
        p = subprocess.run(["psql", self.url, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise Fail(f"psql failed on {sql!r}: {p.stderr.strip()}")
        return [tuple(line.split("\t")) for line in p.stdout.splitlines() if line]

    def describe(self) -> str:
        return re.sub(r"\?.*$", "", self.url)


def shared_pg_database(tag: str) -> tuple[str, str]:
    """A fresh database of our own on the shared server (scripts/pg-up starts it when it is
    down): (name, url). Never tally_test."""
    name = f"tally_faults_{random_hex(5)}"
    env = dict(os.environ, TALLY_TEST_DB=name, PGHOST=PG_HOST, PGPORT=PG_PORT)
    p = subprocess.run([str(ROOT / "scripts" / "pg-up")], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise Fail(f"scripts/pg-up failed: {p.stderr.strip()}")
    log(tag, f"database {name} on {PG_HOST}:{PG_PORT}")
    return name, f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}?sslmode=disable"


def drop_shared_pg_database(name: str) -> None:
    assert name.startswith("tally_faults_")
    subprocess.run(["psql", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-X", "-qAt", "-c",
                    f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True, text=True)


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(re.search(r"/postgresql/(\d+)/", p).group(1)))
    if not cands:
        raise Fail(f"no {name}: install PostgreSQL's server package (Debian: postgresql-15)")
    return cands[-1]


# ------------------------------------------------------------------------------------------
# The checks on the database after a run
# ------------------------------------------------------------------------------------------
def check_database(db, book: Book, binary: Path, workdir: Path, tag: str) -> dict:
    """Reads the events and records straight from the database and checks them against the
    book: every acknowledged key there exactly once with its event id and payload, no refused
    or unknown key there, no event the client never sent, every counter equal to the sum of
    its events and to the client's acknowledged sum, no HARD counter above its limit; then
    `tally verify` must exit 0. Returns the figures."""
    fails: list[str] = []
    events = db.query("SELECT tenant_id, idempotency_key, CAST(id AS TEXT), metric_code, amount FROM quota_usage_event")
    per_key = Counter((t, k) for t, k, _i, _m, _a in events)
    dups = sum(n - 1 for n in per_key.values() if n > 1)
    by_key = {(t, k): (i, m, int(a)) for t, k, i, m, a in events}
    items = book.items
    acked = [it for it in items.values() if it.state == ACK]
    refused = [it for it in items.values() if it.state == REFUSED]
    unknown = [it for it in items.values() if it.state in (UNKNOWN, NEW)]
    lost = 0
    mismatched = 0
    for it in acked:
        row = by_key.get((it.tenant, it.key))
        if row is None:
            lost += 1
            if lost <= 10:
                fails.append(f"LOST: acknowledged {it.tenant}/{it.key} ({it.metric} {it.amount}) is not in quota_usage_event")
            continue
        ev_id, metric, amount = row
        if ev_id != it.body.get("event_id") or metric != it.metric or amount != it.amount:
            mismatched += 1
            if mismatched <= 10:
                fails.append(f"MISMATCH: {it.key}: stored ({ev_id}, {metric}, {amount}), "
                             f"acknowledged ({it.body.get('event_id')}, {it.metric}, {it.amount})")
    refused_recorded = sum(1 for it in refused if (it.tenant, it.key) in by_key)
    if refused_recorded:
        fails.append(f"{refused_recorded} refused key(s) are recorded")
    if unknown:
        fails.append(f"{len(unknown)} item(s) still have an unknown outcome after the final retries")
    phantoms = [k for k in per_key if k not in items]
    if phantoms:
        fails.append(f"{len(phantoms)} event(s) the client never sent, e.g. {phantoms[:3]}")
    if dups:
        fails.append(f"DUPLICATES: {dups} extra event row(s) for one key")

    # Counters against their events, and against the client's acknowledged sums.
    records = db.query("SELECT tenant_id, metric_code, CAST(period_start AS TEXT), current_usage FROM quota_usage_record")
    sums = db.query("SELECT tenant_id, metric_code, CAST(period_start AS TEXT), SUM(amount), COUNT(*) "
                    "FROM quota_usage_event GROUP BY tenant_id, metric_code, period_start")
    ev_sum = {(t, m, p): int(s) for t, m, p, s, _n in sums}
    counter_drift = 0
    per_metric_db = Counter()
    for t, m, p, cu in records:
        cu = int(cu)
        per_metric_db[(t, m)] += cu
        if ev_sum.get((t, m, p), 0) != cu:
            counter_drift += 1
            fails.append(f"COUNTER: {t}/{m} period {p}: current_usage {cu}, events sum {ev_sum.get((t, m, p), 0)}")
        if m == HARD_METRIC and cu > book.limits.get(t, 0):
            fails.append(f"HARD LIMIT PASSED: {t}/{m} period {p}: {cu} > {book.limits.get(t)}")
    rec_keys = {(t, m, p) for t, m, p, _c in records}
    for k, s in ev_sum.items():
        if k not in rec_keys:
            fails.append(f"events without a record: {k} sum {s}")
    client_sum = Counter()
    for it in acked:
        client_sum[(it.tenant, it.metric)] += it.amount
    for k in set(client_sum) | set(per_metric_db):
        if client_sum[k] != per_metric_db[k]:
            fails.append(f"SUM: {k}: acknowledged {client_sum[k]}, counters {per_metric_db[k]}")
    hard_refusals = sum(1 for it in refused if it.metric == HARD_METRIC)

    p = run_tally(binary, ["verify"], db.url, workdir)
    m = re.search(r"(\d+) drifts?", p.stdout)
    drift = int(m.group(1)) if m else None
    if p.returncode != 0 or drift != 0:
        fails.append(f"tally verify exited {p.returncode} (drift {drift}): {p.stdout.strip()[-2000:]} {p.stderr.strip()}")

    for f in fails:
        print(f"VIOLATION: {f}", file=sys.stderr)
    return {
        "recorded": len(events),
        "acknowledged": len(acked),
        "refused": len(refused),
        "refused_hard": hard_refusals,
        "unknown": len(unknown),
        "duplicates": dups,
        "lost": lost,
        "phantoms": len(phantoms),
        "counter_drift": counter_drift,
        "verify_drift": drift,
        "verify_line": p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "",
        "failures": fails,
    }


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Fail(f"no VmRSS for pid {pid}")
