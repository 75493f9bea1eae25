//! The command-line contract. Subcommand names are fixed so that scripts can rely on them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// lensnet: finds gravitational microlensing events in real time in KMTNet-like survey
/// photometry (ingest -> alertfinder -> preprocess -> score -> publish).
#[derive(Debug, Parser)]
#[command(name = "lensnet", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML) over the embedded defaults; default: $LENSNET_CONFIG, then
    /// ./lensnet.toml if it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); LENSNET_LOG takes a tracing filter too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline end to end on the embedded default (a simulated season of two
    /// fields) against the local PostgreSQL, and print a summary.
    Demo(DemoArgs),
    /// Generate a KMTNet-like season of photometry in pySIS format with ground truth.
    Simulate(SimulateArgs),
    /// Ingest survey photometry files into partitioned Parquet on the object store.
    Ingest(IngestArgs),
    /// One DAG run for one field: ingest, alertfinder, preprocess, score, publish.
    Run(RunArgs),
    /// The cron scheduler: runs fields on their schedules until SIGTERM.
    Serve(ServeArgs),
    /// Reprocess past seasons day by day, as if live, with a given model: every (season, field)
    /// shard in turn, or one shard (--shard-index) as a batch task.
    Replay(ReplayArgs),
    /// The summary of a (sharded) replay from what its shards wrote, with the shards that
    /// failed or never ran and their logs.
    ReplayReport(ReplayReportArgs),
    /// Write batch-engine jobs for a sharded replay (Slurm job array, Kubernetes Indexed Job).
    #[command(subcommand)]
    Submit(SubmitCommand),
    /// Manage the database: the local PostgreSQL cluster and the schema migrations.
    #[command(subcommand)]
    Db(DbCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check a model on a labelled archive: ingest the folder, replay every (season, field) that
    /// holds data as if live, and report events found and non-events flagged, by survey and type.
    Evaluate(EvaluateArgs),
    /// Draw one star's light curve (per site, with the AlertFinder fits and the as-of line) to a
    /// PNG or SVG file.
    Plot(PlotArgs),
    /// Check the photometry store for crash debris (orphan parts, lost parts, uncompacted
    /// partitions) and repair it.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Serve the coordinators' pages (alerts, star pages with light curves, runs, vetting,
    /// /metrics) until SIGTERM or Ctrl-C.
    Web(WebArgs),
    /// Manage the web pages' accounts (vetters and readers).
    #[command(subcommand)]
    User(UserCommand),
    /// Print throughput of a hot stage.
    Bench(BenchArgs),
    /// Export a training or test set: simulator -> AlertFinder -> preprocess, exactly as in
    /// production, with real-time truncation; writes tensors, labels and statistics (Parquet).
    ExportTrainingSet(ExportArgs),
}

