//! The status page's chart: loaded and quarantined per second over the last hour, one bar per
//! minute, as inline SVG (the page loads no script and no outside resource).

use std::fmt::Write as _;

use super::history::Rates;

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;
/// Room on the left for the scale's labels and below for the time axis.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 16.0;
const LOADED: &str = "#2a7a3a";
const QUARANTINED: &str = "#c0392b";

/// An SVG bar chart of `bins` (oldest first): loaded below, quarantined stacked on top.
pub fn rates_svg(id: &str, bins: &[Option<Rates>]) -> String {
    let top = bins
        .iter()
        .flatten()
        .map(|r| r.loaded + r.quarantined)
        .fold(0.0, f64::max);
    let scale = nice_ceiling(top);
    let plot_h = HEIGHT - BOTTOM;
    let slot = (WIDTH - LEFT) / bins.len().max(1) as f64;
    let bar = (slot * 0.8).max(1.0);
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        "<svg id=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" \
         aria-labelledby=\"{id}-title\" style=\"max-width:{WIDTH}px\">\
         <title id=\"{id}-title\">Loaded (green) and quarantined (red) per second, one bar per \
         minute, last hour; top of scale {scale}/s</title>\
         <line x1=\"{LEFT}\" y1=\"{plot_h}\" x2=\"{WIDTH}\" y2=\"{plot_h}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"0\" x2=\"{WIDTH}\" y2=\"0\" stroke=\"#ddd\"/>\
         <text x=\"{x}\" y=\"10\" font-size=\"10\" text-anchor=\"end\">{scale}/s</text>\
         <text x=\"{x}\" y=\"{plot_h}\" font-size=\"10\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{HEIGHT}\" font-size=\"10\">−60 min</text>\
         <text x=\"{WIDTH}\" y=\"{HEIGHT}\" font-size=\"10\" text-anchor=\"end\">now</text>",
        x = LEFT - 4.0,
    );
    for (i, rates) in bins.iter().enumerate() {
        let Some(r) = rates else { continue };
        let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
        let h_loaded = r.loaded / scale * plot_h;
        let h_quarantined = r.quarantined / scale * plot_h;
        for (class, colour, y, h) in [
            ("loaded", LOADED, plot_h - h_loaded, h_loaded),
            (
                "quarantined",
                QUARANTINED,
                plot_h - h_loaded - h_quarantined,
                h_quarantined,
            ),
        ] {
            if h > 0.0 {
                let _ = write!(
                    svg,
                    "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" \
                     height=\"{h:.1}\" fill=\"{colour}\"/>"
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The smallest of 1, 2 or 5 × 10ⁿ at or above `value` (1 for an idle hour), so the scale
/// reads as a round number.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powi(value.log10().floor() as i32);
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= value)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_a_round_top_and_missing_minutes_are_blank() {
        let mut bins = vec![None; 60];
        bins[58] = Some(Rates {
            loaded: 300.0,
            quarantined: 0.0,
        });
        bins[59] = Some(Rates {
            loaded: 100.0,
            quarantined: 50.0,
        });
        let svg = rates_svg("chart", &bins);
        assert!(svg.starts_with("<svg id=\"chart\"") && svg.ends_with("</svg>"));
        assert!(svg.contains("top of scale 500/s"), "{svg}");
        assert_eq!(svg.matches("class=\"loaded\"").count(), 2);
        assert_eq!(svg.matches("class=\"quarantined\"").count(), 1);
        // 300 of 500 over a 104-unit plot.
        assert!(svg.contains("height=\"62.4\""), "{svg}");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.5), 2.0);
        assert_eq!(nice_ceiling(2.0), 2.0);
        assert_eq!(nice_ceiling(31.0), 50.0);
        assert_eq!(nice_ceiling(501.0), 1000.0);
    }
}
