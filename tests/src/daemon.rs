//! Running the built `svc-overlay` binary: build it once per test process, spawn it on
//! loopback with `:0` ports, read the bound addresses from its `listening` line, and keep
//! every line it prints for the assertions.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{http, poll_until, prom, workspace_root};

/// The `svc-overlay` binary of this build, built if needed.
///
/// `SVC_OVERLAY_BIN` names a binary to use as is. Otherwise the binary is the one of the
/// target directory and profile this test executable was built into (`<target>/<profile>/
/// deps/<test>` → `<target>/<profile>/svc-overlay`), and `cargo build -p svc-overlay` is run
/// once first: a dependency on the package would only build its library, and
/// `CARGO_BIN_EXE_*` exists only for a package's own binaries. Cargo does not hold the build
/// lock while tests run, so this nested build is safe; when the binary is fresh it is a
/// no-op that takes a fraction of a second.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SVC_OVERLAY_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // <target>/<profile>/deps/<exe>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable under <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => "dev",
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "svc-overlay",
                "--bin",
                "svc-overlay",
            ])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p svc-overlay failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join(format!("svc-overlay{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// The binary with none of the caller's `SVC_OVERLAY_*` environment (nor OTLP export): for
/// running its client commands (`publish`, `subscribe`) against a test daemon.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SVC_OVERLAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd.stdin(Stdio::null());
    cmd
}

/// Lines a daemon printed, shared with the threads that read its pipes.
#[derive(Default)]
struct Output {
    lines: Mutex<Lines>,
    changed: Condvar,
}

#[derive(Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Both pipes reached EOF.
    closed: u8,
}

fn pump(src: impl Read + Send + 'static, out: Arc<Output>, is_stdout: bool) {
    std::thread::spawn(move || {
        let mut rd = BufReader::new(src);
        let mut line = Vec::new();
        loop {
            line.clear();
            match rd.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    let mut l = out.lines.lock().unwrap();
                    if is_stdout {
                        l.stdout.push(text);
                    } else {
                        l.stderr.push(text);
                    }
                    out.changed.notify_all();
                }
            }
        }
        out.lines.lock().unwrap().closed += 1;
        out.changed.notify_all();
    });
}

/// How to start a daemon: `run --listen 127.0.0.1:0 --admin 127.0.0.1:0` (or the addresses
/// given to `listen`) plus extra
/// arguments and `SVC_OVERLAY_*` environment.
#[derive(Clone, Debug, Default)]
pub struct DaemonBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    /// Fixed (overlay, admin) addresses instead of `:0`: a mesh whose nodes dial each other
    /// must know every address before any node starts.
    listen: Option<(SocketAddr, SocketAddr)>,
    /// `--listen ""`: no plain listener (the TLS one must be configured).
    tls_only: bool,
}

impl DaemonBuilder {
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// A config key as environment: `env("readiness.sustain", "300ms")` sets
    /// `SVC_OVERLAY_READINESS__SUSTAIN`.
    pub fn cfg(mut self, key: &str, value: impl Into<String>) -> Self {
        let name = format!(
            "SVC_OVERLAY_{}",
            key.replace('.', "__").to_ascii_uppercase()
        );
        self.env.push((name, value.into()));
        self
    }
    /// An environment variable that is not a config key (`MALLOC_ARENA_MAX`).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
    /// Runs the daemon with `RLIMIT_NOFILE` (soft and hard) at `n`, as `prlimit` would.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Listens on these addresses instead of `127.0.0.1:0`.
    pub fn listen(mut self, overlay: SocketAddr, admin: SocketAddr) -> Self {
        self.listen = Some((overlay, admin));
        self
    }
    /// Turns the plain listener off (`--listen ""`); configure `overlay.tls_listen`.
    pub fn tls_only(mut self) -> Self {
        self.tls_only = true;
        self
    }
    pub fn start(self) -> Daemon {
        Daemon::spawn(self)
    }
}

/// A running `svc-overlay run`. Dropping it kills the process if it is still running.
pub struct Daemon {
    child: Child,
    out: Arc<Output>,
    status: Option<ExitStatus>,
    pub overlay: SocketAddr,
    /// The TLS listener's address, when `overlay.tls_listen` is set.
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub node_id: String,
    pub started: Instant,
}