#[derive(Debug, Args)]
pub struct WebArgs {
    /// Address to listen on (default: `web.bind`, 127.0.0.1:8080).
    #[arg(long, value_name = "HOST:PORT")]
    pub bind: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an account; the password is asked on the terminal, or read from standard input's
    /// first line.
    Add {
        /// User name: letters, digits, `_`, `.`, `-`.
        name: String,
        /// `vetter` may label candidates; `reader` may only log in and look.
        #[arg(long, default_value = "vetter", value_parser = ["vetter", "reader"])]
        role: String,
        /// Set a new password (and role) if the account exists, and enable it.
        #[arg(long)]
        update: bool,
        /// Read the password from standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the accounts.
    List,
    /// Disable an account: it can no longer log in; its labels stay.
    Disable { name: String },
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output folder (gets tensors.parquet, preprocess_stats.json, summary.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Simulated stars (spread over seasons and fields by the exporter).
    #[arg(long, default_value_t = 20000)]
    pub stars: u64,
    /// Master seed; simulator seeds are derived from it.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Preprocessing statistics to use (a test set uses the training set's); default: fit them.
    #[arg(long, value_name = "JSON")]
    pub stats: Option<PathBuf>,
    /// Stop after this many candidates.
    #[arg(long)]
    pub max_candidates: Option<usize>,
    /// Instead of simulating: the candidates that vetters labelled in the database, prepared
    /// as the score stage prepared them, with the vetters' labels (yes / maybe / no).
    #[arg(long)]
    pub vetted: bool,
    /// With --vetted: the model whose preprocessing statistics to use (default: the
    /// configured one; --stats overrides).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stars per field in the simulated season.
    #[arg(long, default_value_t = 500)]
    pub stars: usize,
    /// Random seed of the simulated season.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Observing season (calendar year).
    #[arg(long, default_value_t = 2025)]
    pub season: i32,
    /// Comma-separated fields, e.g. BLG02,BLG14.
    #[arg(long, value_delimiter = ',', default_value = "BLG02,BLG14")]
    pub fields: Vec<String>,
    /// Stars per field.
    #[arg(long, default_value_t = 1000)]
    pub stars: usize,
    /// Random seed; the same seed gives byte-identical output.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output folder (one folder per star with pySIS files, plus truth.parquet).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a comparison of simulated and real KMTNet statistics instead of (or after) writing.
    #[arg(long)]
    pub report: bool,
    /// Folder of real KMTNet pySIS files to compare against (for --report).
    #[arg(long, value_name = "DIR")]
    pub real: Option<PathBuf>,
    /// Write the stars straight into the configured store's photometry dataset (no pySIS text;
    /// bucket by bucket in bounded memory, for field-scale seasons).
    #[arg(long, conflicts_with = "out")]
    pub store: bool,
    /// With --store: only these days since the season's first night, e.g. 0..30 (a range of
    /// nights gives the rows a whole-season build holds for them).
    #[arg(long, value_name = "A..B", value_parser = parse_days)]
    pub days: Option<std::ops::Range<u32>>,
    /// Class mix: `training` (the simulator's, rich in events and variables) or `field` (a real
    /// field: 95 % constant stars, events rare).
    #[arg(long, default_value = "training", value_parser = ["training", "field"])]
    pub mix: String,
}

/// `A..B` days since the season's first night.
fn parse_days(s: &str) -> Result<std::ops::Range<u32>, String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("`{s}` is not a range of days like 0..30"))?;
    let a: u32 = a.trim().parse().map_err(|_| format!("`{a}` is not a day number"))?;
    let b: u32 = b.trim().parse().map_err(|_| format!("`{b}` is not a day number"))?;
    if b <= a {
        return Err(format!("`{s}` is empty: the end must follow the start"));
    }
    Ok(a..b)
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// A file, a folder (searched recursively) or an object store URL.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub input: String,
    /// Input format.
    #[arg(long, default_value = "auto", value_parser = ["auto", "pysis", "diapl", "ogle", "columns"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Field to run, e.g. BLG14.
    #[arg(long)]
    pub field: String,
    /// Treat this time (HJD-2450000) as "now": only data taken before it is used (default: the
    /// clock).
    #[arg(long, value_name = "TIME", value_parser = parse_as_of)]
    pub as_of: Option<f64>,
    /// Observing season (calendar year) of the photometry to search; default: the season of the
    /// as-of time.
    #[arg(long)]
    pub season: Option<i32>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Run each configured field once now and exit (for checks).
    #[arg(long)]
    pub once: bool,
}



