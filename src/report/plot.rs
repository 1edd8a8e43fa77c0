//! The charts of `tpprof report --html`, drawn as SVG text by plotters' SVG backend (no fonts, no
//! bitmaps: the browser lays out the `<text>`), and the one piece of data shaping they need: the
//! CDF of an HdrHistogram, read bucket by bucket from the histogram itself.

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;

use crate::record::histogram::LatencyHistogram;

/// Width and height of every chart, px (the page scales them down on narrow screens).
pub const SIZE: (u32, u32) = (900, 420);

/// The most points a CDF keeps (buckets are merged beyond that, the last one always kept).
pub const CDF_POINTS: usize = 600;

/// Why a chart could not be drawn (plotters' own error, with the chart's title).
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart `{title}` failed: {source}")]
pub struct PlotError {
    pub title: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// An sRGB colour.
pub type Rgb = (u8, u8, u8);

/// Where a chart's legend box goes.
pub use plotters::chart::SeriesLabelPosition as LegendAt;

pub fn color(c: Rgb) -> RGBColor {
    RGBColor(c.0, c.1, c.2)
}

/// A colour per file (overlays) or per rank (one file's chart): Tableau's ten, then again.
pub const PALETTE: [Rgb; 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

pub fn palette(i: usize) -> Rgb {
    PALETTE[i % PALETTE.len()]
}

/// The CSS form of a colour (the page's legend swatches).
pub fn css(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// The empirical CDF of a latency histogram: (value in ms, fraction of values ≤ it), one point per
/// recorded bucket at the bucket's highest equivalent value — the value `value_at_quantile` (and so
/// every percentile in the JSON) reports — so the curve crosses q exactly at the JSON's p(q). More
/// than `max_points` buckets are thinned to those where the fraction advanced by 1/max_points; the
/// last bucket (fraction 1, the max) is always kept.
pub fn cdf(h: &LatencyHistogram, max_points: usize) -> Vec<(f64, f64)> {
    let hist = h.hist();
    let total = hist.len();
    if total == 0 {
        return Vec::new();
    }
    let step = 1.0 / max_points.max(1) as f64;
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut seen = 0u64;
    let mut last_kept = f64::NEG_INFINITY;
    let buckets: Vec<_> =
        hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_since_last_iteration())).collect();
    for (i, (value, count)) in buckets.iter().enumerate() {
        seen += count;
        let fraction = seen as f64 / total as f64;
        if buckets.len() <= max_points || fraction - last_kept >= step || i + 1 == buckets.len() {
            out.push((*value as f64 / 1e6, fraction));
            last_kept = fraction;
        }
    }
    out
}

/// A CDF as a staircase (flat between recorded values), starting from fraction 0 at the first value.
pub fn staircase(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    let mut below = 0.0;
    for &(x, y) in points {
        out.push((x, below));
        out.push((x, y));
        below = y;
    }
    out
}

/// At most `n` points of a series, evenly strided, the last one kept (memory timelines).
pub fn thin(points: Vec<(f64, f64)>, n: usize) -> Vec<(f64, f64)> {
    if points.len() <= n || n < 2 {
        return points;
    }
    let stride = points.len().div_ceil(n - 1);
    let last = *points.last().expect("non-empty: longer than n");
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(stride).collect();
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
    pub width: u32,
    pub dashed: bool,
    /// A dot at every point (short series: a few samples).
    pub dots: bool,
}

impl Line {
    pub fn new(label: impl Into<String>, color: Rgb, points: Vec<(f64, f64)>) -> Line {
        Line { label: label.into(), color, points, width: 2, dashed: false, dots: false }
    }
}

/// A shaded span of x (a phase of the run).
#[derive(Debug, Clone)]
pub struct Band {
    pub x0: f64,
    pub x1: f64,
    pub label: String,
    pub color: Rgb,
}

/// A marked point (a peak), drawn as a ring in its line's colour.
#[derive(Debug, Clone)]
pub struct Mark {
    pub x: f64,
    pub y: f64,
    pub color: Rgb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Log10 (latency CDFs: a tail of 100× the median stays readable).
    Log,
}

/// A range plotters can place its ticks on: finite, within ±1e15, ordered, and wide against its
/// magnitude. A JSON holding 1.8e308 (or a span of 1e-9 at 1e12) made plotters' tick search loop
/// for ever; such a figure is off the chart, not a hang.
fn sane(r: Range<f64>, scale: Scale) -> Range<f64> {
    const LIMIT: f64 = 1e15;
    let clamp = |v: f64, nan: f64| if v.is_nan() { nan } else { v.clamp(-LIMIT, LIMIT) };
    let (mut a, mut b) = (clamp(r.start, 0.0), clamp(r.end, 1.0));
    if a > b {
        (a, b) = (b, a);
    }
    match scale {
        Scale::Log => {
            a = a.max(1e-12);
            b = b.max(a * 1.01);
        }
        Scale::Linear => {
            let span = (a.abs().max(b.abs()) * 1e-6).max(1e-9);
            if b - a < span {
                let mid = a / 2.0 + b / 2.0;
                (a, b) = (mid - span, mid + span);
            }
        }
    }
    a..b
}

/// Lines over x, with optional shaded bands and marks.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub x_scale: Scale,
    /// Fixed y range (a CDF: 0..1); None: from 0 (or the data's minimum, if negative) to the top.
    pub y_range: Option<Range<f64>>,
    pub lines: Vec<Line>,
    pub bands: Vec<Band>,
    pub marks: Vec<Mark>,
    pub legend: LegendAt,
}