/// How long start-up may take before a test gives up (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// A daemon with the defaults.
    pub fn start() -> Daemon {
        DaemonBuilder::default().start()
    }

    fn spawn(b: DaemonBuilder) -> Daemon {
        let (listen, admin) = match b.listen {
            Some((o, a)) => (o.to_string(), a.to_string()),
            None => ("127.0.0.1:0".into(), "127.0.0.1:0".into()),
        };
        let listen = if b.tls_only { String::new() } else { listen };
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--listen", &listen, "--admin", &admin])
            .args(&b.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only what the test says: nothing inherited from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SVC_OVERLAY_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        cmd.env_remove("MALLOC_ARENA_MAX");
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        if let Some(n) = b.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe
            // and touches nothing of the parent's.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn svc-overlay");
        let out = Arc::new(Output::default());
        pump(child.stdout.take().unwrap(), out.clone(), true);
        pump(child.stderr.take().unwrap(), out.clone(), false);
        let mut d = Daemon {
            child,
            out,
            status: None,
            overlay: "0.0.0.0:0".parse().unwrap(),
            tls: None,
            admin: "0.0.0.0:0".parse().unwrap(),
            node_id: String::new(),
            started,
        };
        let Some(line) = d.wait_log(START_TIMEOUT, |l| l["event"] == "listening") else {
            panic!(
                "no `listening` line within {START_TIMEOUT:?}; exit {:?}\n{}",
                d.child.try_wait(),
                d.all_output()
            );
        };
        d.admin = line["admin_addr"].as_str().unwrap().parse().unwrap();
        d.tls = line["tls_addr"].as_str().and_then(|a| a.parse().ok());
        // Without a plain listener the TLS one is the node's overlay address.
        d.overlay = match line["overlay_addr"].as_str() {
            Some(a) => a.parse().unwrap(),
            None => d.tls.expect("a plain or a TLS listener"),
        };
        d.node_id = line["node"].as_str().unwrap_or_default().to_string();
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped while `self` lives
        // unless `status` is set, in which case we do not signal.
        if self.status.is_none() {
            let r = unsafe { libc::kill(self.pid(), sig) };
            assert_eq!(r, 0, "kill({}, {sig})", self.pid());
        }
    }

    /// Waits for the process to exit, for at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                // Let the pipe readers see EOF, so every line is in.
                let mut l = self.out.lines.lock().unwrap();
                while l.closed < 2 {
                    let (g, t) = self
                        .out
                        .changed
                        .wait_timeout(l, Duration::from_secs(5))
                        .unwrap();
                    l = g;
                    if t.timed_out() {
                        break;
                    }
                }
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stdout lines that are JSON objects (the daemon's log).
    pub fn log_lines(&self) -> Vec<Value> {
        let l = self.out.lines.lock().unwrap();
        l.stdout
            .iter()
            .filter_map(|s| serde_json::from_str::<Value>(s).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Everything printed so far, stdout then stderr.
    pub fn all_output(&self) -> String {
        let l = self.out.lines.lock().unwrap();
        let mut s = l.stdout.join("\n");
        s.push_str("\n--- stderr ---\n");
        s.push_str(&l.stderr.join("\n"));
        s
    }

    /// The first log line (already printed or still to come) that satisfies `pred`.
    pub fn wait_log(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut l = self.out.lines.lock().unwrap();
        loop {
            for s in &l.stdout[seen..] {
                if let Ok(v) = serde_json::from_str::<Value>(s) {
                    if pred(&v) {
                        return Some(v);
                    }
                }
            }
            seen = l.stdout.len();
            let now = Instant::now();
            if now >= deadline || l.closed >= 2 {
                return None;
            }
            l = self.out.changed.wait_timeout(l, deadline - now).unwrap().0;
        }
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.admin, path, &[]).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A scrape of `/metrics`, parsed.
    pub fn scrape(&self) -> prom::Exposition {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        prom::parse(&r.body).unwrap_or_else(|e| panic!("bad exposition: {e}\n{}", r.body))
    }

    /// One series' value (exact label set), 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape().value(name, labels).unwrap_or(0.0)
    }

    /// Polls `/readyz` until it answers `status`; returns the body.
    pub fn wait_readyz(&self, status: u16, timeout: Duration) -> Value {
        poll_until(&format!("/readyz {status}"), timeout, || {
            let r = http::get(self.admin, "/readyz", &[]).ok()?;
            (r.status == status).then(|| r.json())
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Our own child, by its handle: never anything else.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
