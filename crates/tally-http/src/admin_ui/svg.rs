//! Server-rendered SVG usage pictures: a bar of current usage against its limit, and a column
//! chart of the last periods. No script; every number is also in the markup as text and as
//! `data-*` attributes, so the pictures can be read by screen readers and by tests.

use maud::{Markup, html};
use tally_domain::{LimitEnforcement, Period};

use super::view::{day, enforcement_word, int, limit_text};

/// Usage at or above this share of its limit (in percent) is `near`.
pub const NEAR_LIMIT_PERCENT: i64 = 80;

/// Where usage stands against its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageState {
    /// Below `NEAR_LIMIT_PERCENT` of the limit.
    Under,
    /// At or above `NEAR_LIMIT_PERCENT`, below the limit.
    Near,
    /// At or above the limit.
    Over,
    /// No limit to stand against.
    Unlimited,
}

impl UsageState {
    /// The state of `used` against `limit`.
    pub fn of(used: i64, limit: Option<i64>) -> UsageState {
        let Some(limit) = limit else { return UsageState::Unlimited };
        if used >= limit {
            UsageState::Over
        } else if i128::from(used) * 100 >= i128::from(limit) * i128::from(NEAR_LIMIT_PERCENT) {
            UsageState::Near
        } else {
            UsageState::Under
        }
    }

    /// The word shown and used as a CSS class.
    pub fn word(self) -> &'static str {
        match self {
            UsageState::Under => "under",
            UsageState::Near => "near",
            UsageState::Over => "over",
            UsageState::Unlimited => "unlimited",
        }
    }
}

const BAR_WIDTH: i64 = 300;
const BAR_HEIGHT: i64 = 22;

/// The bar of one metric: filled to `used / limit` (full when over), coloured by state, framed
/// by enforcement (solid for HARD, dashed for SOFT, dotted for NONE).
pub fn usage_bar(metric: &str, used: i64, limit: Option<i64>, enforcement: LimitEnforcement) -> Markup {
    let state = UsageState::of(used, limit);
    let fill = match limit {
        Some(l) if l > 0 => {
            (i128::from(used.max(0)) * i128::from(BAR_WIDTH) / i128::from(l)).min(i128::from(BAR_WIDTH))
        }
        Some(_) => i128::from(BAR_WIDTH),
        // Without a limit the bar only says that something was used.
        None if used > 0 => i128::from(BAR_WIDTH),
        None => 0,
    };
    let percent = limit.filter(|l| *l > 0).map(|l| i128::from(used) * 100 / i128::from(l));
    let label = match percent {
        Some(p) => format!(
            "{metric}: {} of {} ({p}%), {} limit, {}",
            int(used),
            limit_text(limit),
            enforcement_word(enforcement),
            state.word()
        ),
        None => format!(
            "{metric}: {} of {}, {} limit, {}",
            int(used),
            limit_text(limit),
            enforcement_word(enforcement),
            state.word()
        ),
    };
    let limit_attr = limit.map_or_else(String::new, |l| l.to_string());
    html! {
        svg.usage-bar viewBox={"0 0 " (BAR_WIDTH) " " (BAR_HEIGHT)} role="img" aria-label=(label)
            data-metric=(metric) data-current=(used) data-limit=(limit_attr)
            data-state=(state.word()) data-enforcement=(enforcement_word(enforcement)) {
            title { (label) }
            rect.bar-track x="0" y="0" width=(BAR_WIDTH) height=(BAR_HEIGHT) rx="3" {}
            rect class={"bar-fill state-" (state.word())} x="0" y="0" width=(fill) height=(BAR_HEIGHT) rx="3" {}
            rect class={"bar-frame enf-" (enforcement_word(enforcement))} x="1" y="1" width=(BAR_WIDTH - 2) height=(BAR_HEIGHT - 2) rx="3" {}
        }
        p.figure {
            strong.current { (int(used)) } " of " span.limit { (limit_text(limit)) }
            @if let Some(p) = percent { " (" (p) "%)" }
            " "
            span class={"badge state-" (state.word())} { (state.word()) }
            " "
            span class={"badge enf-" (enforcement_word(enforcement))} { (enforcement_word(enforcement)) }
        }
    }
}

const CHART_WIDTH: i64 = 600;
const CHART_HEIGHT: i64 = 180;
const CHART_TOP: i64 = 10;
const CHART_BOTTOM: i64 = 150;
const CHART_LEFT: i64 = 8;