#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Season to replay (calendar year); the same as --seasons with one year.
    #[arg(long, conflicts_with = "seasons")]
    pub season: Option<i32>,
    /// Seasons: years and ranges, e.g. 2016-2025 or 2019,2021.
    #[arg(long, value_delimiter = ',', value_name = "YEARS")]
    pub seasons: Vec<String>,
    /// Comma-separated fields, or `all` (every field with photometry in the seasons).
    #[arg(long, value_delimiter = ',')]
    pub fields: Vec<String>,
    /// Step of the watermark, e.g. 1d or 12h.
    #[arg(long, default_value = "1d")]
    pub step: String,
    /// ONNX model to score with (default: the configured one).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The simulator's truth.parquet, to report recall, false alerts and days before peak.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Ingest this folder (or URL) before replaying, e.g. a season written by `lensnet simulate`.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub ingest: Option<String>,
    /// Run only shard I of the job (season-major: shard i is (seasons[i / fields], fields[i %
    /// fields])), as a batch task does; exit status 0 when it succeeded or had no data, 1 when
    /// it failed. A second copy of a running shard waits for it.
    #[arg(long, value_name = "I")]
    pub shard_index: Option<usize>,
    /// The task's log file, recorded for `replay-report` (batch systems pass their own).
    #[arg(long, value_name = "FILE")]
    pub log: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayReportArgs {
    /// The replay id (printed by `lensnet replay` and `lensnet submit`).
    #[arg(long)]
    pub replay_id: uuid::Uuid,
    /// The simulator's truth.parquet, to report recall, false alerts and days before peak.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// Write (and with --now submit through sbatch) a Slurm job array, one task per (season,
    /// field) shard, and a summary step that runs after them.
    Slurm(SlurmArgs),
    /// Write a Kubernetes Indexed Job manifest, one completion index per shard.
    K8s(K8sArgs),
}

