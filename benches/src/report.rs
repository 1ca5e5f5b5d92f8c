//! Result tables shared by all benchmarks: printed for people, JSON and SVG for tools.

use serde::Serialize;
use std::fmt::Write as _;

pub use crate::noise::{Spread, Verdict};
use std::io;
use std::path::{Path, PathBuf};

/// What one backend achieved on one workload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measurement {
    /// Operations (requests, frames, FUSE ops) per second.
    pub ops_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// CPU seconds (user + system) the backend process spent per million operations,
    /// or `None` where it could not be measured (a backend inside a guest).
    pub cpu_s_per_mop: Option<f64>,
}

impl Measurement {
    /// Field-wise median of repeated measurements of one backend on one workload
    /// (the CPU figure over those that have one).
    pub fn median_of(ms: &[Measurement]) -> Measurement {
        let cpu: Vec<f64> = ms.iter().filter_map(|m| m.cpu_s_per_mop).collect();
        Measurement {
            ops_per_sec: median(ms.iter().map(|m| m.ops_per_sec).collect()),
            mb_per_sec: median(ms.iter().map(|m| m.mb_per_sec).collect()),
            cpu_s_per_mop: (!cpu.is_empty()).then(|| median(cpu)),
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count; 0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Whether a `--rows` filter (comma-separated patterns; `None` selects all) selects
/// the row `name`. A pattern equal to one of `exact_names` selects that row only
/// (so "tx-64" is not also "tx-64k-tso"); any other pattern selects every row whose
/// name contains it. Pass no `exact_names` for substring matching only.
pub fn row_selected(filter: Option<&str>, name: &str, exact_names: &[&str]) -> bool {
    match filter {
        None => true,
        Some(f) => f
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .any(|p| {
                if exact_names.contains(&p) {
                    name == p
                } else {
                    name.contains(p)
                }
            }),
    }
}

/// Where a benchmark writes its report besides the table on stdout; flattened into
/// each benchmark's command line.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Write the report as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Write an SVG chart of ours/peer here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

/// One workload measured on our backend and on the peer, in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub ours: Measurement,
    pub peer: Option<Measurement>,
    /// Per-run figures (per guest boot in guest-bench), the A/A noise floor and the
    /// verdict on ours/peer, where the bench measures them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
    /// What one request cost the guest and the host, for each backend, where the
    /// bench measures it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub costs: Option<CostsPair>,
}

/// What one request cost, per 1,000 requests (CPU in microseconds per request),
/// over a row's runs. `None` where it cannot be measured (a backend inside QEMU
/// has no process of its own; vhostkit has no vCPU thread names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Costs {
    /// Interrupts the guest took on its virtio devices, per 1,000 requests.
    pub guest_irqs: Option<f64>,
    /// Write system calls of QEMU's vCPU threads (the guest's kicks), per 1,000.
    pub kicks: Option<f64>,
    /// The backend's sleeps ended by a wake-up (voluntary context switches), per 1,000.
    pub backend_wakeups: Option<f64>,
    /// The backend's preemptions (involuntary context switches), per 1,000.
    pub backend_preempted: Option<f64>,
    /// The backend's CPU (user + system), microseconds per request.
    pub backend_cpu_us: Option<f64>,
    /// QEMU's CPU (all threads, the guest's vCPUs included), microseconds per request.
    pub vmm_cpu_us: Option<f64>,
}

/// A column of the costs table: its name and the figure it shows.
type CostColumn = (&'static str, fn(&Costs) -> Option<f64>);

/// The costs table's columns, in order.
const COST_COLUMNS: [CostColumn; 6] = [
    ("guest irqs/1k", |c| c.guest_irqs),
    ("kicks/1k", |c| c.kicks),
    ("wakeups/1k", |c| c.backend_wakeups),
    ("preempted/1k", |c| c.backend_preempted),
    ("backend CPU us/req", |c| c.backend_cpu_us),
    ("QEMU CPU us/req", |c| c.vmm_cpu_us),
];

/// [`Costs`] of both backends on one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CostsPair {
    pub ours: Costs,
    pub peer: Option<Costs>,
}

impl Row {
    /// ours / peer on the primary figure (ops/s), if the peer was measured.
    pub fn ratio(&self) -> Option<f64> {
        let peer = self.peer.as_ref()?;
        (peer.ops_per_sec > 0.0).then(|| self.ours.ops_per_sec / peer.ops_per_sec)
    }
}

/// A complete benchmark result.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub title: String,
    /// Name of our backend as shown in the table (e.g. "vhost-user-blk io_uring").
    pub ours_name: String,
    /// Name and version of the peer (e.g. "qemu-storage-daemon 7.2.22").
    pub peer_name: String,
    /// What the table headers call the peer ("peer" unless set, e.g. "virtiofsd").
    pub peer_label: String,
    /// Free-form facts about the set-up: image location, queue size, run length.
    pub notes: Vec<String>,
    /// What one operation is called in the table headers ("ops", "frames").
    pub op_name: String,
    /// Show the byte rate as Gbit/s (10^9 bits) instead of MB/s in the table (the
    /// JSON keeps `mb_per_sec`).
    pub gbit: bool,
    pub rows: Vec<Row>,
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "-".to_string())
}

