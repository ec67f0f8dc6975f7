//! The two exposition formats `/metrics` speaks: OpenMetrics for a scraper that asks for it (a
//! Prometheus server does), else the classic Prometheus text format 0.0.4, which `promtool check
//! metrics` and agents that only speak the older format read. The registry writes OpenMetrics;
//! [`classic`] rewrites it, as the Prometheus client libraries do.

/// `Content-Type` of OpenMetrics.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the classic text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// Rewrites OpenMetrics text into the classic format: a counter's (an info's) family takes its
/// samples' `_total` (`_info`) name, `_created` samples, `# UNIT`, `# EOF` and exemplars go, `unknown` becomes
/// `untyped`, and HELP keeps only the escapes the classic format knows.
pub fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut family: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") && !family.is_empty() {
            flush(&family, &mut out);
            family.clear();
        }
        if line != "# EOF" {
            family.push(line);
        }
    }
    flush(&family, &mut out);
    out
}

/// Writes one family (its metadata lines, then its samples) in the classic format.
fn flush(family: &[&str], out: &mut String) {
    let kind = family
        .iter()
        .find_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '));
    let (name, kind) = kind.unwrap_or(("", "unknown"));
    // Counter and info families are named without the suffix their samples carry.
    let suffix = match kind {
        "counter" => "_total",
        "info" => "_info",
        _ => "",
    };
    let classic_name = if name.ends_with(suffix) {
        name.to_owned()
    } else {
        format!("{name}{suffix}")
    };
    let created = format!("{name}_created");
    for line in family {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let text = help.split_once(' ').map_or("", |(_, t)| t);
            out.push_str(&format!(
                "# HELP {classic_name} {}\n",
                text.replace("\\\"", "\"")
            ));
        } else if line.starts_with("# TYPE ") {
            let kind = match kind {
                "unknown" => "untyped",
                "info" | "stateset" => "gauge",
                other => other,
            };
            out.push_str(&format!("# TYPE {classic_name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line.is_empty() {
            continue;
        } else if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        } else {
            let sample = line.split_once(" # ").map_or(*line, |(s, _)| s);
            let sample_name = sample.split(['{', ' ']).next().unwrap_or_default();
            if sample_name != created {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS_TEXT: &str = "# HELP piivault_loaded Rows committed.\n\
        # TYPE piivault_loaded counter\n\
        piivault_loaded_total 29\n\
        piivault_loaded_created 1700000000.0\n\
        # HELP piivault_batch_seconds Seconds per \\\"batch\\\".\n\
        # TYPE piivault_batch_seconds histogram\n\
        # UNIT piivault_batch_seconds seconds\n\
        piivault_batch_seconds_sum 0.5\n\
        piivault_batch_seconds_count 2\n\
        piivault_batch_seconds_bucket{le=\"+Inf\"} 2 # {trace=\"x\"} 0.3\n\
        # HELP piivault_in_flight_messages In hand.\n\
        # TYPE piivault_in_flight_messages gauge\n\
        piivault_in_flight_messages 0\n\
        # HELP piivault_build The build.\n\
        # TYPE piivault_build info\n\
        piivault_build_info{version=\"0.1.0\"} 1\n\
        # EOF\n";

    #[test]
    fn counters_take_their_total_name_and_openmetrics_only_lines_go() {
        assert_eq!(
            classic(OPENMETRICS_TEXT),
            "# HELP piivault_loaded_total Rows committed.\n\
             # TYPE piivault_loaded_total counter\n\
             piivault_loaded_total 29\n\
             # HELP piivault_batch_seconds Seconds per \"batch\".\n\
             # TYPE piivault_batch_seconds histogram\n\
             piivault_batch_seconds_sum 0.5\n\
             piivault_batch_seconds_count 2\n\
             piivault_batch_seconds_bucket{le=\"+Inf\"} 2\n\
             # HELP piivault_in_flight_messages In hand.\n\
             # TYPE piivault_in_flight_messages gauge\n\
             piivault_in_flight_messages 0\n\
             # HELP piivault_build_info The build.\n\
             # TYPE piivault_build_info gauge\n\
             piivault_build_info{version=\"0.1.0\"} 1\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }
}