impl LineChart {
    pub fn new(title: impl Into<String>, x_desc: impl Into<String>, y_desc: impl Into<String>) -> LineChart {
        LineChart {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            x_scale: Scale::Linear,
            y_range: None,
            lines: Vec::new(),
            bands: Vec::new(),
            marks: Vec::new(),
            legend: LegendAt::LowerRight,
        }
    }

    /// The x and y extent of the data (lines, bands, marks), padded so nothing sits on the frame.
    fn extent(&self) -> (Range<f64>, Range<f64>) {
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .chain(self.bands.iter().flat_map(|b| [b.x0, b.x1]))
            .chain(self.marks.iter().map(|m| m.x));
        let xs: Vec<f64> = xs.filter(|x| x.is_finite() && (self.x_scale == Scale::Linear || *x > 0.0)).collect();
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .chain(self.marks.iter().map(|m| m.y))
            .filter(|y| y.is_finite())
            .collect();
        let (mut x0, mut x1) =
            (xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(f64::NEG_INFINITY, f64::max));
        if !x0.is_finite() {
            (x0, x1) = if self.x_scale == Scale::Log { (0.1, 10.0) } else { (0.0, 1.0) };
        }
        match self.x_scale {
            Scale::Log => {
                (x0, x1) = (x0 / 1.15, x1 * 1.15);
            }
            Scale::Linear => {
                let pad = if x1 > x0 { (x1 - x0) * 0.02 } else { x0.abs().max(1.0) * 0.5 };
                (x0, x1) = (x0 - pad, x1 + pad);
            }
        }
        let y = self.y_range.clone().unwrap_or_else(|| {
            let top = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let bottom = ys.iter().copied().fold(0.0, f64::min);
            let top = if top.is_finite() && top > bottom { top } else { bottom + 1.0 };
            bottom..top + (top - bottom) * 0.08
        });
        (sane(x0..x1, self.x_scale), sane(y, Scale::Linear))
    }

    /// The chart as one `<svg>` element.
    pub fn svg(&self) -> Result<String, PlotError> {
        let (x, y) = self.extent();
        let drawn = match self.x_scale {
            Scale::Linear => self.draw(x, y),
            Scale::Log => self.draw(x.log_scale(), y),
        };
        drawn.map_err(|source| PlotError { title: self.title.clone(), source })
    }

