#!/usr/bin/env python3
"""Loads a store with many usage events and records, then times every admin UI list page.

Usage (normally through bench/admin):
  admin_pages.py load-postgres URL EVENTS RECORDS
  admin_pages.py load-sqlite FILE EVENTS RECORDS
  admin_pages.py time BASE_URL PASSWORD REPEATS     -> prints one Markdown table row per page

The data: 1000 tenants t0000..t0999 on plan `pro` (5 HARD monthly metrics m0..m4), RECORDS
records (one per tenant, metric and month, going back from now) and EVENTS events spread over
those records, each event's created_at inside its record's period. Loaded with plain SQL, the
columns exactly as Tally writes them, then ANALYZEd; Tally's own indexes are all there.
"""
import http.client
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone

TENANTS = 1000
METRICS = 5
MONTH_US = 30 * 24 * 3600 * 1_000_000
LIMITS = [{"metric_code": f"m{i}", "limit": 1_000_000_000, "enforcement": "hard", "period": "month"} for i in range(METRICS)]


def now_us():
    return int(time.time() * 1_000_000)


def shape(records):
    """How many months of records each tenant and metric gets."""
    months = max(1, records // (TENANTS * METRICS))
    return months


def load_postgres(url, events, records):
    months = shape(records)
    per_record = max(1, events // (TENANTS * METRICS * months))
    end = now_us()
    sql = f"""
\\set ON_ERROR_STOP on
BEGIN;
INSERT INTO tally_plan (code, name, limits, version, created_at, updated_at)
  VALUES ('pro', 'Pro', '{json.dumps(LIMITS)}'::jsonb, 1, now(), now()) ON CONFLICT DO NOTHING;
INSERT INTO tally_plan_version (code, version, name, limits, created_at, updated_at)
  VALUES ('pro', 1, 'Pro', '{json.dumps(LIMITS)}'::jsonb, now(), now()) ON CONFLICT DO NOTHING;
INSERT INTO tally_tenant (tenant_id, name, internal_id, created_at)
  SELECT 't' || lpad(t::text, 4, '0'), 'Tenant ' || t, 1000000 + t, now() FROM generate_series(0, {TENANTS - 1}) t;
INSERT INTO tally_subscription (tenant_id, plan_code, anchor, started_at)
  SELECT 't' || lpad(t::text, 4, '0'), 'pro', to_timestamp(0), now() FROM generate_series(0, {TENANTS - 1}) t;
CREATE TEMP TABLE r AS
  SELECT gen_random_uuid() AS id, 't' || lpad(t::text, 4, '0') AS tenant_id, 'm' || m AS metric_code,
         to_timestamp(({end} - (mo + 1)::bigint * {MONTH_US}) / 1e6) AS period_start,
         to_timestamp(({end} - mo::bigint * {MONTH_US}) / 1e6) AS period_end
  FROM generate_series(0, {TENANTS - 1}) t, generate_series(0, {METRICS - 1}) m, generate_series(0, {months - 1}) mo;
INSERT INTO quota_usage_record (id, tenant_id, metric_code, current_usage, period_start, period_end, created_at, updated_at)
  SELECT id, tenant_id, metric_code, {per_record}, period_start, period_end, period_start, period_end FROM r;
INSERT INTO quota_usage_event (id, tenant_id, metric_code, amount, metadata, idempotency_key, "timestamp", created_at,
    usage_after, limit_at, enforcement, period_start, period_end, timestamp_explicit)
  SELECT gen_random_uuid(), r.tenant_id, r.metric_code, 1, jsonb_build_object('i', i),
         'k-' || r.id || '-' || i,
         r.period_start + (i * (r.period_end - r.period_start) / {per_record + 1}),
         r.period_start + (i * (r.period_end - r.period_start) / {per_record + 1}),
         i, 1000000000, 'hard', r.period_start, r.period_end, false
  FROM r, generate_series(1, {per_record}) i;
COMMIT;
ANALYZE;
"""
    subprocess.run(["psql", "-q", url], input=sql, text=True, check=True)


def load_sqlite(path, events, records):
    months = shape(records)
    per_record = max(1, events // (TENANTS * METRICS * months))
    end = now_us()
    c = sqlite3.connect(path)
    c.execute("PRAGMA synchronous=OFF")
    limits = json.dumps(LIMITS)
    c.execute("INSERT OR IGNORE INTO tally_plan VALUES ('pro', 'Pro', ?, 1, ?, ?)", (limits, end, end))
    c.execute("INSERT OR IGNORE INTO tally_plan_version VALUES ('pro', 1, 'Pro', ?, ?, ?)", (limits, end, end))
    c.executemany("INSERT INTO tally_tenant VALUES (?, ?, ?, ?)",
                  [(f"t{t:04d}", f"Tenant {t}", 1_000_000 + t, end) for t in range(TENANTS)])
    c.executemany("INSERT INTO tally_subscription VALUES (?, 'pro', 0, ?)", [(f"t{t:04d}", end) for t in range(TENANTS)])
    rec_rows, ev_rows = [], []
    for t in range(TENANTS):
        for m in range(METRICS):
            for mo in range(months):
                ps, pe = end - (mo + 1) * MONTH_US, end - mo * MONTH_US
                rid = str(uuid.uuid4())
                rec_rows.append((rid, f"t{t:04d}", f"m{m}", per_record, ps, pe, ps, pe))
                for i in range(1, per_record + 1):
                    at = ps + i * (pe - ps) // (per_record + 1)
                    ev_rows.append((str(uuid.uuid4()), f"t{t:04d}", f"m{m}", 1, json.dumps({"i": i}), f"k-{rid}-{i}",
                                    at, at, i, 1_000_000_000, "hard", ps, pe, 0))
        if len(ev_rows) > 200_000:
            c.executemany("INSERT INTO quota_usage_event VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", ev_rows)
            ev_rows = []
    c.executemany("INSERT INTO quota_usage_record VALUES (?,?,?,?,?,?,?,?)", rec_rows)
    c.executemany("INSERT INTO quota_usage_event VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", ev_rows)
    c.commit()
    c.execute("ANALYZE")
    c.commit()
    c.close()


class Client:
    def __init__(self, base):
        u = urllib.parse.urlparse(base)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read().decode()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                value = rest.split(";")[0]
                if value:
                    self.cookies[name] = value
                else:
                    self.cookies.pop(name, None)
        return r.status, r.getheader("Location"), data


def first_link(html, rel):
    m = re.search(r'href="([^"]+)" rel="%s"' % rel, html)
    return m.group(1).replace("&amp;", "&") if m else None


def time_pages(base, password, repeats):
    c = Client(base)
    status, _, html = c.request("GET", "/admin/login")
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)
    form = urllib.parse.urlencode({"password": password, "csrf_token": csrf, "next": "/admin"})
    status, _, _ = c.request("POST", "/admin/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 303, f"sign-in answered {status}"

    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    # The loaded records start a month apart going back from now: the last 60 days hold two.
    month_start = (datetime.now(timezone.utc) - timedelta(days=60)).strftime("%Y-%m-%d")
    _, _, records = c.request("GET", "/admin/records")
    _, _, events = c.request("GET", "/admin/events")
    event_link = re.search(r'href="(/admin/tenants/[^"]+/events/[^"]+)"', events).group(1)
    pages = [
        ("records", "/admin/records"),
        ("records, metric filter", "/admin/records?metric_code=m3"),
        ("records, created in the last 60 days", f"/admin/records?created_from={month_start}&created_to={today}"),
        ("records, period_end filter", f"/admin/records?period_end_from=2000-01-01&period_end_to={today}"),
        ("records, search tenant prefix", "/admin/records?q=t012"),
        ("records, search metric", "/admin/records?q=m2"),
        ("records, search + metric + sort by usage", "/admin/records?q=t01&metric_code=m1&sort=current_usage&dir=desc"),
        ("records, sorted by tenant_id", "/admin/records?sort=tenant_id&dir=asc"),
        ("records, page 2", first_link(records, "next")),
        ("events", "/admin/events"),
        ("events, metric filter", "/admin/events?metric_code=m3"),
        ("events, created in the last 60 days", f"/admin/events?created_from={month_start}&created_to={today}"),
        ("events, search tenant prefix", "/admin/events?q=t0123"),
        ("events, search metric", "/admin/events?q=m4"),
        ("events, search + metric + created", f"/admin/events?q=t05&metric_code=m0&created_from=2000-01-01&created_to={today}"),
        ("events, search with no match", "/admin/events?q=zzz"),
        ("events, page 2", first_link(events, "next")),
        ("event detail", event_link),
        ("tenants", "/admin/tenants"),
        ("tenants, search", "/admin/tenants?q=t09"),
        ("tenant page (bars + 12-period charts)", "/admin/tenants/t0042"),
        ("plans", "/admin/plans"),
        ("plan page (1000 subscribers)", "/admin/plans/pro"),
    ]
    rows = []
    for name, path in pages:
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            status, _, body = c.request("GET", path)
            samples.append((time.perf_counter() - t0) * 1000)
            assert status == 200, f"{path} answered {status}: {body[:300]}"
        n_rows = len(re.findall(r'<tr class="(record|event|tenant|plan|version)-row"', body))
        rows.append((name, path, statistics.median(samples), max(samples), n_rows))
    for name, path, med, mx, n in rows:
        verdict = "ok" if med < 100 else "SLOW"
        print(f"| {name} | `{path}` | {n} | {med:.1f} | {mx:.1f} | {verdict} |")


def main():
    cmd = sys.argv[1]
    if cmd == "load-postgres":
        load_postgres(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "load-sqlite":
        load_sqlite(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "time":
        time_pages(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