/// A column chart of usage per period, oldest first; the last column is the current period.
/// A dashed line marks the limit when there is one.
pub fn usage_chart(metric: &str, history: &[(Period, i64)], limit: Option<i64>) -> Markup {
    let n = i64::try_from(history.len()).unwrap_or(1).max(1);
    let top_value = history.iter().map(|(_, v)| *v).chain(limit).max().unwrap_or(0).max(1);
    let plot_height = CHART_BOTTOM - CHART_TOP;
    let scale = |v: i64| -> i64 {
        i64::try_from(i128::from(v.max(0)) * i128::from(plot_height) / i128::from(top_value))
            .unwrap_or(plot_height)
    };
    let slot = (CHART_WIDTH - CHART_LEFT) / n;
    let col_width = (slot * 7 / 10).max(2);
    let values: Vec<String> = history.iter().map(|(_, v)| v.to_string()).collect();
    let label =
        format!("{metric}: usage in the last {} periods, oldest first: {}", history.len(), values.join(", "));
    html! {
        svg.usage-chart viewBox={"0 0 " (CHART_WIDTH) " " (CHART_HEIGHT)} role="img" aria-label=(label)
            data-metric=(metric) data-values=(values.join(",")) data-periods=(history.len()) {
            title { (label) }
            line.chart-axis x1=(CHART_LEFT) y1=(CHART_BOTTOM) x2=(CHART_WIDTH) y2=(CHART_BOTTOM) {}
            @for (i, (period, value)) in history.iter().enumerate() {
                @let i = i64::try_from(i).unwrap_or(0);
                @let h = scale(*value);
                @let x = CHART_LEFT + i * slot + (slot - col_width) / 2;
                @let current = i == n - 1;
                rect class=(if current { "chart-col current" } else { "chart-col" })
                    x=(x) y=(CHART_BOTTOM - h) width=(col_width) height=(h) data-value=(value) {
                    title { (day(period.start())) " to " (day(period.end())) ": " (int(*value)) }
                }
                @if i % 2 == (n - 1) % 2 {
                    text.chart-label x=(x + col_width / 2) y=(CHART_BOTTOM + 14) text-anchor="middle" { (short_day(period.start())) }
                }
            }
            @if let Some(l) = limit {
                @let y = CHART_BOTTOM - scale(l);
                line.chart-limit x1=(CHART_LEFT) y1=(y) x2=(CHART_WIDTH) y2=(y) {}
                text.chart-limit-label x=(CHART_WIDTH - 4) y=((y - 4).max(13)) text-anchor="end" { "limit " (int(l)) }
            }
        }
    }
}

fn short_day(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_share_of_the_limit() {
        assert_eq!(UsageState::of(0, Some(100)), UsageState::Under);
        assert_eq!(UsageState::of(79, Some(100)), UsageState::Under);
        assert_eq!(UsageState::of(80, Some(100)), UsageState::Near);
        assert_eq!(UsageState::of(100, Some(100)), UsageState::Over);
        assert_eq!(UsageState::of(150, Some(100)), UsageState::Over);
        assert_eq!(UsageState::of(5, None), UsageState::Unlimited);
        assert_eq!(UsageState::of(0, Some(0)), UsageState::Over);
    }

    #[test]
    fn a_bar_carries_its_numbers_and_is_filled_in_proportion() {
        let svg = usage_bar("api_calls", 420, Some(1000), LimitEnforcement::Hard).into_string();
        assert!(svg.contains(r#"data-current="420""#), "{svg}");
        assert!(svg.contains(r#"data-limit="1000""#));
        assert!(svg.contains(r#"data-state="under""#));
        assert!(svg.contains(r#"data-enforcement="hard""#));
        assert!(svg.contains(r#"width="126""#), "420/1000 of 300 px: {svg}");
        assert!(svg.contains("420 of 1,000"));
    }

    #[test]
    fn an_over_limit_bar_is_full_and_red() {
        let svg = usage_bar("m", 1500, Some(1000), LimitEnforcement::Soft).into_string();
        assert!(svg.contains(r#"class="bar-fill state-over" x="0" y="0" width="300""#), "{svg}");
        assert!(svg.contains("enf-soft"));
    }

    #[test]
    fn a_chart_has_one_column_per_period() {
        let anchor = tally_domain::time::parse_rfc3339("2026-01-01T00:00:00Z").expect("t");
        let p = |m: u32| {
            let at = tally_domain::time::parse_rfc3339(&format!("2026-{m:02}-10T00:00:00Z")).expect("t");
            tally_domain::PeriodKind::Month.containing(at, anchor).expect("period")
        };
        let history: Vec<(Period, i64)> = (1..=12).map(|m| (p(m), i64::from(m) * 10)).collect();
        let svg = usage_chart("m", &history, Some(200)).into_string();
        assert_eq!(svg.matches("data-value=").count(), 12, "{svg}");
        assert!(svg.contains(r#"data-values="10,20,30,40,50,60,70,80,90,100,110,120""#));
        assert!(svg.contains("limit 200"));
    }
}
