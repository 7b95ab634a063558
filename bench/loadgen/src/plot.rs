//! `plot`: the scale curve of a `bench/curve.sh` results directory, drawn (one SVG per op:
//! a row per cluster config, throughput on the left, p50/p99 latency on the right, both systems
//! in each panel) and tabulated (markdown on stdout).
//!
//! Input files are named `<system>_n<nodes>_k<keys>_<op>_c<clients>.txt` (`loadgen run --out`).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::report::read_kv;
use crate::AnyErr;

/// One measured point.
#[derive(Debug, Clone, Copy)]
struct Point {
    clients: u32,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// (nodes, keys): a cluster config.
type Config = (u32, u64);
/// op → config → system → points sorted by clients.
type Curves = BTreeMap<String, BTreeMap<Config, BTreeMap<String, Vec<Point>>>>;

const SYSTEMS: [(&str, RGBColor); 2] = [
    ("raftkv", RGBColor(31, 119, 180)),
    ("etcd", RGBColor(214, 39, 40)),
];

/// `raftkv_n3_k100000_write_c64` → (system, nodes, keys, op, clients).
fn parse_name(stem: &str) -> Option<(String, u32, u64, String, u32)> {
    let mut parts = stem.split('_');
    let system = parts.next()?.to_string();
    let nodes = parts.next()?.strip_prefix('n')?.parse().ok()?;
    let keys = parts.next()?.strip_prefix('k')?.parse().ok()?;
    let op = parts.next()?.to_string();
    let clients = parts.next()?.strip_prefix('c')?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((system, nodes, keys, op, clients))
}

fn read_curves(dir: &Path) -> Curves {
    let mut curves = Curves::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return curves;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("txt") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let Some((system, nodes, keys, op, clients)) = parse_name(stem) else {
            continue;
        };
        let kv = read_kv(&path);
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok());
        let (Some(ops_per_s), Some(p50_us), Some(p99_us)) =
            (num("ops_per_s"), num("p50_us"), num("p99_us"))
        else {
            continue;
        };
        let errors = num("errors").unwrap_or(0.0) as u64;
        let point = Point {
            clients,
            ops_per_s,
            p50_us,
            p99_us,
            errors,
        };
        curves
            .entry(op)
            .or_default()
            .entry((nodes, keys))
            .or_default()
            .entry(system)
            .or_default()
            .push(point);
    }
    for configs in curves.values_mut() {
        for systems in configs.values_mut() {
            for points in systems.values_mut() {
                points.sort_by_key(|p| p.clients);
            }
        }
    }
    curves
}

fn keys_label(keys: u64) -> String {
    match keys {
        k if k >= 1_000_000 && k % 1_000_000 == 0 => format!("{}M", k / 1_000_000),
        k if k >= 1_000 && k % 1_000 == 0 => format!("{}k", k / 1_000),
        k => k.to_string(),
    }
}

fn op_label(op: &str) -> &str {
    match op {
        "write" => "Put of one key (etcd gRPC API)",
        "lread" => "linearizable Range of one key (etcd gRPC API)",
        "sread" => "serializable Range of one key (etcd gRPC API)",
        "cas" => "CAS Txn (etcd gRPC API)",
        other => other,
    }
}

