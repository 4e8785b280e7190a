//! Two balancing clients and three backends meet through etcd; one backend dies.
//!
//! Starts its own `etcd` on loopback (random ports, a temporary data directory; `etcd`
//! must be on PATH: `apt-get install etcd-server`), three TCP backends that answer
//! with their name and register under `/services/echo/<name>` with a 2 s lease, and
//! two clients, each with its own pool fed by discovery, sending a request every 20 ms.
//! Then backend `b` crashes (its listener closes and its lease renewals stop, as when a
//! process is killed) and both clients' views converge on `a`, `c` within the TTL.
//!
//! `cargo run -p tower-lb-etcd --example cluster`

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_lb::{PickContext, Pool, PowerOfTwoChoices, Weight};
use tower_lb_etcd::{Discovery, Member, Registration, sync_pool};

const TTL: Duration = Duration::from_secs(2);

struct Etcd {
    child: Child,
    _data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_etcd() -> Result<(Etcd, String), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (client, peer) = (
        format!("http://127.0.0.1:{}", port()?),
        format!("http://127.0.0.1:{}", port()?),
    );
    let child = Command::new("etcd")
        .args(["--name", "x", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args([
            "--initial-cluster",
            &format!("x={peer}"),
            "--log-level",
            "error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let etcd = Etcd { child, _data: dir };
    for _ in 0..300 {
        if let Ok(mut c) = etcd_client::Client::connect([&client], None).await
            && c.get("ready", None).await.is_ok()
        {
            return Ok((etcd, client));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("etcd did not start".into())
}

/// A backend: answers every connection with its name.
async fn backend(name: &'static str) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(name.as_bytes()).await;
            });
        }
    });
    Ok((addr, task))
}

async fn request(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"hi").await?;
    let mut out = String::new();
    conn.read_to_string(&mut out).await?;
    Ok(out)
}

type Served = Arc<Mutex<BTreeMap<String, u64>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_etcd, endpoint) = start_etcd().await?;
    let endpoints = [endpoint.clone()];
    println!("etcd on {endpoint}");

    let mut backends = BTreeMap::new();
    for (name, weight) in [("a", 1), ("b", 1), ("c", 2)] {
        let (addr, task) = backend(name).await?;
        let me = Member::new(addr).with_weight(Weight::new(weight)?);
        let reg =
            Registration::register(&endpoints, format!("/services/echo/{name}"), &me, TTL).await?;
        println!("backend {name} on {addr} registered (weight {weight}, lease {TTL:?})");
        backends.insert(name, (addr, task, reg));
    }
    let names: BTreeMap<SocketAddr, &str> = backends.iter().map(|(n, (a, ..))| (*a, *n)).collect();
    let names = Arc::new(names);

    let mut clients = Vec::new();
    for client in ["client-1", "client-2"] {
        let pool = Pool::new(PowerOfTwoChoices::new());
        let discover = Discovery::service(endpoints.clone(), "echo").spawn();
        let sync = sync_pool(discover, pool.clone(), |_, m| m.addr);
        let served: Served = Arc::default();
        let (p, s) = (pool.clone(), served.clone());
        let load = tokio::spawn(async move {
            loop {
                if let Ok(picked) = p.pick(&PickContext::new()) {
                    let guard = picked.start();
                    let answer = request(*picked.addr()).await;
                    let key = match &answer {
                        Ok(name) => name.clone(),
                        Err(_) => "failed".to_string(),
                    };
                    match answer {
                        Ok(_) => guard.success(),
                        Err(_) => guard.failure(),
                    }
                    *s.lock().unwrap().entry(key).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        clients.push((client, pool, served, sync, load));
    }
    let view = |pool: &Pool<SocketAddr, PowerOfTwoChoices>| {
        let mut v: Vec<String> = pool
            .snapshot()
            .backends()
            .iter()
            .map(|b| {
                format!(
                    "{}(w{})",
                    names.get(b.addr()).unwrap_or(&"?"),
                    b.weight().get()
                )
            })
            .collect();
        v.sort();
        v.join(" ")
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, pool, ..) in &clients {
        println!("{name} sees: {}", view(pool));
    }

    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, task, reg) = backends.remove("b").ok_or("no b")?;
    task.abort();
    drop(reg); // renewals stop; the key stays until the lease expires
    let killed = Instant::now();
    println!("backend b crashed (listener closed, lease no longer renewed)");
    let mut converged = [None, None];
    while converged.iter().any(Option::is_none) && killed.elapsed() < TTL * 3 {
        for (i, (_, pool, ..)) in clients.iter().enumerate() {
            if converged[i].is_none() && !view(pool).contains('b') {
                converged[i] = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for ((name, pool, ..), at) in clients.iter().zip(converged) {
        let at = at.map_or("not within 3 TTL".to_string(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        });
        println!("{name} sees: {}   (b gone after {at})", view(pool));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, _, served, sync, load) in &clients {
        load.abort();
        sync.abort();
        let served = served.lock().unwrap();
        let line: Vec<String> = served.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{name} answers: {}", line.join(", "));
    }
    for (name, (_, task, reg)) in backends {
        task.abort();
        reg.deregister().await?;
        println!("backend {name} deregistered");
    }
    Ok(())
}
