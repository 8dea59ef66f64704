//! A standalone iSCSI target over in-memory LUNs, for manual runs and benchmarks.
//!
//! ```text
//! cairn-iscsi-mem [--listen 127.0.0.1:3260] [--target IQN]... [--size-mib 64]
//!                 [--block-size 512]
//! ```
//!
//! Every target gets its own zero-filled device; no CHAP, no ACL. Logs go to stderr
//! (`RUST_LOG` filters them, `info` by default). Stop it with a signal.

use std::{process::ExitCode, sync::Arc};

use cairn_gateway_iscsi::{
    login::{LoginConfig, TargetConfig},
    scsi::MemReservationStore,
    server::{MemVolumes, Server, ServerConfig},
};

struct Args {
    listen: String,
    targets: Vec<String>,
    size_mib: u64,
    block_size: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:3260".to_owned(),
        targets: Vec::new(),
        size_mib: 64,
        block_size: 512,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let mut value = || words.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--target" => args.targets.push(value()?),
            "--size-mib" => args.size_mib = value()?.parse().map_err(|e| format!("{e}"))?,
            "--block-size" => args.block_size = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.targets.is_empty() {
        args.targets.push("iqn.2026-12.io.cairn:mem0".to_owned());
    }
    Ok(args)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("cairn-iscsi-mem: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cairn-iscsi-mem: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let volumes = MemVolumes::new();
    let mut login = LoginConfig::default();
    for target in &args.targets {
        volumes.add(target, args.size_mib << 20, args.block_size);
        login.targets.push(TargetConfig {
            name: target.clone(),
            alias: None,
            chap: None,
            allowed_initiators: Vec::new(),
        });
    }
    let login = login.check().map_err(|error| error.to_string())?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| format!("binding {}: {error}", args.listen))?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let portal = format!("{address},{}", login.get().portal_group_tag);
    tracing::info!(%address, targets = ?args.targets, "serving");
    let server = Server::new(
        ServerConfig::new(login, portal),
        volumes,
        Arc::new(MemReservationStore::default()),
    );
    server
        .serve(listener, std::future::pending())
        .await
        .map_err(|error| error.to_string())
}
