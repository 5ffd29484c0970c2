//! The benchmark figure (docs/benchmarks.svg): TCP throughput and UDP request/response
//! latency of each variant in each regime; bars at the median, whiskers min to max.
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One regime's results, variants in the same order in every panel.
pub struct Panel {
    pub title: &'static str,
    pub variants: Vec<&'static str>,
    /// Per variant: the rounds' TCP Gbit/s.
    pub gbps: Vec<Vec<f64>>,
    /// Per variant: the rounds' UDP request/response p50, µs.
    pub p50: Vec<Vec<f64>>,
}

fn color(variant: &str) -> RGBColor {
    match variant {
        "host-gw" => RGBColor(140, 140, 140),
        "linux-vxlan" => RGBColor(230, 140, 40),
        "oxlay-tc" => RGBColor(40, 100, 200),
        "oxlay-gre" => RGBColor(150, 80, 170),
        _ => RGBColor(60, 160, 90),
    }
}

/// (min, median, max) of the rounds.
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

pub fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let width = 420 * panels.len() as u32;
    let root = SVGBackend::new(path, (width, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(320);
    let rows = [
        (top, "TCP Gbit/s", true),
        (bottom, "UDP request/response p50, µs", false),
    ];
    for (row, y_desc, is_throughput) in rows {
        for (area, panel) in row.split_evenly((1, panels.len())).iter().zip(panels) {
            let values = if is_throughput {
                &panel.gbps
            } else {
                &panel.p50
            };
            let top_value = values.iter().map(|v| summary(v).2).fold(0.0, f64::max) * 1.15;
            let n = panel.variants.len();
            let caption = if is_throughput { panel.title } else { "" };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 13))
                .margin(12)
                .x_label_area_size(28)
                .y_label_area_size(48)
                .build_cartesian_2d((0..n).into_segmented(), 0.0..top_value.max(1.0))
                .map_err(|e| err(&e))?;
            let names = panel.variants.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .y_desc(y_desc)
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).copied().unwrap_or("").into(),
                    _ => String::new(),
                })
                .draw()
                .map_err(|e| err(&e))?;
            for (i, v) in values.iter().enumerate() {
                let (min, median, max) = summary(v);
                let fill = color(panel.variants[i]).filled();
                chart
                    .draw_series(
                        Histogram::vertical(&chart)
                            .margin(10)
                            .style(fill)
                            .data([(i, median)]),
                    )
                    .map_err(|e| err(&e))?;
                chart
                    .draw_series([ErrorBar::new_vertical(
                        SegmentValue::CenterOf(i),
                        min,
                        median,
                        max,
                        BLACK.stroke_width(1),
                        8,
                    )])
                    .map_err(|e| err(&e))?;
            }
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_variant_of_every_regime() {
        let dir = std::env::temp_dir().join(format!("oxlay-figure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.svg");
        let panel = |title| Panel {
            title,
            variants: vec!["host-gw", "oxlay-tc"],
            gbps: vec![vec![5.0, 6.0, 5.5], vec![4.0, 4.5, 4.2]],
            p50: vec![vec![30.0, 31.0, 32.0], vec![29.0, 30.0, 35.0]],
        };
        draw(&path, &[panel("wire"), panel("per packet")]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            svg.starts_with("<svg"),
            "not an SVG: {}",
            &svg[..svg.len().min(80)]
        );
        for label in ["wire", "per packet", "host-gw", "oxlay-tc", "TCP Gbit/s"] {
            assert!(svg.contains(label), "the figure lacks {label:?}");
        }
        // Two panels x two rows x two variants: a bar each.
        assert!(svg.matches("<rect").count() >= 8, "too few bars");
    }
}