    fn draw<XS>(&self, x: XS, y: Range<f64>) -> Result<String, Box<dyn std::error::Error + Send + Sync>>
    where
        XS: AsRangedCoord<Value = f64>,
        XS::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(52)
                .y_label_area_size(72)
                .build_cartesian_2d(x, y.clone())?;
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .x_label_formatter(&|v| number(*v))
                .y_label_formatter(&|v| number(*v))
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 16))
                .max_light_lines(1)
                .light_line_style(RGBColor(240, 240, 240))
                .draw()?;
            for b in &self.bands {
                let c = color(b.color);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(b.x0, y.start), (b.x1, y.end)],
                        c.mix(0.14).filled(),
                    )))?
                    .label(&b.label)
                    .legend(move |(px, py)| Rectangle::new([(px, py - 5), (px + 16, py + 5)], c.mix(0.3).filled()));
            }
            for l in &self.lines {
                let c = color(l.color);
                let style = c.stroke_width(l.width);
                let series = if l.dashed {
                    chart.draw_series(DashedLineSeries::new(l.points.iter().copied(), 8, 5, style))?
                } else {
                    chart.draw_series(LineSeries::new(l.points.iter().copied(), style))?
                };
                if !l.label.is_empty() {
                    series
                        .label(&l.label)
                        .legend(move |(px, py)| PathElement::new(vec![(px, py), (px + 16, py)], c.stroke_width(3)));
                }
                if l.dots {
                    chart.draw_series(l.points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
                }
            }
            chart.draw_series(self.marks.iter().map(|m| Circle::new((m.x, m.y), 6, color(m.color).stroke_width(2))))?;
            if self.lines.iter().any(|l| !l.label.is_empty()) || !self.bands.is_empty() {
                chart
                    .configure_series_labels()
                    .position(self.legend.clone())
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(160, 160, 160))
                    .label_font(("sans-serif", 15))
                    .draw()?;
            }
            root.present()?;
        }
        Ok(inline(buf))
    }
}

/// Bars in groups (a rank's GPU) and kinds within a group (busy, NCCL, …), each bar with an
/// optional whisker up to a second value (p90 above a p50 bar).
#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    pub y_desc: String,
    pub groups: Vec<String>,
    /// The kinds within a group, with their colours.
    pub kinds: Vec<(String, Rgb)>,
    /// values[group][kind]: (bar, whisker top); None: no bar.
    pub values: Vec<Vec<Option<(f64, f64)>>>,
}

impl BarChart {
    pub fn svg(&self) -> Result<String, PlotError> {
        self.draw().map_err(|source| PlotError { title: self.title.clone(), source })
    }

    fn draw(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let top = self.values.iter().flatten().flatten().map(|&(a, b)| a.max(b)).fold(0.0, f64::max);
        let top = sane(0.0..if top > 0.0 { top * 1.12 } else { 1.0 }, Scale::Linear).end;
        let n = self.groups.len().max(1);
        let k = self.kinds.len().max(1) as f64;
        let mut buf = String::new();
        {
            let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(52)
                .y_label_area_size(72)
                .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top)?;
            let groups = &self.groups;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&|v| {
                    let i = v.round();
                    if (v - i).abs() < 1e-6 && i >= 0.0 {
                        groups.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .y_desc(&self.y_desc)
                .y_label_formatter(&|v| number(*v))
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 16))
                .max_light_lines(1)
                .light_line_style(RGBColor(240, 240, 240))
                .draw()?;
            let width = 0.8 / k;
            for (j, (name, rgb)) in self.kinds.iter().enumerate() {
                let c = color(*rgb);
                let bars = self.values.iter().enumerate().filter_map(|(g, row)| {
                    let (v, _) = row.get(j).copied().flatten()?;
                    let x0 = g as f64 - 0.4 + j as f64 * width;
                    Some(Rectangle::new([(x0 + width * 0.08, 0.0), (x0 + width * 0.92, v)], c.filled()))
                });
                chart
                    .draw_series(bars)?
                    .label(name)
                    .legend(move |(px, py)| Rectangle::new([(px, py - 5), (px + 12, py + 5)], c.filled()));
                let whiskers = self.values.iter().enumerate().filter_map(|(g, row)| {
                    let (v, w) = row.get(j).copied().flatten()?;
                    let mid = g as f64 - 0.4 + (j as f64 + 0.5) * width;
                    (w > v).then(|| PathElement::new(vec![(mid, v), (mid, w)], BLACK.stroke_width(1)))
                });
                chart.draw_series(whiskers)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .label_font(("sans-serif", 15))
                .draw()?;
            root.present()?;
        }
        Ok(inline(buf))
    }
}

