//! Network namespaces for scenarios that partition the cluster: every process of a
//! [`crate::cluster::Cluster`] runs in a namespace of its own with one address on a bridge in
//! the harness's namespace, which reaches them all. Each namespace has an nftables table
//! whose set `cut` lists the addresses it may not exchange packets with; a partition adds
//! addresses to the sets on both sides, and healing empties them. Packets to and from a cut
//! address are dropped silently, in both directions, established connections included: to
//! the processes a cut looks like a network that stopped delivering, not like a refusal.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Names carry the harness's pid, so runs
//! side by side do not collide; [`Net`] removes everything it made when dropped, and removes
//! leftovers of an earlier run with the same pid when created.

use std::process::{Command, Stdio};

/// The nftables table every namespace gets: the set `cut`, and drops to and from it.
const TABLE: &str = "table inet chaos {
  set cut { type ipv4_addr; }
  chain out { type filter hook output priority 0; ip daddr @cut drop; }
  chain in { type filter hook input priority 0; ip saddr @cut drop; }
}
";

/// Processes one namespace set can hold (the last octet of their addresses is 10 + index).
pub(crate) const PROCESSES_MAX: usize = 200;

/// The namespaces, the bridge and the veth pairs of one run.
pub(crate) struct Net {
    /// Prefix of every name: `cx<pid>`.
    prefix: String,
    /// `10.<a>.<b>`: the run's /24.
    subnet: String,
    count: usize,
}

/// Runs `program ARGS...`, feeding `input` on stdin if given; its stderr is the error.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().map_err(|e| {
        format!("run {program}: {e} (the partition scenarios need iproute2 and nftables)")
    })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{program} stdin: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("wait for {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Net {
    /// Creates `count` namespaces on a new bridge.
    pub(crate) fn create(count: usize) -> Result<Net, String> {
        assert!((1..=PROCESSES_MAX).contains(&count));
        let pid = std::process::id();
        let net = Net {
            prefix: format!("cx{}", pid % 100_000),
            // 10.200.0.0/16 and up: rarely a real network on a test machine.
            subnet: format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 256),
            count,
        };
        net.remove();
        net.build().inspect_err(|_| net.remove())?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    /// Process `index`'s namespace.
    pub(crate) fn namespace(&self, index: usize) -> String {
        format!("{}n{index}", self.prefix)
    }

    /// Process `index`'s address.
    pub(crate) fn address(&self, index: usize) -> String {
        assert!(index < self.count);
        format!("{}.{}", self.subnet, 10 + index)
    }

    fn build(&self) -> Result<(), String> {
        let bridge = self.bridge();
        run("ip", &["link", "add", &bridge, "type", "bridge"], None)?;
        let gateway = format!("{}.1/24", self.subnet);
        run("ip", &["addr", "add", &gateway, "dev", &bridge], None)?;
        run("ip", &["link", "set", &bridge, "up"], None)?;
        for index in 0..self.count {
            let ns = self.namespace(index);
            let veth = format!("{}v{index}", self.prefix);
            run("ip", &["netns", "add", &ns], None)?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
                None,
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"], None)?;
            let address = format!("{}/24", self.address(index));
            run(
                "ip",
                &["-n", &ns, "addr", "add", &address, "dev", "eth0"],
                None,
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"], None)?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
            run("ip", &["netns", "exec", &ns, "nft", "-f", "-"], Some(TABLE))?;
        }
        Ok(())
    }

    /// Removes whatever of this run's names exists (errors ignored: most do not).
    fn remove(&self) {
        for index in 0..self.count {
            let _ = run("ip", &["netns", "del", &self.namespace(index)], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge()], None);
    }

    /// Runs `nft ARGS...` in process `index`'s namespace.
    fn nft(&self, index: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.namespace(index);
        let mut all = vec!["netns", "exec", ns.as_str(), "nft"];
        all.extend_from_slice(args);
        run("ip", &all, None)
    }

    /// Cuts every process in `a` off from every process in `b`, both ways.
    pub(crate) fn cut(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for (from, to) in [(a, b), (b, a)] {
            for &index in from {
                let addresses: Vec<String> = to.iter().map(|&i| self.address(i)).collect();
                let elements = format!("{{ {} }}", addresses.join(", "));
                self.nft(
                    index,
                    &["add", "element", "inet", "chaos", "cut", &elements],
                )?;
            }
        }
        Ok(())
    }

    /// Heals every cut.
    pub(crate) fn heal(&self) -> Result<(), String> {
        for index in 0..self.count {
            self.nft(index, &["flush", "set", "inet", "chaos", "cut"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
