//! Hand-drawn SVG plots: a plain CDF or a bar chart needs no plotting library.

use std::fmt::Write as _;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The decades that span the positive values: (10^low, 10^high), at least one decade wide.
/// Gaps range from a few milliseconds (Steadfast) to seconds (VRRP defaults), so the axis is
/// logarithmic to keep both readable.
fn decades(values: impl Iterator<Item = f64>) -> (i32, i32) {
    let (mut min, mut max) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
        min = min.min(v);
        max = max.max(v);
    }
    if max <= 0.0 {
        return (0, 1);
    }
    let low = min.log10().floor() as i32;
    let high = (max.log10().ceil() as i32).max(low + 1);
    (low, high)
}

/// The document's opening: size, white background, the title centred over the plot area.
fn open_svg(title: &str) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The empirical CDF of each series (label, values) as a step line, one colour per series, on a
/// logarithmic x axis in whole decades; zeros sit on the left edge.
pub fn cdf_svg(title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> String {
    let (low, high) = decades(series.iter().flat_map(|(_, values)| values.iter().copied()));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = f64::from(high - low);
    let x = |v: f64| {
        let position = if v > 0.0 {
            (v.log10() - f64::from(low)) / span
        } else {
            0.0
        };
        LEFT + position.clamp(0.0, 1.0) * plot_w
    };
    let y = |p: f64| TOP + (1.0 - p) * plot_h;
    let mut svg = open_svg(title);
    for decade in low..=high {
        let value = 10f64.powi(decade);
        let tx = x(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            format_tick(value)
        );
    }
    for tick in 0..=5 {
        let fraction = f64::from(tick) / 5.0;
        let ty = y(fraction);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{fraction:.1}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            ty + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">fraction of crashes</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, (label, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        if !sorted.is_empty() {
            let n = sorted.len() as f64;
            let mut points = format!("{LEFT:.1},{:.1}", y(0.0));
            for (k, v) in sorted.iter().enumerate() {
                let _ = write!(points, " {:.1},{:.1}", x(*v), y(k as f64 / n));
                let _ = write!(points, " {:.1},{:.1}", x(*v), y((k + 1) as f64 / n));
            }
            let _ = write!(points, " {:.1},{:.1}", LEFT + plot_w, y(1.0));
            let _ = writeln!(
                svg,
                r#"<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>"#
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Grouped vertical bars on a linear axis from zero: one group per (label, bars), one colour
/// per bar label (the same label keeps its colour in every group), a dashed line at 1.0 when
/// the values are ratios around it. Non-finite values draw no bar.
pub fn bars_svg(title: &str, y_label: &str, groups: &[(String, Vec<(String, f64)>)]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let mut legend: Vec<String> = Vec::new();
    for (_, bars) in groups {
        for (label, _) in bars {
            if !legend.contains(label) {
                legend.push(label.clone());
            }
        }
    }
    let top = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.1;
    let y = |v: f64| TOP + (1.0 - (v / top).clamp(0.0, 1.0)) * plot_h;
    let mut svg = open_svg(title);
    for tick in 0..=5 {
        let value = top * f64::from(tick) / 5.0;
        let ty = y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{value:.2}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            ty + 4.0
        );
    }
    let one = y(1.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{one:.1}" x2="{:.1}" y2="{one:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
        LEFT + plot_w
    );
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / legend.len().max(1) as f64;
    for (g, (group, bars)) in groups.iter().enumerate() {
        let gx = LEFT + group_w * g as f64;
        for (label, value) in bars {
            let slot = legend.iter().position(|l| l == label).unwrap_or(0);
            if !value.is_finite() {
                continue;
            }
            let bx = gx + group_w * 0.1 + bar_w * slot as f64;
            let by = y(*value);
            let _ = writeln!(
                svg,
                r#"<rect x="{bx:.1}" y="{by:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {value:.3}</title></rect>"#,
                bar_w * 0.9,
                TOP + plot_h - by,
                COLORS[slot % COLORS.len()],
                escape(group),
                escape(label)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            TOP + plot_h + 16.0,
            escape(group)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, label) in legend.iter().enumerate() {
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="{:.1}" width="14" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 5.0,
            COLORS[i % COLORS.len()],
            lx + 20.0,
            ly + 4.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_tick(value: f64) -> String {
    if value >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_finite_value_with_stable_colours() {
        let svg = bars_svg(
            "ratios",
            "x",
            &[
                ("1 KB".into(), vec![("a".into(), 1.0), ("b".into(), 0.5)]),
                (
                    "50 KB".into(),
                    vec![("b".into(), f64::NAN), ("a".into(), 2.0)],
                ),
            ],
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3);
        // "a" is the first legend entry in both groups.
        assert_eq!(
            svg.matches(&format!("fill=\"{}\"><title>", COLORS[0]))
                .count(),
            2
        );
        assert!(bars_svg("empty", "x", &[]).contains("</svg>"));
    }

    #[test]
    fn axis_spans_whole_decades() {
        assert_eq!(decades([37.0, 3500.0].into_iter()), (1, 4));
        assert_eq!(decades([0.0, 20.0].into_iter()), (1, 2));
        assert_eq!(decades([10.0].into_iter()), (1, 2));
        assert_eq!(decades(std::iter::empty()), (0, 1));
    }

    #[test]
    fn one_polyline_per_series_and_escaped_labels() {
        let svg = cdf_svg(
            "gaps",
            "ms",
            &[
                ("a <fast>".to_string(), vec![10.0, 20.0, 30.0]),
                ("b".to_string(), vec![]),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("a &lt;fast&gt;"));
    }
}
