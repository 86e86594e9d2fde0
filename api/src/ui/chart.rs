//! SVG bar charts of the per-minute history (succeeded and failed, stacked), drawn on the
//! server: the page shows them with JavaScript off, and a live page swaps in a fresh drawing.
//! Only attributes are used (no inline style), so the Content-Security-Policy holds.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use jobmill_ops::history::Minute;

/// Width of the drawing area in SVG units.
const W: f64 = 720.0;
/// Height of the drawing area.
const H: f64 = 160.0;

/// One rectangle.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Left edge.
    pub x: String,
    /// Top edge.
    pub y: String,
    /// Width.
    pub w: String,
    /// Height.
    pub h: String,
    /// `ok` or `bad` (colours in the stylesheet).
    pub class: &'static str,
    /// Tooltip: the bucket's time and count.
    pub title: String,
}

/// A drawn chart.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The `viewBox` width.
    pub width: u32,
    /// The `viewBox` height (drawing plus labels).
    pub height: u32,
    /// The bars.
    pub bars: Vec<Bar>,
    /// Y of the top gridline and its label (the scale's maximum).
    pub max_label: String,
    /// X-axis labels: (x, text).
    pub ticks: Vec<(String, String)>,
    /// A sentence for screen readers and the caption.
    pub summary: String,
    /// No outcome at all in the window.
    pub empty: bool,
}

/// Sums of several queues' minutes, by minute start (ms).
pub fn sum_minutes<'a>(lists: impl IntoIterator<Item = &'a [Minute]>) -> BTreeMap<i64, (u64, u64)> {
    let mut by: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for list in lists {
        for m in list {
            let e = by.entry(m.minute.timestamp_millis()).or_default();
            e.0 += m.succeeded;
            e.1 += m.failed;
        }
    }
    by
}

/// Draw `buckets` buckets of `per` minutes ending with the current minute at `now_ms`, from
/// per-minute sums.
pub fn draw(by_minute: &BTreeMap<i64, (u64, u64)>, now_ms: i64, buckets: usize, per: i64) -> Chart {
    let minute = 60_000;
    let current = now_ms - now_ms.rem_euclid(minute);
    let span = per * minute;
    let first = current - (buckets as i64 - 1) * span;
    // Bucket starts aligned so the last bucket holds the current minute.
    let mut sums = vec![(0u64, 0u64); buckets];
    for (&m, &(ok, bad)) in by_minute.range(first..=current) {
        let i = ((m - first) / span) as usize;
        if let Some(s) = sums.get_mut(i) {
            s.0 += ok;
            s.1 += bad;
        }
    }
    let max = sums.iter().map(|(a, b)| a + b).max().unwrap_or(0).max(1);
    let slot = W / buckets as f64;
    let bw = (slot * 0.8).max(1.0);
    let mut bars = Vec::new();
    let (mut total_ok, mut total_bad) = (0u64, 0u64);
    for (i, &(ok, bad)) in sums.iter().enumerate() {
        total_ok += ok;
        total_bad += bad;
        let x = i as f64 * slot + (slot - bw) / 2.0;
        let start = first + i as i64 * span;
        let label = time_label(start, per);
        let h_ok = ok as f64 / max as f64 * H;
        let h_bad = bad as f64 / max as f64 * H;
        if ok > 0 {
            bars.push(Bar {
                x: fmt(x),
                y: fmt(H - h_ok),
                w: fmt(bw),
                h: fmt(h_ok),
                class: "ok",
                title: format!("{label}: {ok} succeeded"),
            });
        }
        if bad > 0 {
            bars.push(Bar {
                x: fmt(x),
                y: fmt(H - h_ok - h_bad),
                w: fmt(bw),
                h: fmt(h_bad),
                class: "bad",
                title: format!("{label}: {bad} failed"),
            });
        }
    }
    let tick_every = (buckets / 6).max(1);
    let ticks = (0..buckets)
        .filter(|i| i % tick_every == 0)
        .map(|i| {
            (
                fmt(i as f64 * slot),
                time_label(first + i as i64 * span, per),
            )
        })
        .collect();
    let window = if per * buckets as i64 >= 120 {
        format!("{} hours", per * buckets as i64 / 60)
    } else {
        format!("{} minutes", per * buckets as i64)
    };
    Chart {
        width: W as u32,
        height: H as u32 + 18,
        bars,
        max_label: format!("{max} per {}", if per == 1 { "minute".to_string() } else { format!("{per} min") }),
        ticks,
        summary: format!(
            "Last {window}: {total_ok} succeeded, {total_bad} failed (bars of {per} min; green succeeded, red failed)"
        ),
        empty: total_ok + total_bad == 0,
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn time_label(ms: i64, per: i64) -> String {
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    if per >= 60 {
        t.format("%d %H:%M").to_string()
    } else {
        t.format("%H:%M").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_and_scale() {
        let now = 1_700_000_000_000i64;
        let cur = now - now.rem_euclid(60_000);
        let mut by = BTreeMap::new();
        by.insert(cur, (4, 1));
        by.insert(cur - 120_000, (2, 0));
        by.insert(cur - 3_600_000 * 3, (100, 100)); // outside the window
        let c = draw(&by, now, 60, 1);
        assert_eq!(c.bars.len(), 3);
        assert!(c.summary.contains("6 succeeded, 1 failed"), "{}", c.summary);
        assert!(!c.empty);
        let c = draw(&BTreeMap::new(), now, 96, 15);
        assert!(c.empty && c.bars.is_empty());
    }
}
