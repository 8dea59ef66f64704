//! A target server on its own thread and runtime, on 127.0.0.1:0, over in-memory LUNs; and
//! helpers to run libiscsi's tools.

use std::{
    net::SocketAddr,
    process::{Command, Output},
    sync::{
        Arc, Once,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use cairn_gateway_iscsi::{
    login::{
        ChapAuth, ChapCredentials, ChapSecret, CheckedConfig, LoginConfig, OperationalLimits,
        TargetConfig,
    },
    scsi::{MemDevice, MemReservationStore},
    server::{DataOutBudgetStats, MemVolumes, Server, ServerConfig, Volumes},
};

/// Reads the server's data-out budget from the test's thread.
type BudgetProbe = Box<dyn Fn() -> DataOutBudgetStats + Send + Sync>;

/// Size of every test LUN: 64 MiB of 512-byte blocks.
pub const LUN_SIZE_BYTES: u64 = 64 << 20;
/// Block size of every test LUN.
pub const BLOCK_SIZE: u32 = 512;

/// Panics on server threads, over the whole test binary: any is a bug.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();
const SERVER_THREAD_PREFIX: &str = "iscsi-target";

/// One target of a test server.
pub struct TestTargetConfig {
    pub name: String,
    pub chap: Option<ChapAuth>,
    pub allowed_initiators: Vec<String>,
}

impl TestTargetConfig {
    pub fn open(name: &str) -> TestTargetConfig {
        TestTargetConfig {
            name: name.to_owned(),
            chap: None,
            allowed_initiators: Vec::new(),
        }
    }
}

pub fn chap(user: &str, secret: &str) -> ChapAuth {
    ChapAuth {
        initiator: ChapCredentials {
            user: user.to_owned(),
            secret: ChapSecret::new(secret.as_bytes().to_vec()),
        },
        target: None,
    }
}

pub fn mutual_chap(user: &str, secret: &str, target_user: &str, target_secret: &str) -> ChapAuth {
    ChapAuth {
        target: Some(ChapCredentials {
            user: target_user.to_owned(),
            secret: ChapSecret::new(target_secret.as_bytes().to_vec()),
        }),
        ..chap(user, secret)
    }
}

/// A running server; stops (closing its connections) when dropped.
pub struct TestServer {
    pub address: SocketAddr,
    pub devices: Vec<Arc<MemDevice>>,
    budget: BudgetProbe,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server over `targets`, with `discovery_chap` for discovery sessions and a short
    /// NOP-In interval when `nop_interval` is given.
    pub fn start_with(
        targets: Vec<TestTargetConfig>,
        discovery_chap: Option<ChapAuth>,
        tune: impl FnOnce(&mut ServerConfig) + Send + 'static,
    ) -> TestServer {
        let volumes = MemVolumes::new();
        let mut devices = Vec::new();
        let mut login = LoginConfig {
            discovery_chap,
            ..LoginConfig::default()
        };
        for target in targets {
            devices.push(volumes.add(&target.name, LUN_SIZE_BYTES, BLOCK_SIZE));
            login.targets.push(TargetConfig {
                name: target.name,
                alias: None,
                chap: target.chap,
                allowed_initiators: target.allowed_initiators,
            });
        }
        let login = login.check().expect("a valid test configuration");
        let mut server = TestServer::spawn(login, volumes, tune);
        server.devices = devices;
        server
    }

    /// A server over any volumes.
    pub fn spawn<V: Volumes>(
        login: Arc<CheckedConfig>,
        volumes: V,
        tune: impl FnOnce(&mut ServerConfig) + Send + 'static,
    ) -> TestServer {
        install_panic_hook();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let address = listener.local_addr().expect("local address");
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (probe_tx, probe_rx) = std::sync::mpsc::channel::<BudgetProbe>();
        let thread = std::thread::Builder::new()
            .name(format!("{SERVER_THREAD_PREFIX}-{}", address.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let mut config = ServerConfig::new(login, format!("{address},1"));
                    tune(&mut config);
                    let server = Server::new(config, volumes, MemReservationStore::default());
                    let probed = Arc::clone(&server);
                    probe_tx
                        .send(Box::new(move || probed.data_out_budget()))
                        .expect("the test waits for the probe");
                    let stopped = async {
                        let _ = shutdown_rx.await;
                    };
                    server.serve(listener, stopped).await.expect("serving");
                    // Let connections see the shutdown and close.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                });
            })
            .expect("a server thread");
        let budget = probe_rx.recv().expect("the server starts");
        TestServer {
            address,
            devices: Vec::new(),
            budget,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn start(targets: Vec<TestTargetConfig>) -> TestServer {
        TestServer::start_with(targets, None, |_| {})
    }

    /// A server with one open target, `target`, whose login offers `limits`.
    pub fn with_limits(target: &str, limits: OperationalLimits) -> TestServer {
        let volumes = MemVolumes::new();
        let device = volumes.add(target, LUN_SIZE_BYTES, BLOCK_SIZE);
        let login = LoginConfig {
            targets: vec![TargetConfig {
                name: target.to_owned(),
                alias: None,
                chap: None,
                allowed_initiators: Vec::new(),
            }],
            limits,
            ..LoginConfig::default()
        };
        let login = login.check().expect("a valid test configuration");
        let mut server = TestServer::spawn(login, volumes, |_| {});
        server.devices = vec![device];
        server
    }

    /// How the server's data-out budget is used now.
    pub fn budget(&self) -> DataOutBudgetStats {
        (self.budget)()
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The portal URL prefix, `iscsi://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}", self.port())
    }

    pub fn assert_no_panics(&self) {
        assert_eq!(
            SERVER_PANICS.load(Ordering::SeqCst),
            0,
            "a server thread panicked"
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counts panics on server threads (the tests' own panics are their failures).
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if thread
                .name()
                .is_some_and(|name| name.starts_with(SERVER_THREAD_PREFIX))
            {
                SERVER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Whether libiscsi's tool `name` is installed; prints why a test is skipped if not.
pub fn have_tool(name: &str) -> bool {
    let found = Command::new(name).arg("--help").output().is_ok();
    // CI installs libiscsi-bin (scripts/prerequisites.sh): there a missing tool is a failure,
    // never a silent pass.
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{name} is not installed (Debian package libiscsi-bin)"
    );
    if !found {
        println!("skipped: {name} is not installed (Debian package libiscsi-bin)");
    }
    found
}

/// Runs a tool with a deadline; kills it past the deadline.
pub fn run_tool(name: &str, args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(name)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("running {name}: {error}"));
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("waiting for the tool").is_some() {
            break;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("the tool's output");
    println!(
        "$ {name} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
