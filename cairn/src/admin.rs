//! The operator CLI over the admin API: `cairn cluster|pool|volume|node|tenant|bucket|rebalance
//! ...`.
//!
//! Tables on a terminal, `--json` for scripts. Errors print the API's message and exit
//! non-zero. A member that is not the leader answers writes with 503 and the leader's address;
//! the client follows it, and retries a few times while an election runs.

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};
use comfy_table::Table;
use serde_json::{Value, json};

/// How long a command keeps retrying a group without a leader.
const RETRY_FOR: Duration = Duration::from_secs(15);

#[derive(Args, Clone)]
pub struct Connection {
    /// Admin API base URLs, comma-separated (any member; writes are sent on to the leader).
    #[arg(
        long,
        env = "CAIRN_ADMIN_URL",
        default_value = "http://127.0.0.1:7200",
        global = true
    )]
    admin_url: String,
    /// The admin API's bearer token.
    #[arg(long, env = "CAIRN_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// The metadata group's state as one member sees it, and object counts.
    Status,
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Creates a pool and places its placement groups.
    Create {
        name: String,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Failure-domain level: disk, host, rack or site.
        #[arg(long, default_value = "host")]
        domain: String,
        #[arg(long, default_value_t = 128)]
        pg_count: u32,
    },
    /// Lists pools.
    List,
    /// Shows a pool with its PG map.
    Show { name: String },
}

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Creates a thin volume.
    Create {
        name: String,
        #[arg(long)]
        pool: String,
        /// Size, e.g. 10G, 512M, 1T (binary units) or bytes.
        #[arg(long)]
        size: String,
        /// IOPS tier: normal (800), high (2500) or ultra (10000).
        #[arg(long, default_value = "normal")]
        tier: String,
        /// A custom IOPS limit replacing the tier's (1 to 1,000,000).
        #[arg(long)]
        iops: Option<u32>,
        /// A bandwidth limit in MB/s (10^6 bytes per second; at least 1).
        #[arg(long)]
        mbps: Option<u64>,
    },
    /// Sets a volume's QoS: the tier (kept when not given) and custom limits (a limit not
    /// given is removed). The iSCSI gateways apply it within a second.
    Qos {
        name: String,
        /// IOPS tier: normal, high or ultra.
        #[arg(long)]
        tier: Option<String>,
        /// A custom IOPS limit replacing the tier's.
        #[arg(long)]
        iops: Option<u32>,
        /// A bandwidth limit in MB/s.
        #[arg(long)]
        mbps: Option<u64>,
    },
    /// Sets who may log in to a volume's iSCSI target: its own CHAP credential (else the
    /// gateway's), mutual CHAP, and the initiator names allowed (else any). `--clear` goes
    /// back to the defaults. Secrets are read from files, never from the command line.
    Access {
        name: String,
        /// CHAP user the initiator logs in as.
        #[arg(long, requires = "chap_secret_file")]
        chap_user: Option<String>,
        /// File holding that user's secret (12-255 characters).
        #[arg(long, requires = "chap_user")]
        chap_secret_file: Option<PathBuf>,
        /// Mutual CHAP: the user the target answers as.
        #[arg(long, requires_all = ["mutual_secret_file", "chap_user"])]
        mutual_user: Option<String>,
        /// File holding the target's secret (another than the initiator's).
        #[arg(long, requires = "mutual_user")]
        mutual_secret_file: Option<PathBuf>,
        /// An initiator name allowed (repeat); none given: any initiator.
        #[arg(long = "initiator")]
        initiators: Vec<String>,
        /// Remove the volume's own rules.
        #[arg(long, conflicts_with_all = ["chap_user", "mutual_user", "initiators"])]
        clear: bool,
    },
    /// Lists volumes.
    List,
    /// Shows one volume.
    Show { name: String },
    /// Deletes a volume.
    Delete { name: String },
    /// What an initiator needs to attach the volume over iSCSI: portal, target name (IQN),
    /// LUN and CHAP user (the secret is the operator's: `cairn dev` keeps it in
    /// DIR/iscsi-chap.secret).
    AttachInfo { name: String },
    /// Grows a volume.
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Writes a file's bytes into a volume at OFFSET (e.g. 0, 4K, 1G).
    Write {
        name: String,
        offset: String,
        file: PathBuf,
    },
    /// Reads LENGTH bytes of a volume at OFFSET to standard output (or `--out FILE`).
    Read {
        name: String,
        offset: String,
        length: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Lists the disks of the cluster map.
    List,
    /// Registers a disk (its label UUID, from `cairn disk show`).
    AddDisk {
        #[arg(long)]
        id: String,
        #[arg(long)]
        host: u32,
        #[arg(long, default_value_t = 0)]
        rack: u32,
        #[arg(long, default_value_t = 0)]
        site: u32,
        /// Capacity, e.g. 4T.
        #[arg(long)]
        capacity: String,
    },
    /// Marks a disk in or out.
    SetDiskState { id: String, state: String },
    /// Marks every disk of storage node N out: its PG members move to other nodes.
    Drain { id: u64 },
    /// Removes a drained storage node and its disks from the cluster map (refused while a PG
    /// still has a member on it). A node joins by running `cairn node run`, which registers
    /// it and its disks.
    Remove { id: u64 },
    /// Runs a storage node: registers it and its disks, hosts its PG replicas.
    Run(Box<crate::node::NodeArgs>),
}

