//! `lensnet bench STAGE`: throughput of the hot stages, printed (never asserted).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use lensnet_stages::ingest::bench::{bench_parse, bench_write, synthetic_pysis};
use lensnet_stages::ingest::PhotometryStore;
use lensnet_stages::simulate::{bench_simulate, SimConfig};
use lensnet_stages::Field;
use object_store::memory::InMemory;

use crate::cli::BenchArgs;

fn scaled(n: f64, scale: f64) -> usize {
    ((n * scale).round() as usize).max(1)
}

/// The benches of single stages (`field` has its own entry, [`field`]); `config` is the
/// `--config` file, read by the stages that depend on it (score: the model and the ONNX Runtime
/// library).
pub async fn run(args: BenchArgs, config: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    match args.stage.as_str() {
        "simulate" => simulate(args.scale),
        "ingest" => ingest(args.scale).await,
        "alertfinder" => alertfinder(args.scale),
        "preprocess" => preprocess(args.scale),
        "score" => score(args.scale, config),
        other => anyhow::bail!("unknown stage `{other}` (simulate, ingest, alertfinder, preprocess, score or field)"),
    }
}

fn alertfinder(scale: f64) -> anyhow::Result<ExitCode> {
    println!("alertfinder: season-long synthetic light curves (all cores: {})", rayon_threads());
    let figures = lensnet_stages::alertfinder::bench::bench(scaled(200.0, scale), scaled(20.0, scale), 1.0);
    print!("{figures}");
    Ok(ExitCode::SUCCESS)
}

