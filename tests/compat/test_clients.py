"""The real OpenMeter and Lago Python clients, unchanged, against `tally serve`.

Run by tests/compat/run, which starts the server, seeds it (plan `pro`: api_calls HARD 100 a
month, tokens SOFT 10000 a month with value_property /tokens; tenants `acme` and `beta`) and
passes BASE_URL and ADMIN_KEY. Each test checks what the client returns and what Tally's own
API says was recorded.
"""

import datetime
import json
import os
import unittest
import urllib.request
import uuid

import lago_python_client
from lago_python_client.client import Client as LagoClient
from lago_python_client.models import BatchEvent, Event as LagoEvent
from openmeter import Client as OpenMeterClient

BASE_URL = os.environ["BASE_URL"]
ADMIN_KEY = os.environ["ADMIN_KEY"]


def tally(method, path, body=None):
    """Tally's own /v1 API, to check what the clients did."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE_URL + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + ADMIN_KEY)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def usage(tenant, metric):
    for m in tally("GET", f"/v1/tenants/{tenant}/usage")["metrics"]:
        if m["metric_code"] == metric:
            return m["current_usage"]
    raise AssertionError(f"{tenant} has no {metric}")


def events(tenant, metric):
    return tally("GET", f"/v1/tenants/{tenant}/events?metric_code={metric}&limit=1000")["events"]


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def cloud_event(subject, type_, data=None, id_=None):
    event = {
        "id": id_ or str(uuid.uuid4()),
        "source": "compat-test",
        "specversion": "1.0",
        "type": type_,
        "subject": subject,
        "time": now().isoformat(),
    }
    if data is not None:
        event["data"] = data
    return event


class OpenMeterClientTest(unittest.TestCase):
    def setUp(self):
        self.client = OpenMeterClient(endpoint=BASE_URL, token=ADMIN_KEY)

    def test_ingest_single_batch_and_dedup(self):
        before = usage("acme", "tokens")
        single = cloud_event("acme", "tokens", {"tokens": 120, "model": "small"})
        self.assertIsNone(self.client.events.ingest_event(single))
        batch = [cloud_event("acme", "tokens", {"tokens": 30}), cloud_event("acme", "tokens", {"tokens": "50"})]
        self.assertIsNone(self.client.events.ingest_events(batch))
        self.assertEqual(usage("acme", "tokens"), before + 200)
        # The same (source, id) again, even with another payload, records nothing.
        resent = dict(single, data={"tokens": 999})
        self.assertIsNone(self.client.events.ingest_event(resent))
        self.assertEqual(usage("acme", "tokens"), before + 200)
        recorded = [e for e in events("acme", "tokens") if e.get("metadata", {}).get("model") == "small"]
        self.assertEqual(len(recorded), 1)
        self.assertEqual(recorded[0]["amount"], 120)

    def test_entitlement_value_v1_and_v2(self):
        self.client.events.ingest_event(cloud_event("beta", "api_calls"))
        used = usage("beta", "api_calls")
        value = self.client.customer_entitlement.get_customer_entitlement_value("beta", "api_calls")
        self.assertTrue(value.has_access)
        self.assertEqual(value.usage, used)
        self.assertEqual(value.balance, 100 - used)
        self.assertEqual(value.overage, 0)
        v2 = self.client.customer_entitlement_v2.get_customer_entitlement_value("beta", "api_calls")
        self.assertEqual((v2.has_access, v2.usage, v2.balance), (True, used, 100 - used))

    def test_meter_query(self):
        start = now() - datetime.timedelta(minutes=1)
        self.client.events.ingest_events([cloud_event("acme", "tokens", {"tokens": 7}) for _ in range(3)])
        result = self.client.meters.query_json("tokens", from_parameter=start, subject=["acme"])
        self.assertEqual(len(result.data), 1)
        row = result.data[0]
        self.assertEqual(row.subject, "acme")
        self.assertGreaterEqual(row.value, 21)
        windows = self.client.meters.query_json("tokens", from_parameter=start, window_size="MINUTE", subject=["acme"])
        self.assertEqual(sum(r.value for r in windows.data), row.value)


class LagoClientTest(unittest.TestCase):
    def setUp(self):
        self.client = LagoClient(api_key=ADMIN_KEY, api_url=BASE_URL)

    def test_ingest_single_batch_and_dedup(self):
        before = usage("beta", "tokens")
        tx = "tx-" + str(uuid.uuid4())
        created = self.client.events.create(
            LagoEvent(transaction_id=tx, external_subscription_id="beta", code="tokens",
                      timestamp=now().timestamp(), properties={"tokens": 40})
        )
        self.assertEqual(created.transaction_id, tx)
        self.assertEqual(created.code, "tokens")
        self.assertTrue(created.lago_id)
        again = self.client.events.create(
            LagoEvent(transaction_id=tx, external_subscription_id="beta", code="tokens",
                      timestamp=int(now().timestamp()), properties={"tokens": 41})
        )
        self.assertEqual(again.lago_id, created.lago_id)
        self.client.events.batch_create(BatchEvent(events=[
            LagoEvent(transaction_id="tx-" + str(uuid.uuid4()), external_subscription_id="beta", code="tokens",
                      timestamp=now().isoformat(), properties={"tokens": 5}),
            LagoEvent(transaction_id="tx-" + str(uuid.uuid4()), external_subscription_id="beta", code="tokens",
                      timestamp=str(now().timestamp()), properties={"tokens": 6}),
        ]))
        self.assertEqual(usage("beta", "tokens"), before + 51)

    def test_current_usage(self):
        # A timestamp to the microsecond: whole seconds could fall before the subscription's
        # anchor, set a moment ago, and so in the previous period.
        self.client.events.create(
            LagoEvent(transaction_id="tx-" + str(uuid.uuid4()), external_subscription_id="acme", code="api_calls",
                      timestamp=now().isoformat(), properties={})
        )
        current = self.client.customers.current_usage("acme", "acme")
        by_code = {c.billable_metric.code: c for c in current.charges_usage}
        self.assertEqual(int(by_code["api_calls"].units), usage("acme", "api_calls"))
        self.assertEqual(by_code["api_calls"].events_count, len(events("acme", "api_calls")))
        self.assertEqual(current.amount_cents, 0)


if __name__ == "__main__":
    print("lago-python-client", lago_python_client.__name__)
    unittest.main(verbosity=2)