#[derive(Debug, Args)]
pub struct ShardSpecArgs {
    /// Seasons: years and ranges, e.g. 2016-2025.
    #[arg(long, value_delimiter = ',', required = true, value_name = "YEARS")]
    pub seasons: Vec<String>,
    /// Comma-separated fields, or `all` (resolved now, from the store).
    #[arg(long, value_delimiter = ',', required = true)]
    pub fields: Vec<String>,
    /// Step of the watermark.
    #[arg(long, default_value = "1d")]
    pub step: String,
    /// ONNX model (default: the configured one); its sha256 is part of the replay id.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Folder for the scripts or manifest and the logs (default: <data_dir>/submit/<replay id>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SlurmArgs {
    #[command(flatten)]
    pub spec: ShardSpecArgs,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// CPUs per task.
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: u32,
    /// At most this many tasks at once.
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// Time limit per task (Slurm's --time, e.g. 02:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// Only these shard indexes (resubmitting failed ones), e.g. 3,5.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<usize>,
    /// Submit with sbatch (the array, then the summary step after it) instead of only writing.
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Args)]
pub struct K8sArgs {
    #[command(flatten)]
    pub spec: ShardSpecArgs,
    /// Container image with the lensnet binary at /usr/local/bin/lensnet and the models.
    #[arg(long)]
    pub image: String,
    /// Model path inside the image (default: /opt/lensnet/models/<the model's file name>).
    #[arg(long)]
    pub image_model: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Pods at once.
    #[arg(long, default_value_t = 8)]
    pub parallelism: u32,
    /// Secret holding DATABASE_URL.
    #[arg(long, default_value = "lensnet-database")]
    pub database_secret: String,
    /// Secret whose keys become the pods' environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_ENDPOINT, AWS_REGION).
    #[arg(long, default_value = "lensnet-s3")]
    pub s3_secret: String,
    /// CPUs and memory per pod.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    #[arg(long, default_value = "4Gi")]
    pub memory: String,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create (first time) and start the local PostgreSQL cluster; harmless if it runs.
    Start,
    /// Stop the local PostgreSQL cluster; harmless if it is stopped.
    Stop,
    /// Say whether the local cluster exists and runs, and which migrations are applied.
    Status,
    /// Print the database URL (the local cluster's, with its password, for the owner of the
    /// cluster; or say that DATABASE_URL is in use).
    Url {
        /// The URL of the read-only role `lensnet_reader` (for follow-up coordinators).
        #[arg(long)]
        reader: bool,
    },
    /// Apply pending schema migrations (starting the local cluster if needed).
    Migrate,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Field of the star, e.g. BLG14.
    #[arg(long)]
    pub field: String,
    /// Star id as stored (the star folder's name).
    #[arg(long)]
    pub star: String,
    /// Draw what the pipeline knew at this time (HJD - 2450000): the newest fits at or before it
    /// and a line at it (default: the newest fits).
    #[arg(long, value_name = "TIME", value_parser = parse_as_of)]
    pub as_of: Option<f64>,
    /// Season (calendar year); default: the season of --as-of, else the star's newest.
    #[arg(long)]
    pub season: Option<i32>,
    /// Output file: .png or .svg.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Plot magnitudes (brighter up) instead of difference flux.
    #[arg(long)]
    pub magnitude: bool,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The archive: one folder per labelled star with its files (and `.columns.toml` sidecars
    /// where a layout needs one).
    #[arg(long, value_name = "DIR")]
    pub input: PathBuf,
    /// labels.csv: star, class (event, binary_event, nonevent), type, survey, peak_hjd, ...
    #[arg(long, value_name = "CSV")]
    pub labels: PathBuf,
    /// ONNX model to evaluate (default: the configured one).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Where the report (report.md, report.json, events.png, nonevents.png) and the evaluation's
    /// own store go; default: <data_dir>/evaluate/<name of the input folder>.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Days between replay steps.
    #[arg(long, default_value = "1d")]
    pub step: String,
    /// Only the stars of one fixed half of the archive (by a hash of the star id; see
    /// `lensnet::evaluate::half_of`): report on `validation`, train and tune on `training`.
    #[arg(long, value_parser = ["training", "validation"])]
    pub half: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List, per partition, orphan parts, lost parts and partitions that need compaction; exits
    /// with status 1 when anything is found.
    Check,
    /// Under the store's writer lock: delete orphan parts, drop lost parts from their manifests
    /// (naming the files to ingest again), and compact.
    Repair,
    /// Under the store's writer lock: rewrite field-seasons stored before star buckets existed
    /// into the bucketed layout (safe to kill and run again).
    Migrate,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print every problem at once.
    Check,
    /// Print the resolved configuration (secrets excluded).
    Show,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which stage to measure (`field`: a nightly run and a replay step of a whole simulated field).
    #[arg(value_parser = ["simulate", "ingest", "alertfinder", "preprocess", "score", "field"])]
    pub stage: String,
    /// Scale factor for the workload (1 = the documented default size).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// `field`: the field simulated (its cadence: BLG14 sub-prime, BLG02 prime).
    #[arg(long, default_value = "BLG14")]
    pub field: String,
    /// `field`: stars in the field.
    #[arg(long, default_value_t = 10_000)]
    pub stars: u64,
    /// `field`: nights stored before the measured night (the season so far).
    #[arg(long, default_value_t = 6)]
    pub nights: u32,
    /// `field`: whole earlier seasons of the same stars stored first (2024, 2023, ...: the
    /// baseline history that the alertfinder reads for the stars it searches).
    #[arg(long, default_value_t = 0)]
    pub earlier_seasons: u32,
    /// `field`: folder for the field's store (default: a new folder under the data folder,
    /// deleted at the end unless --keep).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `field`: keep the folder.
    #[arg(long)]
    pub keep: bool,
}

/// An as-of time: a finite HJD - 2450000 between 1968 and 2077 (HJD 2440000 .. 2480000).
fn parse_as_of(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number (HJD - 2450000, e.g. 10850.5)"))?;
    if !v.is_finite() || !(-10_000.0..=30_000.0).contains(&v) {
        return Err(format!("`{s}` is not an as-of time: give HJD - 2450000 between -10000 and 30000 (1968 .. 2077)"));
    }
    Ok(v)
}
