//! `nimbus-bench storage`: the stores of issue 13, side by side in one run.
//!
//! - **S3**: PUT and GET of 4 KiB and 1 MiB objects at concurrency 1 and 32 against nimbus's AWS
//!   port and against `moto_server` (the common local S3 mock, PyPI `moto[server]`, installed by
//!   scripts/bench-tools.sh; reported as not installed when missing). Every request is SigV4-signed
//!   by the bench (nimbus-aws's signer, the admin pair from DATA_DIR/aws-credentials), with the
//!   body's SHA-256 as the payload hash, as boto3 does over plain HTTP. PUTs overwrite a ring of
//!   keys, so the data dir stays small; GETs read objects written before the phase.
//! - **the limit for S3 over HTTP**: the same PUTs and GETs against `nimbus-bench bare-objects`,
//!   a hyper server keeping bodies in memory and checking nothing (no signature, no hash, no
//!   disk). No object server can beat it on this machine with this client, so where it is
//!   itself under 10× moto, that target is out of reach here, whatever nimbus does.
//! - **the disk**: its sequential write speed in the data dir's filesystem, N MiB written in 1 MiB
//!   chunks and then fsynced, which is what a nimbus PUT must do before it answers (it fsyncs the
//!   file, the directory and the metadata commit).
//! - **KV**: get, put and increment at concurrency 32 through `/v1/kv` (the management API).
//!   Functions' KV calls reach the same implementation (crates/nimbus-gateway/src/kv_api.rs
//!   serves both doors), one hop further through the instance endpoint. After the increments the
//!   counters are read back: their sum must equal the increments acknowledged (none lost).
//!
//! Every run starts nimbus and moto anew, each with fresh state. The report is in `storagereport`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::common::Common;
use crate::load::Throughput;
use crate::output;
use crate::procs::{self, Nimbus};
use crate::s3client::{self, Kv, S3};
use crate::servers::{self, Launch, Ready};
use crate::storagereport::{self, Disk, Phase, RunResult, Settings};

#[derive(Args)]
pub struct StorageArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub place: MotoAndDir,
}

