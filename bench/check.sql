-- The check's own statement (PgStore::usage_now, one round trip): the period's counter and
-- what open reservations hold against it. -M prepared -c 64, -D tmax=1000 -D mmax=5.
\set t random(1, :tmax)
\set m random(1, :mmax)
SELECT COALESCE((SELECT current_usage FROM quota_usage_record
                  WHERE tenant_id = 'tenant-' || :t AND metric_code = 'm' || :m
                    AND period_start = date_trunc('month', now())), 0)::bigint AS usage,
       COALESCE((SELECT SUM(amount) FROM tally_reservation
                  WHERE tenant_id = 'tenant-' || :t AND metric_code = 'm' || :m
                    AND period_start = date_trunc('month', now())
                    AND status = 'open' AND expires_at > now()), 0)::bigint AS reserved;
