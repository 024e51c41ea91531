//! An SVG chart of one run: answered probes per second for each client, the primary over
//! time as a coloured band, and the faults as marked vertical lines.

use std::fmt::Write;

use crate::runner::Outcome;

const W: f64 = 960.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const BAND_Y: f64 = 40.0;
const PLOT_TOP: f64 = 90.0;
const PLOT_BOTTOM: f64 = 320.0;
const PALETTE: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"];

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The chart as an SVG document.
pub fn svg(o: &Outcome) -> String {
    let end = o.duration_ms.max(1) as f64;
    let x = |ms: f64| LEFT + (W - LEFT - RIGHT) * ms / end;
    let max_rate = o.series.values().flatten().copied().max().unwrap_or(1).max(1) as f64 * 10.0;
    let y = |rate: f64| PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * rate / max_rate;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="20" font-size="15">{} (seed {}): primary and answered probes per second</text>
"##,
        o.scenario, o.seed
    );
    band(&mut s, o, &x);
    axes(&mut s, end, max_rate, &x, &y);
    for (i, (client, buckets)) in o.series.iter().enumerate() {
        let pts: Vec<String> = buckets
            .iter()
            .enumerate()
            .map(|(b, n)| format!("{:.1},{:.1}", x(b as f64 * 100.0 + 50.0), y(f64::from(*n) * 10.0)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{}">{client} (outage {} ms)</text>"#,
            colour(i + 2),
            pts.join(" "),
            W - 230.0,
            PLOT_TOP + 14.0 * i as f64,
            colour(i + 2),
            o.outage_ms.get(client).copied().unwrap_or(0)
        );
    }
    for (ms, text) in &o.faults {
        let fx = x(*ms as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{fx:.1}" y1="{BAND_Y}" x2="{fx:.1}" y2="{PLOT_BOTTOM}" stroke="#d62728" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" fill="#d62728" transform="rotate(-90 {:.1} {})">{}</text>"##,
            fx + 12.0,
            PLOT_BOTTOM - 4.0,
            fx + 12.0,
            PLOT_BOTTOM - 4.0,
            escape(text.trim_start_matches("fault: "))
        );
    }
    s.push_str("</svg>\n");
    s
}

fn band(s: &mut String, o: &Outcome, x: &dyn Fn(f64) -> f64) {
    let mut names: Vec<&str> = Vec::new();
    for (i, (start, who)) in o.primaries.iter().enumerate() {
        let stop = o.primaries.get(i + 1).map_or(o.duration_ms, |(t, _)| *t);
        let (x0, x1) = (x(*start as f64), x(stop as f64));
        let fill = if who == "none" {
            "#dddddd".to_string()
        } else if who.contains('+') {
            "#d62728".to_string()
        } else {
            let idx = names.iter().position(|n| *n == who).unwrap_or_else(|| {
                names.push(who);
                names.len() - 1
            });
            colour(idx).to_string()
        };
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{BAND_Y}" width="{:.1}" height="24" fill="{fill}"/><text x="{:.1}" y="{}" fill="black">{}</text>"#,
            (x1 - x0).max(0.5),
            x0 + 3.0,
            BAND_Y + 16.0,
            if x1 - x0 > 40.0 { who.as_str() } else { "" }
        );
    }
    let _ = writeln!(s, r#"<text x="4" y="{}">primary</text>"#, BAND_Y + 16.0);
}

fn axes(s: &mut String, end: f64, max_rate: f64, x: &dyn Fn(f64) -> f64, y: &dyn Fn(f64) -> f64) {
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{PLOT_BOTTOM}" x2="{}" y2="{PLOT_BOTTOM}" stroke="black"/><line x1="{LEFT}" y1="{PLOT_TOP}" x2="{LEFT}" y2="{PLOT_BOTTOM}" stroke="black"/><text x="4" y="{}">probes/s</text><text x="{:.1}" y="{}">{max_rate:.0}</text>"##,
        W - RIGHT,
        PLOT_TOP - 6.0,
        LEFT - 40.0,
        y(max_rate) + 4.0
    );
    let step = if end > 20_000.0 { 5_000.0 } else { 1_000.0 };
    let mut t = 0.0;
    while t <= end {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}s</text>"#,
            x(t),
            PLOT_BOTTOM + 16.0,
            t / 1000.0
        );
        t += step;
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
