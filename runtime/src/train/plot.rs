//! `loss.svg`: the training loss of every step and the validation losses against step, as a small SVG.
//!
//! Written directly (a few SVG elements: axes, ticks at 1-2-5 steps, two
//! polylines, a legend) so that any browser or image viewer shows it; the
//! numbers themselves are in metrics.jsonl.

use std::fmt::Write;

use super::Validation;

const W: f64 = 720.0;
const H: f64 = 420.0;
/// Plot area: left, top, right, bottom.
const BOX: (f64, f64, f64, f64) = (64.0, 28.0, 700.0, 370.0);
const TRAIN: &str = "#1f77b4";
const VAL: &str = "#d62728";

/// About `n` tick values covering `[lo, hi]` at a 1-2-5 spacing.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label with no more digits than the spacing needs.
fn label(v: f64, step: f64) -> String {
    let digits = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.digits$}")
}

/// The SVG of train losses (`losses[t]` = loss of step t) and validation losses.
pub fn loss_svg(losses: &[f32], validations: &[Validation]) -> String {
    let train: Vec<(f64, f64)> = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .map(|(t, &l)| (t as f64, f64::from(l)))
        .collect();
    let val: Vec<(f64, f64)> = validations
        .iter()
        .filter(|v| v.loss.is_finite())
        .map(|v| (v.step as f64, f64::from(v.loss)))
        .collect();
    let all = || train.iter().chain(&val);
    let x_hi = all().map(|p| p.0).fold(1.0, f64::max);
    let (mut y_lo, mut y_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if !y_lo.is_finite() {
        (y_lo, y_hi) = (0.0, 1.0);
    }
    let pad = ((y_hi - y_lo) * 0.05).max(1e-3);
    let (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    let (l, t, r, b) = BOX;
    let sx = |x: f64| l + (r - l) * x / x_hi;
    let sy = |y: f64| b - (b - t) * (y - y_lo) / (y_hi - y_lo);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        r - l,
        b - t
    );
    let xt = ticks(0.0, x_hi, 8);
    let xstep = xt.get(1).zip(xt.first()).map_or(1.0, |(a, b)| a - b);
    for &x in &xt {
        let px = sx(x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{b}" x2="{px:.1}" y2="{t}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            b + 16.0,
            label(x, xstep)
        );
    }
    let yt = ticks(y_lo, y_hi, 6);
    let ystep = yt.get(1).zip(yt.first()).map_or(1.0, |(a, b)| a - b);
    for &y in &yt {
        let py = sy(y);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{py:.1}" x2="{r}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            l - 6.0,
            py + 4.0,
            label(y, ystep)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text><text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">loss</text>"#,
        (l + r) / 2.0,
        H - 8.0,
        (t + b) / 2.0,
        (t + b) / 2.0
    );
    let line = |pts: &[(f64, f64)]| -> String {
        pts.iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if !train.is_empty() {
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{TRAIN}" stroke-width="1.2" points="{}"/>"#,
            line(&train)
        );
    }
    if !val.is_empty() {
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{VAL}" stroke-width="2" points="{}"/>"#,
            line(&val)
        );
        for &(x, y) in &val {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{VAL}"/>"#, sx(x), sy(y));
        }
    }
    let mut legend = vec![(TRAIN, "train loss (each step)")];
    if !val.is_empty() {
        legend.push((VAL, "validation loss (held out)"));
    }
    for (i, (color, name)) in legend.iter().enumerate() {
        let y = t + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            r - 200.0,
            r - 176.0,
            r - 170.0,
            y + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_one_two_five() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(1.13, 3.92, 6);
        assert!((t[1] - t[0] - 0.5).abs() < 1e-12 && t[0] >= 1.13 && *t.last().unwrap() <= 3.92);
        assert_eq!(label(0.5, 0.5), "0.5");
        assert_eq!(label(300.0, 50.0), "300");
    }

    #[test]
    fn every_point_lies_inside_the_plot_area() {
        let losses: Vec<f32> = (0..50).map(|t| 4.0 / (1.0 + t as f32 * 0.1)).collect();
        let val = [
            Validation {
                step: 0,
                loss: 4.1,
                targets: 10,
            },
            Validation {
                step: 50,
                loss: 1.9,
                targets: 10,
            },
        ];
        let svg = loss_svg(&losses, &val);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 2);
        let (l, t, r, b) = BOX;
        let points = svg.split("points=\"").skip(1).flat_map(|p| {
            p.split('"')
                .next()
                .unwrap_or("")
                .split(' ')
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse::<f64>().unwrap(), y.parse::<f64>().unwrap())
                })
                .collect::<Vec<_>>()
        });
        for (x, y) in points {
            assert!((l..=r).contains(&x) && (t..=b).contains(&y), "({x}, {y})");
        }
        // no data: still a valid picture
        assert!(loss_svg(&[], &[]).contains("</svg>"));
    }
}