#[derive(Subcommand)]
pub enum RebalanceCommand {
    /// PGs whose members are moving (recovery or rebalance), and whether rebalancing is on.
    Status {
        /// Redraw every second until no PG is settling.
        #[arg(long)]
        watch: bool,
    },
    /// Turns rebalancing on (the default).
    Start,
    /// Stops starting rebalance moves (recovery of lost members goes on).
    Pause,
    /// Turns rebalancing on again.
    Resume,
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Creates a tenant.
    Create { name: String },
    /// Lists tenants and their access key ids.
    List,
    /// Deletes a tenant (its keys first).
    Delete { name: String },
    /// Creates an access key; the secret is shown once.
    CreateKey { tenant: String },
    /// Deletes an access key.
    DeleteKey { id: String },
    /// Sets the tenant's quota over all its buckets; a limit not given is removed.
    Quota {
        /// The tenant.
        name: String,
        #[command(flatten)]
        limits: QuotaLimits,
    },
}

/// A quota's limits, as `bucket quota` and `tenant quota` take them.
#[derive(clap::Args)]
pub struct QuotaLimits {
    /// Most bytes stored (every object version counted), e.g. 10G.
    #[arg(long)]
    bytes: Option<String>,
    /// Most object versions stored.
    #[arg(long)]
    objects: Option<u64>,
}

#[derive(Subcommand)]
pub enum BucketCommand {
    /// Lists buckets with their usage, versioning state and quota.
    List {
        /// Only this tenant's buckets.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Shows one bucket.
    Show { name: String },
    /// Sets the bucket's quota; a limit not given is removed.
    Quota {
        /// The bucket.
        name: String,
        #[command(flatten)]
        limits: QuotaLimits,
    },
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Creates an access key for a tenant; prints the id and the secret (shown only once).
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
    },
    /// Deletes an access key.
    Delete { id: String },
}