/// A number for an axis: few digits, no trailing zeros.
pub fn number(v: f64) -> String {
    let a = v.abs();
    let s = if a == 0.0 {
        return "0".into();
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// plotters' standalone SVG document as an element inside HTML: the XML namespace is implied there
/// (and the page holds no URL at all), and the chart scales down with the page.
fn inline(svg: String) -> String {
    svg.replacen(r#" xmlns="http://www.w3.org/2000/svg""#, "", 1).replacen("<svg ", r#"<svg class="plot" "#, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known truth: 1, 2, …, 100 ms once each. The CDF reaches q exactly at the histogram's own
    /// p(q) (the value the JSON reports), its points are the recorded values, and it ends at 1.
    #[test]
    fn the_cdf_is_the_histogram_read_bucket_by_bucket() {
        let h: LatencyHistogram = (1..=100u64).map(|ms| ms * 1_000_000).collect();
        let points = cdf(&h, CDF_POINTS);
        assert_eq!(points.len(), 100, "one point per recorded value");
        for (q, expected_ms) in [(0.5, 50.0), (0.9, 90.0), (0.95, 95.0), (0.99, 99.0)] {
            let (x, y) = *points.iter().find(|p| p.1 >= q - 1e-12).unwrap();
            assert_eq!(x, h.hist().value_at_quantile(q) as f64 / 1e6, "q={q}");
            assert!((x - expected_ms).abs() <= expected_ms * 1e-3, "q={q}: {x} ms");
            assert!((y - q).abs() < 1e-12, "q={q}: {y}");
        }
        assert_eq!(points.last().unwrap().1, 1.0);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "increasing");
        // A skewed histogram: 99 values of 1 ms and one of 50 ms: p50 = 1 ms, p99 = 1 ms, max 50.
        let h: LatencyHistogram = std::iter::repeat_n(1_000_000u64, 99).chain([50_000_000]).collect();
        let p = cdf(&h, CDF_POINTS);
        assert_eq!(p.len(), 2);
        assert!((p[0].1 - 0.99).abs() < 1e-12 && (p[0].0 - 1.0).abs() < 1e-3, "{p:?}");
        assert!((p[1].0 - 50.0).abs() < 0.05 && p[1].1 == 1.0, "{p:?}");
        assert!(cdf(&LatencyHistogram::new(), CDF_POINTS).is_empty());
    }

    #[test]
    fn a_long_cdf_is_thinned_but_keeps_its_ends() {
        let h: LatencyHistogram = (1..=5000u64).map(|us| us * 1_000).collect();
        let p = cdf(&h, 100);
        assert!(p.len() <= 101 && p.len() >= 90, "{}", p.len());
        assert_eq!(p.last().unwrap().1, 1.0);
        assert_eq!(p.last().unwrap().0, h.max_ns() as f64 / 1e6);
        assert_eq!(staircase(&p).len(), 2 * p.len());
        let t = thin((0..1000).map(|i| (i as f64, 0.0)).collect(), 100);
        assert!(t.len() <= 101 && t.last().unwrap().0 == 999.0, "{}", t.len());
    }

    #[test]
    fn charts_are_inline_svg_without_urls() {
        let mut c = LineChart::new("a <chart> & more", "x", "y");
        c.lines.push(Line::new("one", palette(0), vec![(1.0, 1.0), (2.0, 3.0)]));
        c.bands.push(Band { x0: 0.5, x1: 1.5, label: "decode".into(), color: palette(1) });
        c.marks.push(Mark { x: 2.0, y: 3.0, color: palette(0) });
        let svg = c.svg().unwrap();
        assert!(svg.starts_with(r#"<svg class="plot" "#), "{}", &svg[..80]);
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("http"), "{svg}");
        assert!(svg.contains("a &lt;chart&gt; &amp; more"), "text is escaped");
        c.x_scale = Scale::Log;
        assert!(c.svg().unwrap().contains("<polyline"));
        // Nothing to draw is still a chart (the page says why separately), never a panic.
        assert!(LineChart::new("empty", "x", "y").svg().is_ok());
        let b = BarChart {
            title: "bars".into(),
            y_desc: "ms".into(),
            groups: vec!["rank 0".into(), "rank 1".into()],
            kinds: vec![("busy".into(), palette(0)), ("idle".into(), palette(1))],
            values: vec![vec![Some((1.0, 1.5)), None], vec![Some((2.0, 2.0)), Some((0.5, 0.7))]],
        };
        let svg = b.svg().unwrap();
        assert!(svg.contains("rank 1") && svg.contains("<rect"), "{svg}");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(12.0), "12");
        assert_eq!(number(1234.4), "1234");
    }
}
