//! Declarative plans in TOML, for `tally plans apply`.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Deserialize;
use tally_domain::{
    CloseAfter, LimitEnforcement, MetricCode, Name, PeriodKind, PlanCode, PlanSpec, QuotaLimit,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    #[serde(default)]
    plans: BTreeMap<String, PlanEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    name: String,
    #[serde(default)]
    limits: Vec<LimitEntry>,
    /// `"3d"`: close periods this long after they end.
    #[serde(default)]
    close_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitEntry {
    metric_code: String,
    limit: Option<i64>,
    enforcement: String,
    #[serde(default)]
    period: Option<String>,
}

/// Parses and validates a plans file; the plans come back ordered by code.
pub fn parse_plans(text: &str) -> anyhow::Result<Vec<(PlanCode, PlanSpec)>> {
    let file: PlansFile = toml::from_str(text).context("not a valid plans file")?;
    let mut out = Vec::with_capacity(file.plans.len());
    for (code, entry) in file.plans {
        let plan_code = PlanCode::parse(&code).with_context(|| format!("plan {code:?}"))?;
        let mut limits = Vec::with_capacity(entry.limits.len());
        for (i, l) in entry.limits.into_iter().enumerate() {
            let ctx = || format!("plan {code}, limit #{}", i + 1);
            let metric = MetricCode::parse(&l.metric_code).with_context(ctx)?;
            let enforcement: LimitEnforcement = l.enforcement.parse().with_context(ctx)?;
            let period: PeriodKind = l.period.as_deref().unwrap_or("month").parse().with_context(ctx)?;
            limits.push(QuotaLimit::new(metric, l.limit, enforcement, period).with_context(ctx)?);
        }
        let name = Name::parse(&entry.name).with_context(|| format!("plan {code}"))?;
        let close_after = entry
            .close_after
            .as_deref()
            .map(CloseAfter::parse)
            .transpose()
            .with_context(|| format!("plan {code}"))?;
        let spec = PlanSpec::new(name, limits).with_context(|| format!("plan {code}"))?;
        out.push((plan_code, spec.with_close_after(close_after)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_with_defaults_and_refuse_typos() {
        let text = r#"
[plans.pro]
name = "Pro"

[[plans.pro.limits]]
metric_code = "api_calls"
limit = 100000
enforcement = "hard"
period = "month"

[[plans.pro.limits]]
metric_code = "exports"
enforcement = "none"
"#;
        let plans = parse_plans(text).unwrap();
        assert_eq!(plans.len(), 1);
        let (code, spec) = &plans[0];
        assert_eq!(code.as_str(), "pro");
        assert_eq!(spec.limits[0].limit, Some(100_000));
        assert_eq!((spec.limits[1].limit, spec.limits[1].period), (None, PeriodKind::Month));
        assert_eq!(spec.close_after, None);
        let closing =
            parse_plans(&text.replace("name = \"Pro\"", "name = \"Pro\"\nclose_after = \"3d\"")).unwrap();
        assert_eq!(closing[0].1.close_after.map(CloseAfter::seconds), Some(3 * 86_400));
        assert!(
            parse_plans(&text.replace("name = \"Pro\"", "name = \"Pro\"\nclose_after = \"3x\"")).is_err()
        );
        let typo = text.replace("enforcement = \"hard\"", "enforcment = \"hard\"");
        assert!(parse_plans(&typo).is_err());
        let bad = text.replace("\"hard\"", "\"strict\"");
        let err = format!("{:#}", parse_plans(&bad).unwrap_err());
        assert!(err.contains("plan pro, limit #1"), "{err}");
    }
}