/// Parses a size: a number with an optional binary unit (K, M, G, T, P; "iB" and "B" allowed).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?}: expected a number with K, M, G, T or P"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => return Err(format!("size {text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Formats bytes with a binary unit and one decimal, for amounts that grow (3.2 GiB).
pub fn format_size_approx(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while unit + 1 < UNITS.len() && scaled >= 1024.0 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// Formats bytes with a binary unit.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes;
    while unit + 1 < UNITS.len() && value >= 1024 && value.is_multiple_of(1024) {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

pub(crate) enum Method {
    Get,
    Post(Value),
    Put(Value),
    Delete,
}

impl Connection {
    /// The admin API at `url` with `token` (a process calling its own or a known API).
    pub(crate) fn new(url: String, token: String) -> Connection {
        Connection {
            admin_url: url,
            token: Some(token),
            json: false,
        }
    }

    /// The same admin URLs with another token (a process reading its token from a file).
    pub(crate) fn with_token(&self, token: String) -> Connection {
        Connection {
            token: Some(token),
            ..self.clone()
        }
    }
}

/// One admin API call with the CLI's leader following and retries (for `cairn node run`).
pub(crate) fn api_call(
    connection: &Connection,
    path: &str,
    method: Method,
) -> Result<Value, String> {
    let client = Client::new(connection).map_err(|Failure(m)| m)?;
    client.call(path, method).map_err(|Failure(m)| m)
}

/// An admin API call off the async threads (the client blocks).
pub(crate) async fn call(
    connection: &Connection,
    path: String,
    method: Method,
) -> Result<Value, String> {
    let connection = connection.clone();
    tokio::task::spawn_blocking(move || api_call(&connection, &path, method))
        .await
        .map_err(|e| format!("admin call: {e}"))?
}

/// An admin API client keeping its connections (one ureq agent).
pub(crate) struct Client {
    urls: Vec<String>,
    token: String,
    agent: ureq::Agent,
}

/// A failed call: the message to print.
pub(crate) struct Failure(pub(crate) String);

impl Client {
    pub(crate) fn new(connection: &Connection) -> Result<Client, Failure> {
        let token = connection.token.clone().ok_or_else(|| {
            Failure("no admin token: pass --token or set CAIRN_ADMIN_TOKEN".into())
        })?;
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build();
        Ok(Client {
            urls: connection
                .admin_url
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            token,
            // An IP address resolves on this thread, not on one made per call.
            agent: crate::peer::agent(config),
        })
    }

    fn once(&self, base: &str, path: &str, method: &Method) -> Result<(u16, Value), String> {
        let url = format!("{base}{path}");
        let auth = format!("Bearer {}", self.token);
        let response = match method {
            Method::Get => self.agent.get(&url).header("Authorization", &auth).call(),
            Method::Delete => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            Method::Post(body) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body),
            Method::Put(body) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(body),
        };
        let mut response = response.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_json::<Value>()
            .unwrap_or_else(|_| json!({ "error": "the server sent no JSON" }));
        Ok((status, body))
    }

    /// Calls the API, following the leader and retrying while the group has none.
    fn call(&self, path: &str, method: Method) -> Result<Value, Failure> {
        match self.request(path, &method) {
            Ok((status, body)) if status < 300 => Ok(body),
            Ok((status, body)) => Err(Failure(error_text(status, &body))),
            Err(e) => Err(Failure(e)),
        }
    }

    /// One request, following the leader and retrying while the group has none (503) or no
    /// member answers; any other answer is returned with its status.
    pub(crate) fn request(&self, path: &str, method: &Method) -> Result<(u16, Value), String> {
        let started = Instant::now();
        let mut target = 0;
        let mut leader: Option<String> = None;
        let mut last_error = String::from("no admin URL given");
        let mut delay = Duration::from_millis(50);
        while started.elapsed() < RETRY_FOR && !self.urls.is_empty() {
            let base = leader
                .take()
                .unwrap_or_else(|| self.urls[target % self.urls.len()].clone());
            match self.once(&base, path, method) {
                Ok((503, body)) => {
                    last_error = error_text(503, &body);
                    leader = body["leader_api"].as_str().map(str::to_string);
                    if leader.is_none() {
                        target += 1;
                    }
                }
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    last_error = e;
                    target += 1;
                }
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        Err(last_error)
    }
}

/// Largest response body read for a volume read: the server's per-request limit plus slack.
const DATA_BYTES_MAX: u64 = 64 << 20;

impl Client {
    fn data_url(&self, name: &str, query: &str) -> Result<String, String> {
        let base = self.urls.first().ok_or("no admin URL given")?;
        Ok(format!("{base}/v1/volumes/{name}/data?{query}"))
    }

    /// Sends volume bytes; retries while the cluster starts or elects.
    fn put_data(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), String> {
        let url = self.data_url(name, &format!("offset={offset}"))?;
        self.data_call(&url, |agent, auth| {
            agent.put(&url).header("Authorization", auth).send(data)
        })
        .map(|_| ())
    }

    /// Fetches volume bytes; retries while the cluster starts or elects.
    fn get_data(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>, String> {
        let url = self.data_url(name, &format!("offset={offset}&length={length}"))?;
        self.data_call(&url, |agent, auth| {
            agent.get(&url).header("Authorization", auth).call()
        })
    }

    fn data_call(
        &self,
        url: &str,
        send: impl Fn(&ureq::Agent, &str) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, String> {
        let auth = format!("Bearer {}", self.token);
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let mut response = send(&self.agent, &auth).map_err(|e| format!("{url}: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(DATA_BYTES_MAX + 1)
                .read_to_vec()
                .map_err(|e| format!("{url}: {e}"))?;
            if status < 300 {
                return Ok(body);
            }
            let json: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| json!({ "error": "the server sent no JSON" }));
            if status != 503 || started.elapsed() > RETRY_FOR {
                return Err(error_text(status, &json));
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

fn data_command(connection: &Connection, run: impl FnOnce() -> Result<(), String>) -> ExitCode {
    match run() {
        Ok(()) => {
            if connection.json {
                println!("{}", json!({ "done": true }));
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn error_text(status: u16, body: &Value) -> String {
    let message = body["error"].as_str().unwrap_or("unknown error");
    format!("{message} (HTTP {status})")
}

fn finish(
    connection: &Connection,
    result: Result<Value, Failure>,
    table: fn(&Value) -> Table,
) -> ExitCode {
    match result {
        Ok(value) => {
            if connection.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                println!("{}", table(&value));
            }
            ExitCode::SUCCESS
        }
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A table with one row per object of `rows` (or the one object), `columns` as keys.
fn rows(value: &Value, columns: &[&str]) -> Table {
    let mut table = Table::new();
    table.set_header(columns.iter().map(|c| c.to_uppercase()));
    let list = match value {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    for item in list {
        table.add_row(columns.iter().map(|c| {
            let cell = &item[*c];
            match (*c, cell.as_u64()) {
                ("size_bytes" | "capacity_bytes", Some(bytes)) => format_size(bytes),
                _ => text(cell),
            }
        }));
    }
    table
}

fn pool_table(v: &Value) -> Table {
    rows(
        v,
        &["name", "id", "replicas", "domain", "pg_count", "epoch"],
    )
}

fn volume_table(v: &Value) -> Table {
    rows(
        v,
        &[
            "name",
            "id",
            "pool",
            "size_bytes",
            "tier",
            "iops_max",
            "bytes_per_s_max",
        ],
    )
}

fn access_table(v: &Value) -> Table {
    let access = &v["iscsi_access"];
    let row = json!({
        "name": v["name"],
        "chap_user": access["chap"]["user"],
        "mutual_user": access["mutual"]["user"],
        "initiators": access["initiators"].as_array().map(|names| {
            names.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")
        }),
    });
    rows(&row, &["name", "chap_user", "mutual_user", "initiators"])
}

/// A secret from a file (trimmed): secrets stay off command lines, which other users can see.
fn secret_file(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("read {}: {e}", path.display()))
}

fn attach_table(v: &Value) -> Table {
    rows(
        v,
        &["volume", "protocol", "portal", "target", "lun", "chap_user"],
    )
}

fn disk_table(v: &Value) -> Table {
    rows(
        v,
        &["id", "host", "rack", "site", "capacity_bytes", "state"],
    )
}

fn tenant_table(v: &Value) -> Table {
    rows(v, &["name", "id", "access_keys"])
}

/// `value` (one object or a list) with its quota's limits lifted to the top level and byte
/// counts in units, for [`rows`].
fn with_limits(value: &Value) -> Value {
    let lift = |item: &Value| {
        let mut item = item.clone();
        let bytes = |v: &Value| v.as_u64().map_or(json!(null), |b| json!(format_size(b)));
        item["bytes_max"] = bytes(&item["quota"]["bytes_max"]);
        item["objects_max"] = item["quota"]["objects_max"].clone();
        item["bytes"] = bytes(&item["bytes"]);
        item
    };
    match value {
        Value::Array(items) => Value::Array(items.iter().map(lift).collect()),
        other => lift(other),
    }
}

fn tenant_quota_table(v: &Value) -> Table {
    let columns = ["name", "objects", "bytes", "objects_max", "bytes_max"];
    rows(&with_limits(v), &columns)
}

fn bucket_table(v: &Value) -> Table {
    let columns = [
        "name",
        "tenant",
        "pool",
        "versioning",
        "objects",
        "bytes",
        "objects_max",
        "bytes_max",
    ];
    rows(&with_limits(v), &columns)
}

/// The JSON body of a quota: the limits given, the others absent (removed).
fn quota_body(limits: &QuotaLimits) -> Result<Value, ExitCode> {
    let mut body = json!({});
    if let Some(bytes) = &limits.bytes {
        body["bytes_max"] = json!(size_or_exit(bytes)?);
    }
    if let Some(objects) = limits.objects {
        body["objects_max"] = json!(objects);
    }
    Ok(body)
}

pub fn bucket(connection: &Connection, command: BucketCommand) -> ExitCode {
    match command {
        BucketCommand::List { tenant } => {
            let path = match tenant {
                Some(tenant) => format!("/v1/buckets?tenant={tenant}"),
                None => "/v1/buckets".to_string(),
            };
            run_with(connection, &path, Method::Get, bucket_table)
        }
        BucketCommand::Show { name } => run_with(
            connection,
            &format!("/v1/buckets/{name}"),
            Method::Get,
            bucket_table,
        ),
        BucketCommand::Quota { name, limits } => match quota_body(&limits) {
            Ok(body) => run_with(
                connection,
                &format!("/v1/buckets/{name}/quota"),
                Method::Put(body),
                bucket_table,
            ),
            Err(code) => code,
        },
    }
}

fn key_table(v: &Value) -> Table {
    rows(v, &["tenant", "access_key_id", "secret_key"])
}

fn done_table(v: &Value) -> Table {
    let mut table = Table::new();
    if let Value::Object(map) = v {
        for (key, value) in map {
            table.add_row(vec![key.clone(), text(value)]);
        }
    }
    table
}

fn status_table(v: &Value) -> Table {
    let mut table = Table::new();
    let member = &v["member"];
    table.set_header(vec!["FIELD", "VALUE"]);
    for field in [
        "id", "role", "term", "leader", "commit", "applied", "voters", "learners",
    ] {
        table.add_row(vec![format!("member.{field}"), text(&member[field])]);
    }
    if let Value::Object(counts) = &v["counts"] {
        for (key, value) in counts {
            table.add_row(vec![key.clone(), text(value)]);
        }
    }
    if let Value::Array(members) = &v["members"] {
        for m in members {
            let line = format!("raft {} api {}", text(&m["raft"]), text(&m["api"]));
            table.add_row(vec![format!("members.{}", text(&m["id"])), line]);
        }
    }
    let health = &v["health"];
    if !health.is_object() {
        let note = "kept by the leader; this member does not lead";
        table.add_row(vec!["health".to_string(), note.to_string()]);
    }
    if health.is_object() {
        table.add_row(vec!["status".to_string(), text(&v["status"])]);
        let pgs = format!(
            "{} healthy, {} degraded, {} down",
            text(&health["pgs_healthy"]),
            text(&health["pgs_degraded"]),
            text(&health["pgs_down"])
        );
        table.add_row(vec!["pgs".to_string(), pgs]);
        let contents = format!(
            "{} with members' digests agreeing, {} differing",
            text(&health["pgs_consistent"]),
            text(&health["pgs_inconsistent"])
        );
        table.add_row(vec!["pg contents".to_string(), contents]);
        for pg in health["inconsistent"].as_array().into_iter().flatten() {
            let replicas: Vec<String> = pg["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(replica_text)
                .collect();
            let line = format!(
                "members hold different contents at log index {}: {} differ",
                text(&pg["index"]),
                replicas.join(", ")
            );
            table.add_row(vec![format!("inconsistent.{}", text(&pg["group"])), line]);
        }
        let disks = format!(
            "{} in and reporting, {} failed, {} in but silent, {} out",
            text(&health["disks_in_reporting"]),
            text(&health["disks_failed"]),
            text(&health["disks_in_silent"]),
            text(&health["disks_out"])
        );
        table.add_row(vec!["disks".to_string(), disks]);
        if let Value::Array(nodes) = &health["nodes"] {
            for n in nodes {
                let line = format!(
                    "{} (last heartbeat {} ms ago), {} replicas ({} leading), {} used, {} corrupt blocks",
                    if n["fresh"] == Value::Bool(true) {
                        "up"
                    } else {
                        "silent"
                    },
                    text(&n["age_ms"]),
                    text(&n["replicas"]),
                    text(&n["leaders"]),
                    format_size(n["used_bytes"].as_u64().unwrap_or_default()),
                    text(&n["corrupt_blocks"]),
                );
                table.add_row(vec![format!("node.{}", text(&n["node"])), line]);
                for d in n["disks"].as_array().into_iter().flatten() {
                    let latency = match d["failure"].as_str() {
                        Some(failure) => format!("FAILED, out of service: {failure}"),
                        None => format!(
                            "mean read {} µs, mean write {} µs",
                            text(&d["read_us"]),
                            text(&d["write_us"])
                        ),
                    };
                    let disk = format!("node.{}.disk.{}", text(&n["node"]), text(&d["id"]));
                    table.add_row(vec![disk, latency]);
                }
            }
        }
    }
    table
}

/// A replica id from the API (a number) as operators read it: `n2.r5`.
fn replica_text(value: &Value) -> String {
    match value.as_u64() {
        Some(id) => cairn_common::ReplicaId(id).to_string(),
        None => text(value),
    }
}

/// The settling PGs of a `GET /v1/rebalance` answer, one row each.
fn rebalance_table(v: &Value) -> Table {
    let mut table = Table::new();
    table.set_header(vec!["POOL", "PG", "MEMBERS", "JOINING", "COPIED", "OF"]);
    for pg in v["settling"].as_array().into_iter().flatten() {
        let replicas = |key: &str| -> String {
            let list = pg[key].as_array().into_iter().flatten();
            list.map(replica_text).collect::<Vec<_>>().join(" ")
        };
        table.add_row(vec![
            text(&pg["pool"]),
            text(&pg["pg"]),
            replicas("members"),
            replicas("joining"),
            format_size_approx(pg["restored_bytes"].as_u64().unwrap_or_default()),
            match pg["total_bytes"].as_u64() {
                Some(total) if total > 0 => format_size_approx(total),
                _ => "?".into(),
            },
        ]);
    }
    table
}

/// Bytes copied and bytes to copy in all, over the settling PGs of a `GET /v1/rebalance`
/// answer.
fn rebalance_bytes(v: &Value) -> (u64, u64) {
    let settling = v["settling"].as_array().into_iter().flatten();
    settling.fold((0, 0), |(copied, total), pg| {
        let done = pg["restored_bytes"].as_u64().unwrap_or_default();
        let all = pg["total_bytes"].as_u64().unwrap_or_default();
        (copied + done.min(all), total + all)
    })
}

/// "3 PGs settling, 12 MiB of 40 MiB copied, ETA 9 s, rebalance enabled" from a
/// `GET /v1/rebalance` answer; the ETA only when a copy rate (bytes/s) is known.
fn rebalance_summary(v: &Value, rate: Option<f64>) -> String {
    let settling = v["settling"].as_array().map_or(0, Vec::len);
    let noun = if settling == 1 { "PG" } else { "PGs" };
    let switch = if v["enabled"] == Value::Bool(true) {
        "enabled"
    } else {
        "paused"
    };
    let (copied, total) = rebalance_bytes(v);
    let mut line = format!("{settling} {noun} settling");
    if total > 0 {
        line.push_str(&format!(
            ", {} of {} copied",
            format_size_approx(copied),
            format_size_approx(total)
        ));
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let eta = (total - copied) as f64 / rate;
            line.push_str(&format!(", ETA {} s", eta.ceil() as u64));
        }
    }
    line.push_str(&format!(", rebalance {switch}"));
    line
}

/// A text progress bar `[#####-----] 5/10 PGs settled`, `width` characters between the
/// brackets.
fn progress_bar(done: u64, total: u64, width: usize) -> String {
    let filled = match total {
        0 => width,
        _ => (done.min(total) as u128 * width as u128 / u128::from(total)) as usize,
    };
    format!(
        "[{}{}] {done}/{total} PGs settled",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

/// Prints one rebalance status: JSON, or the table (if any PG settles) and the summary,
/// with a progress bar when `bar`.
fn print_rebalance(connection: &Connection, v: &Value, bar: bool, rate: Option<f64>) {
    if connection.json {
        println!("{v}");
        return;
    }
    if v["settling"].as_array().is_some_and(|s| !s.is_empty()) {
        println!("{}", rebalance_table(v));
    }
    println!("{}", rebalance_summary(v, rate));
    if bar {
        let total = v["pgs_total"].as_u64().unwrap_or_default();
        let settling = v["settling"].as_array().map_or(0, Vec::len) as u64;
        println!(
            "{}",
            progress_bar(total.saturating_sub(settling), total, 40)
        );
    }
}

/// Polls (a second apart) with nothing settling and nothing planned before `--watch` ends.
const WATCH_QUIET_POLLS: u32 = 3;

/// `cairn rebalance status [--watch]`.
fn rebalance_status(connection: &Connection, watch: bool) -> ExitCode {
    let client = match Client::new(connection) {
        Ok(client) => client,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let terminal = std::io::stdout().is_terminal();
    let mut last = None;
    let mut quiet = 0;
    loop {
        let v = match client.call("/v1/rebalance", Method::Get) {
            Ok(v) => v,
            Err(Failure(message)) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        };
        if !watch {
            if connection.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_rebalance(connection, &v, false, None);
            }
            return ExitCode::SUCCESS;
        }
        if terminal && !connection.json {
            // Clears the screen and homes the cursor: a redraw, not a scroll.
            print!("\x1b[2J\x1b[H");
        }
        // The copy rate since the last refresh gives the ETA.
        let copied = rebalance_bytes(&v).0;
        let now = std::time::Instant::now();
        let rate = last.map(|(before, at): (u64, std::time::Instant)| {
            copied.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()
        });
        last = Some((copied, now));
        print_rebalance(connection, &v, terminal, rate);
        let _ = std::io::stdout().flush();
        // Quiet for a few scheduler rounds (one a second), not just once: right after a drain
        // or a new node, nothing is planned yet.
        let quiet_now = v["settling"].as_array().is_none_or(|s| s.is_empty())
            && v["moves_planned"].as_u64().unwrap_or_default() == 0;
        quiet = if quiet_now { quiet + 1 } else { 0 };
        if quiet >= WATCH_QUIET_POLLS {
            return ExitCode::SUCCESS;
        }
        thread::sleep(Duration::from_secs(1));
    }
}

pub fn rebalance(connection: &Connection, command: RebalanceCommand) -> ExitCode {
    let action = match command {
        RebalanceCommand::Status { watch } => return rebalance_status(connection, watch),
        RebalanceCommand::Start => "start",
        RebalanceCommand::Pause => "pause",
        RebalanceCommand::Resume => "resume",
    };
    run_with(
        connection,
        &format!("/v1/rebalance/{action}"),
        Method::Post(json!({})),
        done_table,
    )
}

fn run_with(
    connection: &Connection,
    path: &str,
    method: Method,
    table: fn(&Value) -> Table,
) -> ExitCode {
    let result = Client::new(connection).and_then(|client| client.call(path, method));
    finish(connection, result, table)
}

fn size_or_exit(text: &str) -> Result<u64, ExitCode> {
    parse_size(text).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

pub fn cluster(connection: &Connection, command: ClusterCommand) -> ExitCode {
    match command {
        ClusterCommand::Status => {
            run_with(connection, "/v1/cluster/status", Method::Get, status_table)
        }
    }
}

pub fn pool(connection: &Connection, command: PoolCommand) -> ExitCode {
    match command {
        PoolCommand::Create {
            name,
            replicas,
            domain,
            pg_count,
        } => {
            let body = json!({ "name": name, "replicas": replicas, "domain": domain, "pg_count": pg_count });
            run_with(connection, "/v1/pools", Method::Post(body), pool_table)
        }
        PoolCommand::List => run_with(connection, "/v1/pools", Method::Get, pool_table),
        PoolCommand::Show { name } => run_with(
            connection,
            &format!("/v1/pools/{name}"),
            Method::Get,
            pool_table,
        ),
    }
}

pub fn volume(connection: &Connection, command: VolumeCommand) -> ExitCode {
    match command {
        VolumeCommand::Create {
            name,
            pool,
            size,
            tier,
            iops,
            mbps,
        } => {
            let size_bytes = match size_or_exit(&size) {
                Ok(bytes) => bytes,
                Err(code) => return code,
            };
            let body = json!({ "name": name, "pool": pool, "size_bytes": size_bytes,
                "tier": tier, "iops_max": iops, "bytes_per_s_max": mbps.map(|m| m * 1_000_000) });
            run_with(connection, "/v1/volumes", Method::Post(body), volume_table)
        }
        VolumeCommand::Qos {
            name,
            tier,
            iops,
            mbps,
        } => {
            let body = json!({ "tier": tier, "iops_max": iops,
                "bytes_per_s_max": mbps.map(|m| m.saturating_mul(1_000_000)) });
            run_with(
                connection,
                &format!("/v1/volumes/{name}/qos"),
                Method::Put(body),
                volume_table,
            )
        }
        VolumeCommand::Access {
            name,
            chap_user,
            chap_secret_file,
            mutual_user,
            mutual_secret_file,
            initiators,
            clear,
        } => {
            let path = format!("/v1/volumes/{name}/iscsi-access");
            if clear {
                return run_with(connection, &path, Method::Delete, access_table);
            }
            let secrets = chap_secret_file
                .as_deref()
                .map(secret_file)
                .transpose()
                .and_then(|chap| {
                    Ok((
                        chap,
                        mutual_secret_file.as_deref().map(secret_file).transpose()?,
                    ))
                });
            let (chap_secret, mutual_secret) = match secrets {
                Ok(secrets) => secrets,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let body = json!({ "chap_user": chap_user, "chap_secret": chap_secret,
                "mutual_user": mutual_user, "mutual_secret": mutual_secret,
                "initiators": initiators });
            run_with(connection, &path, Method::Put(body), access_table)
        }
        VolumeCommand::List => run_with(connection, "/v1/volumes", Method::Get, volume_table),
        VolumeCommand::Show { name } => run_with(
            connection,
            &format!("/v1/volumes/{name}"),
            Method::Get,
            volume_table,
        ),
        VolumeCommand::AttachInfo { name } => run_with(
            connection,
            &format!("/v1/volumes/{name}/attach-info"),
            Method::Get,
            attach_table,
        ),
        VolumeCommand::Delete { name } => run_with(
            connection,
            &format!("/v1/volumes/{name}"),
            Method::Delete,
            done_table,
        ),
        VolumeCommand::Write { name, offset, file } => data_command(connection, || {
            let offset = parse_size(&offset)?;
            let data = std::fs::read(&file).map_err(|e| format!("read {}: {e}", file.display()))?;
            let client = Client::new(connection).map_err(|Failure(m)| m)?;
            client.put_data(&name, offset, &data)?;
            if !connection.json {
                eprintln!("wrote {} bytes to {name} at {offset}", data.len());
            }
            Ok(())
        }),
        VolumeCommand::Read {
            name,
            offset,
            length,
            out,
        } => data_command(connection, || {
            let offset = parse_size(&offset)?;
            let length = parse_size(&length)?;
            let client = Client::new(connection).map_err(|Failure(m)| m)?;
            let data = client.get_data(&name, offset, length)?;
            match out {
                Some(path) => std::fs::write(&path, &data)
                    .map_err(|e| format!("write {}: {e}", path.display())),
                None => std::io::stdout()
                    .write_all(&data)
                    .map_err(|e| format!("stdout: {e}")),
            }
        }),
        VolumeCommand::Resize { name, size } => {
            let size_bytes = match size_or_exit(&size) {
                Ok(bytes) => bytes,
                Err(code) => return code,
            };
            let body = json!({ "size_bytes": size_bytes });
            run_with(
                connection,
                &format!("/v1/volumes/{name}/resize"),
                Method::Post(body),
                done_table,
            )
        }
    }
}

pub fn node(connection: &Connection, command: NodeCommand) -> ExitCode {
    match command {
        NodeCommand::Run(args) => crate::node::run(*args, connection),
        NodeCommand::List => run_with(connection, "/v1/nodes", Method::Get, disk_table),
        NodeCommand::AddDisk {
            id,
            host,
            rack,
            site,
            capacity,
        } => {
            let capacity_bytes = match size_or_exit(&capacity) {
                Ok(bytes) => bytes,
                Err(code) => return code,
            };
            let body = json!({ "id": id, "host": host, "rack": rack, "site": site, "capacity_bytes": capacity_bytes });
            run_with(
                connection,
                "/v1/nodes/disks",
                Method::Post(body),
                disk_table,
            )
        }
        NodeCommand::Remove { id } => run_with(
            connection,
            &format!("/v1/storage-nodes/{id}"),
            Method::Delete,
            done_table,
        ),
        NodeCommand::Drain { id } => run_with(
            connection,
            &format!("/v1/storage-nodes/{id}/drain"),
            Method::Post(json!({})),
            done_table,
        ),
        NodeCommand::SetDiskState { id, state } => {
            let body = json!({ "state": state });
            run_with(
                connection,
                &format!("/v1/nodes/disks/{id}/state"),
                Method::Post(body),
                done_table,
            )
        }
    }
}

pub fn key(connection: &Connection, command: KeyCommand) -> ExitCode {
    match command {
        KeyCommand::Create { tenant } => {
            tenant_command(connection, TenantCommand::CreateKey { tenant })
        }
        KeyCommand::Delete { id } => tenant_command(connection, TenantCommand::DeleteKey { id }),
    }
}

pub fn tenant(connection: &Connection, command: TenantCommand) -> ExitCode {
    tenant_command(connection, command)
}

fn tenant_command(connection: &Connection, command: TenantCommand) -> ExitCode {
    match command {
        TenantCommand::Create { name } => run_with(
            connection,
            "/v1/tenants",
            Method::Post(json!({ "name": name })),
            tenant_table,
        ),
        TenantCommand::List => run_with(connection, "/v1/tenants", Method::Get, tenant_table),
        TenantCommand::Quota { name, limits } => match quota_body(&limits) {
            Ok(body) => run_with(
                connection,
                &format!("/v1/tenants/{name}/quota"),
                Method::Put(body),
                tenant_quota_table,
            ),
            Err(code) => code,
        },
        TenantCommand::Delete { name } => run_with(
            connection,
            &format!("/v1/tenants/{name}"),
            Method::Delete,
            done_table,
        ),
        TenantCommand::CreateKey { tenant } => run_with(
            connection,
            &format!("/v1/tenants/{tenant}/keys"),
            Method::Post(json!({})),
            key_table,
        ),
        TenantCommand::DeleteKey { id } => run_with(
            connection,
            &format!("/v1/keys/{id}"),
            Method::Delete,
            done_table,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: an operator reading `cairn cluster status` sees a failed disk counted and named
    /// with what failed, and a healthy disk's latencies as before.
    #[test]
    fn cluster_status_names_a_failed_disk() {
        let status = serde_json::json!({
            "member": { "id": 1, "role": "leader" },
            "status": "recovering",
            "health": {
                "pgs_healthy": 5, "pgs_degraded": 3, "pgs_down": 0,
                "disks_in_reporting": 7, "disks_failed": 1, "disks_in_silent": 0,
                "disks_out": 0,
                "nodes": [{
                    "node": 4, "fresh": true, "age_ms": 300, "replicas": 3, "leaders": 1,
                    "used_bytes": 0, "corrupt_blocks": 0,
                    "disks": [
                        { "id": "d-ok", "read_us": 30, "write_us": 50 },
                        { "id": "d-bad", "read_us": 0, "write_us": 0,
                          "failure": "write chunks/0: Input/output error" },
                    ],
                }],
            },
        });
        let shown = status_table(&status).to_string();
        assert!(
            shown.contains("7 in and reporting, 1 failed, 0 in but silent"),
            "{shown}"
        );
        assert!(
            shown.contains("mean read 30 µs, mean write 50 µs"),
            "{shown}"
        );
        let failed = "FAILED, out of service: write chunks/0: Input/output error";
        assert!(shown.contains(failed), "{shown}");
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1tb"), Ok(1 << 40));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999P").is_err());
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(1000), "1000 B");
        assert_eq!(format_size_approx(1000), "1000 B");
        assert_eq!(format_size_approx(3 << 20), "3.0 MiB");
        assert_eq!(format_size_approx((5 << 30) + (1 << 29)), "5.5 GiB");
    }

    /// Goal: the rebalance status's summary, bar and table read as documented. Method: fixed
    /// answers.
    #[test]
    fn rebalance_status_formats() {
        let answer = json!({
            "enabled": false,
            "moves_planned": 0,
            "pgs_total": 8,
            "settling": [{
                "pool": "p", "pg": 3,
                "members": [(2u64 << 40) | 1, (4u64 << 40) | 7],
                "joining": [(4u64 << 40) | 7],
                "restored_bytes": 3 << 20,
                "total_bytes": 8 << 20,
                "leader": (2u64 << 40) | 1,
            }],
        });
        assert_eq!(
            rebalance_summary(&answer, None),
            "1 PG settling, 3.0 MiB of 8.0 MiB copied, rebalance paused"
        );
        assert_eq!(
            rebalance_summary(&answer, Some(f64::from(1u32 << 20))),
            "1 PG settling, 3.0 MiB of 8.0 MiB copied, ETA 5 s, rebalance paused"
        );
        let quiet = json!({ "enabled": true, "settling": [] });
        assert_eq!(
            rebalance_summary(&quiet, Some(1.0)),
            "0 PGs settling, rebalance enabled"
        );
        let table = rebalance_table(&answer).to_string();
        assert!(table.contains("n4.r7"), "{table}");
        assert!(table.contains("3.0 MiB"), "{table}");
        assert_eq!(progress_bar(6, 8, 8), "[######--] 6/8 PGs settled");
        assert_eq!(progress_bar(0, 0, 4), "[####] 0/0 PGs settled");
        assert_eq!(progress_bar(9, 8, 4), "[####] 9/8 PGs settled");
    }
}
