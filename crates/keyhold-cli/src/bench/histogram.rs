//! The proxy's own latency histogram of one route, read from its `/metrics` before and after a
//! scenario: how long the proxy took from the routed request to its answer, without the
//! sockets, the kernel and the scheduler that the driver's clock also counts. On a machine the
//! driver shares, this tells the proxy's tail from the machine's.

use anyhow::{Context as _, bail};

/// The proxy's request latency metric (seconds, per route).
const METRIC: &str = "keyhold_http_request_duration_seconds_bucket{";

/// Cumulative counts of one route's histogram: (upper bound in seconds, requests at or under
/// it), in increasing bounds, the last one `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// The buckets of `route` in a Prometheus text exposition (empty if the route has served
    /// nothing yet).
    pub fn of_route(exposition: &str, route: &str) -> anyhow::Result<Self> {
        let wanted = format!("route=\"{route}\"");
        let mut buckets = Vec::new();
        for line in exposition.lines() {
            let Some(rest) = line.strip_prefix(METRIC) else { continue };
            let (labels, count) = rest.rsplit_once("} ").context("a histogram line without }")?;
            if !labels.split(',').any(|label| label == wanted) {
                continue;
            }
            let le = labels
                .split(',')
                .find_map(|label| label.strip_prefix("le=\""))
                .and_then(|v| v.strip_suffix('"'))
                .with_context(|| format!("a bucket without le: {line}"))?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().context("le")? };
            let count: u64 = count.trim().parse().with_context(|| format!("a count: {line}"))?;
            buckets.push((le, count));
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| matches!(w, [a, b] if a.1 > b.1)) {
            bail!("the buckets of {route} are not cumulative");
        }
        Ok(Self(buckets))
    }

    /// What was counted since `before` (same bounds).
    pub fn since(&self, before: &Self) -> anyhow::Result<Self> {
        if before.0.is_empty() {
            return Ok(self.clone());
        }
        if before.0.len() != self.0.len() {
            bail!("the histogram's buckets changed");
        }
        let diff = self
            .0
            .iter()
            .zip(&before.0)
            .map(|(&(le, after), &(_, earlier))| (le, after.saturating_sub(earlier)))
            .collect();
        Ok(Self(diff))
    }

    /// The upper bound, in milliseconds, of the bucket that holds the `q` quantile: that
    /// quantile is at most this. `None` when empty or beyond the last finite bound.
    pub fn quantile_at_most_ms(&self, q: f64) -> Option<f64> {
        let total = self.0.last()?.1;
        if total == 0 {
            return None;
        }
        // The rank of the quantile (1-based), as a count.
        let rank = (q * total as f64).ceil().max(1.0);
        let (le, _) = self.0.iter().find(|(_, count)| *count as f64 >= rank)?;
        le.is_finite().then_some(le * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = "\
# HELP keyhold_http_request_duration_seconds HTTP request latency.
# TYPE keyhold_http_request_duration_seconds histogram
keyhold_http_request_duration_seconds_sum{route=\"/api/1/document/wrap\"} 1.5
keyhold_http_request_duration_seconds_count{route=\"/api/1/document/wrap\"} 1000
keyhold_http_request_duration_seconds_bucket{le=\"0.00005\",route=\"/api/1/document/wrap\"} 900
keyhold_http_request_duration_seconds_bucket{le=\"0.0001\",route=\"/api/1/document/wrap\"} 990
keyhold_http_request_duration_seconds_bucket{le=\"0.0002\",route=\"/api/1/document/wrap\"} 999
keyhold_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/api/1/document/wrap\"} 1000
keyhold_http_request_duration_seconds_bucket{le=\"0.00005\",route=\"/api/1/document/unwrap\"} 7
keyhold_http_request_duration_seconds_bucket{le=\"0.0001\",route=\"/api/1/document/unwrap\"} 7
keyhold_http_request_duration_seconds_bucket{le=\"0.0002\",route=\"/api/1/document/unwrap\"} 7
keyhold_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/api/1/document/unwrap\"} 7
";

    #[test]
    fn percentiles_are_the_bounds_of_their_buckets() {
        let wrap = Buckets::of_route(TEXT, "/api/1/document/wrap").unwrap();
        assert_eq!(wrap.quantile_at_most_ms(0.5), Some(0.05));
        assert_eq!(wrap.quantile_at_most_ms(0.9), Some(0.05));
        assert_eq!(wrap.quantile_at_most_ms(0.99), Some(0.1));
        assert_eq!(wrap.quantile_at_most_ms(0.999), Some(0.2));
        // The last request is beyond every finite bound.
        assert_eq!(wrap.quantile_at_most_ms(1.0), None);
        assert_eq!(Buckets::of_route(TEXT, "/nothing").unwrap().quantile_at_most_ms(0.5), None);
    }

    #[test]
    fn a_window_counts_only_its_own_requests() {
        let before = Buckets::of_route(TEXT, "/api/1/document/wrap").unwrap();
        let later = TEXT.replace("} 1000", "} 2000").replace(
            "0.0002\",route=\"/api/1/document/wrap\"} 999",
            "0.0002\",route=\"/api/1/document/wrap\"} 1998",
        );
        let after = Buckets::of_route(&later, "/api/1/document/wrap").unwrap();
        // The 1000 new requests: all slower than 100 µs, all but one within 200 µs.
        let window = after.since(&before).unwrap();
        assert_eq!(window.quantile_at_most_ms(0.5), Some(0.2));
        assert_eq!(window.quantile_at_most_ms(0.999), Some(0.2));
        assert_eq!(window.quantile_at_most_ms(0.9999), None);
        assert!(after.since(&Buckets(vec![(1.0, 1)])).is_err());
    }

    #[test]
    fn broken_expositions_are_errors() {
        let not_cumulative = TEXT.replace("} 990", "} 10");
        assert!(Buckets::of_route(&not_cumulative, "/api/1/document/wrap").is_err());
        let no_count = "keyhold_http_request_duration_seconds_bucket{le=\"1\",route=\"/a\"} x";
        assert!(Buckets::of_route(no_count, "/a").is_err());
    }
}
