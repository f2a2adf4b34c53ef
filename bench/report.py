"""Turns bench/compare's raw results into the Markdown table of docs/BENCHMARKS.md."""
import glob
import json
import os
import platform
import re
import subprocess
import sys

out, seconds = sys.argv[1], sys.argv[2]


def pgbench(name, clients):
    path = f"{out}/pgbench-{name}-{clients}.txt"
    text = open(path).read() if os.path.exists(path) else ""
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    lat = re.search(r"latency average = ([0-9.]+) ms", text)
    return (float(tps.group(1)) if tps else None, float(lat.group(1)) if lat else None)


def tally(store, name, conns):
    path = f"{out}/tally-{store}-{name}-{conns}.json"
    if not os.path.exists(path):
        return None
    try:
        r = json.load(open(path))
    except json.JSONDecodeError:
        return None
    rss = f"{out}/rss-{store}-{name}-{conns}.txt"
    r["peak_rss_mib"] = int(open(rss).read().strip() or 0) / 1024 if os.path.exists(rss) else None
    return r


def fmt(x, unit=""):
    if x is None:
        return "n/a"
    if x >= 1000:
        return f"{x / 1000:.1f}k{unit}"
    return f"{x:.0f}{unit}"


def ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "n/a"


naive = {c: pgbench("naive", c)[0] for c in (8, 64)}
hot = {c: pgbench("hot", c)[0] for c in (8, 64)}
batch_tps = pgbench("batch", 2)[0]
check_tps = pgbench("check", 64)[0]
batch_eps = batch_tps * 1000 if batch_tps else None

rows = []


def row(label, store, name, conns, ref_label, ref, target, per_event=False):
    r = tally(store, name, conns)
    if r is None:
        rows.append(f"| {label} | {store} | {conns} | missing | {ref_label} {fmt(ref)} | n/a | n/a | | | {target} | | | | |")
        return
    rate = r.get("events_per_s") if per_event else r.get("requests_per_s")
    p99 = r.get("latency_ms", {}).get("p99")
    checks = r.get("checks", {})
    accepted = r.get("accepted_events")
    sql = r.get("sql_events")
    same = "yes" if name in ("check", "healthz") and sql == 0 else ("yes" if accepted == sql and r.get("accepted_amount") == r.get("sql_amount") else f"NO ({accepted} vs {sql})")
    overshoot = "none" if checks.get("no_overshoot") else "OVERSHOOT"
    rss = r.get("peak_rss_mib")
    cpu = r.get("cpu_us_per_request", {})
    floor = tally(store, "healthz", conns)
    floor_rate = floor.get("requests_per_s") if floor else None
    floor_cpu = (floor.get("cpu_us_per_request") or {}).get("server") if floor else None
    vs_floor = f"{r.get('requests_per_s') / floor_rate:.2f}x" if floor_rate and r.get("requests_per_s") else "n/a"
    us = lambda v: f"{v:.1f} µs" if v is not None else "n/a"
    server_cpu = us(cpu.get("server"))
    if cpu.get("server") is not None and floor_cpu:
        server_cpu += f" ({cpu['server'] / floor_cpu:.1f}x)"
    p99s = f"{p99:.1f} ms" if p99 is not None else "n/a"
    rsss = f"{rss:.0f} MiB" if rss is not None else "n/a"
    rows.append(
        f"| {label} | {store} | {conns} | {fmt(rate, '/s')} | {ref_label} {fmt(ref, '/s')} | {ratio(rate, ref)} | {vs_floor} "
        f"| {server_cpu} | {us(cpu.get('postgres'))} | {target} | {p99s} | {same} | {overshoot} | {rsss} |"
    )


for store in ("postgres", "sqlite"):
    row("GET /healthz (floor)", store, "healthz", 64, "pgbench naive", naive[64], "the floor")
    for conns in (8, 64):
        row("single POST", store, "single", conns, "pgbench naive", naive[conns], "≥ 2x, goal 3x (PG, 64); ≥ 0.30x /healthz (SQLite)")
    for conns in ((8, 64) if store == "postgres" else (64,)):
        row("hot key", store, "hot", conns, "pgbench hot record", hot[conns], "≥ 10x")
    row("batch POST (1000/req), events", store, "batch", 2, "hand-batched SQL", batch_eps, "≥ 1x, goal 1.5x (PG); ≥ 1.2x /healthz in events/s (SQLite)", per_event=True)
    if store == "postgres" and check_tps:
        row("check", store, "check", 64, "pgbench check.sql", check_tps, "≥ 0.6x pgbench check.sql (PG); ≥ 0.5x /healthz (SQLite)")
    else:
        row("check", store, "check", 64, "pgbench naive", naive[64], "≥ 0.6x pgbench check.sql (PG); ≥ 0.5x /healthz (SQLite)")
    row("reserve+commit, pairs", store, "reserve", 64, "pgbench naive", naive[64], "≥ 0.4x the single-POST rate", per_event=True)

migrate = open(f"{out}/migrate.txt").read() if os.path.exists(f"{out}/migrate.txt") else "(not run)"
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
pgv = subprocess.run(["sh", "-c", "psql -h 127.0.0.1 -U postgres -qAt -c 'show server_version'"], capture_output=True, text=True).stdout.strip()

print(f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; PostgreSQL {pgv}; {seconds} s per run.")
print("Load generator, server and database share the cores. Settings: HARD limits (1e12, never reached), a unique idempotency key")
print("on every request, 1000 tenants x 5 metrics, durable defaults (PostgreSQL synchronous_commit=on, SQLite WAL synchronous=FULL).")
print()
print(f"Reference (pgbench, same run): naive 8c {fmt(naive[8], '/s')}, naive 64c {fmt(naive[64], '/s')}, hot record 8c {fmt(hot[8], '/s')}, "
      f"hot record 64c {fmt(hot[64], '/s')}, hand-batched n=1000 {fmt(batch_eps, ' events/s')}, check.sql 64c {fmt(check_tps, '/s')}.")
print()
print("Rates are requests/s (events/s or pairs/s where the label says so); `vs /healthz` is the request rate over the /healthz rate")
print("of the same store and connections. CPU columns are user+system time per measured request (from /proc, over the measured")
print("window only): the `tally` process, with its ratio to /healthz's, and all `postgres` processes together.")
print()
print("| workload | store | conns | Tally | reference | ratio | vs /healthz | server CPU/req | PostgreSQL CPU/req | target | p99 | accepted == SQL rows | HARD overshoot | peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(r)
print()
print("`tally migrate`, schema tenancy:")
print()
print("```")
print(migrate.strip())
print("```")