/// The options the benches against moto share (`storage`, `events`).
#[derive(Args)]
pub struct MotoAndDir {
    /// Where `moto[server]` is installed (a `pip --target` dir; default:
    /// $NIMBUS_BENCH_TOOLS/moto, else ~/.cache/nimbus/bench-tools/moto).
    #[arg(long)]
    pub moto: Option<PathBuf>,
    /// Leave moto out even when it is installed.
    #[arg(long)]
    pub without_moto: bool,
    /// The directory the data dirs (and `storage`'s disk measurement) go in (default: the temp
    /// dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The bucket and KV namespace of the app (and the bucket created in moto).
pub const BUCKET: &str = "bench-objects";
pub const NAMESPACE: &str = "bench";

/// The moto install to use (`--moto`, else the one scripts/bench-tools.sh installs), or why
/// there is none.
fn moto_dir(explicit: Option<&Path>, without: bool) -> Result<PathBuf, String> {
    if without {
        return Err("left out (--without-moto)".into());
    }
    let dir = match explicit {
        Some(d) => d.to_owned(),
        None => match std::env::var_os("NIMBUS_BENCH_TOOLS") {
            Some(t) => PathBuf::from(t).join("moto"),
            None => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/nimbus/bench-tools/moto"))
                .ok_or("HOME is not set")?,
        },
    };
    if dir.join("moto/server.py").is_file() {
        Ok(dir)
    } else if explicit.is_some() {
        Err(format!("--moto {}: no moto package there (install with scripts/bench-tools.sh)", dir.display()))
    } else {
        Err(format!("not installed in {} (scripts/bench-tools.sh installs it)", dir.display()))
    }
}

/// What a bench against moto starts from: where moto is installed (or why it is left out) and
/// the run's fresh temp dir.
pub struct MotoRun {
    pub moto: Result<PathBuf, String>,
    pub root: PathBuf,
}

impl MotoAndDir {
    /// Find moto (a `--moto` without moto in it is an error), create the temp dir of bench
    /// `bench` under `--dir`, and say both on stderr.
    pub fn start(&self, bench: &str, quick: bool, nimbus: &Path) -> Result<MotoRun> {
        let moto = moto_dir(self.moto.as_deref(), self.without_moto);
        if let (Err(why), Some(_)) = (&moto, &self.moto) {
            bail!("{why}");
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
        let parent = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let root = parent.join(format!("nimbus-bench-{bench}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        eprintln!("nimbus-bench {bench}: {} in {}", if quick { "quick run" } else { "full run" }, root.display());
        eprintln!(
            "  nimbus {}\n  moto   {}",
            nimbus.display(),
            moto.as_ref().map_or_else(|w| w.clone(), |d| d.display().to_string())
        );
        Ok(MotoRun { moto, root })
    }
}

pub async fn run(args: StorageArgs) -> Result<()> {
    let s = Settings::new(args.common.quick, usize::try_from(args.common.runs)?);
    let nimbus_bin = procs::locate_nimbus(args.common.nimbus.clone())?;
    let python = procs::python()?;
    let MotoRun { moto, root } = args.place.start("storage", s.quick, &nimbus_bin)?;
    let app = write_app(&root)?;
    let machine_before = output::machine();
    let mut runs = Vec::new();
    for run in 1..=s.runs {
        eprintln!("run {run}/{}", s.runs);
        let r = one_run(&s, run, &root, &app, &nimbus_bin, &python, moto.as_ref().ok().map(PathBuf::as_path)).await;
        match r {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("temp dir kept: {}", root.display());
                return Err(e.context(format!("run {run}")));
            }
        }
    }
    let machine_after = output::machine();
    let moto_note = moto.as_ref().err().cloned();
    print!("{}", storagereport::table(&s, &runs, &root, moto_note.as_deref()));
    let doc =
        storagereport::json(&s, &runs, moto_note.as_deref(), json!({"before": machine_before, "after": machine_after}));
    output::save(&args.common.out("storage"), &doc, &root, args.common.keep)
}

/// One run: the disk, then nimbus (S3 and KV), then moto, each started anew.
async fn one_run(
    s: &Settings,
    run: usize,
    root: &Path,
    app: &Path,
    nimbus_bin: &Path,
    python: &Path,
    moto: Option<&Path>,
) -> Result<RunResult> {
    let data = root.join(format!("data-{run}"));
    std::fs::create_dir_all(&data)?;
    eprintln!("  disk: {} MiB sequential write + fsync", s.disk_mib);
    let disk = disk_write(&data, s.disk_mib).await.context("measuring the disk")?;
    let log = root.join(format!("nimbus-{run}.log"));
    let aws_port = servers::free_port()?;
    let aws_listen = format!("127.0.0.1:{aws_port}");
    let nimbus = Nimbus::launch_with(nimbus_bin, app, &data, &log, &[], &["--aws-listen", &aws_listen]).await?;
    let measured = async {
        let s3 = S3::nimbus(&format!("http://{aws_listen}"), &data)?;
        let phases = s3_phases(s, &s3, nimbus.pid(), "nimbus").await?;
        let kv = kv_phases(s, &Kv::new(&nimbus.url, &nimbus.token, NAMESPACE), nimbus.pid()).await?;
        Ok::<_, anyhow::Error>((phases, kv))
    }
    .await;
    if measured.is_err() {
        eprintln!("nimbus log tail ({}):\n{}", log.display(), procs::tail(&log));
    }
    nimbus.stop().await?;
    let (mut s3, kv) = measured?;
    s3.extend(bare_phases(s, run, root).await.context("the bare object server")?);
    if let Some(dir) = moto {
        s3.extend(moto_phases(s, run, root, python, dir).await.context("moto")?);
    }
    Ok(RunResult { run, disk, s3, kv })
}

/// moto_server (installed in `dir`) on a free port with a fresh (in-memory) state, its output
/// in `log`.
pub async fn start_moto(python: &Path, dir: &Path, log: PathBuf) -> Result<servers::Server> {
    let port = servers::free_port()?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]).env("PYTHONPATH", dir);
    let server = servers::start(Launch {
        cmd,
        ready: Ready::Port(port),
        path: "/moto-api/".into(),
        expect: None,
        log,
        timeout: Duration::from_secs(60),
        graceful: None,
    })
    .await?;
    eprintln!("  moto up in {:.0} ms", server.start_ms);
    Ok(server)
}

/// moto_server with a fresh state, measured, stopped.
async fn moto_phases(s: &Settings, run: usize, root: &Path, python: &Path, dir: &Path) -> Result<Vec<Phase>> {
    let server = start_moto(python, dir, root.join(format!("moto-{run}.log"))).await?;
    let s3 = S3::moto(&server.base);
    let out = async {
        s3.create_bucket(BUCKET).await?;
        s3_phases(s, &s3, server.pid(), "moto").await
    }
    .await;
    server.stop().await;
    out
}

/// The in-memory object server (this executable as `nimbus-bench bare-objects`), measured,
/// stopped.
async fn bare_phases(s: &Settings, run: usize, root: &Path) -> Result<Vec<Phase>> {
    let server = servers::start_own(&root.join(format!("bare-{run}")), "bare-objects", &[]).await?;
    // Signed like moto's requests; the bare server checks no signature.
    let out = s3_phases(s, &S3::moto(&server.base), server.pid(), "bare").await;
    server.stop().await;
    out
}

/// PUT then GET, of each size, at each concurrency.
async fn s3_phases(s: &Settings, s3: &S3, pid: Option<u32>, system: &'static str) -> Result<Vec<Phase>> {
    let mut out = Vec::new();
    for size in s.sizes {
        s3client::fill(s3, BUCKET, size, s.get_keys)
            .await
            .with_context(|| format!("{system}: writing the GET objects"))?;
        for c in s.concurrency {
            for op in ["put", "get"] {
                eprintln!("  {system} {op} {} c={c}", storagereport::size_label(size));
                let tput = s3client::throughput(s3, BUCKET, op, size, s, pid, c)
                    .await
                    .with_context(|| format!("{system} {op} {size} bytes at c={c}"))?;
                out.push(Phase { store: "s3", system, op, size, tput });
            }
        }
    }
    Ok(out)
}

/// KV get, put and increment at `s.kv_concurrency`, then the no-lost-increments check.
async fn kv_phases(s: &Settings, kv: &Kv, pid: Option<u32>) -> Result<Vec<Phase>> {
    kv.fill(s.kv_keys).await.context("writing the KV keys")?;
    let mut out = Vec::new();
    for op in ["get", "put", "increment"] {
        eprintln!("  nimbus kv {op} c={}", s.kv_concurrency);
        let tput: Throughput = kv.throughput(op, s, pid).await.with_context(|| format!("KV {op}"))?;
        out.push(Phase { store: "kv", system: "nimbus", op, size: crate::storagereport::KV_VALUE_BYTES, tput });
    }
    kv.check_counters(s.kv_keys).await.context("checking the counters after the increments")?;
    Ok(out)
}

fn put_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The app: a bucket, a KV namespace, and the one function an app must have (never called).
fn write_app(root: &Path) -> Result<PathBuf> {
    let app = root.join("app");
    put_file(&app.join("functions/idle/handler.py"), "def handler(e, c):\n    return None\n")?;
    put_file(
        &app.join("nimbus.toml"),
        &format!(
            "# Written by nimbus-bench; deleted when the run ends.\nname = \"bench-storage\"\n\n[buckets.{BUCKET}]\n\n[kv.{NAMESPACE}]\n\n[functions.idle]\nruntime = \"python\"\nhandler = \"handler.handler\"\ncode = \"functions/idle\"\n"
        ),
    )?;
    Ok(app)
}

/// `mib` MiB written to a new file in `dir` in 1 MiB chunks, then fsynced (timed together).
async fn disk_write(dir: &Path, mib: u64) -> Result<Disk> {
    let path = dir.join("disk-write.bin");
    let p = path.clone();
    let secs = tokio::task::spawn_blocking(move || -> Result<f64> {
        use std::io::Write as _;
        // Not zeros: some filesystems and devices shortcut them.
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        let t0 = Instant::now();
        let mut f = std::fs::File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
        for _ in 0..mib {
            f.write_all(&chunk).with_context(|| format!("cannot write {}", p.display()))?;
        }
        f.sync_all().with_context(|| format!("cannot fsync {}", p.display()))?;
        Ok(t0.elapsed().as_secs_f64())
    })
    .await??;
    let _ = std::fs::remove_file(&path);
    Ok(Disk { mib, secs })
}