fn preprocess(scale: f64) -> anyhow::Result<ExitCode> {
    use lensnet_stages::alertfinder::N_DIAGNOSIS;
    use lensnet_stages::preprocess::{prepare, Candidate, PreprocessStats};
    use lensnet_stages::simulate::Season;
    let n = scaled(400.0, scale) as u64;
    println!("preprocess: polars whole-batch tensors for {n} simulated stars per field");
    for field in [Field(14), Field(2)] {
        let cfg = SimConfig { fields: vec![field], stars: n, ..SimConfig::default() };
        let season = Season::new(&cfg).context("simulating")?;
        let stars = season.field(field).context("simulating")?;
        let cands: Vec<Candidate<'_>> = stars
            .iter()
            .map(|s| {
                let last = s.curves.curves.iter().flat_map(|c| c.hjd.iter().copied()).fold(f64::NEG_INFINITY, f64::max);
                Candidate { id: s.curves.star.0.clone(), star: &s.curves, now: last, diag: [0.0; N_DIAGNOSIS], label: None }
            })
            .collect();
        let points: usize = stars.iter().map(|s| s.curves.curves.iter().map(|c| c.hjd.len()).sum::<usize>()).sum();
        let stats = PreprocessStats::identity();
        prepare(&cands, &stats).context("warm-up")?;
        let mut reps = 0;
        let t = std::time::Instant::now();
        while reps < 2 || t.elapsed().as_secs_f64() < 1.0 {
            prepare(&cands, &stats).context("preprocess")?;
            reps += 1;
        }
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "  {field}: {:>5} candidates, {:>9} input points in {:>6.3} s = {:>8.0} candidates/s, {:>6.2} M points/s",
            cands.len(),
            points,
            secs,
            cands.len() as f64 / secs,
            points as f64 / secs / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn score(scale: f64, config: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    use lensnet_stages::score::{bench::BATCH_SIZES, find_model, ScoreOptions};
    let cfg = super::load_config(config)?;
    let model = find_model(cfg.model.as_deref()).context("finding the model")?;
    let opts = ScoreOptions { ort_library: cfg.ort_library.clone(), ..ScoreOptions::cpu(&model) };
    println!("score: sequences per second through ONNX Runtime, model {}", model.display());
    let rows = lensnet_stages::score::bench(&opts, &BATCH_SIZES, 1.0 * scale.max(0.1)).context("benchmarking")?;
    for r in &rows {
        println!(
            "  {:<12} {:<5} batch {:>5}: {:>10.1} sequences/s ({} sequences in {:.2} s, ONNX Runtime {})",
            r.engine,
            r.provider.as_str(),
            r.batch,
            r.sequences_per_s,
            r.sequences,
            r.seconds,
            r.runtime_version
        );
    }
    // PyTorch on the same architecture, in the same run, where the training environment exists.
    let python = std::path::Path::new(".venv/bin/python");
    let script = std::path::Path::new("models/train/bench_torch.py");
    if python.is_file() && script.is_file() {
        let status = std::process::Command::new(python).arg(script).arg("--model").arg(&model).status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("  pytorch: models/train/bench_torch.py failed ({status:?})");
        }
    } else {
        println!("  pytorch: not installed here (.venv from models/train/requirements.txt); skipped");
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate(scale: f64) -> anyhow::Result<ExitCode> {
    println!("simulate: stars generated in memory per second (all cores: {})", rayon_threads());
    for (field, stars) in [(Field(14), 1000.0), (Field(2), 250.0)] {
        let cfg = SimConfig { fields: vec![field], ..SimConfig::default() };
        let r = bench_simulate(&cfg, field, scaled(stars, scale) as u64).context("simulating")?;
        println!(
            "  {field}: {:>6} stars, {:>9} epochs in {:>6.2} s = {:>7.1} stars/s, {:>6.2} M epochs/s ({} threads)",
            r.stars,
            r.points,
            r.seconds,
            r.stars_per_second,
            r.points as f64 / r.seconds / 1e6,
            r.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn ingest(scale: f64) -> anyhow::Result<ExitCode> {
    let rows = scaled(200_000.0, scale);
    let text = synthetic_pysis(rows);
    println!("ingest: pySIS text of {rows} rows, {:.1} MB", text.len() as f64 / 1e6);
    let parse = bench_parse(&text, 5).context("parsing")?;
    println!("  parse (bytes -> columns)          {:>8.1} MB/s  {:>7.2} M rows/s", parse.mb_per_s(), parse.rows_per_s() / 1e6);
    let files: Vec<Vec<u8>> = (0..8).map(|_| synthetic_pysis(rows / 8)).collect();
    let par = lensnet_stages::ingest::bench::bench_parse_files(&files, 5).context("parsing files in parallel")?;
    println!(
        "  parse, 8 files in parallel        {:>8.1} MB/s  {:>7.2} M rows/s  ({} threads, as ingest parses a batch of files)",
        par.mb_per_s(),
        par.rows_per_s() / 1e6,
        rayon_threads()
    );
    let polars = lensnet_stages::ingest::bench::bench_polars_csv(&text, 5).map_err(|e| anyhow::anyhow!(e)).context("polars CSV")?;
    println!(
        "  polars CSV reader (same rows)     {:>8.1} MB/s  {:>7.2} M rows/s  ({} threads; pySIS spaces made commas first)",
        polars.mb_per_s(),
        polars.rows_per_s() / 1e6,
        rayon_threads()
    );
    let store = PhotometryStore::new(Arc::new(InMemory::new()), object_store::path::Path::from("bench"));
    let write = bench_write(&store, &text, 3).await.context("writing")?;
    println!(
        "  parse + write (staged part)       {:>8.1} MB/s  {:>7.2} M rows/s  ({:.2} MB Parquet)",
        write.mb_per_s(),
        write.rows_per_s() / 1e6,
        write.output_bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Resident memory (kB) sampled every 10 ms with wall-clock times, so that any interval's
/// peak (a phase, or a stage as `stage_attempts` timed it) can be read off afterwards.
struct RssSampler {
    samples: Arc<std::sync::Mutex<Vec<(f64, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

impl RssSampler {
    fn start() -> RssSampler {
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let v = (unix_now(), rss_kb());
                s.lock().expect("sampler").push(v);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        RssSampler { samples, stop, thread: Some(thread) }
    }

    /// Peak resident memory (MB) between two wall-clock times.
    fn peak_mb(&self, from: f64, to: f64) -> f64 {
        let s = self.samples.lock().expect("sampler");
        s.iter().filter(|(t, _)| *t >= from - 0.01 && *t <= to + 0.01).map(|x| x.1).max().unwrap_or_else(rss_kb) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the bench starts `lensnet run` and `lensnet replay` on its own store and database.
struct ChildEnv {
    store_url: String,
    db_name: String,
    inbox: std::path::PathBuf,
}

struct ChildRun {
    run_id: uuid::Uuid,
    wall: f64,
    peak_mb: f64,
}

impl ChildEnv {
    fn command(&self, args: &[String]) -> anyhow::Result<ChildRun> {
        self.command_wrapped(args, None)
    }

    /// `wrapper`: a profiler's command line (`heaptrack -o FILE`) that the child runs under.
    fn command_wrapped(&self, args: &[String], wrapper: Option<&str>) -> anyhow::Result<ChildRun> {
        let exe = std::env::current_exe().context("finding the lensnet binary")?;
        let t = std::time::Instant::now();
        let mut cmd = match wrapper.map(|w| w.split_whitespace().collect::<Vec<_>>()) {
            Some(w) if !w.is_empty() => {
                let mut c = std::process::Command::new(w[0]);
                c.args(&w[1..]).arg(exe);
                c
            }
            _ => std::process::Command::new(exe),
        };
        let out = cmd
            .args(args)
            .env("LENSNET__STORE__URL", &self.store_url)
            .env("LENSNET__DATABASE__LOCAL_NAME", &self.db_name)
            .env("LENSNET__INGEST__INBOX", &self.inbox)
            .env_remove("DATABASE_URL")
            .output()
            .context("starting lensnet")?;
        let wall = t.elapsed().as_secs_f64();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "lensnet {} failed: {stdout}\n{stderr}", args.join(" "));
        let peak_mb = stderr.lines().find_map(|l| l.strip_prefix("peak resident memory ")?.strip_suffix(" MB")?.parse().ok()).unwrap_or(f64::NAN);
        let run_id = stdout.lines().find_map(|l| l.strip_prefix("run ")?.split_whitespace().next()?.parse().ok()).unwrap_or_default();
        Ok(ChildRun { run_id, wall, peak_mb })
    }

    fn run(&self, field: Field, as_of: f64) -> anyhow::Result<ChildRun> {
        self.run_wrapped(field, as_of, None)
    }

    fn run_wrapped(&self, field: Field, as_of: f64, wrapper: Option<&str>) -> anyhow::Result<ChildRun> {
        let args = ["run".into(), "--field".into(), field.name(), "--as-of".into(), format!("{as_of:.5}"), "--season".into(), "2025".into()];
        self.command_wrapped(&args, wrapper)
    }

    fn replay(&self, field: Field) -> anyhow::Result<ChildRun> {
        self.command(&["replay".into(), "--season".into(), "2025".into(), "--fields".into(), field.name(), "--step".into(), "1d".into()])
    }
}

/// One stage attempt of a run, as `stage_attempts` holds it.
struct StageRow {
    seconds: f64,
    rows_in: i64,
    rows_out: i64,
    details: serde_json::Map<String, serde_json::Value>,
}

impl StageRow {
    fn detail(&self, k: &str) -> u64 {
        self.details.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
    }
}

async fn stage_row(pool: &sqlx::PgPool, run_id: uuid::Uuid, stage: &str) -> anyhow::Result<StageRow> {
    let r: Option<(f64, Option<i64>, Option<i64>, serde_json::Value)> = sqlx::query_as(
        "SELECT coalesce(duration_ms, 0)::float8 / 1000, rows_in, rows_out, outputs FROM stage_attempts WHERE run_id = $1 AND stage = $2 AND status = 'succeeded' ORDER BY attempt DESC LIMIT 1",
    )
    .bind(run_id)
    .bind(stage)
    .fetch_optional(pool)
    .await?;
    let (seconds, rows_in, rows_out, outputs) = r.with_context(|| format!("run {run_id} has no successful {stage} attempt"))?;
    let details = outputs.get("details").and_then(|d| d.as_object()).cloned().unwrap_or_default();
    Ok(StageRow { seconds, rows_in: rows_in.unwrap_or(0), rows_out: rows_out.unwrap_or(0), details })
}

/// The measured night: days since the season's first night (mid-June, about 8 h of bulge).
const MID_SEASON_DAY: u32 = 110;

/// `lensnet bench field`: a simulated field (the `field` class mix: mostly constant stars) of
/// `--stars` stars with `--nights` nights stored and run night by night, then one more night
/// ingested (its rows written) and run as a live nightly run would (alertfinder, score,
/// publish, streamed), then a replay step over the same data. Prints wall time, photometry rows
/// read and peak resident memory per stage. Its own store (under the data folder) and its own
/// database (`<name>_bench`): production tables are never touched.
pub async fn field(cfg: lensnet::config::Config, args: BenchArgs) -> anyhow::Result<ExitCode> {
    use lensnet::config::DatabaseSource;
    use lensnet::{app, db};
    use lensnet_stages::simulate::store::{season_first_night, simulate_to_store};
    use lensnet_stages::simulate::{ClassMix, Season};
    let field: Field = args.field.parse().map_err(|e: String| anyhow::anyhow!(e)).context("--field")?;
    anyhow::ensure!(args.stars > 0 && args.nights >= 1, "--stars and --nights must be at least 1");
    let dir = match &args.dir {
        Some(d) => {
            anyhow::ensure!(!d.exists() || std::fs::read_dir(d)?.next().is_none(), "--dir {} is not empty", d.display());
            d.clone()
        }
        None => {
            let d = cfg.data_dir.join("bench-field").join(format!("{field}-{}", args.stars));
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("removing the previous bench folder {}", d.display()))?;
            }
            d
        }
    };
    std::fs::create_dir_all(dir.join("store"))?;
    let mut bcfg = cfg.clone();
    bcfg.store_url = format!("file://{}", dir.join("store").canonicalize()?.display());
    let db_name = match &cfg.database {
        DatabaseSource::Local { name, .. } => format!("{name}_bench"),
        DatabaseSource::Url(_) => "lensnet_bench".to_string(),
    };
    let pool = db::open_named(&bcfg, &db_name).await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema() AND tablename <> '_sqlx_migrations'").fetch_all(&pool).await?;
    if !tables.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {} CASCADE", tables.join(", ")))).execute(&pool).await?;
    }
    let scorer = Arc::new(app::scorer(&bcfg, None).context("loading the model")?);
    let runner = app::field_runner(&bcfg, pool.clone(), scorer).context("setting up the field runner")?;
    let (_, photometry) = app::photometry(&bcfg).context("opening the bench store")?;
    let sim = SimConfig { season: 2025, fields: vec![field], stars: args.stars, seed: 7, mix: ClassMix::field(), ..SimConfig::default() };
    let season = Season::new(&sim).context("building the season's schedules")?;
    let first = season_first_night(&season, field)?;
    // Mid-season (June: the longest nights), the stored nights just before the measured one.
    // Nights start at a day boundary after the season's first night; a night's run sees it all.
    let start = MID_SEASON_DAY.saturating_sub(args.nights);
    let night_end = |d: u32| first + d as f64 + 0.999;
    let sampler = RssSampler::start();
    println!(
        "bench field: {field}, {} stars (class mix `field`), {} earlier season(s), {} nights stored before the measured night; store {}, database {db_name}; {} threads",
        args.stars,
        args.earlier_seasons,
        args.nights,
        dir.display(),
        rayon_threads()
    );
    // Every run is a `lensnet run` process of its own, as cron starts it each night: its peak
    // memory is its own.
    anyhow::ensure!(matches!(cfg.database, DatabaseSource::Local { .. }), "bench field runs its nights as `lensnet run` processes on the local database: unset DATABASE_URL");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox)?;
    let child = ChildEnv { store_url: bcfg.store_url.clone(), db_name: db_name.clone(), inbox };
    // Earlier seasons first, whole (a survey's archive): the same star ids, each season its own
    // draw of the stars' behaviour.
    for k in (1..=args.earlier_seasons).rev() {
        let t = std::time::Instant::now();
        let year = sim.season - k as i32;
        let earlier = Season::new(&SimConfig { season: year, ..sim.clone() }).context("building an earlier season's schedules")?;
        let lock = runner.ledger.lock_writer(&photometry.identity()).await?;
        let r = simulate_to_store(&earlier, field, None, &photometry).await?;
        drop(lock);
        println!("  earlier season {year}: {} rows written in {:.1} s", r.rows, t.elapsed().as_secs_f64());
    }
    // Night by night as the survey runs: the night's rows written as an ingest writes them,
    // then the night's run, which compacts after its publish (the `compact` stage), so that
    // each run finds the parts a live night leaves.
    let t = std::time::Instant::now();
    let (mut rows, mut write, mut rewritten) = (0u64, 0.0, 0u64);
    let mut buckets = 0;
    for d in start..MID_SEASON_DAY {
        let lock = runner.ledger.lock_writer(&photometry.identity()).await?;
        let r = simulate_to_store(&season, field, Some(d..d + 1), &photometry).await?;
        (rows, write, buckets) = (rows + r.rows, write + r.write_seconds, r.buckets);
        drop(lock);
        let c = child.run(field, night_end(d))?;
        let a = stage_row(&pool, c.run_id, "alertfinder").await?;
        let night_rewritten = stage_row(&pool, c.run_id, "compact").await?.rows_out as u64;
        rewritten += night_rewritten;
        println!(
            "  night {d:>3}: {:>8} rows, {:>9} rewritten by compaction; run {:>6.1} s, {:>8} stars with new points, {:>8} searched (kept {}, no level {}, high run {}; {} from a carry, {} of them from its tail), {:>5} candidates, {:>10} rows read ({} for new points, {} of the searched stars' windows), peak {:>6.0} MB",
            r.rows,
            night_rewritten,
            c.wall,
            a.rows_in,
            a.detail("searched_in_full"),
            a.detail("screen_passed_kept"),
            a.detail("screen_passed_no_level"),
            a.detail("screen_passed_high_run"),
            a.detail("searched_from_carry"),
            a.detail("searched_from_tail"),
            a.rows_out,
            a.detail("photometry_rows_read"),
            a.detail("photometry_rows_read_for_new_points"),
            a.detail("photometry_rows_in_windows"),
            c.peak_mb
        );
    }
    let parts: usize = {
        let mut n = 0;
        for k in photometry.field_partitions(2025, field).await? {
            n += photometry.read_manifest(&k).await?.files.len();
        }
        n
    };
    println!(
        "  the season so far: {rows} rows, {parts} parts in {buckets} bucket(s) x sites, written and run night by night in {:.1} s ({write:.1} s of it encoding and writing); compaction rewrote {rewritten} rows ({:.1}x the rows written)",
        t.elapsed().as_secs_f64(),
        rewritten as f64 / rows.max(1) as f64
    );
    // Tonight: its rows arrive (written as ingest writes parsed rows), then the nightly run,
    // which publishes its alerts and then compacts.
    let tonight = MID_SEASON_DAY;
    let lock = runner.ledger.lock_writer(&photometry.identity()).await?;
    let t0 = unix_now();
    let night = simulate_to_store(&season, field, Some(tonight..tonight + 1), &photometry).await?;
    let t1 = unix_now();
    drop(lock);
    println!("\nthe measured night (day {tonight} of the season): {} new rows, written in {:.2} s", night.rows, night.write_seconds);
    println!("  {:<34} {:>8} {:>14} {:>12} {:>10}", "stage", "wall s", "rows read", "rows out", "peak MB");
    println!("  {:<34} {:>8.2} {:>14} {:>12} {:>10.0}", "ingest (write the night's rows)", night.write_seconds, 0, night.rows, sampler.peak_mb(t0, t1));
    // LENSNET_BENCH_PROFILE: a profiler's command line that the measured night's run goes under
    // (`heaptrack -o /tmp/night`; its figures are then the profiler's, not the bare run's).
    let profile = std::env::var("LENSNET_BENCH_PROFILE").ok();
    let c = child.run_wrapped(field, night_end(tonight), profile.as_deref())?;
    let mut compact_s = 0.0;
    for stage in ["ingest", "alertfinder", "score", "publish", "compact"] {
        let Ok(r) = stage_row(&pool, c.run_id, stage).await else { continue };
        let read = r.details.get("photometry_rows_read").and_then(|v| v.as_u64());
        let label = if stage == "compact" {
            compact_s = r.seconds;
            format!("nightly run: compact (rewrote {})", r.rows_out)
        } else {
            format!("nightly run: {stage}")
        };
        println!(
            "  {:<34} {:>8.2} {:>14} {:>12} {:>10}",
            label,
            r.seconds,
            read.map_or("-".to_string(), |v| v.to_string()),
            r.rows_out,
            r.details.get("process_peak_rss_mb").and_then(|v| v.as_u64()).map_or("-".to_string(), |v| format!("({v})")),
        );
    }
    println!("  {:<34} {:>8.2} {:>14} {:>12} {:>10.0}", "nightly run: the `lensnet run` process", c.wall, "", "", c.peak_mb);
    // What the alertfinder's reads were: the night's new points (every star's), the windows of
    // the stars it searched (what the search asked for), and the other stars' rows in the pages
    // that hold those windows.
    if let Ok(a) = stage_row(&pool, c.run_id, "alertfinder").await {
        let (read, new, windows) = (a.detail("photometry_rows_read"), a.detail("photometry_rows_read_for_new_points"), a.detail("photometry_rows_in_windows"));
        let other = read.saturating_sub(new + windows);
        let x = |v: u64| v as f64 / night.rows.max(1) as f64;
        let (served, tails) = (a.detail("searched_from_tail"), a.detail("state_rows_in_tails"));
        println!(
            "  alertfinder searched {} stars: kept searched {}, a site without a level {}, a run of high points {}",
            a.detail("searched_in_full"),
            a.detail("screen_passed_kept"),
            a.detail("screen_passed_no_level"),
            a.detail("screen_passed_high_run")
        );
        println!(
            "  alertfinder rows read: {read} ({:.1}x the night's rows) = new points {new} ({:.1}x) + the searched stars' windows {windows} ({:.2}x, {} stars) + other stars' rows in the pages holding them {other} ({:.1}x); besides, {tails} rows of {served} searched stars' tails from the state ({:.2}x)",
            x(read),
            x(new),
            x(windows),
            a.detail("searched_in_full").saturating_sub(served),
            x(other),
            x(tails)
        );
        // The same in bytes asked of the object store (what a remote store charges and sends).
        let (bytes, new_bytes, state) = (a.detail("photometry_bytes_read"), a.detail("photometry_bytes_read_for_new_points"), a.detail("state_bytes_read"));
        let mb = |v: u64| v as f64 / 1e6;
        println!(
            "  alertfinder bytes read: photometry {:.1} MB = the new points' parts {:.1} MB + the searched stars' pages {:.1} MB ({:.2}x the new points'); its own state {:.1} MB",
            mb(bytes),
            mb(new_bytes),
            mb(bytes.saturating_sub(new_bytes)),
            bytes.saturating_sub(new_bytes) as f64 / new_bytes.max(1) as f64,
            mb(state)
        );
    }
    println!("  (a stage's figure in parentheses: the run process's peak resident memory when the stage ended)");
    let total = night.write_seconds + c.wall;
    let alerts = total - compact_s;
    // A replay of the stored nights (daily steps), streamed as replays of large fields are.
    let r = child.replay(field)?;
    let steps: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE kind = 'replay'").fetch_one(&pool).await?;
    println!(
        "  {:<34} {:>8.2} {:>14} {:>12} {:>10.0}",
        format!("replay: {steps} daily steps, per step"),
        r.wall / steps.max(1) as f64,
        "",
        "",
        r.peak_mb
    );
    println!("  nightly: alerts published after    {alerts:>8.2} s (the night's rows written, then the run up to its publish)");
    println!("  nightly total (ingest + run)       {total:>8.2} s, compaction after the alerts included; peak resident memory of the bench process (simulation, ingest) {:.0} MB", sampler.peak_mb(0.0, f64::INFINITY));
    drop(sampler);
    if !args.keep {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