impl Report {
    pub fn new(title: &str, ours_name: &str, peer_name: &str) -> Self {
        Report {
            title: title.to_string(),
            ours_name: ours_name.to_string(),
            peer_name: peer_name.to_string(),
            peer_label: "peer".to_string(),
            notes: Vec::new(),
            op_name: "ops".to_string(),
            gbit: false,
            rows: Vec::new(),
        }
    }

    /// The byte rate as the table shows it (MB/s, or Gbit/s with [`Report::gbit`]).
    fn rate(&self, m: &Measurement) -> f64 {
        if self.gbit {
            m.mb_per_sec * 8.0 / 1000.0
        } else {
            m.mb_per_sec
        }
    }

    /// Renders the report as an aligned text table.
    pub fn to_table(&self) -> String {
        let (op, short) = match self.op_name.as_str() {
            "ops" => ("ops", "op".to_string()),
            name => (name, name.trim_end_matches('s').to_string()),
        };
        let rate = if self.gbit { "Gbit/s" } else { "MB/s" };
        let peer = &self.peer_label;
        let header = [
            "workload".to_string(),
            format!("ours {op}/s"),
            format!("{peer} {op}/s"),
            format!("ours {rate}"),
            format!("{peer} {rate}"),
            format!("ours CPU s/M{short}"),
            format!("{peer} CPU s/M{short}"),
            format!("ours/{peer}"),
        ];
        let mut cells: Vec<Vec<String>> = vec![header.to_vec()];
        for row in &self.rows {
            let peer = row.peer.as_ref();
            cells.push(vec![
                row.workload.clone(),
                fmt_num(row.ours.ops_per_sec),
                fmt_opt(peer.map(|p| p.ops_per_sec)),
                fmt_num(self.rate(&row.ours)),
                fmt_opt(peer.map(|p| self.rate(p))),
                fmt_opt(row.ours.cpu_s_per_mop),
                fmt_opt(peer.and_then(|p| p.cpu_s_per_mop)),
                row.ratio()
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        // Runs with a spread get its columns: each backend's range over the runs,
        // the A/A floor and the verdict.
        if self.rows.iter().any(|r| r.spread.is_some()) {
            cells[0].extend(
                [
                    "ours min-max",
                    &format!("{peer} min-max"),
                    "A/A floor",
                    "verdict",
                ]
                .map(String::from),
            );
            for (row, cells) in self.rows.iter().zip(cells.iter_mut().skip(1)) {
                let s = row.spread.as_ref();
                let range = |v: Option<&Vec<f64>>| {
                    v.and_then(|v| Spread::range(v))
                        .map(|(a, b)| format!("{}-{}", fmt_num(a), fmt_num(b)))
                        .unwrap_or_else(|| "-".into())
                };
                cells.push(range(s.map(|s| &s.ours_samples)));
                cells.push(range(s.map(|s| &s.peer_samples)));
                cells.push(fmt_opt(s.and_then(|s| s.noise_floor)));
                cells.push(
                    s.and_then(|s| s.verdict)
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_else(|| "-".into()),
                );
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(out, "ours: {}   peer: {}", self.ours_name, self.peer_name);
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        render_cells(&cells, &mut out);
        out.push_str(&self.costs_table());
        out
    }

    /// The second table, where rows have [`Costs`]: per 1,000 requests, for ours
    /// and the peer side by side. Empty when no row has them.
    fn costs_table(&self) -> String {
        let rows: Vec<(&Row, &CostsPair)> = self
            .rows
            .iter()
            .filter_map(|r| r.costs.as_ref().map(|c| (r, c)))
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let peer = &self.peer_label;
        let pairs = COST_COLUMNS;
        let mut cells = vec![vec!["costs per request".to_string()]];
        for (name, _) in &pairs {
            cells[0].push(format!("{name} ours"));
            cells[0].push(peer.to_string());
        }
        for (row, c) in &rows {
            let mut line = vec![row.workload.clone()];
            for (_, get) in &pairs {
                line.push(fmt_opt(get(&c.ours)));
                line.push(fmt_opt(c.peer.as_ref().and_then(get)));
            }
            cells.push(line);
        }
        let mut out = String::from("\n");
        render_cells(&cells, &mut out);
        out
    }

    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// An SVG bar chart of ours/peer per workload, with the 1.0 line marked.
    pub fn to_svg(&self) -> String {
        let rows: Vec<(&str, f64)> = self
            .rows
            .iter()
            .filter_map(|r| r.ratio().map(|x| (r.workload.as_str(), x)))
            .collect();
        let bar_h = 22.0;
        let left = 260.0;
        let width = 820.0;
        // Room on the right for the longest bar's label.
        let plot_w = width - left - 80.0;
        let top = 60.0;
        let height = top + bar_h * rows.len() as f64 + 40.0;
        let max = rows.iter().map(|r| r.1).fold(1.5_f64, f64::max);
        let scale = plot_w / max;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="10" y="20" font-size="14">{}</text><text x="10" y="40">ours/peer, ops/s: {} vs {}</text>"#,
            xml_escape(&self.title),
            xml_escape(&self.ours_name),
            xml_escape(&self.peer_name)
        );
        for (i, (name, ratio)) in rows.iter().enumerate() {
            let y = top + bar_h * i as f64;
            let colour = if *ratio >= 1.0 { "#3a7" } else { "#c54" };
            let _ = writeln!(
                svg,
                r##"<text x="{x}" y="{ty}" text-anchor="end">{}</text><rect x="{left}" y="{y}" width="{w:.1}" height="{h}" fill="{colour}"/><text x="{lx:.1}" y="{ty}">{ratio:.2}x</text>"##,
                xml_escape(name),
                x = left - 6.0,
                ty = y + bar_h * 0.7,
                w = ratio * scale,
                h = bar_h - 4.0,
                lx = left + ratio * scale + 4.0,
            );
        }
        let one = left + scale;
        let _ = writeln!(
            svg,
            r##"<line x1="{one}" y1="{top}" x2="{one}" y2="{bottom}" stroke="#000" stroke-dasharray="4 3"/><text x="{one}" y="{label}" text-anchor="middle">1.0 = parity</text></svg>"##,
            bottom = height - 30.0,
            label = height - 14.0
        );
        svg
    }

    pub fn write_svg(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_svg())
    }

    /// [`Report::emit`] to the files a benchmark's [`OutputArgs`] name.
    pub fn emit_to(&self, output: &OutputArgs) -> Result<(), String> {
        self.emit(output.json.as_deref(), output.svg.as_deref())
    }

    /// What every bench binary ends with: the table on stdout, then the JSON and
    /// SVG files if asked for (each announced on stderr).
    pub fn emit(&self, json: Option<&Path>, svg: Option<&Path>) -> Result<(), String> {
        print!("{}", self.to_table());
        let written = |path: &Path, write: &dyn Fn(&Path) -> io::Result<()>| {
            // A missing folder (e.g. build/results) is created.
            let result = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) => std::fs::create_dir_all(dir).and_then(|()| write(path)),
                None => write(path),
            };
            result.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
            Ok::<(), String>(())
        };
        if let Some(path) = json {
            written(path, &|p| self.write_json(p))?;
        }
        if let Some(path) = svg {
            written(path, &|p| self.write_svg(p))?;
        }
        Ok(())
    }
}

/// Writes `cells` (a header line, then rows) as an aligned table: the first column
/// left-aligned, the others right-aligned, a rule under the header.
fn render_cells(cells: &[Vec<String>], out: &mut String) {
    let columns = cells.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| cells.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for (i, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, v)| {
                if c == 0 {
                    format!("{v:<w$}", w = widths[c])
                } else {
                    format!("{v:>w$}", w = widths[c])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("  "));
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (columns.max(1) - 1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn process_cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after it start past ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')' the first field is state (field 3); utime is field 14, stime 15.
    let parse = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((parse(11)? + parse(12)?) / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_row_filter() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        let m = |ops, cpu| Measurement {
            ops_per_sec: ops,
            mb_per_sec: ops * 2.0,
            cpu_s_per_mop: cpu,
        };
        let med = Measurement::median_of(&[m(1.0, None), m(3.0, Some(5.0)), m(2.0, None)]);
        assert_eq!((med.ops_per_sec, med.mb_per_sec), (2.0, 4.0));
        assert_eq!(med.cpu_s_per_mop, Some(5.0));
        assert!(row_selected(None, "anything", &[]));
        assert!(row_selected(Some("64, rx"), "tx-64k-tso", &[]));
        assert!(!row_selected(
            Some("tx-64"),
            "tx-64k-tso",
            &["tx-64", "tx-64k-tso"]
        ));
        assert!(row_selected(
            Some("tx-64"),
            "tx-64",
            &["tx-64", "tx-64k-tso"]
        ));
        assert!(row_selected(Some("rx"), "rx-1500", &["rx-1500"]));
    }

    fn sample() -> Report {
        let mut r = Report::new("blk", "ours", "peer");
        r.rows.push(Row {
            workload: "4k randread QD32".into(),
            ours: Measurement {
                ops_per_sec: 150_000.0,
                mb_per_sec: 614.4,
                cpu_s_per_mop: Some(6.5),
            },
            peer: Some(Measurement {
                ops_per_sec: 100_000.0,
                mb_per_sec: 409.6,
                cpu_s_per_mop: Some(9.0),
            }),
            spread: None,
            costs: None,
        });
        r
    }

    #[test]
    fn ratio_and_table() {
        let r = sample();
        assert!((r.rows[0].ratio().unwrap() - 1.5).abs() < 1e-9);
        let t = r.to_table();
        assert!(t.contains("1.50x"), "{t}");
        assert!(t.contains("150000"), "{t}");
        assert!(r.to_svg().contains("1.50x"));
        assert!(t.contains("ours ops/s"), "{t}");
        assert!(t.contains("peer CPU s/Mop"), "{t}");
        let mut named = sample();
        named.peer_label = "virtiofsd".into();
        let t = named.to_table();
        assert!(
            t.contains("virtiofsd ops/s") && t.contains("ours/virtiofsd"),
            "{t}"
        );
    }

    /// Rows with a spread get its columns; rows with costs a second table; rows
    /// without either print as before.
    #[test]
    fn spread_columns_and_costs_table() {
        let plain = sample().to_table();
        assert!(!plain.contains("A/A floor") && !plain.contains("costs per request"));
        let mut r = sample();
        r.rows[0].spread = Some(Spread::new(&[150.0, 151.0], &[100.0, 99.0]));
        r.rows[0].costs = Some(CostsPair {
            ours: Costs {
                guest_irqs: Some(250.0),
                kicks: Some(31.5),
                ..Default::default()
            },
            peer: Some(Costs {
                guest_irqs: Some(990.0),
                ..Default::default()
            }),
        });
        let t = r.to_table();
        assert!(t.contains("150-151") && t.contains("99.0-100"), "{t}");
        assert!(t.contains("ahead"), "{t}");
        assert!(t.contains("costs per request"), "{t}");
        assert!(
            t.contains("250") && t.contains("990") && t.contains("31.5"),
            "{t}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains("\"verdict\":\"ahead\"") && json.contains("\"guest_irqs\":990.0"),
            "{json}"
        );
        let json = serde_json::to_string(&sample()).unwrap();
        assert!(
            !json.contains("spread") && !json.contains("costs"),
            "{json}"
        );
    }

    #[test]
    fn frames_and_gbit_columns() {
        let mut r = sample();
        r.op_name = "frames".into();
        r.gbit = true;
        let t = r.to_table();
        assert!(t.contains("ours frames/s"), "{t}");
        assert!(t.contains("ours Gbit/s"), "{t}");
        assert!(t.contains("CPU s/Mframe"), "{t}");
        // 614.4 MB/s = 4.9152 Gbit/s.
        assert!(t.contains("4.92"), "{t}");
    }

    #[test]
    fn emit_creates_missing_folders() {
        let dir = std::env::temp_dir().join(format!("report-emit-{}", std::process::id()));
        let json = dir.join("results/r.json");
        sample().emit(Some(&json), None).unwrap();
        let text = std::fs::read_to_string(&json).unwrap();
        assert!(text.contains("\"peer_label\": \"peer\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_seconds_of_self_is_readable() {
        let s = process_cpu_seconds(std::process::id()).unwrap();
        assert!(s >= 0.0);
    }
}