/// One SVG per op: a row per config, throughput | latency.
fn draw(
    path: &Path,
    op: &str,
    configs: &BTreeMap<Config, BTreeMap<String, Vec<Point>>>,
) -> Result<(), AnyErr> {
    let rows = configs.len().max(1);
    let root = SVGBackend::new(path, (1200, 60 + 380 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "raftkv vs etcd: {}, clients on one connection each",
            op_label(op)
        ),
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((rows, 2));
    let clients_max = configs
        .values()
        .flat_map(|s| s.values())
        .flatten()
        .map(|p| p.clients)
        .max()
        .unwrap_or(1);
    let x_range = (1f64..(clients_max as f64 * 1.5)).log_scale();
    for (row, ((nodes, keys), systems)) in configs.iter().enumerate() {
        let title = format!("{nodes} nodes, {} keys", keys_label(*keys));
        // throughput
        let ops_max = systems
            .values()
            .flatten()
            .map(|p| p.ops_per_s)
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&panels[row * 2])
            .caption(format!("{title}: throughput"), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range.clone(), 0f64..ops_max * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc("ops/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (name, color) in SYSTEMS {
            let Some(points) = systems.get(name) else {
                continue;
            };
            let xy: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.clients as f64, p.ops_per_s))
                .collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(xy.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        // latency (log scale, ms)
        let lat: Vec<f64> = systems
            .values()
            .flatten()
            .flat_map(|p| [p.p50_us / 1000.0, p.p99_us / 1000.0])
            .collect();
        let lo = lat.iter().copied().fold(f64::INFINITY, f64::min).max(0.01);
        let hi = lat.iter().copied().fold(0.0, f64::max).max(lo * 2.0);
        let mut chart = ChartBuilder::on(&panels[row * 2 + 1])
            .caption(
                format!("{title}: latency (solid p99, dashed p50)"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range.clone(), (lo / 1.5..hi * 1.5).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if *y < 1.0 {
                    format!("{y:.2}")
                } else {
                    format!("{y:.0}")
                }
            })
            .draw()?;
        for (name, color) in SYSTEMS {
            let Some(points) = systems.get(name) else {
                continue;
            };
            let p99: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.clients as f64, p.p99_us / 1000.0))
                .collect();
            let p50: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.clients as f64, p.p50_us / 1000.0))
                .collect();
            chart
                .draw_series(LineSeries::new(p99.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(DashedLineSeries::new(
                p50.clone(),
                6,
                4,
                color.stroke_width(1),
            ))?;
            chart.draw_series(
                p99.iter()
                    .chain(&p50)
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The same numbers as a markdown table per op and config.
fn table(op: &str, configs: &BTreeMap<Config, BTreeMap<String, Vec<Point>>>) {
    println!("\n### {}\n", op_label(op));
    for ((nodes, keys), systems) in configs {
        println!("**{nodes} nodes, {} keys**\n", keys_label(*keys));
        println!("| clients | raftkv ops/s | p50 ms | p99 ms | etcd ops/s | p50 ms | p99 ms | raftkv/etcd |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut clients: Vec<u32> = systems.values().flatten().map(|p| p.clients).collect();
        clients.sort_unstable();
        clients.dedup();
        for c in clients {
            let at = |s: &str| {
                systems
                    .get(s)
                    .and_then(|v| v.iter().find(|p| p.clients == c))
                    .copied()
            };
            let cells = |p: Option<Point>| match p {
                Some(p) => {
                    let err = if p.errors > 0 {
                        format!(" ({} errors)", p.errors)
                    } else {
                        String::new()
                    };
                    format!(
                        "{:.0}{err} | {:.2} | {:.2}",
                        p.ops_per_s,
                        p.p50_us / 1000.0,
                        p.p99_us / 1000.0
                    )
                }
                None => "– | – | –".into(),
            };
            let (r, e) = (at("raftkv"), at("etcd"));
            let ratio = match (r, e) {
                (Some(r), Some(e)) if e.ops_per_s > 0.0 => {
                    format!("{:.2}", r.ops_per_s / e.ops_per_s)
                }
                _ => "–".into(),
            };
            println!("| {c} | {} | {} | {ratio} |", cells(r), cells(e));
        }
        println!();
    }
}

pub fn cmd_plot(dir: &str) {
    let dir = Path::new(dir);
    let curves = read_curves(dir);
    if curves.is_empty() {
        crate::die(&format!(
            "no <system>_n<N>_k<K>_<op>_c<C>.txt files in {}",
            dir.display()
        ));
    }
    let meta = read_kv(&dir.join("curve.txt"));
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());
    println!("Scale curve, {}: `{}` ({} s measured after {} s warm-up per point, {} cores, etcd {}, raftkv flags `{}`)",
        m("date"), m("command"), m("duration_s"), m("warmup_s"), m("nproc"), m("etcd_version"), m("raftkv_args"));
    for (op, configs) in &curves {
        let svg = dir.join(format!("curve_{op}.svg"));
        if let Err(e) = draw(&svg, op, configs) {
            crate::die(&format!("drawing {}: {e}", svg.display()));
        }
        println!("\n![{op}](curve_{op}.svg)");
        table(op, configs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("raftkv_n3_k100000_write_c64"),
            Some(("raftkv".into(), 3, 100_000, "write".into(), 64))
        );
        assert_eq!(
            parse_name("etcd_n5_k1000000_lread_c1024"),
            Some(("etcd".into(), 5, 1_000_000, "lread".into(), 1024))
        );
        assert_eq!(parse_name("raftkv_n3_k100000_preload"), None);
        assert_eq!(parse_name("etcd_3x100000_n0"), None);
        assert_eq!(keys_label(5_000_000), "5M");
        assert_eq!(keys_label(100_000), "100k");
    }
}
